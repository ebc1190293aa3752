//! Helpers shared by the tests that run real models (dev-dependency only).

use std::net::SocketAddr;
use std::path::PathBuf;

/// The SmolLM2-135M GGUF: `$INFERD_TEST_MODEL_SMOLLM2`, else the models folder
/// under `$INFERD_HOME` (default `~/.cache/inferd`), where `make fetch-models` puts
/// it. A missing model fails the calling test with the command that fetches it; a
/// reference check must never pass by being skipped.
pub fn smollm2_path() -> PathBuf {
    if let Some(p) = std::env::var_os("INFERD_TEST_MODEL_SMOLLM2") {
        return PathBuf::from(p);
    }
    let p = models_dir().join("smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.is_file(),
        "{} is missing: run `make fetch-models` first",
        p.display()
    );
    p
}

/// The all-MiniLM-L6-v2 folder (config.json, model.safetensors, tokenizer.json):
/// `$INFERD_TEST_MODEL_MINILM`, else `minilm-l6` in the models folder under
/// `$INFERD_HOME` (default `~/.cache/inferd`). Missing files fail the calling test
/// with the command that fetches them, never skip it.
pub fn minilm_path() -> PathBuf {
    let dir = match std::env::var_os("INFERD_TEST_MODEL_MINILM") {
        Some(p) => PathBuf::from(p),
        None => models_dir().join("minilm-l6"),
    };
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(
            dir.join(f).is_file(),
            "{} is missing: run `inferd models fetch minilm-l6` (or `make fetch-models`) first",
            dir.join(f).display()
        );
    }
    dir
}

/// `$INFERD_HOME/models` (default `~/.cache/inferd/models`), as the registry lays it out.
fn models_dir() -> PathBuf {
    std::env::var_os("INFERD_HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
                .join(".cache")
                .join("inferd")
        })
        .join("models")
}

/// Serves `app` on 127.0.0.1 at a free port from its own runtime thread, for tests
/// that talk to a real server over TCP; returns the address once it listens.
pub fn serve_in_background(app: axum::Router) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a test runtime starts");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("a free local port");
            tx.send(listener.local_addr().expect("bound address"))
                .expect("the test waits for the address");
            axum::serve(listener, app)
                .await
                .expect("the test server runs");
        });
    });
    rx.recv().expect("the test server starts")
}

/// Writes one line straight to the process's stderr, past the test harness's
/// output capture (which only intercepts `print!`/`eprint!`), so that what a test
/// ran — e.g. which kernel paths — shows in `make test`'s output even when it passes.
pub fn report(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}
