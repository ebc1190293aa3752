//! `inferd generate`: one prompt through the engine, text streamed to stdout as it
//! is produced, timings on stderr.

use std::io::Write;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use inferd_engine::{
    start_engine, EngineConfig, EngineRequest, LoadedModel, SamplingParams, TokenEvent,
};
use inferd_model::KvStore;
use inferd_scheduler::SchedulerConfig;
use inferd_tokenizer::ChatMessage;

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
    /// Download the model if it is a known alias that is not present.
    #[arg(long)]
    fetch: bool,
}

/// Engine knobs shared by the commands that start an engine. Each may also come
/// from the environment (`INFERD_*`) or, for `serve`, a TOML config file; a flag
/// wins over the environment, which wins over the file, which wins over the default.
#[derive(Args, Debug, Clone, Default)]
pub struct EngineArgs {
    /// Tokens per forward step (decode + prefill chunks) [default: 256].
    #[arg(long, env = "INFERD_MAX_BATCH_TOKENS")]
    pub max_batch_tokens: Option<usize>,
    /// Sequences running at once [default: 64].
    #[arg(long, env = "INFERD_MAX_RUNNING")]
    pub max_running: Option<usize>,
    /// Requests waiting for admission before new ones are refused [default: 256].
    #[arg(long, env = "INFERD_MAX_WAITING")]
    pub max_waiting: Option<usize>,
    /// KV cache size in MiB [default: 512].
    #[arg(long, env = "INFERD_KV_CACHE_MIB")]
    pub kv_cache_mib: Option<usize>,
    /// Disable reuse of cached prompt prefixes.
    #[arg(long)]
    pub no_prefix_caching: bool,
    /// Prefill tokens allowed in a step that also decodes (bounds inter-token
    /// latency while new prompts prefill, at their TTFT's cost) [default: no cap
    /// beyond --max-batch-tokens].
    #[arg(long, env = "INFERD_MAX_PREFILL_TOKENS_WHILE_DECODING")]
    pub max_prefill_tokens_while_decoding: Option<usize>,
}

impl EngineArgs {
    /// Fills unset knobs from `file` (a `[engine]`-less flat TOML table) and then
    /// the defaults, and validates the result.
    pub fn config_with(&self, file: &crate::config::FileConfig) -> Result<EngineConfig> {
        let d = EngineConfig::default();
        let config = EngineConfig {
            scheduler: SchedulerConfig {
                max_batch_tokens: self
                    .max_batch_tokens
                    .or(file.max_batch_tokens)
                    .unwrap_or(d.scheduler.max_batch_tokens),
                max_running: self
                    .max_running
                    .or(file.max_running)
                    .unwrap_or(d.scheduler.max_running),
                max_waiting: self
                    .max_waiting
                    .or(file.max_waiting)
                    .unwrap_or(d.scheduler.max_waiting),
                max_prefill_tokens_while_decoding: self
                    .max_prefill_tokens_while_decoding
                    .or(file.max_prefill_tokens_while_decoding),
            },
            kv_cache_mib: self
                .kv_cache_mib
                .or(file.kv_cache_mib)
                .unwrap_or(d.kv_cache_mib),
            enable_prefix_caching: !self.no_prefix_caching
                && file.prefix_caching.unwrap_or(d.enable_prefix_caching),
            ..d
        };
        config.validate()?;
        Ok(config)
    }

    pub fn config(&self) -> Result<EngineConfig> {
        self.config_with(&Default::default())
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
    let loaded =
        LoadedModel::load(&path).with_context(|| format!("cannot load {}", path.display()))?;
    let load_secs = t0.elapsed().as_secs_f64();
    let tok = &loaded.tokenizer;

    let prompt_text = if args.chat {
        let template = loaded
            .chat_template
            .as_ref()
            .context("this model has no chat template; drop --chat")?;
        let mut messages = Vec::new();
        if let Some(s) = &args.system {
            messages.push(ChatMessage::new("system", s.as_str()));
        }
        messages.push(ChatMessage::new("user", args.prompt.as_str()));
        template.render(&messages, None, true)?
    } else {
        args.prompt.clone()
    };
    let prompt = tok.encode(&prompt_text, !args.chat)?;
    let sampling = SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        repetition_penalty: args.repeat_penalty,
        seed: args.seed,
        ..Default::default()
    };
    let req = EngineRequest {
        prompt,
        max_tokens: args.max_tokens,
        sampling,
        stop_token_ids: if args.ignore_eos {
            Vec::new()
        } else {
            tok.stop_token_ids()
        },
        ..Default::default()
    };
    let mut config = EngineConfig::default();
    // One request: a KV cache just big enough for it.
    let c = &loaded.model.config;
    let need =
        (req.prompt.len() + req.max_tokens + 32) * KvStore::bytes_per_token(c.n_layers, c.kv_dim());
    config.kv_cache_mib = need.div_ceil(1 << 20).max(1);
    config.scheduler.max_batch_tokens = 512;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("model")
        .to_owned();
    let handle = start_engine(loaded, config)?;
    let mut events = handle.submit(req);
    let mut stdout = std::io::stdout().lock();
    while let Some(event) = events.blocking_recv() {
        match event {
            TokenEvent::Token { text, .. } => {
                // A closed stdout (e.g. piped into `head`) ends generation.
                if stdout
                    .write_all(text.as_bytes())
                    .and_then(|_| stdout.flush())
                    .is_err()
                {
                    return Ok(());
                }
            }
            TokenEvent::Done {
                reason,
                usage,
                timings,
            } => {
                let _ = writeln!(stdout);
                let secs = |d: std::time::Duration| d.as_secs_f64();
                eprintln!(
                    "\n[{name}] threads={threads} load={load_secs:.2}s prompt_tokens={} output_tokens={} ttft={:.1}ms prefill={:.1} tok/s decode={:.1} tok/s finish={reason:?}",
                    usage.prompt_tokens,
                    usage.completion_tokens,
                    secs(timings.ttft) * 1e3,
                    usage.prompt_tokens as f64 / secs(timings.prefill).max(1e-9),
                    usage.completion_tokens.saturating_sub(1) as f64 / secs(timings.decode).max(1e-9),
                );
                return Ok(());
            }
            TokenEvent::Error(e) => bail!(e),
        }
    }
    bail!("the engine stopped before finishing")
}
