//! Unit conversions, exact: `<value> <unit> to|in|into <unit>` for length,
//! mass, volume, time, data size, speed and temperature. Every factor is an
//! exact definition (1 in = 0.0254 m, 1 lb = 0.45359237 kg, 1 US gal =
//! 3.785411784 L), so results are exact decimals.

use crate::rational::Rational;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dim {
    Length,
    Mass,
    Volume,
    Time,
    Data,
    Speed,
    Temperature,
}

/// (names, dimension, size in the dimension's base unit: a decimal or a
/// fraction; for temperatures, the scale).
const UNITS: &[(&[&str], Dim, &str)] = &[
    (
        &[
            "mm",
            "millimeter",
            "millimeters",
            "millimetre",
            "millimetres",
        ],
        Dim::Length,
        "0.001",
    ),
    (
        &[
            "cm",
            "centimeter",
            "centimeters",
            "centimetre",
            "centimetres",
        ],
        Dim::Length,
        "0.01",
    ),
    (
        &["m", "meter", "meters", "metre", "metres"],
        Dim::Length,
        "1",
    ),
    (
        &["km", "kilometer", "kilometers", "kilometre", "kilometres"],
        Dim::Length,
        "1000",
    ),
    (&["in", "inch", "inches"], Dim::Length, "0.0254"),
    (&["ft", "foot", "feet"], Dim::Length, "0.3048"),
    (&["yd", "yard", "yards"], Dim::Length, "0.9144"),
    (&["mi", "mile", "miles"], Dim::Length, "1609.344"),
    (
        &["nmi", "nautical mile", "nautical miles"],
        Dim::Length,
        "1852",
    ),
    (&["mg", "milligram", "milligrams"], Dim::Mass, "0.000001"),
    (&["g", "gram", "grams"], Dim::Mass, "0.001"),
    (
        &["kg", "kilogram", "kilograms", "kilo", "kilos"],
        Dim::Mass,
        "1",
    ),
    (
        &["t", "tonne", "tonnes", "metric ton", "metric tons"],
        Dim::Mass,
        "1000",
    ),
    (&["oz", "ounce", "ounces"], Dim::Mass, "0.028349523125"),
    (&["lb", "lbs", "pound", "pounds"], Dim::Mass, "0.45359237"),
    (&["st", "stone", "stones"], Dim::Mass, "6.35029318"),
    (
        &[
            "ml",
            "milliliter",
            "milliliters",
            "millilitre",
            "millilitres",
        ],
        Dim::Volume,
        "0.001",
    ),
    (
        &["l", "liter", "liters", "litre", "litres"],
        Dim::Volume,
        "1",
    ),
    (
        &[
            "m3",
            "cubic meter",
            "cubic meters",
            "cubic metre",
            "cubic metres",
        ],
        Dim::Volume,
        "1000",
    ),
    (&["gal", "gallon", "gallons"], Dim::Volume, "3.785411784"),
    (&["qt", "quart", "quarts"], Dim::Volume, "0.946352946"),
    (&["cup", "cups"], Dim::Volume, "0.2365882365"),
    (
        &["fl oz", "fluid ounce", "fluid ounces"],
        Dim::Volume,
        "0.0295735295625",
    ),
    (&["ms", "millisecond", "milliseconds"], Dim::Time, "0.001"),
    (&["s", "sec", "secs", "second", "seconds"], Dim::Time, "1"),
    (&["min", "mins", "minute", "minutes"], Dim::Time, "60"),
    (&["h", "hr", "hrs", "hour", "hours"], Dim::Time, "3600"),
    (&["day", "days"], Dim::Time, "86400"),
    (&["week", "weeks"], Dim::Time, "604800"),
    (&["b", "byte", "bytes"], Dim::Data, "1"),
    (&["kb", "kilobyte", "kilobytes"], Dim::Data, "1000"),
    (&["mb", "megabyte", "megabytes"], Dim::Data, "1000000"),
    (&["gb", "gigabyte", "gigabytes"], Dim::Data, "1000000000"),
    (&["tb", "terabyte", "terabytes"], Dim::Data, "1000000000000"),
    (&["kib", "kibibyte", "kibibytes"], Dim::Data, "1024"),
    (&["mib", "mebibyte", "mebibytes"], Dim::Data, "1048576"),
    (&["gib", "gibibyte", "gibibytes"], Dim::Data, "1073741824"),
    (
        &["tib", "tebibyte", "tebibytes"],
        Dim::Data,
        "1099511627776",
    ),
    (
        &["m/s", "meters per second", "metres per second"],
        Dim::Speed,
        "1",
    ),
    (
        &[
            "km/h",
            "kph",
            "kmh",
            "kilometers per hour",
            "kilometres per hour",
        ],
        Dim::Speed,
        "5/18",
    ),
    (&["mph", "miles per hour"], Dim::Speed, "0.44704"),
    (&["kn", "knot", "knots"], Dim::Speed, "463/900"),
    (
        &["c", "°c", "celsius", "degrees celsius"],
        Dim::Temperature,
        "c",
    ),
    (
        &["f", "°f", "fahrenheit", "degrees fahrenheit"],
        Dim::Temperature,
        "f",
    ),
    (&["k", "kelvin", "kelvins"], Dim::Temperature, "k"),
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error("not a conversion of the form `<number> <unit> to <unit>`")]
    Shape,
    #[error("unknown unit {0:?}")]
    Unit(String),
    #[error("cannot convert {0} to {1}: they measure different things")]
    Mismatch(String, String),
    #[error("{0}")]
    Value(String),
}

fn unit(name: &str) -> Result<(Dim, &'static str), ConvertError> {
    let n = name.trim().trim_end_matches('.').to_lowercase();
    UNITS
        .iter()
        .find(|(names, _, _)| names.contains(&n.as_str()))
        .map(|(_, d, f)| (*d, *f))
        .ok_or(ConvertError::Unit(name.trim().to_owned()))
}

/// A table factor: a decimal, or a fraction `a/b` where the decimal does not end.
fn factor(f: &str) -> Rational {
    let parse = |d: &str| Rational::parse_decimal(d).expect("the unit table holds numbers");
    match f.split_once('/') {
        Some((a, b)) => parse(a).over(parse(b)).expect("nonzero"),
        None => parse(f),
    }
}

fn to_kelvin(v: Rational, scale: &str) -> Result<Rational, crate::rational::RationalError> {
    let c_offset = Rational::parse_decimal("273.15").expect("decimal");
    match scale {
        "c" => v.plus(c_offset),
        "f" => v
            .minus(Rational::int(32))?
            .times(Rational::new(5, 9)?)?
            .plus(c_offset),
        _ => Ok(v),
    }
}

fn from_kelvin(v: Rational, scale: &str) -> Result<Rational, crate::rational::RationalError> {
    let c_offset = Rational::parse_decimal("273.15").expect("decimal");
    match scale {
        "c" => v.minus(c_offset),
        "f" => v
            .minus(c_offset)?
            .times(Rational::new(9, 5)?)?
            .plus(Rational::int(32)),
        _ => Ok(v),
    }
}

/// Converts `text` (`12 km to miles`): the value, the target unit as written.
pub fn convert(text: &str) -> Result<(Rational, String), ConvertError> {
    let t = text.trim().trim_end_matches(['?', '.']);
    let lower = t.to_lowercase();
    let (from, to) = [" to ", " in ", " into ", " as "]
        .iter()
        .find_map(|sep| lower.rfind(sep).map(|i| (&t[..i], &t[i + sep.len()..])))
        .ok_or(ConvertError::Shape)?;
    let from = from.trim();
    let split = from
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == ',' || c == 'e'))
        .ok_or(ConvertError::Shape)?;
    let (num, from_unit) = from.split_at(split);
    let num: String = num.chars().filter(|&c| c != ',').collect();
    let neg = num.starts_with('-');
    let value = Rational::parse_decimal(num.trim_start_matches('-')).ok_or(ConvertError::Shape)?;
    let value = if neg { value.negated() } else { value };
    let (fd, ff) = unit(from_unit)?;
    let (td, tf) = unit(to)?;
    if fd != td {
        return Err(ConvertError::Mismatch(
            from_unit.trim().to_owned(),
            to.trim().to_owned(),
        ));
    }
    let err = |e: crate::rational::RationalError| ConvertError::Value(e.to_string());
    let out = if fd == Dim::Temperature {
        from_kelvin(to_kelvin(value, ff).map_err(err)?, tf).map_err(err)?
    } else {
        value
            .times(factor(ff))
            .and_then(|v| v.over(factor(tf)))
            .map_err(err)?
    };
    Ok((out, to.trim().to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> String {
        match convert(s) {
            Ok((v, u)) => format!("{} {u}", v.display()),
            Err(e) => format!("error: {e}"),
        }
    }

    #[test]
    fn conversions_are_exact() {
        assert_eq!(c("5 km to m"), "5000 m");
        assert_eq!(c("1 mile in km"), "1.609344 km");
        assert_eq!(c("100 °C to fahrenheit"), "212 fahrenheit");
        assert_eq!(c("-40 F to C"), "-40 C");
        assert_eq!(c("0 K to celsius"), "-273.15 celsius");
        assert_eq!(c("2 lb to kg"), "0.90718474 kg");
        assert_eq!(c("1 GiB to MB"), "1073.741824 MB");
        assert_eq!(c("36 km/h to m/s"), "10 m/s");
        assert_eq!(c("3 hours into minutes?"), "180 minutes");
        assert_eq!(c("12 inches to feet"), "1 feet");
        assert_eq!(c("1,500 g to kg"), "1.5 kg");
        assert!(c("5 km to kg").contains("different things"));
        assert!(c("5 parsecs to m").contains("unknown unit"));
        assert!(c("how are you").starts_with("error"));
    }
}
