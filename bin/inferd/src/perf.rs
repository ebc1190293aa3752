//! `inferd perf`: engine throughput in the shape of llama.cpp's `llama-bench`, so the
//! two can be run side by side: prefill of an N-token prompt (ppN) and decode of N
//! tokens from an empty context (tgN), each repeated and reported as mean ± stddev
//! tokens per second.

use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use inferd_engine::LoadedModel;
use inferd_kernels::{Isa, Precision};
use inferd_kvcache::{BlockPool, BlockTable};
use inferd_model::{LogitsRequest, SeqBatch};

use crate::registry;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ActivationsArg {
    /// Two 8-bit planes, integer kernels: within f32 rounding of exact (default).
    Q8x2,
    /// One 8-bit plane (llama.cpp's scheme): less exact.
    Q8,
    /// f32 activations against dequantized weights: the reference arithmetic.
    F32,
}

impl From<ActivationsArg> for Precision {
    fn from(a: ActivationsArg) -> Precision {
        match a {
            ActivationsArg::Q8x2 => Precision::Q8x2,
            ActivationsArg::Q8 => Precision::Q8,
            ActivationsArg::F32 => Precision::F32,
        }
    }
}

#[derive(Args, Debug)]
pub struct PerfArgs {
    /// Model alias or GGUF path.
    #[arg(long, default_value = registry::DEFAULT_MODEL)]
    model: String,
    /// Prompt lengths to prefill (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "128,512")]
    prompt_tokens: Vec<usize>,
    /// Tokens to decode.
    #[arg(long, default_value_t = 128)]
    gen_tokens: usize,
    /// Worker threads for the kernels.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Repetitions of each test.
    #[arg(long, default_value_t = 3)]
    repetitions: usize,
    /// Activation precision in the matmuls.
    #[arg(long, value_enum, default_value = "q8x2")]
    activations: ActivationsArg,
    /// Kernel path: auto (the fastest this CPU runs), or one of scalar, avx2,
    /// avx512, amx to measure a fallback.
    #[arg(long, default_value = "auto")]
    isa: String,
    /// Batched decode: for each size B, B sequences decode `--gen-tokens` tokens each
    /// in lockstep, one forward pass per step; reports aggregate tokens/s as
    /// `tgN xB` (comma-separated, e.g. 1,4,8,16,32; empty: skip).
    #[arg(long, value_delimiter = ',')]
    batch: Vec<usize>,
}

/// The kernel path `--isa` names (`auto`: the fastest this CPU runs).
pub fn isa_named(name: &str) -> Result<Isa> {
    Isa::named(name).map_err(|runs| {
        anyhow::anyhow!(
            "isa {name:?} is not a kernel path this CPU runs; it runs auto, {}",
            runs.join(", ")
        )
    })
}

pub fn run(args: PerfArgs) -> Result<()> {
    crate::generate::init_threads(Some(args.threads))?;
    let path = registry::resolve(&args.model, false, "python3")?;
    let mut loaded =
        LoadedModel::load(&path).with_context(|| format!("cannot load {}", path.display()))?;
    let mut options = loaded.model.options();
    options.precision = args.activations.into();
    options.isa = isa_named(&args.isa)?;
    loaded.model.set_options(options);
    let isa = options.isa.name();
    let model = &loaded.model;
    let max_len = args
        .prompt_tokens
        .iter()
        .copied()
        .max()
        .unwrap_or(0)
        .max(args.gen_tokens)
        + 16;
    let block = 16;
    let widest = args.batch.iter().copied().max().unwrap_or(1).max(1);
    let blocks = max_len
        .div_ceil(block)
        .max(widest * (args.gen_tokens + block).div_ceil(block));
    let mut pool = BlockPool::new(blocks, block);
    let mut kv = model.new_kv_store(blocks, block);
    let vocab = model.config().vocab_size as u32;
    // Deterministic pseudo-random tokens, as llama-bench uses random tokens.
    let tokens: Vec<u32> = (0..max_len as u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 7) % vocab)
        .collect();

    println!("| model | activations | isa | threads | test | t/s |");
    println!("| --- | --- | --- | --- | --- | --- |");
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("model");
    let report = |test: String, rates: Vec<f64>| {
        let mean = rates.iter().sum::<f64>() / rates.len() as f64;
        let sd = (rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>()
            / rates.len().max(2).saturating_sub(1) as f64)
            .sqrt();
        println!(
            "| {name} | {:?} | {isa} | {} | {test} | {mean:.2} ± {sd:.2} |",
            args.activations, args.threads
        );
    };

    for &n in &args.prompt_tokens {
        let rates = timed_runs(args.repetitions, &mut pool, |table, pool| {
            table.append(pool, n)?;
            let batch = [SeqBatch {
                tokens: &tokens[..n],
                start_pos: 0,
                block_table: table.blocks(),
                logits: LogitsRequest::Last,
            }];
            model.forward(&batch, &mut kv)?;
            Ok(n)
        })?;
        report(format!("pp{n}"), rates);
    }

    let rates = timed_runs(args.repetitions, &mut pool, |table, pool| {
        for (pos, tok) in tokens[..args.gen_tokens].iter().enumerate() {
            table.append(pool, 1)?;
            let batch = [SeqBatch {
                tokens: std::slice::from_ref(tok),
                start_pos: pos,
                block_table: table.blocks(),
                logits: LogitsRequest::Last,
            }];
            model.forward(&batch, &mut kv)?;
        }
        Ok(args.gen_tokens)
    })?;
    report(format!("tg{}", args.gen_tokens), rates);

    for &b in args.batch.iter().filter(|&&b| b > 0) {
        let mut rates = Vec::new();
        for rep in 0..=args.repetitions {
            let mut tables: Vec<BlockTable> = (0..b).map(|_| BlockTable::new()).collect();
            let t0 = Instant::now();
            let mut result = Ok(());
            for pos in 0..args.gen_tokens {
                for t in tables.iter_mut() {
                    t.append(&mut pool, 1)?;
                }
                // Each sequence its own token stream.
                let batch: Vec<SeqBatch> = tables
                    .iter()
                    .enumerate()
                    .map(|(i, t)| SeqBatch {
                        tokens: std::slice::from_ref(&tokens[(pos + 7 * i) % tokens.len()]),
                        start_pos: pos,
                        block_table: t.blocks(),
                        logits: LogitsRequest::Last,
                    })
                    .collect();
                if let Err(e) = model.forward(&batch, &mut kv) {
                    result = Err(e);
                    break;
                }
            }
            let secs = t0.elapsed().as_secs_f64();
            for t in tables.iter_mut() {
                t.release(&mut pool);
            }
            result?;
            if rep > 0 {
                rates.push((b * args.gen_tokens) as f64 / secs);
            }
        }
        report(format!("tg{} x{b}", args.gen_tokens), rates);
    }
    Ok(())
}

/// Runs `run` once to warm up, then `reps` times, each on a fresh block table
/// released afterwards; returns the tokens/s of the measured runs.
fn timed_runs(
    reps: usize,
    pool: &mut BlockPool,
    mut run: impl FnMut(&mut BlockTable, &mut BlockPool) -> Result<usize>,
) -> Result<Vec<f64>> {
    let mut rates = Vec::new();
    for rep in 0..=reps {
        let mut table = BlockTable::new();
        let t0 = Instant::now();
        let result = run(&mut table, pool);
        let secs = t0.elapsed().as_secs_f64();
        table.release(pool);
        let tokens = result?;
        if rep > 0 {
            rates.push(tokens as f64 / secs);
        }
    }
    Ok(rates)
}
