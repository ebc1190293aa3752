#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] inferd_gguf::GgufError),
    #[error("{file}: unsupported architecture `{arch}` (supported: llama, qwen2)")]
    UnsupportedArchitecture { file: String, arch: String },
    #[error("{file}: tensor `{tensor}`: {what}")]
    Tensor {
        file: String,
        tensor: String,
        what: String,
    },
    #[error("{file}: metadata `{key}`: {what}")]
    Config {
        file: String,
        key: String,
        what: String,
    },
    #[error("invalid batch: {0}")]
    Batch(String),
}

pub type Result<T> = std::result::Result<T, ModelError>;
