//! Tool calls in the model's output, in the Hermes format the supported chat
//! templates use: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, one
//! block per call. Parsed into OpenAI's `tool_calls`; text outside the blocks stays
//! content. A block whose JSON does not parse is left as text, not guessed at.

use serde_json::{json, Value};

pub const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub name: String,
    /// The arguments as a JSON string, as OpenAI's API carries them.
    pub arguments: String,
}

/// Splits `text` into content and tool calls; `None` when there are no valid calls.
pub fn parse(text: &str) -> Option<(String, Vec<ToolCall>)> {
    let mut content = String::new();
    let mut calls = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(OPEN) {
        let after = &rest[start + OPEN.len()..];
        let (inner, next) = match after.find(CLOSE) {
            Some(end) => (&after[..end], &after[end + CLOSE.len()..]),
            // An unterminated final block (generation stopped): take what is there.
            None => (after, ""),
        };
        match parse_one(inner) {
            Some(call) => {
                content.push_str(&rest[..start]);
                calls.push(call);
            }
            None => content.push_str(
                &rest[..start
                    + OPEN.len()
                    + inner.len()
                    + if next.is_empty() { 0 } else { CLOSE.len() }],
            ),
        }
        rest = next;
    }
    content.push_str(rest);
    (!calls.is_empty()).then(|| (content.trim().to_owned(), calls))
}

fn parse_one(inner: &str) -> Option<ToolCall> {
    let v: Value = serde_json::from_str(inner.trim()).ok()?;
    let name = v.get("name")?.as_str()?.to_owned();
    let arguments = match v.get("arguments").or_else(|| v.get("parameters")) {
        None | Some(Value::Null) => "{}".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    Some(ToolCall { name, arguments })
}

/// OpenAI's `tool_calls` array; ids are `call_<request id>_<index>`.
pub fn to_json(calls: &[ToolCall], request_id: &str, with_index: bool) -> Value {
    Value::Array(
        calls
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut v = json!({
                    "id": format!("call_{}_{i}", request_id.rsplit('-').next().unwrap_or(request_id)),
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                });
                if with_index {
                    v["index"] = json!(i);
                }
                v
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_calls_and_keeps_surrounding_text() {
        let text = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
        let (content, calls) = parse(text).unwrap();
        assert_eq!(content, "Let me check.");
        assert_eq!(
            calls,
            vec![ToolCall {
                name: "get_weather".into(),
                arguments: r#"{"city":"Paris"}"#.into()
            }]
        );
    }

    #[test]
    fn several_calls_and_unterminated_last_block() {
        let text = r#"<tool_call>{"name": "a", "arguments": {}}</tool_call><tool_call>{"name": "b", "arguments": "{\"x\": 1}"}"#;
        let (content, calls) = parse(text).unwrap();
        assert_eq!(content, "");
        assert_eq!(
            calls.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(calls[1].arguments, r#"{"x": 1}"#);
    }

    #[test]
    fn invalid_json_stays_text() {
        assert_eq!(parse("<tool_call>not json</tool_call>"), None);
        assert_eq!(parse("no calls here"), None);
        let j = to_json(
            &[ToolCall {
                name: "f".into(),
                arguments: "{}".into(),
            }],
            "chatcmpl-ab12",
            true,
        );
        assert_eq!(j[0]["id"], "call_ab12_0");
        assert_eq!(j[0]["index"], 0);
        assert_eq!(j[0]["function"]["name"], "f");
    }
}
