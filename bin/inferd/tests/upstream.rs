//! `[[upstreams]]`: one `inferd serve` (the upstream, with an API key) behind
//! another that answers for it by name. Both are real processes on loopback.
//! Answers through the front equal the upstream's own, streamed chunk by chunk;
//! the upstream's refusals come back with its message; a dead upstream is a
//! 503 naming it, at once.

mod common;

use common::{http, http_with, model, serve, temp_file};
use serde_json::Value;

const KEY: &str = "upstream-secret";

fn chat(model: &str, stream: bool) -> String {
    format!(
        r#"{{"model": "{model}", "messages": [{{"role": "user", "content": "What is the capital of France?"}}], "temperature": 0, "max_tokens": 12, "stream": {stream}}}"#
    )
}

/// The `data:` payloads of an SSE body.
fn sse(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

#[test]
fn an_upstream_is_served_by_name_streams_relay_and_failures_are_named() {
    let small = format!("small={}", model());
    let (upstream, up_addr, _) = serve(
        &[
            "--port",
            "0",
            "--threads",
            "1",
            "--api-key",
            KEY,
            "--model",
            &small,
        ],
        &[],
    );
    let config = format!(
        "port = 0\nthreads = 1\n\n[[upstreams]]\nname = \"remote\"\nbase_url = \"http://{up_addr}/v1\"\nmodel = \"small\"\napi_key_env = \"INFERD_TEST_UPSTREAM_KEY\"\ncontext_window = 2048\n"
    );
    let p = temp_file("upstream.toml", &config);
    let (_front, addr, log) = serve(
        &["--config", p.to_str().unwrap()],
        &[("INFERD_TEST_UPSTREAM_KEY", KEY)],
    );
    assert!(log.contains("upstream added"), "{log}");
    let auth = format!("Authorization: Bearer {KEY}\r\n");

    // The front lists the upstream under its own name and needs no local model.
    let (status, body) = http(&addr, "GET", "/v1/models", "");
    assert_eq!(status, 200, "{body}");
    let list: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list["data"][0]["id"], "remote", "{body}");

    // The same greedy answer as asking the upstream directly (the front sent the key).
    let (status, direct) = http_with(
        &up_addr,
        "POST",
        "/v1/chat/completions",
        &auth,
        &chat("small", false),
    );
    assert_eq!(status, 200, "{direct}");
    let (status, relayed) = http(
        &addr,
        "POST",
        "/v1/chat/completions",
        &chat("remote", false),
    );
    assert_eq!(status, 200, "{relayed}");
    let (d, r): (Value, Value) = (
        serde_json::from_str(&direct).unwrap(),
        serde_json::from_str(&relayed).unwrap(),
    );
    let text = d["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text.contains("Paris"), "{direct}");
    assert_eq!(r["choices"][0]["message"]["content"], text, "{relayed}");
    assert_eq!(r["model"], "remote");
    assert_eq!(
        r["choices"][0]["finish_reason"],
        d["choices"][0]["finish_reason"]
    );
    assert_eq!(
        r["usage"]["prompt_tokens"], d["usage"]["prompt_tokens"],
        "{relayed}"
    );
    assert_eq!(
        r["usage"]["completion_tokens"],
        d["usage"]["completion_tokens"]
    );

    // Streamed: the same text in several content chunks, a finish reason, [DONE].
    let (status, body) = http(&addr, "POST", "/v1/chat/completions", &chat("remote", true));
    assert_eq!(status, 200, "{body}");
    let events = sse(&body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{body}");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let pieces: Vec<&str> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .filter(|t| !t.is_empty())
        .collect();
    assert!(pieces.len() > 2, "relayed token by token: {body}");
    assert_eq!(pieces.concat(), text);
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "stop"
                || c["choices"][0]["finish_reason"] == "length"),
        "{body}"
    );

    // Completions relay too.
    let completion = r#"{"prompt": "The capital of France is", "temperature": 0, "max_tokens": 6, "model": "MODEL"}"#;
    let (_, direct) = http_with(
        &up_addr,
        "POST",
        "/v1/completions",
        &auth,
        &completion.replace("MODEL", "small"),
    );
    let (status, relayed) = http(
        &addr,
        "POST",
        "/v1/completions",
        &completion.replace("MODEL", "remote"),
    );
    assert_eq!(status, 200, "{relayed}");
    let (d, r): (Value, Value) = (
        serde_json::from_str(&direct).unwrap(),
        serde_json::from_str(&relayed).unwrap(),
    );
    assert_eq!(
        r["choices"][0]["text"], d["choices"][0]["text"],
        "{relayed}"
    );

    // A constraint travels in its own field; the upstream's refusal comes back
    // as a 400 with its message, naming the upstream.
    let bad = chat("remote", false).replace(
        r#""stream": false"#,
        r#""stream": false, "guided_regex": "(unclosed""#,
    );
    let (status, body) = http(&addr, "POST", "/v1/chat/completions", &bad);
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("upstream `remote`") && body.contains("guided_regex"),
        "{body}"
    );
    let choice = chat("remote", false).replace(
        r#""stream": false"#,
        r#""stream": false, "guided_choice": ["yes", "no"]"#,
    );
    let (status, body) = http(&addr, "POST", "/v1/chat/completions", &choice);
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let answer = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(answer == "yes" || answer == "no", "{body}");

    // The upstream goes away: a 503 naming it, not a hang.
    drop(upstream);
    let started = std::time::Instant::now();
    let (status, body) = http(
        &addr,
        "POST",
        "/v1/chat/completions",
        &chat("remote", false),
    );
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("upstream `remote`") && body.contains("connect"),
        "{body}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

#[test]
fn upstream_config_errors_name_the_entry() {
    let fails = |name: &str, text: &str| {
        let out = common::inferd()
            .args(["serve", "--config"])
            .arg(temp_file(name, text))
            .env_remove("INFERD_NO_SUCH_KEY_VAR")
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = fails(
        "nokey.toml",
        "[[upstreams]]\nname = \"r\"\nbase_url = \"http://127.0.0.1:9/v1\"\napi_key_env = \"INFERD_NO_SUCH_KEY_VAR\"\n",
    );
    assert!(
        err.contains("upstreams[0]") && err.contains("INFERD_NO_SUCH_KEY_VAR"),
        "{err}"
    );
    let err = fails(
        "url.toml",
        "[[upstreams]]\nname = \"r\"\nbase_url = \"localhost:8080\"\nttft_timeout_secs = 0\n",
    );
    assert!(
        err.contains("base_url") && err.contains("ttft_timeout_secs"),
        "{err}"
    );
    let err = fails(
        "typo.toml",
        "[[upstreams]]\nname = \"r\"\nbase_url = \"http://127.0.0.1:9/v1\"\nmax_conurrent = 3\n",
    );
    assert!(err.contains("max_conurrent"), "{err}");
}
