//! The gateway half of inferd: [`Upstream`], any OpenAI-compatible server
//! (another inferd, vLLM, SGLang, llama-server) as a [`Backend`], so that
//! `inferd serve` answers for it by name beside its local models, relaying
//! streams chunk by chunk; and [`Gateway`], a backend that routes each request
//! over tiers of backends by policy, with fallbacks (`router`).
//!
//! An upstream always streams from its server (`stream: true` with
//! `include_usage`), whatever the client asked: the events it relays are the
//! same for both, the server writes one JSON body or SSE from them, and the
//! time to the first token is measured and bounded the same way.

pub mod balance;
pub mod cache;
pub mod context;
pub mod escalate;
pub mod intent;
mod router;
mod sse;
pub mod tools;
mod upstream;
mod wire;

pub use inferd_backend::Backend;
pub use router::{Detector, Gateway, Routing, Tier};
pub use upstream::{Upstream, UpstreamConfig, UpstreamError};
pub use wire::{chat_body, completion_body};
