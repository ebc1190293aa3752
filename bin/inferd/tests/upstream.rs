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

/// The upstream: SmolLM2 as `small`, behind [`KEY`].
fn start_upstream() -> (common::Killed, String) {
    start_upstream_on("0")
}

/// The upstream on `port`.
fn start_upstream_on(port: &str) -> (common::Killed, String) {
    let small = format!("small={}", model());
    let args = [
        "--port",
        port,
        "--threads",
        "1",
        "--api-key",
        KEY,
        "--model",
        &small,
    ];
    let (child, addr, _) = serve(&args, &[]);
    (child, addr)
}

/// A port nothing listens on (yet).
fn free_port() -> u16 {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    free.local_addr().unwrap().port()
}

/// The front: `inferd serve` with `config`, holding the upstream's key.
fn front(config: &std::path::Path) -> (common::Killed, String, String) {
    serve(
        &["--config", config.to_str().unwrap()],
        &[("INFERD_TEST_UPSTREAM_KEY", KEY)],
    )
}

#[test]
fn an_upstream_is_served_by_name_streams_relay_and_failures_are_named() {
    let (upstream, up_addr) = start_upstream();
    let config = format!(
        "port = 0\nthreads = 1\n\n[[upstreams]]\nname = \"remote\"\nbase_url = \"http://{up_addr}/v1\"\nmodel = \"small\"\napi_key_env = \"INFERD_TEST_UPSTREAM_KEY\"\ncontext_window = 2048\n"
    );
    let p = temp_file("upstream.toml", &config);
    let (_front, addr, log) = front(&p);
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

/// `inferd serve` with the config `text`, which must fail: its stderr.
fn fails_with(name: &str, text: &str) -> String {
    let out = common::inferd()
        .args(["serve", "--config"])
        .arg(temp_file(name, text))
        .env_remove("INFERD_NO_SUCH_KEY_VAR")
        .output()
        .unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn upstream_config_errors_name_the_entry() {
    let fails = fails_with;
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
    let err = fails(
        "tiers.toml",
        "[[upstreams]]\nname = \"r\"\nbase_url = \"http://127.0.0.1:9/v1\"\n\n[[tiers]]\nname = \"r\"\nbackends = [\"nope\"]\n\n[[tiers]]\nname = \"t\"\nbackends = []\n\n[routing]\nmax_attempts = 0\nprivate_patterns = [\"(\"]\n",
    );
    for want in [
        "tiers[0].name` \"r\" is already",
        "tiers[0].backends[0]` \"nope\"",
        "tiers[1].backends` is empty",
        "routing.max_attempts",
        "routing.private_patterns[0]",
    ] {
        assert!(err.contains(want), "{want}: {err}");
    }
}

/// The sum of metric `name` over the series whose labels contain every one of
/// `labels` (`tier="on-box"`), from a server's `/metrics`.
fn metric(addr: &str, name: &str, labels: &[&str]) -> f64 {
    let auth = format!("Authorization: Bearer {KEY}\r\n");
    let (_, body) = http_with(addr, "GET", "/metrics", &auth, "");
    let series = format!("{name}{{");
    body.lines()
        .filter(|l| l.starts_with(&series) && labels.iter().all(|w| l.contains(w)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `inferd_prompt_tokens_total` summed over models: what a server was asked.
fn prompt_tokens_served(addr: &str) -> f64 {
    metric(addr, "inferd_prompt_tokens_total", &[])
}

fn ask_auto(addr: &str, model: &str, content: &str, extra: &str) -> (u16, String, Value) {
    let body = format!(
        r#"{{"model": "{model}", "messages": [{{"role": "user", "content": {content:?}}}], "temperature": 0, "max_tokens": 8{extra}}}"#
    );
    let (status, head, body) = common::request(addr, "POST", "/v1/chat/completions", "", &body);
    let v = serde_json::from_str(&body).unwrap_or(Value::Null);
    (status, head, v)
}

/// Tiers over a dead upstream (free), the front's own model (free, capped at
/// 200 tokens) and a real upstream (priced): cheapest first, fallbacks named
/// in the route, context and privacy policies, explicit tiers, and one clear
/// error once every tier failed.
#[test]
fn tiers_route_by_cost_context_and_privacy_and_fall_back() {
    let (upstream, up_addr) = start_upstream();
    let dead_port = free_port();
    let remote = "api_key_env = \"INFERD_TEST_UPSTREAM_KEY\"\nprice_in_per_mtok = 0.5\nprice_out_per_mtok = 1.5";
    let config = common::local_and_remote(&up_addr, remote)
        + &format!(
            r#"
[[upstreams]]
name = "spot"
base_url = "http://127.0.0.1:{dead_port}/v1"

[[tiers]]
name = "cheap"
backends = ["spot"]

[[tiers]]
name = "on-box"
backends = ["local"]
context_window = 200

[[tiers]]
name = "big"
backends = ["remote"]

[routing]
private_patterns = ["email"]
"#
        );
    let p = temp_file("tiers.toml", &config);
    let (_front, addr, log) = front(&p);
    assert!(
        log.contains("tier=on-box local=true") && log.contains("tier=big local=false"),
        "{log}"
    );
    let short = "What is the capital of France?";
    let long = format!(
        "{} What is the capital of France?",
        "Tell me about the weather in spring. ".repeat(20)
    );

    // Cheapest first: the dead upstream fails to connect, the free local tier answers.
    let before = prompt_tokens_served(&up_addr);
    let (status, head, v) = ask_auto(&addr, "auto", short, "");
    assert_eq!(status, 200, "{v}");
    let route = &v["route"];
    assert_eq!(
        (route["tier"].as_str(), route["backend"].as_str()),
        (Some("on-box"), Some("local")),
        "{v}"
    );
    assert_eq!(route["reason"], "fallback", "{v}");
    assert_eq!(route["attempts"][0]["backend"], "spot", "{v}");
    assert!(
        route["attempts"][0]["error"]
            .as_str()
            .unwrap()
            .contains("connect"),
        "{v}"
    );
    assert!(
        head.contains("x-inferd-route: tier=on-box; backend=local; reason=fallback; attempts=1"),
        "{head}"
    );
    let overhead: f64 = head
        .split("x-inferd-overhead-ms: ")
        .nth(1)
        .and_then(|r| r.lines().next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("an x-inferd-overhead-ms header: {head}"));
    let in_body = route["overhead_ms"].as_f64().unwrap();
    assert!((overhead - in_body).abs() <= 0.001, "{overhead} vs {v}");
    assert!(
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .contains("Paris"),
        "{v}"
    );

    // Too long for the local tier's 200 tokens: the priced upstream answers.
    let (status, _, v) = ask_auto(&addr, "auto", &long, "");
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["route"]["tier"].as_str(), v["route"]["reason"].as_str()),
        (Some("big"), Some("context+fallback")),
        "{v}"
    );
    assert!(
        prompt_tokens_served(&up_addr) > before,
        "the upstream served it"
    );

    // Private (tagged, or by a detector): never upstream; too long to stay local is a 400.
    let before = prompt_tokens_served(&up_addr);
    let (status, _, v) = ask_auto(&addr, "auto", short, r#", "metadata": {"private": "true"}"#);
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["route"]["tier"].as_str(), v["route"]["reason"].as_str()),
        (Some("on-box"), Some("privacy")),
        "{v}"
    );
    assert!(
        v["route"].get("attempts").is_none(),
        "the dead upstream was not tried: {v}"
    );
    let (status, _, v) = ask_auto(
        &addr,
        "auto",
        &format!("{long} Mail me at ann@example.com."),
        "",
    );
    assert_eq!(status, 400, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("private") && msg.contains("email") && msg.contains("on-box"),
        "{msg}"
    );
    let (status, _, v) = ask_auto(&addr, "big", short, r#", "metadata": {"private": true}"#);
    assert_eq!(
        status, 400,
        "a private request naming an upstream tier is refused: {v}"
    );
    assert_eq!(
        prompt_tokens_served(&up_addr),
        before,
        "nothing private reached the upstream"
    );

    // A tier by name: explicit.
    let (status, _, v) = ask_auto(&addr, "big", short, "");
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["route"]["tier"].as_str(), v["route"]["reason"].as_str()),
        (Some("big"), Some("explicit")),
        "{v}"
    );

    // Streamed: the route comes first, as a chunk without choices.
    let body = format!(
        r#"{{"model": "auto", "messages": [{{"role": "user", "content": {short:?}}}], "temperature": 0, "max_tokens": 8, "stream": true}}"#
    );
    let (status, head, body) = common::request(&addr, "POST", "/v1/chat/completions", "", &body);
    assert_eq!(status, 200, "{body}");
    assert!(head.contains("x-inferd-route: tier=on-box"), "{head}");
    let first: Value = serde_json::from_str(&sse(&body)[0]).unwrap();
    assert_eq!(first["route"]["tier"], "on-box", "{body}");
    assert_eq!(first["choices"], Value::Array(vec![]));

    // Routing and pool metrics.
    let routed = |tier: &str, reason: &str| {
        let (t, r) = (format!("tier=\"{tier}\""), format!("reason=\"{reason}\""));
        metric(
            &addr,
            "inferd_gateway_routes_total",
            &["router=\"auto\"", &t, &r],
        )
    };
    assert_eq!(
        routed("on-box", "fallback"),
        2.0,
        "the short chat and the stream"
    );
    assert_eq!(routed("big", "context+fallback"), 1.0);
    assert_eq!(routed("on-box", "privacy"), 1.0);
    assert_eq!(
        metric(
            &addr,
            "inferd_gateway_routes_total",
            &["router=\"big\"", "reason=\"explicit\""]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &addr,
            "inferd_gateway_fallbacks_total",
            &["backend=\"spot\""]
        ),
        3.0
    );
    assert_eq!(
        metric(
            &addr,
            "inferd_upstream_failures_total",
            &["upstream=\"spot\""]
        ),
        3.0
    );
    assert_eq!(
        metric(&addr, "inferd_upstream_slots", &["upstream=\"remote\""]),
        256.0
    );
    assert_eq!(
        metric(
            &addr,
            "inferd_upstream_requests_in_flight",
            &["upstream=\"remote\""]
        ),
        0.0
    );

    // The upstream dies: the long request has nowhere left, one 503 naming each attempt.
    drop(upstream);
    let (status, _, v) = ask_auto(&addr, "auto", &long, "");
    assert_eq!(status, 503, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("every eligible tier failed")
            && msg.contains("spot")
            && msg.contains("remote"),
        "{msg}"
    );
}

/// A circuit opens after `failure_threshold` failures (then refuses at once),
/// and the first request after `open_secs` probes it: once the upstream is
/// back, the probe succeeds and the circuit closes.
#[test]
fn a_circuit_opens_after_failures_and_closes_when_the_upstream_is_back() {
    let port = free_port();
    let config = format!(
        "port = 0\nthreads = 1\n\n[[upstreams]]\nname = \"flaky\"\nbase_url = \"http://127.0.0.1:{port}/v1\"\nmodel = \"small\"\napi_key_env = \"INFERD_TEST_UPSTREAM_KEY\"\nfailure_threshold = 2\nopen_secs = 1.5\n"
    );
    let p = temp_file("circuit.toml", &config);
    let (_front, addr, _) = front(&p);
    let ask = || {
        let (status, body) = http(&addr, "POST", "/v1/chat/completions", &chat("flaky", false));
        (status, body)
    };
    for _ in 0..2 {
        let (status, body) = ask();
        assert!(status == 503 && body.contains("connect"), "{status} {body}");
    }
    let (status, body) = ask();
    assert!(
        status == 503 && body.contains("circuit open"),
        "{status} {body}"
    );
    let (status, body) = http(&addr, "GET", "/health", "");
    assert_eq!(status, 503, "an open circuit is not ready: {body}");
    let open = |addr: &str| {
        metric(
            addr,
            "inferd_upstream_circuit_open",
            &["upstream=\"flaky\""],
        )
    };
    assert_eq!(open(&addr), 1.0);

    // The upstream comes up on that port; after open_secs the probe closes the circuit.
    let (_upstream, _) = start_upstream_on(&port.to_string());
    std::thread::sleep(std::time::Duration::from_millis(1600));
    let (status, body) = ask();
    assert_eq!(status, 200, "the probe went through: {body}");
    let (status, body) = ask();
    assert_eq!(status, 200, "closed again: {body}");
    assert_eq!(open(&addr), 0.0);
}

#[test]
fn active_health_checks_open_and_close_the_circuit_without_requests() {
    let port = free_port();
    // open_secs is long: only a passing health check can close the circuit in time.
    let config = format!(
        "port = 0\nthreads = 1\n\n[[upstreams]]\nname = \"watched\"\nbase_url = \"http://127.0.0.1:{port}/v1\"\nmodel = \"small\"\napi_key_env = \"INFERD_TEST_UPSTREAM_KEY\"\nfailure_threshold = 2\nopen_secs = 600\nhealth_check_secs = 0.2\n"
    );
    let p = temp_file("health.toml", &config);
    let (_front, addr, _) = front(&p);
    let open = || {
        metric(
            &addr,
            "inferd_upstream_circuit_open",
            &["upstream=\"watched\""],
        )
    };
    let until = |want: f64| {
        let started = std::time::Instant::now();
        while open() != want {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(20),
                "circuit_open never became {want}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    until(1.0);
    let (status, body) = http(
        &addr,
        "POST",
        "/v1/chat/completions",
        &chat("watched", false),
    );
    assert!(
        status == 503 && body.contains("circuit open"),
        "{status} {body}"
    );

    let (_upstream, _) = start_upstream_on(&port.to_string());
    until(0.0);
    let (status, body) = http(
        &addr,
        "POST",
        "/v1/chat/completions",
        &chat("watched", false),
    );
    assert_eq!(status, 200, "{body}");
}

/// A TLS front on loopback for `upstream` with a fresh self-signed certificate
/// for `localhost`: its port and the certificate's PEM.
fn tls_front(upstream: String) -> (u16, String) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let pem = cert.cert.pem();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, upstream) = (acceptor.clone(), upstream.clone());
                tokio::spawn(async move {
                    // A handshake the client refuses just ends the connection.
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    if let Ok(mut plain) = tokio::net::TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                    }
                });
            }
        });
    });
    (port, pem)
}

#[test]
fn an_https_upstream_is_reached_over_tls_trusting_its_ca_file_only() {
    let (_upstream, up_addr) = start_upstream();
    let (port, pem) = tls_front(up_addr.clone());
    let ca = temp_file("tls-ca.pem", &pem);
    let config = format!(
        "port = 0\nthreads = 1\n\n[[upstreams]]\nname = \"secure\"\nbase_url = \"https://localhost:{port}/v1\"\nmodel = \"small\"\napi_key_env = \"INFERD_TEST_UPSTREAM_KEY\"\nca_file = {ca:?}\n\n[[upstreams]]\nname = \"untrusted\"\nbase_url = \"https://localhost:{port}/v1\"\nmodel = \"small\"\napi_key_env = \"INFERD_TEST_UPSTREAM_KEY\"\n"
    );
    let p = temp_file("tls.toml", &config);
    let (_front, addr, _) = front(&p);
    let auth = format!("Authorization: Bearer {KEY}\r\n");
    let (_, direct) = http_with(
        &up_addr,
        "POST",
        "/v1/chat/completions",
        &auth,
        &chat("small", false),
    );
    let direct: Value = serde_json::from_str(&direct).unwrap();
    for stream in [false, true] {
        let (status, body) = http(
            &addr,
            "POST",
            "/v1/chat/completions",
            &chat("secure", stream),
        );
        assert_eq!(status, 200, "{body}");
        if !stream {
            let v: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(
                v["choices"][0]["message"], direct["choices"][0]["message"],
                "{body}"
            );
        } else {
            assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
        }
    }
    let (status, body) = http(
        &addr,
        "POST",
        "/v1/chat/completions",
        &chat("untrusted", false),
    );
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("certificate") || body.contains("UnknownIssuer"),
        "{body}"
    );
    let err = fails_with(
        "tls-bad-ca.toml",
        &format!("[[upstreams]]\nname = \"r\"\nbase_url = \"https://localhost:{port}/v1\"\nca_file = {:?}\n", p.to_str().unwrap()),
    );
    assert!(
        err.contains("ca_file") || err.contains("CA certificates"),
        "{err}"
    );
}
