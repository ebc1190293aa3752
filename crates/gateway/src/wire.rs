//! Validated requests back into OpenAI's wire format, for an upstream server.
//!
//! What validation resolved stays resolved: defaults are written out (an
//! upstream's own defaults may differ), and the request always streams with
//! usage (module docs of the crate). The output constraint goes back into the
//! field it came from, so an upstream that lacks one of vLLM's or llama.cpp's
//! extensions refuses it rather than answering unconstrained.

use inferd_protocol::{
    ChatCompletionRequest, Common, CompletionRequest, ConstraintKind, OutputConstraint, Prompt,
    PromptInput, PromptItem, ResponseFormat, Stop, StreamOptions, ToolChoice, ToolMode,
    ValidChatRequest, ValidCompletionRequest,
};
use serde_json::{json, Value};

/// Writes a constraint into the request type's fields of the same names.
macro_rules! put_constraint {
    ($body:ident, $constraint:expr) => {
        if let Some(oc) = $constraint {
            let f = constraint_fields(oc);
            $body.response_format = f.response_format;
            $body.guided_json = f.guided_json;
            $body.guided_regex = f.guided_regex;
            $body.guided_choice = f.guided_choice;
            $body.guided_grammar = f.guided_grammar;
            $body.grammar = f.grammar;
            $body.json_schema = f.json_schema;
        }
    };
}

/// The body for `POST {base}/chat/completions`, asking for `model`.
pub fn chat_body(r: &ValidChatRequest, model: &str) -> ChatCompletionRequest {
    let mut body = ChatCompletionRequest {
        model: Some(model.to_owned()),
        messages: Some(r.with_sections().into_owned()),
        logprobs: r.logprobs.map(|_| true),
        top_logprobs: r.logprobs.filter(|&n| n > 0).map(|n| n as u64),
        ..Default::default()
    };
    if !r.tools.is_empty() {
        body.tools = Some(r.tools.clone());
        body.tool_choice = Some(match &r.tool_choice {
            ToolMode::Auto => ToolChoice::Mode("auto".into()),
            ToolMode::None => ToolChoice::Mode("none".into()),
            ToolMode::Required => ToolChoice::Mode("required".into()),
            ToolMode::Named(name) => {
                ToolChoice::Named(json!({"type": "function", "function": {"name": name}}))
            }
        });
        body.parallel_tool_calls = Some(r.parallel_tool_calls);
    }
    let c = &r.common;
    let s = &c.sampling;
    body.max_tokens = c.max_tokens.map(|n| n as u64);
    body.n = Some(c.n as u64);
    body.stop = stop(c);
    body.stream = Some(true);
    body.stream_options = Some(StreamOptions {
        include_usage: Some(true),
    });
    body.temperature = Some(s.temperature);
    body.top_p = Some(s.top_p);
    body.presence_penalty = Some(s.presence_penalty);
    body.frequency_penalty = Some(s.frequency_penalty);
    body.seed = s.seed.map(|v| v as i64);
    // Extensions only when they differ from "off", so that a server without
    // them (OpenAI's) is not sent fields it refuses.
    body.top_k = (s.top_k > 0).then_some(s.top_k as i64);
    body.min_p = (s.min_p > 0.0).then_some(s.min_p);
    body.repetition_penalty = (s.repetition_penalty != 1.0).then_some(s.repetition_penalty);
    body.ignore_eos = c.ignore_eos.then_some(true);
    body.priority = (c.priority != 0).then_some(c.priority as i64);
    body.cache_salt = c.cache_salt.clone();
    body.user = c.user.clone();
    put_constraint!(body, &r.constraint);
    body
}

/// The body for `POST {base}/completions`, asking for `model`.
pub fn completion_body(r: &ValidCompletionRequest, model: &str) -> CompletionRequest {
    let prompt = match r.prompts.as_slice() {
        [PromptInput::Text(t)] => Prompt::Text(t.clone()),
        many => Prompt::Items(
            many.iter()
                .map(|p| match p {
                    PromptInput::Text(t) => PromptItem::Text(t.clone()),
                    PromptInput::Tokens(ids) => PromptItem::Tokens(ids.clone()),
                })
                .collect(),
        ),
    };
    let c = &r.common;
    let s = &c.sampling;
    let mut body = CompletionRequest {
        model: Some(model.to_owned()),
        prompt: Some(prompt),
        echo: r.echo.then_some(true),
        logprobs: r.logprobs.map(|n| n as u64),
        max_tokens: c.max_tokens.map(|n| n as u64),
        n: Some(c.n as u64),
        stop: stop(c),
        stream: Some(true),
        stream_options: Some(StreamOptions {
            include_usage: Some(true),
        }),
        temperature: Some(s.temperature),
        top_p: Some(s.top_p),
        presence_penalty: Some(s.presence_penalty),
        frequency_penalty: Some(s.frequency_penalty),
        seed: s.seed.map(|v| v as i64),
        top_k: (s.top_k > 0).then_some(s.top_k as i64),
        min_p: (s.min_p > 0.0).then_some(s.min_p),
        repetition_penalty: (s.repetition_penalty != 1.0).then_some(s.repetition_penalty),
        ignore_eos: c.ignore_eos.then_some(true),
        priority: (c.priority != 0).then_some(c.priority as i64),
        cache_salt: c.cache_salt.clone(),
        user: c.user.clone(),
        ..Default::default()
    };
    put_constraint!(body, &r.constraint);
    body
}

fn stop(c: &Common) -> Option<Stop> {
    (!c.stop.is_empty()).then(|| Stop::Many(c.stop.clone()))
}

/// The constraint fields both request types carry.
#[derive(Default)]
struct Fields {
    response_format: Option<ResponseFormat>,
    guided_json: Option<Value>,
    guided_regex: Option<String>,
    guided_choice: Option<Vec<String>>,
    guided_grammar: Option<String>,
    grammar: Option<String>,
    json_schema: Option<Value>,
}

fn constraint_fields(oc: &OutputConstraint) -> Fields {
    let mut f = Fields::default();
    match (&oc.kind, oc.param) {
        (ConstraintKind::JsonObject, _) => {
            f.response_format = Some(ResponseFormat {
                kind: "json_object".into(),
                json_schema: None,
            })
        }
        (ConstraintKind::JsonSchema(schema), "guided_json") => f.guided_json = Some(schema.clone()),
        (ConstraintKind::JsonSchema(schema), "json_schema") => f.json_schema = Some(schema.clone()),
        (ConstraintKind::JsonSchema(schema), _) => {
            f.response_format = Some(ResponseFormat {
                kind: "json_schema".into(),
                json_schema: Some(json!({"name": "response", "schema": schema, "strict": true})),
            })
        }
        (ConstraintKind::Regex(rx), _) => f.guided_regex = Some(rx.clone()),
        (ConstraintKind::Choice(options), _) => f.guided_choice = Some(options.clone()),
        (ConstraintKind::Lark(g), _) => f.guided_grammar = Some(g.clone()),
        (ConstraintKind::Gbnf(g), _) => f.grammar = Some(g.clone()),
        // Built by a local backend from `tool_choice`, which travels as itself.
        (ConstraintKind::ToolCalls { .. }, _) => {}
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use inferd_protocol::{parse_chat, parse_completion};
    use std::time::Instant;

    /// A request through validation and back: what the client set arrives
    /// upstream, defaults written out, always streaming with usage.
    #[test]
    fn a_chat_request_goes_back_on_the_wire_as_it_came() {
        let body = json!({
            "model": "front", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 7, "n": 2, "stop": "END", "temperature": 0.5, "top_k": 40,
            "seed": 3, "logprobs": true, "top_logprobs": 2, "priority": 5,
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            "tool_choice": {"type": "function", "function": {"name": "f"}},
            "parallel_tool_calls": false
        });
        let r = parse_chat(body.to_string().as_bytes(), Instant::now()).expect("valid");
        let wire = serde_json::to_value(chat_body(&r, "up")).unwrap();
        assert_eq!(wire["model"], "up");
        assert_eq!(wire["messages"], body["messages"]);
        for key in [
            "max_tokens",
            "n",
            "temperature",
            "top_k",
            "seed",
            "logprobs",
            "top_logprobs",
            "priority",
            "tools",
            "tool_choice",
            "parallel_tool_calls",
        ] {
            assert_eq!(wire[key], body[key], "{key}");
        }
        assert_eq!(wire["stop"], json!(["END"]));
        assert_eq!(
            (
                wire["stream"].clone(),
                wire["stream_options"]["include_usage"].clone()
            ),
            (json!(true), json!(true))
        );
        assert_eq!(wire["top_p"], 1.0);
        assert!(wire.get("min_p").is_none() && wire.get("repetition_penalty").is_none());
    }

    #[test]
    fn constraints_go_back_into_the_field_they_came_from() {
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        let cases = [
            (
                json!({"response_format": {"type": "json_object"}}),
                "response_format",
            ),
            (
                json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}),
                "response_format",
            ),
            (json!({"guided_json": schema}), "guided_json"),
            (json!({"guided_regex": "[0-9]+"}), "guided_regex"),
            (json!({"guided_choice": ["a", "b"]}), "guided_choice"),
            (json!({"guided_grammar": "start: \"x\""}), "guided_grammar"),
            (json!({"grammar": "root ::= \"x\""}), "grammar"),
            (json!({"json_schema": schema}), "json_schema"),
        ];
        for (extra, field) in cases {
            let mut body = json!({"prompt": "p", "max_tokens": 3});
            body.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            let r = parse_completion(body.to_string().as_bytes(), Instant::now()).expect("valid");
            let wire = serde_json::to_value(completion_body(&r, "up")).unwrap();
            assert!(wire.get(field).is_some(), "{field}: {wire}");
            if field == "response_format" {
                assert_eq!(wire[field]["type"], extra[field]["type"]);
                if let Some(s) = extra[field]["json_schema"].get("schema") {
                    assert_eq!(&wire[field]["json_schema"]["schema"], s);
                }
            } else {
                assert_eq!(wire[field], extra[field], "{field}");
            }
            assert_eq!(wire["prompt"], "p");
        }
    }
}
