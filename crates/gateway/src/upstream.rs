//! An OpenAI-compatible server as a [`Backend`].
//!
//! One pooled HTTP client per upstream (keep-alive connections reused across
//! requests), at most `max_concurrent` requests in flight (the rest wait, up to
//! the TTFT timeout, and are then refused with 429), and three deadlines: to
//! connect, to the first token, to the end of the answer. A reader task per
//! request turns the upstream's SSE chunks into [`Event`]s as they arrive;
//! dropping the event stream drops the task and its connection, which cancels
//! the request upstream. An answer the upstream cuts off (the connection closes
//! before every choice finished, or a deadline passes) ends with an error
//! event, never as a shorter answer.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use inferd_backend::{
    Backend, BackendError, Capabilities, Event, EventStream, Health, LoggedToken, Request,
    UpstreamStats, SLOT_WAIT_BUCKETS,
};
use inferd_protocol::{
    ChatCompletionChunk, ChoiceLogprobs, CompletionResponse, ErrorBody, FinishReason,
    ProtocolError, Timings, Usage,
};
use tokio::sync::{mpsc, Semaphore};

use crate::sse::SseLines;
use crate::wire::{chat_body, completion_body};

/// Where an upstream is and how it is used.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    /// The id clients send in `model`.
    pub name: String,
    /// The API root, e.g. `http://127.0.0.1:8081/v1`.
    pub base_url: String,
    /// The model name the upstream knows (defaults to `name` in the config).
    pub model: String,
    /// Sent as `Authorization: Bearer`.
    pub api_key: Option<String>,
    /// Prompt plus output tokens the upstream's model takes.
    pub context_window: usize,
    pub connect_timeout: Duration,
    /// From sending the request to the first token.
    pub ttft_timeout: Duration,
    /// From sending the request to the end of the answer.
    pub total_timeout: Duration,
    pub max_concurrent: usize,
    /// Consecutive failures (unreachable, 5xx, no first token in time) that
    /// open the circuit.
    pub failure_threshold: usize,
    /// How long an open circuit refuses at once before it lets one request
    /// through as a probe (half-open).
    pub open_for: Duration,
    /// Tries again after a failure to connect or a 502/503/504 answer (never
    /// once a token arrived), waiting a random time up to `retry_backoff`
    /// × 2^k before the k-th retry.
    pub retries: usize,
    pub retry_backoff: Duration,
    /// Active health checks: `GET {base_url}/models` this often.
    pub health_check: Option<Duration>,
    /// PEM certificates trusted for an `https` upstream besides the built-in
    /// web roots (a private CA, a self-signed server).
    pub ca_pem: Option<Vec<u8>>,
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream `{name}`: base_url {url:?} {what}")]
    BaseUrl {
        name: String,
        url: String,
        what: &'static str,
    },
    #[error("upstream `{name}`: ca_file: {what}")]
    Ca { name: String, what: String },
    #[error("upstream `{name}`: cannot build its HTTP client: {source}")]
    Client {
        name: String,
        source: reqwest::Error,
    },
}

pub struct Upstream {
    config: UpstreamConfig,
    client: reqwest::Client,
    slots: Arc<Semaphore>,
    circuit: Arc<Circuit>,
    counters: Arc<Counters>,
}

/// What `upstream_stats` reports beyond the slots themselves.
#[derive(Default)]
struct Counters {
    waiting: std::sync::atomic::AtomicUsize,
    timeouts: std::sync::atomic::AtomicU64,
    retries: std::sync::atomic::AtomicU64,
    /// Slot waits by bucket of `SLOT_WAIT_BUCKETS`, and their sum.
    waits: std::sync::Mutex<([u64; SLOT_WAIT_BUCKETS.len() + 1], f64)>,
}

impl Counters {
    fn waited(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let bucket = SLOT_WAIT_BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(SLOT_WAIT_BUCKETS.len());
        let mut w = self.waits.lock().unwrap_or_else(|p| p.into_inner());
        w.0[bucket] += 1;
        w.1 += secs;
    }
}

/// The wait before retry `k` (from 0): uniform in [0, base × 2^k], capped at 5 s.
fn backoff(base: Duration, k: usize) -> Duration {
    let bound = base
        .saturating_mul(1 << k.min(16))
        .min(Duration::from_secs(5));
    bound.mul_f64(rand::random::<f64>())
}

/// A failed start, and whether trying again may help (nothing was received).
struct Failure {
    error: BackendError,
    retryable: bool,
}

impl From<BackendError> for Failure {
    fn from(error: BackendError) -> Failure {
        Failure {
            error,
            retryable: false,
        }
    }
}

impl Upstream {
    pub fn new(config: UpstreamConfig) -> Result<Upstream, UpstreamError> {
        let url_err = |what| UpstreamError::BaseUrl {
            name: config.name.clone(),
            url: config.base_url.clone(),
            what,
        };
        let parsed = reqwest::Url::parse(&config.base_url)
            .map_err(|_| url_err("is not a URL (e.g. http://127.0.0.1:8081/v1)"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(url_err("must start with http:// or https://"));
        }
        let mut builder = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .https_only(parsed.scheme() == "https");
        if let Some(pem) = &config.ca_pem {
            let ca_err = |what: String| UpstreamError::Ca {
                name: config.name.clone(),
                what,
            };
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| ca_err(format!("not PEM certificates: {e}")))?;
            if certs.is_empty() {
                return Err(ca_err("holds no PEM certificate".into()));
            }
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        let client = builder.build().map_err(|source| UpstreamError::Client {
            name: config.name.clone(),
            source,
        })?;
        let slots = Arc::new(Semaphore::new(config.max_concurrent.max(1)));
        let circuit = Arc::new(Circuit::new(config.failure_threshold, config.open_for));
        if let (Some(every), Ok(rt)) = (config.health_check, tokio::runtime::Handle::try_current())
        {
            rt.spawn(check_health(
                client.clone(),
                format!("{}/models", config.base_url.trim_end_matches('/')),
                config.api_key.clone(),
                Arc::downgrade(&circuit),
                every,
            ));
        }
        Ok(Upstream {
            circuit,
            counters: Arc::default(),
            config: UpstreamConfig {
                base_url: config.base_url.trim_end_matches('/').to_owned(),
                ..config
            },
            client,
            slots,
        })
    }

    pub fn config(&self) -> &UpstreamConfig {
        &self.config
    }

    /// `closed`, `open` or `half-open`.
    pub fn circuit_state(&self) -> &'static str {
        self.circuit.state()
    }
}

impl Backend for Upstream {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn context_window(&self) -> usize {
        self.config.context_window
    }

    /// What the request may ask for; the upstream refuses what its model
    /// cannot do, and that refusal reaches the client.
    fn capabilities(&self) -> Capabilities {
        Capabilities::GENERATION
    }

    fn health(&self) -> Health {
        match self.circuit.refusal(&self.config.name) {
            Some(why) => Health::Unavailable(why),
            None => Health::Ready,
        }
    }

    fn generate(&self, request: Request) -> BoxFuture<'static, Result<EventStream, BackendError>> {
        let c = self.config.clone();
        let (client, slots) = (self.client.clone(), Arc::clone(&self.slots));
        let (circuit, counters) = (Arc::clone(&self.circuit), Arc::clone(&self.counters));
        if let Err(e) = circuit.admit(&c.name) {
            return Box::pin(std::future::ready(Err(e)));
        }
        Box::pin(async move {
            let mut retry = 0;
            loop {
                let (result, retryable) = match start(
                    c.clone(),
                    client.clone(),
                    Arc::clone(&slots),
                    &counters,
                    request.clone(),
                )
                .await
                {
                    Ok(events) => (Ok(events), false),
                    Err(f) => (Err(f.error), f.retryable),
                };
                // The circuit counts requests, not tries: a request that
                // failed after its retries is one failure.
                if !retryable || retry >= c.retries {
                    circuit.record(&result);
                    return result;
                }
                tokio::time::sleep(backoff(c.retry_backoff, retry)).await;
                retry += 1;
                counters
                    .retries
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        })
    }

    fn upstream_stats(&self) -> Option<UpstreamStats> {
        use std::sync::atomic::Ordering::Relaxed;
        let max = self.config.max_concurrent.max(1);
        let waits = *self
            .counters
            .waits
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        Some(UpstreamStats {
            in_flight: max - self.slots.available_permits().min(max),
            waiting: self.counters.waiting.load(Relaxed),
            max_concurrent: max,
            circuit_open: self.circuit.state() != "closed",
            timeouts_total: self.counters.timeouts.load(Relaxed),
            failures_total: self.circuit.failures_total(),
            retries_total: self.counters.retries.load(Relaxed),
            slot_wait_counts: waits.0,
            slot_wait_sum_secs: waits.1,
        })
    }
}

/// Sends the request and waits for the answer's first event (the `Backend`
/// contract).
async fn start(
    c: UpstreamConfig,
    client: reqwest::Client,
    slots: Arc<Semaphore>,
    counters: &Counters,
    request: Request,
) -> Result<EventStream, Failure> {
    use std::sync::atomic::Ordering::Relaxed;
    let sent = Instant::now();
    let deadline = tokio::time::Instant::from_std(sent + c.total_timeout);
    let first_deadline = tokio::time::Instant::from_std(sent + c.ttft_timeout);
    let timed_out = || counters.timeouts.fetch_add(1, Relaxed);
    counters.waiting.fetch_add(1, Relaxed);
    let slot = tokio::time::timeout_at(first_deadline, slots.acquire_owned()).await;
    counters.waiting.fetch_sub(1, Relaxed);
    counters.waited(sent.elapsed());
    let permit = slot
        .map_err(|_| {
            timed_out();
            BackendError::Overloaded {
                message: format!(
                    "upstream `{}`: all {} of its request slots stayed busy for {:.1} s",
                    c.name,
                    c.max_concurrent,
                    c.ttft_timeout.as_secs_f64()
                ),
                retry_after_secs: 1,
            }
        })?
        .map_err(|_| BackendError::Unavailable(format!("upstream `{}` is closed", c.name)))?;
    let (path, body, kind) = match &request {
        Request::Chat(r) => (
            "chat/completions",
            serde_json::to_value(chat_body(r, &c.model)),
            Kind::Chat,
        ),
        Request::Completion(r) => (
            "completions",
            serde_json::to_value(completion_body(r, &c.model)),
            Kind::Completion,
        ),
    };
    let body = body.map_err(|e| BackendError::Internal(e.to_string()))?;
    let mut req = client.post(format!("{}/{path}", c.base_url)).json(&body);
    if let Some(key) = &c.api_key {
        req = req.bearer_auth(key);
    }
    let unreachable = |what: String| {
        BackendError::Unavailable(format!("upstream `{}` ({}): {what}", c.name, c.base_url))
    };
    let resp = tokio::time::timeout_at(first_deadline, req.send())
        .await
        .map_err(|_| {
            timed_out();
            unreachable(format!(
                "no answer within the TTFT timeout of {:.1} s",
                c.ttft_timeout.as_secs_f64()
            ))
        })?
        .map_err(|e| Failure {
            // Nothing reached the server, or it answered nothing.
            retryable: e.is_connect(),
            error: unreachable(describe(&e)),
        })?;
    let status = resp.status();
    if !status.is_success() {
        let text = tokio::time::timeout_at(first_deadline, resp.text())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        return Err(Failure {
            retryable: matches!(status.as_u16(), 502..=504),
            error: refusal(&c.name, status.as_u16(), &text),
        });
    }
    let choices = request.choices();
    let arrival = request.common().arrival;
    let (tx, mut rx) = mpsc::channel(64);
    let reader = Reader {
        name: c.name.clone(),
        kind,
        choices,
        arrival,
        first_token: None,
        finished: BTreeMap::new(),
        usage: None,
        timings: None,
        tx,
    };
    tokio::spawn(reader.run(resp.bytes_stream(), deadline, permit));
    // The contract: resolve once the answer has started, so that a
    // failure before the first token is a plain HTTP error.
    let first = match tokio::time::timeout_at(first_deadline, rx.recv()).await {
        Err(_) => {
            timed_out();
            return Err(unreachable(format!(
                "no token within the TTFT timeout of {:.1} s",
                c.ttft_timeout.as_secs_f64()
            ))
            .into());
        }
        Ok(None) => return Err(unreachable("the answer ended before it began".into()).into()),
        Ok(Some(Event::Error(e))) => return Err(e.into()),
        Ok(Some(ev)) => ev,
    };
    let rest =
        futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|ev| (ev, rx)) },
        );
    Ok(futures_util::stream::once(async move { first })
        .chain(rest)
        .boxed())
}

/// Active health checks, until the upstream is dropped: every `every`, a
/// `GET /models` that must answer 2xx within `every` (at most 5 s).
async fn check_health(
    client: reqwest::Client,
    url: String,
    key: Option<String>,
    circuit: std::sync::Weak<Circuit>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(circuit) = circuit.upgrade() else {
            return;
        };
        let mut req = client.get(&url);
        if let Some(k) = &key {
            req = req.bearer_auth(k);
        }
        let passed = matches!(
            tokio::time::timeout(every.min(Duration::from_secs(5)), req.send()).await,
            Ok(Ok(r)) if r.status().is_success()
        );
        circuit.checked(passed);
    }
}

/// The circuit breaker of one upstream: closed (requests go through), open
/// after `threshold` consecutive failures (requests are refused at once, so a
/// gateway moves on without waiting for a timeout), half-open once `open_for`
/// has passed (one request goes through as a probe: success closes the
/// circuit, failure opens it again).
struct Circuit {
    threshold: usize,
    open_for: Duration,
    state: std::sync::Mutex<CircuitState>,
}

#[derive(Default)]
struct CircuitState {
    /// Consecutive failures (reset by a success).
    failures: usize,
    /// Every failure counted, for metrics.
    failures_total: u64,
    open_until: Option<Instant>,
    probing: bool,
}

impl Circuit {
    fn new(threshold: usize, open_for: Duration) -> Circuit {
        Circuit {
            threshold: threshold.max(1),
            open_for,
            state: Default::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CircuitState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn failures_total(&self) -> u64 {
        self.lock().failures_total
    }

    fn state(&self) -> &'static str {
        let s = self.lock();
        match s.open_until {
            None => "closed",
            Some(t) if Instant::now() < t || s.probing => "open",
            Some(_) => "half-open",
        }
    }

    /// Why a request would be refused now (`None`: it would go through).
    fn refusal(&self, name: &str) -> Option<String> {
        let s = self.lock();
        let until = s.open_until?;
        let now = Instant::now();
        if now < until {
            Some(format!(
                "upstream `{name}`: circuit open after {} consecutive failures; next probe in {:.1} s",
                self.threshold,
                (until - now).as_secs_f64()
            ))
        } else if s.probing {
            Some(format!(
                "upstream `{name}`: circuit open, a probe request is in flight"
            ))
        } else {
            None
        }
    }

    /// Lets a request through, or refuses it while the circuit is open; the
    /// first request after `open_for` becomes the probe.
    fn admit(&self, name: &str) -> Result<(), BackendError> {
        if let Some(why) = self.refusal(name) {
            return Err(BackendError::Unavailable(why));
        }
        let mut s = self.lock();
        if s.open_until.is_some() {
            s.probing = true;
        }
        Ok(())
    }

    /// Counts an active health check: a failure like a failed request; a
    /// pass closes the circuit (the upstream is back before `open_for` ends).
    fn checked(&self, passed: bool) {
        let mut s = self.lock();
        if passed {
            if s.open_until.is_some() && !s.probing {
                *s = CircuitState {
                    failures_total: s.failures_total,
                    ..CircuitState::default()
                };
            }
        } else {
            s.failures += 1;
            s.failures_total += 1;
            if s.failures >= self.threshold {
                s.open_until = Some(Instant::now() + self.open_for);
            }
        }
    }

    /// Counts the outcome of an admitted request. The upstream's fault:
    /// unreachable, 5xx, timeouts (`Unavailable`, `Internal`). Not its fault:
    /// a refused request, an overload (its 429, or this side's slots).
    fn record(&self, result: &Result<EventStream, BackendError>) {
        let mut s = self.lock();
        match result {
            Ok(_) => {
                *s = CircuitState {
                    failures_total: s.failures_total,
                    ..CircuitState::default()
                }
            }
            Err(BackendError::Unavailable(_) | BackendError::Internal(_)) => {
                s.failures += 1;
                s.failures_total += 1;
                if s.probing || s.failures >= self.threshold {
                    s.open_until = Some(Instant::now() + self.open_for);
                }
                s.probing = false;
            }
            Err(_) => s.probing = false,
        }
    }
}

/// The error an upstream's non-2xx answer becomes: its own message and field
/// for a request it refuses, an overload for 429, unavailability otherwise.
fn refusal(name: &str, status: u16, text: &str) -> BackendError {
    let parsed = serde_json::from_str::<ErrorBody>(text).ok();
    let message = parsed
        .as_ref()
        .map(|b| b.error.message.clone())
        .unwrap_or_else(|| text.chars().take(200).collect());
    match status {
        400 | 404 | 413 | 422 => BackendError::Invalid(ProtocolError {
            param: parsed.and_then(|b| b.error.param),
            message: format!("upstream `{name}`: {message}"),
        }),
        429 => BackendError::Overloaded {
            message: format!("upstream `{name}` is overloaded: {message}"),
            retry_after_secs: 1,
        },
        401 | 403 => BackendError::Unavailable(format!(
            "upstream `{name}` refused the gateway's credentials ({status}): {message}"
        )),
        _ => BackendError::Unavailable(format!("upstream `{name}` answered {status}: {message}")),
    }
}

/// A transport error in a sentence (reqwest's Display hides the cause).
fn describe(e: &reqwest::Error) -> String {
    let mut s = if e.is_connect() {
        "cannot connect".to_owned()
    } else if e.is_timeout() {
        "timed out".to_owned()
    } else {
        e.to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

#[derive(Clone, Copy)]
enum Kind {
    Chat,
    Completion,
}

/// Reads one upstream answer into events (module docs).
struct Reader {
    name: String,
    kind: Kind,
    choices: usize,
    arrival: Instant,
    first_token: Option<Instant>,
    /// Finished choices, held until the usage chunk: `Done` carries usage.
    finished: BTreeMap<usize, FinishReason>,
    usage: Option<Usage>,
    /// The upstream's own timings (an inferd upstream sends them).
    timings: Option<Timings>,
    tx: mpsc::Sender<Event>,
}

impl Reader {
    async fn run(
        mut self,
        mut bytes: impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin,
        deadline: tokio::time::Instant,
        _permit: tokio::sync::OwnedSemaphorePermit,
    ) {
        let mut lines = SseLines::default();
        let mut pending = VecDeque::new();
        let outcome = loop {
            let chunk = match tokio::time::timeout_at(deadline, bytes.next()).await {
                Err(_) => break Err("did not finish within its total timeout".to_owned()),
                Ok(None) => break Err("closed the stream before the answer finished".to_owned()),
                Ok(Some(Err(e))) => break Err(format!("stream broke: {}", describe(&e))),
                Ok(Some(Ok(chunk))) => chunk,
            };
            let mut done = false;
            for data in lines.push(&chunk) {
                if data == "[DONE]" {
                    done = true;
                    break;
                }
                if let Err(e) = self.chunk(&data, &mut pending) {
                    pending.push_back(Event::Error(e));
                    done = true;
                    break;
                }
            }
            while let Some(ev) = pending.pop_front() {
                let failed = matches!(ev, Event::Error(_));
                if self.tx.send(ev).await.is_err() || failed {
                    return; // The client went away (or the answer failed): stop reading.
                }
            }
            if done {
                break Ok(());
            }
        };
        let unfinished = (0..self.choices).any(|i| !self.finished.contains_key(&i));
        let error = match outcome {
            Err(why) => Some(why),
            Ok(()) if unfinished => Some("ended the answer before every choice finished".into()),
            Ok(()) => None,
        };
        if let Some(why) = error {
            let _ = self
                .tx
                .send(Event::Error(BackendError::Unavailable(format!(
                    "upstream `{}` {why}",
                    self.name
                ))))
                .await;
            return;
        }
        for ev in self.dones() {
            if self.tx.send(ev).await.is_err() {
                return;
            }
        }
    }

    /// One SSE event's JSON as `T`, or the error it carries instead. Parsed
    /// straight into `T`; only an event that mentions `"error"` (an error
    /// event, or a chunk whose text is that word) is first read as a tree to
    /// look for the key.
    fn read<T: serde::de::DeserializeOwned>(&self, data: &str) -> Result<T, BackendError> {
        let failed =
            |what: String| BackendError::Unavailable(format!("upstream `{}` {what}", self.name));
        if data.contains("\"error\"") {
            let value: serde_json::Value = serde_json::from_str(data)
                .map_err(|e| failed(format!("sent a chunk that is not JSON: {e}")))?;
            if value.get("error").is_some() {
                let message = serde_json::from_value::<ErrorBody>(value)
                    .map(|b| b.error.message)
                    .unwrap_or_else(|_| "an error event without a message".into());
                return Err(failed(format!("failed mid-answer: {message}")));
            }
        }
        serde_json::from_str(data).map_err(|e| {
            if serde_json::from_str::<serde::de::IgnoredAny>(data).is_err() {
                failed(format!("sent a chunk that is not JSON: {e}"))
            } else {
                failed(format!("sent a chunk this gateway cannot read: {e}"))
            }
        })
    }

    /// One SSE event's JSON: its text, tool calls and finish reasons.
    fn chunk(&mut self, data: &str, out: &mut VecDeque<Event>) -> Result<(), BackendError> {
        let now = Instant::now();
        match self.kind {
            Kind::Chat => {
                let chunk: ChatCompletionChunk = self.read(data)?;
                self.usage = chunk.usage.or(self.usage);
                self.timings = chunk.timings.or(self.timings);
                for ch in chunk.choices {
                    let text = ch.delta.content.unwrap_or_default();
                    let tokens = ch.logprobs.map(logged).unwrap_or_default();
                    if !text.is_empty() || !tokens.is_empty() {
                        self.first_token.get_or_insert(now);
                        out.push_back(Event::Delta {
                            index: ch.index,
                            text,
                            tokens,
                        });
                    }
                    for call in ch.delta.tool_calls.unwrap_or_default() {
                        self.first_token.get_or_insert(now);
                        out.push_back(Event::ToolCall {
                            index: ch.index,
                            call,
                        });
                    }
                    if let Some(f) = ch.finish_reason {
                        self.finished.insert(ch.index, f);
                    }
                }
            }
            Kind::Completion => {
                let chunk: CompletionResponse = self.read(data)?;
                self.usage = chunk.usage.or(self.usage);
                self.timings = chunk.timings.or(self.timings);
                for ch in chunk.choices {
                    if !ch.text.is_empty() {
                        self.first_token.get_or_insert(now);
                        out.push_back(Event::Delta {
                            index: ch.index,
                            text: ch.text,
                            tokens: Vec::new(),
                        });
                    }
                    if let Some(f) = ch.finish_reason {
                        self.finished.insert(ch.index, f);
                    }
                }
            }
        }
        Ok(())
    }

    /// `Done` for every choice, in order. The upstream reports usage for the
    /// whole request: it goes to choice 0 (the server adds choices' output
    /// tokens and takes prompt tokens from the first choice of each prompt, so
    /// the totals it reports are the upstream's).
    fn dones(&self) -> Vec<Event> {
        let now = Instant::now();
        let usage = self.usage.unwrap_or_default();
        let first = self.first_token.unwrap_or(now);
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let decode = now.saturating_duration_since(first);
        let upstream = self.timings.unwrap_or_default();
        let timings = Timings {
            ttft_ms: ms(first.saturating_duration_since(self.arrival)),
            decode_ms: ms(decode),
            e2e_ms: ms(now.saturating_duration_since(self.arrival)),
            decode_tokens_per_second: if decode.is_zero() {
                0.0
            } else {
                usage.completion_tokens as f64 / decode.as_secs_f64()
            },
            prompt_tokens: usage.prompt_tokens,
            cached_prompt_tokens: usage.cached_tokens(),
            ..upstream
        };
        self.finished
            .iter()
            .map(|(&index, &finish)| Event::Done {
                index,
                finish,
                usage: if index == 0 { usage } else { Usage::default() },
                timings,
            })
            .collect()
    }
}

fn logged(l: ChoiceLogprobs) -> Vec<LoggedToken> {
    l.content
        .into_iter()
        .map(|t| LoggedToken {
            bytes: t.bytes.unwrap_or_else(|| t.token.as_bytes().to_vec()),
            token: t.token,
            logprob: Some(t.logprob),
            top: t.top_logprobs,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed() -> Result<EventStream, BackendError> {
        Err(BackendError::Unavailable("down".into()))
    }

    #[test]
    fn chunks_parse_straight_and_error_events_are_errors() {
        let (tx, _rx) = mpsc::channel(1);
        let r = Reader {
            name: "u".into(),
            kind: Kind::Chat,
            choices: 1,
            arrival: Instant::now(),
            first_token: None,
            finished: BTreeMap::new(),
            usage: None,
            timings: None,
            tx,
        };
        let chunk = |content: &str| {
            format!(
                r#"{{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{{"index":0,"delta":{{"content":"{content}"}},"logprobs":null,"finish_reason":null}}]}}"#
            )
        };
        let ok: ChatCompletionChunk = r.read(&chunk("hi")).unwrap();
        assert_eq!(ok.choices[0].delta.content.as_deref(), Some("hi"));
        let word: ChatCompletionChunk = r.read(&chunk("error")).unwrap();
        assert_eq!(word.choices[0].delta.content.as_deref(), Some("error"));
        let err = |data: &str| r.read::<ChatCompletionChunk>(data).unwrap_err().to_string();
        assert!(
            err(r#"{"error": {"message": "boom", "type": "server_error"}}"#)
                .contains("failed mid-answer: boom")
        );
        assert!(err("{not json").contains("not JSON"));
        assert!(err(r#"{"id": 3}"#).contains("cannot read"));
    }

    #[test]
    fn the_circuit_opens_probes_once_and_closes_on_success() {
        let c = Circuit::new(2, Duration::from_millis(40));
        assert!(c.admit("u").is_ok());
        c.record(&failed());
        assert_eq!(c.state(), "closed", "one failure is not enough");
        // A refused request or an overload is not the upstream failing.
        c.record(&Err(BackendError::Invalid(ProtocolError::body("bad"))));
        c.record(&failed());
        assert_eq!(c.state(), "open");
        let err = c.admit("u").expect_err("open").to_string();
        assert!(err.contains("circuit open after 2"), "{err}");
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(c.state(), "half-open");
        assert!(c.admit("u").is_ok(), "the probe");
        assert!(c.admit("u").is_err(), "one probe at a time");
        c.record(&failed());
        assert_eq!(c.state(), "open", "a failed probe opens it again");
        std::thread::sleep(Duration::from_millis(50));
        assert!(c.admit("u").is_ok());
        c.record(&Ok(futures_util::stream::empty().boxed()));
        assert_eq!(c.state(), "closed");
        assert!(c.admit("u").is_ok() && c.admit("u").is_ok());
    }
}
