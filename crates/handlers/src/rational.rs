//! Exact rational numbers over `i128`, for arithmetic and unit conversion
//! that give exact answers (0.1 + 0.2 = 0.3) or say they cannot.

use std::cmp::Ordering;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rational {
    num: i128,
    /// Always positive; gcd(num, den) = 1.
    den: i128,
}

/// Past `i128` on the way: the answer is too large to give exactly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RationalError {
    #[error("the result is too large to compute exactly")]
    Overflow,
    #[error("division by zero")]
    DivisionByZero,
}

type R = Result<Rational, RationalError>;

fn gcd(mut a: i128, mut b: i128) -> i128 {
    a = a.abs();
    b = b.abs();
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.max(1)
}

impl Rational {
    pub const ZERO: Rational = Rational { num: 0, den: 1 };
    pub const ONE: Rational = Rational { num: 1, den: 1 };

    pub fn new(num: i128, den: i128) -> R {
        if den == 0 {
            return Err(RationalError::DivisionByZero);
        }
        let g = gcd(num, den);
        let sign = if den < 0 { -1 } else { 1 };
        Ok(Rational {
            num: (num / g).checked_mul(sign).ok_or(RationalError::Overflow)?,
            den: (den / g).checked_mul(sign).ok_or(RationalError::Overflow)?,
        })
    }

    pub fn int(n: i128) -> Rational {
        Rational { num: n, den: 1 }
    }

    /// A decimal literal such as `12`, `0.25`, `1e3` or `2.5E-2`, exactly.
    pub fn parse_decimal(text: &str) -> Option<Rational> {
        let (mantissa, exp) = match text.find(['e', 'E']) {
            Some(i) => (&text[..i], text[i + 1..].parse::<i32>().ok()?),
            None => (text, 0),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        if int.is_empty() && frac.is_empty()
            || !int.chars().chain(frac.chars()).all(|c| c.is_ascii_digit())
        {
            return None;
        }
        let digits: i128 = format!("{int}{frac}").parse().ok()?;
        let scale = exp - frac.len() as i32;
        let ten = Rational::int(10);
        let factor = ten.pow(scale).ok()?;
        Rational::int(digits).times(factor).ok()
    }

    pub fn is_integer(&self) -> bool {
        self.den == 1
    }

    pub fn is_zero(&self) -> bool {
        self.num == 0
    }

    pub fn plus(self, o: Rational) -> R {
        let den = self.den.checked_mul(o.den).ok_or(RationalError::Overflow)?;
        let a = self.num.checked_mul(o.den).ok_or(RationalError::Overflow)?;
        let b = o.num.checked_mul(self.den).ok_or(RationalError::Overflow)?;
        Rational::new(a.checked_add(b).ok_or(RationalError::Overflow)?, den)
    }

    pub fn negated(self) -> Rational {
        Rational {
            num: -self.num,
            den: self.den,
        }
    }

    pub fn minus(self, o: Rational) -> R {
        self.plus(o.negated())
    }

    pub fn times(self, o: Rational) -> R {
        // Cross-reduce first to keep the numbers small.
        let g1 = gcd(self.num, o.den);
        let g2 = gcd(o.num, self.den);
        let num = (self.num / g1)
            .checked_mul(o.num / g2)
            .ok_or(RationalError::Overflow)?;
        let den = (self.den / g2)
            .checked_mul(o.den / g1)
            .ok_or(RationalError::Overflow)?;
        Rational::new(num, den)
    }

    pub fn over(self, o: Rational) -> R {
        if o.num == 0 {
            return Err(RationalError::DivisionByZero);
        }
        self.times(Rational::new(o.den, o.num)?)
    }

    /// An integer power (negative exponents invert).
    pub fn pow(self, exp: i32) -> R {
        let mut result = Rational::ONE;
        let mut base = if exp < 0 {
            Rational::ONE.over(self)?
        } else {
            self
        };
        let mut e = exp.unsigned_abs();
        while e > 0 {
            if e & 1 == 1 {
                result = result.times(base)?;
            }
            e >>= 1;
            if e > 0 {
                base = base.times(base)?;
            }
        }
        Ok(result)
    }

    pub fn to_f64(self) -> f64 {
        self.num as f64 / self.den as f64
    }

    /// Whether its decimal expansion ends (the denominator has no prime
    /// factors but 2 and 5).
    fn terminates(&self) -> bool {
        let mut d = self.den;
        for p in [2, 5] {
            while d % p == 0 {
                d /= p;
            }
        }
        d == 1
    }

    /// The exact decimal when it ends, else the fraction and a rounded
    /// decimal: `0.3`, `-12`, `1/3 ≈ 0.333333333333`.
    pub fn display(&self) -> String {
        if self.terminates() {
            return self.decimal(usize::MAX);
        }
        format!("{}/{} ≈ {}", self.num, self.den, self.decimal(12))
    }

    /// Decimal digits, at most `places` after the point (rounded half away
    /// from zero), trailing zeros trimmed.
    fn decimal(&self, places: usize) -> String {
        let neg = self.num < 0;
        let n = self.num.unsigned_abs();
        let d = self.den.unsigned_abs();
        let int = n / d;
        let mut rem = n % d;
        let mut frac = Vec::new();
        while rem != 0 && frac.len() < places.min(60) {
            rem *= 10;
            frac.push((rem / d) as u8);
            rem %= d;
        }
        let mut int = int;
        if rem != 0 && rem * 2 >= d {
            // Round up, carrying.
            let mut i = frac.len();
            loop {
                if i == 0 {
                    int += 1;
                    break;
                }
                i -= 1;
                if frac[i] == 9 {
                    frac[i] = 0;
                } else {
                    frac[i] += 1;
                    break;
                }
            }
        }
        while frac.last() == Some(&0) {
            frac.pop();
        }
        let mut s = String::new();
        if neg && (int != 0 || !frac.is_empty()) {
            s.push('-');
        }
        s.push_str(&int.to_string());
        if !frac.is_empty() {
            s.push('.');
            s.extend(frac.iter().map(|d| char::from(b'0' + d)));
        }
        s
    }
}

impl PartialOrd for Rational {
    fn partial_cmp(&self, o: &Rational) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

impl Ord for Rational {
    fn cmp(&self, o: &Rational) -> Ordering {
        (self.num * o.den).cmp(&(o.num * self.den))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Rational {
        Rational::parse_decimal(s).unwrap()
    }

    #[test]
    fn decimals_are_exact_and_display_exactly() {
        assert_eq!(d("0.1").plus(d("0.2")).unwrap().display(), "0.3");
        assert_eq!(d("1e3").display(), "1000");
        assert_eq!(d("2.5E-2").display(), "0.025");
        assert_eq!(
            Rational::int(1).over(Rational::int(3)).unwrap().display(),
            "1/3 ≈ 0.333333333333"
        );
        assert_eq!(
            Rational::int(2).over(Rational::int(3)).unwrap().display(),
            "2/3 ≈ 0.666666666667"
        );
        assert_eq!(
            Rational::int(-7).over(Rational::int(4)).unwrap().display(),
            "-1.75"
        );
        assert_eq!(Rational::int(2).pow(-2).unwrap().display(), "0.25");
        assert_eq!(
            Rational::int(1).over(Rational::ZERO),
            Err(RationalError::DivisionByZero)
        );
        assert_eq!(Rational::int(10).pow(40), Err(RationalError::Overflow));
        assert!(Rational::parse_decimal("1.2.3").is_none());
        assert!(Rational::parse_decimal(".").is_none());
    }
}
