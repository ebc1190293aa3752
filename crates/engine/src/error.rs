//! The engine crate's one error type: what a request or the engine can fail with,
//! each message naming the field or limit involved.

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Model(#[from] inferd_model::ModelError),
    #[error(transparent)]
    Gguf(#[from] inferd_gguf::GgufError),
    #[error(transparent)]
    Tokenizer(#[from] inferd_tokenizer::TokenizerError),
    #[error(transparent)]
    KvCache(#[from] inferd_kvcache::KvCacheError),
    #[error("`{field}` {reason}, got {value}")]
    InvalidParam {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("prompt of {prompt_tokens} tokens plus max_tokens {max_tokens} exceeds the context length {context_length}")]
    ContextOverflow {
        prompt_tokens: usize,
        max_tokens: usize,
        context_length: usize,
    },
    #[error("prompt is empty")]
    EmptyPrompt,
    #[error("server overloaded: the waiting queue is full ({max_waiting} requests); retry later")]
    Overloaded { max_waiting: usize },
    #[error(transparent)]
    Scheduler(inferd_scheduler::SchedulerError),
    #[error("invalid engine configuration: {0}")]
    Config(String),
    #[error("engine step failed: {0}")]
    Step(String),
    /// A panic inside a step (forward, sampling, emitting); it failed only the
    /// requests of that step and the engine kept serving.
    #[error("the engine step panicked: {0}")]
    StepPanicked(String),
    /// The output constraint reached a state it cannot continue from (a grammar
    /// with no way forward), or refused the model's vocabulary.
    #[error("the output constraint failed: {0}")]
    Constraint(String),
    #[error("the engine has stopped")]
    Stopped,
}

pub type Result<T> = std::result::Result<T, EngineError>;
