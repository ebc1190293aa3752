//! `inferd serve`: the OpenAI-compatible HTTP server on one local model.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use inferd_engine::{start_engine, LoadedModel};
use inferd_server::{router, ServerState};

use crate::generate::{init_threads, EngineArgs};
use crate::registry;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Model alias (see `inferd models list`) or path to a GGUF file.
    #[arg(long, env = "INFERD_MODEL", default_value = registry::DEFAULT_MODEL)]
    model: String,
    /// Address to listen on.
    #[arg(long, env = "INFERD_HOST", default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "INFERD_PORT", default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer <key>` on every /v1 request.
    #[arg(long, env = "INFERD_API_KEY")]
    api_key: Option<String>,
    /// Worker threads for the kernels (default: all cores).
    #[arg(long, env = "INFERD_THREADS")]
    threads: Option<usize>,
    /// Download the model if it is a known alias that is not present.
    #[arg(long)]
    fetch: bool,
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
    let threads = init_threads(args.threads)?;
    let config = args.engine.config()?;
    let path = registry::resolve(&args.model, args.fetch, "python3")?;
    let model_id = if registry::find(&args.model).is_some() {
        args.model.clone()
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
        args.api_key,
    ));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let addr: SocketAddr = format!("{}:{}", args.host, args.port)
            .parse()
            .with_context(|| {
                format!(
                    "`--host {}` / `--port {}` is not a valid address",
                    args.host, args.port
                )
            })?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr()?;
        tracing::info!(%local, model = %model_id, threads, "ready: http://{local}/v1");
        axum::serve(listener, router(state))
            .with_graceful_shutdown(shutdown_signal())
            .await?;
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
