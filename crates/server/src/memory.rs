//! `/v1/memory`: the agent-memory API over [`inferd_memory::Memory`].
//!
//! `POST /v1/memory` appends (201, or 200 with `"duplicate": true` when the
//! idempotency key was seen); `PATCH` and `DELETE /v1/memory/{id}` append an
//! update or a delete. Reads name their namespace and may ask for
//! read-your-writes with `min_seq` (and `wait_ms`): they wait, bounded, until
//! the projection they read has applied that write, or answer 409 (never
//! written) or 504 (the projection is behind, by how much) — never a stale
//! answer in silence.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use inferd_memory::{Consistency, Error, Memory, Namespace, Search, Write};
use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::ServerState;

pub fn routes() -> Router<Arc<ServerState>> {
    Router::new()
        .route("/v1/memory", axum::routing::post(write))
        .route("/v1/memory/search", get(search))
        .route("/v1/memory/recent", get(recent))
        .route("/v1/memory/audit", get(audit))
        .route("/v1/memory/status", get(status))
        .route("/v1/memory/facts/{key}", get(fact))
        .route("/v1/memory/{id}", get(item).patch(update).delete(delete))
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        let message = e.to_string();
        let with = |status: StatusCode,
                    kind: &'static str,
                    param: Option<&str>,
                    code: &'static str| ApiError {
            status,
            message: message.clone(),
            kind,
            param: param.map(str::to_owned),
            code: Some(code),
            retry_after_secs: None,
        };
        match &e {
            Error::Invalid { field, .. } => ApiError::invalid(field, message),
            Error::NotFound(_) => with(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                None,
                "memory_not_found",
            ),
            Error::IdempotencyConflict(_) => with(
                StatusCode::CONFLICT,
                "invalid_request_error",
                Some("idempotency_key"),
                "idempotency_key_reused",
            ),
            Error::NotWritten { .. } => with(
                StatusCode::CONFLICT,
                "invalid_request_error",
                Some("min_seq"),
                "seq_not_written",
            ),
            Error::Lagging { .. } => with(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout_error",
                Some("min_seq"),
                "projection_lagging",
            ),
            Error::NoEmbedder => with(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("q"),
                "search_unavailable",
            ),
            Error::Overloaded(_)
            | Error::PoolTimeout(_)
            | Error::Closed
            | Error::Unavailable(_) => ApiError {
                retry_after_secs: Some(1),
                ..with(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "service_unavailable",
                    None,
                    "memory_unavailable",
                )
            },
            Error::Embedding(_) | Error::Storage(_) => {
                tracing::error!(error = %e, "memory store failed");
                with(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    None,
                    "memory_error",
                )
            }
        }
    }
}

type Params = Query<HashMap<String, String>>;

async fn memory(s: &ServerState, headers: &HeaderMap) -> Result<Arc<Memory>, ApiError> {
    s.authorize(headers).await?;
    s.memory.clone().ok_or_else(|| ApiError {
        status: StatusCode::NOT_FOUND,
        code: Some("memory_disabled"),
        ..ApiError::bad_request("this server keeps no memory: start it with `--state DIR`")
    })
}

pub(crate) fn body_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::bad_request(
            "the request body must be a JSON object",
        )),
        Err(e) => Err(ApiError::bad_request(format!(
            "request body is not valid JSON: {e}"
        ))),
    }
}

/// Refuses fields the endpoint does not know, naming the first.
fn only(m: &Map<String, Value>, known: &[&str]) -> Result<(), ApiError> {
    match m.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(ApiError::invalid(
            k,
            format!(
                "unknown field `{k}`; this endpoint takes {}",
                known.join(", ")
            ),
        )),
        None => Ok(()),
    }
}

fn string(m: &Map<String, Value>, field: &str) -> Result<Option<String>, ApiError> {
    match m.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::invalid(
            field,
            format!("`{field}` must be a string"),
        )),
    }
}

fn required(m: &Map<String, Value>, field: &str) -> Result<String, ApiError> {
    string(m, field)?.ok_or_else(|| ApiError::invalid(field, format!("`{field}` is required")))
}

fn metadata(m: &Map<String, Value>) -> Result<Map<String, Value>, ApiError> {
    match m.get("metadata") {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(o)) => Ok(o.clone()),
        Some(_) => Err(ApiError::invalid(
            "metadata",
            "`metadata` must be a JSON object",
        )),
    }
}

/// The body's idempotency key, or the `Idempotency-Key` header's.
fn idempotency(m: &Map<String, Value>, headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    if let Some(k) = string(m, "idempotency_key")? {
        return Ok(Some(k));
    }
    Ok(headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned))
}

fn namespace_of(v: Option<&String>) -> Result<Namespace, ApiError> {
    let v = v.ok_or_else(|| ApiError::invalid("namespace", "`namespace` is required"))?;
    Ok(Namespace::parse(v)?)
}

fn number<T: std::str::FromStr>(
    q: &HashMap<String, String>,
    field: &str,
) -> Result<Option<T>, ApiError> {
    q.get(field)
        .map(|v| {
            v.parse().map_err(|_| {
                ApiError::invalid(
                    field,
                    format!("`{field}` must be a non-negative integer, got {v:?}"),
                )
            })
        })
        .transpose()
}

fn consistency(q: &HashMap<String, String>) -> Result<Consistency, ApiError> {
    Ok(Consistency {
        min_seq: number(q, "min_seq")?,
        wait_ms: number(q, "wait_ms")?,
    })
}

fn parse_id(id: &str) -> Result<i64, ApiError> {
    id.parse::<i64>().ok().filter(|&i| i > 0).ok_or_else(|| {
        ApiError::invalid(
            "id",
            format!("a memory id is a positive integer, got {id:?}"),
        )
    })
}

fn written(a: inferd_memory::Appended) -> Response {
    let status = if a.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    (
        status,
        Json(json!({
            "object": "memory.write",
            "id": a.id,
            "namespace": a.namespace,
            "seq": a.seq,
            "log_position": a.gseq,
            "duplicate": a.duplicate,
            "created_ms": a.at_ms,
        })),
    )
        .into_response()
}

fn answer(r: Result<Response, ApiError>) -> Response {
    r.unwrap_or_else(IntoResponse::into_response)
}

async fn write(State(s): State<Arc<ServerState>>, headers: HeaderMap, body: Bytes) -> Response {
    answer(
        async {
            let m = memory(&s, &headers).await?;
            let b = body_object(&body)?;
            only(
                &b,
                &[
                    "namespace",
                    "kind",
                    "key",
                    "content",
                    "metadata",
                    "idempotency_key",
                ],
            )?;
            let w = Write::put(
                Namespace::parse(&required(&b, "namespace")?)?,
                string(&b, "kind")?,
                string(&b, "key")?,
                required(&b, "content")?,
                metadata(&b)?,
                idempotency(&b, &headers)?,
            )?;
            Ok(written(m.write(w).await?))
        }
        .await,
    )
}

async fn update(
    State(s): State<Arc<ServerState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    answer(
        async {
            let m = memory(&s, &headers).await?;
            let b = body_object(&body)?;
            only(&b, &["namespace", "content", "metadata", "idempotency_key"])?;
            let w = Write::update(
                Namespace::parse(&required(&b, "namespace")?)?,
                parse_id(&id)?,
                required(&b, "content")?,
                b.contains_key("metadata")
                    .then(|| metadata(&b))
                    .transpose()?,
                idempotency(&b, &headers)?,
            )?;
            Ok(written(m.write(w).await?))
        }
        .await,
    )
}

async fn delete(
    State(s): State<Arc<ServerState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Params,
) -> Response {
    answer(
        async {
            let m = memory(&s, &headers).await?;
            let idem = q
                .get("idempotency_key")
                .cloned()
                .or(idempotency(&Map::new(), &headers)?);
            let w = Write::delete(namespace_of(q.get("namespace"))?, parse_id(&id)?, idem)?;
            Ok(written(m.write(w).await?))
        }
        .await,
    )
}

async fn item(
    State(s): State<Arc<ServerState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Params,
) -> Response {
    answer(
        async {
            let m = memory(&s, &headers).await?;
            let item = m
                .item(
                    &namespace_of(q.get("namespace"))?,
                    parse_id(&id)?,
                    consistency(&q)?,
                )
                .await?;
            let mut v = serde_json::to_value(item).expect("an item serialises");
            v["object"] = json!("memory");
            Ok(Json(v).into_response())
        }
        .await,
    )
}

async fn fact(
    State(s): State<Arc<ServerState>>,
    headers: HeaderMap,
    Path(key): Path<String>,
    Query(q): Params,
) -> Response {
    answer(
        async {
            let m = memory(&s, &headers).await?;
            let history = match q.get("history").map(String::as_str) {
                None | Some("false") => false,
                Some("true") => true,
                Some(v) => {
                    return Err(ApiError::invalid(
                        "history",
                        format!("`history` must be true or false, got {v:?}"),
                    ))
                }
            };
            let fact = m
                .fact(
                    &namespace_of(q.get("namespace"))?,
                    &key,
                    history,
                    consistency(&q)?,
                )
                .await?;
            let mut v = serde_json::to_value(fact).expect("a fact serialises");
            v["object"] = json!("memory.fact");
            Ok(Json(v).into_response())
        }
        .await,
    )
}

async fn search(
    State(s): State<Arc<ServerState>>,
    headers: HeaderMap,
    Query(q): Params,
) -> Response {
    answer(
        async {
            let m = memory(&s, &headers).await?;
            let mut filters = Map::new();
            for (k, v) in &q {
                if let Some(field) = k.strip_prefix("metadata.") {
                    // `metadata.tier=2` matches the number 2; anything not JSON, a string.
                    let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.clone()));
                    filters.insert(field.to_owned(), value);
                } else if !["namespace", "q", "k", "kind", "min_seq", "wait_ms"].contains(&k.as_str()) {
                    return Err(ApiError::invalid(
                        k,
                        format!("unknown parameter `{k}`; search takes namespace, q, k, kind, metadata.<field>, min_seq, wait_ms"),
                    ));
                }
            }
            let search = Search {
                namespace: namespace_of(q.get("namespace"))?,
                query: q.get("q").cloned().ok_or_else(|| ApiError::invalid("q", "`q` is required"))?,
                k: number(&q, "k")?.unwrap_or(5),
                kind: q.get("kind").cloned(),
                metadata: filters,
            };
            let hits = m.search(search, consistency(&q)?).await?;
            Ok(Json(json!({"object": "list", "data": hits})).into_response())
        }
        .await,
    )
}

async fn recent(
    State(s): State<Arc<ServerState>>,
    headers: HeaderMap,
    Query(q): Params,
) -> Response {
    answer(
        async {
            let m = memory(&s, &headers).await?;
            let limit = number(&q, "limit")?.unwrap_or(20usize).clamp(1, 1000);
            let items = m
                .recent(&namespace_of(q.get("namespace"))?, limit, consistency(&q)?)
                .await?;
            Ok(Json(json!({"object": "list", "data": items})).into_response())
        }
        .await,
    )
}

async fn audit(
    State(s): State<Arc<ServerState>>,
    headers: HeaderMap,
    Query(q): Params,
) -> Response {
    answer(
        async {
            let m = memory(&s, &headers).await?;
            let limit = number(&q, "limit")?.unwrap_or(100usize).clamp(1, 10_000);
            let after = number(&q, "after_seq")?.unwrap_or(0i64);
            let rows = m
                .audit(
                    &namespace_of(q.get("namespace"))?,
                    after,
                    limit,
                    consistency(&q)?,
                )
                .await?;
            Ok(Json(json!({"object": "list", "data": rows})).into_response())
        }
        .await,
    )
}

async fn status(State(s): State<Arc<ServerState>>, headers: HeaderMap) -> Response {
    answer(
        async {
            let m = memory(&s, &headers).await?;
            Ok(Json(m.report().await?).into_response())
        }
        .await,
    )
}

/// Chat requests' `memory_search` extension — `{"namespace": "…", "k": 5,
/// "query": "…", "kind": "…", "min_seq": n, "wait_ms": n}` — resolved before
/// validation into the `memory` extension: the namespace's items nearest
/// `query` (default: the last user message's text), appended to any `memory`
/// the request sent, so the context budget treats them like any other memory.
/// The body is returned unchanged when it has no such field.
pub async fn resolve_memory_search<'a>(
    s: &ServerState,
    body: &'a [u8],
) -> Result<std::borrow::Cow<'a, [u8]>, ApiError> {
    const FIELD: &str = "memory_search";
    if !body.windows(FIELD.len()).any(|w| w == FIELD.as_bytes()) {
        return Ok(std::borrow::Cow::Borrowed(body));
    }
    let Ok(mut req) = serde_json::from_slice::<Map<String, Value>>(body) else {
        // Not a JSON object: validation names the problem.
        return Ok(std::borrow::Cow::Borrowed(body));
    };
    let Some(spec) = req.remove(FIELD) else {
        return Ok(std::borrow::Cow::Borrowed(body));
    };
    let bad = |what: &str, why: String| ApiError::invalid(&format!("{FIELD}.{what}"), why);
    let Value::Object(spec) = spec else {
        return Err(ApiError::invalid(
            FIELD,
            format!("`{FIELD}` must be an object: {{\"namespace\": \"…\", \"k\": 5}}"),
        ));
    };
    if let Some(k) = spec
        .keys()
        .find(|k| !["namespace", "query", "k", "kind", "min_seq", "wait_ms"].contains(&k.as_str()))
    {
        return Err(bad(
            k,
            format!(
                "unknown field `{FIELD}.{k}`; it takes namespace, query, k, kind, min_seq, wait_ms"
            ),
        ));
    }
    let m = s.memory.clone().ok_or_else(|| {
        ApiError::invalid(
            FIELD,
            "this server keeps no memory: start it with `--state DIR` (and `--memory-model`)",
        )
    })?;
    let text = |field: &str| match spec.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(t)) => Ok(Some(t.clone())),
        Some(_) => Err(bad(field, format!("`{FIELD}.{field}` must be a string"))),
    };
    let int = |field: &str, max: u64| match spec.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().filter(|n| *n <= max).map(Some).ok_or_else(|| {
            bad(
                field,
                format!("`{FIELD}.{field}` must be an integer in 0..={max}"),
            )
        }),
    };
    let namespace = Namespace::parse(
        &text("namespace")?
            .ok_or_else(|| bad("namespace", format!("`{FIELD}.namespace` is required")))?,
    )
    .map_err(|e| bad("namespace", e.to_string()))?;
    let query = match text("query")? {
        Some(q) => q,
        None => last_user_text(&req).ok_or_else(|| {
            bad(
                "query",
                format!("`{FIELD}.query` is required when no user message has text"),
            )
        })?,
    };
    let search = Search {
        namespace,
        query,
        k: int("k", 20)?.unwrap_or(5) as usize,
        kind: text("kind")?,
        metadata: Map::new(),
    };
    let consistency = Consistency {
        min_seq: int("min_seq", i64::MAX as u64)?.map(|n| n as i64),
        wait_ms: int("wait_ms", inferd_memory::MAX_WAIT_MS)?,
    };
    let hits = m.search(search, consistency).await.map_err(|e| {
        let mut e = ApiError::from(e);
        e.param = e.param.map(|p| format!("{FIELD}.{p}"));
        e
    })?;
    let memory = req
        .entry("memory")
        .or_insert_with(|| Value::Array(Vec::new()));
    let Value::Array(items) = memory else {
        return Err(ApiError::invalid(
            "memory",
            "`memory` must be an array of strings",
        ));
    };
    items.extend(hits.into_iter().map(|h| Value::String(h.content)));
    Ok(std::borrow::Cow::Owned(
        serde_json::to_vec(&req).expect("a JSON object serialises"),
    ))
}

/// The text of the last `user` message of a chat body.
fn last_user_text(req: &Map<String, Value>) -> Option<String> {
    let msg = req
        .get("messages")?
        .as_array()?
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))?;
    let text = match msg.get("content")? {
        Value::String(t) => t.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => return None,
    };
    (!text.trim().is_empty()).then_some(text)
}
