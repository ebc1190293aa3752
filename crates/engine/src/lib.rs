//! The serving engine: model loading, sampling, and the step loop that runs many
//! requests at once over the model, the scheduler and the paged KV cache.
//!
//! [`Sampler`] turns one row of logits into a token (greedy, temperature, top-k,
//! top-p, min-p, penalties, seeded) plus log-probabilities. [`start_engine`] starts
//! the engine thread and returns an [`EngineHandle`]: submit a request, receive a
//! stream of [`TokenEvent`]s ([`EventStream`]), which the caller may stop early.

mod constraint;
mod draft;
mod engine;
mod error;
mod loader;
mod sampling;
pub mod spec;
mod stream;

pub use constraint::{BoxedConstraint, Constraint, TokenMask};
pub use draft::DraftSource;
pub use engine::{start_engine, EngineConfig, EngineGauges, EngineHandle};
pub use error::{EngineError, Result};
pub use loader::LoadedModel;
pub use sampling::{Logprobs, Sampler, SamplingParams};
pub use spec::{PromptLookup, SpecConfig};
pub use stream::{EngineRequest, EventStream, FinishReason, Timings, TokenEvent, Usage};
