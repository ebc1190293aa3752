//! What the binary's tests share: running `inferd`, files, plain HTTP.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub fn inferd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_inferd"))
}

pub fn model() -> String {
    inferd_testutil::smollm2_path().display().to_string()
}

pub fn temp_file(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("inferd-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// The start of a gateway config: SmolLM2 in-process as model `local` and the
/// `inferd serve` at `upper` (serving it as `small`) as upstream `remote`,
/// with `remote_settings` (TOML lines) added to that upstream's table.
pub fn local_and_remote(upper: &str, remote_settings: &str) -> String {
    format!(
        "port = 0\nthreads = 1\n\n[[models]]\nname = \"local\"\nmodel = {:?}\n\n[[upstreams]]\nname = \"remote\"\nbase_url = \"http://{upper}/v1\"\nmodel = \"small\"\n{remote_settings}\n",
        model()
    )
}

/// A child process that is killed when the test ends, passing or not.
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `inferd serve` with `args` (and `env`), once it logs that it is ready: the
/// process, its `host:port`, and its log so far.
pub fn serve(args: &[&str], env: &[(&str, &str)]) -> (Killed, String, String) {
    let mut cmd = inferd();
    cmd.arg("serve").args(args).env("RUST_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = Killed(cmd.stderr(Stdio::piped()).spawn().unwrap());
    let stderr = child.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let started = Instant::now();
    let mut log = String::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("the server stopped logging before it was ready: {log}"));
        log.push_str(&line);
        log.push('\n');
        if let Some(rest) = line.split("ready: http://").nth(1) {
            let url = rest.split_whitespace().next().unwrap_or_default();
            return (child, url.trim_end_matches("/v1").to_owned(), log);
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{log}");
    }
}

/// One HTTP/1.1 request with `Connection: close` and optional extra headers;
/// the status, the response head, and the body (de-chunked).
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text[9..12].parse().unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let head = head.to_ascii_lowercase();
    let chunked = head.contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, head, body)
}

/// [`request`] without the head.
pub fn http_with(addr: &str, method: &str, path: &str, headers: &str, body: &str) -> (u16, String) {
    let (status, _, body) = request(addr, method, path, headers, body);
    (status, body)
}

pub fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    http_with(addr, method, path, "", body)
}

/// The payload of a chunked HTTP/1.1 body.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A chat request, greedy and of 8 tokens unless `extra` sets `temperature`
/// or `max_tokens`.
pub fn chat_body(model: &str, messages: &serde_json::Value, extra: &str) -> String {
    let max = if extra.contains("\"max_tokens\"") {
        ""
    } else {
        r#", "max_tokens": 8"#
    };
    let temperature = if extra.contains("\"temperature\"") {
        ""
    } else {
        r#", "temperature": 0"#
    };
    format!(r#"{{"model": "{model}", "messages": {messages}{temperature}{max}{extra}}}"#)
}

pub fn post(addr: &str, body: &str) -> (u16, serde_json::Value) {
    let (status, text) = http(addr, "POST", "/v1/chat/completions", body);
    let v = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status}: {text}"));
    (status, v)
}

pub fn metric(addr: &str, name: &str, labels: &[&str]) -> f64 {
    let (_, text) = http(addr, "GET", "/metrics", "");
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|lb| l.contains(lb)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub fn user(text: &str) -> serde_json::Value {
    serde_json::json!([{"role": "user", "content": text}])
}

/// A function tool with one string parameter.
pub fn tool(name: &str, description: &str) -> serde_json::Value {
    serde_json::json!({"type": "function", "function": {"name": name, "description": description,
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}})
}

/// Twelve everyday tools, the first two about the weather.
pub fn everyday_tools() -> Vec<serde_json::Value> {
    vec![
        tool("get_weather", "Current weather conditions for a city"),
        tool("get_forecast", "The weather forecast for the next days"),
        tool("get_stock_price", "The latest price of a stock ticker"),
        tool("send_email", "Send an email message to someone"),
        tool("translate_text", "Translate text into another language"),
        tool("book_flight", "Book a plane ticket between two airports"),
        tool("play_music", "Play a song or a playlist"),
        tool("set_alarm", "Set an alarm clock for a time"),
        tool("search_recipes", "Find cooking recipes by ingredient"),
        tool("convert_currency", "Convert an amount between currencies"),
        tool("find_restaurant", "Find restaurants near a place"),
        tool("get_news", "Top news headlines on a topic"),
    ]
}

pub fn state_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("inferd-state-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

pub fn minilm() -> String {
    "minilm=minilm-l6".to_owned()
}

pub fn json_of(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// A fresh schema on the PostgreSQL at 127.0.0.1:5432 (or
/// `INFERD_TEST_POSTGRES`), as a `--state` URL; `None`, saying so, when none
/// answers.
pub fn postgres_state(test: &str) -> Option<String> {
    let base = std::env::var("INFERD_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let mut config: postgres::Config = base.parse().unwrap();
    config.connect_timeout(Duration::from_secs(3));
    let mut client = match config.connect(postgres::NoTls) {
        Ok(c) => c,
        Err(e) => {
            inferd_testutil::report(&format!(
                "skipped: {test} on PostgreSQL: none reachable at {base}: {e}"
            ));
            return None;
        }
    };
    let schema = format!("inferd_{test}_{}", std::process::id());
    client
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
        ))
        .unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    Some(format!("{base}{sep}options=-csearch_path%3D{schema}"))
}

/// Drops the schema a passing PostgreSQL test made (named in its `--state`).
pub fn drop_schema(state: &str) {
    let Some(schema) = state
        .split("search_path%3D")
        .nth(1)
        .map(|s| s.split('&').next().unwrap_or(s))
    else {
        return;
    };
    let base = std::env::var("INFERD_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    if let Ok(mut c) = postgres::Client::connect(&base, postgres::NoTls) {
        let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
    }
}

/// A PostgreSQL server of the test's own (`initdb` in a scratch directory, on
/// a free loopback port), for what cannot be done to a shared one: restarting
/// it. Run as the `postgres` user when the tests run as root. Stopped and
/// removed on drop.
pub struct PrivatePostgres {
    dir: std::path::PathBuf,
    bin: std::path::PathBuf,
    pub port: u16,
}

impl PrivatePostgres {
    /// `None` (and a `skipped:` line naming `test`) where PostgreSQL's server
    /// programs are not installed or will not start.
    pub fn start(test: &str) -> Option<PrivatePostgres> {
        let skip = |why: String| {
            inferd_testutil::report(&format!(
                "skipped: {test}: no private PostgreSQL server: {why}"
            ));
            None
        };
        let Some(bin) = postgres_bin() else {
            return skip("initdb and pg_ctl not found (PATH, /usr/lib/postgresql/*/bin)".into());
        };
        let dir = std::env::temp_dir().join(format!("inferd-pg-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = PrivatePostgres { dir, bin, port };
        if is_root() {
            let owned = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(&pg.dir)
                .status();
            if !owned.is_ok_and(|s| s.success()) {
                return skip("running as root and there is no `postgres` user to run it".into());
            }
        }
        let data = pg.dir.join("data");
        let init = pg.run(
            "initdb",
            &[
                "-D",
                &data.display().to_string(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        if let Err(e) = init {
            return skip(format!("initdb failed: {e}"));
        }
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1",
            pg.dir.display()
        );
        if let Err(e) = pg.pg_ctl(&["-o", &options, "-l", &pg.log(), "start"]) {
            return skip(format!("pg_ctl start failed: {e}"));
        }
        Some(pg)
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// `pg_ctl restart -m MODE` (`fast`: sessions ended, a clean shutdown;
    /// `immediate`: no shutdown, crash recovery from the WAL at start).
    pub fn restart(&self, mode: &str) {
        self.pg_ctl(&["-m", mode, "-l", &self.log(), "restart"])
            .unwrap_or_else(|e| panic!("pg_ctl restart -m {mode}: {e}"));
    }

    fn log(&self) -> String {
        self.dir.join("server.log").display().to_string()
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<(), String> {
        let data = self.dir.join("data").display().to_string();
        let mut all = vec!["-D", &data, "-w", "-t", "60"];
        all.extend_from_slice(args);
        self.run("pg_ctl", &all)
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let path = self.bin.join(program);
        let out = if is_root() {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&path)
                .args(args)
                .output()
        } else {
            Command::new(&path).args(args).output()
        }
        .map_err(|e| format!("{}: {e}", path.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["-m", "immediate", "stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// The directory holding `initdb` and `pg_ctl`.
fn postgres_bin() -> Option<std::path::PathBuf> {
    let has = |d: &std::path::Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .find(|d| has(d));
    on_path.or_else(|| {
        let mut versions: Vec<std::path::PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|d| has(d))
            .collect();
        versions.sort();
        versions.pop()
    })
}
