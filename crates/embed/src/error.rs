//! The crate's one error type. Every variant names the file and the key or tensor
//! at fault, or the input (by its index in the batch) that was refused.

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("{file}: {source}")]
    Io {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: not valid JSON: {source}")]
    Json {
        file: String,
        source: serde_json::Error,
    },
    #[error("{file}: `{key}`: {what}")]
    Config {
        file: String,
        key: String,
        what: String,
    },
    #[error("{file}: not a valid safetensors file: {source}")]
    Safetensors {
        file: String,
        source: safetensors::SafeTensorError,
    },
    #[error("{file}: tensor `{tensor}`: {what}")]
    Tensor {
        file: String,
        tensor: String,
        what: String,
    },
    #[error("{file}: cannot load the tokenizer: {what}")]
    TokenizerFile { file: String, what: String },
    #[error("cannot tokenize the text: {0}")]
    Tokenize(String),
    #[error("input {index}: {what}")]
    Input { index: usize, what: String },
}

pub type Result<T> = std::result::Result<T, EmbedError>;
