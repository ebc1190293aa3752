//! GGUF reader (the llama.cpp ecosystem's model file format), versions 2 and 3.
//!
//! The file is memory-mapped once; metadata is parsed into typed [`Value`]s and tensor
//! infos are validated against the file size up front, so a tensor view handed out
//! later is always in bounds. Parsing works on any byte slice ([`Gguf::parse`]), which
//! is what the unit tests and the fuzz target drive; [`GgufFile::open`] adds the mmap.
//! No tensor math lives here: callers get raw bytes plus the [`GgmlType`] that says
//! how to read them.
//!
//! Every error names the file and what is wrong (key, tensor, type, offset): a
//! truncated or corrupt file is an error, never a panic.

mod error;
mod reader;
mod types;
pub mod writer;

pub use error::{GgufError, Result};
pub use reader::{Gguf, GgufFile, TensorInfo};
pub use types::{GgmlType, Value, ValueType};
