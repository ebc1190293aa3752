//! OpenAI-compatible HTTP server over a registry of named [`Backend`]s (axum).
//!
//! A handler validates the raw body into a `Valid*` request (`inferd_protocol`,
//! with the arrival instant taken before the body was read), picks the backend its
//! `model` names (the first one when it names none), and writes JSON or SSE from
//! the backend's events (`respond`). It knows nothing of templates, tokens or
//! engines: every model-specific step lives behind the trait, so a local model, an
//! upstream server and the gateway are served alike. Each response carries its own
//! `timings`; `/metrics` exports the same in Prometheus form, per model.

mod embeddings;
mod error;
mod keys;
mod memory;
mod metrics;
mod respond;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use inferd_backend::{Backend, Health};
use inferd_protocol::{ModelList, ModelObject};
use serde_json::json;
use tower::ServiceExt;

pub use error::ApiError;
pub use keys::{Caller, Prices};
pub use metrics::Metrics;
pub use respond::Kind;

/// Settings of the HTTP layer (each backend has its own).
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// When set, every /v1 request needs `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// A request still unfinished this long after arrival is cancelled: 408, or
    /// an error event when streaming. `None`: no limit.
    pub request_timeout: Option<Duration>,
}

/// The backends and the settings every handler shares.
pub struct ServerState {
    /// In the order given; the first answers requests that name no model.
    backends: Vec<Arc<dyn Backend>>,
    pub api_key: Option<String>,
    pub request_timeout: Option<Duration>,
    pub metrics: Metrics,
    pub created_unix: u64,
    /// The agent-memory store behind `/v1/memory`, when the server keeps one.
    pub memory: Option<Arc<inferd_memory::Memory>>,
    /// Set when managed keys are on (`with_keys`): what usage costs.
    prices: Option<Prices>,
}

/// When the request reached the server (set before the body is read).
#[derive(Debug, Clone, Copy)]
pub struct Arrival(pub Instant);

impl ServerState {
    /// Serves `backends` (at least one, names unique).
    pub fn new(
        backends: Vec<Arc<dyn Backend>>,
        options: ServerOptions,
    ) -> Result<ServerState, String> {
        if backends.is_empty() {
            return Err("a server needs at least one model".into());
        }
        for (i, b) in backends.iter().enumerate() {
            if backends[..i].iter().any(|o| o.name() == b.name()) {
                return Err(format!(
                    "two models are named `{}`; names must be unique",
                    b.name()
                ));
            }
        }
        Ok(ServerState {
            backends,
            api_key: options.api_key,
            request_timeout: options.request_timeout,
            metrics: Metrics::new(),
            created_unix: unix_now(),
            memory: None,
            prices: None,
        })
    }

    /// Serves `/v1/memory` from `memory`.
    pub fn with_memory(mut self, memory: Arc<inferd_memory::Memory>) -> ServerState {
        self.memory = Some(memory);
        self
    }

    pub fn backends(&self) -> &[Arc<dyn Backend>] {
        &self.backends
    }

    /// 401 unless the request carries a key this server takes.
    async fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        self.caller(headers).await.map(|_| ())
    }

    /// The backend `model` names; the default one when it names none.
    fn backend(&self, model: Option<&str>) -> Result<&Arc<dyn Backend>, ApiError> {
        match model {
            None => Ok(&self.backends[0]),
            Some(m) => self.backends.iter().find(|b| b.name() == m).ok_or_else(|| {
                let served: Vec<String> = self
                    .backends
                    .iter()
                    .map(|b| format!("`{}`", b.name()))
                    .collect();
                ApiError::not_found(
                    "model",
                    format!(
                        "The model `{m}` does not exist; this server serves {}",
                        served.join(", ")
                    ),
                )
            }),
        }
    }

    fn model_object(&self, b: &dyn Backend) -> ModelObject {
        ModelObject {
            id: b.name().to_owned(),
            object: "model".into(),
            created: self.created_unix,
            owned_by: "inferd".into(),
            context_window: Some(b.context_window()),
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
        .route("/v1/embeddings", post(embeddings_route))
        .route("/v1/intent/feedback", post(intent_feedback))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{id}", get(get_model))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .merge(memory::routes())
        .merge(keys::routes())
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        // Outermost, so the instant is taken before the body is read.
        .layer(axum::middleware::from_fn(stamp_arrival))
        .with_state(state)
}

async fn stamp_arrival(mut req: Request, next: Next) -> Response {
    req.extensions_mut().insert(Arrival(Instant::now()));
    next.run(req).await
}

async fn chat_completions(
    State(s): State<Arc<ServerState>>,
    Extension(arrival): Extension<Arrival>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    respond::completion_route(s, headers, body, arrival.0, Kind::Chat).await
}

async fn completions(
    State(s): State<Arc<ServerState>>,
    Extension(arrival): Extension<Arrival>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    respond::completion_route(s, headers, body, arrival.0, Kind::Text).await
}

async fn embeddings_route(
    State(s): State<Arc<ServerState>>,
    Extension(arrival): Extension<Arrival>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    embeddings::route(s, headers, &body, arrival.0).await
}

/// `POST /v1/intent/feedback` `{"query": "...", "tool": "<tool name>"}` or
/// `{"query": "...", "intent": "<intent name>"}`: a labelled example for the
/// gateway's tool narrowing or intent layer, used from the next request on
/// (and kept in its examples file, when it has one).
async fn intent_feedback(
    State(s): State<Arc<ServerState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(e) = s.authorize(&headers).await {
        return e.into_response();
    }
    let v: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return error::ApiError::bad_request(format!("request body is not valid JSON: {e}"))
                .into_response()
        }
    };
    let field = |name: &str| match v.get(name) {
        None => Ok(None),
        Some(serde_json::Value::String(t)) if !t.trim().is_empty() => Ok(Some(t.clone())),
        Some(_) => Err(error::ApiError::invalid(
            name,
            format!("`{name}` must be a non-empty string"),
        )),
    };
    let (query, tool, intent) = match (field("query"), field("tool"), field("intent")) {
        (Ok(q), Ok(t), Ok(i)) => (q, t, i),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return e.into_response(),
    };
    let Some(query) = query else {
        return error::ApiError::invalid("query", "`query` must be a non-empty string")
            .into_response();
    };
    let (label, key, value, missing) = match (tool, intent) {
        (Some(t), None) => (
            inferd_backend::Feedback::Tool(t.clone()),
            "tool",
            t,
            "this server narrows no tools: configure `[routing.tools]`",
        ),
        (None, Some(i)) => (
            inferd_backend::Feedback::Intent(i.clone()),
            "intent",
            i,
            "this server classifies no intents: configure `[routing.intents]`",
        ),
        _ => {
            return error::ApiError::invalid(
                "tool",
                "give one of `tool` (a tool name) or `intent` (an intent name)",
            )
            .into_response()
        }
    };
    let Some(taken) = s
        .backends
        .iter()
        .find_map(|b| b.feedback(query.clone(), label.clone()))
    else {
        return error::ApiError::not_found(key, missing).into_response();
    };
    match taken.await {
        Ok((examples, persisted)) => Json(json!({
            "object": "intent.feedback",
            "query": query,
            key: value,
            "examples": examples,
            "persisted": persisted,
        }))
        .into_response(),
        Err(e) => error::ApiError::from(e).into_response(),
    }
}

async fn list_models(State(s): State<Arc<ServerState>>, headers: HeaderMap) -> Response {
    match s.authorize(&headers).await {
        Ok(()) => Json(ModelList {
            object: "list".into(),
            data: s.backends.iter().map(|b| s.model_object(&**b)).collect(),
        })
        .into_response(),
        Err(e) => e.into_response(),
    }
}

async fn get_model(
    State(s): State<Arc<ServerState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let result = match s.authorize(&headers).await {
        Ok(()) => s.backend(Some(&id)),
        Err(e) => Err(e),
    };
    match result {
        Ok(b) => Json(s.model_object(&**b)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// 200 when every model serves; 503 naming the ones that do not.
async fn health(State(s): State<Arc<ServerState>>) -> Response {
    let down: Vec<serde_json::Value> = s
        .backends
        .iter()
        .filter_map(|b| match b.health() {
            Health::Ready => None,
            Health::Unavailable(why) => Some(json!({"model": b.name(), "reason": why})),
        })
        .collect();
    if down.is_empty() {
        Json(json!({"status": "ok"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "models": down})),
        )
            .into_response()
    }
}

/// The router to serve while the models load: `/health` answers 503
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
    let mut text = s.metrics.render(&s.backends);
    if let Some(m) = &s.memory {
        text.push_str(&m.render_metrics());
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
