//! Embedding throughput and single-query latency of all-MiniLM-L6-v2 on this CPU,
//! the counterpart of `scripts/reference/bench_embeddings.py` (sentence-transformers
//! on the same sentences):
//!
//!     cargo run --release -p inferd-embed --example embed_throughput -- --threads 1
//!
//! Flags: `--threads N` (kernel worker pool size, default 1), `--secs S` (time
//! spent on each measurement, default 3), `--model DIR` (default: minilm-l6 in the
//! models folder), `--precision f32|bf16|q8` (default: bf16 where the CPU has
//! AVX512-BF16). Sentences are "Sentence number {i}: the quick brown fox jumps
//! over the lazy dog." (about 16 tokens with [CLS] and [SEP]).

use std::time::{Duration, Instant};

use inferd_embed::{Embedder, Precision};

fn main() {
    let mut threads = 1usize;
    let mut secs = 3.0f64;
    let mut model = None;
    let mut precision = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--threads" => threads = value().parse().expect("--threads takes a number"),
            "--secs" => secs = value().parse().expect("--secs takes seconds"),
            "--model" => model = Some(std::path::PathBuf::from(value())),
            "--precision" => {
                precision = Some(value().parse::<Precision>().unwrap_or_else(|e| panic!("--precision: {e}")))
            }
            other => panic!(
                "unknown flag {other} (flags: --threads N, --secs S, --model DIR, --precision f32|bf16|q8)"
            ),
        }
    }
    let threads = inferd_kernels::pool::init_global(threads);
    let dir = model.unwrap_or_else(inferd_testutil::minilm_path);
    let e = Embedder::load(&dir).expect("the model loads");
    let e = match precision {
        Some(p) => e
            .with_precision(p)
            .unwrap_or_else(|| panic!("this CPU has no {} kernel", p.name())),
        None => e,
    };
    let budget = Duration::from_secs_f64(secs);

    let sentences: Vec<String> = (0..1024)
        .map(|i| format!("Sentence number {i}: the quick brown fox jumps over the lazy dog."))
        .collect();
    let ids: Vec<Vec<u32>> = sentences
        .iter()
        .map(|s| e.tokenize(s).expect("tokenizes"))
        .collect();
    let mean_tokens = ids.iter().map(Vec::len).sum::<usize>() as f64 / ids.len() as f64;
    println!(
        "all-MiniLM-L6-v2, kernels {} {}, {threads} thread(s), {mean_tokens:.1} tokens per sentence",
        e.isa().name(),
        e.precision().name()
    );

    for batch in [1usize, 32, 256] {
        let mut done = 0usize;
        let mut next = 0usize;
        // One untimed batch first: page the weights in, size the buffers.
        let warm: Vec<&str> = sentences[..batch].iter().map(String::as_str).collect();
        e.embed(&warm).expect("embeds");
        let start = Instant::now();
        while start.elapsed() < budget {
            let texts: Vec<&str> = (0..batch)
                .map(|j| sentences[(next + j) % sentences.len()].as_str())
                .collect();
            next += batch;
            let out = e.embed(&texts).expect("embeds");
            done += out.len();
        }
        let rate = done as f64 / start.elapsed().as_secs_f64();
        println!(
            "batch {batch:>3}: {rate:>8.1} embeddings/s ({:.0} tokens/s)",
            rate * mean_tokens
        );
    }

    let query = sentences[7].as_str();
    let mut times = Vec::new();
    let start = Instant::now();
    while start.elapsed() < budget || times.len() < 20 {
        let t = Instant::now();
        e.embed(&[query]).expect("embeds");
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let pct = |p: f64| times[((times.len() - 1) as f64 * p) as usize];
    println!(
        "one {}-token query (tokenize + embed): p50 {:.2} ms, p90 {:.2} ms over {} runs",
        ids[7].len(),
        pct(0.5),
        pct(0.9),
        times.len()
    );
}
