//! Format checks: email addresses, URLs, UUIDs, and JSON (optionally against
//! a JSON Schema). Each answers whether the text is valid and, if not, why.

use regex::Regex;
use std::sync::OnceLock;

/// `Ok(description)` when valid, `Err(reason)` when not.
pub type Verdict = Result<String, String>;

fn re(cell: &'static OnceLock<Regex>, pattern: &str) -> &'static Regex {
    cell.get_or_init(|| Regex::new(pattern).expect("valid pattern"))
}

/// A practical address: a dot-atom local part (no quoted forms or comments)
/// and a domain of labels with a top level of two letters or more.
pub fn email(text: &str) -> Verdict {
    static R: OnceLock<Regex> = OnceLock::new();
    let r = re(
        &R,
        r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$",
    );
    let t = text.trim();
    if t.len() > 254 {
        return Err("it is longer than 254 characters".into());
    }
    if r.is_match(t) {
        Ok(format!("{t} is a valid email address"))
    } else if !t.contains('@') {
        Err(format!("{t} has no @"))
    } else {
        Err(format!("{t} is not a valid email address"))
    }
}

/// An absolute URL with a host (`https://example.com/a?b`).
pub fn url(text: &str) -> Verdict {
    let t = text.trim();
    match url::Url::parse(t) {
        Ok(u) if u.has_host() => Ok(format!(
            "{t} is a valid URL (scheme {}, host {})",
            u.scheme(),
            u.host_str().unwrap_or_default()
        )),
        Ok(_) => Err(format!("{t} has no host")),
        Err(e) => Err(format!("{t} is not a valid URL: {e}")),
    }
}

/// The 8-4-4-4-12 hex form; reports the version digit.
pub fn uuid(text: &str) -> Verdict {
    static R: OnceLock<Regex> = OnceLock::new();
    let r = re(
        &R,
        r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-([0-9a-fA-F])[0-9a-fA-F]{3}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
    );
    let t = text.trim();
    match r.captures(t) {
        Some(c) => Ok(format!("{t} is a valid UUID (version {})", &c[1])),
        None => Err(format!("{t} is not a UUID (8-4-4-4-12 hexadecimal digits)")),
    }
}

/// JSON, and with `schema` valid against it (every violation listed).
pub fn json(text: &str, schema: Option<&jsonschema::Validator>) -> Verdict {
    let value: serde_json::Value =
        serde_json::from_str(text.trim()).map_err(|e| format!("not valid JSON: {e}"))?;
    let Some(v) = schema else {
        return Ok("valid JSON".into());
    };
    let errors: Vec<String> = v
        .iter_errors(&value)
        .map(|e| {
            let at = e.instance_path().to_string();
            let at = if at.is_empty() { "/".to_owned() } else { at };
            format!("{at}: {e}")
        })
        .collect();
    if errors.is_empty() {
        Ok("valid JSON that matches the schema".into())
    } else {
        Err(format!(
            "JSON that does not match the schema: {}",
            errors.join("; ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_checked() {
        assert!(email("ann.lee+x@mail.example.org").is_ok());
        assert!(email("ann@localhost").is_err());
        assert!(email("no-at-sign.example.com")
            .unwrap_err()
            .contains("no @"));
        assert!(email("a..b@example.com").is_err());
        assert!(url("https://example.com/a?b=1")
            .unwrap()
            .contains("host example.com"));
        assert!(url("example.com").is_err());
        assert!(uuid("123e4567-e89b-12d3-a456-426614174000")
            .unwrap()
            .contains("version 1"));
        assert!(uuid("123e4567-e89b-12d3-a456-42661417400").is_err());
        assert_eq!(json("[1, 2]", None).unwrap(), "valid JSON");
        assert!(json("{", None).unwrap_err().contains("not valid JSON"));
        let schema = serde_json::json!({"type": "object", "required": ["id"], "properties": {"id": {"type": "integer"}}});
        let v = jsonschema::validator_for(&schema).unwrap();
        assert!(json(r#"{"id": 3}"#, Some(&v)).is_ok());
        let err = json(r#"{"id": "x"}"#, Some(&v)).unwrap_err();
        assert!(err.contains("/id"), "{err}");
    }
}
