//! `inferd serve`: the OpenAI-compatible HTTP server on one local model.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use inferd_engine::{start_engine, EngineConfig, LoadedModel};
use inferd_server::{router, router_when_ready, ServerOptions, ServerState};

use crate::config::FileConfig;
use crate::generate::{init_threads, EngineArgs};
use crate::registry;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// TOML file with any of the keys below (snake_case, e.g. `port = 9000`);
    /// precedence: flag > environment (`INFERD_*`) > file > default.
    #[arg(long, env = "INFERD_CONFIG")]
    config: Option<PathBuf>,
    /// Model alias (see `inferd models list`) or path to a GGUF file [default: smollm2-135m].
    #[arg(long, env = "INFERD_MODEL")]
    model: Option<String>,
    /// Address to listen on [default: 127.0.0.1].
    #[arg(long, env = "INFERD_HOST")]
    host: Option<String>,
    /// Port to listen on; 0 picks a free one [default: 8080].
    #[arg(long, env = "INFERD_PORT")]
    port: Option<u16>,
    /// Require `Authorization: Bearer <key>` on every /v1 request.
    #[arg(long, env = "INFERD_API_KEY")]
    api_key: Option<String>,
    /// Worker threads for the kernels (default: all cores).
    #[arg(long, env = "INFERD_THREADS")]
    threads: Option<usize>,
    /// Download the model if it is a known alias that is not present.
    #[arg(long)]
    fetch: bool,
    /// On SIGTERM / Ctrl-C, seconds to let in-flight requests finish [default: 30].
    #[arg(long, env = "INFERD_SHUTDOWN_TIMEOUT_SECS")]
    shutdown_timeout_secs: Option<u64>,
    /// Cancel a request still unfinished this many seconds after arrival (408, or an
    /// error event when streaming); 0 means no limit [default: 600].
    #[arg(long, env = "INFERD_REQUEST_TIMEOUT_SECS")]
    request_timeout_secs: Option<u64>,
    #[command(flatten)]
    engine: EngineArgs,
}

pub fn run(args: ServeArgs) -> Result<()> {
    use std::io::IsTerminal;
    // Logs go to stderr (stdout stays free), without colour codes unless a person
    // is watching.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let file = match &args.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    let threads = init_threads(args.threads.or(file.threads))?;
    let config = args.engine.config_with(&file)?;
    let model = args
        .model
        .clone()
        .or(file.model.clone())
        .unwrap_or_else(|| registry::DEFAULT_MODEL.to_owned());
    let host = args
        .host
        .clone()
        .or(file.host.clone())
        .unwrap_or_else(|| "127.0.0.1".to_owned());
    let port = args.port.or(file.port).unwrap_or(8080);
    let api_key = args.api_key.clone().or(file.api_key.clone());
    let shutdown_secs = args
        .shutdown_timeout_secs
        .or(file.shutdown_timeout_secs)
        .unwrap_or(30);
    let request_timeout = match args
        .request_timeout_secs
        .or(file.request_timeout_secs)
        .unwrap_or(600)
    {
        0 => None,
        secs => Some(std::time::Duration::from_secs(secs)),
    };
    let path = registry::resolve(&model, args.fetch, "python3")?;
    let model_id = if registry::find(&model).is_some() {
        model.clone()
    } else {
        path.file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("model")
            .to_owned()
    };
    let options = ServerOptions {
        model_id: model_id.clone(),
        api_key,
        request_timeout,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let addr: SocketAddr = format!("{host}:{port}")
            .parse()
            .with_context(|| format!("`--host {host}` / `--port {port}` is not a valid address"))?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr()?;
        // Bound before loading: /health answers 503 "loading" until the model is in.
        tracing::info!(%local, "listening; loading the model");
        let app = Arc::new(OnceLock::new());
        let (loaded_tx, loaded_rx) = tokio::sync::oneshot::channel::<Result<()>>();
        {
            let app = Arc::clone(&app);
            std::thread::spawn(move || {
                let result = load(&path, config, options).map(|router| {
                    let _ = app.set(router);
                });
                let _ = loaded_tx.send(result);
            });
        }
        // On a signal: stop accepting, let in-flight requests finish, but not for
        // longer than the deadline.
        let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
        let server =
            axum::serve(listener, router_when_ready(app)).with_graceful_shutdown(async move {
                shutdown_signal().await;
                tracing::info!(
                    deadline_secs = shutdown_secs,
                    "shutting down: finishing in-flight requests"
                );
                let _ = signalled_tx.send(());
            });
        let deadline = async move {
            if signalled_rx.await.is_ok() {
                tokio::time::sleep(std::time::Duration::from_secs(shutdown_secs)).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let loading = async move {
            match loaded_rx.await {
                Ok(Ok(())) => {
                    tracing::info!(%local, model = %model_id, threads, "ready: http://{local}/v1");
                    std::future::pending::<Result<()>>().await
                }
                Ok(Err(e)) => Err(e),
                Err(_) => Err(anyhow::anyhow!("the loading thread died")),
            }
        };
        tokio::select! {
            result = server => result?,
            failed = loading => return failed,
            _ = deadline => tracing::warn!("shutdown deadline passed; dropping remaining requests"),
        }
        tracing::info!("stopped");
        Ok(())
    })
}

/// Loads the model, logging each stage, and starts the engine behind the router.
fn load(path: &Path, config: EngineConfig, options: ServerOptions) -> Result<axum::Router> {
    let started = Instant::now();
    let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    tracing::info!(model = %path.display(), mib = bytes >> 20, "loading weights and tokenizer");
    let loaded =
        LoadedModel::load(path).with_context(|| format!("cannot load {}", path.display()))?;
    let c = &loaded.model.config;
    tracing::info!(
        arch = ?c.arch,
        layers = c.n_layers,
        context = c.context_length,
        vocab = c.vocab_size,
        ms = started.elapsed().as_millis() as u64,
        "model loaded"
    );
    let (tokenizer, template) = (loaded.tokenizer.clone(), loaded.chat_template.clone());
    let engine = start_engine(loaded, config)?;
    tracing::info!(
        kv_blocks = engine
            .gauges
            .kv_free_blocks
            .load(std::sync::atomic::Ordering::Relaxed),
        ms = started.elapsed().as_millis() as u64,
        "engine started"
    );
    Ok(router(Arc::new(ServerState::new(
        engine, tokenizer, template, options,
    ))))
}

/// Ctrl-C or SIGTERM: stop accepting, let in-flight requests finish.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
