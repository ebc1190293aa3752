use std::path::PathBuf;

/// Everything that can go wrong reading a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{file}: cannot open: {source}")]
    Io {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: not a GGUF file (magic {found:?}, expected \"GGUF\")")]
    BadMagic { file: PathBuf, found: [u8; 4] },
    #[error("{file}: unsupported GGUF version {version} (supported: 2, 3)")]
    UnsupportedVersion { file: PathBuf, version: u32 },
    #[error("{file}: truncated at offset {offset} while reading {what} (file is {len} bytes)")]
    Truncated {
        file: PathBuf,
        offset: u64,
        what: String,
        len: u64,
    },
    #[error("{file}: corrupt at offset {offset}: {what}")]
    Corrupt {
        file: PathBuf,
        offset: u64,
        what: String,
    },
    #[error("{file}: tensor `{tensor}`: {what}")]
    Tensor {
        file: PathBuf,
        tensor: String,
        what: String,
    },
    #[error("{file}: metadata key `{key}`: {what}")]
    Metadata {
        file: PathBuf,
        key: String,
        what: String,
    },
}

pub type Result<T> = std::result::Result<T, GgufError>;
