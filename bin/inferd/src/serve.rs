//! `inferd serve`: the OpenAI-compatible HTTP server on one local model.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use inferd_engine::{start_engine, LoadedModel};
use inferd_server::{router, ServerState};

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
    let path = registry::resolve(&model, args.fetch, "python3")?;
    let model_id = if registry::find(&model).is_some() {
        model.clone()
    } else {
        path.file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("model")
            .to_owned()
    };
    tracing::info!(model = %path.display(), "loading");
    let loaded =
        LoadedModel::load(&path).with_context(|| format!("cannot load {}", path.display()))?;
    let (tokenizer, template) = (loaded.tokenizer.clone(), loaded.chat_template.clone());
    let engine = start_engine(loaded, config)?;
    let state = Arc::new(ServerState::new(
        engine,
        tokenizer,
        template,
        model_id.clone(),
        api_key,
    ));
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
        tracing::info!(%local, model = %model_id, threads, "ready: http://{local}/v1");
        // On a signal: stop accepting, let in-flight requests finish, but not for
        // longer than the deadline.
        let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
        let server = axum::serve(listener, router(state)).with_graceful_shutdown(async move {
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
        tokio::select! {
            result = server => result?,
            _ = deadline => tracing::warn!("shutdown deadline passed; dropping remaining requests"),
        }
        tracing::info!("stopped");
        Ok(())
    })
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
