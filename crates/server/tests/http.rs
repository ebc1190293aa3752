//! The real router on the real default model, driven with `tower::ServiceExt::oneshot`
//! (no network): OpenAI shapes, streaming order, errors that name the field,
//! stop strings, `n`, logprobs, overload, metrics.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use inferd_engine::{start_engine, EngineConfig, LoadedModel};
use inferd_server::{router, ServerOptions, ServerState, MAX_BODY_BYTES};
use serde_json::{json, Value};
use tower::ServiceExt;

fn app_with(config: EngineConfig, api_key: Option<&str>) -> Router {
    let loaded = LoadedModel::load(inferd_testutil::smollm2_path()).unwrap();
    let (tok, tpl) = (loaded.tokenizer.clone(), loaded.chat_template.clone());
    let engine = start_engine(loaded, config).unwrap();
    let options = ServerOptions {
        model_id: "smollm2-135m".into(),
        api_key: api_key.map(str::to_owned),
        request_timeout: None,
    };
    router(Arc::new(ServerState::new(engine, tok, tpl, options)))
}

fn app() -> Router {
    app_with(EngineConfig::default(), None)
}

async fn call(
    app: &Router,
    method: &str,
    path: &str,
    body: Option<Value>,
    auth: Option<&str>,
) -> (StatusCode, axum::http::HeaderMap, String) {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json");
    if let Some(a) = auth {
        req = req.header("authorization", format!("Bearer {a}"));
    }
    let req = req
        .body(body.map_or(Body::empty(), |b| Body::from(b.to_string())))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8(bytes.to_vec()).unwrap(),
    )
}

async fn post(app: &Router, path: &str, body: Value) -> (StatusCode, Value) {
    let (status, _, text) = call(app, "POST", path, Some(body), None).await;
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}")),
    )
}

fn sse_events(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

fn question(extra: Value) -> Value {
    let mut b = json!({"model": "smollm2-135m", "messages": [{"role": "user", "content": "What is the capital of France?"}], "temperature": 0, "max_tokens": 24});
    b.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_non_streaming_and_streaming_agree_and_follow_openai_order() {
    let app = app();
    let (status, headers, text) = call(
        &app,
        "POST",
        "/v1/chat/completions",
        Some(question(json!({}))),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(headers.contains_key("x-inferd-ttft-ms"));
    let full: Value = serde_json::from_str(&text).unwrap();
    let content = full["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(content.contains("Paris"), "{content}");
    assert_eq!(full["object"], "chat.completion");
    assert_eq!(full["choices"][0]["finish_reason"], "stop");
    assert!(full["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    assert!(full["timings"]["ttft_ms"].as_f64().unwrap() > 0.0);

    let (status, _, text) = call(
        &app,
        "POST",
        "/v1/chat/completions",
        Some(question(
            json!({"stream": true, "stream_options": {"include_usage": true}}),
        )),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let events = sse_events(&text);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(
        chunks[0]["choices"][0]["delta"]["role"], "assistant",
        "role comes first"
    );
    let usage = chunks.last().unwrap();
    assert_eq!(
        usage["choices"].as_array().unwrap().len(),
        0,
        "usage chunk has empty choices"
    );
    assert_eq!(
        usage["usage"]["completion_tokens"],
        full["usage"]["completion_tokens"]
    );
    let last = &chunks[chunks.len() - 2];
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert_eq!(last["choices"][0]["delta"], json!({}));
    assert!(last["timings"]["ttft_ms"].is_number());
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(
        streamed, content,
        "same text streamed and not streamed at temperature 0"
    );
    // Without include_usage there is no usage chunk.
    let (_, _, text) = call(
        &app,
        "POST",
        "/v1/chat/completions",
        Some(question(json!({"stream": true}))),
        None,
    )
    .await;
    let events = sse_events(&text);
    let before_done: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(before_done["choices"][0]["finish_reason"], "stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_strings_n_and_logprobs() {
    let app = app();
    let (_, v) = post(
        &app,
        "/v1/chat/completions",
        question(json!({"stop": [" Paris"]})),
    )
    .await;
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(
        !text.contains("Paris"),
        "stop text must not be emitted: {text}"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");

    let (_, v) = post(
        &app,
        "/v1/chat/completions",
        question(json!({"n": 2, "temperature": 1.0, "seed": 3})),
    )
    .await;
    assert_eq!(v["choices"].as_array().unwrap().len(), 2);
    assert_eq!(v["choices"][1]["index"], 1);

    let (_, v) = post(
        &app,
        "/v1/chat/completions",
        question(json!({"logprobs": true, "top_logprobs": 3, "max_tokens": 4})),
    )
    .await;
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert!(!content.is_empty());
    assert_eq!(content[0]["top_logprobs"].as_array().unwrap().len(), 3);
    assert!(content[0]["logprob"].as_f64().unwrap() <= 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_accept_text_and_token_ids() {
    let app = app();
    let (status, v) = post(
        &app,
        "/v1/completions",
        json!({"prompt": "The capital of France is", "max_tokens": 4, "temperature": 0}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["object"], "text_completion");
    assert!(
        v["choices"][0]["text"].as_str().unwrap().contains("Paris"),
        "{v}"
    );
    let (status, v) = post(
        &app,
        "/v1/completions",
        json!({"prompt": [504, 3575, 282, 4649, 314], "max_tokens": 2, "temperature": 0}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["usage"]["prompt_tokens"], 5);
    // A batch of prompts: `n` choices per prompt, prompt-major, each answering its
    // own prompt exactly as it would alone; prompt tokens counted once per prompt.
    let (status, v) = post(
        &app,
        "/v1/completions",
        json!({"prompt": ["The capital of France is", [504, 3575, 282, 4649, 314]], "n": 2,
               "max_tokens": 4, "temperature": 0}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let texts: Vec<&str> = v["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts.len(), 4);
    assert!(
        texts[0].contains("Paris") && texts[0] == texts[1],
        "{texts:?}"
    );
    let (_, alone) = post(
        &app,
        "/v1/completions",
        json!({"prompt": [504, 3575, 282, 4649, 314], "max_tokens": 4, "temperature": 0}),
    )
    .await;
    assert_eq!(texts[2], alone["choices"][0]["text"].as_str().unwrap());
    assert_eq!(v["choices"][3]["index"], 3);
    let first_len = v["usage"]["prompt_tokens"].as_u64().unwrap() - 5;
    assert!((5..=7).contains(&first_len), "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 16);
    let (status, v) = post(&app, "/v1/completions", json!({"prompt": ["ok", 7]})).await;
    assert_eq!(
        (status, v["error"]["param"].as_str()),
        (StatusCode::BAD_REQUEST, Some("prompt[1]"))
    );
    let (status, v) = post(
        &app,
        "/v1/completions",
        json!({"prompt": "x", "echo": true}),
    )
    .await;
    assert_eq!(
        (status, v["error"]["param"].as_str()),
        (StatusCode::BAD_REQUEST, Some("echo"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_openai_shaped_and_name_the_field() {
    let app = app();
    for (body, param) in [
        (question(json!({"top_p": 1.5})), "top_p"),
        (question(json!({"temperature": "hot"})), "temperature"),
        (question(json!({"n": 0})), "n"),
        (question(json!({"stop": 5})), "stop"),
        (
            question(json!({"response_format": {"type": "json_object"}})),
            "response_format",
        ),
        (json!({"messages": []}), "messages"),
        (
            json!({"messages": [{"role": "wizard", "content": "x"}]}),
            "messages[0].role",
        ),
        (question(json!({"max_tokens": 9000})), "max_tokens"),
    ] {
        let (status, v) = post(&app, "/v1/chat/completions", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], param, "{v}");
    }
    let (_, v) = post(
        &app,
        "/v1/chat/completions",
        question(json!({"max_tokens": 9000})),
    )
    .await;
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("8192") && msg.contains("9000"),
        "names both numbers: {msg}"
    );
    let long = "word ".repeat(9000);
    let (status, v) = post(&app, "/v1/completions", json!({"prompt": long})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("context window"),
        "{v}"
    );
    let (status, v) = post(
        &app,
        "/v1/chat/completions",
        question(json!({"model": "gpt-9"})),
    )
    .await;
    assert_eq!(
        (status, v["error"]["param"].as_str()),
        (StatusCode::NOT_FOUND, Some("model"))
    );
    let (status, _, _) = call(
        &app,
        "POST",
        "/v1/chat/completions",
        Some(json!({"x": "y".repeat(MAX_BODY_BYTES)})),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let (status, _, text) = call(&app, "POST", "/v1/chat/completions", None, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    let (status, _, _) = call(&app, "GET", "/v1/models/nope", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, text) = call(&app, "GET", "/v1/models", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(text.contains("smollm2-135m"));
    let (status, _, _) = call(&app, "GET", "/health", None, None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_is_required_when_set() {
    let app = app_with(EngineConfig::default(), Some("sekret"));
    let (status, _, text) = call(&app, "GET", "/v1/models", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(text.contains("invalid_api_key"));
    let (status, _, _) = call(
        &app,
        "POST",
        "/v1/chat/completions",
        Some(question(json!({}))),
        Some("wrong"),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = call(&app, "GET", "/v1/models", None, Some("sekret")).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_gets_fast_429s_and_metrics_move() {
    let mut config = EngineConfig::default();
    config.scheduler.max_running = 1;
    config.scheduler.max_waiting = 1;
    let app = app_with(config, None);
    let calls: Vec<_> = (0..6)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move {
                call(
                    &app,
                    "POST",
                    "/v1/chat/completions",
                    Some(question(json!({"max_tokens": 32}))),
                    None,
                )
                .await
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for c in calls {
        let (status, headers, _) = c.await.unwrap();
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert!(headers.contains_key("retry-after"));
        }
        statuses.push(status);
    }
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    assert!(statuses.contains(&StatusCode::OK), "{statuses:?}");
    let (_, _, metrics) = call(&app, "GET", "/metrics", None, None).await;
    for name in [
        "inferd_request_ttft_seconds_count",
        "inferd_requests_total{finish_reason=",
        "inferd_request_errors_total{type=\"overloaded\"}",
        "inferd_kv_blocks{state=\"free\"}",
        "inferd_prefix_cache_hits_tokens_total",
    ] {
        assert!(metrics.contains(name), "missing {name} in /metrics");
    }
}
