//! One streamed request against an OpenAI-compatible server, timed on the client:
//! TTFT at the first chunk that carries output, every gap between output chunks,
//! e2e at the end of the stream; token counts from the `usage` the server sends
//! (`stream_options.include_usage`), else one token per output chunk.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::stats::RequestRecord;
use inferd_protocol::{ChatCompletionChunk, CompletionResponse, ModelList};

use crate::workload::{Endpoint, RequestSpec};

/// A server under test.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Target {
    /// The label in reports (`inferd`, `llama.cpp`).
    pub name: String,
    /// Base URL without `/v1`.
    pub base: String,
    /// The `model` sent in every request.
    pub model: String,
    #[serde(skip)]
    pub api_key: Option<String>,
}

impl Target {
    /// Parses `NAME=URL` (or a bare URL, named after its host:port).
    pub fn parse(text: &str) -> Result<(String, String), String> {
        let (name, url) = match text.split_once('=') {
            Some((n, u)) if !u.is_empty() => (n.to_owned(), u),
            _ => (String::new(), text),
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!(
                "target `{text}`: the URL must start with http:// or https://"
            ));
        }
        let base = url.trim_end_matches('/').trim_end_matches("/v1").to_owned();
        let name = if name.is_empty() {
            base.split("://").nth(1).unwrap_or(&base).to_owned()
        } else {
            name
        };
        Ok((name, base))
    }
}

/// What one request produced, besides its record: the text, for multi-turn.
pub struct Outcome {
    pub record: RequestRecord,
    pub text: String,
}

pub fn http_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        // A fresh connection per request: a pooled keep-alive connection the server
        // has just closed fails the next send (seen with llama-server), and a local
        // connect costs microseconds.
        .pool_max_idle_per_host(0)
        .build()
        .expect("a plain HTTP client always builds")
}

/// The first model id the server lists at `/v1/models`.
pub async fn first_model(
    client: &reqwest::Client,
    base: &str,
    api_key: Option<&str>,
) -> Result<String, String> {
    let mut req = client.get(format!("{base}/v1/models"));
    if let Some(k) = api_key {
        req = req.bearer_auth(k);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| format!("{base}/v1/models: {e}"))?;
    let status = resp.status();
    let text = resp
        .text()
        .await
        .map_err(|e| format!("{base}/v1/models: {e}"))?;
    let list: ModelList = serde_json::from_str(&text).map_err(|e| {
        format!("{base}/v1/models answered {status}, not a model list ({e}): {text}")
    })?;
    list.data
        .into_iter()
        .next()
        .map(|m| m.id)
        .ok_or_else(|| format!("{base}/v1/models answered {status} without a model id: {text}"))
}

/// Sends `spec` with `stream: true` and times it.
pub async fn send(client: &reqwest::Client, target: &Target, spec: &RequestSpec) -> Outcome {
    let mut body = spec.body.clone();
    body.insert("model".into(), json!(target.model));
    body.insert("stream".into(), json!(true));
    body.insert("stream_options".into(), json!({"include_usage": true}));
    let started = Instant::now();
    let mut record = RequestRecord::default();
    let mut text = String::new();
    let result = stream_into(
        client,
        target,
        spec,
        &Value::Object(body),
        started,
        &mut record,
        &mut text,
    )
    .await;
    record.e2e = started.elapsed().as_secs_f64();
    match result {
        Ok(()) if record.ttft.is_some() => record.ok = true,
        Ok(()) => record.error = Some("the stream ended without any output".into()),
        Err(e) => record.error = Some(e),
    }
    Outcome { record, text }
}

async fn stream_into(
    client: &reqwest::Client,
    target: &Target,
    spec: &RequestSpec,
    body: &Value,
    started: Instant,
    r: &mut RequestRecord,
    text: &mut String,
) -> Result<(), String> {
    let mut req = client
        .post(format!("{}{}", target.base, spec.endpoint.path()))
        .json(body);
    if let Some(k) = &target.api_key {
        req = req.bearer_auth(k);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| format!("send: {}", chain(&e)))?;
    let status = resp.status();
    if !status.is_success() {
        let msg = resp.text().await.unwrap_or_default();
        return Err(format!(
            "HTTP {}: {}",
            status.as_u16(),
            msg.chars().take(300).collect::<String>()
        ));
    }
    let mut stream = resp.bytes_stream();
    let mut pending = String::new();
    let mut last_output: Option<Instant> = None;
    let mut chunks_with_output = 0usize;
    let mut usage_tokens = None;
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(|e| format!("stream: {}", chain(&e)))?;
        let now = Instant::now();
        pending.push_str(&String::from_utf8_lossy(&piece));
        while let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            for line in event.lines() {
                let Some(data) = line.strip_prefix("data:").map(str::trim_start) else {
                    continue;
                };
                if data == "[DONE]" {
                    continue;
                }
                let chunk = parse_chunk(spec.endpoint, data)?;
                let output = chunk.output;
                if !output.is_empty() {
                    match last_output {
                        None => r.ttft = Some((now - started).as_secs_f64()),
                        Some(prev) => r.itl.push((now - prev).as_secs_f64()),
                    }
                    last_output = Some(now);
                    chunks_with_output += 1;
                    text.push_str(&output);
                }
                if let Some(u) = chunk.usage {
                    r.prompt_tokens = u.prompt_tokens;
                    usage_tokens = Some(u.completion_tokens);
                    r.cached_tokens = u.prompt_tokens_details.map(|d| d.cached_tokens);
                }
                if let Some(t) = chunk.timings {
                    r.server_timings = Some(t);
                }
            }
        }
    }
    r.output_tokens = usage_tokens.unwrap_or(chunks_with_output);
    Ok(())
}

/// An error with its causes (`reqwest` puts the useful part in the source).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// What one SSE chunk carries, read with the protocol's chunk types.
#[derive(Debug)]
struct Chunk {
    /// Chat `delta.content` (or a tool-call delta), or completions `text`.
    output: String,
    usage: Option<inferd_protocol::Usage>,
    timings: Option<Value>,
}

fn parse_chunk(endpoint: Endpoint, data: &str) -> Result<Chunk, String> {
    let bad = |e: serde_json::Error| format!("bad SSE chunk ({e}): {data}");
    let v: Value = serde_json::from_str(data).map_err(bad)?;
    if let Some(err) = v.get("error") {
        return Err(format!("error event: {err}"));
    }
    let timings = v.get("timings").filter(|t| t.is_object()).cloned();
    let mut output = String::new();
    let usage = match endpoint {
        Endpoint::Chat => {
            let c: ChatCompletionChunk = serde_json::from_value(v).map_err(bad)?;
            for choice in &c.choices {
                output.push_str(choice.delta.content.as_deref().unwrap_or(""));
                if let Some(calls) = &choice.delta.tool_calls {
                    output.push_str(&serde_json::to_string(calls).map_err(bad)?);
                }
            }
            c.usage
        }
        Endpoint::Completions => {
            let c: CompletionResponse = serde_json::from_value(v).map_err(bad)?;
            for choice in &c.choices {
                output.push_str(&choice.text);
            }
            c.usage
        }
    };
    Ok(Chunk {
        output,
        usage,
        timings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_with_and_without_names() {
        assert_eq!(
            Target::parse("inferd=http://127.0.0.1:8080/v1/").unwrap(),
            ("inferd".into(), "http://127.0.0.1:8080".into())
        );
        assert_eq!(
            Target::parse("http://localhost:9000").unwrap(),
            ("localhost:9000".into(), "http://localhost:9000".into())
        );
        assert!(Target::parse("a=localhost:1")
            .unwrap_err()
            .contains("http://"));
    }

    #[test]
    fn output_is_read_from_chat_and_text_chunks() {
        let base = r#""id":"x","created":1,"model":"m""#;
        let out = |e, d: String| parse_chunk(e, &d).unwrap().output;
        let role = format!(
            r#"{{{base},"object":"chat.completion.chunk","choices":[{{"index":0,"delta":{{"role":"assistant","content":""}},"logprobs":null,"finish_reason":null}}]}}"#
        );
        assert_eq!(out(Endpoint::Chat, role), "");
        let chat = format!(
            r#"{{{base},"object":"chat.completion.chunk","choices":[{{"index":0,"delta":{{"content":"Hi"}},"logprobs":null,"finish_reason":null}}]}}"#
        );
        assert_eq!(out(Endpoint::Chat, chat), "Hi");
        let text = format!(
            r#"{{{base},"object":"text_completion","choices":[{{"index":0,"text":" there","logprobs":null,"finish_reason":null}}]}}"#
        );
        assert_eq!(out(Endpoint::Completions, text), " there");
        let usage = format!(
            r#"{{{base},"object":"chat.completion.chunk","choices":[],"usage":{{"prompt_tokens":2,"completion_tokens":3,"total_tokens":5}}}}"#
        );
        let c = parse_chunk(Endpoint::Chat, &usage).unwrap();
        assert_eq!(
            (c.output.as_str(), c.usage.unwrap().completion_tokens),
            ("", 3)
        );
        let err = parse_chunk(
            Endpoint::Chat,
            r#"{"error":{"message":"m","type":"t","param":null,"code":null}}"#,
        );
        assert!(err.unwrap_err().contains("error event"));
    }
}
