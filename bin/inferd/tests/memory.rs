//! `/v1/memory` over HTTP on a real `inferd serve`, and the store surviving
//! `kill -9` in the middle of 10,000 concurrent writes.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

#[test]
fn the_memory_api_writes_reads_its_writes_and_names_every_bad_field() {
    let dir = state_dir("api");
    let dir_s = dir.display().to_string();
    let (_server, addr, _) = serve(
        &[
            "--model",
            &minilm(),
            "--port",
            "0",
            "--state",
            &dir_s,
            "--memory-model",
            "minilm",
        ],
        &[],
    );
    let write = |body: Value| {
        let (status, body) = http(&addr, "POST", "/v1/memory", &body.to_string());
        (status, json_of(&body))
    };
    let (status, a) = write(json!({
        "namespace": "acme/alice", "kind": "preference", "key": "contact",
        "content": "Alice wants email, not Slack", "metadata": {"source": "crm"},
        "idempotency_key": "w1"
    }));
    assert_eq!(status, 201, "{a}");
    assert_eq!(
        (a["seq"].as_i64(), a["duplicate"].as_bool()),
        (Some(1), Some(false))
    );
    let (status, again) = write(json!({
        "namespace": "acme/alice", "kind": "preference", "key": "contact",
        "content": "Alice wants email, not Slack", "metadata": {"source": "crm"},
        "idempotency_key": "w1"
    }));
    assert_eq!(
        (status, again["id"].clone(), again["duplicate"].as_bool()),
        (200, a["id"].clone(), Some(true))
    );
    let (status, e) =
        write(json!({"namespace": "acme/alice", "content": "other", "idempotency_key": "w1"}));
    assert_eq!(
        (status, e["error"]["param"].as_str()),
        (409, Some("idempotency_key")),
        "{e}"
    );
    let (_, b) =
        write(json!({"namespace": "acme/alice", "content": "Shipped the billing fix on Friday"}));
    let id = a["id"].as_i64().unwrap();

    // Read-your-writes on every projection.
    let (status, item) = http(
        &addr,
        "GET",
        &format!("/v1/memory/{id}?namespace=acme/alice&min_seq=2"),
        "",
    );
    assert_eq!(status, 200, "{item}");
    assert_eq!(json_of(&item)["content"], "Alice wants email, not Slack");
    let (status, body) = http(
        &addr,
        "PATCH",
        &format!("/v1/memory/{id}"),
        &json!({"namespace": "acme/alice", "content": "Alice wants Slack now"}).to_string(),
    );
    assert_eq!(status, 201, "{body}");
    let seq = json_of(&body)["seq"].as_i64().unwrap();
    let (status, fact) = http(
        &addr,
        "GET",
        &format!("/v1/memory/facts/contact?namespace=acme/alice&history=true&min_seq={seq}"),
        "",
    );
    assert_eq!(status, 200, "{fact}");
    let fact = json_of(&fact);
    assert_eq!(fact["value"], "Alice wants Slack now");
    assert_eq!(fact["history"].as_array().unwrap().len(), 2);
    let (status, hits) = http(
        &addr,
        "GET",
        &format!("/v1/memory/search?namespace=acme/alice&q=how+to+reach+Alice&k=1&min_seq={seq}"),
        "",
    );
    assert_eq!(status, 200, "{hits}");
    let hits = json_of(&hits);
    assert_eq!(hits["data"][0]["id"].as_i64(), Some(id), "{hits}");
    let (status, hits) = http(
        &addr,
        "GET",
        &format!(
            "/v1/memory/search?namespace=acme/alice&q=release&metadata.source=crm&min_seq={seq}"
        ),
        "",
    );
    assert_eq!(status, 200);
    assert_eq!(json_of(&hits)["data"].as_array().unwrap().len(), 1);
    let (status, recent) = http(
        &addr,
        "GET",
        &format!("/v1/memory/recent?namespace=acme/alice&min_seq={seq}"),
        "",
    );
    assert_eq!(status, 200);
    assert_eq!(json_of(&recent)["data"][0]["id"].as_i64(), Some(id));
    let (status, del) = http(
        &addr,
        "DELETE",
        &format!("/v1/memory/{}?namespace=acme/alice", b["id"]),
        "",
    );
    assert_eq!(status, 201, "{del}");
    let (status, audit) = http(
        &addr,
        "GET",
        "/v1/memory/audit?namespace=acme/alice&min_seq=4",
        "",
    );
    assert_eq!(status, 200);
    let ops: Vec<String> = json_of(&audit)["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["op"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ops, ["put", "put", "update", "delete"]);

    // Errors name the problem.
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        (
            "POST",
            "/v1/memory",
            json!({"content": "x"}).to_string(),
            400,
            "namespace",
        ),
        (
            "POST",
            "/v1/memory",
            json!({"namespace": "a b", "content": "x"}).to_string(),
            400,
            "namespace",
        ),
        (
            "POST",
            "/v1/memory",
            json!({"namespace": "a", "content": "  "}).to_string(),
            400,
            "content",
        ),
        (
            "POST",
            "/v1/memory",
            json!({"namespace": "a", "content": "x", "colour": 1}).to_string(),
            400,
            "colour",
        ),
        (
            "POST",
            "/v1/memory",
            json!({"namespace": "a", "content": "x", "metadata": [1]}).to_string(),
            400,
            "metadata",
        ),
        ("POST", "/v1/memory", "[1".into(), 400, ""),
        (
            "GET",
            "/v1/memory/abc?namespace=a",
            String::new(),
            400,
            "id",
        ),
        (
            "GET",
            "/v1/memory/999999?namespace=a",
            String::new(),
            404,
            "",
        ),
        (
            "GET",
            "/v1/memory/1?namespace=acme/bob",
            String::new(),
            404,
            "",
        ),
        (
            "GET",
            "/v1/memory/1?namespace=acme/alice&min_seq=99",
            String::new(),
            409,
            "min_seq",
        ),
        (
            "GET",
            "/v1/memory/1?namespace=acme/alice&min_seq=x",
            String::new(),
            400,
            "min_seq",
        ),
        (
            "GET",
            "/v1/memory/search?namespace=acme/alice",
            String::new(),
            400,
            "q",
        ),
        (
            "GET",
            "/v1/memory/search?namespace=acme/alice&q=x&k=0",
            String::new(),
            400,
            "k",
        ),
        (
            "GET",
            "/v1/memory/search?namespace=acme/alice&q=x&colour=red",
            String::new(),
            400,
            "colour",
        ),
        (
            "GET",
            "/v1/memory/facts/nope?namespace=acme/alice",
            String::new(),
            404,
            "",
        ),
        (
            "PATCH",
            "/v1/memory/999999",
            json!({"namespace": "acme/alice", "content": "x"}).to_string(),
            404,
            "",
        ),
    ];
    for (method, path, body, want, param) in cases {
        let (status, text) = http(&addr, method, path, &body);
        assert_eq!(status, want, "{method} {path}: {text}");
        let e = json_of(&text);
        assert!(
            e["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{text}"
        );
        if !param.is_empty() {
            assert_eq!(
                e["error"]["param"].as_str(),
                Some(param),
                "{method} {path}: {text}"
            );
        }
    }
    let (_, status) = http(&addr, "GET", "/v1/memory/status", "");
    let status = json_of(&status);
    assert_eq!(
        status["projections"].as_array().unwrap().len(),
        6,
        "{status}"
    );
    let (_, metrics) = http(&addr, "GET", "/metrics", "");
    for name in [
        "inferd_memory_writes_total",
        "inferd_memory_write_seconds_bucket",
        "inferd_memory_projection_lag_items{projection=\"vectors\"}",
        "inferd_memory_pool_wait_seconds_count",
        "inferd_memory_pool_in_use",
    ] {
        assert!(metrics.contains(name), "{name} missing");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn memory_routes_say_how_to_turn_them_on() {
    let (_server, addr, _) = serve(&["--model", &minilm(), "--port", "0"], &[]);
    let (status, body) = http(&addr, "GET", "/v1/memory/status", "");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("--state"), "{body}");
    let chat = json!({"messages": [{"role": "user", "content": "hi"}], "memory_search": {"namespace": "a"}});
    let (status, body) = http(&addr, "POST", "/v1/chat/completions", &chat.to_string());
    assert_eq!(status, 400, "{body}");
    assert_eq!(json_of(&body)["error"]["param"], "memory_search", "{body}");
}

/// One POST on a fresh connection; `None` when the server is not there (any
/// more) or closed the connection before answering.
fn try_post(addr: &str, body: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(
        s,
        "POST /v1/memory HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.get(9..12)?.parse().ok()?;
    let (_, body) = text.split_once("\r\n\r\n")?;
    Some((status, body.to_owned()))
}

/// Per write: its acknowledgement (id, namespace, seq), once it has one.
type Acks = Arc<Mutex<Vec<Option<(i64, String, i64)>>>>;

const WRITES: usize = 10_000;
const WRITERS: usize = 64;

/// Sends writes `w, w + WRITERS, …` (skipping acknowledged ones) until the
/// server goes away; records each acknowledgement (key → (id, namespace, seq)).
fn writer(addr: String, w: usize, acked: Acks, count: Arc<AtomicUsize>, gone: Arc<AtomicBool>) {
    for i in (w..WRITES).step_by(WRITERS) {
        if acked.lock().unwrap()[i].is_some() {
            continue;
        }
        let body = json!({
            "namespace": format!("t/agent{}", i % 8),
            "content": format!("memory {i}"),
            "key": (i % 10 == 0).then(|| format!("k{}", i % 30)),
            "idempotency_key": format!("write-{i}"),
        })
        .to_string();
        match try_post(&addr, &body) {
            Some((status, text)) if status == 200 || status == 201 => {
                let v = json_of(&text);
                acked.lock().unwrap()[i] = Some((
                    v["id"].as_i64().unwrap(),
                    v["namespace"].as_str().unwrap().to_owned(),
                    v["seq"].as_i64().unwrap(),
                ));
                count.fetch_add(1, Ordering::Relaxed);
            }
            Some((status, text)) => panic!("write {i}: {status} {text}"),
            None => {
                gone.store(true, Ordering::Relaxed);
                return;
            }
        }
    }
}

fn write_all(
    addr: &str,
    acked: &Acks,
    count: &Arc<AtomicUsize>,
    kill_at: Option<(usize, &mut Killed)>,
) {
    let gone = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (addr, acked, count, gone) = (
                addr.to_owned(),
                Arc::clone(acked),
                Arc::clone(count),
                Arc::clone(&gone),
            );
            std::thread::spawn(move || writer(addr, w, acked, count, gone))
        })
        .collect();
    if let Some((at, server)) = kill_at {
        let started = Instant::now();
        while count.load(Ordering::Relaxed) < at {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "writes stalled at {}",
                count.load(Ordering::Relaxed)
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        // SIGKILL: no shutdown path runs.
        server.0.kill().unwrap();
        server.0.wait().unwrap();
    }
    for t in threads {
        t.join().unwrap();
    }
}

/// The log, read straight from its store.
enum LogDb {
    Sqlite(rusqlite::Connection),
    Postgres(postgres::Client),
}

impl LogDb {
    fn open(state: &str) -> LogDb {
        if state.starts_with("postgres://") {
            LogDb::Postgres(postgres::Client::connect(state, postgres::NoTls).unwrap())
        } else {
            LogDb::Sqlite(
                rusqlite::Connection::open(std::path::Path::new(state).join("log.db")).unwrap(),
            )
        }
    }

    fn count(&mut self, sql: &str) -> i64 {
        match self {
            LogDb::Sqlite(c) => c.query_row(sql, [], |r| r.get(0)).unwrap(),
            LogDb::Postgres(c) => c.query_one(sql, &[]).unwrap().get(0),
        }
    }

    /// Namespaces whose sequence has a gap.
    fn gaps(&mut self) -> i64 {
        self.count(
            "SELECT COUNT(*) FROM (SELECT namespace, MAX(seq) - COUNT(*) AS gap FROM memory_log GROUP BY namespace) AS g WHERE gap != 0",
        )
    }

    /// Idempotency key → (id, namespace, seq).
    fn writes(&mut self) -> std::collections::HashMap<String, (i64, String, i64)> {
        let sql = "SELECT idempotency_key, gseq, namespace, seq FROM memory_log";
        match self {
            LogDb::Sqlite(c) => c
                .prepare(sql)
                .unwrap()
                .query_map([], |r| {
                    Ok((r.get::<_, String>(0)?, (r.get(1)?, r.get(2)?, r.get(3)?)))
                })
                .unwrap()
                .map(Result::unwrap)
                .collect(),
            LogDb::Postgres(c) => c
                .query(sql, &[])
                .unwrap()
                .iter()
                .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
                .collect(),
        }
    }
}

/// Waits (at most 120 s) until every projection of the server at `addr` has
/// applied the whole log; its `/v1/memory/status` then.
fn converged(addr: &str, log: &mut LogDb) -> Value {
    let started = Instant::now();
    loop {
        let (_, body) = http(addr, "GET", "/v1/memory/status", "");
        let s = json_of(&body);
        // Positions may skip (PostgreSQL's identity after a killed append).
        let head = log.count("SELECT MAX(gseq) FROM memory_log");
        if s["projections"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["lag_items"] == 0)
            && s["log_position"].as_i64() == Some(head)
        {
            return s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "projections did not converge: {s}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `kill -9` of the server in the middle of 10,000 writes from 64 clients, a
/// restart on the same state, and every check of what must hold after.
fn kill_9_during_writes(state: &str) {
    let args = ["--model", &minilm(), "--port", "0", "--state", state];
    let acked = Arc::new(Mutex::new(vec![None; WRITES]));
    let count = Arc::new(AtomicUsize::new(0));
    let (mut server, addr, _) = serve(&args, &[]);
    write_all(&addr, &acked, &count, Some((WRITES / 3, &mut server)));
    let before_kill = count.load(Ordering::Relaxed);
    assert!(before_kill < WRITES, "the kill landed after the last write");

    // Restart on the same state: every acknowledged write is there, once.
    let (server, addr, _) = serve(&args, &[]);
    let mut log = LogDb::open(state);
    let logged = log.writes();
    let rows = log.count("SELECT COUNT(*) FROM memory_log");
    assert_eq!(
        rows as usize,
        logged.len(),
        "an idempotency key appears twice in the log"
    );
    for (i, a) in acked.lock().unwrap().iter().enumerate() {
        if let Some(a) = a {
            assert_eq!(
                logged.get(&format!("write-{i}")),
                Some(a),
                "acknowledged write {i} is not in the log as acknowledged"
            );
        }
    }
    // The rest, retried with their keys: each lands once.
    write_all(&addr, &acked, &count, None);
    assert_eq!(count.load(Ordering::Relaxed), WRITES);
    assert_eq!(
        log.count("SELECT COUNT(*) FROM memory_log") as usize,
        WRITES
    );
    assert_eq!(log.gaps(), 0, "a namespace's sequence has a gap");
    // The projections converge, and to what a rebuild from zero reaches.
    converged(&addr, &mut log);
    drop(server);
    let out = inferd()
        .args(["memory", "check", "--state", state])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().filter(|l| l.ends_with("same")).count(),
        5,
        "{stdout}"
    );
    let store = if state.starts_with("postgres://") {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    report(&format!(
        "{store}: kill -9 after {before_kill} of {WRITES} acknowledged writes: none lost, none doubled; projections equal a rebuild"
    ));
}

#[test]
fn kill_9_during_10000_concurrent_writes_loses_no_acknowledged_write() {
    let dir = state_dir("kill");
    kill_9_during_writes(&dir.display().to_string());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn kill_9_during_10000_concurrent_writes_on_postgres_loses_no_acknowledged_write() {
    if let Some(state) = postgres_state("kill") {
        kill_9_during_writes(&state);
        drop_schema(&state);
    }
}

#[test]
fn two_servers_sharing_postgres_keep_one_memory() {
    if let Some(state) = postgres_state("replicas") {
        two_servers_keep_one_memory(&state);
        drop_schema(&state);
    }
}

#[test]
fn two_servers_sharing_one_sqlite_directory_keep_one_memory() {
    let dir = state_dir("replicas");
    two_servers_keep_one_memory(&dir.display().to_string());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two `inferd serve` on one state: one numbering, one idempotency, each
/// reading the other's writes; each projection led by exactly one of them, and
/// taken over by the other when the leader is killed.
fn two_servers_keep_one_memory(state: &str) {
    let args = [
        "--model",
        &minilm(),
        "--port",
        "0",
        "--state",
        state,
        "--memory-model",
        "minilm",
    ];
    let (a_server, a, _) = serve(&args, &[]);
    let (_b, b, _) = serve(&args, &[]);
    // Writes through both, at once: one numbering.
    let threads: Vec<_> = (0..40)
        .map(|i| {
            let addr = if i % 2 == 0 { a.clone() } else { b.clone() };
            std::thread::spawn(move || {
                let body = json!({"namespace": "acme/team", "content": format!("standup note {i}"), "idempotency_key": format!("n{i}")});
                let (status, text) = http(&addr, "POST", "/v1/memory", &body.to_string());
                assert_eq!(status, 201, "{text}");
                json_of(&text)["seq"].as_i64().unwrap()
            })
        })
        .collect();
    let mut seqs: Vec<i64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    seqs.sort();
    assert_eq!(seqs, (1..=40).collect::<Vec<_>>());
    // A retry through the other replica is the same write.
    let (status, dup) = http(
        &b,
        "POST",
        "/v1/memory",
        &json!({"namespace": "acme/team", "content": "standup note 0", "idempotency_key": "n0"})
            .to_string(),
    );
    assert_eq!(
        (status, json_of(&dup)["duplicate"].as_bool()),
        (200, Some(true)),
        "{dup}"
    );
    // The on-call fact written through one, read (fact and search, with
    // `min_seq`) through the other: the written id and the first hit's.
    let on_call = |write_to: &str, read_from: &str, who: &str| {
        let (_, w) = http(
            write_to,
            "POST",
            "/v1/memory",
            &json!({"namespace": "acme/team", "key": "oncall", "content": who}).to_string(),
        );
        let w = json_of(&w);
        let (id, seq) = (w["id"].as_i64().unwrap(), w["seq"].as_i64().unwrap());
        let (status, fact) = http(
            read_from,
            "GET",
            &format!("/v1/memory/facts/oncall?namespace=acme/team&min_seq={seq}&wait_ms=30000"),
            "",
        );
        assert_eq!(status, 200, "{fact}");
        assert_eq!(json_of(&fact)["value"], who);
        let (status, hits) = http(
            read_from,
            "GET",
            &format!("/v1/memory/search?namespace=acme/team&q=who+is+on+call&k=1&min_seq={seq}&wait_ms=30000"),
            "",
        );
        assert_eq!(status, 200, "{hits}");
        (id, json_of(&hits)["data"][0]["id"].as_i64())
    };
    // Written through A, read (its own projections' view) through B.
    let (id, hit) = on_call(&a, &b, "Dana is on call this week");
    assert_eq!(hit, Some(id));
    let projections = |addr: &str| {
        let (_, status) = http(addr, "GET", "/v1/memory/status", "");
        let status = json_of(&status);
        assert!(
            status["projections"]
                .as_array()
                .unwrap()
                .iter()
                .all(|p| p["failures"] == 0),
            "{status}"
        );
        status["projections"].as_array().unwrap().clone()
    };
    let (on_a, on_b) = (projections(&a), projections(&b));
    for (pa, pb) in on_a.iter().zip(&on_b) {
        assert_eq!(pa["name"], pb["name"]);
        assert_ne!(pa["leading"], pb["leading"], "one leader each: {pa} {pb}");
    }
    // A killed, B leads everything and answers its own writes.
    drop(a_server);
    on_call(&b, &b, "Eli is on call now");
    assert!(
        projections(&b).iter().all(|p| p["leading"] == true),
        "B took over every projection"
    );
    drop(_b);
}

fn report(line: &str) {
    inferd_testutil::report(line);
}

/// POSTs write `i` until it is acknowledged, retrying (with its idempotency
/// key) while the store answers 503; (id, namespace, seq) and the retries.
fn write_until_acknowledged(addr: &str, i: usize) -> ((i64, String, i64), usize) {
    let body = json!({
        "namespace": format!("t/agent{}", i % 8),
        "content": format!("memory {i}"),
        "idempotency_key": format!("write-{i}"),
    })
    .to_string();
    for retries in 0..500 {
        match try_post(addr, &body) {
            Some((200 | 201, text)) => {
                let v = json_of(&text);
                let ack = (
                    v["id"].as_i64().unwrap(),
                    v["namespace"].as_str().unwrap().to_owned(),
                    v["seq"].as_i64().unwrap(),
                );
                return (ack, retries);
            }
            Some((503, _)) | None => std::thread::sleep(Duration::from_millis(20)),
            Some((status, text)) => panic!("write {i}: {status} {text}"),
        }
    }
    panic!("write {i} was never acknowledged");
}

#[test]
fn postgres_sessions_cut_under_load_lose_no_write_and_the_store_reconnects() {
    // What clients of a restarted PostgreSQL see — every session ended under
    // them — done to this server's sessions only (by their application name),
    // twice, in the middle of 3,000 writes from 32 clients.
    let Some(state) = postgres_state("cut") else {
        return;
    };
    let app = format!("inferd_cut_{}", std::process::id());
    let state = format!("{state}&application_name={app}");
    let base = std::env::var("INFERD_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let mut admin = postgres::Client::connect(&base, postgres::NoTls).unwrap();
    let mut cut = 0;
    writes_outlive_interruptions(&state, "PostgreSQL sessions cut twice", &mut |_| {
        cut += admin
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
                &[&app],
            )
            .unwrap()
            .len();
    });
    assert!(cut >= 2, "no session was cut");
    drop_schema(&state);
}

#[test]
fn a_postgres_server_restarted_under_load_loses_no_write() {
    // A PostgreSQL of the test's own, restarted twice in the middle of 3,000
    // writes: a clean restart (`-m fast`), then a crash (`-m immediate`: no
    // shutdown, recovery from the WAL) — every acknowledged write survives both.
    let Some(pg) = PrivatePostgres::start("restart") else {
        return;
    };
    let mut admin = postgres::Client::connect(&pg.url(), postgres::NoTls).unwrap();
    admin.batch_execute("CREATE SCHEMA inferd").unwrap();
    drop(admin);
    let state = format!("{}?options=-csearch_path%3Dinferd", pg.url());
    let modes = ["fast", "immediate"];
    writes_outlive_interruptions(
        &state,
        "PostgreSQL restarted (-m fast, then -m immediate)",
        &mut |i| pg.restart(modes[i]),
    );
}

/// 3,000 writes from 32 clients (each retried with its idempotency key while
/// the store answers 503), `interrupt` called after a sixth and after half of
/// them were acknowledged: the log then holds exactly what was acknowledged,
/// without gaps, and the projections converge to what a rebuild makes.
fn writes_outlive_interruptions(state: &str, what: &str, interrupt: &mut dyn FnMut(usize)) {
    let (server, addr, _) = serve(
        &["--model", &minilm(), "--port", "0", "--state", state],
        &[],
    );
    const N: usize = 3000;
    let acked = Arc::new(AtomicUsize::new(0));
    let retried = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..32)
        .map(|w| {
            let (addr, acked, retried) = (addr.clone(), Arc::clone(&acked), Arc::clone(&retried));
            std::thread::spawn(move || {
                (w..N)
                    .step_by(32)
                    .map(|i| {
                        let (ack, retries) = write_until_acknowledged(&addr, i);
                        acked.fetch_add(1, Ordering::Relaxed);
                        retried.fetch_add(retries, Ordering::Relaxed);
                        (format!("write-{i}"), ack)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for (k, at) in [N / 6, N / 2].into_iter().enumerate() {
        let started = Instant::now();
        while acked.load(Ordering::Relaxed) < at {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "writes stalled"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        interrupt(k);
    }
    let mut acks = std::collections::HashMap::new();
    for t in threads {
        acks.extend(t.join().unwrap());
    }
    let mut log = LogDb::open(state);
    assert_eq!(
        log.writes(),
        acks,
        "the log differs from what was acknowledged"
    );
    assert_eq!(log.gaps(), 0, "a namespace's sequence has a gap");
    let status = converged(&addr, &mut log);
    drop(server);
    let out = inferd()
        .args(["memory", "check", "--state", state])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let failures: u64 = status["projections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["failures"].as_u64().unwrap())
        .sum();
    report(&format!(
        "{what} under {N} writes: every write acknowledged once after {} retries; projections failed {failures} batches, reconnected, converged, equal a rebuild",
        retried.load(Ordering::Relaxed)
    ));
}

fn tokens_of(v: &Value) -> i64 {
    v["usage"]["prompt_tokens"].as_i64().unwrap()
}

#[test]
fn chat_requests_fill_their_memory_section_from_the_store() {
    let dir = state_dir("fill");
    let dir_s = dir.display().to_string();
    let (_server, addr, _) = serve(
        &[
            "--model",
            "chat=smollm2-135m",
            "--model",
            &minilm(),
            "--port",
            "0",
            "--state",
            &dir_s,
            "--memory-model",
            "minilm",
            "--threads",
            "1",
        ],
        &[],
    );
    let fact = "The customer's favourite colour is teal";
    for content in [fact, "Invoices are sent on the first Monday of the month"] {
        let (status, body) = http(
            &addr,
            "POST",
            "/v1/memory",
            &json!({"namespace": "acme/zed", "content": content}).to_string(),
        );
        assert_eq!(status, 201, "{body}");
    }
    let chat = |extra: Value| {
        let mut body = json!({
            "model": "chat",
            // A system message of its own, so the template's default one does
            // not come and go with the memory message.
            "messages": [
                {"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "What colour do I like best?"}
            ],
            "max_tokens": 1,
            "temperature": 0,
        });
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let (status, text) = http(&addr, "POST", "/v1/chat/completions", &body.to_string());
        (status, json_of(&text))
    };
    let (status, filled) =
        chat(json!({"memory_search": {"namespace": "acme/zed", "k": 1, "min_seq": 2}}));
    assert_eq!(status, 200, "{filled}");
    let (_, explicit) = chat(json!({"memory": [fact]}));
    let (_, none) = chat(json!({}));
    let (_, other) =
        chat(json!({"memory": ["Invoices are sent on the first Monday of the month"]}));
    assert_ne!(
        tokens_of(&other),
        tokens_of(&explicit),
        "pick two items of different lengths"
    );
    let tokens = tokens_of;
    // The nearest item, and only it, went into the prompt: the same prompt as
    // sending it by hand.
    assert_eq!(tokens(&filled), tokens(&explicit), "{filled} {explicit}");
    assert!(tokens(&filled) > tokens(&none));
    for (extra, param) in [
        (
            json!({"memory_search": {"k": 1}}),
            "memory_search.namespace",
        ),
        (
            json!({"memory_search": {"namespace": "acme/zed", "k": 99}}),
            "memory_search.k",
        ),
        (
            json!({"memory_search": {"namespace": "acme/zed", "colour": 1}}),
            "memory_search.colour",
        ),
        (json!({"memory_search": "acme/zed"}), "memory_search"),
        (
            json!({"memory_search": {"namespace": "acme/zed", "min_seq": 9}}),
            "memory_search.min_seq",
        ),
    ] {
        let (status, e) = chat(extra.clone());
        assert!(status == 400 || status == 409, "{extra}: {status} {e}");
        assert_eq!(e["error"]["param"].as_str(), Some(param), "{extra}: {e}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
