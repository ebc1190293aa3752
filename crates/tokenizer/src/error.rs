//! The crate's single error type.
//!
//! Messages name the GGUF metadata field (`tokenizer.ggml.pre`, ...) or the template
//! construct at fault, so an operator can tell a malformed model file from an
//! unsupported one without reading the code.

/// Everything that can go wrong building a tokenizer, encoding, decoding or rendering a
/// chat template.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The metadata names a tokenizer flavour this crate does not implement yet.
    #[error("unsupported `{field}` value {value:?} (supported: {supported})")]
    Unsupported {
        field: &'static str,
        value: String,
        supported: &'static str,
    },

    /// The metadata is self-inconsistent (lengths disagree, an id is out of range...).
    #[error("invalid `{field}`: {reason}")]
    InvalidSpec { field: &'static str, reason: String },

    /// A token id outside the vocabulary was passed to `decode`.
    #[error("token id {id} is out of range for a vocabulary of {vocab_size} tokens")]
    UnknownTokenId { id: u32, vocab_size: usize },

    /// The Hugging Face `tokenizers` backend failed.
    #[error("tokenizer backend failed to {operation}: {message}")]
    Backend {
        operation: &'static str,
        message: String,
    },

    /// The chat template does not parse.
    #[error("chat template syntax error{}: {message}", line_suffix(*.line))]
    TemplateSyntax {
        line: Option<usize>,
        message: String,
    },

    /// The chat template called `raise_exception(message)`, usually to reject a
    /// conversation shape it does not support (e.g. roles not alternating).
    #[error("chat template raised an exception: {message}")]
    TemplateRaised { message: String },

    /// Rendering failed for another reason (undefined value used, bad filter argument...).
    #[error("chat template failed to render{}: {message}", line_suffix(*.line))]
    TemplateRender {
        line: Option<usize>,
        message: String,
    },
}

fn line_suffix(line: Option<usize>) -> String {
    line.map(|l| format!(" at line {l}")).unwrap_or_default()
}

/// `Result` with [`TokenizerError`].
pub type Result<T> = std::result::Result<T, TokenizerError>;
