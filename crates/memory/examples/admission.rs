//! What a managed key costs a request: admission (every limit of the key and
//! its team checked and reserved in one transaction) and settlement (the
//! reservation replaced by the usage, the usage appended to the ledger), at
//! 1/16/64 concurrent callers, on SQLite, PostgreSQL, and PostgreSQL with the
//! per-minute counters in Redis.
//!
//! `cargo run --release -p inferd-memory --example admission -- SCRATCH_DIR [POSTGRES_URL [REDIS_URL]]`
//! prints a Markdown table. Each key has a rate limit and a token budget (and
//! its team a budget), so every admission checks four limits on two rows per
//! subject — the most a request pays.

use std::sync::Arc;
use std::time::Instant;

use inferd_memory::keys::Usage;
use inferd_memory::*;

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn config(
    label: &str,
    scratch: &std::path::Path,
    pg: Option<&str>,
    redis: Option<&str>,
) -> MemoryConfig {
    let state = match pg {
        None => {
            let dir = scratch.join(format!("admission-{label}"));
            let _ = std::fs::remove_dir_all(&dir);
            StateStore::Sqlite(dir)
        }
        Some(url) => {
            let schema = format!("inferd_bench_admission_{label}");
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
    MemoryConfig {
        limits: redis.map(str::to_owned),
        read_connections: 16,
        ..MemoryConfig::at(state)
    }
}

/// `callers` tasks, each admitting and settling in turn, `total` in all:
/// admission p50/p99 (ms) and admissions per second.
async fn run(
    m: Arc<Memory>,
    keys: Arc<Vec<KeyRecord>>,
    callers: usize,
    total: usize,
) -> (f64, f64, f64) {
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|c| {
            let (m, keys) = (Arc::clone(&m), Arc::clone(&keys));
            tokio::spawn(async move {
                let mut lat = Vec::new();
                for i in (c..total).step_by(callers) {
                    let key = &keys[i % keys.len()];
                    let t = Instant::now();
                    let mut ticket = m
                        .keys()
                        .admit(key, "bench", 600, 1_000)
                        .await
                        .unwrap()
                        .unwrap_or_else(|r| panic!("refused: {r}"));
                    lat.push(t.elapsed().as_secs_f64() * 1e3);
                    ticket.record(Usage {
                        prompt_tokens: 40,
                        completion_tokens: 8,
                        cost_nanos: 500,
                        tier: None,
                        status: 200,
                    });
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

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let scratch = std::path::PathBuf::from(args.first().expect("SCRATCH_DIR"));
    let pg = args.get(1).map(String::as_str);
    let redis = args.get(2).map(String::as_str);
    let mut targets = vec![("SQLite", "sqlite", None, None)];
    if let Some(url) = pg {
        targets.push(("PostgreSQL", "pg", Some(url), None));
        if let Some(r) = redis {
            targets.push(("PostgreSQL + Redis rates", "pgredis", Some(url), Some(r)));
        }
    }
    println!("| store | callers | admission p50 ms | p99 ms | admissions/s | settled/s |");
    println!("|---|---|---|---|---|---|");
    for (name, label, pg, redis) in targets {
        let m = Arc::new(Memory::open(&config(label, &scratch, pg, redis), None).unwrap());
        let limits = Limits {
            rpm: Some(1_000_000_000),
            budget_tokens: Some(1_000_000_000_000),
            period: Period::Month,
            ..Limits::default()
        };
        m.keys()
            .set_team("bench".into(), limits.clone())
            .await
            .unwrap();
        let mut keys = Vec::new();
        for i in 0..16 {
            let k = m
                .keys()
                .create_key(format!("k{i}"), Some("bench".into()), limits.clone())
                .await
                .unwrap();
            keys.push(k.record);
        }
        let keys = Arc::new(keys);
        // Warm the pools.
        run(Arc::clone(&m), Arc::clone(&keys), 4, 200).await;
        for callers in [1, 16, 64] {
            let total = if callers == 1 { 1000 } else { 4000 };
            let before = m.keys().settled();
            let t0 = Instant::now();
            let (p50, p99, rate) = run(Arc::clone(&m), Arc::clone(&keys), callers, total).await;
            while m.keys().settled() < before + total as u64 {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            let settled = total as f64 / t0.elapsed().as_secs_f64();
            println!("| {name} | {callers} | {p50:.2} | {p99:.2} | {rate:.0} | {settled:.0} |");
        }
    }
}
