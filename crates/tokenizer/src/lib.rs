//! Tokenization for inferd: tokenizers built from GGUF metadata, streaming
//! detokenization and Hugging Face chat templates.
//!
//! The crate takes plain data ([`TokenizerSpec`], a template string) rather than a GGUF
//! handle, so it stays independent of the file reader and tests build vocabularies by
//! hand. The pieces:
//! - [`Tokenizer`]: encode/decode for one model (byte-level BPE today; the SentencePiece
//!   `"llama"` model is reported as unsupported until it lands);
//! - [`Detokenizer`]: per-sequence streaming decode that never splits a UTF-8 character;
//! - [`ChatTemplate`]: Jinja chat templates rendered with HF's settings and helpers.

mod byte_level;
mod chat;
mod detokenizer;
mod error;
mod pyjson;
mod spec;
#[cfg(test)]
mod test_support;
mod tokenizer;

pub use chat::{ChatMessage, ChatTemplate};
pub use detokenizer::Detokenizer;
pub use error::{Result, TokenizerError};
pub use spec::{TokenType, TokenizerSpec};
pub use tokenizer::Tokenizer;
