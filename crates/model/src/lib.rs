//! Model architectures. A model is loaded from a GGUF file (weights stay quantized,
//! used in place from the memory map) and runs a *ragged batch*: the new tokens of
//! several sequences at once, each with its start position and KV block table, so a
//! single pass over the weights serves every sequence in the step. Logits are
//! computed only for the positions a caller asks for.
//!
//! The model does not own the KV cache bookkeeping: it reads and writes the K/V rows
//! of whatever blocks it is handed ([`KvStore`] is just the storage).
//!
//! The engine drives every architecture through the [`Model`] trait;
//! [`load_model`] picks the implementation from the file's `general.architecture`.

mod batch;
mod config;
mod error;
mod kv;
mod llama;
mod model;

pub use batch::{Logits, LogitsRequest, SeqBatch};
pub use config::{Architecture, ModelConfig};
pub use error::{ModelError, Result};
pub use kv::KvStore;
pub use llama::{ForwardOptions, Llama};
pub use model::{load_model, Model};
