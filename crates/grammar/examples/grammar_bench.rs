//! Constrained decoding costs on the default model (SmolLM2-135M), in-process:
//!
//! - building the vocabulary's token trie, and compiling a JSON schema (uncached);
//! - the time to compute one token mask, per token of a real schema-valid
//!   document (p50 / p99), and to apply it to a row of logits;
//! - engine decode speed at batch 1 and 8 with that schema vs none (the
//!   unconstrained requests ignore EOS, so both produce `--tokens` tokens).
//!
//! `cargo run --release -p inferd-grammar --example grammar_bench -- [SCHEMA] [--tokens N] [--rounds R] [--overlap true|false]`
//! (SCHEMA defaults to benchmarks/structured/schema.json). Results go in
//! benchmarks/RESULTS.md.

use std::time::{Duration, Instant};

use inferd_engine::{
    start_engine, BoxedConstraint, Constraint, EngineConfig, EngineRequest, LoadedModel,
    SamplingParams, TokenEvent, TokenMask,
};
use inferd_grammar::Grammars;
use inferd_protocol::ConstraintKind;
use serde_json::{json, Value};

/// Per-stream decode tok/s, aggregate tok/s, mask ms per token.
type Sample = (f64, f64, f64);

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str, default: usize| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map_or(default, |v| v.parse().expect("a number"))
    };
    let tokens = flag("--tokens", 128);
    let rounds = flag("--rounds", 3);
    let schema_path = args
        .first()
        .filter(|a| !a.starts_with("--"))
        .cloned()
        .unwrap_or_else(|| "benchmarks/structured/schema.json".into());
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(&schema_path).expect("schema file"))
            .expect("schema JSON");
    let kind = ConstraintKind::JsonSchema(schema);

    let model = LoadedModel::load(inferd_testutil::smollm2_path()).unwrap();
    let tokenizer = model.tokenizer.clone();
    let vocab = model.model.config().vocab_size;

    let t = Instant::now();
    let grammars = Grammars::new(tokenizer.clone(), vocab).unwrap();
    println!("token trie ({vocab} tokens): {:.1} ms", ms(t.elapsed()));

    let mut compile: Vec<f64> = (0..20)
        .map(|_| ms(grammars.compile_uncached(&kind).unwrap().compile_time))
        .collect();
    println!(
        "schema compile: p50 {:.2} ms, max {:.2} ms (20 runs, uncached; cached: 0)",
        percentile(&mut compile, 0.5),
        percentile(&mut compile, 1.0)
    );

    // A schema-valid document, tokenized as the model would write it.
    let products: Vec<Value> = (0..30)
        .map(|i| {
            json!({"name": format!("Stainless steel kettle model {i}"), "price": 19.5 + i as f64,
                   "in_stock": i % 3 != 0, "tags": ["kitchen", "steel", format!("k{i}")]})
        })
        .collect();
    let doc = serde_json::to_string(&json!({ "products": products }))
        .unwrap()
        .replace("\":", "\": ")
        .replace(",\"", ", \"")
        .replace(",[", ", [")
        .replace("},{", "}, {")
        .replace("\",\"", "\", \"");
    let ids = tokenizer.encode(&doc, false).unwrap();
    let mut c = grammars.compile(&kind).unwrap().constraint;
    let mut mask = TokenMask::new(vocab);
    let mut times = Vec::with_capacity(ids.len());
    for &id in &ids {
        let t = Instant::now();
        c.fill_mask(&mut mask).unwrap();
        times.push(t.elapsed().as_secs_f64() * 1e6);
        assert!(
            mask.allows(id),
            "the document leaves the schema at token {id}"
        );
        c.commit(id).unwrap();
    }
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let mut logits = vec![0.5f32; vocab];
    let t = Instant::now();
    for _ in 0..1000 {
        mask.apply(&mut logits);
    }
    let apply = t.elapsed().as_secs_f64() * 1e6 / 1000.0;
    println!(
        "mask per token over a {}-token document: p50 {:.1} us, p99 {:.1} us, mean {:.1} us; applying a mask to a row: {apply:.1} us",
        ids.len(),
        percentile(&mut times, 0.5),
        percentile(&mut times, 0.99),
        mean
    );

    let overlap = args
        .iter()
        .position(|a| a == "--overlap")
        .and_then(|i| args.get(i + 1))
        .map(|v| v == "true");
    println!(
        "mask placement: {}",
        match overlap {
            None => "auto",
            Some(true) => "own thread, overlapped with the forward pass",
            Some(false) => "kernel pool, before the forward pass",
        }
    );
    let engine = start_engine(
        model,
        EngineConfig {
            overlap_masks: overlap,
            ..EngineConfig::default()
        },
    )
    .unwrap();
    let prompt = tokenizer
        .encode(
            "<|im_start|>user\nList the products of a kitchen shop as JSON.<|im_end|>\n<|im_start|>assistant\n",
            false,
        )
        .unwrap();
    let run = |batch: usize, constrained: bool| -> Sample {
        let streams: Vec<_> = (0..batch)
            .map(|i| {
                engine.submit(EngineRequest {
                    prompt: prompt.clone(),
                    max_tokens: tokens,
                    sampling: SamplingParams {
                        temperature: 0.8,
                        seed: Some(i as u64),
                        ..Default::default()
                    },
                    // Unconstrained: no stop tokens, so it runs to `tokens` too.
                    stop_token_ids: if constrained {
                        tokenizer.stop_token_ids()
                    } else {
                        Vec::new()
                    },
                    cache_salt: Some(format!("{constrained}-{i}-{}", rand_salt())),
                    constraint: constrained.then(|| {
                        BoxedConstraint(Box::new(grammars.compile(&kind).unwrap().constraint))
                    }),
                    ..Default::default()
                })
            })
            .collect();
        let (mut per_stream, mut total, mut mask_ms) = (0.0, 0usize, 0.0);
        let mut decode_max = 0f64;
        for mut s in streams {
            while let Some(ev) = s.blocking_recv() {
                match ev {
                    TokenEvent::Done { usage, timings, .. } => {
                        let d = timings.decode.as_secs_f64();
                        per_stream += (usage.completion_tokens - 1) as f64 / d;
                        total += usage.completion_tokens - 1;
                        decode_max = decode_max.max(d);
                        mask_ms += ms(timings.mask) / usage.completion_tokens as f64;
                        break;
                    }
                    TokenEvent::Error(e) => panic!("{e}"),
                    _ => {}
                }
            }
        }
        (
            per_stream / batch as f64,
            total as f64 / decode_max,
            mask_ms / batch as f64,
        )
    };
    run(2, true); // warm-up
    println!("| batch | constraint | decode tok/s per stream | aggregate tok/s | mask ms/token |");
    println!("| --- | --- | --- | --- | --- |");
    for batch in [1, 8] {
        let mut rows: Vec<(bool, Vec<Sample>)> = vec![(false, vec![]), (true, vec![])];
        for _ in 0..rounds {
            for (constrained, v) in rows.iter_mut() {
                v.push(run(batch, *constrained));
            }
        }
        for (constrained, v) in rows {
            let med = |f: fn(&Sample) -> f64| {
                let mut x: Vec<f64> = v.iter().map(f).collect();
                percentile(&mut x, 0.5)
            };
            println!(
                "| {batch} | {} | {:.1} | {:.1} | {:.3} |",
                if constrained { "JSON schema" } else { "none" },
                med(|r| r.0),
                med(|r| r.1),
                med(|r| r.2)
            );
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A salt per run, so no run reuses another's cached prompt blocks.
fn rand_salt() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}
