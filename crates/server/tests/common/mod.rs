//! Calling the real router in-process (`tower::ServiceExt::oneshot`, no network).

#![allow(dead_code)]

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

pub async fn call(
    app: &Router,
    method: &str,
    path: &str,
    body: Option<Value>,
    auth: Option<&str>,
) -> (StatusCode, HeaderMap, String) {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json");
    if let Some(a) = auth {
        req = req.header("authorization", format!("Bearer {a}"));
    }
    let req = req
        .body(body.map_or(Body::empty(), |b| Body::from(b.to_string())))
        .expect("a valid request");
    let resp = app.clone().oneshot(req).await.expect("the router answers");
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.expect("a whole body").to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8(bytes.to_vec()).expect("UTF-8 body"),
    )
}

pub async fn post(app: &Router, path: &str, body: Value) -> (StatusCode, Value) {
    let (status, _, text) = call(app, "POST", path, Some(body), None).await;
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}")),
    )
}

/// The `data:` payloads of an SSE body.
pub fn sse_events(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

/// The JSON chunks of an SSE body, which must end with `[DONE]`.
pub fn sse_chunks(text: &str) -> Vec<Value> {
    let events = sse_events(text);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{text}");
    events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).expect("chunks are JSON"))
        .collect()
}

/// Chat content streamed for choice `index`.
pub fn streamed_content(chunks: &[Value], index: u64) -> String {
    chunks
        .iter()
        .filter(|c| c["choices"][0]["index"] == index)
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}

pub fn with(mut base: Value, extra: Value) -> Value {
    base.as_object_mut()
        .expect("an object")
        .extend(extra.as_object().expect("an object").clone());
    base
}
