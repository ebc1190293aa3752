//! Deterministic handlers: rules that answer a request with code instead of
//! a model, or change the request before it is routed.
//!
//! A rule matches the last user message, by a regex or by that message being
//! JSON valid against a JSON Schema, and then either
//! - answers from a `builtin`: `arithmetic` (an expression, exact), `convert`
//!   (units), `datetime` (time in a zone, date arithmetic), `validate_email`,
//!   `validate_url`, `validate_uuid`, `validate_json` (optionally against a
//!   schema), `lookup` (a CSV table), each reading the regex's `input` group
//!   (the whole message without one; `convert` also takes groups `value`,
//!   `from` and `to`, `lookup` a group `key`);
//! - or answers from a template alone;
//! - or transforms the request: adds a system hint and/or sends it to a tier.
//!
//! An answer's text is the rule's `answer` template with `{result}` (the
//! builtin's answer), `{input}`, the regex's named groups and (lookup) the row's
//! columns filled in; without a template, `{result}`. Rules are tried in
//! order; the first that matches decides. A rule that fails (its input is not
//! an expression, no row has the key, ...) lets the request go on to the
//! model, with the failure reported.

pub mod arith;
pub mod convert;
pub mod datetime;
pub mod lookup;
pub mod rational;
pub mod validate;

use std::collections::BTreeMap;
use std::path::PathBuf;

use regex::Regex;

/// A rule as configured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleSpec {
    pub name: String,
    pub regex: Option<String>,
    /// Matches when the last user message is JSON valid against this schema.
    pub json_schema: Option<serde_json::Value>,
    /// Matches when the gateway's intent layer labels the request so.
    pub intent: Option<String>,
    pub builtin: Option<String>,
    pub answer: Option<String>,
    /// `lookup`: the CSV file and its key column.
    pub lookup_file: Option<PathBuf>,
    pub key_column: Option<String>,
    /// `validate_json`: the schema the input must match.
    pub schema: Option<serde_json::Value>,
    pub system_hint: Option<String>,
    pub tier: Option<String>,
}

enum Matcher {
    Regex(Regex),
    Schema(Box<jsonschema::Validator>),
    Intent(String),
}

enum Builtin {
    Arithmetic,
    Convert,
    DateTime,
    Email,
    Url,
    Uuid,
    Json(Option<Box<jsonschema::Validator>>),
    Lookup(lookup::Table),
}

enum Action {
    Answer {
        builtin: Option<Builtin>,
        template: Option<String>,
    },
    Transform {
        system_hint: Option<String>,
        tier: Option<String>,
    },
}

pub struct Rule {
    name: String,
    matcher: Matcher,
    action: Action,
}

pub const BUILTINS: [&str; 8] = [
    "arithmetic",
    "convert",
    "datetime",
    "validate_email",
    "validate_url",
    "validate_uuid",
    "validate_json",
    "lookup",
];

/// What the rules make of a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome<'a> {
    /// No rule matched.
    Pass,
    Answer {
        rule: &'a str,
        text: String,
    },
    Transform {
        rule: &'a str,
        system_hint: Option<&'a str>,
        tier: Option<&'a str>,
    },
    /// The rule matched and could not answer; the model should.
    Failed {
        rule: &'a str,
        error: String,
    },
}

impl Rule {
    pub fn new(spec: &RuleSpec) -> Result<Rule, String> {
        let matcher = match (&spec.regex, &spec.json_schema, &spec.intent) {
            (Some(r), None, None) => {
                Matcher::Regex(Regex::new(r).map_err(|e| format!("`regex` is not a regex: {e}"))?)
            }
            (None, Some(s), None) => Matcher::Schema(Box::new(
                jsonschema::validator_for(s)
                    .map_err(|e| format!("`json_schema` is not a JSON Schema: {e}"))?,
            )),
            (None, None, Some(i)) => Matcher::Intent(i.clone()),
            _ => return Err("set one of `regex`, `json_schema` or `intent`".into()),
        };
        let transform = spec.system_hint.is_some() || spec.tier.is_some();
        let answers = spec.builtin.is_some() || spec.answer.is_some();
        let action = match (answers, transform) {
            (true, true) => {
                return Err(
                    "a rule answers (`builtin`, `answer`) or transforms (`system_hint`, `tier`), not both"
                        .into(),
                )
            }
            (false, false) => {
                return Err("give it a `builtin`, an `answer`, a `system_hint` or a `tier`".into())
            }
            (false, true) => Action::Transform {
                system_hint: spec.system_hint.clone(),
                tier: spec.tier.clone(),
            },
            (true, false) => Action::Answer {
                builtin: spec.builtin.as_deref().map(|b| builtin(b, spec)).transpose()?,
                template: spec.answer.clone(),
            },
        };
        if spec.lookup_file.is_some() && spec.builtin.as_deref() != Some("lookup") {
            return Err("`lookup_file` needs `builtin = \"lookup\"`".into());
        }
        if spec.schema.is_some() && spec.builtin.as_deref() != Some("validate_json") {
            return Err("`schema` needs `builtin = \"validate_json\"`".into());
        }
        Ok(Rule {
            name: spec.name.clone(),
            matcher,
            action,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The intent it matches, if it matches by intent.
    pub fn intent(&self) -> Option<&str> {
        match &self.matcher {
            Matcher::Intent(i) => Some(i),
            _ => None,
        }
    }

    /// Named groups (and `input`) when it matches `text`, labelled `intent`.
    fn matches(&self, text: &str, intent: Option<&str>) -> Option<BTreeMap<String, String>> {
        let mut vars = BTreeMap::new();
        match &self.matcher {
            Matcher::Intent(i) => {
                if intent != Some(i.as_str()) {
                    return None;
                }
            }
            Matcher::Regex(r) => {
                let c = r.captures(text)?;
                for name in r.capture_names().flatten() {
                    if let Some(m) = c.name(name) {
                        vars.insert(name.to_owned(), m.as_str().to_owned());
                    }
                }
            }
            Matcher::Schema(v) => {
                let value: serde_json::Value = serde_json::from_str(text.trim()).ok()?;
                if !v.is_valid(&value) {
                    return None;
                }
            }
        }
        vars.entry("input".into())
            .or_insert_with(|| text.to_owned());
        Some(vars)
    }
}

fn builtin(name: &str, spec: &RuleSpec) -> Result<Builtin, String> {
    Ok(match name {
        "arithmetic" => Builtin::Arithmetic,
        "convert" => Builtin::Convert,
        "datetime" => Builtin::DateTime,
        "validate_email" => Builtin::Email,
        "validate_url" => Builtin::Url,
        "validate_uuid" => Builtin::Uuid,
        "validate_json" => Builtin::Json(
            spec.schema
                .as_ref()
                .map(|s| {
                    jsonschema::validator_for(s)
                        .map(Box::new)
                        .map_err(|e| format!("`schema` is not a JSON Schema: {e}"))
                })
                .transpose()?,
        ),
        "lookup" => {
            let file = spec
                .lookup_file
                .as_ref()
                .ok_or("`builtin = \"lookup\"` needs `lookup_file`")?;
            let key = spec
                .key_column
                .as_deref()
                .ok_or("`builtin = \"lookup\"` needs `key_column`")?;
            Builtin::Lookup(lookup::Table::load(file, key)?)
        }
        other => {
            return Err(format!(
                "`builtin` {other:?} is not one of {}",
                BUILTINS.join(", ")
            ))
        }
    })
}

/// `{name}` replaced by `vars[name]`; `{{` and `}}` are braces; an unknown
/// name is an error.
fn fill(template: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(t) = tail.strip_prefix("{{") {
            out.push('{');
            rest = t;
        } else if let Some(t) = tail.strip_prefix("}}") {
            out.push('}');
            rest = t;
        } else if let Some(t) = tail.strip_prefix('{') {
            let end = t
                .find('}')
                .ok_or("a `{` in the answer template is not closed")?;
            let name = &t[..end];
            let v = vars.get(name).ok_or_else(|| {
                format!("the answer template names {{{name}}}, which this rule does not have")
            })?;
            out.push_str(v);
            rest = &t[end + 1..];
        } else {
            return Err("a `}` in the answer template has no `{`".into());
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The rules, in order.
#[derive(Default)]
pub struct Rules(Vec<Rule>);

impl Rules {
    pub fn new(specs: &[RuleSpec]) -> Result<Rules, String> {
        specs
            .iter()
            .enumerate()
            .map(|(i, s)| Rule::new(s).map_err(|e| format!("`rules[{i}]` ({}): {e}", s.name)))
            .collect::<Result<Vec<_>, _>>()
            .map(Rules)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The rules, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Rule> {
        self.0.iter()
    }

    /// What the first rule matching `last_user` (labelled `intent` by the
    /// intent layer, when it is sure) makes of it.
    pub fn apply(&self, last_user: &str, intent: Option<&str>) -> Outcome<'_> {
        for rule in &self.0 {
            let Some(mut vars) = rule.matches(last_user, intent) else {
                continue;
            };
            let name = rule.name.as_str();
            return match &rule.action {
                Action::Transform { system_hint, tier } => Outcome::Transform {
                    rule: name,
                    system_hint: system_hint.as_deref(),
                    tier: tier.as_deref(),
                },
                Action::Answer { builtin, template } => {
                    match answer(builtin.as_ref(), template.as_deref(), &mut vars) {
                        Ok(text) => Outcome::Answer { rule: name, text },
                        Err(error) => Outcome::Failed { rule: name, error },
                    }
                }
            };
        }
        Outcome::Pass
    }
}

fn answer(
    builtin: Option<&Builtin>,
    template: Option<&str>,
    vars: &mut BTreeMap<String, String>,
) -> Result<String, String> {
    let input = vars.get("input").cloned().unwrap_or_default();
    let verdict = |v: validate::Verdict, vars: &mut BTreeMap<String, String>| {
        let (valid, text) = match v {
            Ok(t) => ("yes", t),
            Err(t) => ("no", t),
        };
        vars.insert("valid".into(), valid.into());
        format!(
            "{}: {text}",
            if valid == "yes" { "Valid" } else { "Not valid" }
        )
    };
    let result = match builtin {
        None => None,
        Some(Builtin::Arithmetic) => Some(
            arith::evaluate(&input)
                .map_err(|e| e.to_string())?
                .display(),
        ),
        Some(Builtin::Convert) => {
            // Groups `value`, `from` and `to` when the question is worded
            // differently ("how many feet are in 3 miles").
            let input = match (vars.get("value"), vars.get("from"), vars.get("to")) {
                (Some(v), Some(f), Some(t)) => format!("{v} {f} to {t}"),
                _ => input,
            };
            let (v, unit) = convert::convert(&input).map_err(|e| e.to_string())?;
            Some(format!("{} {unit}", v.display()))
        }
        Some(Builtin::DateTime) => Some(datetime::answer(&input).map_err(|e| e.to_string())?),
        Some(Builtin::Email) => Some(verdict(validate::email(&input), vars)),
        Some(Builtin::Url) => Some(verdict(validate::url(&input), vars)),
        Some(Builtin::Uuid) => Some(verdict(validate::uuid(&input), vars)),
        Some(Builtin::Json(schema)) => {
            Some(verdict(validate::json(&input, schema.as_deref()), vars))
        }
        Some(Builtin::Lookup(table)) => {
            let key = vars.get("key").cloned().unwrap_or(input);
            let row = table.get(&key)?;
            let text = row
                .iter()
                .map(|(c, v)| format!("{c}: {v}"))
                .collect::<Vec<_>>()
                .join(", ");
            vars.extend(row);
            Some(text)
        }
    };
    if let Some(r) = &result {
        vars.insert("result".into(), r.clone());
    }
    match template {
        Some(t) => fill(t, vars),
        None => result.ok_or_else(|| "the rule has neither a builtin nor an answer".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, regex: &str) -> RuleSpec {
        RuleSpec {
            name: name.into(),
            regex: Some(regex.into()),
            ..Default::default()
        }
    }

    #[test]
    fn the_first_matching_rule_decides_and_failures_fall_through() {
        let rules = Rules::new(&[
            RuleSpec {
                builtin: Some("arithmetic".into()),
                answer: Some("{input} = {result}".into()),
                ..spec(
                    "math",
                    r"(?i)^what is (?P<input>[\d .+*/()%^-]+|\d+% of \d+)\??$",
                )
            },
            RuleSpec {
                answer: Some("Hello, {who}!".into()),
                ..spec("greet", r"(?i)^hi,? (?P<who>\w+)")
            },
            RuleSpec {
                system_hint: Some("Be careful.".into()),
                tier: Some("big".into()),
                ..spec("legal", r"(?i)\blawsuit\b")
            },
        ])
        .unwrap();
        assert_eq!(
            rules.apply("What is 17% of 240?", None),
            Outcome::Answer {
                rule: "math",
                text: "17% of 240 = 40.8".into()
            }
        );
        assert_eq!(
            rules.apply("hi Ann", None),
            Outcome::Answer {
                rule: "greet",
                text: "Hello, Ann!".into()
            }
        );
        assert_eq!(
            rules.apply("about my lawsuit", None),
            Outcome::Transform {
                rule: "legal",
                system_hint: Some("Be careful."),
                tier: Some("big")
            }
        );
        assert!(matches!(
            rules.apply("What is 1 / 0?", None),
            Outcome::Failed { rule: "math", .. }
        ));
        assert_eq!(rules.apply("tell me a story", None), Outcome::Pass);
        // By intent: only when the intent layer labelled the request so.
        let by_intent = Rules::new(&[RuleSpec {
            name: "hours".into(),
            intent: Some("opening_hours".into()),
            answer: Some("We are open 9 to 5.".into()),
            ..Default::default()
        }])
        .unwrap();
        assert_eq!(by_intent.apply("when can I come by", None), Outcome::Pass);
        assert_eq!(
            by_intent.apply("when can I come by", Some("opening_hours")),
            Outcome::Answer {
                rule: "hours",
                text: "We are open 9 to 5.".into()
            }
        );
        assert_eq!(by_intent.apply("x", Some("refund")), Outcome::Pass);
        let worded = Rules::new(&[RuleSpec {
            builtin: Some("convert".into()),
            ..spec(
                "units",
                r"(?i)how many (?P<to>[a-z ]+?) are in (?P<value>[\d.,]+) (?P<from>[a-z ]+?)\??$",
            )
        }])
        .unwrap();
        assert_eq!(
            worded.apply("How many feet are in 3 miles?", None),
            Outcome::Answer {
                rule: "units",
                text: "15840 feet".into()
            }
        );
    }

    #[test]
    fn bad_rules_are_refused_with_the_reason() {
        let err = |s: RuleSpec| Rules::new(&[s]).err().unwrap();
        assert!(err(spec("a", "(")).contains("not a regex"));
        assert!(err(spec("a", "x")).contains("give it"));
        assert!(err(RuleSpec {
            builtin: Some("magic".into()),
            ..spec("a", "x")
        })
        .contains("not one of"));
        assert!(err(RuleSpec {
            builtin: Some("convert".into()),
            tier: Some("t".into()),
            ..spec("a", "x")
        })
        .contains("not both"));
        assert!(err(RuleSpec {
            builtin: Some("lookup".into()),
            ..spec("a", "x")
        })
        .contains("lookup_file"));
        let unknown = Rules::new(&[RuleSpec {
            answer: Some("{nope}".into()),
            ..spec("t", "x")
        }])
        .unwrap();
        assert!(matches!(unknown.apply("x", None), Outcome::Failed { .. }));
    }

    #[test]
    fn a_json_schema_matcher_and_a_lookup_table() {
        let dir = std::env::temp_dir().join(format!("inferd-rules-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let csv = dir.join("capitals.csv");
        std::fs::write(
            &csv,
            "country,capital\nFrance,Paris\n\"Korea, South\",Seoul\n",
        )
        .unwrap();
        let rules = Rules::new(&[
            RuleSpec {
                name: "order".into(),
                json_schema: Some(serde_json::json!({"type": "object", "required": ["order_id"]})),
                answer: Some("Order received.".into()),
                ..Default::default()
            },
            RuleSpec {
                builtin: Some("lookup".into()),
                lookup_file: Some(csv),
                key_column: Some("country".into()),
                answer: Some("The capital of {country} is {capital}.".into()),
                ..spec("capital", r"(?i)capital of (?P<key>[\w ,]+?)\??$")
            },
        ])
        .unwrap();
        assert_eq!(
            rules.apply(r#"{"order_id": 7}"#, None),
            Outcome::Answer {
                rule: "order",
                text: "Order received.".into()
            }
        );
        assert_eq!(rules.apply(r#"{"other": 7}"#, None), Outcome::Pass);
        assert_eq!(
            rules.apply("What is the capital of korea, south?", None),
            Outcome::Answer {
                rule: "capital",
                text: "The capital of Korea, South is Seoul.".into()
            }
        );
        assert!(matches!(
            rules.apply("capital of Atlantis", None),
            Outcome::Failed { .. }
        ));
    }
}
