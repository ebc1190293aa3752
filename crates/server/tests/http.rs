//! The real router on the real default model, driven in-process
//! (`tower::ServiceExt::oneshot`). The model is loaded once for the whole file;
//! tests that need a differently configured engine start their own.

mod common;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::http::StatusCode;
use axum::Router;
use common::{call, post, sse_chunks, streamed_content, with};
use inferd_backend::{Backend, LocalBackend};
use inferd_engine::{EngineConfig, LoadedModel};
use inferd_server::{router, ServerOptions, ServerState};
use serde_json::{json, Value};

fn backend(name: &str, config: EngineConfig) -> LocalBackend {
    let model = LoadedModel::load(inferd_testutil::smollm2_path()).unwrap();
    LocalBackend::start(name, model, config).unwrap()
}

fn app_on(backends: Vec<LocalBackend>) -> Router {
    let dyns: Vec<Arc<dyn Backend>> = backends
        .into_iter()
        .map(|b| Arc::new(b) as Arc<dyn Backend>)
        .collect();
    router(Arc::new(
        ServerState::new(dyns, ServerOptions::default()).unwrap(),
    ))
}

/// The shared server (one engine on the default configuration).
fn app() -> &'static Router {
    static APP: OnceLock<Router> = OnceLock::new();
    APP.get_or_init(|| app_on(vec![backend("smollm2-135m", EngineConfig::default())]))
}

fn question(extra: Value) -> Value {
    with(
        json!({"model": "smollm2-135m", "messages": [{"role": "user", "content": "What is the capital of France?"}],
               "temperature": 0, "max_tokens": 24}),
        extra,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_non_streaming_and_streaming_agree_and_follow_openai_order() {
    let app = app();
    let (status, headers, text) = call(
        app,
        "POST",
        "/v1/chat/completions",
        Some(question(json!({}))),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let full: Value = serde_json::from_str(&text).unwrap();
    let content = full["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(content.contains("Paris"), "{content}");
    assert_eq!(full["object"], "chat.completion");
    assert_eq!(full["choices"][0]["finish_reason"], "stop");
    assert!(full["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    let t = &full["timings"];
    let ttft = t["ttft_ms"].as_f64().unwrap();
    assert!(ttft > 0.0);
    assert!(t["edge_ms"].as_f64().unwrap() >= 0.0);
    assert!(
        t["edge_ms"].as_f64().unwrap() <= ttft,
        "TTFT counts from arrival, so it includes the edge: {t}"
    );
    assert_eq!(
        headers["x-inferd-ttft-ms"].to_str().unwrap(),
        (ttft.round() as u64).to_string()
    );

    let body = question(json!({"stream": true, "stream_options": {"include_usage": true}}));
    let (status, _, text) = call(app, "POST", "/v1/chat/completions", Some(body), None).await;
    assert_eq!(status, StatusCode::OK);
    let chunks = sse_chunks(&text);
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
    assert!(last["timings"]["ttft_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(
        streamed_content(&chunks, 0),
        content,
        "same text streamed and not at temperature 0"
    );
    let (_, _, text) = call(
        app,
        "POST",
        "/v1/chat/completions",
        Some(question(json!({"stream": true}))),
        None,
    )
    .await;
    let chunks = sse_chunks(&text);
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop",
        "no usage chunk unless asked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_ending_on_a_stop_string_reports_real_timings_and_cached_tokens() {
    let app = app();
    let salt = json!({"stop": [" Paris"], "cache_salt": "stop-timings"});
    for round in 0..2 {
        let (status, headers, text) = call(
            app,
            "POST",
            "/v1/chat/completions",
            Some(question(salt.clone())),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        let content = v["choices"][0]["message"]["content"].as_str().unwrap();
        assert!(
            !content.contains("Paris"),
            "the stop string is not emitted: {content}"
        );
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        let t = &v["timings"];
        assert!(t["ttft_ms"].as_f64().unwrap() > 0.0, "{t}");
        assert!(t["queue_ms"].as_f64().unwrap() >= 0.0, "{t}");
        assert!(
            t["e2e_ms"].as_f64().unwrap() >= t["ttft_ms"].as_f64().unwrap(),
            "{t}"
        );
        assert!(t["prompt_tokens"].as_u64().unwrap() > 0, "{t}");
        assert_ne!(headers["x-inferd-ttft-ms"], "0");
        if round == 1 {
            // The same prompt again: the engine's Done reports the cached prefix.
            assert!(
                v["usage"]["prompt_tokens_details"]["cached_tokens"]
                    .as_u64()
                    .unwrap()
                    > 0,
                "{v}"
            );
            assert!(t["cached_prompt_tokens"].as_u64().unwrap() > 0, "{t}");
        }
    }
    let (_, _, metrics) = call(app, "GET", "/metrics", None, None).await;
    let sum: f64 = metrics
        .lines()
        .find(|l| l.starts_with("inferd_request_ttft_seconds_sum{model=\"smollm2-135m\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(
        sum > 0.0,
        "stop-string requests observe real TTFTs, not zeros"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_sends_nothing_after_a_stop_string_in_the_first_event() {
    let app = app();
    // The first token the model answers with, as text.
    let (_, v) = post(
        app,
        "/v1/chat/completions",
        question(json!({"logprobs": true, "max_tokens": 1})),
    )
    .await;
    let first = v["choices"][0]["logprobs"]["content"][0]["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let stop = json!({"stop": [first.clone()], "max_tokens": 16});
    let (_, full) = post(app, "/v1/chat/completions", question(stop.clone())).await;
    assert_eq!(
        full["choices"][0]["message"]["content"], "",
        "{first:?}: {full}"
    );
    let (_, _, text) = call(
        app,
        "POST",
        "/v1/chat/completions",
        Some(question(with(stop, json!({"stream": true})))),
        None,
    )
    .await;
    let chunks = sse_chunks(&text);
    assert_eq!(
        streamed_content(&chunks, 0),
        "",
        "streaming agrees with non-streaming: {chunks:?}"
    );
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_and_logprobs() {
    let app = app();
    let (_, v) = post(
        app,
        "/v1/chat/completions",
        question(json!({"n": 2, "temperature": 1.0, "seed": 3})),
    )
    .await;
    assert_eq!(v["choices"].as_array().unwrap().len(), 2);
    assert_eq!(v["choices"][1]["index"], 1);
    let (_, v) = post(
        app,
        "/v1/chat/completions",
        question(json!({"logprobs": true, "top_logprobs": 3, "max_tokens": 4})),
    )
    .await;
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(
        content.len(),
        v["usage"]["completion_tokens"].as_u64().unwrap() as usize
    );
    assert_eq!(content[0]["top_logprobs"].as_array().unwrap().len(), 3);
    assert!(content[0]["logprob"].as_f64().unwrap() <= 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_accept_text_token_ids_and_batches() {
    let app = app();
    let (status, v) = post(
        app,
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
    let ids = json!([504, 3575, 282, 4649, 314]);
    let (status, v) = post(
        app,
        "/v1/completions",
        json!({"prompt": ids, "max_tokens": 2, "temperature": 0}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["usage"]["prompt_tokens"], 5);
    // A batch: `n` choices per prompt, prompt-major, each as it would be alone.
    let (status, v) = post(
        app,
        "/v1/completions",
        json!({"prompt": ["The capital of France is", ids], "n": 2, "max_tokens": 4, "temperature": 0}),
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
        app,
        "/v1/completions",
        json!({"prompt": ids, "max_tokens": 4, "temperature": 0}),
    )
    .await;
    assert_eq!(texts[2], alone["choices"][0]["text"].as_str().unwrap());
    assert_eq!(v["choices"][3]["index"], 3);
    let first_len = v["usage"]["prompt_tokens"].as_u64().unwrap() - 5;
    assert!((5..=7).contains(&first_len), "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 16);
    let long = "word ".repeat(9000);
    let (status, v) = post(app, "/v1/completions", json!({"prompt": long})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("context window"),
        "{v}"
    );
    let (status, v) = post(
        app,
        "/v1/chat/completions",
        question(json!({"max_tokens": 9000})),
    )
    .await;
    assert_eq!(
        (status, v["error"]["param"].as_str()),
        (StatusCode::BAD_REQUEST, Some("max_tokens"))
    );
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("8192") && msg.contains("9000"),
        "names both numbers: {msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_echo_and_logprobs_in_the_legacy_format() {
    let app = app();
    let prompt = "The capital of France is";
    let (status, v) = post(
        app,
        "/v1/completions",
        json!({"prompt": prompt, "max_tokens": 3, "temperature": 0, "logprobs": 2}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let lp = &v["choices"][0]["logprobs"];
    let tokens: Vec<&str> = lp["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(tokens.len(), 3);
    assert_eq!(tokens.concat(), v["choices"][0]["text"].as_str().unwrap());
    for (i, top) in lp["top_logprobs"].as_array().unwrap().iter().enumerate() {
        assert!(top.as_object().unwrap().len() <= 2 && !top.as_object().unwrap().is_empty());
        assert!(lp["token_logprobs"][i].as_f64().unwrap() <= 0.0);
    }
    assert_eq!(lp["text_offset"][0], 0);

    let (status, e) = post(
        app,
        "/v1/completions",
        json!({"prompt": prompt, "max_tokens": 3, "temperature": 0, "echo": true, "logprobs": 1}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{e}");
    let text = e["choices"][0]["text"].as_str().unwrap();
    assert_eq!(
        text,
        format!("{prompt}{}", v["choices"][0]["text"].as_str().unwrap())
    );
    let elp = &e["choices"][0]["logprobs"];
    let n = elp["tokens"].as_array().unwrap().len();
    let prompt_tokens = e["usage"]["prompt_tokens"].as_u64().unwrap() as usize;
    assert_eq!(n, prompt_tokens + 3, "{elp}");
    assert!(
        elp["token_logprobs"][0].is_null(),
        "the first prompt token has no log-probability"
    );
    assert!(elp["top_logprobs"][0].is_null());
    for i in 1..n {
        assert!(elp["token_logprobs"][i].as_f64().unwrap() <= 0.0, "{elp}");
    }
    let offsets: Vec<u64> = elp["text_offset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_u64().unwrap())
        .collect();
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]), "{offsets:?}");
    // The generated tokens' log-probabilities are the same with and without echo.
    let gen = |x: &Value, from: usize| -> Vec<f64> {
        x["token_logprobs"].as_array().unwrap()[from..]
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    };
    for (a, b) in gen(lp, 0).iter().zip(gen(elp, prompt_tokens)) {
        assert!((a - b).abs() < 1e-3, "{a} vs {b}");
    }
    // Streamed, the echo is the first chunk.
    let (_, _, text) = call(app, "POST", "/v1/completions", Some(json!({"prompt": prompt, "max_tokens": 2, "temperature": 0, "echo": true, "stream": true})), None).await;
    let chunks = sse_chunks(&text);
    assert_eq!(chunks[0]["choices"][0]["text"], prompt);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_models_serve_from_one_process() {
    let app = app_on(vec![
        backend("first", EngineConfig::default()),
        backend(
            "second",
            EngineConfig {
                kv_cache_mib: 64,
                ..EngineConfig::default()
            },
        ),
    ]);
    for model in ["first", "second"] {
        let (status, v) = post(
            &app,
            "/v1/chat/completions",
            question(json!({"model": model})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(v["model"], model);
        assert!(v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .contains("Paris"));
    }
    let (_, _, text) = call(&app, "GET", "/v1/models", None, None).await;
    let list: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
    assert_eq!(list["data"][1]["context_window"], 8192);
    let (_, _, metrics) = call(&app, "GET", "/metrics", None, None).await;
    for model in ["first", "second"] {
        assert!(
            metrics.contains(&format!(
                "inferd_request_ttft_seconds_count{{model=\"{model}\"}} 1"
            )),
            "{metrics}"
        );
        assert!(
            metrics.contains(&format!(
                "inferd_kv_blocks{{model=\"{model}\",state=\"free\"}}"
            )),
            "{metrics}"
        );
    }
    let free = |model: &str| -> u64 {
        let key = format!("inferd_kv_blocks{{model=\"{model}\",state=\"free\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&key))
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(
        free("first") > 4 * free("second"),
        "each model has its own KV budget"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_gets_429_and_a_dead_engine_makes_health_503() {
    let mut config = EngineConfig::default();
    config.scheduler.max_running = 1;
    config.scheduler.max_waiting = 1;
    let local = backend("smollm2-135m", config);
    let engine = local.engine().clone();
    let app = app_on(vec![local]);
    let long = question(json!({"max_tokens": 400, "ignore_eos": true, "stream": true}));
    // One request running, streaming...
    let running = {
        let app = app.clone();
        let body = long.clone();
        tokio::spawn(
            async move { call(&app, "POST", "/v1/chat/completions", Some(body), None).await },
        )
    };
    wait_for(|| {
        engine
            .gauges
            .running
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1
    })
    .await;
    // ...one waiting behind it...
    let waiting = {
        let app = app.clone();
        let body = question(json!({"max_tokens": 2}));
        tokio::spawn(
            async move { call(&app, "POST", "/v1/chat/completions", Some(body), None).await },
        )
    };
    wait_for(|| {
        engine
            .gauges
            .waiting
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1
    })
    .await;
    // ...so the next one finds the queue full.
    let (status, headers, text) = call(
        &app,
        "POST",
        "/v1/chat/completions",
        Some(question(json!({}))),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{text}");
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(running.await.unwrap().0, StatusCode::OK);
    assert_eq!(waiting.await.unwrap().0, StatusCode::OK);
    let (_, _, metrics) = call(&app, "GET", "/metrics", None, None).await;
    assert!(
        metrics
            .contains("inferd_request_errors_total{model=\"smollm2-135m\",type=\"overloaded\"} 1"),
        "{metrics}"
    );

    assert_eq!(
        call(&app, "GET", "/health", None, None).await.0,
        StatusCode::OK
    );
    engine.shutdown();
    wait_for(|| !engine.is_alive()).await;
    let (status, _, text) = call(&app, "GET", "/health", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    let (status, v) = post(&app, "/v1/chat/completions", question(json!({}))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
}

async fn wait_for(cond: impl Fn() -> bool) {
    for _ in 0..2000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("condition not reached within 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_output_and_forced_tool_calls_over_http() {
    let app = app();
    // JSON schema: the content parses and has the required shape; the timings
    // report the mask time.
    let schema = json!({"type": "object", "properties": {"answer": {"type": "string", "maxLength": 20},
        "confident": {"type": "boolean"}}, "required": ["answer", "confident"], "additionalProperties": false});
    let (status, v) = post(
        app,
        "/v1/chat/completions",
        question(
            json!({"max_tokens": 60, "response_format": {"type": "json_schema",
            "json_schema": {"name": "a", "schema": schema, "strict": true}}}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let content: Value =
        serde_json::from_str(v["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    assert!(
        content["answer"].is_string() && content["confident"].is_boolean(),
        "{content}"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert!(v["timings"]["mask_ms"].as_f64().unwrap() > 0.0, "{v}");
    let (_, _, metrics) = call(app, "GET", "/metrics", None, None).await;
    assert!(
        metrics.contains("inferd_request_mask_per_token_seconds_count{model=\"smollm2-135m\"}"),
        "the mask time is a metric"
    );

    // A forced call, streamed: id, type and name first, then argument fragments.
    let tools = json!([{"type": "function", "function": {"name": "lookup",
        "parameters": {"type": "object", "properties": {"query": {"type": "string", "maxLength": 30}}, "required": ["query"]}}}]);
    let body = question(json!({"tools": tools, "stream": true, "max_tokens": 60,
        "tool_choice": {"type": "function", "function": {"name": "lookup"}}, "parallel_tool_calls": false}));
    let (status, _, text) = call(app, "POST", "/v1/chat/completions", Some(body), None).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let chunks = sse_chunks(&text);
    let deltas: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array())
        .flatten()
        .collect();
    assert_eq!(deltas[0]["function"]["name"], "lookup");
    assert_eq!(deltas[0]["type"], "function");
    assert!(deltas[0]["id"].as_str().unwrap().starts_with("call_"));
    assert!(deltas[1..]
        .iter()
        .all(|d| d.get("id").is_none() && d["function"].get("name").is_none()));
    let args: String = deltas
        .iter()
        .map(|d| d["function"]["arguments"].as_str().unwrap())
        .collect();
    let args: Value = serde_json::from_str(&args).unwrap();
    assert!(args["query"].is_string(), "{args}");
    let last = chunks
        .iter()
        .rev()
        .find(|c| c["choices"][0]["finish_reason"].is_string())
        .unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "tool_calls");

    // What the compiler refuses is a 400 naming the field.
    let (status, v) = post(
        app,
        "/v1/completions",
        json!({"prompt": "x", "guided_json": {"type": "array", "contains": {"type": "integer"}}}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["param"], "guided_json");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("contains"),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_speculating_engine_reports_drafts_in_timings_and_metrics_and_answers_the_same() {
    let spec = EngineConfig {
        speculation: Some(inferd_engine::SpecConfig {
            adaptive: false,
            ..Default::default()
        }),
        ..EngineConfig::default()
    };
    let app = app_on(vec![
        backend("plain", EngineConfig::default()),
        backend("spec", spec),
    ]);
    let copy = "Repeat this list exactly: red, green, blue, yellow, purple, orange, \
                black, white, grey, brown, pink, gold.";
    let ask = |model: &str, stream: bool| {
        json!({"model": model, "messages": [{"role": "user", "content": copy}],
               "temperature": 0, "max_tokens": 32, "stream": stream,
               "stream_options": {"include_usage": true}})
    };
    let (_, _, plain) = call(
        &app,
        "POST",
        "/v1/chat/completions",
        Some(ask("plain", false)),
        None,
    )
    .await;
    let (status, _, text) = call(
        &app,
        "POST",
        "/v1/chat/completions",
        Some(ask("spec", false)),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let (plain, v): (Value, Value) = (
        serde_json::from_str(&plain).unwrap(),
        serde_json::from_str(&text).unwrap(),
    );
    assert_eq!(
        v["choices"][0]["message"]["content"], plain["choices"][0]["message"]["content"],
        "speculation changed a greedy answer"
    );
    let t = &v["timings"];
    let (drafted, accepted) = (
        t["spec_draft_tokens"].as_u64().expect("drafts reported"),
        t["spec_accepted_tokens"]
            .as_u64()
            .expect("acceptances reported"),
    );
    assert!(accepted > 0 && accepted <= drafted, "{t}");
    assert!(
        plain["timings"].get("spec_draft_tokens").is_none(),
        "only a speculating request reports drafts"
    );
    // Streaming: the final chunk carries them too.
    let (_, _, sse) = call(
        &app,
        "POST",
        "/v1/chat/completions",
        Some(ask("spec", true)),
        None,
    )
    .await;
    assert!(sse.contains("\"spec_accepted_tokens\""), "{sse}");
    let (_, _, metrics) = call(&app, "GET", "/metrics", None, None).await;
    let value = |key: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("{key} missing: {metrics}"))
            .trim()
            .parse()
            .unwrap()
    };
    // The streamed run accepted drafts too.
    assert!(value("inferd_spec_accepted_tokens_total{model=\"spec\"}") > accepted);
    assert!(
        value("inferd_spec_accepted_tokens_total{model=\"spec\"}")
            <= value("inferd_spec_draft_tokens_total{model=\"spec\"}")
    );
    assert_eq!(value("inferd_spec_draft_tokens_total{model=\"plain\"}"), 0);
    assert!(value("inferd_spec_accepted_at_position_total{model=\"spec\",position=\"1\"}") > 0);
    assert!(metrics.contains("inferd_spec_draft_seconds_total{model=\"spec\"}"));
    let seconds = |key: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("{key} missing: {metrics}"))
            .trim()
            .parse()
            .unwrap()
    };
    // Verifying took time where drafts were scored, and none where nothing was drafted.
    assert!(seconds("inferd_spec_verify_seconds_total{model=\"spec\"}") > 0.0);
    assert_eq!(
        seconds("inferd_spec_verify_seconds_total{model=\"plain\"}"),
        0.0
    );
}
