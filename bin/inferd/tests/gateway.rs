//! The gateway over real processes on loopback: replica balancing across two
//! `inferd serve` replicas, confidence escalation from a local model to an
//! upstream `inferd serve`, and faults injected by a proxy the test controls
//! (5xx answers, a slow first token, a connection cut mid-answer) between the
//! gateway and its upstream.

mod common;

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{chat_body, http, metric, model, post, serve, temp_file, user};
use serde_json::Value;

/// An `inferd serve` of SmolLM2 as `small` on one thread.
fn replica() -> (common::Killed, String) {
    let small = format!("small={}", model());
    let (child, addr, _) = serve(&["--port", "0", "--threads", "1", "--model", &small], &[]);
    (child, addr)
}

#[test]
fn replicas_are_balanced_by_round_robin_load_and_cached_prefix() {
    let (_a, a) = replica();
    let (_b, b) = replica();
    let upstream = |name: &str, addr: &str| {
        format!("[[upstreams]]\nname = \"{name}\"\nbase_url = \"http://{addr}/v1\"\nmodel = \"small\"\ncontext_window = 2048\n\n")
    };
    let tier = |name: &str, balance: &str| {
        format!("[[tiers]]\nname = \"{name}\"\nbackends = [\"r1\", \"r2\"]\nbalance = \"{balance}\"\n\n")
    };
    let config = format!(
        "port = 0\n\n{}{}{}{}{}",
        upstream("r1", &a),
        upstream("r2", &b),
        tier("rr", "round_robin"),
        tier("lo", "least_outstanding"),
        tier("ca", "cache_aware"),
    );
    let p = temp_file("balance.toml", &config);
    let (_gw, gw, log) = serve(&["--config", p.to_str().unwrap()], &[]);
    assert!(log.contains("balance=cache_aware"), "{log}");

    // Round robin alternates.
    let backends: Vec<String> = (0..4)
        .map(|i| {
            let (status, v) = post(&gw, &chat_body("rr", &user(&format!("Count to {i}.")), ""));
            assert_eq!(status, 200, "{v}");
            assert_eq!(v["route"]["balance"], "round_robin", "{v}");
            assert!(v["route"]["overhead_ms"].as_f64().unwrap() >= 0.0, "{v}");
            v["route"]["backend"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_ne!(backends[0], backends[1]);
    assert_eq!((&backends[0], &backends[1]), (&backends[2], &backends[3]));

    // Least outstanding: while one long stream holds a replica, the next
    // request goes to the other.
    let long = chat_body(
        "lo",
        &user("Write a long story about a river."),
        r#", "max_tokens": 400, "ignore_eos": true, "stream": true"#,
    );
    let mut stream = TcpStream::connect(&gw).unwrap();
    write!(
        stream,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{long}",
        long.len()
    )
    .unwrap();
    let mut head = [0u8; 2048];
    let n = stream.read(&mut head).unwrap();
    let head = String::from_utf8_lossy(&head[..n]).to_string();
    let busy = head
        .split("backend=")
        .nth(1)
        .and_then(|r| r.split(';').next())
        .unwrap_or_else(|| panic!("{head}"))
        .to_owned();
    for _ in 0..2 {
        let (status, v) = post(&gw, &chat_body("lo", &user("Say hi."), ""));
        assert_eq!(status, 200, "{v}");
        assert_ne!(v["route"]["backend"], busy.as_str(), "{v}");
    }
    drop(stream);

    // Cache-aware: each turn of a conversation goes to the replica that
    // holds its history, and that replica serves the history from its cache.
    let system = "You are a careful assistant who answers in one short sentence. ".repeat(12);
    let mut homes = Vec::new();
    for c in 0..2 {
        let mut messages = vec![
            serde_json::json!({"role": "system", "content": format!("Conversation {c}. {system}")}),
            serde_json::json!({"role": "user", "content": "Name a colour."}),
        ];
        let mut home: Option<String> = None;
        for turn in 0..3 {
            let (status, v) = post(&gw, &chat_body("ca", &Value::Array(messages.clone()), ""));
            assert_eq!(status, 200, "{v}");
            let route = &v["route"];
            assert_eq!(route["balance"], "cache_aware", "{v}");
            let backend = route["backend"].as_str().unwrap().to_owned();
            let cached = v["usage"]["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .unwrap_or(0);
            match &home {
                None => home = Some(backend),
                Some(h) => {
                    assert_eq!(&backend, h, "turn {turn} left its replica: {v}");
                    assert!(route["prefix_match"].as_f64().unwrap() > 0.5, "{v}");
                    assert!(
                        cached > 100,
                        "turn {turn}: the replica read the history from its cache: {v}"
                    );
                }
            }
            let answer = v["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_owned();
            messages.push(serde_json::json!({"role": "assistant", "content": answer}));
            messages.push(serde_json::json!({"role": "user", "content": "And another?"}));
        }
        homes.push(home.unwrap());
    }
    assert_ne!(
        homes[0], homes[1],
        "two new conversations on an idle tier spread out"
    );
    // A new conversation on conversation 1's system prompt goes where that
    // prompt is cached.
    let messages = serde_json::json!([
        {"role": "system", "content": format!("Conversation 1. {system}")},
        {"role": "user", "content": "Name a fruit."}
    ]);
    let (status, v) = post(&gw, &chat_body("ca", &messages, ""));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["route"]["backend"], homes[1].as_str(), "{v}");
    assert!(v["route"]["prefix_match"].as_f64().unwrap() > 0.5, "{v}");
}

/// A gateway with SmolLM2 in-process as the free tier and `upper` as a priced
/// upstream tier, escalating below `threshold`.
fn escalating_gateway(upper: &str, threshold: f64, hold: usize) -> (common::Killed, String) {
    let config = common::local_and_remote(upper, "price_in_per_mtok = 1.0\nretries = 0")
        + &format!(
            r#"
[[tiers]]
name = "on-box"
backends = ["local"]

[[tiers]]
name = "big"
backends = ["remote"]

[routing.escalation]
threshold = {threshold:?}
hold_tokens = {hold}
"#
        );
    let p = temp_file(&format!("escalate-{hold}.toml"), &config);
    let (child, addr, _) = serve(&["--config", p.to_str().unwrap()], &[]);
    (child, addr)
}

fn served_prompt_tokens(addr: &str) -> f64 {
    metric(addr, "inferd_prompt_tokens_total", &[])
}

#[test]
fn unsure_answers_escalate_to_the_next_tier_and_sure_ones_stay() {
    let (mut upper, up) = replica();
    let question = user("What is the capital of France?");

    // No local answer is sure to 0 nats per token: every one escalates.
    let (_g, always) = escalating_gateway(&up, 0.0, 3);
    let before = served_prompt_tokens(&up);
    let (status, v) = post(&always, &chat_body("auto", &question, ""));
    assert_eq!(status, 200, "{v}");
    let route = &v["route"];
    assert_eq!(
        (route["tier"].as_str(), route["reason"].as_str()),
        (Some("big"), Some("escalation")),
        "{v}"
    );
    let c = &route["confidence"];
    assert_eq!(
        (c["tier"].as_str(), c["escalated"].as_bool()),
        (Some("on-box"), Some(true)),
        "{v}"
    );
    assert!(
        c["score"].as_f64().unwrap() < 0.0 && c["tokens"].as_u64().unwrap() > 0,
        "{v}"
    );
    assert_eq!(c["signal"], "mean_logprob");
    assert!(
        served_prompt_tokens(&up) > before,
        "the upper tier answered"
    );
    assert!(v["choices"][0]["logprobs"].is_null(), "none asked for: {v}");
    assert_eq!(
        metric(
            &always,
            "inferd_gateway_escalations_total",
            &[
                "scored=\"on-box\"",
                "answered=\"big\"",
                "escalated=\"true\""
            ]
        ),
        1.0
    );

    // Streamed with a hold: the route chunk says so before any text.
    let body = chat_body("auto", &question, r#", "stream": true"#);
    let (status, head, text) = common::request(&always, "POST", "/v1/chat/completions", "", &body);
    assert_eq!(status, 200, "{text}");
    assert!(
        head.contains("reason=escalation") && head.contains("escalated=true"),
        "{head}"
    );
    let first: Value =
        serde_json::from_str(text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap()).unwrap();
    assert_eq!(first["route"]["confidence"]["escalated"], true, "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");

    // A threshold nothing falls below: the local answer stands, scored,
    // with the alternatives the client asked for and no more.
    let (_g2, never) = escalating_gateway(&up, -1e9, 0);
    let before = served_prompt_tokens(&up);
    let (status, v) = post(
        &never,
        &chat_body(
            "auto",
            &question,
            r#", "logprobs": true, "top_logprobs": 1"#,
        ),
    );
    assert_eq!(status, 200, "{v}");
    let route = &v["route"];
    assert_eq!(
        (route["tier"].as_str(), route["reason"].as_str()),
        (Some("on-box"), Some("cost")),
        "{v}"
    );
    assert_eq!(route["confidence"]["escalated"], false, "{v}");
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert!(
        !content.is_empty()
            && content
                .iter()
                .all(|t| t["top_logprobs"].as_array().unwrap().len() == 1),
        "{v}"
    );
    // Streamed without a hold: not scored.
    let (status, _, text) = common::request(
        &never,
        "POST",
        "/v1/chat/completions",
        "",
        &chat_body("auto", &question, r#", "stream": true"#),
    );
    assert_eq!(status, 200);
    assert!(!text.contains("confidence"), "{text}");
    assert_eq!(
        served_prompt_tokens(&up),
        before,
        "the upper tier was not asked"
    );

    // A TTFT target: the local engine, measured by now, predicts its first
    // token; a target it cannot meet spills to the upstream tier, one it can
    // stays local; a bad target is a 400 naming it.
    let slo = |ms: &str| {
        let extra = format!(r#", "metadata": {{"ttft_slo_ms": "{ms}"}}"#);
        post(&never, &chat_body("auto", &question, &extra))
    };
    let (status, v) = slo("0.001");
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["route"]["tier"].as_str(), v["route"]["reason"].as_str()),
        (Some("big"), Some("slo")),
        "{v}"
    );
    let (status, v) = slo("600000");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["route"]["tier"], "on-box", "{v}");
    let (status, v) = slo("soon");
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["param"], "metadata.ttft_slo_ms", "{v}");

    // The upper tier down: the local answer stands, the failed try named.
    let _ = upper.0.kill();
    let _ = upper.0.wait();
    let (status, v) = post(&always, &chat_body("auto", &question, ""));
    assert_eq!(status, 200, "{v}");
    let route = &v["route"];
    assert_eq!(route["tier"], "on-box", "{v}");
    assert_eq!(route["confidence"]["escalated"], false, "{v}");
    assert_eq!(route["attempts"][0]["tier"], "big", "{v}");
    assert!(
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .len()
            > 1,
        "{v}"
    );
}

/// What the fault proxy does with the next request.
#[derive(Clone, Debug)]
enum Fault {
    /// Answers this status itself, with an OpenAI-style error body.
    Status(u16),
    /// Relays, but holds the upstream's answer this long first.
    Delay(Duration),
    /// Relays the answer's head and this many bytes of its body, then
    /// closes both connections.
    CutAfter(usize),
}

/// A proxy in front of an upstream: each request takes the next queued fault,
/// or is relayed untouched when none is queued.
struct FaultProxy {
    addr: String,
    faults: Arc<Mutex<VecDeque<Fault>>>,
    requests: Arc<AtomicUsize>,
}

impl FaultProxy {
    fn start(upstream: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let faults: Arc<Mutex<VecDeque<Fault>>> = Arc::default();
        let requests = Arc::new(AtomicUsize::new(0));
        let (f, r, up) = (
            Arc::clone(&faults),
            Arc::clone(&requests),
            upstream.to_owned(),
        );
        std::thread::spawn(move || {
            for conn in listener.incoming().map_while(Result::ok) {
                let (f, r, up) = (Arc::clone(&f), Arc::clone(&r), up.clone());
                std::thread::spawn(move || {
                    let _ = relay(conn, &up, &f, &r);
                });
            }
        });
        FaultProxy {
            addr,
            faults,
            requests,
        }
    }

    fn queue(&self, faults: &[Fault]) {
        self.faults.lock().unwrap().extend(faults.iter().cloned());
    }
}

/// One request on `client` (its head rewritten to `Connection: close`).
fn relay(
    mut client: TcpStream,
    upstream: &str,
    faults: &Mutex<VecDeque<Fault>>,
    requests: &AtomicUsize,
) -> std::io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut buf = Vec::new();
    let mut byte = [0u8; 4096];
    let head_end = loop {
        let n = client.read(&mut byte)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&byte[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap_or(0))
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = client.read(&mut byte)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&byte[..n]);
    }
    requests.fetch_add(1, Ordering::SeqCst);
    let fault = faults.lock().unwrap().pop_front();
    if let Some(Fault::Status(code)) = fault {
        let body =
            format!(r#"{{"error": {{"message": "injected {code}", "type": "server_error"}}}}"#);
        write!(
            client,
            "HTTP/1.1 {code} Injected\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        return Ok(());
    }
    let mut head: Vec<String> = head
        .trim_end()
        .lines()
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .map(str::to_owned)
        .collect();
    head.push("Connection: close".into());
    let mut up = TcpStream::connect(upstream)?;
    up.write_all(format!("{}\r\n\r\n", head.join("\r\n")).as_bytes())?;
    up.write_all(&buf[head_end..])?;
    if let Some(Fault::Delay(d)) = fault {
        std::thread::sleep(d);
    }
    let limit = match fault {
        Some(Fault::CutAfter(n)) => Some(n),
        _ => None,
    };
    let mut answer = Vec::new();
    let mut body_start = None;
    loop {
        let n = up.read(&mut byte)?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&byte[..n]);
        if body_start.is_none() {
            body_start = answer
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|i| i + 4);
        }
        if let (Some(limit), Some(start)) = (limit, body_start) {
            if answer.len() >= start + limit {
                client.write_all(&answer[..start + limit])?;
                let _ = client.shutdown(Shutdown::Both);
                let _ = up.shutdown(Shutdown::Both);
                return Ok(());
            }
            continue;
        }
        client.write_all(&answer)?;
        answer.clear();
        body_start = Some(0);
    }
    Ok(())
}

#[test]
fn injected_faults_fall_back_retry_or_fail_whole_and_nothing_hangs() {
    let (_up, up) = replica();
    let proxy = FaultProxy::start(&up);
    let config = format!(
        r#"port = 0
threads = 1

[[models]]
name = "local"
model = {m:?}

[[upstreams]]
name = "flaky"
base_url = "http://{p}/v1"
model = "small"
ttft_timeout_secs = 1.5
failure_threshold = 100
retries = 1
retry_backoff_ms = 20

[[tiers]]
name = "remote"
backends = ["flaky"]

[[tiers]]
name = "on-box"
backends = ["local"]
"#,
        m = model(),
        p = proxy.addr
    );
    let p = temp_file("faults.toml", &config);
    let (_gw, gw, _) = serve(&["--config", p.to_str().unwrap()], &[]);
    let question = user("What is the capital of France?");
    let ask = |extra: &str| {
        let started = Instant::now();
        let (status, v) = post(&gw, &chat_body("auto", &question, extra));
        (status, v, started.elapsed())
    };

    // Untouched: the upstream tier (first in config order at equal price) answers.
    let (status, v, _) = ask("");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["route"]["tier"], "remote", "{v}");
    let waits = |le: &str| {
        metric(
            &gw,
            "inferd_upstream_slot_wait_seconds_bucket",
            &["upstream=\"flaky\"", &format!("le=\"{le}\"")],
        )
    };
    assert_eq!(waits("+Inf"), 1.0, "one request waited for a slot");
    assert_eq!(waits("0.0005"), 1.0, "and found one free at once");

    // One 503: retried once, and the retry answers.
    let seen = proxy.requests.load(Ordering::SeqCst);
    proxy.queue(&[Fault::Status(503)]);
    let (status, v, _) = ask("");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["route"]["tier"], "remote", "{v}");
    assert!(v["route"].get("attempts").is_none(), "{v}");
    assert_eq!(proxy.requests.load(Ordering::SeqCst), seen + 2);
    assert_eq!(
        metric(
            &gw,
            "inferd_upstream_retries_total",
            &["upstream=\"flaky\""]
        ),
        1.0
    );

    // A 500 is not retried (it may be the request's fault); the next tier answers.
    let seen = proxy.requests.load(Ordering::SeqCst);
    proxy.queue(&[Fault::Status(500)]);
    let (status, v, _) = ask("");
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["route"]["tier"].as_str(), v["route"]["reason"].as_str()),
        (Some("on-box"), Some("fallback")),
        "{v}"
    );
    assert!(
        v["route"]["attempts"][0]["error"]
            .as_str()
            .unwrap()
            .contains("500"),
        "{v}"
    );
    assert_eq!(proxy.requests.load(Ordering::SeqCst), seen + 1);

    // A first token slower than the TTFT timeout: given up on at the
    // timeout, and the next tier answers.
    proxy.queue(&[Fault::Delay(Duration::from_secs(4))]);
    let (status, v, took) = ask("");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["route"]["tier"], "on-box", "{v}");
    assert!(
        v["route"]["attempts"][0]["error"]
            .as_str()
            .unwrap()
            .contains("TTFT"),
        "{v}"
    );
    assert!(took < Duration::from_secs(4), "waited {took:?}");
    let overhead = v["route"]["overhead_ms"].as_f64().unwrap();
    assert!(
        (0.0..1000.0).contains(&overhead),
        "the 1.5 s spent on the failed upstream is not the gateway's own: {v}"
    );
    assert!(
        metric(
            &gw,
            "inferd_gateway_overhead_seconds_count",
            &["router=\"auto\""]
        ) >= 4.0
    );

    // Cut mid-answer, after tokens were relayed: never retried, never passed
    // off as whole. Not streamed: an error, not a shorter answer.
    let long = r#", "max_tokens": 40, "ignore_eos": true"#;
    let seen = proxy.requests.load(Ordering::SeqCst);
    proxy.queue(&[Fault::CutAfter(1500)]);
    let (status, v, _) = ask(long);
    assert!(status >= 500, "{status}: {v}");
    assert!(v.get("choices").is_none(), "{v}");
    assert_eq!(
        proxy.requests.load(Ordering::SeqCst),
        seen + 1,
        "not retried"
    );
    // Streamed: the text so far, then an error event and no [DONE].
    proxy.queue(&[Fault::CutAfter(1500)]);
    let body = chat_body("auto", &question, &format!(r#"{long}, "stream": true"#));
    let (status, _, text) = common::request(&gw, "POST", "/v1/chat/completions", "", &body);
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"content\""), "some text came first: {text}");
    assert!(text.contains("\"error\""), "{text}");
    assert!(!text.contains("[DONE]"), "{text}");

    // After all that, the upstream still answers.
    let (status, v, _) = ask("");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["route"]["tier"], "remote", "{v}");
}

#[test]
fn rules_answer_with_code_transform_requests_and_fall_through_on_failure() {
    let (_up, up) = replica();
    let csv = temp_file("capitals.csv", "country,capital\nFrance,Paris\nPeru,Lima\n");
    let config = common::local_and_remote(&up, "price_in_per_mtok = 2.0\nprice_out_per_mtok = 8.0")
        + &format!(
            r#"
[[tiers]]
name = "big"
backends = ["remote"]

[[tiers]]
name = "on-box"
backends = ["local"]

[[rules]]
name = "math"
regex = '(?i)^\s*(?:what is|calculate)\s+(?P<input>[-+*/^()%.,\d\s]+(?:of [\d.,\s]+)?)\??\s*$'
builtin = "arithmetic"

[[rules]]
name = "units"
regex = '(?i)^\s*convert\s+(?P<input>.+?)\??$'
builtin = "convert"
answer = "{{input}} = {{result}}"

[[rules]]
name = "clock"
regex = '(?i)\btime\b.*\bin\b'
builtin = "datetime"

[[rules]]
name = "email"
regex = '(?i)^is (?P<input>\S+) a valid email'
builtin = "validate_email"

[[rules]]
name = "order"
json_schema = {{ type = "object", required = ["order_id"] }}
builtin = "validate_json"
schema = {{ type = "object", properties = {{ order_id = {{ type = "integer" }} }} }}

[[rules]]
name = "capital"
regex = '(?i)capital of (?P<key>[a-z ]+?)\??$'
builtin = "lookup"
lookup_file = {csv:?}
key_column = "country"
answer = "The capital of {{country}} is {{capital}}."

[[rules]]
name = "legal"
regex = '(?i)\blawsuit\b'
system_hint = "This is not legal advice; say so."
tier = "big"
"#
        );
    let p = temp_file("rules.toml", &config);
    let (_gw, gw, _) = serve(&["--config", p.to_str().unwrap()], &[]);
    let ask = |text: &str| post(&gw, &chat_body("auto", &user(text), ""));
    let content = |v: &Value| {
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };

    for (q, rule, want) in [
        ("What is 17% of 240?", "math", "40.8"),
        ("calculate (2 + 3) * 4 ^ 2", "math", "80"),
        ("Convert 5 km to m", "units", "5 km to m = 5000 m"),
        ("Convert 100 C to F?", "units", "100 C to F = 212 F"),
        ("Is ann@example.com a valid email?", "email", "Valid: ann@example.com is a valid email address"),
        (r#"{"order_id": "A7"}"#, "order", "Not valid: JSON that does not match the schema: /order_id: \"A7\" is not of type \"integer\""),
        ("What is the capital of peru?", "capital", "The capital of Peru is Lima."),
    ] {
        let (status, v) = ask(q);
        assert_eq!(status, 200, "{q}: {v}");
        assert_eq!(content(&v), want, "{q}: {v}");
        let h = &v["route"]["handler"];
        assert_eq!((h["rule"].as_str(), h["action"].as_str()), (Some(rule), Some("answered")), "{v}");
        assert_eq!(v["route"]["reason"], "handler", "{v}");
        assert_eq!(v["usage"]["completion_tokens"], 0, "no model ran: {v}");
        assert!(h["saved_tokens"].as_u64().unwrap() > 0, "{v}");
        assert_eq!(h["saved_usd"].as_f64(), Some(0.0), "the free local tier would have answered: {v}");
    }
    // Asked of the priced tier by name: what it would have cost.
    let (status, v) = post(&gw, &chat_body("big", &user("What is 17% of 240?"), ""));
    assert_eq!(status, 200, "{v}");
    assert_eq!(content(&v), "40.8", "{v}");
    assert!(
        v["route"]["handler"]["saved_usd"].as_f64().unwrap() > 0.0,
        "{v}"
    );
    let (_, v) = ask("What time is it in Tokyo?");
    assert!(content(&v).contains("(Asia/Tokyo, JST, UTC+09:00)"), "{v}");

    // Streamed, n = 2: the same answer in each choice, then [DONE].
    let body = chat_body(
        "auto",
        &user("What is 2^10?"),
        r#", "stream": true, "n": 2"#,
    );
    let (status, _, text) = common::request(&gw, "POST", "/v1/chat/completions", "", &body);
    assert_eq!(status, 200, "{text}");
    assert_eq!(text.matches("\"content\":\"1024\"").count(), 2, "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");

    // A rule that fails falls through to the model, and says so.
    let (status, v) = ask("What is 1 / 0?");
    assert_eq!(status, 200, "{v}");
    let h = &v["route"]["handler"];
    assert_eq!(
        (h["rule"].as_str(), h["action"].as_str()),
        (Some("math"), Some("failed")),
        "{v}"
    );
    assert!(
        h["error"].as_str().unwrap().contains("division by zero"),
        "{v}"
    );
    assert!(
        v["usage"]["completion_tokens"].as_u64().unwrap() > 0,
        "a model answered: {v}"
    );

    // A transform: the hint reaches the model, on the tier the rule names.
    let messages = serde_json::json!([
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "Can I file a lawsuit over a late delivery?"}
    ]);
    let (status, direct) = post(&up, &chat_body("small", &messages, ""));
    assert_eq!(status, 200, "{direct}");
    let (status, v) = post(&gw, &chat_body("auto", &messages, ""));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["route"]["tier"], "big", "{v}");
    assert_eq!(v["route"]["handler"]["action"], "transformed", "{v}");
    assert!(
        v["usage"]["prompt_tokens"].as_u64() > direct["usage"]["prompt_tokens"].as_u64(),
        "the system hint was added: {v} vs {direct}"
    );

    let handled = |labels: &[&str]| metric(&gw, "inferd_gateway_handled_total", labels);
    assert_eq!(handled(&["rule=\"math\"", "action=\"answered\""]), 4.0);
    assert_eq!(handled(&["rule=\"math\"", "action=\"failed\""]), 1.0);
    assert_eq!(handled(&["rule=\"legal\"", "action=\"transformed\""]), 1.0);
    assert!(
        metric(
            &gw,
            "inferd_gateway_handler_saved_usd_total",
            &["rule=\"math\""]
        ) > 0.0
    );
}

#[test]
fn the_exact_cache_answers_repeats_per_tenant_and_forgets_after_its_ttl() {
    let config = format!(
        "port = 0\nthreads = 1\n\n[[models]]\nname = \"local\"\nmodel = {:?}\n\n[[tiers]]\nname = \"on-box\"\nbackends = [\"local\"]\n\n[routing.cache]\nttl_secs = 3\n",
        model()
    );
    let p = temp_file("cache.toml", &config);
    let (_gw, gw, _) = serve(&["--config", p.to_str().unwrap()], &[]);
    let q = user("What is the capital of France?");
    let ask = |extra: &str| post(&gw, &chat_body("auto", &q, extra));
    let served = || metric(&gw, "inferd_prompt_tokens_total", &["model=\"local\""]);
    let cached = |v: &Value| v["route"]["cache"].as_str().map(str::to_owned);
    let text = |v: &Value| {
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_owned()
    };

    let (status, first) = ask("");
    assert_eq!(status, 200, "{first}");
    assert_eq!(cached(&first), None, "{first}");
    let before = served();
    let (_, again) = ask("");
    assert_eq!(cached(&again).as_deref(), Some("exact"), "{again}");
    assert_eq!(again["route"]["reason"], "cache", "{again}");
    assert_eq!(text(&again), text(&first));
    assert_eq!(again["usage"], first["usage"], "the answer's own usage");
    assert_eq!(served(), before, "no model ran");
    // Streamed, the same answer from the cache.
    let body = chat_body("auto", &q, r#", "stream": true"#);
    let (_, head, sse) = common::request(&gw, "POST", "/v1/chat/completions", "", &body);
    assert!(head.contains("cache=exact"), "{head}");
    let streamed: String = sse
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(streamed, text(&first));

    // Another tenant never gets it; each tenant gets its own.
    for scope in [r#", "user": "bob""#, r#", "metadata": {"tenant": "acme"}"#] {
        let (_, v) = ask(scope);
        assert_eq!(cached(&v), None, "{scope}: {v}");
        let (_, v) = ask(scope);
        assert_eq!(cached(&v).as_deref(), Some("exact"), "{scope}: {v}");
    }
    // Sampled requests are never cached.
    for _ in 0..2 {
        let (status, v) = ask(r#", "temperature": 0.9"#);
        assert_eq!((status, cached(&v)), (200, None), "{v}");
    }
    // A seed makes a sampled request deterministic.
    ask(r#", "temperature": 0.9, "seed": 7"#);
    let (_, v) = ask(r#", "temperature": 0.9, "seed": 7"#);
    assert_eq!(cached(&v).as_deref(), Some("exact"), "{v}");

    let m = |name: &str| metric(&gw, name, &["router=\"auto\""]);
    assert_eq!(m("inferd_gateway_cache_hits_total"), 5.0);
    assert_eq!(m("inferd_gateway_cache_misses_total"), 4.0);
    assert_eq!(m("inferd_gateway_cache_entries"), 4.0);
    std::thread::sleep(Duration::from_millis(3200));
    let (_, v) = ask("");
    assert_eq!(cached(&v), None, "expired: {v}");
    assert_eq!(m("inferd_gateway_cache_evictions_total"), 1.0);
}

/// The cosine of two texts' MiniLM embeddings, asked of `addr`.
fn cosine(addr: &str, a: &str, b: &str) -> f64 {
    let body = serde_json::json!({"model": "minilm", "input": [a, b]}).to_string();
    let (status, text) = http(addr, "POST", "/v1/embeddings", &body);
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    let vec = |i: usize| -> Vec<f64> {
        v["data"][i]["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    vec(0).iter().zip(vec(1)).map(|(x, y)| x * y).sum()
}

#[test]
fn the_semantic_cache_answers_the_same_question_reworded_and_nothing_else() {
    let config = format!(
        "port = 0\nthreads = 1\n\n[[models]]\nname = \"local\"\nmodel = {:?}\n\n[[models]]\nname = \"minilm\"\nmodel = \"minilm-l6\"\n\n[[tiers]]\nname = \"on-box\"\nbackends = [\"local\"]\n\n[routing.cache]\nsemantic_model = \"minilm\"\nsimilarity = 0.9\n",
        model(),
    );
    let p = temp_file("semantic.toml", &config);
    let (_gw, gw, _) = serve(&["--config", p.to_str().unwrap()], &[]);
    let ask = |text: &str, extra: &str| post(&gw, &chat_body("auto", &user(text), extra));
    let first = "What is the capital of France?";
    let (status, v) = ask(first, r#", "temperature": 0.7"#);
    assert_eq!(status, 200, "{v}");
    assert!(v["route"].get("cache").is_none(), "{v}");
    let answer = v["choices"][0]["message"]["content"].clone();

    // Each later question is answered from the cache exactly when its
    // embedding is within the threshold of the first one's.
    let mut hits = 0;
    for (q, extra) in [
        ("what is the capital of France", r#", "temperature": 0.7"#),
        ("Tell me France's capital city.", r#", "temperature": 0.7"#),
        (
            "Write a haiku about autumn leaves.",
            r#", "temperature": 0.7"#,
        ),
        ("What is the capital of Germany?", r#", "temperature": 0.7"#),
    ] {
        let cos = cosine(&gw, first, q);
        let (status, v) = ask(q, extra);
        assert_eq!(status, 200, "{v}");
        if cos >= 0.9 {
            hits += 1;
            assert_eq!(v["route"]["cache"], "semantic", "{q} (cosine {cos}): {v}");
            let got = v["route"]["cache_similarity"].as_f64().unwrap();
            assert!((got - cos).abs() < 1e-3, "{got} vs {cos}");
            assert_eq!(v["choices"][0]["message"]["content"], answer, "{v}");
        } else {
            assert!(v["route"].get("cache").is_none(), "{q} (cosine {cos}): {v}");
        }
    }
    assert!(hits >= 1, "the near-identical question hit");
    assert!(hits < 4, "the unrelated one did not");
    // Another tenant, or another conversation before the question, never hits.
    let (_, v) = ask(
        "what is the capital of France",
        r#", "temperature": 0.7, "user": "bob""#,
    );
    assert!(v["route"].get("cache").is_none(), "{v}");
    let other = serde_json::json!([
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "what is the capital of France"}
    ]);
    let (_, v) = post(&gw, &chat_body("auto", &other, r#", "temperature": 0.7"#));
    assert!(v["route"].get("cache").is_none(), "{v}");
    // Other sampling settings are another context.
    let (_, v) = ask("what is the capital of France", "");
    assert!(v["route"].get("cache").is_none(), "{v}");
    assert!(
        metric(
            &gw,
            "inferd_gateway_cache_semantic_hits_total",
            &["router=\"auto\""]
        ) >= 1.0
    );
}

#[test]
fn long_tool_lists_are_narrowed_to_the_relevant_tools_before_the_template() {
    let examples = temp_file(
        "tool-examples.jsonl",
        "{\"query\": \"will I need an umbrella tomorrow\", \"tool\": \"get_forecast\"}\n",
    );
    let config = format!(
        "port = 0\nthreads = 1\n\n[[models]]\nname = \"local\"\nmodel = {:?}\n\n[[models]]\nname = \"minilm\"\nmodel = \"minilm-l6\"\n\n[[tiers]]\nname = \"on-box\"\nbackends = [\"local\"]\n\n[routing.tools]\nmodel = \"minilm\"\ntop_k = 3\nmin_tools = 4\nexamples_file = {:?}\n",
        model(),
        examples.display().to_string()
    );
    let p = temp_file("tools.toml", &config);
    let (_gw, gw, log) = serve(&["--config", p.to_str().unwrap()], &[]);
    assert!(log.contains("tool narrowing"), "{log}");
    let all = common::everyday_tools();
    let ask = |q: &str, tools: &[Value]| {
        let extra = format!(r#", "tools": {}"#, Value::Array(tools.to_vec()));
        post(&gw, &chat_body("auto", &user(q), &extra))
    };
    let (status, v) = ask("What's the weather like in Paris right now?", &all);
    assert_eq!(status, 200, "{v}");
    let t = &v["route"]["tools"];
    assert_eq!(
        (t["before"].as_u64(), t["after"].as_u64()),
        (Some(12), Some(3)),
        "{v}"
    );
    let kept: Vec<String> = t["kept"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect();
    assert!(kept.contains(&"get_weather".to_owned()), "{kept:?}");
    // The template rendered exactly the kept tools: the same prompt as sending only them.
    let only: Vec<Value> = all
        .iter()
        .filter(|t| kept.contains(&t["function"]["name"].as_str().unwrap().to_owned()))
        .cloned()
        .collect();
    let (_, direct) = ask("What's the weather like in Paris right now?", &only);
    assert!(
        direct["route"].get("tools").is_none(),
        "3 tools are left alone: {direct}"
    );
    assert_eq!(
        v["usage"]["prompt_tokens"], direct["usage"]["prompt_tokens"],
        "{v} vs {direct}"
    );
    // A labelled example pulls its tool in for a query its description alone misses.
    let (_, v) = ask("will I need an umbrella tomorrow", &all);
    let kept = v["route"]["tools"]["kept"].as_array().unwrap();
    assert!(kept.iter().any(|k| k == "get_forecast"), "{v}");

    // Feedback: a tool narrowing left out is kept from the next request on,
    // and after a restart (the example went to the examples file).
    let q = "Plan something fun for my evening";
    let kept_for = |gw: &str| -> Vec<String> {
        let extra = format!(r#", "tools": {}"#, Value::Array(all.to_vec()));
        let (_, v) = post(gw, &chat_body("auto", &user(q), &extra));
        v["route"]["tools"]["kept"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap().to_owned())
            .collect()
    };
    let before = kept_for(&gw);
    let missing = [
        "set_alarm",
        "convert_currency",
        "get_stock_price",
        "send_email",
    ]
    .into_iter()
    .find(|t| !before.iter().any(|k| k == t))
    .unwrap();
    let feedback = |body: String| {
        let (status, text) = http(&gw, "POST", "/v1/intent/feedback", &body);
        (status, serde_json::from_str::<Value>(&text).unwrap())
    };
    let (status, v) = feedback(serde_json::json!({"query": q, "tool": missing}).to_string());
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["examples"].as_u64(), v["persisted"].as_bool()),
        (Some(1), Some(true)),
        "{v}"
    );
    assert!(
        kept_for(&gw).iter().any(|k| k == missing),
        "{missing} after feedback"
    );
    let (status, v) = feedback(r#"{"query": "x"}"#.into());
    assert_eq!(
        (status, v["error"]["param"].as_str()),
        (400, Some("tool")),
        "{v}"
    );
    drop(_gw);
    let (_again, gw2, _) = serve(&["--config", p.to_str().unwrap()], &[]);
    assert!(
        kept_for(&gw2).iter().any(|k| k == missing),
        "{missing} after a restart"
    );
    let saved = std::fs::read_to_string(&examples).unwrap();
    assert_eq!(saved.lines().count(), 2, "{saved}");
}
