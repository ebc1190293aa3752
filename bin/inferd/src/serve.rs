//! `inferd serve`: the OpenAI-compatible HTTP server on one or more local models,
//! each in its own engine with its own KV budget.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use inferd_backend::{Backend, EmbeddingBackend, LocalBackend};
use inferd_engine::{EngineConfig, LoadedModel};
use inferd_server::{router, router_when_ready, ServerOptions, ServerState};
use serde_json::{json, Map, Value};

use crate::config::{default_of, engine_default, EngineSettings, ModelSettings, ServeConfig};
use crate::generate::init_threads;
use crate::registry;

fn serve_default() -> ServeConfig {
    ServeConfig::default()
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// TOML file with any of the keys below (snake_case, e.g. `port = 9000`) and a
    /// `[[models]]` table per model; precedence: flag > environment (`INFERD_<KEY>`)
    /// > file > default.
    #[arg(long, env = "INFERD_CONFIG")]
    config: Option<PathBuf>,
    /// Model alias (see `inferd models list`) or path to a GGUF file; repeat to
    /// serve several, `NAME=MODEL` to choose the id clients send [default:
    /// smollm2-135m].
    #[arg(long = "model")]
    models: Vec<String>,
    #[arg(long, help = default_of("Address to listen on", serve_default().host))]
    host: Option<String>,
    #[arg(long, help = default_of("Port to listen on; 0 picks a free one", serve_default().port))]
    port: Option<u16>,
    /// Require `Authorization: Bearer <key>` on every /v1 request.
    #[arg(long)]
    api_key: Option<String>,
    /// Worker threads for the kernels [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    /// The chat models' kernel path: auto, or scalar, avx2, avx512, amx, neon
    /// where this CPU runs it [default: auto, never amx].
    #[arg(long)]
    isa: Option<String>,
    /// Download each model that is a known alias and not present.
    #[arg(long)]
    fetch: bool,
    #[arg(long, help = default_of("On SIGTERM / Ctrl-C, seconds to let in-flight requests finish", serve_default().shutdown_timeout_secs))]
    shutdown_timeout_secs: Option<u64>,
    #[arg(long, help = default_of("Cancel a request still unfinished this many seconds after arrival (408, or an error event when streaming); 0 means no limit", serve_default().request_timeout_secs))]
    request_timeout_secs: Option<u64>,
    #[arg(long, help = default_of("Tokens per forward step (decode + prefill chunks), every model", engine_default().scheduler.max_batch_tokens))]
    max_batch_tokens: Option<usize>,
    #[arg(long, help = default_of("Sequences running at once, every model", engine_default().scheduler.max_running))]
    max_running: Option<usize>,
    #[arg(long, help = default_of("Requests waiting for admission before new ones are refused, every model", engine_default().scheduler.max_waiting))]
    max_waiting: Option<usize>,
    #[arg(long, help = default_of("KV cache budget of each model in MiB", engine_default().kv_cache_mib))]
    kv_cache_mib: Option<usize>,
    /// Disable reuse of cached prompt prefixes.
    #[arg(long)]
    no_prefix_caching: bool,
    /// Prefill tokens allowed in a step that also decodes (bounds inter-token
    /// latency while new prompts prefill, at their TTFT's cost) [default: no cap
    /// beyond --max-batch-tokens].
    #[arg(long)]
    max_prefill_tokens_while_decoding: Option<usize>,
    /// Speculative decoding by prompt lookup, every model: `adaptive` drafts
    /// what the step-cost model says pays, `always` whatever it finds [default: off].
    #[arg(long, value_enum)]
    speculation: Option<crate::config::SpeculationMode>,
    /// The longest draft per sequence and step (1..=8), every model [default: 6].
    #[arg(long)]
    spec_max_draft: Option<usize>,
    /// A draft model (alias or GGUF path) with the served model's tokenizer,
    /// asked when prompt lookup finds nothing [default: none].
    #[arg(long, conflicts_with = "spec_draft_layers")]
    spec_draft_model: Option<String>,
    /// Self-speculation: the model's own first N layers as its draft model
    /// [default: none].
    #[arg(long)]
    spec_draft_layers: Option<usize>,
    /// Leave drafting to the draft model: no prompt lookup.
    #[arg(long)]
    no_spec_lookup: bool,
    /// Keep agent memory (`/v1/memory`): a directory for the embedded SQLite
    /// log and its projections, or a postgres:// URL that several servers
    /// share [default: no memory].
    #[arg(long)]
    state: Option<String>,
    /// The served embedding model whose vectors memory search uses (a model
    /// name, e.g. `minilm` served with `--model minilm`).
    #[arg(long, requires = "state")]
    memory_model: Option<String>,
    /// Managed API keys with per-key and per-team rate limits and budgets,
    /// kept in the state store (`POST /v1/keys` with the `--api-key` admin key).
    #[arg(long, requires = "state", requires = "api_key")]
    keys: bool,
    /// Keep the keys' per-minute counters in Redis (`redis://host:6379`),
    /// shared by every replica [default: in the state store].
    #[arg(long, requires = "keys")]
    limits: Option<String>,
}

impl ServeArgs {
    /// The keys the command line sets, as a partial configuration.
    fn overrides(&self) -> Value {
        let mut m = Map::new();
        let mut put = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                m.insert(k.into(), v);
            }
        };
        put("host", self.host.as_ref().map(|v| json!(v)));
        put("port", self.port.map(|v| json!(v)));
        put("api_key", self.api_key.as_ref().map(|v| json!(v)));
        put("threads", self.threads.map(|v| json!(v)));
        put("isa", self.isa.as_ref().map(|v| json!(v)));
        put(
            "shutdown_timeout_secs",
            self.shutdown_timeout_secs.map(|v| json!(v)),
        );
        put(
            "request_timeout_secs",
            self.request_timeout_secs.map(|v| json!(v)),
        );
        put("max_batch_tokens", self.max_batch_tokens.map(|v| json!(v)));
        put("max_running", self.max_running.map(|v| json!(v)));
        put("max_waiting", self.max_waiting.map(|v| json!(v)));
        put("kv_cache_mib", self.kv_cache_mib.map(|v| json!(v)));
        put(
            "max_prefill_tokens_while_decoding",
            self.max_prefill_tokens_while_decoding.map(|v| json!(v)),
        );
        put(
            "prefix_caching",
            self.no_prefix_caching.then_some(json!(false)),
        );
        put("speculation", self.speculation.map(|v| json!(v)));
        put("spec_max_draft", self.spec_max_draft.map(|v| json!(v)));
        put(
            "spec_draft_model",
            self.spec_draft_model.as_ref().map(|v| json!(v)),
        );
        put(
            "spec_draft_layers",
            self.spec_draft_layers.map(|v| json!(v)),
        );
        put("spec_lookup", self.no_spec_lookup.then_some(json!(false)));
        if let Some(state) = &self.state {
            let mut memory = json!({ "state": state });
            if let Some(model) = &self.memory_model {
                memory["model"] = json!(model);
            }
            if self.keys {
                memory["keys"] = json!(true);
            }
            if let Some(l) = &self.limits {
                memory["limits"] = json!(l);
            }
            m.insert("memory".into(), memory);
        }
        Value::Object(m)
    }

    /// `--model` entries (they replace the file's model list).
    fn models(&self) -> Vec<ModelSettings> {
        self.models
            .iter()
            .map(|m| match m.split_once('=') {
                Some((name, model)) if !name.is_empty() && !model.is_empty() => ModelSettings {
                    model: model.to_owned(),
                    name: Some(name.to_owned()),
                    precision: None,
                    engine: EngineSettings::default(),
                },
                _ => ModelSettings {
                    model: m.clone(),
                    name: None,
                    precision: None,
                    engine: EngineSettings::default(),
                },
            })
            .collect()
    }
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
    let mut config = ServeConfig::load(args.config.as_deref(), &args.overrides())?;
    if !args.models.is_empty() {
        config.model = None;
        config.models = args.models();
    }
    config.validate()?;
    let threads = init_threads(config.threads)?;
    // Resolve every model before binding, so a missing file fails at once.
    let isa = crate::perf::isa_named(config.isa.as_deref().unwrap_or("auto"))?;
    let embed_precision = embed_precision_from_env()?;
    let models: Vec<ModelToLoad> = config
        .models()
        .into_iter()
        .map(|(m, engine)| {
            let path = registry::resolve(&m.model, args.fetch, "python3")?;
            Ok(ModelToLoad {
                name: m.name(),
                path,
                engine,
                precision: m.precision.map(Into::into).or(embed_precision),
                isa,
            })
        })
        .collect::<Result<_>>()?;
    let upstreams = config
        .upstreams
        .iter()
        .map(|u| u.resolve())
        .collect::<Result<Vec<_>>>()?;
    let gateway = GatewayPlan {
        tiers: config.tiers.clone(),
        routing: config.routing.clone(),
        prices: config
            .upstreams
            .iter()
            .map(|u| (u.name.clone(), u.price_in_per_mtok, u.price_out_per_mtok))
            .collect(),
        rules: config.rules.iter().map(|r| r.spec()).collect(),
    };
    let options = ServerOptions {
        api_key: config.api_key.clone(),
        request_timeout: match config.request_timeout_secs {
            0 => None,
            secs => Some(std::time::Duration::from_secs(secs)),
        },
    };
    let memory = config.memory.clone();
    let (host, port, shutdown_secs) = (
        config.host.clone(),
        config.port,
        config.shutdown_timeout_secs,
    );
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
        // Bound before loading: /health answers 503 "loading" until the models are in.
        tracing::info!(%local, models = models.len(), upstreams = upstreams.len(), "listening; loading");
        let names: Vec<String> = models
            .iter()
            .map(|m| m.name.clone())
            .chain(upstreams.iter().map(|u| u.name.clone()))
            .chain(gateway.tiers.iter().map(|t| t.name.clone()))
            .chain((!gateway.tiers.is_empty()).then(|| gateway.routing.name.clone()))
            .collect();
        let app = Arc::new(OnceLock::new());
        let (loaded_tx, loaded_rx) = tokio::sync::oneshot::channel::<Result<()>>();
        {
            let app = Arc::clone(&app);
            // Loading runs off the runtime, but inside its context, so that
            // what it builds can start background tasks (health checks).
            let rt = tokio::runtime::Handle::current();
            std::thread::spawn(move || {
                let _rt = rt.enter();
                let result = load_all(models, upstreams, gateway, options, memory).map(|router| {
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
                    tracing::info!(%local, models = %names.join(","), threads, "ready: http://{local}/v1");
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

/// Resident memory of this process in MiB (Linux), for the loading log.
fn rss_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb >> 10)
}

/// Loads every model into its own engine, logging each stage, and builds the router.
/// What the gateway is built from: the config's tiers and routing, and each
/// upstream's price.
pub struct GatewayPlan {
    pub tiers: Vec<crate::config::TierSettings>,
    pub routing: crate::config::RoutingSettings,
    /// Upstream name → USD per 1M input and per 1M output tokens.
    pub prices: Vec<(String, f64, f64)>,
    pub rules: Vec<inferd_handlers::RuleSpec>,
}

impl GatewayPlan {
    /// A tier's prices: its dearest backend's (local models cost 0).
    fn tier_prices(&self, t: &crate::config::TierSettings) -> (f64, f64) {
        t.backends
            .iter()
            .filter_map(|b| self.prices.iter().find(|p| &p.0 == b))
            .map(|p| (p.1, p.2))
            .fold((0.0, 0.0), |a, b| if b.0 + b.1 > a.0 + a.1 { b } else { a })
    }

    /// What usage costs, by tier and by upstream, for keys' budgets.
    fn price_table(&self) -> inferd_server::Prices {
        let mut by_name: std::collections::HashMap<String, (f64, f64)> = self
            .prices
            .iter()
            .map(|p| (p.0.clone(), (p.1, p.2)))
            .collect();
        for t in &self.tiers {
            by_name.insert(t.name.clone(), self.tier_prices(t));
        }
        inferd_server::Prices { by_name }
    }
}

/// `auto` and one gateway per tier, over the backends already built.
fn build_gateway(
    plan: &GatewayPlan,
    backends: &[Arc<dyn Backend>],
    local_names: Vec<String>,
) -> Result<Vec<inferd_gateway::Gateway>> {
    let find = |name: &str| {
        backends
            .iter()
            .find(|b| b.name() == name)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("tier backend `{name}` is not loaded"))
    };
    let tiers = plan
        .tiers
        .iter()
        .map(|t| {
            let members = t
                .backends
                .iter()
                .map(|b| find(b))
                .collect::<Result<Vec<_>>>()?;
            let (price_in, price_out) = plan.tier_prices(t);
            let policy = t
                .policy()
                .ok_or_else(|| anyhow::anyhow!("tier `{}`: unknown balance", t.name))?;
            Ok(inferd_gateway::Tier {
                name: t.name.clone(),
                local: t.backends.iter().all(|b| local_names.contains(b)),
                balancer: inferd_gateway::balance::Balancer::new(policy, members.len()),
                backends: members,
                price: price_in + price_out,
                price_in,
                price_out,
                context_window: t.context_window,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let detectors = plan
        .routing
        .private_patterns
        .iter()
        .map(|p| inferd_gateway::Detector::new(p).map_err(anyhow::Error::msg))
        .collect::<Result<Vec<_>>>()?;
    let tools = match &plan.routing.tools {
        None => None,
        Some(t) => {
            let e = find(&t.model)?;
            if !e.capabilities().embeddings {
                anyhow::bail!("`routing.tools.model` {:?} does not embed", t.model);
            }
            let examples = t.examples()?;
            let n = examples.len();
            let narrowing = tokio::runtime::Handle::current()
                .block_on(inferd_gateway::tools::ToolNarrowing::new(
                    e,
                    t.top_k,
                    t.min_tools,
                    examples,
                    t.examples_file.clone(),
                ))
                .map_err(anyhow::Error::msg)?;
            tracing::info!(top_k = t.top_k, examples = n, "tool narrowing");
            Some(Arc::new(narrowing))
        }
    };
    let embedder = |model: &str, field: &str| -> Result<Arc<dyn Backend>> {
        let e = find(model)?;
        if !e.capabilities().embeddings {
            anyhow::bail!("`{field}` {model:?} does not embed");
        }
        Ok(e)
    };
    let intents = match &plan.routing.intents {
        None => None,
        Some(i) => {
            let e = embedder(&i.model, "routing.intents.model")?;
            let learned = i.examples()?;
            let n = learned.len();
            let intents = tokio::runtime::Handle::current()
                .block_on(inferd_gateway::intent::Intents::new(
                    e,
                    i.specs(),
                    i.threshold,
                    i.clarification.clone(),
                    learned,
                    i.examples_file.clone(),
                ))
                .map_err(anyhow::Error::msg)?;
            tracing::info!(
                intents = i.intents.len(),
                learned = n,
                threshold = i.threshold,
                "intent layer"
            );
            Some(Arc::new(intents))
        }
    };
    let context = match &plan.routing.context {
        None => None,
        Some(c) => {
            let (cut_order, limits) = c.parts().map_err(anyhow::Error::msg)?;
            let summary = match &c.summary_model {
                None => None,
                Some(m) => Some(inferd_gateway::context::Summary {
                    backend: find(m)?,
                    max_tokens: c.summary_max_tokens,
                }),
            };
            tracing::info!(
                output_reserve = c.output_reserve,
                summary = c.summary_model.is_some(),
                "context budgets"
            );
            Some(Arc::new(inferd_gateway::context::Budgets {
                output_reserve: c.output_reserve,
                limits,
                cut_order,
                summary,
            }))
        }
    };
    for t in &tiers {
        tracing::info!(tier = %t.name, local = t.local, price = t.price, backends = t.backends.len(), balance = %t.balancer.policy().name(), "tier");
    }
    Ok(inferd_gateway::Gateway::all(
        &plan.routing.name,
        inferd_gateway::Routing {
            tiers,
            detectors,
            max_attempts: plan.routing.max_attempts,
            escalation: plan.routing.escalation.as_ref().and_then(|e| e.build()),
            rules: inferd_handlers::Rules::new(&plan.rules).map_err(anyhow::Error::msg)?,
            cache: plan.routing.cache.as_ref().map(|c| Arc::new(c.build())),
            tools,
            intents,
            context,
            embedder: match plan
                .routing
                .cache
                .as_ref()
                .and_then(|c| c.semantic_model.as_ref())
            {
                None => None,
                Some(m) => {
                    let e = find(m)?;
                    if !e.capabilities().embeddings {
                        anyhow::bail!("`routing.cache.semantic_model` {m:?} does not embed");
                    }
                    Some(e)
                }
            },
        },
    ))
}

/// A `[[models]]` entry resolved to its file or directory.
struct ModelToLoad {
    name: String,
    path: PathBuf,
    engine: EngineConfig,
    /// An embedding model's arithmetic, when the entry (or
    /// `INFERD_EMBED_PRECISION`) sets one.
    precision: Option<inferd_embed::Precision>,
    /// A chat model's kernel path.
    isa: inferd_kernels::Isa,
}

/// `INFERD_EMBED_PRECISION` (`f32`, `bf16` or `q8`): the embedding models'
/// precision where their `[[models]]` entry sets none.
fn embed_precision_from_env() -> Result<Option<inferd_embed::Precision>> {
    match std::env::var("INFERD_EMBED_PRECISION") {
        Err(_) => Ok(None),
        Ok(v) => v
            .parse()
            .map(Some)
            .map_err(|e| anyhow::anyhow!("INFERD_EMBED_PRECISION: {e}")),
    }
}

fn load_all(
    models: Vec<ModelToLoad>,
    upstreams: Vec<inferd_gateway::UpstreamConfig>,
    gateway: GatewayPlan,
    options: ServerOptions,
    memory: Option<crate::memory::MemorySettings>,
) -> Result<axum::Router> {
    let local_names: Vec<String> = models.iter().map(|m| m.name.clone()).collect();
    let mut backends: Vec<Arc<dyn Backend>> = Vec::new();
    let mut embedders: Vec<(String, Arc<inferd_embed::Embedder>)> = Vec::new();
    for ModelToLoad {
        name,
        path,
        engine: config,
        precision,
        isa,
    } in models
    {
        let started = Instant::now();
        if path.is_dir() {
            // A model directory (safetensors + tokenizer.json): an embedding model.
            let mut embedder = inferd_embed::Embedder::load(&path)
                .with_context(|| format!("cannot load the embedding model {}", path.display()))?;
            if let Some(p) = precision {
                embedder = embedder.with_precision(p).with_context(|| {
                    format!(
                        "model {name}: precision {} needs AVX512-BF16, which this CPU lacks",
                        p.name()
                    )
                })?;
            }
            tracing::info!(
                model = %name,
                precision = %embedder.precision().name(),
                dims = embedder.dims(),
                max_tokens = embedder.max_tokens(),
                rss_mib = rss_mib().unwrap_or(0),
                ms = started.elapsed().as_millis() as u64,
                "embedding model loaded"
            );
            let embedder = Arc::new(embedder);
            embedders.push((name.clone(), Arc::clone(&embedder)));
            backends.push(Arc::new(EmbeddingBackend::start(name, embedder)));
            continue;
        }
        if precision.is_some() {
            anyhow::bail!(
                "model {name}: `precision` applies to embedding models; {} is a GGUF chat model",
                path.display()
            );
        }
        let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        tracing::info!(model = %name, file = %path.display(), file_mib = bytes >> 20, "loading weights and tokenizer");
        let mut loaded =
            LoadedModel::load(&path).with_context(|| format!("cannot load {}", path.display()))?;
        loaded.model.set_options(inferd_model::ForwardOptions {
            isa,
            ..loaded.model.options()
        });
        let c = loaded.model.config();
        tracing::info!(
            model = %name,
            arch = ?c.arch,
            layers = c.n_layers,
            context = c.context_length,
            vocab = c.vocab_size,
            rss_mib = rss_mib().unwrap_or(0),
            ms = started.elapsed().as_millis() as u64,
            "model loaded (weights mapped and repacked)"
        );
        let kv_mib = config.kv_cache_mib;
        let local = LocalBackend::start(name.clone(), loaded, config)
            .with_context(|| format!("cannot start the engine of `{name}`"))?;
        tracing::info!(
            model = %name,
            kv_blocks = local
                .engine()
                .gauges
                .kv_free_blocks
                .load(std::sync::atomic::Ordering::Relaxed),
            kv_mib,
            ms = started.elapsed().as_millis() as u64,
            "engine started"
        );
        backends.push(Arc::new(local));
    }
    for u in upstreams {
        let upstream = inferd_gateway::Upstream::new(u)?;
        let c = upstream.config();
        tracing::info!(upstream = %c.name, base_url = %c.base_url, model = %c.model, "upstream added");
        backends.push(Arc::new(upstream));
    }
    let prices = gateway.price_table();
    if !gateway.tiers.is_empty() {
        for g in build_gateway(&gateway, &backends, local_names)? {
            backends.push(Arc::new(g));
        }
    }
    let mut state = ServerState::new(backends, options).map_err(anyhow::Error::msg)?;
    if let Some(settings) = memory {
        state = state.with_memory(Arc::new(open_memory(&settings, &embedders)?));
        if settings.keys {
            state = state.with_keys(prices).map_err(anyhow::Error::msg)?;
        }
    }
    Ok(router(Arc::new(state)))
}

/// Opens the memory store, its vectors from the embedding model it names.
fn open_memory(
    settings: &crate::memory::MemorySettings,
    embedders: &[(String, Arc<inferd_embed::Embedder>)],
) -> Result<inferd_memory::Memory> {
    let embedder: Option<Arc<dyn inferd_memory::TextEmbedder>> = match &settings.model {
        None => None,
        Some(name) => {
            let (_, e) = embedders.iter().find(|(n, _)| n == name).with_context(|| {
                let served: Vec<&str> = embedders.iter().map(|(n, _)| n.as_str()).collect();
                format!(
                    "`memory.model` {name:?} is not a served embedding model (embedding models: {})",
                    if served.is_empty() { "none".to_owned() } else { served.join(", ") }
                )
            })?;
            Some(Arc::clone(e) as Arc<dyn inferd_memory::TextEmbedder>)
        }
    };
    let started = Instant::now();
    let config = settings.config()?;
    let memory = inferd_memory::Memory::open(&config, embedder)
        .with_context(|| format!("cannot open the memory store at {}", config.state))?;
    tracing::info!(
        state = %config.state,
        durability = ?config.durability,
        search = settings.model.is_some(),
        ms = started.elapsed().as_millis() as u64,
        "memory store open"
    );
    Ok(memory)
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
