//! Dates and times: the time now in a place (an IANA zone, or a city the
//! zone database names: "Tokyo" → Asia/Tokyo), a date plus or minus days,
//! weeks, months or years, the days between two dates, and the weekday of a
//! date. Dates are ISO (`2026-12-01`). The zone database is bundled.

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Span, Unit, Zoned};
use regex::Regex;
use std::sync::OnceLock;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DateError {
    #[error("not a date or time question this handler knows")]
    Shape,
    #[error("no time zone is named {0:?}")]
    Zone(String),
    #[error("{0}")]
    Value(String),
}

struct Patterns {
    now_in: Regex,
    shift: Regex,
    /// `10 days after 2026-12-25`.
    shift_before_date: Regex,
    between: Regex,
    weekday: Regex,
}

fn patterns() -> &'static Patterns {
    static P: OnceLock<Patterns> = OnceLock::new();
    P.get_or_init(|| {
        let date = r"(\d{4}-\d{2}-\d{2})";
        let re = |s: &str| Regex::new(s).expect("valid pattern");
        Patterns {
            now_in: re(r"(?i)\btime\b.*?\bin\s+([A-Za-z][A-Za-z_/ .'-]*?)\s*\??$"),
            shift: re(&format!(
                r"(?i){date}\s*(plus|\+|minus|-|after|before)?\s*(\d+)\s*(days?|weeks?|months?|years?)(?:\s+(after|before|from|later|earlier))?"
            )),
            shift_before_date: re(&format!(
                r"(?i)(\d+)\s*(days?|weeks?|months?|years?)\s+(after|before|from)\s+{date}"
            )),
            between: re(&format!(r"(?i)\bdays\b.*?\b(?:between|from)\s+{date}\s+(?:and|to|until)\s+{date}")),
            weekday: re(&format!(r"(?i)\bwhat\s+day\b.*?{date}")),
        }
    })
}

/// The zone for an IANA name or a city in one (case and spaces forgiven).
pub fn zone(place: &str) -> Result<TimeZone, DateError> {
    let place = place.trim().trim_end_matches('.');
    if let Ok(tz) = TimeZone::get(place) {
        return Ok(tz);
    }
    let wanted = place.replace(' ', "_").to_lowercase();
    for name in jiff::tz::db().available() {
        let name = name.as_str();
        let city = name.rsplit('/').next().unwrap_or(name).to_lowercase();
        if city == wanted {
            return TimeZone::get(name).map_err(|e| DateError::Value(e.to_string()));
        }
    }
    Err(DateError::Zone(place.to_owned()))
}

fn date(s: &str) -> Result<Date, DateError> {
    s.parse::<Date>()
        .map_err(|e| DateError::Value(format!("{s:?} is not a date: {e}")))
}

/// Answers `text`, reading the clock for "now" questions.
pub fn answer(text: &str) -> Result<String, DateError> {
    answer_at(text, &Zoned::now())
}

/// Answers `text` as if it were `now`.
pub fn answer_at(text: &str, now: &Zoned) -> Result<String, DateError> {
    let p = patterns();
    let value = |e: jiff::Error| DateError::Value(e.to_string());
    if let Some(c) = p.between.captures(text) {
        let (a, b) = (date(&c[1])?, date(&c[2])?);
        let days = a.until((Unit::Day, b)).map_err(value)?.get_days();
        return Ok(format!("{days} days from {a} to {b}"));
    }
    let lower = |m: Option<regex::Match>| m.map(|m| m.as_str().to_lowercase());
    let shift = if let Some(c) = p.shift_before_date.captures(text) {
        let back = lower(c.get(3)).as_deref() == Some("before");
        Some((date(&c[4])?, c[1].to_owned(), c[2].to_lowercase(), back))
    } else if let Some(c) = p.shift.captures(text) {
        let back = matches!(lower(c.get(2)).as_deref(), Some("minus" | "-" | "before"))
            || matches!(lower(c.get(5)).as_deref(), Some("before" | "earlier"));
        Some((date(&c[1])?, c[3].to_owned(), c[4].to_lowercase(), back))
    } else {
        None
    };
    if let Some((d, n, unit, back)) = shift {
        let n: i64 = n.parse().map_err(|_| DateError::Shape)?;
        let n = if back { -n } else { n };
        let span = match unit.trim_end_matches('s') {
            "day" => Span::new().try_days(n),
            "week" => Span::new().try_weeks(n),
            "month" => Span::new().try_months(n),
            _ => Span::new().try_years(n),
        }
        .map_err(value)?;
        let out = d.checked_add(span).map_err(value)?;
        return Ok(format!("{out} ({})", out.strftime("%A")));
    }
    if let Some(c) = p.weekday.captures(text) {
        let d = date(&c[1])?;
        return Ok(format!("{d} is a {}", d.strftime("%A")));
    }
    if let Some(c) = p.now_in.captures(text) {
        let tz = zone(&c[1])?;
        let name = tz.iana_name().unwrap_or("the zone").to_owned();
        let there = now.with_time_zone(tz);
        return Ok(format!(
            "{} ({name}, {})",
            there.strftime("%H:%M on %A %Y-%m-%d"),
            there.strftime("%Z, UTC%:z")
        ));
    }
    Err(DateError::Shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_questions_are_answered_exactly() {
        let now: Zoned = "2026-12-01T09:30:00+00:00[UTC]".parse().unwrap();
        let a = |q: &str| answer_at(q, &now).unwrap_or_else(|e| format!("error: {e}"));
        assert_eq!(
            a("What time is it in Tokyo?"),
            "18:30 on Tuesday 2026-12-01 (Asia/Tokyo, JST, UTC+09:00)"
        );
        assert_eq!(
            a("what time is it in new york"),
            "04:30 on Tuesday 2026-12-01 (America/New_York, EST, UTC-05:00)"
        );
        assert_eq!(
            a("time in Europe/Berlin"),
            "10:30 on Tuesday 2026-12-01 (Europe/Berlin, CET, UTC+01:00)"
        );
        assert!(a("what time is it in Atlantis?").contains("no time zone"));
        assert_eq!(
            a("What is 2026-01-31 plus 1 month?"),
            "2026-02-28 (Saturday)"
        );
        assert_eq!(a("2024-03-01 minus 1 day"), "2024-02-29 (Thursday)");
        assert_eq!(
            a("what date is 10 days after 2026-12-25"),
            "2027-01-04 (Monday)"
        );
        assert_eq!(a("3 weeks before 2026-12-25"), "2026-12-04 (Friday)");
        assert_eq!(
            a("how are you"),
            "error: not a date or time question this handler knows"
        );
        assert_eq!(a("2026-12-25 + 10 days"), "2027-01-04 (Monday)");
        assert_eq!(
            a("How many days between 2026-01-01 and 2026-12-25?"),
            "358 days from 2026-01-01 to 2026-12-25"
        );
        assert_eq!(
            a("What day of the week is 2000-01-01?"),
            "2000-01-01 is a Saturday"
        );
        assert!(a("2026-02-30 plus 1 day").contains("not a date"));
    }
}
