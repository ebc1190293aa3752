//! Tool narrowing measured on MetaTool (`../shared/data/metatool`): 20,614
//! queries, each with the one tool of 199 that answers it.
//!
//! Tool texts are built as the gateway builds them (`tools::tool_text`), from
//! the benchmark's descriptions; the rows are split by a fixed seed into
//! labelled examples (`--train` of them per tool, which the scorer may use)
//! and a test part it never sees. For each test query, the candidates are its
//! tool and others drawn at random (seeded) up to 50, 100 or all 199; the
//! query is scored against each candidate exactly as the gateway scores
//! (`tools::score`) and the rank of the right tool gives top-1 and recall@5,
//! with descriptions alone and with the examples. Latency: the stage's work
//! per request at 199 tools (embedding the query alone, then scoring every
//! tool and its examples), p50 and p99 over 500 test queries.
//!
//!     cargo run --release -p inferd-gateway --example metatool -- \
//!         --data ../shared/data/metatool --threads 2 [--train N] [--test N] [--precision f32|bf16|q8]

use std::collections::HashMap;
use std::time::Instant;

use inferd_embed::Embedder;
use inferd_gateway::tools::{score, sum, tool_text};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::Value;

fn normal(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .flat_map(|c| c.to_lowercase())
        .collect()
}

fn main() {
    let mut data = std::path::PathBuf::from("../shared/data/metatool");
    let mut threads = 2usize;
    let mut train = 5usize;
    let mut precision = None;
    let mut test_cap = usize::MAX;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().expect("a value after the flag");
        match a.as_str() {
            "--data" => data = value().into(),
            "--threads" => threads = value().parse().expect("a number"),
            "--train" => train = value().parse().expect("a number"),
            "--test" => test_cap = value().parse().expect("a number"),
            "--precision" => {
                precision = Some(
                    value()
                        .parse::<inferd_embed::Precision>()
                        .unwrap_or_else(|e| panic!("--precision: {e}")),
                )
            }
            other => panic!(
                "unknown flag {other} (flags: --data DIR, --threads N, --train N, --test N, --precision f32|bf16|q8)"
            ),
        }
    }
    let threads = inferd_kernels::pool::init_global(threads);
    let read = |f: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(data.join(f)).expect("the data file"))
            .expect("JSON")
    };
    // Descriptions by normalised name: merged tools, then plugins.
    let mut desc: HashMap<String, String> = HashMap::new();
    for (k, v) in read("big_tool_des.json").as_object().unwrap() {
        desc.insert(normal(k), v.as_str().unwrap_or_default().to_owned());
    }
    for (k, v) in read("plugin_des.json").as_object().unwrap() {
        desc.entry(normal(k))
            .or_insert_with(|| v.as_str().unwrap_or_default().to_owned());
    }
    for p in read("plugin_info.json").as_array().unwrap() {
        let d = p["description_for_human"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        for key in ["name_for_human", "name_for_model"] {
            if let Some(n) = p[key].as_str() {
                desc.entry(normal(n)).or_insert_with(|| d.clone());
            }
        }
    }
    let mut rows: Vec<(String, String)> = csv::Reader::from_path(data.join("all_clean_data.csv"))
        .expect("the CSV")
        .records()
        .map(|r| {
            let r = r.expect("a row");
            (r[0].to_owned(), r[1].to_owned())
        })
        .collect();
    let mut tools: Vec<String> = rows.iter().map(|r| r.1.clone()).collect();
    tools.sort();
    tools.dedup();
    let resolved = tools
        .iter()
        .filter(|t| desc.contains_key(&normal(t)))
        .count();
    println!(
        "{} rows, {} tools, {resolved} with a description (the rest: the name alone); {threads} threads",
        rows.len(),
        tools.len()
    );

    let mut rng = StdRng::seed_from_u64(20261201);
    rows.shuffle(&mut rng);
    let mut taken: HashMap<&str, usize> = HashMap::new();
    let (mut examples, mut test) = (Vec::new(), Vec::new());
    for r in &rows {
        let n = taken.entry(r.1.as_str()).or_default();
        if *n < train {
            *n += 1;
            examples.push(r);
        } else {
            test.push(r);
        }
    }
    // The test part is the rows left after the examples, in the seeded order;
    // `--test N` keeps the first N of them.
    test.truncate(test_cap);
    println!(
        "{} labelled examples ({train} per tool), {} test queries",
        examples.len(),
        test.len()
    );

    let model = Embedder::load(inferd_testutil::minilm_path()).expect("the model loads");
    let model = match precision {
        Some(p) => model
            .with_precision(p)
            .unwrap_or_else(|| panic!("this CPU has no {} kernel", p.name())),
        None => model,
    };
    println!(
        "all-MiniLM-L6-v2 on kernels {} {}",
        model.isa().name(),
        model.precision().name()
    );
    let embed = |texts: Vec<&str>| -> Vec<Vec<f32>> {
        texts
            .chunks(128)
            .flat_map(|c| model.embed(c).expect("embeds"))
            .collect()
    };
    let texts: Vec<String> = tools
        .iter()
        .map(|t| tool_text(t, desc.get(&normal(t)).map_or("", String::as_str)))
        .collect();
    let tool_vecs = embed(texts.iter().map(String::as_str).collect());
    let index: HashMap<&str, usize> = tools
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mut by_tool: Vec<Vec<Vec<f32>>> = vec![Vec::new(); tools.len()];
    for (r, v) in examples
        .iter()
        .zip(embed(examples.iter().map(|r| r.0.as_str()).collect()))
    {
        by_tool[index[r.1.as_str()]].push(v);
    }
    let sums: Vec<Vec<f32>> = by_tool.iter().map(|v| sum(v)).collect();
    let started = Instant::now();
    let query_vecs = embed(test.iter().map(|r| r.0.as_str()).collect());
    println!(
        "embedded {} test queries in {:.1} s",
        test.len(),
        started.elapsed().as_secs_f64()
    );

    let (none, no_sum): (Vec<Vec<f32>>, Vec<f32>) = (Vec::new(), Vec::new());
    println!("\n| candidates | scored by | top-1 | recall@5 |\n| --- | --- | --- | --- |");
    for n in [50usize, 100, tools.len()] {
        for with_examples in [false, true] {
            let mut rng = StdRng::seed_from_u64(n as u64);
            let (mut top1, mut top5) = (0usize, 0usize);
            for (r, q) in test.iter().zip(&query_vecs) {
                let gold = index[r.1.as_str()];
                let mut cands: Vec<usize> = (0..tools.len()).filter(|&i| i != gold).collect();
                cands.shuffle(&mut rng);
                cands.truncate(n - 1);
                cands.push(gold);
                let s = |i: usize| {
                    if with_examples {
                        score(q, &tool_vecs[i], &by_tool[i], &sums[i])
                    } else {
                        score(q, &tool_vecs[i], &none, &no_sum)
                    }
                };
                let g = s(gold);
                let above = cands.iter().filter(|&&i| i != gold && s(i) > g).count();
                top1 += (above == 0) as usize;
                top5 += (above < 5) as usize;
            }
            let t = test.len() as f64;
            println!(
                "| {n} | {} | {:.3} | {:.3} |",
                if with_examples {
                    "description + examples"
                } else {
                    "description"
                },
                top1 as f64 / t,
                top5 as f64 / t
            );
        }
    }

    // The stage's own time per request at all tools, with examples.
    let mut times: Vec<f64> = test
        .iter()
        .take(500)
        .map(|r| {
            let t0 = Instant::now();
            let q = model.embed(&[r.0.as_str()]).expect("embeds").remove(0);
            let scores: Vec<f32> = (0..tools.len())
                .map(|i| score(&q, &tool_vecs[i], &by_tool[i], &sums[i]))
                .collect();
            let keep = inferd_gateway::tools::top_k(&scores, 5);
            assert_eq!(keep.len(), 5);
            t0.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    let pct = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
    println!(
        "\nstage time at {} tools ({} examples): p50 {:.2} ms, p99 {:.2} ms over {} queries",
        tools.len(),
        examples.len(),
        pct(0.5),
        pct(0.99),
        times.len()
    );
}
