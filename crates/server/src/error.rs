//! The one place HTTP errors are shaped: OpenAI's
//! `{"error":{"message","type","param","code"}}`. User input never produces a 500;
//! details for operators go to the log.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use inferd_backend::BackendError;
use inferd_protocol::{ErrorBody, ErrorObject, ProtocolError};

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    /// 400 naming the offending field.
    pub fn invalid(param: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param.to_owned()),
            code: None,
            retry_after_secs: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            param: None,
            ..ApiError::invalid("", message)
        }
    }

    /// 404 for an unknown model.
    pub fn not_found(param: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: Some("model_not_found"),
            ..ApiError::invalid(param, message)
        }
    }

    pub fn unauthorized() -> ApiError {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: "Incorrect or missing API key: send `Authorization: Bearer <key>`".into(),
            kind: "invalid_request_error",
            param: None,
            code: Some("invalid_api_key"),
            retry_after_secs: None,
        }
    }

    /// 503 while the model is still loading.
    pub fn loading() -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "the model is still loading; retry when /health returns 200".into(),
            kind: "service_unavailable",
            param: None,
            code: Some("model_loading"),
            retry_after_secs: Some(1),
        }
    }

    /// 408: the request ran past the server's `--request-timeout-secs`.
    pub fn timeout(limit: std::time::Duration) -> ApiError {
        ApiError {
            status: StatusCode::REQUEST_TIMEOUT,
            message: format!(
                "the request did not finish within the server's limit of {} s and was cancelled",
                limit.as_secs_f64()
            ),
            kind: "timeout_error",
            param: None,
            code: Some("request_timeout"),
            retry_after_secs: None,
        }
    }

    /// A short label for the error counter (bounded set).
    pub fn label(&self) -> &'static str {
        if matches!(self.code, Some("rate_limit_exceeded" | "budget_held")) {
            return "rate_limited";
        }
        match self.status.as_u16() {
            400 => "invalid_request",
            401 => "unauthorized",
            402 => "budget_exceeded",
            403 => "forbidden",
            404 => "not_found",
            408 => "timeout",
            413 => "too_large",
            429 => "overloaded",
            503 => "unavailable",
            _ => "internal",
        }
    }
}

impl From<ProtocolError> for ApiError {
    fn from(e: ProtocolError) -> ApiError {
        ApiError {
            param: e.param,
            ..ApiError::bad_request(e.message)
        }
    }
}

impl From<BackendError> for ApiError {
    fn from(e: BackendError) -> ApiError {
        match e {
            BackendError::Invalid(p) | BackendError::TooLong(p) => p.into(),
            BackendError::Overloaded {
                message,
                retry_after_secs,
            } => ApiError {
                status: StatusCode::TOO_MANY_REQUESTS,
                message,
                kind: "rate_limit_error",
                param: None,
                code: Some("overloaded"),
                retry_after_secs: Some(retry_after_secs),
            },
            BackendError::Unavailable(message) => ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message,
                kind: "service_unavailable",
                param: None,
                code: Some("unavailable"),
                retry_after_secs: Some(1),
            },
            BackendError::Internal(message) => ApiError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                message,
                kind: "server_error",
                param: None,
                code: Some("internal_error"),
                retry_after_secs: None,
            },
        }
    }
}

impl ApiError {
    /// OpenAI's error object, as a response body or a stream's last event.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorObject {
                message: self.message.clone(),
                kind: self.kind.into(),
                param: self.param.clone(),
                code: self.code.map(str::to_owned),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after_secs {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}
