//! The store end to end, every case on real SQLite files and on the PostgreSQL
//! server at 127.0.0.1:5432 (`INFERD_TEST_POSTGRES` names another; each case in
//! its own schema), with the real MiniLM embedder for the vector projection:
//! appends, idempotency, every projection, read-your-writes, failing
//! projections, two stores sharing one log, and rebuild from zero. Where no
//! PostgreSQL answers, each PostgreSQL case says it was skipped, by name.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use inferd_memory::*;
use serde_json::{json, Map, Value};

/// Makes a fresh, empty store of one backend, named for its test and `part`.
type Fresh = Arc<dyn Fn(&str) -> MemoryConfig + Send + Sync>;

fn sqlite_store(test: &str) -> Fresh {
    let test = test.to_owned();
    Arc::new(move |part| {
        let d = std::env::temp_dir().join(format!(
            "inferd-memory-{test}-{part}-{}",
            std::process::id()
        ));
        MemoryConfig::new(d)
    })
}

fn postgres_base() -> String {
    std::env::var("INFERD_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// The PostgreSQL client blocks on a runtime of its own: not inside a test's.
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| s.spawn(f).join().unwrap())
}

fn pg_client(url: &str) -> std::result::Result<postgres::Client, postgres::Error> {
    let mut config: postgres::Config = url.parse()?;
    config.connect_timeout(Duration::from_secs(3));
    config.connect(postgres::NoTls)
}

/// `None` (and a line saying the case was skipped) when no PostgreSQL answers.
fn postgres_store(test: &str) -> Option<Fresh> {
    let base = postgres_base();
    if let Err(e) = off_runtime(|| pg_client(&base).map(drop)) {
        inferd_testutil::report(&format!(
            "skipped: {test} on PostgreSQL: none reachable at {base}: {e}"
        ));
        return None;
    }
    let tag: u32 = test
        .bytes()
        .fold(2166136261, |h, b| (h ^ b as u32).wrapping_mul(16777619));
    Some(Arc::new(move |part| {
        let schema = format!("inferd_{tag:08x}_{part}_{}", std::process::id());
        off_runtime(|| {
            pg_client(&base)
                .unwrap()
                .batch_execute(&format!(
                    "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
                ))
                .unwrap()
        });
        let sep = if base.contains('?') { '&' } else { '?' };
        MemoryConfig::at(StateStore::Postgres(format!(
            "{base}{sep}options=-csearch_path%3D{schema}"
        )))
    }))
}

/// After a case passed: its schemas (PostgreSQL) or directories (SQLite).
fn clean_up(test: &str, postgres: bool) {
    let pid = std::process::id();
    if postgres {
        let tag: u32 = test
            .bytes()
            .fold(2166136261, |h, b| (h ^ b as u32).wrapping_mul(16777619));
        off_runtime(|| {
            let mut c = pg_client(&postgres_base()).unwrap();
            let pattern = format!("inferd_{tag:08x}_%_{pid}");
            for row in c
                .query(
                    "SELECT nspname FROM pg_namespace WHERE nspname LIKE $1",
                    &[&pattern],
                )
                .unwrap()
            {
                let schema: String = row.get(0);
                c.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                    .unwrap();
            }
        });
    } else if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        let (prefix, suffix) = (format!("inferd-memory-{test}-"), format!("-{pid}"));
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) && name.ends_with(&suffix) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Runs the case on SQLite and on PostgreSQL, as `<case>::sqlite` and
/// `<case>::postgres`; what a passing case made is removed.
macro_rules! on_both {
    ($case:ident) => {
        mod $case {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$case(super::sqlite_store(stringify!($case))).await;
                super::clean_up(stringify!($case), false);
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(fresh) = super::postgres_store(stringify!($case)) {
                    super::$case(fresh).await;
                    super::clean_up(stringify!($case), true);
                }
            }
        }
    };
}

/// Rows of a query on the store's projections.
fn query(config: &MemoryConfig, sql: &str) -> Vec<(i64, i64)> {
    match &config.state {
        StateStore::Sqlite(dir) => {
            let conn = rusqlite::Connection::open(dir.join("projections.db")).unwrap();
            let mut stmt = conn.prepare(sql).unwrap();
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .map(|r| r.unwrap())
                .collect()
        }
        StateStore::Postgres(url) => off_runtime(|| {
            pg_client(url)
                .unwrap()
                .query(sql, &[])
                .unwrap()
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect()
        }),
    }
}

fn ns(s: &str) -> Namespace {
    Namespace::parse(s).unwrap()
}

fn put(n: &str, key: Option<&str>, content: &str, idem: Option<&str>) -> Write {
    Write::put(
        ns(n),
        None,
        key.map(Into::into),
        content.into(),
        Map::new(),
        idem.map(Into::into),
    )
    .unwrap()
}

fn at(seq: i64) -> Consistency {
    Consistency {
        min_seq: Some(seq),
        wait_ms: Some(10_000),
    }
}

fn embedder() -> Arc<dyn TextEmbedder> {
    static E: std::sync::OnceLock<Arc<inferd_embed::Embedder>> = std::sync::OnceLock::new();
    E.get_or_init(|| {
        Arc::new(inferd_embed::Embedder::load(inferd_testutil::minilm_path()).unwrap())
    })
    .clone()
}

/// The test embedder, counting the texts it embeds.
fn counting(count: &Arc<AtomicUsize>) -> Arc<dyn TextEmbedder> {
    struct Counting(Arc<dyn TextEmbedder>, Arc<AtomicUsize>);
    impl TextEmbedder for Counting {
        fn dims(&self) -> usize {
            self.0.dims()
        }
        fn embed(&self, texts: &[&str]) -> std::result::Result<Vec<Vec<f32>>, String> {
            self.1.fetch_add(texts.len(), Ordering::SeqCst);
            self.0.embed(texts)
        }
    }
    Arc::new(Counting(embedder(), Arc::clone(count)))
}

on_both!(writes_are_numbered_per_namespace_and_every_projection_follows);
async fn writes_are_numbered_per_namespace_and_every_projection_follows(fresh: Fresh) {
    let d = fresh("follow");
    let m = Memory::open(&d.clone(), None).unwrap();
    let a = m
        .write(put("acme/alice", Some("contact"), "prefers email", None))
        .await
        .unwrap();
    let b = m
        .write(put("acme/bob", None, "likes tea", None))
        .await
        .unwrap();
    let c = m
        .write(put("acme/alice", None, "works on billing", None))
        .await
        .unwrap();
    assert_eq!((a.seq, b.seq, c.seq), (1, 1, 2));
    assert!(a.gseq < b.gseq && b.gseq < c.gseq);

    let item = m.item(&ns("acme/alice"), a.id, at(2)).await.unwrap();
    assert_eq!((item.content.as_str(), item.version), ("prefers email", 1));
    // Another namespace cannot read it.
    let e = m.item(&ns("acme/bob"), a.id, at(1)).await.unwrap_err();
    assert!(matches!(e, Error::NotFound(_)), "{e}");

    let up = m
        .write(Write::update(ns("acme/alice"), a.id, "prefers Slack".into(), None, None).unwrap())
        .await
        .unwrap();
    assert_eq!((up.id, up.seq), (a.id, 3));
    let fact = m
        .fact(&ns("acme/alice"), "contact", true, at(3))
        .await
        .unwrap();
    assert_eq!(fact.value, "prefers Slack");
    assert_eq!(
        fact.history
            .iter()
            .map(|h| h.value.clone().unwrap())
            .collect::<Vec<_>>(),
        ["prefers email", "prefers Slack"]
    );
    let item = m.item(&ns("acme/alice"), a.id, at(3)).await.unwrap();
    assert_eq!(
        (item.content.as_str(), item.version, item.seq),
        ("prefers Slack", 2, 3)
    );

    let del = m
        .write(Write::delete(ns("acme/alice"), a.id, None).unwrap())
        .await
        .unwrap();
    assert_eq!(del.seq, 4);
    assert!(matches!(
        m.fact(&ns("acme/alice"), "contact", false, at(4)).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        m.item(&ns("acme/alice"), a.id, at(4)).await,
        Err(Error::NotFound(_))
    ));
    // Deleted is deleted: a second delete or an update names the item as missing.
    for w in [
        Write::delete(ns("acme/alice"), a.id, None).unwrap(),
        Write::update(ns("acme/alice"), a.id, "x".into(), None, None).unwrap(),
        Write::delete(ns("acme/bob"), c.id, None).unwrap(),
    ] {
        let e = m.write(w).await.unwrap_err();
        assert!(matches!(e, Error::NotFound(_)), "{e}");
    }

    let recent = m.recent(&ns("acme/alice"), 10, at(4)).await.unwrap();
    assert_eq!(recent.iter().map(|i| i.id).collect::<Vec<_>>(), [c.id]);
    let audit = m.audit(&ns("acme/alice"), 0, 100, at(4)).await.unwrap();
    assert_eq!(
        audit
            .iter()
            .map(|r| (r.seq, r.op, r.item_id))
            .collect::<Vec<_>>(),
        [
            (1, Op::Put, a.id),
            (2, Op::Put, c.id),
            (3, Op::Update, a.id),
            (4, Op::Delete, a.id)
        ]
    );
    assert_eq!(audit[0].content_sha256.len(), 64);
    let metrics = m.render_metrics();
    assert!(
        metrics.contains("inferd_memory_writes_total{result=\"ok\"} 5"),
        "{metrics}"
    );
    assert!(
        metrics.contains("inferd_memory_writes_total{result=\"error\"} 3"),
        "{metrics}"
    );
    assert!(metrics.contains("inferd_memory_projection_position{projection=\"items\"}"));
    drop(m);
}

on_both!(one_idempotency_key_is_one_write_and_refuses_other_content);
async fn one_idempotency_key_is_one_write_and_refuses_other_content(fresh: Fresh) {
    let d = fresh("idem");
    let m = Memory::open(&d.clone(), None).unwrap();
    let first = m
        .write(put("t/u", None, "hello", Some("req-1")))
        .await
        .unwrap();
    let again = m
        .write(put("t/u", None, "hello", Some("req-1")))
        .await
        .unwrap();
    assert!(!first.duplicate && again.duplicate);
    assert_eq!(
        (first.id, first.seq, first.gseq),
        (again.id, again.seq, again.gseq)
    );
    let e = m
        .write(put("t/u", None, "goodbye", Some("req-1")))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::IdempotencyConflict(_)), "{e}");
    // Keys are per namespace.
    let other = m
        .write(put("t/v", None, "hello", Some("req-1")))
        .await
        .unwrap();
    assert!(!other.duplicate);
    // Concurrent retries of one write: one append.
    let m = Arc::new(m);
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let m = Arc::clone(&m);
            tokio::spawn(async move {
                m.write(put("t/u", None, "same", Some("req-2")))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap().gseq);
    }
    ids.dedup();
    assert_eq!(ids.len(), 1);
    m.item(&ns("t/u"), ids[0], at(2)).await.unwrap();
    assert_eq!(m.audit(&ns("t/u"), 0, 100, at(2)).await.unwrap().len(), 2);
    drop(m);
}

on_both!(concurrent_writers_leave_no_gap_in_any_namespace);
async fn concurrent_writers_leave_no_gap_in_any_namespace(fresh: Fresh) {
    let d = fresh("gapless");
    let m = Arc::new(Memory::open(&d.clone(), None).unwrap());
    let tasks: Vec<_> = (0..64)
        .map(|w| {
            let m = Arc::clone(&m);
            tokio::spawn(async move {
                let mut seqs = Vec::new();
                for i in 0..25 {
                    let n = format!("t/n{}", (w + i) % 4);
                    let a = m
                        .write(put(&n, None, &format!("w{w} i{i}"), None))
                        .await
                        .unwrap();
                    seqs.push((n, a.seq));
                }
                seqs
            })
        })
        .collect();
    let mut by_ns: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
    for t in tasks {
        for (n, s) in t.await.unwrap() {
            by_ns.entry(n).or_default().push(s);
        }
    }
    for (n, mut seqs) in by_ns {
        seqs.sort();
        assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>(), "{n}");
    }
    drop(m);
}

on_both!(a_read_past_the_namespace_head_is_refused_and_a_lagging_one_names_its_lag);
async fn a_read_past_the_namespace_head_is_refused_and_a_lagging_one_names_its_lag(fresh: Fresh) {
    let d = fresh("lag");
    let m = Memory::open(&d.clone(), None).unwrap();
    m.write(put("t", None, "one", None)).await.unwrap();
    match m.recent(&ns("t"), 5, at(7)).await.unwrap_err() {
        Error::NotWritten { min_seq, last, .. } => assert_eq!((min_seq, last), (7, 1)),
        e => panic!("{e}"),
    }
    let e = m
        .recent(
            &ns("t"),
            5,
            Consistency {
                min_seq: Some(0),
                wait_ms: None,
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Invalid {
                field: "min_seq",
                ..
            }
        ),
        "{e}"
    );
    drop(m);

    // An embedder that fails while `broken`: the vectors projection stalls,
    // and a read that needs it says by how much, instead of answering stale.
    struct Flaky(Arc<std::sync::atomic::AtomicBool>);
    impl TextEmbedder for Flaky {
        fn dims(&self) -> usize {
            embedder().dims()
        }
        fn embed(&self, texts: &[&str]) -> std::result::Result<Vec<Vec<f32>>, String> {
            if self.0.load(Ordering::Relaxed) {
                return Err("the embedder is down".into());
            }
            embedder().embed(texts)
        }
    }
    let broken = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let m = Memory::open(&fresh("lag2"), Some(Arc::new(Flaky(Arc::clone(&broken))))).unwrap();
    let a = m
        .write(put("t", None, "stuck behind a broken embedder", None))
        .await
        .unwrap();
    let search = Search {
        namespace: ns("t"),
        query: "broken".into(),
        k: 1,
        kind: None,
        metadata: Map::new(),
    };
    let wait = Consistency {
        min_seq: Some(a.seq),
        wait_ms: Some(200),
    };
    match m.search(search.clone(), wait).await.unwrap_err() {
        Error::Lagging {
            projection,
            lag_items,
            waited_ms,
            ..
        } => {
            assert_eq!((projection, lag_items), ("vectors", 1));
            assert!(waited_ms >= 200);
        }
        e => panic!("{e}"),
    }
    // The other projections are not held up.
    m.item(&ns("t"), a.id, at(a.seq)).await.unwrap();
    broken.store(false, Ordering::Relaxed);
    let hits = m.search(search, at(a.seq)).await.unwrap();
    assert_eq!(hits[0].id, a.id);
    drop(m);
}

/// Appends a row per entry, with no conflict handling: a replayed entry would
/// show as a second row. Panics once, halfway through the batch holding
/// `panic_at`, or fails every batch while `broken` is set.
struct Fragile {
    panic_at: i64,
    panicked: Arc<AtomicUsize>,
    broken: Arc<std::sync::atomic::AtomicBool>,
}

impl Projection for Fragile {
    fn name(&self) -> &'static str {
        "fragile"
    }
    fn create(&self, tx: &mut dyn Tx) -> inferd_memory::Result<()> {
        tx.exec(
            "CREATE TABLE IF NOT EXISTS fragile (gseq INTEGER NOT NULL)",
            &[],
        )?;
        Ok(())
    }
    fn apply(&mut self, tx: &mut dyn Tx, entries: &[Entry]) -> inferd_memory::Result<()> {
        if self.broken.load(Ordering::Relaxed) {
            return Err(Error::Storage("the fragile projection is broken".into()));
        }
        for e in entries {
            tx.exec(
                "INSERT INTO fragile (gseq) VALUES ($1)",
                &[Val::Int(e.gseq)],
            )?;
            if e.gseq == self.panic_at && self.panicked.fetch_add(1, Ordering::Relaxed) == 0 {
                panic!("fragile projection at {}", e.gseq);
            }
        }
        Ok(())
    }
    fn state_queries(&self) -> Vec<&'static str> {
        vec!["SELECT gseq FROM fragile ORDER BY gseq"]
    }
}

on_both!(a_projection_that_panics_mid_batch_resumes_from_its_checkpoint_without_duplicates);
async fn a_projection_that_panics_mid_batch_resumes_from_its_checkpoint_without_duplicates(
    fresh: Fresh,
) {
    let d = fresh("panic");
    let panicked = Arc::new(AtomicUsize::new(0));
    let broken = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let fragile = Fragile {
        panic_at: 150,
        panicked: Arc::clone(&panicked),
        broken: Arc::clone(&broken),
    };
    let config = d.clone();
    let m = Memory::open_with(&config, None, vec![Box::new(fragile)]).unwrap();
    // Many writes at once, so batches hold many entries.
    let m = Arc::new(m);
    let tasks: Vec<_> = (0..300)
        .map(|i| {
            let m = Arc::clone(&m);
            tokio::spawn(async move {
                m.write(put("t", None, &format!("item {i}"), None))
                    .await
                    .unwrap()
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let status = m
        .statuses()
        .iter()
        .find(|s| s.name == "fragile")
        .unwrap()
        .clone();
    tokio::time::timeout(Duration::from_secs(20), status.reached(300))
        .await
        .unwrap();
    assert_eq!(
        panicked.load(Ordering::Relaxed),
        2,
        "panicked once, then passed 150 again"
    );
    assert!(status.failures.load(Ordering::Relaxed) >= 1);
    assert!(status
        .last_error()
        .unwrap()
        .contains("panicked: fragile projection at 150"));

    // Broken for a while: it falls behind visibly, while the log and the other
    // projections go on.
    broken.store(true, Ordering::Relaxed);
    let last = m.write(put("t", None, "after", None)).await.unwrap();
    let item = m.item(&ns("t"), last.id, at(last.seq)).await.unwrap();
    assert_eq!(item.content, "after");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(status.applied() < last.gseq);
    assert!(status.lag_items.load(Ordering::Relaxed) >= 1);
    let report = m.report().await.unwrap();
    let fragile = report["projections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "fragile")
        .unwrap()
        .clone();
    assert!(fragile["lag_items"].as_i64().unwrap() >= 1, "{report}");
    broken.store(false, Ordering::Relaxed);
    tokio::time::timeout(Duration::from_secs(20), status.reached(last.gseq))
        .await
        .unwrap();
    drop(m);

    // Every entry exactly once.
    let counts = query(&d, "SELECT COUNT(*), COUNT(DISTINCT gseq) FROM fragile");
    assert_eq!(counts, [(301, 301)]);
}

on_both!(search_finds_by_meaning_within_one_namespace_and_its_filters);
async fn search_finds_by_meaning_within_one_namespace_and_its_filters(fresh: Fresh) {
    let d = fresh("search");
    let m = Memory::open(&d.clone(), Some(embedder())).unwrap();
    let mut meta = Map::new();
    meta.insert("source".into(), json!("crm"));
    let w = |n: &str, kind: &str, content: &str, meta: Map<String, Value>| {
        Write::put(ns(n), Some(kind.into()), None, content.into(), meta, None).unwrap()
    };
    m.write(w(
        "acme/alice",
        "preference",
        "Alice wants to be contacted by email, never on Slack",
        meta.clone(),
    ))
    .await
    .unwrap();
    m.write(w(
        "acme/alice",
        "episode",
        "Deployed the billing service to production on Tuesday",
        Map::new(),
    ))
    .await
    .unwrap();
    m.write(w(
        "acme/alice",
        "episode",
        "The cat knocked a glass of water off the desk",
        Map::new(),
    ))
    .await
    .unwrap();
    let last = m
        .write(w(
            "acme/bob",
            "preference",
            "Bob wants to be contacted by email",
            Map::new(),
        ))
        .await
        .unwrap();
    let search = |n: &str, q: &str, kind: Option<&str>, meta: Map<String, Value>| Search {
        namespace: ns(n),
        query: q.into(),
        k: 2,
        kind: kind.map(Into::into),
        metadata: meta,
    };
    let _ = m
        .search(search("acme/bob", "x", None, Map::new()), at(last.seq))
        .await
        .unwrap();
    let hits = m
        .search(
            search("acme/alice", "how should I reach her?", None, Map::new()),
            at(3),
        )
        .await
        .unwrap();
    assert_eq!(hits.len(), 2);
    assert!(hits[0].content.contains("email"), "{hits:?}");
    assert!(hits[0].score > hits[1].score);
    let hits = m
        .search(
            search(
                "acme/alice",
                "how should I reach her?",
                Some("episode"),
                Map::new(),
            ),
            at(3),
        )
        .await
        .unwrap();
    assert!(hits.iter().all(|h| h.kind == "episode"));
    let hits = m
        .search(search("acme/alice", "anything", None, meta), at(3))
        .await
        .unwrap();
    assert_eq!(hits.len(), 1);
    // Bob's memory never shows in Alice's namespace.
    let hits = m
        .search(
            search(
                "acme/alice",
                "Bob wants to be contacted by email",
                None,
                Map::new(),
            ),
            at(3),
        )
        .await
        .unwrap();
    assert!(hits.iter().all(|h| !h.content.contains("Bob")));
    let e = Memory::open(&fresh("nosearch"), None)
        .unwrap()
        .search(
            search("acme/alice", "x", None, Map::new()),
            Consistency::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::NoEmbedder), "{e}");
    drop(m);
}

on_both!(a_namespace_past_ann_from_is_searched_through_its_graph);
async fn a_namespace_past_ann_from_is_searched_through_its_graph(fresh: Fresh) {
    // A graph from 60 items: 150 notes (MiniLM), then updates and deletes.
    let config = MemoryConfig {
        ann: AnnConfig {
            from: 60,
            ..AnnConfig::default()
        },
        ..fresh("ann")
    };
    let m = Memory::open(&config, Some(embedder())).unwrap();
    let subjects = ["invoice", "flight", "dentist", "laptop", "garden"];
    let mut last = None;
    for i in 0..150 {
        let text = format!(
            "note {i}: the {} appointment moved to week {}",
            subjects[i % 5],
            i / 5
        );
        last = Some(m.write(put("t/ann", None, &text, None)).await.unwrap());
    }
    let cat = m
        .write(put("t/ann", None, "the cat sat on the warm laptop", None))
        .await
        .unwrap();
    let wait = Consistency {
        min_seq: Some(cat.seq),
        wait_ms: Some(30_000),
    };
    let search = |q: &str, k: usize| Search {
        namespace: ns("t/ann"),
        query: q.into(),
        k,
        kind: None,
        metadata: Map::new(),
    };
    let hits = m
        .search(search("a cat on a laptop", 1), wait)
        .await
        .unwrap();
    assert_eq!(hits[0].id, cat.id, "found at once: scanned until indexed");
    let started = std::time::Instant::now();
    while m.vector_counts().1 < 151 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "indexed: {:?}",
            m.vector_counts()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(m.report().await.unwrap()["vectors_in_graphs"], 151);
    let q = embedder()
        .embed(&["a cat on a laptop"])
        .unwrap()
        .pop()
        .unwrap();
    let through_graph = m.nearest(&q, &search("", 10));
    let scanned = m.scan(&q, &search("", 10));
    assert_eq!(through_graph[0].id, cat.id);
    let same = through_graph
        .iter()
        .filter(|h| scanned.iter().any(|s| s.id == h.id))
        .count();
    assert!(
        same >= 9,
        "recall@10 {same}/10: {through_graph:?} {scanned:?}"
    );
    // Updated and deleted items are answered as they are now.
    let moved = m
        .write(
            Write::update(
                ns("t/ann"),
                cat.id,
                "a dog sleeps by the fireplace".into(),
                None,
                None,
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let wait = Consistency {
        min_seq: Some(moved.seq),
        wait_ms: Some(30_000),
    };
    let hits = m
        .search(search("a cat on a laptop", 3), wait)
        .await
        .unwrap();
    assert!(hits.iter().all(|h| h.id != cat.id), "{hits:?}");
    let hits = m
        .search(search("a dog by the fire", 1), wait)
        .await
        .unwrap();
    assert_eq!(
        (hits[0].id, hits[0].content.as_str()),
        (cat.id, "a dog sleeps by the fireplace")
    );
    let last = last.unwrap();
    let gone = m
        .write(Write::delete(ns("t/ann"), last.id, None).unwrap())
        .await
        .unwrap();
    let text = "note 149: the garden appointment moved to week 29";
    let wait = Consistency {
        min_seq: Some(gone.seq),
        wait_ms: Some(30_000),
    };
    let hits = m.search(search(text, 5), wait).await.unwrap();
    assert!(hits.iter().all(|h| h.id != last.id), "{hits:?}");
    drop(m);
}

on_both!(a_rebuild_from_zero_reaches_the_live_state_of_every_projection);
async fn a_rebuild_from_zero_reaches_the_live_state_of_every_projection(fresh: Fresh) {
    let d = fresh("rebuild");
    let config = MemoryConfig {
        recent_per_namespace: 4,
        ..d.clone()
    };
    let m = Memory::open(&config, Some(embedder())).unwrap();
    let mut ids = Vec::new();
    let mut last = 0;
    for i in 0..40 {
        let n = format!("t/u{}", i % 3);
        let key = (i % 5 == 0).then(|| format!("k{}", i % 2));
        let a = m
            .write(put(&n, key.as_deref(), &format!("memory number {i}"), None))
            .await
            .unwrap();
        ids.push((n.clone(), a.id));
        if i % 7 == 3 {
            let (n, id) = ids[i / 2].clone();
            let _ = m
                .write(Write::update(ns(&n), id, format!("changed {i}"), None, None).unwrap())
                .await;
        }
        if i % 11 == 5 {
            let (n, id) = ids[i / 3].clone();
            let _ = m.write(Write::delete(ns(&n), id, None).unwrap()).await;
        }
        last = last.max(a.gseq);
    }
    for s in m.statuses() {
        tokio::time::timeout(Duration::from_secs(30), s.reached(last))
            .await
            .unwrap();
    }
    drop(m);
    let comparisons = check(&config, Some(embedder())).unwrap();
    assert_eq!(comparisons.len(), 6);
    for c in &comparisons {
        assert!(c.same(), "{} differs after a rebuild", c.projection);
    }
    // A rebuild replaces the file; the store opens on it and reads the same.
    rebuild(&config, Some(embedder())).unwrap();
    let m = Memory::open(&config, Some(embedder())).unwrap();
    let facts = m
        .fact(&ns("t/u0"), "k0", true, Consistency::default())
        .await
        .unwrap();
    assert!(!facts.history.is_empty());
    drop(m);
}

on_both!(two_stores_on_one_log_number_together_and_read_each_others_writes);
async fn two_stores_on_one_log_number_together_and_read_each_others_writes(fresh: Fresh) {
    // Two gateway processes sharing one state: one leads each projection and
    // applies it, the other follows (its vector index too), so an entry is
    // applied once and embedded once.
    let d = fresh("shared");
    let (count_a, count_b) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let a = Arc::new(Memory::open(&d, Some(counting(&count_a))).unwrap());
    let b = Arc::new(Memory::open(&d, Some(counting(&count_b))).unwrap());
    let mut tasks = Vec::new();
    for i in 0..40 {
        let m = Arc::clone(if i % 2 == 0 { &a } else { &b });
        tasks.push(tokio::spawn(async move {
            m.write(put(
                "t/shared",
                None,
                &format!("note {i} about the quarterly budget"),
                Some(&format!("k{i}")),
            ))
            .await
            .unwrap()
        }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap().seq);
    }
    seqs.sort();
    assert_eq!(seqs, (1..=40).collect::<Vec<_>>());
    // A write through one is a duplicate through the other.
    let again = b
        .write(put(
            "t/shared",
            None,
            "note 0 about the quarterly budget",
            Some("k0"),
        ))
        .await
        .unwrap();
    assert!(again.duplicate);
    let only_a = a
        .write(put(
            "t/shared",
            None,
            "the cat sat on the warm laptop",
            None,
        ))
        .await
        .unwrap();
    let hits = b
        .search(
            Search {
                namespace: ns("t/shared"),
                query: "a cat on a laptop".into(),
                k: 1,
                kind: None,
                metadata: Map::new(),
            },
            // Generous: every case of this file may be embedding at once.
            Consistency {
                min_seq: Some(only_a.seq),
                wait_ms: Some(30_000),
            },
        )
        .await;
    let hits = match hits {
        Ok(h) => h,
        Err(e) => panic!(
            "{e}: a {} b {}",
            a.report().await.unwrap(),
            b.report().await.unwrap()
        ),
    };
    assert_eq!(
        hits[0].id, only_a.id,
        "the other store's index follows what it did not apply"
    );
    for m in [&a, &b] {
        let item = m
            .item(&ns("t/shared"), only_a.id, at(only_a.seq))
            .await
            .unwrap();
        assert_eq!(item.content, "the cat sat on the warm laptop");
    }
    // 41 entries and the one query b embedded for its search.
    let (by_a, by_b) = (
        count_a.load(Ordering::SeqCst),
        count_b.load(Ordering::SeqCst),
    );
    assert_eq!(
        by_a + by_b,
        42,
        "each entry embedded once between the two (a {by_a}, b {by_b})"
    );
    assert!(
        by_a == 41 || by_b == 42,
        "one store embeds: a {by_a}, b {by_b}"
    );
    drop((a, b));
    let audit = query(
        &d,
        "SELECT COUNT(*), COUNT(DISTINCT gseq) FROM memory_audit",
    );
    assert_eq!(audit, [(41, 41)], "each entry applied once between the two");
    for c in check(&d, Some(embedder())).unwrap() {
        assert!(c.same(), "{} differs from a rebuild", c.projection);
    }
}

on_both!(servers_starting_together_on_a_fresh_state_all_start);
async fn servers_starting_together_on_a_fresh_state_all_start(fresh: Fresh) {
    // Each makes the tables if they are not there; at once, none may fail.
    let d = fresh("together");
    let stores: Vec<Memory> = std::thread::scope(|s| {
        let opening: Vec<_> = (0..4).map(|_| s.spawn(|| Memory::open(&d, None))).collect();
        opening
            .into_iter()
            .map(|t| t.join().unwrap().unwrap())
            .collect()
    });
    let a = stores[0].write(put("t", None, "one", None)).await.unwrap();
    let b = stores[3].write(put("t", None, "two", None)).await.unwrap();
    assert_eq!((a.seq, b.seq), (1, 2));
}

/// Waits until the store's settler has settled `n` requests in all.
async fn settled(keys: &Keys, n: u64) {
    let t0 = std::time::Instant::now();
    while keys.settled() < n {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "settling stalled at {}",
            keys.settled()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Spend grouped by `by`, once the ledger holds `requests` requests in all.
async fn spend_when(m: &Memory, by: &str, requests: i64) -> Vec<keys::SpendRow> {
    let t0 = std::time::Instant::now();
    loop {
        let q = SpendQuery {
            group_by: vec![by.into()],
            ..SpendQuery::default()
        };
        let rows = m.keys().spend(q, m.reads()).await.unwrap();
        if rows.iter().map(|r| r.requests).sum::<i64>() >= requests {
            return rows;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the ledger stalled: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn used(prompt: i64, completion: i64, cost_nanos: i64) -> keys::Usage {
    keys::Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        cost_nanos,
        tier: None,
        status: 200,
    }
}

on_both!(limits_refuse_once_what_was_used_reaches_them);
async fn limits_refuse_once_what_was_used_reaches_them(fresh: Fresh) {
    let d = fresh("limits");
    let m = Memory::open(&d, None).unwrap();
    let k = m.keys();
    // Three requests a minute: the third is admitted, the fourth is not.
    let rated = k
        .create_key(
            "rated".into(),
            None,
            Limits {
                rpm: Some(3),
                ..Limits::default()
            },
        )
        .await
        .unwrap()
        .record;
    let mut held = Vec::new();
    for i in 0..3 {
        let t = k.admit(&rated, "m", 1, 0).await.unwrap();
        held.push(t.unwrap_or_else(|r| panic!("request {} refused: {r}", i + 1)));
    }
    let r = k
        .admit(&rated, "m", 1, 0)
        .await
        .unwrap()
        .err()
        .expect("the 4th is refused");
    assert_eq!(
        (r.scope, r.limit, r.used, r.value),
        ("key", "rpm", 3.0, 3.0)
    );
    assert!(
        r.is_rate() && r.retry_after_secs().is_some_and(|s| s <= 60),
        "{r:?}"
    );
    drop(held);

    // A token budget: 99 of 100 used still admits; exactly 100 refuses.
    let budget = k
        .create_key(
            "budget".into(),
            None,
            Limits {
                budget_tokens: Some(100),
                period: Period::Day,
                ..Limits::default()
            },
        )
        .await
        .unwrap()
        .record;
    for (reserve, (p, c)) in [(60, (50, 9)), (41, (30, 10)), (1, (1, 0))] {
        let mut t = k
            .admit(&budget, "m", reserve, 0)
            .await
            .unwrap()
            .unwrap_or_else(|r| panic!("refused below the budget: {r}"));
        t.record(used(p, c, 0));
        drop(t);
        settled(k, k.settled() + 1).await;
    }
    let r = k
        .admit(&budget, "m", 1, 0)
        .await
        .unwrap()
        .err()
        .expect("refused at 100 of 100");
    assert_eq!(
        (r.limit, r.used, r.value, r.span),
        ("budget_tokens", 100.0, 100.0, "day")
    );
    assert!(!r.is_rate() && r.resets_at.is_some());
    assert!(
        r.to_string()
            .contains("key `budget` has reached its limit `budget_tokens`"),
        "{r}"
    );

    // A team's cost budget binds every key of the team.
    k.set_team(
        "research".into(),
        Limits {
            budget_usd: Some(0.001),
            period: Period::Total,
            ..Limits::default()
        },
    )
    .await
    .unwrap();
    let member = k
        .create_key("member".into(), Some("research".into()), Limits::default())
        .await
        .unwrap()
        .record;
    let mut t = k.admit(&member, "m", 10, 2_000_000).await.unwrap().unwrap();
    t.record(used(5, 5, 1_000_000));
    drop(t);
    settled(k, 7).await;
    let r = k
        .admit(&member, "m", 1, 1)
        .await
        .unwrap()
        .err()
        .expect("the team's budget is spent");
    assert_eq!(
        (r.scope, r.name.as_str(), r.limit),
        ("team", "research", "budget_usd")
    );
    assert_eq!(r.resets_at, None);

    // Every admitted request is in the ledger, the refused ones are not.
    let by_key = spend_when(&m, "key", 7).await;
    let row = |name: &str| {
        by_key
            .iter()
            .find(|r| r.group["key"].as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no spend row for {name}: {by_key:?}"))
            .clone()
    };
    assert_eq!(row("rated").requests, 3);
    let b = row("budget");
    assert_eq!(
        (b.requests, b.prompt_tokens, b.completion_tokens),
        (3, 81, 19)
    );
    assert!((row("member").cost_usd - 0.001).abs() < 1e-12);
    let by_team = spend_when(&m, "team", 7).await;
    assert!(by_team
        .iter()
        .any(|r| r.group["team"].as_deref() == Some("research") && r.requests == 1));
    // Usage entries are the ledger's alone: no memory projection holds them.
    drop(m);
    assert_eq!(
        query(&d, "SELECT COUNT(*), COUNT(*) FROM memory_items"),
        [(0, 0)]
    );
    assert_eq!(
        query(&d, "SELECT COUNT(*), COUNT(*) FROM memory_audit"),
        [(0, 0)]
    );
    for c in check(&d, None).unwrap() {
        assert!(c.same(), "{} differs from a rebuild", c.projection);
    }
}

on_both!(two_stores_admitting_against_one_budget_pass_it_by_at_most_one_request);
async fn two_stores_admitting_against_one_budget_pass_it_by_at_most_one_request(fresh: Fresh) {
    let d = fresh("sharedbudget");
    let a = Arc::new(Memory::open(&d, None).unwrap());
    let b = Arc::new(Memory::open(&d, None).unwrap());
    let key = a
        .keys()
        .create_key(
            "shared".into(),
            None,
            Limits {
                budget_tokens: Some(1000),
                ..Limits::default()
            },
        )
        .await
        .unwrap();
    // The other store knows the key by its secret.
    let seen = b
        .keys()
        .lookup(&key.key)
        .await
        .unwrap()
        .expect("b finds a's key");
    const RESERVE: i64 = 70;
    let admitted = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..16 {
        let (m, k, admitted) = (
            Arc::clone(if i % 2 == 0 { &a } else { &b }),
            seen.clone(),
            Arc::clone(&admitted),
        );
        tasks.push(tokio::spawn(async move {
            let mut spent = 0;
            loop {
                match m.keys().admit(&k, "m", RESERVE, 0).await.unwrap() {
                    Err(r) if r.is_held() => {
                        // Running requests hold the rest: once they end, retry.
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err(r) => {
                        assert_eq!(r.limit, "budget_tokens");
                        assert!(r.used >= r.value, "{r}");
                        return spent;
                    }
                    Ok(mut t) => {
                        admitted.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        let n = 40 + (i as i64 * 7) % 31;
                        t.record(used(n / 2, n - n / 2, 0));
                        spent += n;
                    }
                }
            }
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    let n = admitted.load(Ordering::Relaxed) as i64;
    assert!(
        total <= 1000 + RESERVE,
        "admitted usage {total} passed the budget of 1000 by more than one request ({n} requests)"
    );
    assert!(
        total >= 1000 - 16 * RESERVE,
        "{total} is far below the budget"
    );
    // The ledger and the counter agree with what the requests used.
    let rows = spend_when(&a, "key", n).await;
    assert_eq!(
        rows[0].prompt_tokens + rows[0].completion_tokens,
        total,
        "{rows:?}"
    );
    let counters = a
        .keys()
        .counters(format!("key:{}", key.record.id))
        .await
        .unwrap();
    assert_eq!(counters[0]["tokens"], json!(total), "{counters:?}");
    assert_eq!(counters[0]["reserved_tokens"], json!(0));
    drop((a, b));
}

on_both!(keys_are_stored_hashed_and_a_revoked_key_is_refused);
async fn keys_are_stored_hashed_and_a_revoked_key_is_refused(fresh: Fresh) {
    let d = fresh("hashed");
    let m = Memory::open(&d, None).unwrap();
    let k = m.keys();
    let made = k
        .create_key("alice".into(), Some("ops".into()), Limits::default())
        .await
        .unwrap();
    assert!(made.key.starts_with("sk-inferd-"));
    assert_eq!(
        k.lookup(&made.key).await.unwrap().unwrap().id,
        made.record.id
    );
    assert!(k
        .lookup("sk-inferd-00000000000000000000000000000000")
        .await
        .unwrap()
        .is_none());
    // A second live key cannot take the name.
    let e = k
        .create_key("alice".into(), None, Limits::default())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("already named `alice`"), "{e}");
    let listed = serde_json::to_string(&k.keys().await.unwrap()).unwrap();
    assert!(!listed.contains(&made.key), "a listing shows no secret");
    if let StateStore::Sqlite(dir) = &d.state {
        for f in ["keys.db", "keys.db-wal"] {
            let bytes = std::fs::read(dir.join(f)).unwrap_or_default();
            let secret = made.key.as_bytes();
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret),
                "{f} holds the secret"
            );
        }
    }
    let revoked = k.revoke(&made.record.id).await.unwrap();
    assert!(revoked.revoked_ms.is_some());
    assert!(k.lookup(&made.key).await.unwrap().is_none());
    // Its name is free again.
    k.create_key("alice".into(), None, Limits::default())
        .await
        .unwrap();
    drop(m);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rates_in_redis_are_given_back_when_a_budget_refuses() {
    const TEST: &str = "rates_in_redis_are_given_back_when_a_budget_refuses";
    let url =
        std::env::var("INFERD_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    if std::net::TcpStream::connect_timeout(
        &"127.0.0.1:6379".parse().unwrap(),
        Duration::from_secs(3),
    )
    .is_err()
        && std::env::var("INFERD_TEST_REDIS").is_err()
    {
        inferd_testutil::report(&format!("skipped: {TEST}: no Redis reachable at {url}"));
        return;
    }
    let d = MemoryConfig {
        limits: Some(url),
        ..sqlite_store(TEST)("rates")
    };
    let m = Memory::open(&d, None).unwrap();
    let k = m.keys();
    assert_eq!(k.rates_in(), "redis");
    let key = k
        .create_key(
            "capped".into(),
            None,
            Limits {
                rpm: Some(5),
                budget_tokens: Some(10),
                ..Limits::default()
            },
        )
        .await
        .unwrap()
        .record;
    let mut t = k.admit(&key, "m", 5, 0).await.unwrap().unwrap();
    t.record(used(6, 4, 0));
    drop(t);
    settled(k, 1).await;
    // The minute's count in Redis passes, the budget refuses, and the count
    // is given back: six refusals later it is still the budget that refuses.
    for i in 0..6 {
        let r = k
            .admit(&key, "m", 1, 0)
            .await
            .unwrap()
            .err()
            .expect("over budget");
        assert_eq!(r.limit, "budget_tokens", "attempt {i}: {r}");
    }
    drop(m);
    clean_up(TEST, false);
}
