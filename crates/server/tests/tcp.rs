//! The server over real TCP on port 0, with the real default model: bound before
//! the model loads (`/health` 503 "loading", then 200), a full request/response and
//! an SSE stream read off the socket, a client that hangs up mid-stream (its blocks
//! are freed), and the request timeout (408, or an error event when streaming).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use inferd_backend::{Backend, LocalBackend};
use inferd_engine::{EngineConfig, EngineHandle, LoadedModel};
use inferd_server::{router, router_when_ready, ServerOptions, ServerState};
use serde_json::{json, Value};

/// Serves `router_when_ready(slot)` on 127.0.0.1:0 from its own runtime thread.
fn serve(slot: Arc<OnceLock<Router>>) -> SocketAddr {
    inferd_testutil::serve_in_background(router_when_ready(slot))
}

fn loaded_router(request_timeout: Option<Duration>) -> (Router, EngineHandle) {
    let loaded = LoadedModel::load(inferd_testutil::smollm2_path()).unwrap();
    let local = LocalBackend::start("smollm2-135m", loaded, EngineConfig::default()).unwrap();
    let engine = local.engine().clone();
    let options = ServerOptions {
        api_key: None,
        request_timeout,
    };
    let backends: Vec<Arc<dyn Backend>> = vec![Arc::new(local)];
    let state = ServerState::new(backends, options).unwrap();
    (router(Arc::new(state)), engine)
}

/// One HTTP/1.1 exchange on a fresh connection: status and a reader over the
/// (de-chunked) body.
struct Exchange {
    status: u16,
    headers: Vec<(String, String)>,
    reader: BufReader<TcpStream>,
    chunked: bool,
    left_in_chunk: usize,
    done: bool,
}

impl Exchange {
    fn send(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> Exchange {
        let mut sock = TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(120)))
            .unwrap();
        let body = body.map(Value::to_string).unwrap_or_default();
        write!(
            sock,
            "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut reader = BufReader::new(sock);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let status = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        let mut headers = Vec::new();
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').unwrap();
            headers.push((k.to_ascii_lowercase(), v.trim().to_owned()));
        }
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
        Exchange {
            status,
            headers,
            reader,
            chunked,
            left_in_chunk: 0,
            done: false,
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The next body bytes (at most one chunk); empty at the end.
    fn next_bytes(&mut self) -> Vec<u8> {
        if self.done {
            return Vec::new();
        }
        if !self.chunked {
            let mut all = Vec::new();
            self.reader.read_to_end(&mut all).unwrap();
            self.done = true;
            return all;
        }
        if self.left_in_chunk == 0 {
            let mut size = String::new();
            self.reader.read_line(&mut size).unwrap();
            self.left_in_chunk = usize::from_str_radix(size.trim(), 16).unwrap();
            if self.left_in_chunk == 0 {
                self.done = true;
                return Vec::new();
            }
        }
        let mut buf = vec![0; self.left_in_chunk];
        self.reader.read_exact(&mut buf).unwrap();
        self.left_in_chunk = 0;
        let mut crlf = [0; 2];
        self.reader.read_exact(&mut crlf).unwrap();
        buf
    }

    fn body(mut self) -> String {
        let mut all = Vec::new();
        loop {
            let b = self.next_bytes();
            if b.is_empty() {
                return String::from_utf8(all).unwrap();
            }
            all.extend(b);
        }
    }

    /// Reads SSE `data:` payloads until `want` of them have arrived or the body ends.
    fn events(&mut self, want: usize) -> Vec<String> {
        let mut pending = String::new();
        let mut out = Vec::new();
        while out.len() < want {
            let b = self.next_bytes();
            if b.is_empty() {
                break;
            }
            pending.push_str(std::str::from_utf8(&b).unwrap());
            while let Some(end) = pending.find("\n\n") {
                let event: String = pending.drain(..end + 2).collect();
                for line in event.lines() {
                    if let Some(d) = line.strip_prefix("data: ") {
                        out.push(d.to_owned());
                    }
                }
            }
        }
        out
    }
}

fn used_blocks(engine: &EngineHandle) -> usize {
    engine
        .gauges
        .kv_used_blocks
        .load(std::sync::atomic::Ordering::Relaxed)
}

/// Used KV blocks once they reach 0, or after 30 s.
fn used_blocks_after_settling(engine: &EngineHandle) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    while used_blocks(engine) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    used_blocks(engine)
}

fn chat_body(content: &str, max_tokens: usize, stream: bool) -> Value {
    json!({"messages": [{"role": "user", "content": content}], "temperature": 0,
           "max_tokens": max_tokens, "stream": stream})
}

#[test]
fn binds_before_loading_then_serves_json_and_sse_over_tcp() {
    let slot = Arc::new(OnceLock::new());
    let addr = serve(Arc::clone(&slot));

    let health = Exchange::send(addr, "GET", "/health", None);
    assert_eq!(health.status, 503);
    assert!(health.body().contains("loading"));
    let early = Exchange::send(
        addr,
        "POST",
        "/v1/chat/completions",
        Some(&chat_body("hi", 4, false)),
    );
    assert_eq!(early.status, 503);
    assert_eq!(early.header("retry-after"), Some("1"));
    let err: Value = serde_json::from_str(&early.body()).unwrap();
    assert_eq!(err["error"]["code"], "model_loading");

    let (app, _engine) = loaded_router(None);
    assert!(slot.set(app).is_ok());
    assert_eq!(Exchange::send(addr, "GET", "/health", None).status, 200);

    let question = "What is the capital of France?";
    let r = Exchange::send(
        addr,
        "POST",
        "/v1/chat/completions",
        Some(&chat_body(question, 12, false)),
    );
    assert_eq!(r.status, 200);
    let ttft: u64 = r.header("x-inferd-ttft-ms").unwrap().parse().unwrap();
    let v: Value = serde_json::from_str(&r.body()).unwrap();
    let text = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(text.contains("Paris"), "{text}");
    assert_eq!(
        v["timings"]["ttft_ms"].as_f64().unwrap().round() as u64,
        ttft
    );

    let mut s = Exchange::send(
        addr,
        "POST",
        "/v1/chat/completions",
        Some(&chat_body(question, 12, true)),
    );
    assert_eq!(s.status, 200);
    assert!(s
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let events = s.events(usize::MAX);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(
        streamed, text,
        "streaming and non-streaming agree at temperature 0"
    );
    let last = chunks.last().unwrap();
    assert!(last["choices"][0]["finish_reason"].is_string());
    assert!(last["timings"]["ttft_ms"].as_f64().is_some());
}

#[test]
fn a_client_that_hangs_up_mid_stream_frees_its_blocks() {
    let (app, engine) = loaded_router(None);
    let addr = serve(Arc::new(OnceLock::from(app)));
    let body = chat_body("Write a very long story about a dragon.", 2000, true);
    let mut s = Exchange::send(addr, "POST", "/v1/chat/completions", Some(&body));
    assert_eq!(s.events(6).len(), 6);
    assert!(
        used_blocks(&engine) > 0,
        "the request holds KV blocks while it streams"
    );
    drop(s);
    assert_eq!(
        used_blocks_after_settling(&engine),
        0,
        "hanging up cancelled the request and freed its blocks"
    );
}

#[test]
fn requests_past_the_timeout_are_cancelled() {
    // Long enough for the stream's first token on a slow, busy CPU (the
    // stream must have started to report the timeout as an event), far
    // shorter than 2,000 tokens take anywhere.
    let (app, engine) = loaded_router(Some(Duration::from_millis(2000)));
    let addr = serve(Arc::new(OnceLock::from(app)));
    let long = "Write a very long story about a dragon.";

    let r = Exchange::send(
        addr,
        "POST",
        "/v1/chat/completions",
        Some(&chat_body(long, 2000, false)),
    );
    assert_eq!(r.status, 408);
    let v: Value = serde_json::from_str(&r.body()).unwrap();
    assert_eq!(v["error"]["code"], "request_timeout");

    let mut s = Exchange::send(
        addr,
        "POST",
        "/v1/chat/completions",
        Some(&chat_body(long, 2000, true)),
    );
    assert_eq!(s.status, 200);
    let events = s.events(usize::MAX);
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "request_timeout", "{events:?}");

    assert_eq!(
        used_blocks_after_settling(&engine),
        0,
        "timed-out requests give their blocks back"
    );
}
