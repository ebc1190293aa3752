//! Drives the load: per level (a concurrency or a rate), the same requests go to
//! every target in turn (A, B, A, B… across levels), so drift of a shared machine
//! hits all of them.
//!
//! Closed loop: `c` workers each send their next request as soon as the previous
//! one ends. Open loop: requests start at Poisson arrival times whatever the
//! server's state. Both stop starting new work after `requests` or `max_duration`,
//! and wait for what is in flight.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use inferd_tokenizer::Tokenizer;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use crate::client::{self, Target};
use crate::stats::{RequestRecord, Slo, Summary};
use crate::workload::{self, RequestOptions, Requests, Workload};

/// How load is offered.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Closed loop at each of these concurrencies.
    Concurrency(Vec<usize>),
    /// Open loop, Poisson arrivals at each of these rates (requests per second).
    Rate(Vec<f64>),
}

impl Mode {
    fn levels(&self) -> Vec<f64> {
        match self {
            Mode::Concurrency(c) => c.iter().map(|&c| c as f64).collect(),
            Mode::Rate(r) => r.clone(),
        }
    }

    pub fn axis(&self) -> &'static str {
        match self {
            Mode::Concurrency(_) => "concurrency",
            Mode::Rate(_) => "request rate (req/s)",
        }
    }

    pub fn label(&self, level: f64) -> String {
        match self {
            Mode::Concurrency(_) => format!("c={level}"),
            Mode::Rate(_) => format!("rate={level}/s"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub targets: Vec<Target>,
    pub workload: Workload,
    pub options: RequestOptions,
    pub mode: Mode,
    /// Requests (conversations, for multi-turn) per level and target.
    pub requests: usize,
    /// No new requests start after this long into a level.
    pub max_duration: Duration,
    pub slo: Slo,
    pub seed: u64,
    /// Requests sent to each target before measuring (not recorded).
    pub warmup: usize,
    pub request_timeout: Duration,
    pub show_progress: bool,
}

/// One level against one target.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LevelResult {
    pub target: String,
    pub level: f64,
    pub label: String,
    pub summary: Summary,
    pub records: Vec<RequestRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchResult {
    /// The command line that produced it (set by the CLI).
    #[serde(default)]
    pub command: String,
    pub workload: String,
    pub mode: Mode,
    pub slo: Slo,
    pub targets: Vec<Target>,
    pub requests_per_level: usize,
    pub seed: u64,
    pub levels: Vec<LevelResult>,
}

impl BenchResult {
    pub fn of_target<'a>(&'a self, target: &'a str) -> impl Iterator<Item = &'a LevelResult> + 'a {
        self.levels.iter().filter(move |l| l.target == target)
    }
}

pub fn describe(w: &Workload, o: &RequestOptions) -> String {
    let ep = match o.endpoint {
        workload::Endpoint::Chat => "chat",
        workload::Endpoint::Completions => "completions",
    };
    let eos = if o.ignore_eos { ", ignore_eos" } else { "" };
    match w {
        Workload::Random { input, range, output } if *range > 0.0 => {
            format!("random: {input}±{:.0}% prompt tokens, {output} output tokens ({ep}{eos})", range * 100.0)
        }
        Workload::Random { input, output, .. } => {
            format!("random: {input} prompt tokens, {output} output tokens ({ep}{eos})")
        }
        Workload::SharedPrefix { prefix, suffix, output } => format!(
            "shared prefix: {prefix} shared + {suffix} own prompt tokens, {output} output tokens ({ep}{eos})"
        ),
        Workload::MultiTurn { turns, input, output } => format!(
            "multi-turn: {turns} turns of {input} user tokens, {output} output tokens per turn (chat{eos})"
        ),
        Workload::Jsonl(p) => format!("JSONL file {}", p.display()),
    }
}

/// Runs every level against every target.
pub async fn run(config: &BenchConfig, tokenizer: &Tokenizer) -> Result<BenchResult, String> {
    let client = client::http_client(config.request_timeout);
    let levels = config.mode.levels();
    let built: Vec<Arc<Requests>> = (0..levels.len())
        .map(|i| {
            workload::build(
                &config.workload,
                &config.options,
                tokenizer,
                config.requests,
                config.seed + i as u64,
            )
            .map(Arc::new)
        })
        .collect::<Result<_, _>>()?;
    let total: usize = built.iter().map(|r| r.total()).sum::<usize>() * config.targets.len();
    let bar = if config.show_progress {
        let b = ProgressBar::new(total as u64);
        b.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} requests  {msg}",
            )
            .expect("valid template"),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    if config.warmup > 0 {
        let warm = Arc::new(workload::build(
            &config.workload,
            &config.options,
            tokenizer,
            config.warmup,
            config.seed ^ 0x5eed,
        )?);
        for t in &config.targets {
            bar.set_message(format!("warming up {}", t.name));
            run_level(
                &client,
                t,
                &warm,
                &Mode::Concurrency(vec![1]),
                1.0,
                config,
                &ProgressBar::hidden(),
            )
            .await;
        }
    }
    let mut results = Vec::new();
    for (level, requests) in levels.iter().zip(&built) {
        for t in &config.targets {
            bar.set_message(format!("{} {}", t.name, config.mode.label(*level)));
            let (records, took) =
                run_level(&client, t, requests, &config.mode, *level, config, &bar).await;
            let summary = Summary::of(&records, took, &config.slo);
            results.push(LevelResult {
                target: t.name.clone(),
                level: *level,
                label: config.mode.label(*level),
                summary,
                records,
            });
        }
    }
    bar.finish_and_clear();
    Ok(BenchResult {
        command: String::new(),
        workload: describe(&config.workload, &config.options),
        mode: config.mode.clone(),
        slo: config.slo,
        targets: config.targets.clone(),
        requests_per_level: config.requests,
        seed: config.seed,
        levels: results,
    })
}

/// Runs unit `i` (a request, or a whole conversation) and returns its records.
async fn run_unit(
    client: &reqwest::Client,
    target: &Target,
    requests: &Requests,
    opts: &RequestOptions,
    i: usize,
    t0: Instant,
    bar: &ProgressBar,
) -> Vec<RequestRecord> {
    match requests {
        Requests::Independent(specs) => {
            let sent_at = t0.elapsed().as_secs_f64();
            let mut out = client::send(client, target, &specs[i]).await;
            out.record.sent_at = sent_at;
            bar.inc(1);
            vec![out.record]
        }
        Requests::Conversations(convs) => {
            let conv = &convs[i];
            let mut answers = Vec::new();
            let mut records = Vec::new();
            for turn in 0..conv.user_turns.len() {
                let spec = workload::conversation_turn(opts, conv, &answers, turn);
                let sent_at = t0.elapsed().as_secs_f64();
                let mut out = client::send(client, target, &spec).await;
                out.record.sent_at = sent_at;
                out.record.turn = Some(turn);
                let ok = out.record.ok;
                records.push(out.record);
                answers.push(out.text);
                bar.inc(1);
                if !ok {
                    // The rest of this conversation cannot be sent faithfully.
                    bar.inc((conv.user_turns.len() - turn - 1) as u64);
                    break;
                }
            }
            records
        }
    }
}

fn units(requests: &Requests) -> usize {
    match requests {
        Requests::Independent(r) => r.len(),
        Requests::Conversations(c) => c.len(),
    }
}

async fn run_level(
    client: &reqwest::Client,
    target: &Target,
    requests: &Arc<Requests>,
    mode: &Mode,
    level: f64,
    config: &BenchConfig,
    bar: &ProgressBar,
) -> (Vec<RequestRecord>, Duration) {
    let n = units(requests);
    let records = Arc::new(Mutex::new(Vec::new()));
    let t0 = Instant::now();
    let mut tasks = JoinSet::new();
    let spawn = |tasks: &mut JoinSet<()>, next: Option<Arc<AtomicUsize>>, fixed: usize| {
        let (client, target, requests, opts, records, bar) = (
            client.clone(),
            target.clone(),
            Arc::clone(requests),
            config.options.clone(),
            Arc::clone(&records),
            bar.clone(),
        );
        let max = config.max_duration;
        tasks.spawn(async move {
            loop {
                let i = match &next {
                    Some(counter) => counter.fetch_add(1, Ordering::Relaxed),
                    None => fixed,
                };
                if i >= n || (next.is_some() && t0.elapsed() > max) {
                    break;
                }
                let r = run_unit(&client, &target, &requests, &opts, i, t0, &bar).await;
                records.lock().expect("records lock").extend(r);
                if next.is_none() {
                    break;
                }
            }
        });
    };
    match mode {
        Mode::Concurrency(_) => {
            let next = Arc::new(AtomicUsize::new(0));
            for _ in 0..(level as usize).max(1) {
                spawn(&mut tasks, Some(Arc::clone(&next)), 0);
            }
        }
        Mode::Rate(_) => {
            let mut rng =
                StdRng::seed_from_u64(config.seed.wrapping_mul(31).wrapping_add(level.to_bits()));
            let mut at = 0.0f64;
            for i in 0..n {
                if i > 0 {
                    // Exponential gaps: -ln(U) / rate.
                    at += -(1.0 - rng.gen::<f64>()).ln() / level;
                }
                if at > config.max_duration.as_secs_f64() {
                    break;
                }
                tokio::time::sleep_until((t0 + Duration::from_secs_f64(at)).into()).await;
                spawn(&mut tasks, None, i);
            }
        }
    }
    while tasks.join_next().await.is_some() {}
    let took = t0.elapsed();
    let mut records = std::mem::take(&mut *records.lock().expect("records lock"));
    records.sort_by(|a, b| a.sent_at.total_cmp(&b.sent_at));
    (records, took)
}
