//! A stand-in OpenAI-compatible upstream that answers at once, for measuring
//! what a gateway in front of it adds (no model: the time is the relay's):
//!
//!     cargo run --release -p inferd-gateway --example echo_upstream -- --port 8090
//!
//! `POST /v1/chat/completions` streams `max_tokens` (default 8) one-word chunks,
//! then the finish reason, the usage chunk and `[DONE]`, or sends them as one
//! JSON body when `stream` is false; `GET /v1/models` lists `echo`.

use axum::response::sse::{Event, Sse};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

fn main() {
    let mut port = 8090u16;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--port" => {
                port = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--port takes a number")
            }
            other => panic!("unknown flag {other} (flags: --port N)"),
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        let app = Router::new()
            .route("/v1/models", get(|| async { Json(json!({"object": "list", "data": [{"id": "echo", "object": "model", "created": 0, "owned_by": "echo"}]})) }))
            .route("/v1/chat/completions", post(chat));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("the port is free");
        eprintln!("echo upstream: http://127.0.0.1:{port}/v1");
        axum::serve(listener, app).await.expect("serves");
    });
}

async fn chat(Json(body): Json<Value>) -> axum::response::Response {
    let n = body["max_tokens"].as_u64().unwrap_or(8) as usize;
    let model = body["model"].as_str().unwrap_or("echo").to_owned();
    let usage = json!({"prompt_tokens": 16, "completion_tokens": n, "total_tokens": 16 + n});
    if body["stream"].as_bool() != Some(true) {
        let text = vec!["word"; n].join(" ");
        return Json(json!({
            "id": "chatcmpl-echo", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}],
            "usage": usage
        }))
        .into_response();
    }
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-echo", "object": "chat.completion.chunk", "created": 0, "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let mut events: Vec<Value> = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    events.extend((0..n).map(|i| {
        chunk(
            json!({"content": if i == 0 { "word" } else { " word" }}),
            Value::Null,
        )
    }));
    events.push(chunk(json!({}), json!("length")));
    events.push(json!({"id": "chatcmpl-echo", "object": "chat.completion.chunk", "created": 0, "model": model, "choices": [], "usage": usage}));
    let stream = futures_util::stream::iter(
        events
            .into_iter()
            .map(|e| Ok::<_, std::convert::Infallible>(Event::default().data(e.to_string())))
            .chain(std::iter::once(Ok(Event::default().data("[DONE]")))),
    );
    Sse::new(stream).into_response()
}
