//! `inferd bench-engine`: concurrent requests straight to the engine handle (no
//! HTTP), closed loop: at each concurrency level C, C clients each send their
//! requests back to back. Reports aggregate output tokens/s and TTFT p50/p99, and
//! the shared-prefix case (N requests on a common system prompt, cold then warm).

use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use inferd_engine::{start_engine, EngineHandle, EngineRequest, LoadedModel, Timings};

use crate::registry;

#[derive(Args, Debug)]
pub struct BenchEngineArgs {
    /// Model alias or GGUF path.
    #[arg(long, default_value = registry::DEFAULT_MODEL)]
    model: String,
    /// Concurrency levels (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16")]
    concurrency: Vec<usize>,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 230)]
    prompt_tokens: usize,
    /// Output tokens per request (EOS ignored).
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Requests each client sends per level.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Shared-prefix test: system prompt length in tokens (0 skips it).
    #[arg(long, default_value_t = 1000)]
    shared_prefix_tokens: usize,
    /// Shared-prefix test: number of concurrent requests.
    #[arg(long, default_value_t = 8)]
    shared_prefix_requests: usize,
    /// Worker threads for the kernels.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    #[command(flatten)]
    engine: crate::generate::EngineArgs,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Distinct pseudo-random prompts (token ids from the ordinary vocabulary range).
fn prompt(seed: u64, len: usize, vocab: u32) -> Vec<u32> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            100 + (x % (vocab as u64 - 200)) as u32
        })
        .collect()
}

/// Runs `clients` threads, each sending its requests in turn; returns every
/// request's (output tokens, timings) and the wall time.
fn run_clients(
    handle: &EngineHandle,
    requests: Vec<Vec<EngineRequest>>,
) -> Result<(Vec<(usize, Timings)>, f64)> {
    let t0 = Instant::now();
    let results = std::thread::scope(|s| {
        let workers: Vec<_> = requests
            .into_iter()
            .map(|reqs| {
                let h = handle.clone();
                s.spawn(move || {
                    reqs.into_iter()
                        .map(|r| h.generate_blocking(r).map(|(ids, _, t)| (ids.len(), t)))
                        .collect::<std::result::Result<Vec<_>, _>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("client thread panicked"))
            .collect::<Vec<_>>()
    });
    let wall = t0.elapsed().as_secs_f64();
    let mut all = Vec::new();
    for r in results {
        all.extend(r?);
    }
    Ok((all, wall))
}

fn ttfts_ms(results: &[(usize, Timings)]) -> Vec<f64> {
    let mut v: Vec<f64> = results
        .iter()
        .map(|(_, t)| t.ttft.as_secs_f64() * 1e3)
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

pub fn run(args: BenchEngineArgs) -> Result<()> {
    crate::generate::init_threads(Some(args.threads))?;
    let path = registry::resolve(&args.model, false, "python3")?;
    let config = args.engine.config()?;
    let load =
        || LoadedModel::load(&path).with_context(|| format!("cannot load {}", path.display()));
    let vocab = load()?.model.config().vocab_size as u32;
    let request = |p: Vec<u32>| EngineRequest {
        prompt: p,
        max_tokens: args.max_tokens,
        ..Default::default()
    };

    println!(
        "concurrency sweep: prompt {} tokens, {} output tokens, {} rounds per client",
        args.prompt_tokens, args.max_tokens, args.rounds
    );
    println!("| concurrency | requests | output tok/s | TTFT p50 ms | TTFT p99 ms | TPOT p50 ms |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: |");
    for &c in &args.concurrency {
        // A fresh engine per level: no prefix-cache carry-over between levels.
        let handle = start_engine(load()?, config.clone())?;
        let reqs: Vec<Vec<EngineRequest>> = (0..c)
            .map(|i| {
                (0..args.rounds)
                    .map(|r| request(prompt((i * 1000 + r) as u64, args.prompt_tokens, vocab)))
                    .collect()
            })
            .collect();
        let (results, wall) = run_clients(&handle, reqs)?;
        let out: usize = results.iter().map(|r| r.0).sum();
        let ttft = ttfts_ms(&results);
        let mut tpot: Vec<f64> = results
            .iter()
            .filter(|(n, _)| *n > 1)
            .map(|(n, t)| t.decode.as_secs_f64() * 1e3 / (*n - 1) as f64)
            .collect();
        tpot.sort_by(f64::total_cmp);
        println!(
            "| {c} | {} | {:.1} | {:.0} | {:.0} | {:.1} |",
            results.len(),
            out as f64 / wall,
            percentile(&ttft, 50.0),
            percentile(&ttft, 99.0),
            percentile(&tpot, 50.0)
        );
    }

    if args.shared_prefix_tokens > 0 {
        let n = args.shared_prefix_requests;
        let system = prompt(424242, args.shared_prefix_tokens, vocab);
        let with_suffix = |seed: u64| [system.clone(), prompt(seed, 24, vocab)].concat();
        let handle = start_engine(load()?, config.clone())?;
        let batch = |base: u64| -> Vec<Vec<EngineRequest>> {
            (0..n)
                .map(|i| {
                    vec![EngineRequest {
                        max_tokens: 16,
                        ..request(with_suffix(base + i as u64))
                    }]
                })
                .collect()
        };
        let (cold, _) = run_clients(&handle, batch(1))?;
        let (warm, _) = run_clients(&handle, batch(100))?;
        let cached: usize = {
            let r = handle.generate_blocking(EngineRequest {
                max_tokens: 1,
                ..request(with_suffix(999))
            })?;
            r.1.cached_tokens
        };
        let (cold, warm) = (ttfts_ms(&cold), ttfts_ms(&warm));
        println!("\nshared prefix: {n} concurrent requests on a {}-token common prompt (+24-token suffix each)", args.shared_prefix_tokens);
        println!("| cache | TTFT p50 ms | TTFT p99 ms |");
        println!("| --- | ---: | ---: |");
        println!(
            "| cold | {:.0} | {:.0} |",
            percentile(&cold, 50.0),
            percentile(&cold, 99.0)
        );
        println!(
            "| warm | {:.0} | {:.0} |",
            percentile(&warm, 50.0),
            percentile(&warm, 99.0)
        );
        println!(
            "warm/cold TTFT p50 ratio {:.3}; a later request reused {cached} cached prompt tokens",
            percentile(&warm, 50.0) / percentile(&cold, 50.0)
        );
    }
    Ok(())
}
