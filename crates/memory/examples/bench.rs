//! The memory store's benchmark: write latency and throughput at 1/16/64
//! concurrent writers, projection lag and read-your-writes latency under a paced
//! 500 writes/s, and search latency over 10k and 100k items, by the exact scan
//! and through the HNSW graph, with the graph's recall.
//!
//! `cargo run --release -p inferd-memory --example bench -- MINILM_DIR [SCRATCH_DIR [POSTGRES_URL [SECTIONS]]]`
//! prints a Markdown report; SECTIONS is a comma-separated subset of
//! `writes,paced,vectors,search` (default: all). Search runs over MiniLM's
//! vectors of 10k and 100k sentences (embedding the 100k takes minutes).

use std::sync::Arc;
use std::time::{Duration, Instant};

use inferd_memory::*;
use serde_json::Map;

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn put(ns: &str, content: String) -> Write {
    Write::put(
        Namespace::parse(ns).unwrap(),
        None,
        None,
        content,
        Map::new(),
        None,
    )
    .unwrap()
}

/// A sentence of ~12 words from a small vocabulary, varied by `i`.
fn sentence(i: usize) -> String {
    const W: [&str; 24] = [
        "customer", "prefers", "email", "meeting", "invoice", "deadline", "project", "billing",
        "slack", "report", "weekly", "travel", "budget", "approved", "contract", "review", "team",
        "launch", "feedback", "support", "ticket", "urgent", "friday", "notes",
    ];
    let mut x = i as u64 * 2654435761 + 1;
    (0..12)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            W[(x % W.len() as u64) as usize]
        })
        .collect::<Vec<_>>()
        .join(" ")
        + &format!(" #{i}")
}

/// Where a benchmark's stores go: SQLite directories under one folder, or
/// schemas of one PostgreSQL database.
#[derive(Clone)]
enum Target {
    Sqlite(std::path::PathBuf),
    Postgres(String),
}

impl Target {
    fn name(&self) -> &'static str {
        match self {
            Target::Sqlite(_) => "SQLite",
            Target::Postgres(_) => "PostgreSQL",
        }
    }
}

fn store(
    target: &Target,
    name: &str,
    durability: Durability,
    embedder: Option<Arc<dyn TextEmbedder>>,
) -> Memory {
    store_with(target, name, durability, embedder, AnnConfig::default())
}

fn store_with(
    target: &Target,
    name: &str,
    durability: Durability,
    embedder: Option<Arc<dyn TextEmbedder>>,
    ann: AnnConfig,
) -> Memory {
    let state = match target {
        Target::Sqlite(scratch) => {
            let dir = scratch.join(name);
            let _ = std::fs::remove_dir_all(&dir);
            StateStore::Sqlite(dir)
        }
        Target::Postgres(url) => {
            let schema = format!("inferd_bench_{name}");
            // The client blocks on a runtime of its own: off the async threads.
            std::thread::scope(|s| {
                s.spawn(|| {
                    postgres::Client::connect(url, postgres::NoTls)
                        .unwrap()
                        .batch_execute(&format!(
                            "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
                        ))
                        .unwrap()
                })
                .join()
                .unwrap()
            });
            let sep = if url.contains('?') { '&' } else { '?' };
            StateStore::Postgres(format!("{url}{sep}options=-csearch_path%3D{schema}"))
        }
    };
    let config = MemoryConfig {
        durability,
        ann,
        ..MemoryConfig::at(state)
    };
    Memory::open(&config, embedder).unwrap()
}

async fn writes(m: Arc<Memory>, writers: usize, total: usize) -> (f64, f64, f64) {
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let m = Arc::clone(&m);
            tokio::spawn(async move {
                let mut lat = Vec::new();
                for i in (w..total).step_by(writers) {
                    let t = Instant::now();
                    m.write(put(&format!("t/w{}", i % 16), sentence(i)))
                        .await
                        .unwrap();
                    lat.push(t.elapsed().as_secs_f64() * 1e3);
                }
                lat
            })
        })
        .collect();
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let secs = started.elapsed().as_secs_f64();
    (pct(&mut lat, 0.5), pct(&mut lat, 0.99), total as f64 / secs)
}

async fn wait_all(m: &Memory) {
    let head = m.report().await.unwrap()["log_position"].as_i64().unwrap();
    for s in m.statuses() {
        s.reached(head).await;
    }
}

/// 5000 writes offered at 500/s (open loop): each write's lag to every
/// projection, watched from its acknowledgement, and a read-your-writes read of
/// it (items; search for one in ten when there are vectors).
async fn paced(target: &Target, label: &str, embedder: Option<Arc<dyn TextEmbedder>>) {
    println!("\n## 500 writes/s for 10 s, {}: {label}\n", target.name());
    let searching = embedder.is_some();
    let name = if searching { "paced_vectors" } else { "paced" };
    let m = Arc::new(store(target, name, Durability::Fsync, embedder));
    let names: Vec<&'static str> = m.statuses().iter().map(|s| s.name).collect();
    let interval = Duration::from_micros(2000);
    let started = Instant::now();
    let mut reads = Vec::new();
    let mut watches = Vec::new();
    for i in 0..5000usize {
        tokio::time::sleep_until((started + interval * i as u32).into()).await;
        let a = {
            let m = Arc::clone(&m);
            // The write itself is awaited off the pacing loop.
            tokio::spawn(async move {
                m.write(put(&format!("t/p{}", i % 16), sentence(i)))
                    .await
                    .unwrap()
            })
        };
        let m = Arc::clone(&m);
        let (tx, rx) = tokio::sync::oneshot::channel();
        watches.push(rx);
        reads.push(tokio::spawn(async move {
            let a = a.await.unwrap();
            let acked = Instant::now();
            let mut lags = Vec::new();
            for s in m.statuses() {
                let s = Arc::clone(s);
                lags.push(tokio::spawn(async move {
                    s.reached(a.gseq).await;
                    acked.elapsed().as_secs_f64() * 1e3
                }));
            }
            let _ = tx.send(lags);
            let ns = Namespace::parse(&a.namespace).unwrap();
            let c = Consistency {
                min_seq: Some(a.seq),
                wait_ms: Some(30_000),
            };
            let t = Instant::now();
            let item = m
                .item(&ns, a.id, c)
                .await
                .map(|_| t.elapsed().as_secs_f64() * 1e3);
            let search = if searching && i % 10 == 0 {
                let t = Instant::now();
                let s = Search {
                    namespace: ns,
                    query: "billing deadline".into(),
                    k: 5,
                    kind: None,
                    metadata: Map::new(),
                };
                Some(
                    m.search(s, c)
                        .await
                        .map(|_| t.elapsed().as_secs_f64() * 1e3),
                )
            } else {
                None
            };
            (item, search)
        }));
    }
    let offered = started.elapsed().as_secs_f64();
    let mut lags: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    for w in watches {
        for (i, l) in w.await.unwrap().into_iter().enumerate() {
            lags[i].push(l.await.unwrap());
        }
    }
    let caught_up = started.elapsed().as_secs_f64();
    let (mut item, mut search, mut failed) = (Vec::new(), Vec::new(), 0);
    for r in reads {
        let (i, s) = r.await.unwrap();
        match i {
            Ok(ms) => item.push(ms),
            Err(_) => failed += 1,
        }
        match s {
            Some(Ok(ms)) => search.push(ms),
            Some(Err(_)) => failed += 1,
            None => {}
        }
    }
    println!("offered 5000 writes in {offered:.1} s; every projection had applied them {caught_up:.1} s after the first; {failed} reads failed\n");
    println!("| projection | lag p50 ms | lag p99 ms | lag max ms |");
    println!("|---|---:|---:|---:|");
    for (name, l) in names.iter().zip(lags.iter_mut()) {
        let max = l.iter().copied().fold(0.0, f64::max);
        println!(
            "| {name} | {:.1} | {:.1} | {max:.0} |",
            pct(l, 0.5),
            pct(l, 0.99)
        );
    }
    println!("\n| read-your-writes read | reads | p50 ms | p99 ms |");
    println!("|---|---:|---:|---:|");
    println!(
        "| item (items projection) | {} | {:.2} | {:.2} |",
        item.len(),
        pct(&mut item, 0.5),
        pct(&mut item, 0.99)
    );
    if searching {
        println!(
            "| search (vectors projection) | {} | {:.2} | {:.2} |",
            search.len(),
            pct(&mut search, 0.5),
            pct(&mut search, 0.99)
        );
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let minilm = args
        .get(1)
        .expect("usage: bench MINILM_DIR [SCRATCH_DIR [POSTGRES_URL]]");
    let scratch = std::path::PathBuf::from(args.get(2).cloned().unwrap_or_else(|| {
        std::env::temp_dir()
            .join("inferd-memory-bench")
            .display()
            .to_string()
    }));
    let minilm: Arc<dyn TextEmbedder> = Arc::new(inferd_embed::Embedder::load(minilm).unwrap());
    let sqlite = Target::Sqlite(scratch.clone());
    let mut targets = vec![sqlite.clone()];
    targets.extend(
        args.get(3)
            .filter(|u| !u.is_empty())
            .map(|url| Target::Postgres(url.clone())),
    );
    let sections = args
        .get(4)
        .cloned()
        .unwrap_or_else(|| "writes,paced,vectors,search".into());
    let runs = |s: &str| sections.split(',').any(|x| x == s);
    if runs("writes") {
        write_section(&targets).await;
    }
    if runs("paced") {
        for target in &targets {
            paced(target, "items, facts, recent, audit (no embedder)", None).await;
        }
    }
    if runs("vectors") {
        paced(
            &sqlite,
            "the same and vectors (MiniLM)",
            Some(Arc::clone(&minilm)),
        )
        .await;
    }
    if runs("search") {
        search_section(&sqlite, &minilm).await;
    }
    if runs("foreground") {
        foreground_section(&sqlite, &minilm).await;
    }
    let _ = std::fs::remove_dir_all(&scratch);
}

async fn write_section(targets: &[Target]) {
    println!("## Writes (no embedder)\n");
    println!("| store | durability | writers | writes | p50 ms | p99 ms | writes/s |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for target in targets {
        for durability in [Durability::Fsync, Durability::Os] {
            for writers in [1, 16, 64] {
                let name = format!("writes_{durability:?}_{writers}").to_lowercase();
                let m = Arc::new(store(target, &name, durability, None));
                let total = if writers == 1 { 1000 } else { 5000 };
                let (p50, p99, rate) = writes(Arc::clone(&m), writers, total).await;
                println!(
                    "| {} | {durability:?} | {writers} | {total} | {p50:.2} | {p99:.2} | {rate:.0} |",
                    target.name()
                );
                drop(m);
            }
        }
    }
}

/// What a backlog of writes to embed costs foreground work: MiniLM query
/// embeddings (the engine's pool, as a search's or a chat's work would be)
/// timed on an idle store, then while the vectors projection embeds 4,000
/// writes behind them.
async fn foreground_section(sqlite: &Target, minilm: &Arc<dyn TextEmbedder>) {
    println!("\n## Foreground embeddings while the vectors projection works\n");
    println!("| while | embeddings | p50 ms | p99 ms |");
    println!("|---|---:|---:|---:|");
    let m = Arc::new(store(
        sqlite,
        "foreground",
        Durability::Os,
        Some(Arc::clone(minilm)),
    ));
    let time = |n: usize| {
        let mut lat = Vec::new();
        for i in 0..n {
            let t = Instant::now();
            let _ = minilm
                .embed(&[&format!("who asked about the invoice deadline {i}?")])
                .unwrap();
            lat.push(t.elapsed().as_secs_f64() * 1e3);
        }
        lat
    };
    let mut idle = time(200);
    println!(
        "| idle | {} | {:.2} | {:.2} |",
        idle.len(),
        pct(&mut idle, 0.5),
        pct(&mut idle, 0.99)
    );
    let mut pending = Vec::new();
    for i in 0..4000 {
        let m = Arc::clone(&m);
        pending.push(tokio::spawn(async move {
            m.write(put("t/fg", sentence(i))).await.unwrap()
        }));
    }
    for p in pending {
        p.await.unwrap();
    }
    let mut busy = Vec::new();
    let vectors = m
        .statuses()
        .iter()
        .find(|s| s.name == "vectors")
        .unwrap()
        .clone();
    let head = m.report().await.unwrap()["log_position"].as_i64().unwrap();
    while vectors.applied() < head * 3 / 4 && busy.len() < 2000 {
        busy.extend(time(10));
    }
    println!(
        "| 4,000 writes being embedded | {} | {:.2} | {:.2} |",
        busy.len(),
        pct(&mut busy, 0.5),
        pct(&mut busy, 0.99)
    );
    wait_all(&m).await;
}

/// Search over 10k MiniLM-embedded sentences and 100k hashed vectors: the
/// exact scan and the graph (every item indexed first), the graph's recall@5
/// against the scan, and what indexing took.
async fn search_section(sqlite: &Target, minilm: &Arc<dyn TextEmbedder>) {
    println!("\n## Search (one namespace, k = 5)\n");
    println!(
        "Graph: HNSW (hnsw_rs), {} neighbours per point, ef_construction {}, ef_search {}.\n",
        AnnConfig::default().connections,
        AnnConfig::default().ef_construction,
        AnnConfig::default().ef_search
    );
    println!("| items | stored vectors | indexing s | scan p50 ms | scan p99 ms | graph p50 ms | graph p99 ms | recall@5 | MiniLM query embedding p50 ms | search (embedding + graph) p50 ms |");
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (items, embedder, label) in [
        (10_000usize, Arc::clone(minilm), "MiniLM"),
        (100_000, Arc::clone(minilm), "MiniLM"),
    ] {
        let m = Arc::new(store_with(
            sqlite,
            &format!("search_{items}"),
            Durability::Os,
            Some(Arc::clone(&embedder)),
            AnnConfig {
                from: 5_000,
                ..AnnConfig::default()
            },
        ));
        let mut pending = Vec::new();
        for i in 0..items {
            let m = Arc::clone(&m);
            pending.push(tokio::spawn(async move {
                m.write(put("t/search", sentence(i))).await.unwrap()
            }));
            if pending.len() == 512 {
                for p in pending.drain(..) {
                    p.await.unwrap();
                }
            }
        }
        for p in pending {
            p.await.unwrap();
        }
        wait_all(&m).await;
        let applied = Instant::now();
        while m.vector_counts().1 < items {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let indexing = applied.elapsed().as_secs_f64();
        let mut total = Vec::new();
        let mut scan = Vec::new();
        let mut graph = Vec::new();
        let mut embed = Vec::new();
        let (mut found, mut wanted) = (0usize, 0usize);
        let index_only = Search {
            namespace: Namespace::parse("t/search").unwrap(),
            query: String::new(),
            k: 5,
            kind: None,
            metadata: Map::new(),
        };
        for i in 0..200 {
            let text = format!("who prefers email for billing {i}?");
            let q = embedder.embed(&[&text]).unwrap().pop().unwrap();
            let s = Search {
                query: text.clone(),
                ..index_only.clone()
            };
            let t0 = Instant::now();
            let hits = m.search(s, Consistency::default()).await.unwrap();
            total.push(t0.elapsed().as_secs_f64() * 1e3);
            assert_eq!(hits.len(), 5);
            let t = Instant::now();
            let exact = m.scan(&q, &index_only);
            scan.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            let approx = m.nearest(&q, &index_only);
            graph.push(t.elapsed().as_secs_f64() * 1e3);
            found += approx
                .iter()
                .filter(|h| exact.iter().any(|e| e.id == h.id))
                .count();
            wanted += exact.len();
            let t = Instant::now();
            let _ = minilm.embed(&[&text]).unwrap();
            embed.push(t.elapsed().as_secs_f64() * 1e3);
        }
        println!(
            "| {items} | {label} | {indexing:.1} | {:.2} | {:.2} | {:.3} | {:.3} | {:.3} | {:.2} | {:.2} |",
            pct(&mut scan, 0.5),
            pct(&mut scan, 0.99),
            pct(&mut graph, 0.5),
            pct(&mut graph, 0.99),
            found as f64 / wanted as f64,
            pct(&mut embed, 0.5),
            pct(&mut total, 0.5),
        );
        drop(m);
    }
}
