//! Structured output on the wire: OpenAI's `response_format`, vLLM's `guided_*`
//! extensions and llama.cpp's `grammar` / `json_schema`, turned into one
//! [`OutputConstraint`] per request. The grammar itself is compiled later, by the
//! backend that serves the model (a schema it cannot compile is a 400 there).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ProtocolError;
use crate::request::{FunctionDef, ResponseFormat};

/// What every generated token must keep the output inside.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputConstraint {
    /// The request field it came from (named in errors).
    pub param: &'static str,
    pub kind: ConstraintKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ConstraintKind {
    /// Any JSON object (`response_format: {"type": "json_object"}`).
    JsonObject,
    /// JSON matching a schema (`response_format` `json_schema`, `guided_json`,
    /// llama.cpp's `json_schema`).
    JsonSchema(Value),
    /// A regular expression over the whole output (`guided_regex`).
    Regex(String),
    /// Exactly one of these strings (`guided_choice`).
    Choice(Vec<String>),
    /// A Lark grammar (`guided_grammar`).
    Lark(String),
    /// A GBNF grammar, llama.cpp's format (`grammar`).
    Gbnf(String),
    /// One tool call (or several, with `parallel`) to one of `tools`, whose
    /// arguments match that tool's `parameters` schema. Built by the backend from
    /// `tool_choice: "required"` or a named function, in its model's tool-call format.
    ToolCalls {
        tools: Vec<FunctionDef>,
        parallel: bool,
    },
}

/// The structured-output fields a chat or completion request may carry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConstraintFields {
    pub response_format: Option<ResponseFormat>,
    pub guided_json: Option<Value>,
    pub guided_regex: Option<String>,
    pub guided_choice: Option<Vec<String>>,
    pub guided_grammar: Option<String>,
    pub grammar: Option<String>,
    pub json_schema: Option<Value>,
}

impl ConstraintFields {
    /// The one constraint these fields ask for; `None` for plain text. Two at once
    /// is an error naming both.
    pub fn validate(self) -> Result<Option<OutputConstraint>, ProtocolError> {
        let mut found: Vec<OutputConstraint> = Vec::new();
        if let Some(rf) = self.response_format {
            found.extend(response_format(rf)?);
        }
        if let Some(v) = self.guided_json {
            found.push(schema_constraint("guided_json", v)?);
        }
        if let Some(v) = self.json_schema {
            found.push(schema_constraint("json_schema", v)?);
        }
        if let Some(rx) = self.guided_regex {
            found.push(OutputConstraint {
                param: "guided_regex",
                kind: ConstraintKind::Regex(rx),
            });
        }
        if let Some(choices) = self.guided_choice {
            if choices.is_empty() {
                return Err(ProtocolError::field(
                    "guided_choice",
                    "`guided_choice` must list at least one string",
                ));
            }
            found.push(OutputConstraint {
                param: "guided_choice",
                kind: ConstraintKind::Choice(choices),
            });
        }
        for (param, text, gbnf) in [
            ("guided_grammar", self.guided_grammar, false),
            ("grammar", self.grammar, true),
        ] {
            let Some(text) = text else { continue };
            if text.trim().is_empty() {
                return Err(ProtocolError::field(
                    param,
                    format!("`{param}` must not be empty"),
                ));
            }
            found.push(OutputConstraint {
                param,
                kind: if gbnf {
                    ConstraintKind::Gbnf(text)
                } else {
                    ConstraintKind::Lark(text)
                },
            });
        }
        match found.len() {
            0 | 1 => Ok(found.pop()),
            _ => Err(ProtocolError::field(
                found[1].param,
                format!(
                    "only one output constraint per request: got `{}` and `{}`",
                    found[0].param, found[1].param
                ),
            )),
        }
    }
}

fn response_format(rf: ResponseFormat) -> Result<Option<OutputConstraint>, ProtocolError> {
    let kind = match rf.kind.as_str() {
        "text" => return Ok(None),
        "json_object" => ConstraintKind::JsonObject,
        "json_schema" => {
            let Some(js) = rf.json_schema else {
                return Err(ProtocolError::field(
                    "response_format.json_schema",
                    "`response_format.json_schema` is required with type `json_schema`",
                ));
            };
            let Some(obj) = js.as_object() else {
                return Err(ProtocolError::field(
                    "response_format.json_schema",
                    "`response_format.json_schema` must be an object with `name` and `schema`",
                ));
            };
            match obj.get("schema") {
                Some(s) if s.is_object() || s.is_boolean() => {
                    ConstraintKind::JsonSchema(s.clone())
                }
                // OpenAI allows leaving the schema out: then any JSON object.
                None | Some(Value::Null) => ConstraintKind::JsonObject,
                Some(_) => {
                    return Err(ProtocolError::field(
                        "response_format.json_schema.schema",
                        "`response_format.json_schema.schema` must be a JSON Schema object",
                    ))
                }
            }
        }
        other => {
            return Err(ProtocolError::field(
                "response_format.type",
                format!(
                    "`response_format.type` must be \"text\", \"json_object\" or \"json_schema\", got {other:?}"
                ),
            ))
        }
    };
    Ok(Some(OutputConstraint {
        param: "response_format",
        kind,
    }))
}

/// A schema given as an object, or as JSON text (vLLM accepts both).
fn schema_constraint(param: &'static str, v: Value) -> Result<OutputConstraint, ProtocolError> {
    let schema = match v {
        Value::String(s) => serde_json::from_str(&s).map_err(|e| {
            ProtocolError::field(param, format!("`{param}` is not valid JSON: {e}"))
        })?,
        other => other,
    };
    if !(schema.is_object() || schema.is_boolean()) {
        return Err(ProtocolError::field(
            param,
            format!("`{param}` must be a JSON Schema object"),
        ));
    }
    Ok(OutputConstraint {
        param,
        kind: ConstraintKind::JsonSchema(schema),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Value) -> Result<Option<OutputConstraint>, ProtocolError> {
        serde_json::from_value::<ConstraintFields>(v)
            .unwrap()
            .validate()
    }

    #[test]
    fn each_field_becomes_its_constraint() {
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        let cases = [
            (json!({"response_format": {"type": "text"}}), None),
            (
                json!({"response_format": {"type": "json_object"}}),
                Some(("response_format", ConstraintKind::JsonObject)),
            ),
            (
                json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": true}}}),
                Some((
                    "response_format",
                    ConstraintKind::JsonSchema(schema.clone()),
                )),
            ),
            (
                json!({"guided_json": schema.to_string()}),
                Some(("guided_json", ConstraintKind::JsonSchema(schema.clone()))),
            ),
            (
                json!({"json_schema": schema}),
                Some(("json_schema", ConstraintKind::JsonSchema(schema.clone()))),
            ),
            (
                json!({"guided_regex": "[0-9]+"}),
                Some(("guided_regex", ConstraintKind::Regex("[0-9]+".into()))),
            ),
            (
                json!({"guided_choice": ["yes", "no"]}),
                Some((
                    "guided_choice",
                    ConstraintKind::Choice(vec!["yes".into(), "no".into()]),
                )),
            ),
            (
                json!({"guided_grammar": "start: \"a\""}),
                Some((
                    "guided_grammar",
                    ConstraintKind::Lark("start: \"a\"".into()),
                )),
            ),
            (
                json!({"grammar": "root ::= \"a\""}),
                Some(("grammar", ConstraintKind::Gbnf("root ::= \"a\"".into()))),
            ),
        ];
        for (body, want) in cases {
            let got = fields(body.clone()).unwrap().map(|c| (c.param, c.kind));
            assert_eq!(got, want, "{body}");
        }
    }

    #[test]
    fn bad_constraints_name_their_field() {
        let cases = [
            (
                json!({"response_format": {"type": "yaml"}}),
                "response_format.type",
            ),
            (
                json!({"response_format": {"type": "json_schema"}}),
                "response_format.json_schema",
            ),
            (
                json!({"response_format": {"type": "json_schema", "json_schema": {"schema": 3}}}),
                "response_format.json_schema.schema",
            ),
            (json!({"guided_json": "{not json"}), "guided_json"),
            (json!({"guided_choice": []}), "guided_choice"),
            (json!({"grammar": "  "}), "grammar"),
            (
                json!({"guided_regex": "a", "response_format": {"type": "json_object"}}),
                "guided_regex",
            ),
        ];
        for (body, param) in cases {
            let e = fields(body.clone()).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {e:?}");
        }
    }
}
