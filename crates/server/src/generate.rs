//! Chat and text completions: validation → prompt → one engine request per
//! choice → a JSON body or an SSE stream.
//!
//! Streaming follows OpenAI's order exactly: a first chunk with the role (chat),
//! content deltas, a final chunk per choice with `finish_reason` and an empty delta
//! (plus our `timings`), then — only with `stream_options.include_usage` — a usage
//! chunk with empty `choices`, then `data: [DONE]`. Errors that happen before the
//! first token (overload, bad input) are plain HTTP errors, not a broken stream.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, StreamExt};
use inferd_engine::{
    EngineRequest, EventStream, FinishReason, Logprobs, Timings, TokenEvent, Usage,
};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use crate::error::ApiError;
use crate::params::{self, Body, Common, StopMatcher};
use crate::tools;
use crate::ServerState;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Text,
}

struct Prepared {
    kind: Kind,
    /// One prompt (chat), or several (a batched completions request); choice `k`
    /// answers prompt `k / n`.
    prompts: Vec<Vec<u32>>,
    common: Common,
    max_tokens: usize,
    /// `Some(n)`: report log-probabilities with `n` alternatives.
    logprobs: Option<usize>,
    id: String,
    /// Parse Hermes-style tool calls out of the output (chat with `tools`).
    tools: bool,
    /// When the request is cancelled for running too long, and the limit.
    deadline: Option<(tokio::time::Instant, Duration)>,
}

impl Prepared {
    /// Choices in the response: `n` per prompt.
    fn choices(&self) -> usize {
        self.prompts.len() * self.common.n
    }
}

/// Most prompts × choices one completions request may ask for.
const MAX_PROMPTS: usize = 64;

/// Waits for `fut`, but not past the request's deadline.
async fn within<T>(
    deadline: Option<(tokio::time::Instant, Duration)>,
    fut: impl std::future::Future<Output = T>,
) -> Result<T, ApiError> {
    match deadline {
        None => Ok(fut.await),
        Some((at, limit)) => tokio::time::timeout_at(at, fut)
            .await
            .map_err(|_| ApiError::timeout(limit)),
    }
}

pub async fn chat(s: &Arc<ServerState>, body: &[u8]) -> Result<Response, ApiError> {
    let map = Body::parse(body)?;
    let b = Body(&map);
    s.check_model(b.str("model")?)?;
    if let Some(rf) = b.get("response_format") {
        match rf.get("type").and_then(Value::as_str) {
            Some("text") => {}
            Some(t) => {
                return Err(ApiError::invalid(
                    "response_format",
                    format!("`response_format` type `{t}` is not supported yet (constrained decoding is not implemented); use \"text\""),
                ))
            }
            None => return Err(ApiError::invalid("response_format", "`response_format` must be an object with a `type`")),
        }
    }
    let mut messages = messages(&b)?;
    let tools = match b.get("tools") {
        None => None,
        Some(Value::Array(t)) => Some(t.as_slice()),
        Some(v) => {
            return Err(ApiError::invalid(
                "tools",
                format!("`tools` must be an array, got {v}"),
            ))
        }
    };
    let template = s.chat_template.as_ref().ok_or_else(|| {
        ApiError::invalid(
            "messages",
            "this model has no chat template; use /v1/completions",
        )
    })?;
    let tools = tools.filter(|t| !t.is_empty());
    let text = match tools {
        Some(t) if !template.renders_tools() => {
            tools::inline_into_messages(&mut messages, t);
            template.render(&messages, None, true)
        }
        _ => template.render(&messages, tools, true),
    }
    .map_err(|e| ApiError::invalid("messages", e.to_string()))?;
    let prompt = s
        .tokenizer
        .encode(&text, false)
        .map_err(|e| ApiError::invalid("messages", e.to_string()))?;
    let common = params::common(&b, &["max_tokens", "max_completion_tokens"])?;
    let logprobs = match (
        b.bool("logprobs")?.unwrap_or(false),
        b.int_in("top_logprobs", 0, 20)?,
    ) {
        (true, n) => Some(n.unwrap_or(0) as usize),
        (false, Some(_)) => {
            return Err(ApiError::invalid(
                "top_logprobs",
                "`top_logprobs` requires `logprobs: true`",
            ))
        }
        (false, None) => None,
    };
    let mut prep = prepare(s, Kind::Chat, vec![prompt], common, logprobs, "messages")?;
    prep.tools = tools.is_some() && b.get("tool_choice").and_then(Value::as_str) != Some("none");
    run(s, prep).await
}

pub async fn completion(s: &Arc<ServerState>, body: &[u8]) -> Result<Response, ApiError> {
    let map = Body::parse(body)?;
    let b = Body(&map);
    s.check_model(b.str("model")?)?;
    for (field, why) in [
        ("suffix", "`suffix` (fill-in-the-middle) is not supported"),
        ("echo", "`echo` is not supported"),
    ] {
        if b.get(field).is_some_and(|v| v != &Value::Bool(false)) {
            return Err(ApiError::invalid(field, why));
        }
    }
    if b.get("logprobs").is_some() {
        return Err(ApiError::invalid(
            "logprobs",
            "`logprobs` is not supported on /v1/completions yet; use /v1/chat/completions",
        ));
    }
    let encode = |t: &str, param: &str| {
        s.tokenizer
            .encode(t, true)
            .map_err(|e| ApiError::invalid(param, e.to_string()))
    };
    let ids = |a: &[Value]| -> Option<Vec<u32>> {
        a.iter()
            .map(|v| {
                v.as_u64()
                    .filter(|&x| x <= u32::MAX as u64)
                    .map(|x| x as u32)
            })
            .collect()
    };
    let bad = "`prompt` must be a string, a list of strings, a list of token ids, or a list of lists of token ids";
    let prompts = match b.get("prompt") {
        Some(Value::String(t)) => vec![encode(t, "prompt")?],
        Some(Value::Array(a)) if a.is_empty() => {
            return Err(ApiError::invalid(
                "prompt",
                "`prompt` must not be an empty list",
            ))
        }
        Some(Value::Array(a)) if a.iter().all(Value::is_number) => {
            vec![ids(a).ok_or_else(|| {
                ApiError::invalid("prompt", "token ids must be integers in 0..2^32")
            })?]
        }
        Some(Value::Array(a)) if a.len() > MAX_PROMPTS => {
            return Err(ApiError::invalid(
                "prompt",
                format!("at most {MAX_PROMPTS} prompts per request, got {}", a.len()),
            ))
        }
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let param = format!("prompt[{i}]");
                match v {
                    Value::String(t) => encode(t, &param),
                    Value::Array(x) if !x.is_empty() => ids(x).ok_or_else(|| {
                        ApiError::invalid(&param, "token ids must be integers in 0..2^32")
                    }),
                    _ => Err(ApiError::invalid(&param, bad)),
                }
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(ApiError::invalid("prompt", bad)),
        None => return Err(ApiError::invalid("prompt", "`prompt` is required")),
    };
    let mut common = params::common(&b, &["max_tokens"])?;
    // OpenAI's legacy default for completions is 16 tokens.
    common.max_tokens.get_or_insert(16);
    if prompts.len() * common.n > MAX_PROMPTS {
        return Err(ApiError::invalid(
            "n",
            format!(
                "{} prompts × n = {} exceeds {MAX_PROMPTS} choices per request",
                prompts.len(),
                prompts.len() * common.n
            ),
        ));
    }
    let prep = prepare(s, Kind::Text, prompts, common, None, "prompt")?;
    run(s, prep).await
}

/// `messages`: roles and string or text-part content, checked and normalised.
fn messages(b: &Body) -> Result<Vec<Value>, ApiError> {
    let Some(Value::Array(msgs)) = b.get("messages") else {
        return Err(ApiError::invalid(
            "messages",
            "`messages` is required and must be a non-empty array",
        ));
    };
    if msgs.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "`messages` must not be empty",
        ));
    }
    msgs.iter()
        .enumerate()
        .map(|(i, m)| {
            let param = format!("messages[{i}]");
            let obj = m.as_object().ok_or_else(|| ApiError::invalid(&param, format!("`{param}` must be an object")))?;
            let role = obj.get("role").and_then(Value::as_str).unwrap_or("");
            if !["system", "developer", "user", "assistant", "tool"].contains(&role) {
                return Err(ApiError::invalid(
                    &format!("{param}.role"),
                    format!("`{param}.role` must be one of system, user, assistant, tool; got {:?}", obj.get("role")),
                ));
            }
            let content = match obj.get("content") {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(t)) => t.clone(),
                Some(Value::Array(parts)) => parts
                    .iter()
                    .map(|p| match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                        (Some("text"), Some(t)) => Ok(t),
                        _ => Err(ApiError::invalid(
                            &format!("{param}.content"),
                            "only text content parts ({\"type\": \"text\", \"text\": ...}) are supported",
                        )),
                    })
                    .collect::<Result<Vec<_>, _>>()?
                    .join(""),
                Some(v) => {
                    return Err(ApiError::invalid(&format!("{param}.content"), format!("content must be a string or an array of parts, got {v}")))
                }
            };
            let mut out: Map<String, Value> = obj.clone();
            out.insert("role".into(), Value::String(if role == "developer" { "system".into() } else { role.into() }));
            out.insert("content".into(), Value::String(content));
            Ok(Value::Object(out))
        })
        .collect()
}

fn prepare(
    s: &ServerState,
    kind: Kind,
    prompts: Vec<Vec<u32>>,
    common: Common,
    logprobs: Option<usize>,
    prompt_param: &str,
) -> Result<Prepared, ApiError> {
    let ctx = s.engine.context_length;
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    if let Some((i, p)) = prompts.iter().enumerate().find(|(_, p)| p.len() >= ctx) {
        let param = if prompts.len() > 1 {
            format!("{prompt_param}[{i}]")
        } else {
            prompt_param.to_owned()
        };
        return Err(ApiError::invalid(
            &param,
            format!(
                "the prompt is {} tokens, but the model's context window is {ctx} tokens",
                p.len()
            ),
        ));
    }
    let room = ctx - longest;
    let max_tokens = match common.max_tokens {
        Some(m) if m > room => {
            return Err(ApiError::invalid(
                "max_tokens",
                format!(
                    "the prompt is {longest} tokens and max_tokens is {m}: {} in total exceeds the model's context window of {ctx} tokens",
                    longest + m
                ),
            ))
        }
        Some(m) => m,
        None => room,
    };
    let id = format!(
        "{}-{:x}",
        if kind == Kind::Chat {
            "chatcmpl"
        } else {
            "cmpl"
        },
        rand_id()
    );
    Ok(Prepared {
        kind,
        prompts,
        common,
        max_tokens,
        logprobs,
        id,
        tools: false,
        deadline: s
            .request_timeout
            .map(|t| (tokio::time::Instant::now() + t, t)),
    })
}

fn rand_id() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos() ^ crate::unix_now() as u128);
    ((h.finish() as u128) << 64)
        | std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish() as u128
}

/// One choice's state while its events arrive.
struct Choice {
    stop: StopMatcher,
    text: String,
    tokens: usize,
    logprobs: Vec<Value>,
    finish: Option<&'static str>,
    usage: Usage,
    timings: Timings,
    last_token_at: Option<Instant>,
    /// Streaming with tools: text held back while it may start a tool call, and
    /// everything from `<tool_call>` on once one started.
    gate_pending: String,
    tool_text: Option<String>,
}

impl Choice {
    /// Streaming with tools: passes through text that cannot belong to a tool
    /// call, holds back the rest.
    fn gate(&mut self, d: String) -> String {
        if let Some(t) = &mut self.tool_text {
            t.push_str(&d);
            return String::new();
        }
        self.gate_pending.push_str(&d);
        if let Some(i) = self.gate_pending.find(tools::OPEN) {
            self.tool_text = Some(self.gate_pending[i..].to_owned());
            let out = self.gate_pending[..i].to_owned();
            self.gate_pending.clear();
            return out;
        }
        let keep = (1..tools::OPEN.len())
            .rev()
            .find(|&k| self.gate_pending.ends_with(&tools::OPEN[..k]))
            .unwrap_or(0);
        let cut = self.gate_pending.len() - keep;
        self.gate_pending.drain(..cut).collect()
    }

    fn new(stops: Vec<String>) -> Choice {
        Choice {
            gate_pending: String::new(),
            tool_text: None,
            stop: StopMatcher::new(stops),
            text: String::new(),
            tokens: 0,
            logprobs: Vec::new(),
            finish: None,
            usage: Usage::default(),
            timings: Timings::default(),
            last_token_at: None,
        }
    }
}

fn token_text(s: &ServerState, id: u32) -> String {
    String::from_utf8_lossy(s.tokenizer.token_bytes(id).unwrap_or(&[])).into_owned()
}

fn logprob_entry(s: &ServerState, id: u32, lp: &Logprobs) -> Value {
    let entry = |id: u32, logprob: f32| {
        let t = token_text(s, id);
        json!({"token": t, "logprob": logprob, "bytes": s.tokenizer.token_bytes(id).unwrap_or(&[])})
    };
    let mut e = entry(id, lp.token_logprob);
    e["top_logprobs"] = Value::Array(lp.top.iter().map(|&(t, l)| entry(t, l)).collect());
    e
}

/// Applies one engine event to a choice; returns the text delta to emit.
fn apply(s: &ServerState, c: &mut Choice, ev: TokenEvent) -> Result<Option<String>, ApiError> {
    match ev {
        TokenEvent::Token { id, text, logprobs } => {
            let now = Instant::now();
            if let Some(prev) = c.last_token_at.replace(now) {
                s.metrics.itl.observe((now - prev).as_secs_f64());
            }
            c.tokens += 1;
            if let Some(lp) = logprobs {
                c.logprobs.push(logprob_entry(s, id, &lp));
            }
            let (out, stopped) = c.stop.push(&text);
            if stopped {
                c.finish = Some("stop");
            }
            Ok(Some(out))
        }
        TokenEvent::Done {
            reason,
            usage,
            timings,
        } => {
            c.usage = usage;
            c.timings = timings;
            c.finish.get_or_insert(match reason {
                FinishReason::Stop => "stop",
                FinishReason::Length => "length",
            });
            let rest = c.stop.flush();
            Ok((!rest.is_empty()).then_some(rest))
        }
        TokenEvent::Error(e) => Err(ApiError::from(e)),
    }
}

fn timings_json(c: &Choice) -> Value {
    let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
    let tps = if c.timings.decode.as_secs_f64() > 0.0 && c.tokens > 1 {
        (c.tokens - 1) as f64 / c.timings.decode.as_secs_f64()
    } else {
        0.0
    };
    json!({
        "queue_ms": ms(c.timings.queue),
        "prefill_ms": ms(c.timings.prefill),
        "ttft_ms": ms(c.timings.ttft),
        "decode_ms": ms(c.timings.decode),
        "e2e_ms": ms(c.timings.e2e),
        "decode_tokens_per_second": (tps * 10.0).round() / 10.0,
        "prompt_tokens": c.usage.prompt_tokens,
        "cached_prompt_tokens": c.usage.cached_tokens,
        "preemptions": c.timings.preemptions,
    })
}

/// Prompt tokens count once per prompt (not per choice), as OpenAI counts them.
fn usage_json(p: &Prepared, choices: &[Choice]) -> Value {
    let prompt: usize = p.prompts.iter().map(Vec::len).sum();
    let completion: usize = choices.iter().map(|c| c.tokens).sum();
    let cached: usize = choices
        .iter()
        .step_by(p.common.n)
        .map(|c| c.usage.cached_tokens)
        .sum();
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    })
}

fn submit_all(s: &ServerState, p: &Prepared) -> Vec<EventStream> {
    (0..p.choices())
        .map(|i| {
            let mut sampling = p.common.sampling.clone();
            sampling.logprobs = p.logprobs;
            // Distinct but reproducible seeds per choice.
            sampling.seed = sampling.seed.map(|x| x.wrapping_add(i as u64));
            s.engine.submit(EngineRequest {
                prompt: p.prompts[i / p.common.n].clone(),
                max_tokens: p.max_tokens,
                sampling,
                stop_token_ids: if p.common.ignore_eos {
                    Vec::new()
                } else {
                    s.tokenizer.stop_token_ids()
                },
                priority: p.common.priority,
                cache_salt: p.common.cache_salt.clone(),
            })
        })
        .collect()
}

async fn run(s: &Arc<ServerState>, p: Prepared) -> Result<Response, ApiError> {
    let mut streams = submit_all(s, &p);
    let mut choices: Vec<Choice> = (0..p.choices())
        .map(|_| Choice::new(p.common.stop.clone()))
        .collect();
    // The first event of every choice decides between an HTTP error and a response.
    let mut first = Vec::new();
    for (rx, c) in streams.iter_mut().zip(choices.iter_mut()) {
        let ev = within(p.deadline, rx.recv())
            .await?
            .ok_or_else(|| ApiError::from(inferd_engine::EngineError::Stopped))?;
        let delta = apply(s, c, ev)?;
        first.push(delta);
    }
    if p.common.stream {
        return Ok(stream_response(s, p, streams, choices, first));
    }
    for (i, ((rx, c), delta)) in streams
        .iter_mut()
        .zip(choices.iter_mut())
        .zip(first)
        .enumerate()
    {
        c.text.push_str(&delta.unwrap_or_default());
        while c.finish.is_none() || c.usage.prompt_tokens == 0 {
            if c.finish == Some("stop") && c.usage.prompt_tokens == 0 {
                // A stop string ended it: cancel the rest, the engine frees the blocks.
                c.usage = Usage {
                    prompt_tokens: p.prompts[i / p.common.n].len(),
                    completion_tokens: c.tokens,
                    cached_tokens: 0,
                };
                break;
            }
            let Some(ev) = within(p.deadline, rx.recv()).await? else {
                break;
            };
            if let Some(d) = apply(s, c, ev)? {
                c.text.push_str(&d);
            }
        }
        s.metrics
            .observe_done(c.finish.unwrap_or("length"), &c.usage, &c.timings);
    }
    drop(streams);
    let body = match p.kind {
        Kind::Chat => json!({
            "id": p.id, "object": "chat.completion", "created": crate::unix_now(), "model": s.model_id,
            "choices": choices.iter().enumerate().map(|(i, c)| {
                let (message, finish) = match tools::parse(&c.text).filter(|_| p.tools) {
                    Some((content, calls)) => (
                        json!({"role": "assistant", "content": (!content.is_empty()).then_some(content), "tool_calls": tools::to_json(&calls, &p.id, false)}),
                        Some("tool_calls"),
                    ),
                    None => (json!({"role": "assistant", "content": c.text}), c.finish),
                };
                json!({
                    "index": i,
                    "message": message,
                    "logprobs": p.logprobs.map(|_| json!({"content": c.logprobs})),
                    "finish_reason": finish,
                })
            }).collect::<Vec<_>>(),
            "usage": usage_json(&p, &choices),
            "timings": timings_json(&choices[0]),
        }),
        Kind::Text => json!({
            "id": p.id, "object": "text_completion", "created": crate::unix_now(), "model": s.model_id,
            "choices": choices.iter().enumerate().map(|(i, c)| json!({
                "index": i, "text": c.text, "logprobs": null, "finish_reason": c.finish,
            })).collect::<Vec<_>>(),
            "usage": usage_json(&p, &choices),
            "timings": timings_json(&choices[0]),
        }),
    };
    log_request(&p, &choices, 200);
    let mut resp = (StatusCode::OK, axum::Json(body)).into_response();
    let ttft_ms = (choices[0].timings.ttft.as_secs_f64() * 1e3).round() as u64;
    resp.headers_mut()
        .insert("x-inferd-ttft-ms", HeaderValue::from(ttft_ms));
    Ok(resp)
}

fn log_request(p: &Prepared, choices: &[Choice], status: u16) {
    let c = &choices[0];
    tracing::info!(
        id = %p.id,
        status,
        prompt_tokens = p.prompts.iter().map(Vec::len).sum::<usize>(),
        output_tokens = choices.iter().map(|c| c.tokens).sum::<usize>(),
        cached_tokens = c.usage.cached_tokens,
        queue_ms = c.timings.queue.as_millis() as u64,
        ttft_ms = c.timings.ttft.as_millis() as u64,
        e2e_ms = c.timings.e2e.as_millis() as u64,
        "request"
    );
}

fn chunk(s: &ServerState, p: &Prepared, index: usize, delta: Value, finish: Option<&str>) -> Value {
    match p.kind {
        Kind::Chat => json!({
            "id": p.id, "object": "chat.completion.chunk", "created": crate::unix_now(), "model": s.model_id,
            "choices": [{"index": index, "delta": delta, "logprobs": null, "finish_reason": finish}],
        }),
        Kind::Text => json!({
            "id": p.id, "object": "text_completion", "created": crate::unix_now(), "model": s.model_id,
            "choices": [{"index": index, "text": delta.get("content").cloned().unwrap_or(json!("")), "logprobs": null, "finish_reason": finish}],
        }),
    }
}

/// The content chunk for a choice's new text — held back by the tool-call gate when
/// tools are on — with its log-probabilities from `from` on; `None` when there is
/// nothing to send yet.
fn content_chunk(
    s: &ServerState,
    p: &Prepared,
    index: usize,
    c: &mut Choice,
    delta: Option<String>,
    from: usize,
) -> Option<Value> {
    let delta = if p.tools {
        delta.map(|d| c.gate(d))
    } else {
        delta
    };
    let d = delta.filter(|d| !d.is_empty())?;
    let mut ch = chunk(s, p, index, json!({"content": d}), None);
    if p.logprobs.is_some() {
        ch["choices"][0]["logprobs"] = json!({"content": c.logprobs[from..]});
    }
    Some(ch)
}

/// At the end of a streamed choice with tools: the held-back text, or the parsed
/// tool calls as one delta (and `finish_reason` becomes `tool_calls`).
fn finish_tools(c: &mut Choice, request_id: &str) -> Option<Value> {
    let held = std::mem::take(&mut c.gate_pending);
    match c.tool_text.take() {
        Some(text) => match tools::parse(&text) {
            Some((content, calls)) => {
                c.finish = Some("tool_calls");
                let mut delta = json!({"tool_calls": tools::to_json(&calls, request_id, true)});
                if !content.is_empty() || !held.is_empty() {
                    delta["content"] = json!(held + &content);
                }
                Some(delta)
            }
            None => Some(json!({"content": held + &text})),
        },
        None => (!held.is_empty()).then(|| json!({"content": held})),
    }
}

fn sse(v: &Value) -> Event {
    Event::default().data(v.to_string())
}

/// Streams every choice's events as SSE chunks. A task forwards them; when the
/// client disconnects, the channel closes, the task ends and drops the engine
/// streams, which cancels the requests and frees their blocks.
fn stream_response(
    s: &Arc<ServerState>,
    p: Prepared,
    streams: Vec<EventStream>,
    mut choices: Vec<Choice>,
    first: Vec<Option<String>>,
) -> Response {
    let (tx, rx) = mpsc::channel::<Event>(64);
    let state = Arc::clone(s);
    tokio::spawn(async move {
        let s = &*state;
        let send = |v: Value| {
            let tx = tx.clone();
            async move { tx.send(sse(&v)).await.is_ok() }
        };
        // Role first (chat), then what the first events produced.
        for (i, (c, delta)) in choices.iter_mut().zip(first).enumerate() {
            if p.kind == Kind::Chat
                && !send(chunk(
                    s,
                    &p,
                    i,
                    json!({"role": "assistant", "content": ""}),
                    None,
                ))
                .await
            {
                return;
            }
            if let Some(ch) = content_chunk(s, &p, i, c, delta, 0) {
                if !send(ch).await {
                    return;
                }
            }
        }
        let mut merged = stream::select_all(streams.into_iter().enumerate().map(|(i, rx)| {
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx).map(move |ev| (i, ev))
        }));
        let mut finished = vec![false; choices.len()];
        for (i, c) in choices.iter().enumerate() {
            finished[i] = c.finish.is_some() && c.usage.prompt_tokens > 0;
        }
        while finished.iter().any(|f| !f) {
            let (i, ev) = match within(p.deadline, merged.next()).await {
                Ok(Some(next)) => next,
                Ok(None) => break,
                Err(e) => {
                    s.metrics.errors.with_label_values(&[e.label()]).inc();
                    tracing::info!(id = %p.id, status = 408, "request timed out while streaming");
                    let _ = send(e.body()).await;
                    return;
                }
            };
            if finished[i] {
                continue;
            }
            let c = &mut choices[i];
            let seen = c.logprobs.len();
            let done_event = matches!(ev, TokenEvent::Done { .. });
            let delta = match apply(s, c, ev) {
                Ok(d) => d,
                Err(e) => {
                    let _ = send(e.body()).await;
                    return;
                }
            };
            if let Some(ch) = content_chunk(s, &p, i, c, delta, seen) {
                if !send(ch).await {
                    return;
                }
            }
            let stopped_by_string = c.finish == Some("stop") && !done_event;
            if done_event || stopped_by_string {
                if stopped_by_string {
                    c.usage = Usage {
                        prompt_tokens: p.prompts[i / p.common.n].len(),
                        completion_tokens: c.tokens,
                        cached_tokens: 0,
                    };
                }
                finished[i] = true;
                s.metrics
                    .observe_done(c.finish.unwrap_or("length"), &c.usage, &c.timings);
                if p.tools {
                    if let Some(delta) = finish_tools(c, &p.id) {
                        if !send(chunk(s, &p, i, delta, None)).await {
                            return;
                        }
                    }
                }
                let mut last = chunk(s, &p, i, json!({}), c.finish);
                last["timings"] = timings_json(c);
                if !send(last).await {
                    return;
                }
            }
        }
        drop(merged);
        if p.common.include_usage {
            let usage = json!({
                "id": p.id, "object": if p.kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" },
                "created": crate::unix_now(), "model": s.model_id, "choices": [], "usage": usage_json(&p, &choices),
            });
            if !send(usage).await {
                return;
            }
        }
        log_request(&p, &choices, 200);
        let _ = tx.send(Event::default().data("[DONE]")).await;
    });
    let body = tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, Infallible>);
    Sse::new(body)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_tool_call_is_held_back_and_parsed() {
        let mut c = Choice::new(Vec::new());
        let pieces = [
            "Sure. <tool",
            "_call>{\"name\": \"f\", ",
            "\"arguments\": {\"a\": 1}}</tool_call>",
        ];
        let out: String = pieces.iter().map(|p| c.gate(p.to_string())).collect();
        assert_eq!(out, "Sure. ");
        let delta = finish_tools(&mut c, "chatcmpl-x1").unwrap();
        assert_eq!(delta["tool_calls"][0]["function"]["name"], "f");
        assert_eq!(
            delta["tool_calls"][0]["function"]["arguments"],
            r#"{"a":1}"#
        );
        assert_eq!(delta["tool_calls"][0]["index"], 0);
        assert_eq!(c.finish, Some("tool_calls"));
    }

    #[test]
    fn text_that_only_starts_like_a_tool_call_is_released() {
        let mut c = Choice::new(Vec::new());
        assert_eq!(c.gate("a <to".into()), "a ");
        assert_eq!(c.gate("pic".into()), "<topic");
        assert_eq!(c.gate(" <tool_call>not json".into()), " ");
        assert_eq!(
            finish_tools(&mut c, "id").unwrap()["content"],
            "<tool_call>not json"
        );
        assert_eq!(c.finish, None);
    }
}
