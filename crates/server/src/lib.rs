//! OpenAI-compatible HTTP server over the engine (axum).
//!
//! Every handler turns the raw body into validated parameters (`params`), renders
//! and tokenizes the prompt, submits one engine request per choice, and answers as
//! one JSON body or as Server-Sent Events in OpenAI's exact chunk order. Each
//! response carries its own `timings` (queue, prefill, TTFT, decode, tokens/s,
//! cached prompt tokens); `/metrics` exports the same in Prometheus form.

mod error;
mod generate;
mod metrics;
mod params;
mod tools;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use inferd_engine::EngineHandle;
use inferd_tokenizer::{ChatTemplate, Tokenizer};
use serde_json::json;
use tower::ServiceExt;

pub use error::ApiError;
pub use metrics::Metrics;

/// Settings of the HTTP layer (the engine has its own).
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// The id clients use in `model` (the alias or file stem).
    pub model_id: String,
    /// When set, every /v1 request needs `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// A request still unfinished this long after arrival is cancelled: 408, or
    /// an error event when streaming. `None`: no limit.
    pub request_timeout: Option<Duration>,
}

/// What the server needs besides the engine handle.
pub struct ServerState {
    pub engine: EngineHandle,
    pub tokenizer: Arc<Tokenizer>,
    pub chat_template: Option<Arc<ChatTemplate>>,
    pub model_id: String,
    pub api_key: Option<String>,
    pub request_timeout: Option<Duration>,
    pub metrics: Metrics,
    pub created_unix: u64,
}

impl ServerState {
    pub fn new(
        engine: EngineHandle,
        tokenizer: Arc<Tokenizer>,
        chat_template: Option<Arc<ChatTemplate>>,
        options: ServerOptions,
    ) -> ServerState {
        ServerState {
            engine,
            tokenizer,
            chat_template,
            model_id: options.model_id,
            api_key: options.api_key,
            request_timeout: options.request_timeout,
            metrics: Metrics::new(),
            created_unix: unix_now(),
        }
    }

    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(key) = &self.api_key else {
            return Ok(());
        };
        let sent = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if sent == Some(key.as_str()) {
            Ok(())
        } else {
            Err(ApiError::unauthorized())
        }
    }

    /// `model` may be omitted, or must name the served model.
    fn check_model(&self, model: Option<&str>) -> Result<(), ApiError> {
        match model {
            None => Ok(()),
            Some(m) if m == self.model_id => Ok(()),
            Some(m) => Err(ApiError::not_found(
                "model",
                format!(
                    "The model `{m}` does not exist; this server serves `{}`",
                    self.model_id
                ),
            )),
        }
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Request bodies above this are refused with 413.
pub const MAX_BODY_BYTES: usize = 8 << 20;

pub fn router(state: Arc<ServerState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{id}", get(get_model))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn chat_completions(
    State(s): State<Arc<ServerState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    completion_route(s, headers, body, true).await
}

async fn completions(
    State(s): State<Arc<ServerState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    completion_route(s, headers, body, false).await
}

async fn completion_route(
    s: Arc<ServerState>,
    headers: HeaderMap,
    body: Bytes,
    chat: bool,
) -> Response {
    let result = async {
        s.authorize(&headers)?;
        if chat {
            generate::chat(&s, &body).await
        } else {
            generate::completion(&s, &body).await
        }
    }
    .await;
    respond(&s, result)
}

fn respond(s: &ServerState, result: Result<Response, ApiError>) -> Response {
    match result {
        Ok(r) => r,
        Err(e) => {
            s.metrics.errors.with_label_values(&[e.label()]).inc();
            tracing::info!(status = e.status.as_u16(), error = %e.message, "request refused");
            e.into_response()
        }
    }
}

fn model_object(s: &ServerState) -> serde_json::Value {
    json!({"id": s.model_id, "object": "model", "created": s.created_unix, "owned_by": "inferd"})
}

async fn list_models(State(s): State<Arc<ServerState>>, headers: HeaderMap) -> Response {
    match s.authorize(&headers) {
        Ok(()) => Json(json!({"object": "list", "data": [model_object(&s)]})).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn get_model(
    State(s): State<Arc<ServerState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let result = s.authorize(&headers).and_then(|_| s.check_model(Some(&id)));
    match result {
        Ok(()) => Json(model_object(&s)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn health() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// The router to serve while the model loads: `/health` answers 503
/// `{"status":"loading"}` and every other path 503 in OpenAI's error shape, until
/// `ready` holds the real router; from then on every request goes to it. This lets
/// the server bind (and orchestrators probe it) before loading.
pub fn router_when_ready(ready: Arc<OnceLock<Router>>) -> Router {
    Router::new().fallback(move |req: Request| {
        let ready = Arc::clone(&ready);
        async move {
            match ready.get() {
                Some(app) => match app.clone().oneshot(req).await {
                    Ok(resp) => resp,
                    Err(never) => match never {},
                },
                None if req.uri().path() == "/health" => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Json(json!({"status": "loading"})),
                )
                    .into_response(),
                None => ApiError::loading().into_response(),
            }
        }
    })
}

async fn metrics(State(s): State<Arc<ServerState>>) -> Response {
    let text = s.metrics.render(&s.engine.gauges);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
