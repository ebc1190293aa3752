//! Validation errors, and OpenAI's error object as it travels on the wire.

use serde::{Deserialize, Serialize};

/// A request that fails validation: the field it names (`param`, as OpenAI reports
/// it) and why. The HTTP edge answers it with 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ProtocolError {
    /// The offending field (`top_p`, `messages[0].role`); `None` for the body as a whole.
    pub param: Option<String>,
    pub message: String,
}

impl ProtocolError {
    pub fn field(param: impl Into<String>, message: impl Into<String>) -> ProtocolError {
        ProtocolError {
            param: Some(param.into()),
            message: message.into(),
        }
    }

    pub fn body(message: impl Into<String>) -> ProtocolError {
        ProtocolError {
            param: None,
            message: message.into(),
        }
    }
}

/// `{"error": {...}}`: the body of every error response and a stream's error event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorObject,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorObject {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<String>,
}
