//! A tiny `inferd bench` against a real inferd server (real model, real HTTP on
//! port 0): every workload shape, closed and open loop, two targets side by side,
//! and the report and plots written to disk. Seconds, not minutes.

use std::sync::Arc;
use std::time::Duration;

use inferd_backend::{Backend, LocalBackend};
use inferd_bench::{
    plot, report, BenchConfig, Endpoint, Mode, RequestOptions, Slo, Target, Workload,
};
use inferd_engine::{EngineConfig, LoadedModel};
use inferd_server::{router, ServerOptions, ServerState};
use inferd_tokenizer::Tokenizer;

/// Starts the server on 127.0.0.1:0 on its own runtime thread; returns its base URL
/// and the tokenizer.
fn server() -> (String, Arc<Tokenizer>) {
    let loaded = LoadedModel::load(inferd_testutil::smollm2_path()).unwrap();
    let local = LocalBackend::start("smollm2-135m", loaded, EngineConfig::default()).unwrap();
    let tok = local.tokenizer().clone();
    let backends: Vec<Arc<dyn Backend>> = vec![Arc::new(local)];
    let state = ServerState::new(backends, ServerOptions::default()).unwrap();
    let addr = inferd_testutil::serve_in_background(router(Arc::new(state)));
    (format!("http://{addr}"), tok)
}

fn config(
    base: &str,
    names: &[&str],
    workload: Workload,
    mode: Mode,
    endpoint: Endpoint,
) -> BenchConfig {
    BenchConfig {
        targets: names
            .iter()
            .map(|n| Target {
                name: n.to_string(),
                base: base.to_owned(),
                model: "smollm2-135m".into(),
                api_key: None,
            })
            .collect(),
        workload,
        options: RequestOptions {
            endpoint,
            ignore_eos: true,
            temperature: 0.0,
        },
        mode,
        requests: 3,
        max_duration: Duration::from_secs(60),
        slo: Slo::parse("ttft=30s,tpot=5s").unwrap(),
        seed: 7,
        warmup: 0,
        request_timeout: Duration::from_secs(60),
        show_progress: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_bench_against_a_real_server() {
    let (base, tok) = server();

    // Random prompts, closed loop, two targets side by side (the same server twice).
    let random = Workload::Random {
        input: 24,
        range: 0.0,
        output: 8,
    };
    let c = config(
        &base,
        &["a", "b"],
        random,
        Mode::Concurrency(vec![1, 2]),
        Endpoint::Completions,
    );
    let r = inferd_bench::run(&c, &tok).await.unwrap();
    assert_eq!(r.levels.len(), 4, "two levels × two targets");
    assert_eq!(
        r.levels
            .iter()
            .map(|l| l.target.as_str())
            .collect::<Vec<_>>(),
        ["a", "b", "a", "b"],
        "levels alternate between targets"
    );
    for l in &r.levels {
        assert_eq!(
            (l.summary.requests, l.summary.failed),
            (3, 0),
            "{:?}",
            l.records
        );
        assert_eq!(l.summary.goodput_rps.unwrap(), l.summary.requests_per_s);
        for rec in &l.records {
            assert_eq!(rec.output_tokens, 8, "ignore_eos gives exactly max_tokens");
            assert_eq!(rec.itl.len(), 7, "one gap per token after the first");
            // Exactly the synthetic length, plus the BOS the server may add.
            assert!(
                (24..=25).contains(&rec.prompt_tokens),
                "{}",
                rec.prompt_tokens
            );
            let ttft = rec.ttft.unwrap();
            assert!(ttft > 0.0 && ttft <= rec.e2e);
            let server_ttft = rec.server_ttft().expect("inferd reports its own timings");
            assert!(
                server_ttft <= ttft + 1e-3,
                "server {server_ttft} client {ttft}"
            );
            let tpot = rec.tpot().unwrap();
            let mean_itl = rec.itl.iter().sum::<f64>() / 7.0;
            // e2e ends at the end of the stream, after the last token's chunk, so
            // TPOT = (e2e - TTFT) / 7 can only exceed the mean gap between chunks.
            assert!(
                tpot >= mean_itl - 1e-9,
                "TPOT {tpot} below the mean gap after the first token {mean_itl}"
            );
        }
        assert_eq!(l.summary.output_tokens, 24);
    }
    // Same requests to both targets: same prompt lengths level by level.
    let lens = |name: &str| {
        r.of_target(name)
            .flat_map(|l| l.records.iter().map(|x| x.prompt_tokens))
            .collect::<Vec<_>>()
    };
    let (mut la, mut lb) = (lens("a"), lens("b"));
    la.sort();
    lb.sort();
    assert_eq!(la, lb);

    let text = report::terminal(&r);
    assert!(text.contains("b / a"), "{text}");
    let dir = std::env::temp_dir().join(format!("inferd-bench-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let plots = plot::write_all(&r, &dir).unwrap();
    assert_eq!(plots.len(), 4);
    for p in &plots {
        let png = std::fs::read(dir.join(p)).unwrap();
        assert_eq!(&png[..4], b"\x89PNG");
        let svg = std::fs::read_to_string(dir.join(p.replace(".png", ".svg"))).unwrap();
        assert!(
            svg.contains("<svg") && svg.contains("<text"),
            "the SVG has its titles and labels"
        );
    }
    let mut r = r;
    r.command = "inferd bench ...".into();
    let md = report::markdown(&r, &plots);
    assert!(md.contains("```sh\ninferd bench ...\n```"));
    // A saved run reads back and renders the same report.
    let back: inferd_bench::BenchResult =
        serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
    assert_eq!(report::markdown(&back, &plots), md);
    assert!(
        md.contains("| a | c=1 |") && md.contains("![ttft_cdf.png](ttft_cdf.png)"),
        "{md}"
    );
    std::fs::remove_dir_all(&dir).unwrap();

    // Shared prefix: later requests find the prefix in the server's cache.
    let shared = Workload::SharedPrefix {
        prefix: 64,
        suffix: 8,
        output: 4,
    };
    let c = config(
        &base,
        &["a"],
        shared,
        Mode::Concurrency(vec![1]),
        Endpoint::Chat,
    );
    let r = inferd_bench::run(&c, &tok).await.unwrap();
    let cached: Vec<usize> = r.levels[0]
        .records
        .iter()
        .map(|x| x.cached_tokens.unwrap())
        .collect();
    assert!(cached[1] >= 48 && cached[2] >= 48, "{cached:?}");

    // Multi-turn over Poisson arrivals: each turn resends a longer conversation.
    let turns = Workload::MultiTurn {
        turns: 2,
        input: 12,
        output: 4,
    };
    let c = config(&base, &["a"], turns, Mode::Rate(vec![4.0]), Endpoint::Chat);
    let r = inferd_bench::run(&c, &tok).await.unwrap();
    let recs = &r.levels[0].records;
    assert_eq!(recs.len(), 6, "3 conversations × 2 turns");
    assert!(recs.iter().all(|x| x.ok));
    let first: usize = recs
        .iter()
        .filter(|x| x.turn == Some(0))
        .map(|x| x.prompt_tokens)
        .max()
        .unwrap();
    let second: usize = recs
        .iter()
        .filter(|x| x.turn == Some(1))
        .map(|x| x.prompt_tokens)
        .min()
        .unwrap();
    assert!(
        second > first + 12,
        "turn 2 carries turn 1 and its answer: {first} → {second}"
    );
}

#[tokio::test]
async fn a_jsonl_workload_and_a_dead_target_are_reported_not_crashed() {
    let dir = std::env::temp_dir().join(format!("inferd-bench-jsonl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("w.jsonl");
    std::fs::write(&file, "{\"prompt\": \"Hello\", \"max_tokens\": 2}\n\n{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}]}\n").unwrap();
    let specs = inferd_bench::workload::read_jsonl(&file, 3).unwrap();
    assert_eq!(
        specs.iter().map(|s| s.endpoint).collect::<Vec<_>>(),
        [Endpoint::Completions, Endpoint::Chat, Endpoint::Completions]
    );
    std::fs::write(&file, "{\"max_tokens\": 2}\n").unwrap();
    assert!(inferd_bench::workload::read_jsonl(&file, 0)
        .unwrap_err()
        .contains(":1: a request body needs"));
    std::fs::remove_dir_all(&dir).unwrap();

    // Nothing listens there: every request fails, with the reason kept.
    let tok = LoadedModel::load(inferd_testutil::smollm2_path())
        .unwrap()
        .tokenizer;
    let random = Workload::Random {
        input: 8,
        range: 0.0,
        output: 2,
    };
    let mut c = config(
        "http://127.0.0.1:9",
        &["dead"],
        random,
        Mode::Concurrency(vec![2]),
        Endpoint::Completions,
    );
    c.request_timeout = Duration::from_secs(5);
    let r = inferd_bench::run(&c, &tok).await.unwrap();
    let s = &r.levels[0].summary;
    assert_eq!((s.requests, s.failed, s.goodput_rps), (3, 3, Some(0.0)));
    assert!(r.levels[0].records[0]
        .error
        .as_deref()
        .unwrap()
        .contains("send"));
}
