//! `inferd generate`: one prompt through the engine, text streamed to stdout as it
//! is produced, timings on stderr.

use std::io::Write;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use inferd_engine::{GenerateRequest, Generator, LoadedModel, SamplingParams};
use inferd_tokenizer::{ChatMessage, Detokenizer};

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
    #[arg(long, value_enum, default_value = "f32")]
    activations: crate::perf::ActivationsArg,
    /// Download the model if it is a known alias that is not present.
    #[arg(long)]
    fetch: bool,
}

pub fn init_threads(threads: Option<usize>) -> Result<usize> {
    let n = match threads {
        Some(0) => bail!("`--threads` must be at least 1, got 0"),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
        .context("cannot start the worker threads")?;
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
    let req = GenerateRequest {
        prompt,
        max_tokens: args.max_tokens,
        sampling,
        stop_token_ids: if args.ignore_eos {
            Vec::new()
        } else {
            tok.stop_token_ids()
        },
    };
    let context_tokens = req.prompt.len() + req.max_tokens;
    let mut gen = Generator::new(&loaded.model, context_tokens, 16);
    let mut detok = Detokenizer::new(true);
    let mut stdout = std::io::stdout().lock();
    let stats = gen.generate(&req, |t| {
        if let Some(text) = detok.push(tok, t.id) {
            // A closed stdout (e.g. piped into `head`) stops generation.
            return stdout
                .write_all(text.as_bytes())
                .and_then(|_| stdout.flush())
                .is_ok();
        }
        true
    })?;
    if let Some(rest) = detok.flush() {
        let _ = stdout.write_all(rest.as_bytes());
    }
    let _ = writeln!(stdout);
    eprintln!(
        "\n[{}] threads={threads} load={load_secs:.2}s prompt_tokens={} output_tokens={} ttft={:.1}ms prefill={:.1} tok/s decode={:.1} tok/s finish={:?}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("model"),
        stats.prompt_tokens,
        stats.output_tokens,
        stats.ttft.as_secs_f64() * 1e3,
        stats.prefill_tokens_per_sec(),
        stats.decode_tokens_per_sec(),
        stats.finish,
    );
    Ok(())
}
