//! `inferd bench`: serving load against one or more OpenAI-compatible servers,
//! side by side; a terminal summary, and with `--out` a JSON file, a Markdown
//! report and plots.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use inferd_bench::{
    client, plot, report, BenchConfig, Endpoint, Mode, RequestOptions, Slo, Target, Workload,
};

use crate::registry;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum WorkloadKind {
    /// Independent prompts of `--input-tokens` tokens.
    Random,
    /// `--prefix-tokens` shared by every request, then `--input-tokens` of its own.
    SharedPrefix,
    /// Conversations of `--turns` turns; each turn resends the conversation so far.
    MultiTurn,
    /// One request body per line of `--file`.
    Jsonl,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum EndpointArg {
    Completions,
    Chat,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// A server to measure, `NAME=URL` (URL with or without /v1); repeat to compare
    /// servers side by side, levels alternating between them. Ratios are reported
    /// against the first.
    #[arg(long = "target", default_value = "inferd=http://127.0.0.1:8080")]
    targets: Vec<String>,
    /// `model` to send (default: the first id each server lists at /v1/models).
    #[arg(long)]
    model: Option<String>,
    /// Bearer token sent to every target.
    #[arg(long, env = "INFERD_BENCH_API_KEY")]
    api_key: Option<String>,
    /// Model alias or GGUF path whose tokenizer counts prompt tokens.
    #[arg(long, default_value = registry::DEFAULT_MODEL)]
    tokenizer: String,
    #[arg(long, value_enum, default_value = "random")]
    workload: WorkloadKind,
    /// JSONL workload file (with `--workload jsonl`).
    #[arg(long)]
    file: Option<PathBuf>,
    /// Prompt tokens per request (the user turn, for multi-turn; the own part, for shared-prefix).
    #[arg(long, default_value_t = 230)]
    input_tokens: usize,
    /// Spread of prompt lengths: uniform in input × [1 − r, 1 + r].
    #[arg(long, default_value_t = 0.0)]
    input_range: f64,
    /// Output tokens requested (`max_tokens`).
    #[arg(long, default_value_t = 128)]
    output_tokens: usize,
    /// Shared prompt tokens (shared-prefix workload).
    #[arg(long, default_value_t = 1000)]
    prefix_tokens: usize,
    /// Turns per conversation (multi-turn workload).
    #[arg(long, default_value_t = 4)]
    turns: usize,
    /// Endpoint for synthetic prompts (multi-turn always uses chat).
    #[arg(long, value_enum, default_value = "completions")]
    endpoint: EndpointArg,
    /// Send `ignore_eos: true`, so every request produces exactly `--output-tokens`.
    #[arg(long)]
    ignore_eos: bool,
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Closed-loop concurrency levels, comma-separated.
    #[arg(long, value_delimiter = ',', conflicts_with = "rate")]
    concurrency: Vec<usize>,
    /// Open-loop Poisson arrival rates in requests/s, comma-separated.
    #[arg(long, value_delimiter = ',')]
    rate: Vec<f64>,
    /// Requests per level and target (conversations, for multi-turn).
    #[arg(long, default_value_t = 32)]
    requests: usize,
    /// No new request starts after this many seconds into a level.
    #[arg(long, default_value_t = 300)]
    max_duration_secs: u64,
    /// Objectives for goodput, e.g. `ttft=500ms,tpot=50ms,e2e=10s`.
    #[arg(long)]
    slo: Option<String>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Unrecorded requests per target before measuring.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Give up on one request after this many seconds.
    #[arg(long, default_value_t = 600)]
    request_timeout_secs: u64,
    /// Write results.json, report.md and plots (PNG and SVG) here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Run nothing: read a saved results.json, print its summary and (with
    /// `--out`) write its report and plots again.
    #[arg(long)]
    from: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

pub fn run(args: BenchArgs) -> Result<()> {
    if let Some(saved) = &args.from {
        let text = std::fs::read_to_string(saved)
            .with_context(|| format!("cannot read {}", saved.display()))?;
        let result: inferd_bench::BenchResult = serde_json::from_str(&text).with_context(|| {
            format!("{} is not an `inferd bench` results file", saved.display())
        })?;
        return write_out(&result, args.out.as_deref());
    }
    let mode = match (args.concurrency.is_empty(), args.rate.is_empty()) {
        (_, false) => {
            if let Some(r) = args.rate.iter().find(|r| !(r.is_finite() && **r > 0.0)) {
                bail!("`--rate` values must be positive request rates, got {r}");
            }
            Mode::Rate(args.rate.clone())
        }
        (false, true) => {
            if args.concurrency.contains(&0) {
                bail!("`--concurrency` levels must be at least 1");
            }
            Mode::Concurrency(args.concurrency.clone())
        }
        (true, true) => Mode::Concurrency(vec![1, 2, 4, 8]),
    };
    if args.requests == 0 {
        bail!("`--requests` must be at least 1");
    }
    if !(0.0..1.0).contains(&args.input_range) {
        bail!(
            "`--input-range` must be in [0, 1), got {}",
            args.input_range
        );
    }
    let slo = match &args.slo {
        Some(s) => Slo::parse(s)
            .map_err(anyhow::Error::msg)
            .context("`--slo`")?,
        None => Slo::default(),
    };
    let workload = match args.workload {
        WorkloadKind::Random => Workload::Random {
            input: args.input_tokens,
            range: args.input_range,
            output: args.output_tokens,
        },
        WorkloadKind::SharedPrefix => Workload::SharedPrefix {
            prefix: args.prefix_tokens,
            suffix: args.input_tokens,
            output: args.output_tokens,
        },
        WorkloadKind::MultiTurn => Workload::MultiTurn {
            turns: args.turns.max(1),
            input: args.input_tokens,
            output: args.output_tokens,
        },
        WorkloadKind::Jsonl => Workload::Jsonl(
            args.file
                .clone()
                .context("`--workload jsonl` needs `--file PATH`")?,
        ),
    };
    let options = RequestOptions {
        endpoint: match args.endpoint {
            EndpointArg::Completions => Endpoint::Completions,
            EndpointArg::Chat => Endpoint::Chat,
        },
        ignore_eos: args.ignore_eos,
        temperature: args.temperature,
    };
    let tok_path = registry::resolve(&args.tokenizer, false, "python3")?;
    let tokenizer = load_tokenizer(&tok_path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let http = client::http_client(Duration::from_secs(30));
        let mut targets = Vec::new();
        for t in &args.targets {
            let (name, base) = Target::parse(t).map_err(anyhow::Error::msg)?;
            let model = match &args.model {
                Some(m) => m.clone(),
                None => client::first_model(&http, &base, args.api_key.as_deref())
                    .await
                    .map_err(anyhow::Error::msg)
                    .with_context(|| {
                        format!("target `{name}`: cannot list its models (is it running?)")
                    })?,
            };
            targets.push(Target {
                name,
                base,
                model,
                api_key: args.api_key.clone(),
            });
        }
        let config = BenchConfig {
            targets,
            workload,
            options,
            mode,
            requests: args.requests,
            max_duration: Duration::from_secs(args.max_duration_secs),
            slo,
            seed: args.seed,
            warmup: args.warmup,
            request_timeout: Duration::from_secs(args.request_timeout_secs),
            show_progress: !args.quiet,
        };
        let mut result = inferd_bench::run(&config, &tokenizer)
            .await
            .map_err(anyhow::Error::msg)?;
        result.command = std::env::args().collect::<Vec<_>>().join(" ");
        write_out(&result, args.out.as_deref())
    })
}

/// Prints the summary; with a directory, writes results.json, report.md and plots.
fn write_out(result: &inferd_bench::BenchResult, out: Option<&std::path::Path>) -> Result<()> {
    print!("{}", report::terminal(result));
    if let Some(dir) = out {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let json = serde_json::to_string(result)?;
        std::fs::write(dir.join("results.json"), json)?;
        let plots = plot::write_all(result, dir).map_err(anyhow::Error::msg)?;
        std::fs::write(dir.join("report.md"), report::markdown(result, &plots))?;
        eprintln!(
            "wrote {}/{{results.json,report.md,*.png,*.svg}}",
            dir.display()
        );
    }
    Ok(())
}

fn load_tokenizer(path: &std::path::Path) -> Result<inferd_tokenizer::Tokenizer> {
    let file = inferd_gguf::GgufFile::open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let spec = inferd_tokenizer::TokenizerSpec::from_gguf(&file.info)
        .with_context(|| format!("no tokenizer in {}", path.display()))?;
    inferd_tokenizer::Tokenizer::from_spec(&spec).context("cannot build the tokenizer")
}
