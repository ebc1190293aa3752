//! Sampling and generation over the model and the paged KV cache.
//!
//! [`Sampler`] turns one row of logits into a token (greedy, temperature, top-k,
//! top-p, min-p, penalties, seeded) plus log-probabilities. [`Generator`] runs one
//! sequence through prefill and decode with the block allocator; the serving
//! scheduler that batches many sequences per step builds on the same pieces.

mod error;
mod generate;
mod loader;
mod sampling;

pub use error::{EngineError, Result};
pub use generate::{FinishReason, GenerateRequest, GenerationStats, Generator, TokenOutput};
pub use loader::LoadedModel;
pub use sampling::{Logprobs, Sampler, SamplingParams};
