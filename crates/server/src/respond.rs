//! Writing a backend's events as OpenAI JSON or SSE.
//!
//! Streaming follows OpenAI's order exactly: a first chunk per choice with the
//! role (chat), content deltas, a final chunk per choice with `finish_reason` and
//! an empty delta (plus our `timings`), then — only with
//! `stream_options.include_usage` — a usage chunk with empty `choices`, then
//! `data: [DONE]`. Errors before the first event are plain HTTP errors; an error
//! later in a stream is a final `data: {"error": ...}` event.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use inferd_backend::{Backend, Event, EventStream, LoggedToken, Request};
use inferd_protocol::{
    AssistantMessage, ChatChoice, ChatCompletionChunk, ChatCompletionResponse, ChoiceLogprobs,
    ChunkChoice, CompletionChoice, CompletionLogprobs, CompletionResponse, Delta, FinishReason,
    Route, Timings, TokenLogprob, ToolCall, ToolMode, Usage,
};
use serde::Serialize;
use serde_json::{json, Map};
use tokio::sync::mpsc;

use crate::error::ApiError;
use crate::metrics::NO_MODEL;
use crate::ServerState;

/// Which endpoint is answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Chat,
    Text,
}

/// What every chunk and the response share.
struct Reply {
    kind: Kind,
    id: String,
    model: String,
    created: u64,
    /// Choices per prompt (usage counts prompt tokens once per prompt).
    n: usize,
    choices: usize,
    logprobs: bool,
    stream: bool,
    include_usage: bool,
    deadline: Option<(tokio::time::Instant, Duration)>,
}

pub async fn completion_route(
    s: Arc<ServerState>,
    headers: HeaderMap,
    body: Bytes,
    arrival: Instant,
    kind: Kind,
) -> Response {
    let mut model = NO_MODEL.to_owned();
    let result = answer(&s, &headers, &body, arrival, kind, &mut model).await;
    result.unwrap_or_else(|e| refused(&s, &model, e))
}

/// The response to a refused request, counted and logged under its model label.
pub(crate) fn refused(s: &ServerState, model: &str, e: ApiError) -> Response {
    s.metrics
        .errors
        .with_label_values(&[model, e.label()])
        .inc();
    tracing::info!(status = e.status.as_u16(), model = %model, error = %e.message, "request refused");
    e.into_response()
}

async fn answer(
    s: &Arc<ServerState>,
    headers: &HeaderMap,
    body: &[u8],
    arrival: Instant,
    kind: Kind,
    model_label: &mut String,
) -> Result<Response, ApiError> {
    let caller = s.caller(headers).await?;
    let (request, body_bytes) = match kind {
        Kind::Chat => {
            let body = crate::memory::resolve_memory_search(s, body).await?;
            (
                Request::Chat(inferd_protocol::parse_chat(&body, arrival)?),
                body.len(),
            )
        }
        Kind::Text => (
            Request::Completion(inferd_protocol::parse_completion(body, arrival)?),
            body.len(),
        ),
    };
    let backend = Arc::clone(s.backend(request.common().model.as_deref())?);
    *model_label = backend.name().to_owned();
    check_capabilities(&*backend, &request)?;
    let common = request.common();
    // A key's limits are checked against an upper bound of the request: no
    // prompt has more tokens than its body has bytes (plus the template's
    // own), no answer more than `max_tokens` (else the context window).
    let prompt_bound = body_bytes + PROMPT_TEMPLATE_BOUND;
    let completion_bound =
        common.max_tokens.unwrap_or(backend.context_window()) * request.choices();
    let ticket = s
        .admit(&caller, backend.name(), prompt_bound, completion_bound)
        .await?;
    let deadline = s
        .request_timeout
        .map(|t| (tokio::time::Instant::from_std(common.arrival) + t, t));
    let reply = Reply {
        kind,
        id: format!(
            "{}-{}",
            if kind == Kind::Chat {
                "chatcmpl"
            } else {
                "cmpl"
            },
            &inferd_backend::random_id()[..24]
        ),
        model: backend.name().to_owned(),
        created: crate::unix_now(),
        n: common.n,
        choices: request.choices(),
        logprobs: request.logprobs().is_some(),
        stream: common.stream,
        include_usage: common.include_usage,
        deadline,
    };
    let events = within(deadline, backend.generate(request)).await??;
    let (route, events) = take_route(reply.deadline, events).await?;
    if let Some(r) = &route {
        s.metrics.observe_route(&reply.model, r);
    }
    let meter = Meter {
        ticket,
        prompt_bound,
        deltas: 0,
    };
    let mut resp = if reply.stream {
        stream_response(Arc::clone(s), reply, events, route.as_ref(), meter)
    } else {
        collect(s, reply, events, route.as_ref(), meter).await?
    };
    if let Some(r) = &route {
        if let Ok(v) = HeaderValue::from_str(&r.header()) {
            resp.headers_mut().insert("x-inferd-route", v);
        }
        if let Some(ms) = r.overhead_ms {
            if let Ok(v) = HeaderValue::from_str(&format!("{ms:.3}")) {
                resp.headers_mut().insert("x-inferd-overhead-ms", v);
            }
        }
    }
    Ok(resp)
}

/// Tokens a chat template adds around the messages, at most (an upper bound
/// for limits, not a count).
const PROMPT_TEMPLATE_BOUND: usize = 256;

/// What a keyed request has used, for its [`Ticket`](inferd_memory::Ticket).
struct Meter {
    ticket: Option<inferd_memory::Ticket>,
    prompt_bound: usize,
    /// Output deltas sent so far.
    deltas: usize,
}

impl Meter {
    /// The usage every choice reported.
    fn finished(&mut self, s: &ServerState, r: &Reply, route: Option<&Route>, usage: &Usage) {
        if let Some(t) = &mut self.ticket {
            s.charge(t, &r.model, route, usage, 200);
        }
    }

    /// A stream the client may leave before its usage is reported: until then
    /// it is charged the prompt's bound and a token per delta sent.
    fn delta(&mut self, s: &ServerState, r: &Reply, route: Option<&Route>) {
        self.deltas += 1;
        if let Some(t) = &mut self.ticket {
            let usage = Usage::new(self.prompt_bound, self.deltas, 0);
            s.charge(t, &r.model, route, &usage, 499);
        }
    }
}

/// A gateway's route, when the stream starts with one (the rest unchanged).
async fn take_route(
    deadline: Option<(tokio::time::Instant, Duration)>,
    mut events: EventStream,
) -> Result<(Option<Route>, EventStream), ApiError> {
    Ok(match within(deadline, events.next()).await? {
        Some(Event::Route(r)) => (Some(*r), events),
        Some(first) => (
            None,
            futures_util::stream::once(async move { first })
                .chain(events)
                .boxed(),
        ),
        None => (None, events),
    })
}

fn check_capabilities(b: &dyn Backend, r: &Request) -> Result<(), ApiError> {
    let c = b.capabilities();
    let refuse = |param: &str, what: &str| {
        Err(ApiError::invalid(
            param,
            format!("`{}` does not support {what}", b.name()),
        ))
    };
    if c.embeddings && !c.chat && !c.completions {
        return Err(ApiError::invalid(
            "model",
            format!("`{}` is an embedding model; use /v1/embeddings", b.name()),
        ));
    }
    match r {
        Request::Chat(_) if !c.chat => refuse(
            "messages",
            "chat completions (it has no chat template); use /v1/completions",
        ),
        Request::Chat(chat) if !c.tools && !chat.tools.is_empty() => refuse("tools", "tools"),
        Request::Chat(chat)
            if !c.constraints
                && matches!(chat.tool_choice, ToolMode::Required | ToolMode::Named(_)) =>
        {
            refuse("tool_choice", "forced tool calls (constrained decoding)")
        }
        _ if !c.constraints && r.constraint().is_some() => refuse(
            r.constraint().map_or("response_format", |c| c.param),
            "constrained decoding",
        ),
        Request::Completion(_) if !c.completions => refuse("prompt", "text completions"),
        Request::Completion(t) if t.echo && !c.echo => refuse("echo", "`echo`"),
        _ if r.logprobs().is_some() && !c.logprobs => refuse("logprobs", "log-probabilities"),
        _ => Ok(()),
    }
}

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

/// One choice's output as events arrive.
#[derive(Default)]
struct Choice {
    echo: String,
    echo_tokens: Vec<LoggedToken>,
    text: String,
    tokens: Vec<LoggedToken>,
    tool_calls: Vec<ToolCall>,
    finish: Option<FinishReason>,
    usage: Usage,
    timings: Timings,
    last_delta_at: Option<Instant>,
}

impl Choice {
    fn note_delta(&mut self, s: &ServerState, model: &str) {
        let now = Instant::now();
        if let Some(prev) = self.last_delta_at.replace(now) {
            s.metrics
                .itl
                .with_label_values(&[model])
                .observe((now - prev).as_secs_f64());
        }
    }
}

/// Prompt tokens count once per prompt (not per choice), as OpenAI counts them.
fn total_usage(n: usize, choices: &[Choice]) -> Usage {
    let prompt: usize = choices
        .iter()
        .step_by(n)
        .map(|c| c.usage.prompt_tokens)
        .sum();
    let completion: usize = choices.iter().map(|c| c.usage.completion_tokens).sum();
    let cached: usize = choices
        .iter()
        .step_by(n)
        .map(|c| c.usage.cached_tokens())
        .sum();
    Usage::new(prompt, completion, cached)
}

fn chat_logprobs(tokens: &[LoggedToken]) -> ChoiceLogprobs {
    ChoiceLogprobs {
        content: tokens
            .iter()
            .map(|t| TokenLogprob {
                token: t.token.clone(),
                logprob: t.logprob.unwrap_or(0.0),
                bytes: Some(t.bytes.clone()),
                top_logprobs: t.top.clone(),
            })
            .collect(),
    }
}

/// The legacy completions format; offsets count characters from `offset` on.
fn text_logprobs(tokens: &[LoggedToken], mut offset: usize) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    for t in tokens {
        out.tokens.push(t.token.clone());
        out.token_logprobs.push(t.logprob);
        out.top_logprobs.push(t.logprob.map(|_| {
            t.top
                .iter()
                .map(|a| (a.token.clone(), json!(a.logprob)))
                .collect::<Map<_, _>>()
        }));
        out.text_offset.push(offset);
        offset += t.token.chars().count();
    }
    out
}

fn merge_logprobs(mut a: CompletionLogprobs, b: CompletionLogprobs) -> CompletionLogprobs {
    a.tokens.extend(b.tokens);
    a.token_logprobs.extend(b.token_logprobs);
    a.top_logprobs.extend(b.top_logprobs);
    a.text_offset.extend(b.text_offset);
    a
}

async fn collect(
    s: &Arc<ServerState>,
    r: Reply,
    mut events: EventStream,
    route: Option<&Route>,
    mut meter: Meter,
) -> Result<Response, ApiError> {
    let mut choices: Vec<Choice> = (0..r.choices).map(|_| Choice::default()).collect();
    while let Some(ev) = within(r.deadline, events.next()).await? {
        match ev {
            Event::Echo {
                index,
                text,
                tokens,
            } => {
                let c = &mut choices[index];
                c.echo = text;
                c.echo_tokens = tokens;
            }
            Event::Delta {
                index,
                text,
                tokens,
            } => {
                let c = &mut choices[index];
                c.note_delta(s, &r.model);
                c.text.push_str(&text);
                c.tokens.extend(tokens);
            }
            Event::ToolCall { index, call } => call.merge_into(&mut choices[index].tool_calls),
            Event::Done {
                index,
                finish,
                usage,
                timings,
            } => {
                let c = &mut choices[index];
                s.metrics
                    .observe_done(&r.model, finish.as_str(), &usage, &timings);
                (c.finish, c.usage, c.timings) = (Some(finish), usage, timings);
            }
            Event::Error(e) => return Err(e.into()),
            // Only the first event may be a route (`take_route`).
            Event::Route(_) => {}
        }
    }
    drop(events);
    let usage = total_usage(r.n, &choices);
    meter.finished(s, &r, route, &usage);
    let timings = Some(choices[0].timings);
    let mut body = match r.kind {
        Kind::Chat => serde_json::to_value(ChatCompletionResponse {
            id: r.id.clone(),
            object: "chat.completion".into(),
            created: r.created,
            model: r.model.clone(),
            choices: choices
                .iter()
                .enumerate()
                .map(|(index, c)| {
                    let calls = !c.tool_calls.is_empty();
                    let content = if calls {
                        c.text.trim().to_owned()
                    } else {
                        c.text.clone()
                    };
                    ChatChoice {
                        index,
                        message: AssistantMessage {
                            role: "assistant".into(),
                            content: (!calls || !content.is_empty()).then_some(content),
                            tool_calls: calls.then(|| {
                                c.tool_calls
                                    .iter()
                                    .map(|t| ToolCall {
                                        index: None,
                                        ..t.clone()
                                    })
                                    .collect()
                            }),
                        },
                        logprobs: r.logprobs.then(|| chat_logprobs(&c.tokens)),
                        finish_reason: c.finish,
                    }
                })
                .collect(),
            usage,
            timings,
        }),
        Kind::Text => serde_json::to_value(CompletionResponse {
            id: r.id.clone(),
            object: "text_completion".into(),
            created: r.created,
            model: r.model.clone(),
            choices: choices
                .iter()
                .enumerate()
                .map(|(index, c)| CompletionChoice {
                    index,
                    text: format!("{}{}", c.echo, c.text),
                    logprobs: r.logprobs.then(|| {
                        let echoed = text_logprobs(&c.echo_tokens, 0);
                        let offset = c.echo.chars().count();
                        merge_logprobs(echoed, text_logprobs(&c.tokens, offset))
                    }),
                    finish_reason: c.finish,
                })
                .collect(),
            usage: Some(usage),
            timings,
        }),
    }
    .expect("response types serialize: this is a bug");
    if let Some(route) = route {
        body["route"] = serde_json::to_value(route).expect("a route serializes: this is a bug");
    }
    log_request(&r, &choices, 200);
    let mut resp = (StatusCode::OK, axum::Json(body)).into_response();
    let ttft_ms = choices[0].timings.ttft_ms.round() as u64;
    resp.headers_mut()
        .insert("x-inferd-ttft-ms", HeaderValue::from(ttft_ms));
    Ok(resp)
}

fn log_request(r: &Reply, choices: &[Choice], status: u16) {
    let c = &choices[0];
    let usage = total_usage(r.n, choices);
    tracing::info!(
        id = %r.id,
        model = %r.model,
        status,
        prompt_tokens = usage.prompt_tokens,
        output_tokens = usage.completion_tokens,
        cached_tokens = usage.cached_tokens(),
        edge_ms = c.timings.edge_ms,
        queue_ms = c.timings.queue_ms,
        ttft_ms = c.timings.ttft_ms,
        e2e_ms = c.timings.e2e_ms,
        "request"
    );
}

fn sse(v: &impl Serialize) -> SseEvent {
    SseEvent::default().data(serde_json::to_string(v).expect("chunks serialize: this is a bug"))
}

impl Reply {
    fn chat_chunk(
        &self,
        index: usize,
        delta: Delta,
        logprobs: Option<ChoiceLogprobs>,
        finish: Option<FinishReason>,
    ) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".into(),
            created: self.created,
            model: self.model.clone(),
            choices: vec![ChunkChoice {
                index,
                delta,
                logprobs,
                finish_reason: finish,
            }],
            usage: None,
            timings: None,
        }
    }

    fn text_chunk(
        &self,
        index: usize,
        text: String,
        logprobs: Option<CompletionLogprobs>,
        finish: Option<FinishReason>,
    ) -> CompletionResponse {
        CompletionResponse {
            id: self.id.clone(),
            object: "text_completion".into(),
            created: self.created,
            model: self.model.clone(),
            choices: vec![CompletionChoice {
                index,
                text,
                logprobs,
                finish_reason: finish,
            }],
            usage: None,
            timings: None,
        }
    }

    /// The SSE event for one backend event (`None`: nothing to send).
    fn chunk(&self, c: &mut Choice, ev: Event) -> Option<SseEvent> {
        match (self.kind, ev) {
            (Kind::Chat, Event::Echo { .. }) => None,
            (
                Kind::Text,
                Event::Echo {
                    index,
                    text,
                    tokens,
                },
            ) => {
                let lp = self.logprobs.then(|| text_logprobs(&tokens, 0));
                c.echo = text.clone();
                Some(sse(&self.text_chunk(index, text, lp, None)))
            }
            (
                kind,
                Event::Delta {
                    index,
                    text,
                    tokens,
                },
            ) => {
                if text.is_empty() && tokens.is_empty() {
                    return None;
                }
                let offset = c.echo.chars().count() + c.text.chars().count();
                c.text.push_str(&text);
                Some(match kind {
                    Kind::Chat => sse(&self.chat_chunk(
                        index,
                        Delta {
                            content: Some(text),
                            ..Delta::default()
                        },
                        self.logprobs.then(|| chat_logprobs(&tokens)),
                        None,
                    )),
                    Kind::Text => sse(&self.text_chunk(
                        index,
                        text,
                        self.logprobs.then(|| text_logprobs(&tokens, offset)),
                        None,
                    )),
                })
            }
            (Kind::Chat, Event::ToolCall { index, call }) => Some(sse(&self.chat_chunk(
                index,
                Delta {
                    tool_calls: Some(vec![call]),
                    ..Delta::default()
                },
                None,
                None,
            ))),
            (Kind::Text, Event::ToolCall { .. }) => None,
            (
                kind,
                Event::Done {
                    index,
                    finish,
                    timings,
                    ..
                },
            ) => Some(match kind {
                Kind::Chat => {
                    let mut ch = self.chat_chunk(index, Delta::default(), None, Some(finish));
                    ch.timings = Some(timings);
                    sse(&ch)
                }
                Kind::Text => {
                    let mut ch = self.text_chunk(index, String::new(), None, Some(finish));
                    ch.timings = Some(timings);
                    sse(&ch)
                }
            }),
            (_, Event::Error(e)) => Some(sse(&ApiError::from(e).body())),
            (_, Event::Route(_)) => None,
        }
    }

    /// The stream's first chunk when a gateway chose the route: no choices,
    /// and the `route` object.
    fn route_chunk(&self, route: &Route) -> SseEvent {
        let mut chunk = match self.kind {
            Kind::Chat => {
                let mut ch = self.chat_chunk(0, Delta::default(), None, None);
                ch.choices.clear();
                serde_json::to_value(ch)
            }
            Kind::Text => {
                let mut ch = self.text_chunk(0, String::new(), None, None);
                ch.choices.clear();
                serde_json::to_value(ch)
            }
        }
        .expect("chunks serialize: this is a bug");
        chunk["route"] = serde_json::to_value(route).expect("a route serializes: this is a bug");
        sse(&chunk)
    }
}

/// Streams the events as SSE chunks. A task forwards them; when the client
/// disconnects the channel closes, the task ends and drops the event stream,
/// which cancels the request and frees its blocks.
fn stream_response(
    s: Arc<ServerState>,
    r: Reply,
    mut events: EventStream,
    route: Option<&Route>,
    mut meter: Meter,
) -> Response {
    let (tx, rx) = mpsc::channel::<SseEvent>(64);
    let route_seen = route.cloned();
    let route = route.map(|route| r.route_chunk(route));
    tokio::spawn(async move {
        if let Some(chunk) = route {
            if tx.send(chunk).await.is_err() {
                return;
            }
        }
        let mut choices: Vec<Choice> = (0..r.choices).map(|_| Choice::default()).collect();
        let mut dones = 0;
        if r.kind == Kind::Chat {
            for i in 0..r.choices {
                let role = Delta {
                    role: Some("assistant".into()),
                    content: Some(String::new()),
                    tool_calls: None,
                };
                if tx
                    .send(sse(&r.chat_chunk(i, role, None, None)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
        loop {
            let ev = match within(r.deadline, events.next()).await {
                Ok(Some(ev)) => ev,
                Ok(None) => break,
                Err(e) => {
                    s.metrics
                        .errors
                        .with_label_values(&[r.model.as_str(), e.label()])
                        .inc();
                    tracing::info!(id = %r.id, status = 408, "request timed out while streaming");
                    let _ = tx.send(sse(&e.body())).await;
                    return;
                }
            };
            let index = match &ev {
                Event::Echo { index, .. }
                | Event::Delta { index, .. }
                | Event::ToolCall { index, .. }
                | Event::Done { index, .. } => Some(*index),
                Event::Error(_) | Event::Route(_) => None,
            };
            let c = match index {
                Some(i) => &mut choices[i],
                None => &mut choices[0],
            };
            match &ev {
                Event::Delta { .. } => {
                    c.note_delta(&s, &r.model);
                    meter.delta(&s, &r, route_seen.as_ref());
                }
                Event::Done {
                    finish,
                    usage,
                    timings,
                    ..
                } => {
                    s.metrics
                        .observe_done(&r.model, finish.as_str(), usage, timings);
                    (c.finish, c.usage, c.timings) = (Some(*finish), *usage, *timings);
                    dones += 1;
                }
                Event::Error(e) => {
                    let e = ApiError::from(e.clone());
                    s.metrics
                        .errors
                        .with_label_values(&[r.model.as_str(), e.label()])
                        .inc();
                    tracing::info!(id = %r.id, status = e.status.as_u16(), error = %e.message, "request failed while streaming");
                }
                _ => {}
            }
            let failed = matches!(ev, Event::Error(_));
            let chunk = r.chunk(c, ev);
            if dones == r.choices && meter.ticket.is_some() {
                meter.finished(&s, &r, route_seen.as_ref(), &total_usage(r.n, &choices));
            }
            if let Some(chunk) = chunk {
                if tx.send(chunk).await.is_err() {
                    return;
                }
            }
            if failed {
                return;
            }
        }
        drop(events);
        if r.include_usage {
            let usage = total_usage(r.n, &choices);
            let chunk = match r.kind {
                Kind::Chat => {
                    let mut ch = r.chat_chunk(0, Delta::default(), None, None);
                    ch.choices.clear();
                    ch.usage = Some(usage);
                    sse(&ch)
                }
                Kind::Text => {
                    let mut ch = r.text_chunk(0, String::new(), None, None);
                    ch.choices.clear();
                    ch.usage = Some(usage);
                    sse(&ch)
                }
            };
            if tx.send(chunk).await.is_err() {
                return;
            }
        }
        log_request(&r, &choices, 200);
        let _ = tx.send(SseEvent::default().data("[DONE]")).await;
    });
    let body = tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, Infallible>);
    Sse::new(body)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
