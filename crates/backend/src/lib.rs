//! Everything that answers requests is a [`Backend`]: a name, a context window,
//! capabilities, health, and `generate`, which takes a validated request and
//! returns a stream of [`Event`]s. The HTTP server holds a registry of named
//! backends and only writes JSON or SSE from their events; the gateway (a backend
//! that chooses among backends) and upstream clients implement the same trait.
//!
//! - [`LocalBackend`]: a model in this process — chat template, tokenizer, context
//!   window, stop strings, tool-call parsing, submission to its engine.
//! - [`TestBackend`]: a scripted backend, so edge tests (error shapes, SSE order)
//!   run without loading a model.
//!
//! Contract: `generate` resolves once every choice has produced its first event,
//! so anything that goes wrong before the first token (overload, a prompt too
//! long) is an `Err`, answered as a plain HTTP error rather than a broken stream.
//! Dropping the stream cancels the request.

mod embedding;
mod local;
mod stop;
mod test_backend;
pub mod tools;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use inferd_protocol::{
    FinishReason, OutputConstraint, ProtocolError, Timings, ToolCallDelta, TopLogprob, Usage,
    ValidChatRequest, ValidCompletionRequest, ValidEmbeddingRequest,
};

pub use embedding::{EmbeddingBackend, EmbeddingModel};
/// The longest speculative draft (positions of `EngineStats::spec_accepted_at_total`).
pub use inferd_engine::spec::MAX_DRAFT;
pub use local::LocalBackend;
pub use stop::StopMatcher;
pub use test_backend::{Script, TestBackend};

/// A validated request for any backend.
#[derive(Debug, Clone)]
pub enum Request {
    Chat(ValidChatRequest),
    Completion(ValidCompletionRequest),
}

impl Request {
    pub fn common(&self) -> &inferd_protocol::Common {
        match self {
            Request::Chat(r) => &r.common,
            Request::Completion(r) => &r.common,
        }
    }

    /// Choices in the response: `n` per prompt.
    pub fn choices(&self) -> usize {
        match self {
            Request::Chat(r) => r.common.n,
            Request::Completion(r) => r.choices(),
        }
    }

    /// Alternatives per token when log-probabilities were asked for.
    pub fn logprobs(&self) -> Option<usize> {
        match self {
            Request::Chat(r) => r.logprobs,
            Request::Completion(r) => r.logprobs,
        }
    }

    /// The output constraint asked for (`response_format`, a guided extension).
    pub fn constraint(&self) -> Option<&OutputConstraint> {
        match self {
            Request::Chat(r) => r.constraint.as_ref(),
            Request::Completion(r) => r.constraint.as_ref(),
        }
    }
}

/// What a backend can do; the server refuses what it cannot before calling it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Has a chat template (`/v1/chat/completions`).
    pub chat: bool,
    pub completions: bool,
    /// Parses tool calls out of its output.
    pub tools: bool,
    pub logprobs: bool,
    /// Completions `echo` with prompt log-probabilities.
    pub echo: bool,
    /// `/v1/embeddings`.
    pub embeddings: bool,
    /// Constrained decoding: `response_format`, the guided extensions, forced
    /// `tool_choice`.
    pub constraints: bool,
}

impl Capabilities {
    /// Everything a text-generation backend can offer (no embeddings): a local
    /// model with a chat template, or an upstream that refuses what it lacks.
    pub const GENERATION: Capabilities = Capabilities {
        chat: true,
        completions: true,
        tools: true,
        logprobs: true,
        echo: true,
        embeddings: false,
        constraints: true,
    };
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Ready,
    /// Not serving, and why (`/health` answers 503 with it).
    Unavailable(String),
}

/// One token with its log-probability (`None` for an echoed first prompt token,
/// which has nothing before it) and the most likely alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedToken {
    pub token: String,
    pub bytes: Vec<u8>,
    pub logprob: Option<f32>,
    pub top: Vec<TopLogprob>,
}

/// One event of a request; `index` is the choice it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Completions `echo`: the prompt, before any output (tokens only with logprobs).
    Echo {
        index: usize,
        text: String,
        tokens: Vec<LoggedToken>,
    },
    /// New output text; `tokens` holds the tokens it came from when log-probabilities
    /// were asked for.
    Delta {
        index: usize,
        text: String,
        tokens: Vec<LoggedToken>,
    },
    /// A piece of a tool call in the output (then `Done` says `ToolCalls`): the
    /// first piece of each call carries its id and name, later ones argument
    /// fragments to append.
    ToolCall { index: usize, call: ToolCallDelta },
    /// The choice is complete. `usage` counts this choice's tokens.
    Done {
        index: usize,
        finish: FinishReason,
        usage: Usage,
        timings: Timings,
    },
    /// The request failed after it started; no more events follow.
    Error(BackendError),
    /// A gateway's choice of what answers: first, before any choice's events.
    Route(Box<inferd_protocol::Route>),
}

pub type EventStream = BoxStream<'static, Event>;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BackendError {
    /// The request cannot be served as asked (400), naming the field.
    #[error(transparent)]
    Invalid(#[from] ProtocolError),
    /// The prompt plus `max_tokens`, counted with this backend's tokenizer, do
    /// not fit its context window (400, naming the field). A gateway tries a
    /// larger tier instead.
    #[error(transparent)]
    TooLong(ProtocolError),
    /// Full: retry later (429 with `Retry-After`).
    #[error("{message}")]
    Overloaded {
        message: String,
        retry_after_secs: u64,
    },
    /// Not serving at all (503).
    #[error("{0}")]
    Unavailable(String),
    /// Failed while serving (500); the message says what failed, without internals
    /// a client cannot act on.
    #[error("{0}")]
    Internal(String),
}

/// The vectors of an embeddings request, in input order.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    pub vectors: Vec<Vec<f32>>,
    /// Tokens of every input, as the model counted them.
    pub prompt_tokens: usize,
}

/// Engine gauges and counters a local backend exports to `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EngineStats {
    pub running: usize,
    pub waiting: usize,
    pub kv_used_blocks: usize,
    pub kv_cached_blocks: usize,
    pub kv_free_blocks: usize,
    pub prefix_queries_tokens_total: u64,
    pub prefix_hits_tokens_total: u64,
    pub kv_evictions_total: u64,
    pub preemptions_total: u64,
    pub step_failures_total: u64,
    pub spec_draft_tokens_total: u64,
    pub spec_accepted_tokens_total: u64,
    pub spec_verify_steps_total: u64,
    /// Drafts accepted at each draft position (0 = the first drafted token).
    pub spec_accepted_at_total: [u64; MAX_DRAFT],
    pub spec_draft_ns_total: u64,
    pub spec_verify_ns_total: u64,
}

/// What a labelled example labels (`POST /v1/intent/feedback`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Feedback {
    Tool(String),
    Intent(String),
}

/// Anything that answers requests: a local model, an upstream server, a gateway.
pub trait Backend: Send + Sync {
    /// The id clients put in `model`.
    fn name(&self) -> &str;
    /// Prompt plus output tokens one request may use.
    fn context_window(&self) -> usize;
    fn capabilities(&self) -> Capabilities;
    fn health(&self) -> Health;
    /// Starts the request; resolves once every choice has its first event.
    fn generate(&self, request: Request) -> BoxFuture<'static, Result<EventStream, BackendError>>;
    /// Embeds every input; only backends whose capabilities say `embeddings`.
    fn embed(
        &self,
        request: ValidEmbeddingRequest,
    ) -> BoxFuture<'static, Result<Embeddings, BackendError>> {
        let _ = request;
        let name = self.name().to_owned();
        Box::pin(async move {
            Err(BackendError::Invalid(ProtocolError::field(
                "model",
                format!("`{name}` does not serve embeddings"),
            )))
        })
    }
    /// Engine gauges, for backends that own an engine.
    fn engine_stats(&self) -> Option<EngineStats> {
        None
    }
    /// Connection-pool and circuit gauges, for backends that relay to an upstream.
    fn upstream_stats(&self) -> Option<UpstreamStats> {
        None
    }
    /// Labels `query` with the tool or intent that should answer it, for a
    /// gateway that narrows tools or classifies intents (`None`: this backend
    /// takes no such label): resolves to the number of examples that tool or
    /// intent has now, and whether the example was persisted.
    fn feedback(
        &self,
        query: String,
        label: Feedback,
    ) -> Option<BoxFuture<'static, Result<(usize, bool), BackendError>>> {
        let _ = (query, label);
        None
    }
    /// The exact number of prompt tokens this backend would feed its model for
    /// `request` (chat template and tools included), counted with its own
    /// tokenizer (`None`: it cannot count, e.g. an upstream). CPU work of
    /// up to a few milliseconds: call it off the async workers.
    fn count_prompt(&self, request: &ValidChatRequest) -> Option<Result<usize, BackendError>> {
        let _ = request;
        None
    }
    /// A response cache's counters, for a gateway that keeps one.
    fn cache_stats(&self) -> Option<CacheStats> {
        None
    }
    /// When a request with this many prompt tokens would get its first token
    /// if sent now, predicted from the backend's queue and measured step times
    /// (`None`: no prediction, e.g. an upstream, or an engine not yet measured).
    fn ttft_estimate(&self, prompt_tokens: usize) -> Option<std::time::Duration> {
        let _ = prompt_tokens;
        None
    }
}

/// What an upstream's pool and circuit look like at scrape time: the
/// bottleneck that otherwise passes for model slowness.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct UpstreamStats {
    /// Requests holding one of the `max_concurrent` slots.
    pub in_flight: usize,
    /// Requests waiting for a slot.
    pub waiting: usize,
    pub max_concurrent: usize,
    pub circuit_open: bool,
    /// Requests that got no slot or no first token in time.
    pub timeouts_total: u64,
    /// Failures counted by the circuit (unreachable, 5xx, timeouts).
    pub failures_total: u64,
    /// Requests sent again after a failure before their first token.
    pub retries_total: u64,
    /// Time requests waited for a slot: counts per bucket of
    /// [`SLOT_WAIT_BUCKETS`] (each wait counted in the first bucket it fits,
    /// the last slot for longer ones), and their sum in seconds.
    pub slot_wait_counts: [u64; SLOT_WAIT_BUCKETS.len() + 1],
    pub slot_wait_sum_secs: f64,
}

/// A response cache at scrape time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub entries: usize,
    pub bytes: usize,
    pub hits_total: u64,
    /// Of which by meaning (the semantic cache).
    pub semantic_hits_total: u64,
    pub misses_total: u64,
    pub evictions_total: u64,
}

/// Upper bounds, in seconds, of the slot-wait histogram's buckets.
pub const SLOT_WAIT_BUCKETS: [f64; 9] = [0.0005, 0.002, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0];

/// A random 128-bit id in hex, for response and tool-call ids.
pub fn random_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let half = || {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.finish()
    };
    format!("{:016x}{:016x}", half(), half())
}
