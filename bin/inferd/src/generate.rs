//! `inferd generate`: one prompt through the engine, text streamed to stdout as it
//! is produced, timings on stderr.

use std::io::Write;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use futures_util::StreamExt;
use inferd_backend::{Backend, Event, LocalBackend, Request};
use inferd_engine::{EngineConfig, LoadedModel};
use inferd_kernels::Precision;
use inferd_model::{ForwardOptions, KvStore};
use serde_json::json;

use crate::config::{default_of, engine_default};
use crate::registry;

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Model alias (see `inferd models list`) or path to a GGUF file.
    #[arg(long, default_value = registry::DEFAULT_MODEL)]
    model: String,
    /// The prompt text.
    #[arg(long)]
    prompt: String,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long)]
    chat: bool,
    /// System message for --chat (default: the template's own default, if any).
    #[arg(long)]
    system: Option<String>,
    /// Maximum tokens to generate.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Top-k cutoff; 0 disables.
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Nucleus cutoff in (0, 1].
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Min-p cutoff in [0, 1].
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    /// Repetition penalty (1 = off).
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// Seed for reproducible sampling (default: random).
    #[arg(long)]
    seed: Option<u64>,
    /// Worker threads for the kernels (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Don't stop at end-of-sequence tokens (benchmarks).
    #[arg(long)]
    ignore_eos: bool,
    /// Activation precision in the matmuls.
    #[arg(long, value_enum, default_value = "q8x2")]
    activations: crate::perf::ActivationsArg,
    /// Kernel path: auto (the fastest this CPU runs, never amx), or one of
    /// scalar, avx2, avx512, amx, neon that this CPU runs.
    #[arg(long, default_value = "auto")]
    isa: String,
    /// Download the model if it is a known alias that is not present.
    #[arg(long)]
    fetch: bool,
    /// Constrain the output to any JSON object.
    #[arg(long, conflicts_with_all = ["json_schema", "regex", "grammar"])]
    json: bool,
    /// Constrain the output to JSON valid against the schema in this file.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["regex", "grammar"])]
    json_schema: Option<std::path::PathBuf>,
    /// Constrain the output to a full match of this regular expression.
    #[arg(long, conflicts_with = "grammar")]
    regex: Option<String>,
    /// Constrain the output to the grammar in this file: GBNF (llama.cpp's format,
    /// starting at `root`) when it has `::=`, else Lark (starting at `start`).
    #[arg(long, value_name = "FILE")]
    grammar: Option<std::path::PathBuf>,
}

/// Engine knobs of `bench-engine`. Each may also come from the environment
/// (`INFERD_*`); a flag wins over the environment, which wins over the default.
#[derive(Args, Debug, Clone, Default)]
pub struct EngineArgs {
    #[arg(long, env = "INFERD_MAX_BATCH_TOKENS", help = default_of("Tokens per forward step (decode + prefill chunks)", engine_default().scheduler.max_batch_tokens))]
    pub max_batch_tokens: Option<usize>,
    #[arg(long, env = "INFERD_MAX_RUNNING", help = default_of("Sequences running at once", engine_default().scheduler.max_running))]
    pub max_running: Option<usize>,
    #[arg(long, env = "INFERD_MAX_WAITING", help = default_of("Requests waiting for admission before new ones are refused", engine_default().scheduler.max_waiting))]
    pub max_waiting: Option<usize>,
    #[arg(long, env = "INFERD_KV_CACHE_MIB", help = default_of("KV cache size in MiB", engine_default().kv_cache_mib))]
    pub kv_cache_mib: Option<usize>,
    /// Disable reuse of cached prompt prefixes.
    #[arg(long)]
    pub no_prefix_caching: bool,
    /// Prefill tokens allowed in a step that also decodes (bounds inter-token
    /// latency while new prompts prefill, at their TTFT's cost) [default: no cap
    /// beyond --max-batch-tokens].
    #[arg(long, env = "INFERD_MAX_PREFILL_TOKENS_WHILE_DECODING")]
    pub max_prefill_tokens_while_decoding: Option<usize>,
    /// Speculative decoding by prompt lookup [default: off].
    #[arg(long, env = "INFERD_SPECULATION", value_enum)]
    pub speculation: Option<crate::config::SpeculationMode>,
    /// The longest draft per sequence and step (1..=8) [default: 6].
    #[arg(long, env = "INFERD_SPEC_MAX_DRAFT")]
    pub spec_max_draft: Option<usize>,
    /// A draft model (alias or GGUF path) with the model's tokenizer, asked when
    /// prompt lookup finds nothing [default: none].
    #[arg(long, conflicts_with = "spec_draft_layers")]
    pub spec_draft_model: Option<String>,
    /// Self-speculation: the model's own first N layers as its draft model
    /// [default: none].
    #[arg(long)]
    pub spec_draft_layers: Option<usize>,
    /// Leave drafting to the draft model: no prompt lookup.
    #[arg(long)]
    pub no_spec_lookup: bool,
}

impl EngineArgs {
    /// The flags over the engine's defaults, validated.
    pub fn config(&self) -> Result<EngineConfig> {
        let config = crate::config::EngineSettings {
            max_batch_tokens: self.max_batch_tokens,
            max_running: self.max_running,
            max_waiting: self.max_waiting,
            max_prefill_tokens_while_decoding: self.max_prefill_tokens_while_decoding,
            kv_cache_mib: self.kv_cache_mib,
            prefix_caching: self.no_prefix_caching.then_some(false),
            speculation: self.speculation,
            spec_max_draft: self.spec_max_draft,
            spec_draft_model: self.spec_draft_model.clone(),
            spec_draft_layers: self.spec_draft_layers,
            spec_lookup: self.no_spec_lookup.then_some(false),
        }
        .engine_config();
        config.validate()?;
        Ok(config)
    }
}

pub fn init_threads(threads: Option<usize>) -> Result<usize> {
    let n = match threads {
        Some(0) => bail!("`--threads` must be at least 1, got 0"),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    inferd_kernels::pool::init_global(n);
    Ok(n)
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let threads = init_threads(args.threads)?;
    let path = registry::resolve(&args.model, args.fetch, "python3")?;
    let t0 = Instant::now();
    let mut loaded =
        LoadedModel::load(&path).with_context(|| format!("cannot load {}", path.display()))?;
    let load_secs = t0.elapsed().as_secs_f64();
    let precision: Precision = args.activations.into();
    loaded.model.set_options(ForwardOptions {
        precision,
        isa: crate::perf::isa_named(&args.isa)?,
    });
    let mut config = EngineConfig::default();
    // One request at a time: KV for one full context window (pages are touched
    // only as they fill).
    let c = loaded.model.config();
    let need = c.context_length * KvStore::bytes_per_token(c.n_layers, c.kv_dim());
    config.kv_cache_mib = need.div_ceil(1 << 20).max(1);
    config.scheduler.max_batch_tokens = 512;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("model")
        .to_owned();
    let backend = LocalBackend::start(name.clone(), loaded, config)?;
    let request = request_of(&args)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let mut events = backend.generate(request).await?;
        let mut stdout = std::io::stdout().lock();
        while let Some(event) = events.next().await {
            match event {
                Event::Delta { text, .. } => {
                    // A closed stdout (e.g. piped into `head`) ends generation.
                    if stdout
                        .write_all(text.as_bytes())
                        .and_then(|_| stdout.flush())
                        .is_err()
                    {
                        return Ok(());
                    }
                }
                Event::Done {
                    finish,
                    usage,
                    timings: t,
                    ..
                } => {
                    let _ = writeln!(stdout);
                    let prefill_secs = t.prefill_ms / 1e3;
                    eprintln!(
                        "\n[{name}] threads={threads} activations={precision:?} load={load_secs:.2}s prompt_tokens={} output_tokens={} ttft={:.1}ms prefill={:.1} tok/s decode={:.1} tok/s finish={}",
                        usage.prompt_tokens,
                        usage.completion_tokens,
                        t.ttft_ms,
                        usage.prompt_tokens as f64 / prefill_secs.max(1e-9),
                        t.decode_tokens_per_second,
                        finish.as_str(),
                    );
                    return Ok(());
                }
                Event::Error(e) => bail!(e),
                Event::Echo { .. } | Event::ToolCall { .. } | Event::Route(_) => {}
            }
        }
        bail!("the engine stopped before finishing")
    })
}

/// The flags as an OpenAI request body, validated like any request.
fn request_of(args: &GenerateArgs) -> Result<Request> {
    let mut body = json!({
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "min_p": args.min_p,
        "repetition_penalty": args.repeat_penalty,
        "ignore_eos": args.ignore_eos,
    });
    if let Some(seed) = args.seed {
        body["seed"] = json!(seed);
    }
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
    };
    if args.json {
        body["response_format"] = json!({"type": "json_object"});
    }
    if let Some(p) = &args.json_schema {
        let schema: serde_json::Value = serde_json::from_str(&read(p)?)
            .with_context(|| format!("{} is not JSON", p.display()))?;
        body["json_schema"] = schema;
    }
    if let Some(rx) = &args.regex {
        body["guided_regex"] = json!(rx);
    }
    if let Some(p) = &args.grammar {
        let text = read(p)?;
        let field = if text.contains("::=") {
            "grammar"
        } else {
            "guided_grammar"
        };
        body[field] = json!(text);
    }
    let arrival = Instant::now();
    let request = if args.chat {
        let mut messages = Vec::new();
        if let Some(s) = &args.system {
            messages.push(json!({"role": "system", "content": s}));
        }
        messages.push(json!({"role": "user", "content": args.prompt}));
        body["messages"] = json!(messages);
        Request::Chat(inferd_protocol::parse_chat(
            body.to_string().as_bytes(),
            arrival,
        )?)
    } else {
        body["prompt"] = json!(args.prompt);
        Request::Completion(inferd_protocol::parse_completion(
            body.to_string().as_bytes(),
            arrival,
        )?)
    };
    Ok(request)
}
