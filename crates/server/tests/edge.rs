//! The HTTP edge on scripted test backends — no model is loaded, so these run in
//! milliseconds: OpenAI error shapes naming the field, auth, routing by `model`
//! across several backends, SSE order, errors before and during a stream, health,
//! and per-model metrics.

mod common;

use std::sync::Arc;

use axum::http::StatusCode;
use axum::Router;
use common::{call, post, sse_chunks, with};
use inferd_backend::{Backend, BackendError, Health, Request, Script, TestBackend};
use inferd_protocol::ProtocolError;
use inferd_server::{router, ServerOptions, ServerState, MAX_BODY_BYTES};
use serde_json::{json, Value};

fn app_on(backends: Vec<Arc<TestBackend>>, api_key: Option<&str>) -> Router {
    let dyns: Vec<Arc<dyn Backend>> = backends
        .into_iter()
        .map(|b| b as Arc<dyn Backend>)
        .collect();
    let options = ServerOptions {
        api_key: api_key.map(str::to_owned),
        request_timeout: None,
    };
    router(Arc::new(ServerState::new(dyns, options).unwrap()))
}

fn one() -> (Router, Arc<TestBackend>) {
    let b = Arc::new(TestBackend::new("alpha"));
    (app_on(vec![b.clone()], None), b)
}

fn chat(extra: Value) -> Value {
    with(
        json!({"messages": [{"role": "user", "content": "hi"}]}),
        extra,
    )
}

#[tokio::test]
async fn validation_errors_are_openai_shaped_and_name_the_field() {
    let (app, backend) = one();
    for (path, body, param) in [
        ("/v1/chat/completions", chat(json!({"top_p": 1.5})), "top_p"),
        (
            "/v1/chat/completions",
            chat(json!({"temperature": "hot"})),
            "temperature",
        ),
        ("/v1/chat/completions", chat(json!({"n": 0})), "n"),
        ("/v1/chat/completions", chat(json!({"stop": 5})), "stop"),
        (
            "/v1/chat/completions",
            chat(json!({"response_format": {"type": "yaml"}})),
            "response_format.type",
        ),
        (
            // The test backend has no constrained decoding: refused, never
            // answered unconstrained.
            "/v1/chat/completions",
            chat(json!({"response_format": {"type": "json_object"}})),
            "response_format",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "guided_regex": "[0-9]+"}),
            "guided_regex",
        ),
        (
            "/v1/chat/completions",
            chat(
                json!({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required"}),
            ),
            "tool_choice",
        ),
        ("/v1/chat/completions", json!({"messages": []}), "messages"),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "wizard", "content": "x"}]}),
            "messages[0].role",
        ),
        ("/v1/completions", json!({"prompt": ["ok", 7]}), "prompt[1]"),
        (
            "/v1/completions",
            json!({"prompt": "x", "suffix": "y"}),
            "suffix",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "logprobs": 99}),
            "logprobs",
        ),
    ] {
        let (status, v) = post(&app, path, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], param, "{v}");
        assert!(v["error"]["message"].is_string());
        assert!(v["error"].get("code").is_some(), "code is present (null)");
    }
    assert!(
        backend.received().is_empty(),
        "invalid requests never reach the backend"
    );
    let (status, _, text) = call(&app, "POST", "/v1/chat/completions", None, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    let (status, _, _) = call(
        &app,
        "POST",
        "/v1/chat/completions",
        Some(json!({"x": "y".repeat(MAX_BODY_BYTES)})),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn the_model_field_picks_the_backend_and_an_unknown_one_is_404() {
    let a = Arc::new(TestBackend::new("alpha"));
    let b = Arc::new(TestBackend::new("beta"));
    b.set_script(Script::Reply(vec!["from beta".into()]));
    let app = app_on(vec![a.clone(), b.clone()], None);
    let (status, v) = post(&app, "/v1/chat/completions", chat(json!({"model": "beta"}))).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["model"], "beta");
    assert_eq!(v["choices"][0]["message"]["content"], "from beta");
    let (_, v) = post(&app, "/v1/chat/completions", chat(json!({}))).await;
    assert_eq!(v["model"], "alpha", "no model: the first one");
    assert_eq!((a.received().len(), b.received().len()), (1, 1));
    let (status, v) = post(
        &app,
        "/v1/chat/completions",
        chat(json!({"model": "gpt-9"})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(v["error"]["param"], "model");
    assert_eq!(v["error"]["code"], "model_not_found");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("`alpha`") && msg.contains("`beta`"), "{msg}");

    let (status, _, text) = call(&app, "GET", "/v1/models", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let list: Value = serde_json::from_str(&text).unwrap();
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["alpha", "beta"]);
    let (status, _, _) = call(&app, "GET", "/v1/models/beta", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = call(&app, "GET", "/v1/models/nope", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (_, _, metrics) = call(&app, "GET", "/metrics", None, None).await;
    assert!(
        metrics.contains("inferd_requests_total{finish_reason=\"stop\",model=\"beta\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("inferd_request_errors_total{model=\"none\",type=\"not_found\"} 1"),
        "{metrics}"
    );
}

#[test]
fn two_backends_with_one_name_are_refused() {
    let dup: Vec<Arc<dyn Backend>> = vec![
        Arc::new(TestBackend::new("a")),
        Arc::new(TestBackend::new("a")),
    ];
    let e = ServerState::new(dup, ServerOptions::default())
        .err()
        .unwrap();
    assert!(e.contains("`a`"), "{e}");
}

#[tokio::test]
async fn the_api_key_is_required_when_set() {
    let app = app_on(vec![Arc::new(TestBackend::new("alpha"))], Some("sekret"));
    let (status, _, text) = call(&app, "GET", "/v1/models", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(text.contains("invalid_api_key"));
    let (status, _, _) = call(
        &app,
        "POST",
        "/v1/chat/completions",
        Some(chat(json!({}))),
        Some("wrong"),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = call(
        &app,
        "POST",
        "/v1/chat/completions",
        Some(chat(json!({}))),
        Some("sekret"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn backend_errors_map_to_429_503_and_500() {
    let (app, backend) = one();
    backend.set_script(Script::Refuse(BackendError::Overloaded {
        message: "full".into(),
        retry_after_secs: 2,
    }));
    let (status, headers, text) = call(
        &app,
        "POST",
        "/v1/chat/completions",
        Some(chat(json!({}))),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{text}");
    assert_eq!(headers["retry-after"], "2");
    backend.set_script(Script::Refuse(BackendError::Internal(
        "the engine step failed".into(),
    )));
    let (status, v) = post(&app, "/v1/chat/completions", chat(json!({}))).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(v["error"]["type"], "server_error");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("engine step failed"));
    backend.set_script(Script::Refuse(BackendError::Invalid(ProtocolError::field(
        "max_tokens",
        "too many",
    ))));
    let (status, v) = post(&app, "/v1/completions", json!({"prompt": "x"})).await;
    assert_eq!(
        (status, v["error"]["param"].as_str()),
        (StatusCode::BAD_REQUEST, Some("max_tokens"))
    );

    backend.set_health(Health::Unavailable(
        "the engine of `alpha` has stopped".into(),
    ));
    let (status, _, text) = call(&app, "GET", "/health", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(text.contains("alpha") && text.contains("stopped"), "{text}");
}

#[tokio::test]
async fn sse_follows_openai_order_and_a_late_error_is_the_last_event() {
    let (app, backend) = one();
    let body = chat(json!({"stream": true, "n": 2, "stream_options": {"include_usage": true}}));
    let (status, _, text) = call(&app, "POST", "/v1/chat/completions", Some(body), None).await;
    assert_eq!(status, StatusCode::OK);
    let chunks = sse_chunks(&text);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chunks[1]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(common::streamed_content(&chunks, 0), "Hello there");
    assert_eq!(common::streamed_content(&chunks, 1), "Hello there");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"].as_array().unwrap().len(), 0);
    assert_eq!(usage["usage"]["completion_tokens"], 4);
    let finals: Vec<&Value> = chunks
        .iter()
        .filter(|c| c["choices"][0]["finish_reason"] == "stop")
        .collect();
    assert_eq!(finals.len(), 2);
    for f in finals {
        assert_eq!(f["choices"][0]["delta"], json!({}));
        assert!(f["timings"]["ttft_ms"].is_number());
    }
    let Request::Chat(r) = &backend.received()[0] else {
        panic!("a chat request")
    };
    assert_eq!(r.common.n, 2);

    backend.set_script(Script::FailAfter(
        vec!["partial".into()],
        BackendError::Internal("went wrong".into()),
    ));
    let (status, _, text) = call(
        &app,
        "POST",
        "/v1/completions",
        Some(json!({"prompt": "x", "stream": true})),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let events = common::sse_events(&text);
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["message"], "went wrong", "{events:?}");
    assert!(!events.contains(&"[DONE]".to_owned()));
    let (status, _, _) = call(
        &app,
        "POST",
        "/v1/completions",
        Some(json!({"prompt": "x"})),
        None,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "a failure mid-way fails a non-streamed request"
    );
}

/// A stand-in embedding model: a vector of (length, first id) per input.
struct TinyEmbedder;

impl inferd_backend::EmbeddingModel for TinyEmbedder {
    fn dims(&self) -> usize {
        2
    }
    fn max_tokens(&self) -> usize {
        8
    }
    fn vocab_size(&self) -> usize {
        256
    }
    fn tokenize(&self, text: &str) -> Result<Vec<u32>, String> {
        Ok(text.bytes().map(u32::from).collect())
    }
    fn embed_tokens(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, String> {
        Ok(batch
            .iter()
            .map(|t| vec![t.len() as f32, t[0] as f32])
            .collect())
    }
}

#[tokio::test]
async fn embeddings_in_float_and_base64_and_their_errors() {
    let emb: Arc<dyn Backend> = Arc::new(inferd_backend::EmbeddingBackend::start(
        "emb",
        Arc::new(TinyEmbedder),
    ));
    let talker: Arc<dyn Backend> = Arc::new(TestBackend::new("chat"));
    let app = router(Arc::new(
        ServerState::new(vec![talker, emb], ServerOptions::default()).unwrap(),
    ));
    let (status, v) = post(
        &app,
        "/v1/embeddings",
        json!({"model": "emb", "input": ["ab", "c"]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["object"], "list");
    assert_eq!(
        v["data"][0],
        json!({"object": "embedding", "index": 0, "embedding": [2.0, 97.0]})
    );
    assert_eq!(v["data"][1]["embedding"], json!([1.0, 99.0]));
    assert_eq!(v["usage"], json!({"prompt_tokens": 3, "total_tokens": 3}));
    let (_, b) = post(
        &app,
        "/v1/embeddings",
        json!({"model": "emb", "input": "ab", "encoding_format": "base64"}),
    )
    .await;
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let floats: Vec<f32> = bytes
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(floats, [2.0, 97.0], "base64 of the little-endian f32 bytes");
    for (body, status, param) in [
        (
            json!({"model": "emb", "input": "abcdefghij"}),
            StatusCode::BAD_REQUEST,
            "input",
        ),
        (
            json!({"model": "emb", "input": ["a", "abcdefghij"]}),
            StatusCode::BAD_REQUEST,
            "input[1]",
        ),
        (
            json!({"model": "emb", "input": "a", "dimensions": 3}),
            StatusCode::BAD_REQUEST,
            "dimensions",
        ),
        (
            json!({"model": "emb", "input": []}),
            StatusCode::BAD_REQUEST,
            "input",
        ),
        (
            json!({"model": "chat", "input": "a"}),
            StatusCode::BAD_REQUEST,
            "model",
        ),
        (
            json!({"model": "nope", "input": "a"}),
            StatusCode::NOT_FOUND,
            "model",
        ),
    ] {
        let (got, v) = post(&app, "/v1/embeddings", body.clone()).await;
        assert_eq!(
            (got, v["error"]["param"].as_str()),
            (status, Some(param)),
            "{body}: {v}"
        );
    }
    let (_, v) = post(
        &app,
        "/v1/embeddings",
        json!({"model": "emb", "input": "abcdefghij", "truncate": true}),
    )
    .await;
    assert_eq!(
        v["data"][0]["embedding"][0], 8.0,
        "cut to the model's 8 tokens"
    );
    let (status, v) = post(&app, "/v1/chat/completions", chat(json!({"model": "emb"}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/v1/embeddings"),
        "{v}"
    );
}
