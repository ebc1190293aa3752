//! [`LocalBackend`]: a model in this process. It owns what belongs to a local
//! model — chat template, tokenizer, context-window check, stop strings, tool-call
//! parsing — and submits one engine request per choice.
//!
//! Templating and tokenizing are CPU work (a long conversation takes milliseconds),
//! so they run on tokio's blocking pool, never on the async workers that carry
//! every other connection. A stop string ends a choice by asking the engine to
//! finish it, so its `Done` still carries the engine's usage (cached tokens) and
//! timings; the end of the output is the moment the stop string completed.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use inferd_engine::{
    start_engine, BoxedConstraint, EngineConfig, EngineError, EngineHandle, EngineRequest,
    LoadedModel, Logprobs, SamplingParams, TokenEvent,
};
use inferd_grammar::{GrammarError, Grammars};
use inferd_protocol::{
    ConstraintKind, FinishReason, OutputConstraint, PromptInput, ProtocolError, Role, Timings,
    ToolMode, TopLogprob, Usage, ValidChatRequest, ValidCompletionRequest,
};
use inferd_tokenizer::{ChatTemplate, Tokenizer};
use serde_json::{json, Value};

use crate::stop::StopMatcher;
use crate::tools::{self, ToolGate};
use crate::{
    Backend, BackendError, Capabilities, EngineStats, Event, EventStream, Health, LoggedToken,
    Request,
};

/// A local model behind its own engine. Cheap to clone.
#[derive(Clone)]
pub struct LocalBackend {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    engine: EngineHandle,
    tokenizer: Arc<Tokenizer>,
    template: Option<Arc<ChatTemplate>>,
    /// Built on the first constrained request (the vocabulary's token trie).
    grammars: OnceLock<Result<Grammars, GrammarError>>,
}

impl LocalBackend {
    /// Starts an engine for `model` and serves it as `name`.
    pub fn start(
        name: impl Into<String>,
        model: LoadedModel,
        config: EngineConfig,
    ) -> Result<LocalBackend, EngineError> {
        let (tokenizer, template) = (model.tokenizer.clone(), model.chat_template.clone());
        let engine = start_engine(model, config)?;
        Ok(LocalBackend::new(name, engine, tokenizer, template))
    }

    pub fn new(
        name: impl Into<String>,
        engine: EngineHandle,
        tokenizer: Arc<Tokenizer>,
        template: Option<Arc<ChatTemplate>>,
    ) -> LocalBackend {
        let inner = Arc::new(Inner {
            name: name.into(),
            engine,
            tokenizer,
            template,
            grammars: OnceLock::new(),
        });
        // The vocabulary's token trie takes a few hundred milliseconds: built in
        // the background now, so the first constrained request does not wait.
        let warm = Arc::clone(&inner);
        let _ = std::thread::Builder::new()
            .name("inferd-grammar-init".into())
            .spawn(move || {
                warm.grammars();
            });
        LocalBackend { inner }
    }

    pub fn engine(&self) -> &EngineHandle {
        &self.inner.engine
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.inner.tokenizer
    }
}

impl Backend for LocalBackend {
    fn name(&self) -> &str {
        &self.inner.name
    }

    fn context_window(&self) -> usize {
        self.inner.engine.context_length
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            chat: self.inner.template.is_some(),
            ..Capabilities::GENERATION
        }
    }

    fn health(&self) -> Health {
        if self.inner.engine.is_alive() {
            Health::Ready
        } else {
            Health::Unavailable(format!("the engine of `{}` has stopped", self.inner.name))
        }
    }

    fn generate(&self, request: Request) -> BoxFuture<'static, Result<EventStream, BackendError>> {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let prep = {
                let inner = Arc::clone(&inner);
                tokio::task::spawn_blocking(move || inner.prepare(request))
                    .await
                    .map_err(|e| {
                        BackendError::Internal(format!("preparing the prompt failed: {e}"))
                    })??
            };
            inner.start(prep).await
        })
    }

    fn engine_stats(&self) -> Option<EngineStats> {
        use std::sync::atomic::Ordering::Relaxed;
        let g = &self.inner.engine.gauges;
        Some(EngineStats {
            running: g.running.load(Relaxed),
            waiting: g.waiting.load(Relaxed),
            kv_used_blocks: g.kv_used_blocks.load(Relaxed),
            kv_cached_blocks: g.kv_cached_blocks.load(Relaxed),
            kv_free_blocks: g.kv_free_blocks.load(Relaxed),
            prefix_queries_tokens_total: g.prefix_queries_tokens_total.load(Relaxed),
            prefix_hits_tokens_total: g.prefix_hits_tokens_total.load(Relaxed),
            kv_evictions_total: g.kv_evictions_total.load(Relaxed),
            preemptions_total: g.preemptions_total.load(Relaxed),
            step_failures_total: g.step_failures_total.load(Relaxed),
            spec_draft_tokens_total: g.spec_draft_tokens_total.load(Relaxed),
            spec_accepted_tokens_total: g.spec_accepted_tokens_total.load(Relaxed),
            spec_verify_steps_total: g.spec_verify_steps_total.load(Relaxed),
            spec_accepted_at_total: std::array::from_fn(|i| {
                g.spec_accepted_at_total[i].load(Relaxed)
            }),
            spec_draft_ns_total: g.spec_draft_ns_total.load(Relaxed),
            spec_verify_ns_total: g.spec_verify_ns_total.load(Relaxed),
        })
    }

    fn ttft_estimate(&self, prompt_tokens: usize) -> Option<std::time::Duration> {
        self.inner.engine.gauges.ttft_estimate(prompt_tokens)
    }

    fn count_prompt(&self, request: &ValidChatRequest) -> Option<Result<usize, BackendError>> {
        Some(self.inner.chat_prompt(request).map(|p| p.len()))
    }
}

/// A request turned into token ids, ready for the engine.
struct Prepared {
    /// One per prompt; choice `k` answers prompt `k / n`.
    prompts: Vec<Vec<u32>>,
    /// Completions `echo`: each prompt's text.
    echo: Option<Vec<String>>,
    /// Parse tool calls out of the output.
    tools: bool,
    /// The output is tool calls a grammar forces (streamed as they come).
    forced_tools: bool,
    constraint: Option<BoxedConstraint>,
    max_tokens: usize,
    logprobs: Option<usize>,
    common: inferd_protocol::Common,
}

fn invalid(param: &str, message: impl Into<String>) -> BackendError {
    BackendError::Invalid(ProtocolError::field(param, message))
}

impl Inner {
    fn prepare(&self, request: Request) -> Result<Prepared, BackendError> {
        let (prompts, echo, tools, constraint, forced_tools, logprobs, common, param) =
            match request {
                Request::Chat(mut r) => {
                    let tools = !r.tools.is_empty() && r.tool_choice != ToolMode::None;
                    let prompt = self.chat_prompt(&r)?;
                    let forced = forced_tool_calls(&r);
                    let forced_tools = forced.is_some();
                    let constraint = match forced.or(r.constraint.take()) {
                        Some(c) => Some(self.compile(&c)?),
                        // "auto": a call the model opens is held to the tools.
                        None if tools && r.tool_choice == ToolMode::Auto => {
                            Some(self.lazy_tool_calls(&r)?)
                        }
                        None => None,
                    };
                    let c = r.common;
                    let lp = r.logprobs;
                    (
                        vec![prompt],
                        None,
                        tools,
                        constraint,
                        forced_tools,
                        lp,
                        c,
                        "messages",
                    )
                }
                Request::Completion(mut r) => {
                    let (prompts, echo) = self.completion_prompts(&r)?;
                    let constraint = match r.constraint.take() {
                        Some(c) => Some(self.compile(&c)?),
                        None => None,
                    };
                    let lp = r.logprobs;
                    (
                        prompts, echo, false, constraint, false, lp, r.common, "prompt",
                    )
                }
            };
        let ctx = self.engine.context_length;
        if let Some((i, p)) = prompts.iter().enumerate().find(|(_, p)| p.len() >= ctx) {
            let param = if prompts.len() > 1 {
                format!("{param}[{i}]")
            } else {
                param.to_owned()
            };
            return Err(BackendError::TooLong(ProtocolError::field(
                param,
                format!(
                    "the prompt is {} tokens, but the model's context window is {ctx} tokens",
                    p.len()
                ),
            )));
        }
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let room = ctx - longest;
        let max_tokens = match common.max_tokens {
            Some(m) if m > room => {
                return Err(BackendError::TooLong(ProtocolError::field(
                    "max_tokens",
                    format!(
                        "the prompt is {longest} tokens and max_tokens is {m}: {} in total exceeds the model's context window of {ctx} tokens",
                        longest + m
                    ),
                )))
            }
            Some(m) => m,
            None => room,
        };
        Ok(Prepared {
            prompts,
            echo,
            tools,
            forced_tools,
            constraint,
            max_tokens,
            logprobs,
            common,
        })
    }

    fn grammars(&self) -> &Result<Grammars, GrammarError> {
        self.grammars
            .get_or_init(|| Grammars::new(self.tokenizer.clone(), self.tokenizer.vocab_size()))
    }

    /// Compiles a request's constraint for this model; a constraint the grammar
    /// compiler refuses is a 400 naming the field and quoting the compiler.
    fn compile(&self, c: &OutputConstraint) -> Result<BoxedConstraint, BackendError> {
        let grammars = self
            .grammars()
            .as_ref()
            .map_err(|e| invalid(c.param, e.to_string()))?;
        let compiled = grammars.compile(&c.kind).map_err(|e| {
            invalid(
                c.param,
                format!("`{}` cannot be used for constrained decoding: {e}", c.param),
            )
        })?;
        if !compiled.compile_time.is_zero() {
            tracing::debug!(
                param = c.param,
                compile_ms = compiled.compile_time.as_secs_f64() * 1e3,
                "grammar compiled"
            );
        }
        Ok(BoxedConstraint(Box::new(compiled.constraint)))
    }

    /// `tool_choice: "auto"`: a call the model opens is constrained to the tools.
    fn lazy_tool_calls(&self, r: &ValidChatRequest) -> Result<BoxedConstraint, BackendError> {
        let grammars = self
            .grammars()
            .as_ref()
            .map_err(|e| invalid("tools", e.to_string()))?;
        let defs: Vec<_> = r.tools.iter().map(|t| t.function.clone()).collect();
        let lazy = grammars.tool_calls_when_started(&defs).map_err(|e| {
            invalid(
                "tools",
                format!("`tools` cannot be used for constrained decoding: {e}"),
            )
        })?;
        Ok(BoxedConstraint(Box::new(lazy)))
    }

    fn chat_prompt(&self, r: &ValidChatRequest) -> Result<Vec<u32>, BackendError> {
        let template = self.template.as_ref().ok_or_else(|| {
            invalid(
                "messages",
                format!("`{}` has no chat template; use /v1/completions", self.name),
            )
        })?;
        let mut messages: Vec<Value> = r
            .with_sections()
            .iter()
            .map(|m| {
                let role = match m.role {
                    Role::Developer => "system",
                    other => other.as_str(),
                };
                let mut v = json!({"role": role, "content": m.text()});
                if let Some(calls) = &m.tool_calls {
                    v["tool_calls"] = json!(calls);
                }
                if let Some(id) = &m.tool_call_id {
                    v["tool_call_id"] = json!(id);
                }
                if let Some(name) = &m.name {
                    v["name"] = json!(name);
                }
                v
            })
            .collect();
        let tools: Vec<Value> = r.tools.iter().map(|t| json!(t)).collect();
        let text = if tools.is_empty() {
            template.render(&messages, None, true)
        } else if template.renders_tools() {
            template.render(&messages, Some(&tools), true)
        } else {
            tools::inline_into_messages(&mut messages, &tools);
            template.render(&messages, None, true)
        }
        .map_err(|e| invalid("messages", e.to_string()))?;
        self.tokenizer
            .encode(&text, false)
            .map_err(|e| invalid("messages", e.to_string()))
    }

    #[allow(clippy::type_complexity)]
    fn completion_prompts(
        &self,
        r: &ValidCompletionRequest,
    ) -> Result<(Vec<Vec<u32>>, Option<Vec<String>>), BackendError> {
        let batch = r.prompts.len() > 1;
        let mut ids = Vec::with_capacity(r.prompts.len());
        let mut texts = Vec::new();
        for (i, p) in r.prompts.iter().enumerate() {
            let param = if batch {
                format!("prompt[{i}]")
            } else {
                "prompt".to_owned()
            };
            match p {
                PromptInput::Text(t) => {
                    ids.push(
                        self.tokenizer
                            .encode(t, true)
                            .map_err(|e| invalid(&param, e.to_string()))?,
                    );
                    if r.echo {
                        texts.push(t.clone());
                    }
                }
                PromptInput::Tokens(t) => {
                    let vocab = self.tokenizer.vocab_size();
                    if let Some(bad) = t.iter().find(|&&x| x as usize >= vocab) {
                        return Err(invalid(
                            &param,
                            format!("token id {bad} is outside the vocabulary of {vocab} tokens"),
                        ));
                    }
                    if r.echo {
                        texts.push(
                            self.tokenizer
                                .decode(t, false)
                                .map_err(|e| invalid(&param, e.to_string()))?,
                        );
                    }
                    ids.push(t.clone());
                }
            }
        }
        Ok((ids, r.echo.then_some(texts)))
    }

    async fn start(self: Arc<Self>, p: Prepared) -> Result<EventStream, BackendError> {
        let n = p.common.n;
        let arrival = p.common.arrival;
        let choices = p.prompts.len() * n;
        let prompt_logprobs = p.echo.as_ref().and(p.logprobs);
        let stop_token_ids = if p.common.ignore_eos {
            Vec::new()
        } else {
            self.tokenizer.stop_token_ids()
        };
        let mut streams: Vec<_> = (0..choices)
            .map(|i| {
                let s = &p.common.sampling;
                self.engine.submit(EngineRequest {
                    prompt: p.prompts[i / n].clone(),
                    max_tokens: p.max_tokens,
                    sampling: SamplingParams {
                        temperature: s.temperature,
                        top_k: s.top_k,
                        top_p: s.top_p,
                        min_p: s.min_p,
                        repetition_penalty: s.repetition_penalty,
                        presence_penalty: s.presence_penalty,
                        frequency_penalty: s.frequency_penalty,
                        // Distinct but reproducible seeds per choice.
                        seed: s.seed.map(|x| x.wrapping_add(i as u64)),
                        logprobs: p.logprobs,
                    },
                    stop_token_ids: stop_token_ids.clone(),
                    priority: p.common.priority,
                    cache_salt: p.common.cache_salt.clone(),
                    arrival: Some(arrival),
                    prompt_logprobs,
                    constraint: p.constraint.clone(),
                })
            })
            .collect();
        let edge = arrival.elapsed();
        // The first event of every choice decides between an error and a stream.
        let mut first = Vec::with_capacity(choices);
        for s in &mut streams {
            match s.recv().await {
                None => return Err(engine_error(EngineError::Stopped)),
                Some(TokenEvent::Error(e)) => return Err(engine_error(e)),
                Some(ev) => first.push(ev),
            }
        }
        let mut run = Run {
            inner: Arc::clone(&self),
            choices: (0..choices)
                .map(|i| Choice {
                    prompt: i / n,
                    stop: StopMatcher::new(p.common.stop.clone()),
                    gate: p.tools.then(|| match p.forced_tools {
                        true => ToolGate::forced(),
                        false => ToolGate::default(),
                    }),
                    made_calls: false,
                    tokens: 0,
                    logged: Vec::new(),
                    stopped_at: None,
                    done: false,
                })
                .collect(),
            streams,
            prompts: p.prompts,
            pending: VecDeque::new(),
            arrival,
            edge,
            logprobs: p.logprobs.is_some(),
            echo: p.echo,
            tool_id: crate::random_id(),
            next: 0,
        };
        if prompt_logprobs.is_none() {
            if let Some(texts) = &run.echo {
                for i in 0..choices {
                    run.pending.push_back(Event::Echo {
                        index: i,
                        text: texts[i / n].clone(),
                        tokens: Vec::new(),
                    });
                }
            }
        }
        for (i, ev) in first.into_iter().enumerate() {
            run.apply(i, Some(ev));
        }
        Ok(futures_util::stream::unfold(run, |mut run| async move {
            loop {
                if let Some(ev) = run.pending.pop_front() {
                    return Some((ev, run));
                }
                if run.choices.iter().all(|c| c.done) {
                    return None;
                }
                let (i, ev) = run.next_engine_event().await;
                run.apply(i, ev);
            }
        })
        .boxed())
    }
}

/// One choice while its engine events arrive.
struct Choice {
    prompt: usize,
    stop: StopMatcher,
    gate: Option<ToolGate>,
    /// Whether tool-call pieces went out (then the finish reason is `tool_calls`).
    made_calls: bool,
    /// Output tokens up to the end of the output (a stop string's last token).
    tokens: usize,
    /// Tokens whose text has not gone out in a `Delta` yet (with logprobs).
    logged: Vec<LoggedToken>,
    /// When a stop string completed; later tokens are dropped.
    stopped_at: Option<Instant>,
    done: bool,
}

/// A running request: its engine streams, choices, and events ready to go out.
struct Run {
    inner: Arc<Inner>,
    streams: Vec<inferd_engine::EventStream>,
    prompts: Vec<Vec<u32>>,
    choices: Vec<Choice>,
    pending: VecDeque<Event>,
    arrival: Instant,
    edge: Duration,
    logprobs: bool,
    echo: Option<Vec<String>>,
    tool_id: String,
    /// Where the next poll starts, so no choice starves the others.
    next: usize,
}

impl Run {
    async fn next_engine_event(&mut self) -> (usize, Option<TokenEvent>) {
        poll_fn(|cx| {
            let n = self.streams.len();
            for k in 0..n {
                let i = (self.next + k) % n;
                if self.choices[i].done {
                    continue;
                }
                if let Poll::Ready(ev) = self.streams[i].poll_recv(cx) {
                    self.next = (i + 1) % n;
                    return Poll::Ready((i, ev));
                }
            }
            Poll::Pending
        })
        .await
    }

    fn logged(&self, id: u32, lp: &Logprobs) -> LoggedToken {
        let mut t = self.logged_token(id, Some(lp.token_logprob));
        t.top = lp
            .top
            .iter()
            .map(|&(id, logprob)| {
                let bytes = self.token_bytes(id);
                TopLogprob {
                    token: String::from_utf8_lossy(&bytes).into_owned(),
                    logprob,
                    bytes: Some(bytes),
                }
            })
            .collect();
        t
    }

    fn token_bytes(&self, id: u32) -> Vec<u8> {
        self.inner
            .tokenizer
            .token_bytes(id)
            .unwrap_or_default()
            .to_vec()
    }

    fn logged_token(&self, id: u32, logprob: Option<f32>) -> LoggedToken {
        let bytes = self.token_bytes(id);
        LoggedToken {
            token: String::from_utf8_lossy(&bytes).into_owned(),
            bytes,
            logprob,
            top: Vec::new(),
        }
    }

    /// Turns one engine event of choice `i` into the events it produces.
    fn apply(&mut self, i: usize, ev: Option<TokenEvent>) {
        let Some(ev) = ev else {
            self.fail(engine_error(EngineError::Stopped));
            return;
        };
        match ev {
            TokenEvent::PromptLogprobs(lps) => {
                let Some(texts) = &self.echo else { return };
                let text = texts[self.choices[i].prompt].clone();
                let prompt = &self.prompts[self.choices[i].prompt];
                let tokens = prompt
                    .iter()
                    .enumerate()
                    .map(|(j, &id)| match j.checked_sub(1).and_then(|k| lps.get(k)) {
                        None => self.logged_token(id, None),
                        Some(lp) => self.logged(id, lp),
                    })
                    .collect();
                self.pending.push_back(Event::Echo {
                    index: i,
                    text,
                    tokens,
                });
            }
            TokenEvent::Token { id, text, logprobs } => {
                if self.choices[i].stopped_at.is_some() {
                    return;
                }
                let entry = logprobs
                    .as_ref()
                    .filter(|_| self.logprobs)
                    .map(|lp| self.logged(id, lp));
                let c = &mut self.choices[i];
                c.tokens += 1;
                c.logged.extend(entry);
                let (out, stopped) = c.stop.push(&text);
                if stopped {
                    c.stopped_at = Some(Instant::now());
                    // Ask the engine to end it now: its Done brings usage and timings.
                    self.streams[i].stop();
                }
                self.emit_text(i, out, false);
            }
            TokenEvent::Done {
                reason,
                usage,
                timings,
            } => {
                let c = &mut self.choices[i];
                let rest = if c.stopped_at.is_none() {
                    c.stop.flush()
                } else {
                    String::new()
                };
                self.emit_text(i, rest, true);
                let c = &mut self.choices[i];
                let mut finish = match (c.stopped_at, reason) {
                    (Some(_), _) | (None, inferd_engine::FinishReason::Stop) => FinishReason::Stop,
                    (None, inferd_engine::FinishReason::Length) => FinishReason::Length,
                };
                if let Some(mut gate) = c.gate.take() {
                    let (content, pieces) = gate.finish();
                    if !content.is_empty() {
                        self.pending.push_back(Event::Delta {
                            index: i,
                            text: content,
                            tokens: Vec::new(),
                        });
                    }
                    self.emit_calls(i, pieces);
                }
                let c = &mut self.choices[i];
                if c.made_calls {
                    finish = FinishReason::ToolCalls;
                }
                c.done = true;
                let mut t = timings;
                if let Some(at) = c.stopped_at {
                    // The output ended when the stop string completed, not when
                    // the engine got around to finishing the sequence.
                    t.e2e = at.saturating_duration_since(self.arrival);
                    t.decode = t.e2e.saturating_sub(t.ttft);
                }
                let timings = timings_of(
                    &t,
                    self.edge,
                    c.tokens,
                    usage.prompt_tokens,
                    usage.cached_tokens,
                );
                self.pending.push_back(Event::Done {
                    index: i,
                    finish,
                    usage: Usage::new(usage.prompt_tokens, c.tokens, usage.cached_tokens),
                    timings,
                });
            }
            TokenEvent::Error(e) => self.fail(engine_error(e)),
        }
    }

    /// Sends `text` (through the tool gate) with the tokens it came from; at the
    /// end of a choice, also tokens whose text was held back.
    fn emit_text(&mut self, i: usize, text: String, last: bool) {
        let c = &mut self.choices[i];
        let (text, pieces) = match &mut c.gate {
            Some(g) => g.push(&text),
            None => (text, Vec::new()),
        };
        self.emit_calls(i, pieces);
        let c = &mut self.choices[i];
        // At the end, tokens whose text was held back still go out.
        let flush_tokens = last && !c.logged.is_empty();
        if text.is_empty() && !flush_tokens {
            return;
        }
        let tokens = std::mem::take(&mut c.logged);
        self.pending.push_back(Event::Delta {
            index: i,
            text,
            tokens,
        });
    }

    fn emit_calls(&mut self, i: usize, pieces: Vec<tools::CallPiece>) {
        for p in pieces {
            self.choices[i].made_calls = true;
            self.pending.push_back(Event::ToolCall {
                index: i,
                call: tools::to_delta(p, &self.tool_id),
            });
        }
    }

    fn fail(&mut self, e: BackendError) {
        for c in &mut self.choices {
            c.done = true;
        }
        self.pending.push_back(Event::Error(e));
    }
}

/// The tool-call constraint `tool_choice` asks for: `"required"` (any of the
/// tools) or a named function; `None` for `"auto"` and `"none"`.
fn forced_tool_calls(r: &ValidChatRequest) -> Option<OutputConstraint> {
    let tools: Vec<_> = match &r.tool_choice {
        ToolMode::Required => r.tools.iter().map(|t| t.function.clone()).collect(),
        ToolMode::Named(name) => r
            .tools
            .iter()
            .filter(|t| &t.function.name == name)
            .map(|t| t.function.clone())
            .collect(),
        ToolMode::Auto | ToolMode::None => return None,
    };
    Some(OutputConstraint {
        param: "tool_choice",
        kind: ConstraintKind::ToolCalls {
            tools,
            parallel: r.parallel_tool_calls,
        },
    })
}

fn timings_of(
    t: &inferd_engine::Timings,
    edge: Duration,
    tokens: usize,
    prompt_tokens: usize,
    cached_tokens: usize,
) -> Timings {
    let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
    let decode = t.decode.as_secs_f64();
    let tps = if decode > 0.0 && tokens > 1 {
        (tokens - 1) as f64 / decode
    } else {
        0.0
    };
    Timings {
        edge_ms: ms(edge),
        queue_ms: ms(t.queue),
        prefill_ms: ms(t.prefill),
        ttft_ms: ms(t.ttft),
        decode_ms: ms(t.decode),
        e2e_ms: ms(t.e2e),
        decode_tokens_per_second: (tps * 10.0).round() / 10.0,
        prompt_tokens,
        cached_prompt_tokens: cached_tokens,
        preemptions: t.preemptions,
        mask_ms: (t.masks > 0).then(|| ms(t.mask)),
        spec_draft_tokens: (t.spec_draft_tokens > 0).then_some(t.spec_draft_tokens),
        spec_accepted_tokens: (t.spec_draft_tokens > 0).then_some(t.spec_accepted_tokens),
    }
}

/// What a client is told about an engine error.
fn engine_error(e: EngineError) -> BackendError {
    match e {
        EngineError::Overloaded { .. } => BackendError::Overloaded {
            message: e.to_string(),
            retry_after_secs: 1,
        },
        EngineError::ContextOverflow { .. } => invalid("max_tokens", e.to_string()),
        EngineError::InvalidParam { field, .. } => invalid(field, e.to_string()),
        EngineError::EmptyPrompt => invalid("prompt", "the prompt is empty"),
        EngineError::Scheduler(_) => invalid("max_tokens", e.to_string()),
        EngineError::Stopped => BackendError::Unavailable("the engine has stopped".into()),
        // The request's own grammar ran out of ways forward (or past a parser
        // limit): the caller's to fix, and the message says why.
        EngineError::Constraint(msg) => BackendError::Invalid(ProtocolError::body(format!(
            "the output constraint cannot continue: {msg}"
        ))),
        EngineError::StepPanicked(msg) => {
            tracing::error!(error = %msg, "engine step panicked; its requests failed, the engine keeps serving");
            BackendError::Internal(format!(
                "the engine step running this request failed ({msg}); only the requests in that step were failed and the engine keeps serving"
            ))
        }
        other => {
            tracing::error!(error = %other, "engine error");
            BackendError::Internal("internal error in the engine; see the server log".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicked_step_is_a_500_that_says_the_engine_keeps_serving() {
        let e = engine_error(EngineError::StepPanicked(
            "the engine step panicked: no candidate".into(),
        ));
        let BackendError::Internal(msg) = e else {
            panic!("a panicked step is an internal error, got {e:?}");
        };
        assert!(
            msg.contains("no candidate") && msg.contains("keeps serving"),
            "{msg}"
        );
        assert!(matches!(
            engine_error(EngineError::Overloaded { max_waiting: 1 }),
            BackendError::Overloaded {
                retry_after_secs: 1,
                ..
            }
        ));
        assert!(matches!(
            engine_error(EngineError::Stopped),
            BackendError::Unavailable(_)
        ));
    }
}
