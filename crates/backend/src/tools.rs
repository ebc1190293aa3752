//! Tool calls in the model's output, in the Hermes format the supported chat
//! templates use: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, one
//! block per call. Parsed into OpenAI's `tool_calls`; text outside the blocks stays
//! content. A block whose JSON does not parse is left as text, not guessed at.

pub use inferd_grammar::CallPiece;
use inferd_grammar::ToolCallStream;
use serde_json::{json, Value};

pub use inferd_grammar::{TOOL_CALL_CLOSE as CLOSE, TOOL_CALL_OPEN as OPEN};

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

/// For a chat template that ignores `tools`: describes the tools in a system
/// message in the Hermes format (appended to the first system message, or a new
/// one in front), writes earlier assistant tool calls as `<tool_call>` blocks and
/// tool results as `<tool_response>` blocks in a user turn — the same text a
/// Hermes-style template would have produced, so the model sees the whole round
/// trip.
pub fn inline_into_messages(messages: &mut Vec<Value>, tools: &[Value]) {
    let mut block = String::from(
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
         You are provided with function signatures within <tools></tools> XML tags:\n<tools>",
    );
    for t in tools {
        block.push('\n');
        block.push_str(&t.to_string());
    }
    block.push_str(
        "\n</tools>\n\nFor each function call, return a json object with function name and \
         arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n\
         {\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>",
    );
    match messages.first_mut() {
        Some(m) if m["role"] == "system" => {
            let text = m["content"].as_str().unwrap_or("").to_owned();
            m["content"] = json!(format!("{text}\n\n{block}"));
        }
        _ => messages.insert(0, json!({"role": "system", "content": block})),
    }
    for m in messages.iter_mut() {
        match m["role"].as_str() {
            Some("assistant") => {
                let Some(Value::Array(calls)) = m.get("tool_calls").cloned() else {
                    continue;
                };
                let mut text = m["content"].as_str().unwrap_or("").to_owned();
                for c in &calls {
                    let f = &c["function"];
                    let args = match &f["arguments"] {
                        Value::String(s) => serde_json::from_str(s).unwrap_or(json!(s)),
                        other => other.clone(),
                    };
                    if !text.is_empty() {
                        text.push('\n');
                    }
                    text.push_str(&format!(
                        "{OPEN}\n{}\n{CLOSE}",
                        json!({"name": f["name"], "arguments": args})
                    ));
                }
                m["content"] = json!(text);
            }
            Some("tool") => {
                let text = m["content"].as_str().unwrap_or("").to_owned();
                *m = json!({"role": "user", "content": format!("<tool_response>\n{text}\n</tool_response>")});
            }
            _ => {}
        }
    }
}

/// The id of call `i` of a response: `call_<request id>_<i>`.
pub fn call_id(request_id: &str, i: usize) -> String {
    let stem = request_id.rsplit('-').next().unwrap_or(request_id);
    format!("call_{stem}_{i}")
}

/// A call piece as OpenAI streams it: the first piece of a call carries its id,
/// type and name.
pub fn to_delta(p: CallPiece, request_id: &str) -> inferd_protocol::ToolCallDelta {
    let first = p.name.is_some();
    inferd_protocol::ToolCallDelta {
        index: p.call,
        id: first.then(|| call_id(request_id, p.call)),
        kind: first.then(|| "function".to_owned()),
        function: inferd_protocol::FunctionCallDelta {
            name: p.name,
            arguments: p.arguments,
        },
    }
}

/// Streaming with tools: passes through text that cannot belong to a tool call
/// and holds back the rest, so a `<tool_call>` block is never streamed as content.
/// Calls the model chose to make are parsed when the output ends; calls a
/// grammar forced (`forced`) are streamed as they are generated, name first,
/// then argument fragments.
#[derive(Debug, Default)]
pub struct ToolGate {
    /// Text that may be the start of `<tool_call>`.
    pending: String,
    /// Everything from `<tool_call>` on, once one started.
    call_text: Option<String>,
    forced: Option<ToolCallStream>,
}

impl ToolGate {
    /// For output a tool-call grammar forces: every byte belongs to a call.
    pub fn forced() -> ToolGate {
        ToolGate {
            forced: Some(ToolCallStream::default()),
            ..ToolGate::default()
        }
    }

    /// Adds output text; returns what may be emitted as content now, and the
    /// pieces of forced calls it completes.
    pub fn push(&mut self, d: &str) -> (String, Vec<CallPiece>) {
        if let Some(f) = &mut self.forced {
            match f.push(d) {
                Ok(pieces) => return (String::new(), pieces),
                // Cannot happen under the grammar; if it does, fall back to
                // parsing the whole output at the end.
                Err(e) => {
                    tracing::warn!(error = %e, "forced tool-call output did not stream");
                    self.call_text = Some(f.text().to_owned());
                    self.forced = None;
                    return (String::new(), Vec::new());
                }
            }
        }
        if let Some(t) = &mut self.call_text {
            t.push_str(d);
            return (String::new(), Vec::new());
        }
        self.pending.push_str(d);
        if let Some(i) = self.pending.find(OPEN) {
            self.call_text = Some(self.pending[i..].to_owned());
            let out = self.pending[..i].to_owned();
            self.pending.clear();
            return (out, Vec::new());
        }
        let keep = (1..OPEN.len())
            .rev()
            .find(|&k| self.pending.ends_with(&OPEN[..k]))
            .unwrap_or(0);
        let cut = self.pending.len() - keep;
        (self.pending.drain(..cut).collect(), Vec::new())
    }

    /// At the end of the output: the text still held back, and the calls parsed
    /// from it, one whole piece each (none when the held text was no valid call:
    /// then it is all content).
    pub fn finish(&mut self) -> (String, Vec<CallPiece>) {
        if self.forced.is_some() {
            return (String::new(), Vec::new());
        }
        let held = std::mem::take(&mut self.pending);
        let whole = |calls: Vec<ToolCall>| {
            calls
                .into_iter()
                .enumerate()
                .map(|(i, c)| CallPiece {
                    call: i,
                    name: Some(c.name),
                    arguments: c.arguments,
                })
                .collect()
        };
        match self.call_text.take() {
            Some(text) => match parse(&text) {
                Some((content, calls)) => (held + &content, whole(calls)),
                None => (held + &text, Vec::new()),
            },
            None => (held, Vec::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tools_are_inlined_for_templates_that_ignore_them() {
        let tools = [json!({"type": "function", "function": {"name": "get_weather"}})];
        let mut messages = vec![
            json!({"role": "user", "content": "Weather in Paris?"}),
            json!({"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]}),
            json!({"role": "tool", "tool_call_id": "c1", "content": "Sunny"}),
        ];
        inline_into_messages(&mut messages, &tools);
        assert_eq!(messages.len(), 4);
        let system = messages[0]["content"].as_str().unwrap();
        assert_eq!(messages[0]["role"], "system");
        assert!(system.contains("<tools>\n{\"type\":\"function\",\"function\":{\"name\":\"get_weather\"}}\n</tools>"), "{system}");
        let call = messages[2]["content"].as_str().unwrap();
        assert_eq!(call, "<tool_call>\n{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Paris\"}}\n</tool_call>");
        // What the model wrote is what the parser reads back.
        assert_eq!(parse(call).unwrap().1[0].arguments, r#"{"city":"Paris"}"#);
        assert_eq!(
            messages[3],
            json!({"role": "user", "content": "<tool_response>\nSunny\n</tool_response>"})
        );

        // An existing system message is extended, not duplicated.
        let mut with_system = vec![
            json!({"role": "system", "content": "Be brief."}),
            json!({"role": "user", "content": "hi"}),
        ];
        inline_into_messages(&mut with_system, &tools);
        assert_eq!(with_system.len(), 2);
        assert!(with_system[0]["content"]
            .as_str()
            .unwrap()
            .starts_with("Be brief.\n\n# Tools"));
    }

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
        let d = to_delta(
            CallPiece {
                call: 1,
                name: Some("f".into()),
                arguments: String::new(),
            },
            "chatcmpl-ab12",
        );
        assert_eq!(d.id.as_deref(), Some("call_ab12_1"));
        assert_eq!((d.index, d.kind.as_deref()), (1, Some("function")));
        assert_eq!(d.function.name.as_deref(), Some("f"));
    }

    #[test]
    fn streamed_tool_call_is_held_back_and_parsed() {
        let mut g = ToolGate::default();
        let pieces = [
            "Sure. <tool",
            "_call>{\"name\": \"f\", ",
            "\"arguments\": {\"a\": 1}}</tool_call>",
        ];
        let out: String = pieces.iter().map(|p| g.push(p).0).collect();
        assert_eq!(out, "Sure. ");
        let (content, calls) = g.finish();
        assert_eq!(content, "");
        assert_eq!(calls[0].name.as_deref(), Some("f"));
        assert_eq!(calls[0].arguments, r#"{"a":1}"#);
    }

    #[test]
    fn text_that_only_starts_like_a_tool_call_is_released() {
        let mut g = ToolGate::default();
        assert_eq!(g.push("a <to").0, "a ");
        assert_eq!(g.push("pic").0, "<topic");
        assert_eq!(g.push(" <tool_call>not json").0, " ");
        assert_eq!(g.finish(), ("<tool_call>not json".to_owned(), Vec::new()));
    }

    #[test]
    fn forced_calls_stream_name_first() {
        let mut g = ToolGate::forced();
        let (text, pieces) = g.push("<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\"");
        assert_eq!(text, "");
        assert_eq!(pieces[0].name.as_deref(), Some("f"));
        assert_eq!(pieces[1].arguments, "{\"a\"");
        let (_, pieces) = g.push(": 1}}\n</tool_call>");
        assert_eq!(pieces[0].arguments, ": 1}");
        assert_eq!(g.finish(), (String::new(), Vec::new()));
    }
}
