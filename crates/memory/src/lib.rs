//! Agent memory that stays consistent: one durable log, and everything else a
//! projection of it.
//!
//! A write — put, update or delete — is one append to the log (`log.db`, SQLite
//! in WAL mode), acknowledged once durable, numbered per namespace without gaps;
//! the same idempotency key twice is one write. The views agents read are
//! projections (`projections.db`): items, facts with history, vectors for
//! semantic search, recent items and an audit trail. Each is a consumer of the
//! log on its own thread whose checkpoint moves in the same transaction as its
//! effects, so replay is idempotent, a failing projection falls behind visibly
//! without holding up the log or the others, and `rebuild` from zero reaches
//! the same state (the database-internals design: the log is the truth, the
//! rest is derived — not one write fanned out to several stores that can each
//! fail alone). Reads may ask for read-your-writes (`min_seq`): they wait,
//! bounded, for the projection to reach that write, or fail naming the lag.

mod log;
mod metrics;
pub mod projection;
mod projections;
pub mod sql;
mod types;
mod vectors;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use r2d2_sqlite::SqliteConnectionManager;

pub use metrics::MemoryMetrics;
pub use projection::{Projection, Status};
pub use projections::{Audit, Facts, Items, Recent};
pub use sql::{Tx, Val};
pub use types::*;
pub use vectors::{TextEmbedder, VectorIndex, Vectors};

use crate::log::{LogWriter, Signal};
use crate::projection::Files;
use crate::sql::Sqlite;

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("{message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("`idempotency_key` {0:?} was used before for a different write")]
    IdempotencyConflict(String),
    #[error("namespace `{namespace}` has {last} writes; `min_seq` {min_seq} was never written")]
    NotWritten {
        namespace: String,
        min_seq: i64,
        last: i64,
    },
    #[error("the `{projection}` projection has not reached write {min_seq} of `{namespace}` after {waited_ms} ms: it is {lag_items} log entries ({lag_ms} ms) behind")]
    Lagging {
        projection: &'static str,
        namespace: String,
        min_seq: i64,
        waited_ms: u64,
        lag_items: i64,
        lag_ms: i64,
    },
    #[error("{0} memory writes are already waiting for the log; retry shortly")]
    Overloaded(usize),
    #[error("semantic search needs an embedding model: serve one (a MiniLM `[[models]]` entry) and name it in `memory.model`")]
    NoEmbedder,
    #[error("embedding failed: {0}")]
    Embedding(String),
    #[error("no memory store connection within {0} ms")]
    PoolTimeout(u64),
    #[error("memory storage: {0}")]
    Storage(String),
    #[error("the memory store is closed")]
    Closed,
}

impl Error {
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Error {
        Error::Invalid {
            field,
            message: message.into(),
        }
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Error {
        Error::Storage(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// When a commit returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// After the WAL is fsynced (`synchronous=FULL`): survives power loss.
    #[default]
    Fsync,
    /// After the OS has the write (`synchronous=NORMAL`): survives the process
    /// being killed, not the machine losing power.
    Os,
}

/// Where and how the store keeps its files.
#[derive(Debug, Clone)]
pub struct MemoryConfig {
    /// Holds `log.db` and `projections.db`.
    pub dir: PathBuf,
    /// The log's; projections always use `Os`, since a lost projection commit
    /// is replayed from the log.
    pub durability: Durability,
    /// Items the `recent` projection keeps per namespace (default 32).
    pub recent_per_namespace: usize,
    /// Writes that may wait for the log writer before new ones get 503
    /// (default 8192).
    pub write_queue: usize,
    /// Pooled read connections (default 4).
    pub read_connections: u32,
    /// Longest wait for a read connection, in ms (default 5000).
    pub read_timeout_ms: u64,
}

impl MemoryConfig {
    pub fn new(dir: impl Into<PathBuf>) -> MemoryConfig {
        MemoryConfig {
            dir: dir.into(),
            durability: Durability::Fsync,
            recent_per_namespace: 32,
            write_queue: 8192,
            read_connections: 4,
            read_timeout_ms: 5000,
        }
    }

    fn files(&self) -> Files {
        Files {
            log: self.dir.join("log.db"),
            projections: self.dir.join("projections.db"),
            durability: Durability::Os,
        }
    }
}

/// The built-in projections, in the order they are reported.
fn builtin(
    config: &MemoryConfig,
    embedder: Option<Arc<dyn TextEmbedder>>,
    index: Arc<VectorIndex>,
) -> Vec<Box<dyn Projection>> {
    let mut out: Vec<Box<dyn Projection>> = vec![
        Box::new(Items),
        Box::new(Facts),
        Box::new(Recent {
            per_namespace: config.recent_per_namespace,
        }),
        Box::new(Audit),
    ];
    if let Some(e) = embedder {
        out.push(Box::new(Vectors::new(e, index)));
    }
    out
}

/// A running store: the log writer, one thread per projection, a read pool.
pub struct Memory {
    writer: LogWriter,
    pool: r2d2::Pool<SqliteConnectionManager>,
    read_timeout_ms: u64,
    statuses: Vec<Arc<Status>>,
    embedder: Option<Arc<dyn TextEmbedder>>,
    index: Arc<VectorIndex>,
    stop: Arc<AtomicBool>,
    runners: Vec<JoinHandle<()>>,
    pub metrics: Arc<MemoryMetrics>,
}

impl Memory {
    /// Opens (creating) the store in `config.dir` and starts its projections;
    /// with no embedder there is no `vectors` projection and search is refused.
    pub fn open(config: &MemoryConfig, embedder: Option<Arc<dyn TextEmbedder>>) -> Result<Memory> {
        Memory::open_with(config, embedder, Vec::new())
    }

    /// [`Memory::open`] with more projections beside the built-in ones.
    pub fn open_with(
        config: &MemoryConfig,
        embedder: Option<Arc<dyn TextEmbedder>>,
        extra: Vec<Box<dyn Projection>>,
    ) -> Result<Memory> {
        std::fs::create_dir_all(&config.dir)
            .map_err(|e| Error::Storage(format!("cannot create {}: {e}", config.dir.display())))?;
        let files = config.files();
        let log_conn = log::open_sqlite(&files.log, config.durability)?;
        log::create(&log_conn)?;
        let conn = files.connect()?;
        let index = Arc::new(match embedder {
            Some(_) => VectorIndex::load(&mut Sqlite(&conn))?,
            None => VectorIndex::default(),
        });
        projection::create_checkpoints(&mut Sqlite(&conn))?;
        let mut all = builtin(config, embedder.clone(), Arc::clone(&index));
        all.extend(extra);
        let signal = Arc::new(Signal::default());
        let stop = Arc::new(AtomicBool::new(false));
        let metrics = Arc::new(MemoryMetrics::new());
        let mut statuses = Vec::new();
        let mut runners = Vec::new();
        for p in all {
            let mut tx = Sqlite(&conn);
            p.create(&mut tx)?;
            let status = Arc::new(Status::new(
                p.name(),
                projection::checkpoint(&mut tx, p.name())?,
            ));
            statuses.push(Arc::clone(&status));
            let (files, signal, stop) = (files.clone(), Arc::clone(&signal), Arc::clone(&stop));
            runners.push(
                std::thread::Builder::new()
                    .name(format!("memory-{}", p.name()))
                    .spawn(move || projection::run(p, files, status, signal, stop))
                    .map_err(|e| Error::Storage(format!("cannot start a projection: {e}")))?,
            );
        }
        drop(conn);
        let writer = LogWriter::start(log_conn, config.write_queue, signal, Arc::clone(&metrics))?;
        let manager = {
            let log_path = files.log.clone();
            SqliteConnectionManager::file(&files.projections).with_init(move |c| {
                c.busy_timeout(Duration::from_secs(10))?;
                c.execute(
                    "ATTACH DATABASE ?1 AS src",
                    [log_path.to_string_lossy().as_ref()],
                )?;
                Ok(())
            })
        };
        let pool = r2d2::Pool::builder()
            .max_size(config.read_connections.max(1))
            .min_idle(Some(1))
            .connection_timeout(Duration::from_millis(config.read_timeout_ms))
            .build(manager)
            .map_err(|e| Error::Storage(format!("cannot open the read pool: {e}")))?;
        Ok(Memory {
            writer,
            pool,
            read_timeout_ms: config.read_timeout_ms,
            statuses,
            embedder,
            index,
            stop,
            runners,
            metrics,
        })
    }

    /// Appends one write; resolves once it is durable.
    pub async fn write(&self, w: Write) -> Result<Appended> {
        self.writer.append(w).await
    }

    /// The projections' statuses, in report order.
    pub fn statuses(&self) -> &[Arc<Status>] {
        &self.statuses
    }

    fn status(&self, name: &str) -> &Arc<Status> {
        self.statuses
            .iter()
            .find(|s| s.name == name)
            .expect("a built-in projection: this is a bug")
    }

    /// Runs `f` on a pooled connection, off the async threads.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn Tx) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let pool = self.pool.clone();
        let metrics = Arc::clone(&self.metrics);
        let timeout_ms = self.read_timeout_ms;
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            metrics.pool_pending.inc();
            let conn = pool.get();
            metrics.pool_pending.dec();
            metrics
                .pool_wait_seconds
                .observe(started.elapsed().as_secs_f64());
            let conn = conn.map_err(|_| {
                metrics.pool_timeouts.inc();
                Error::PoolTimeout(timeout_ms)
            })?;
            f(&mut Sqlite(&conn))
        })
        .await
        .map_err(|e| Error::Storage(format!("a read task failed: {e}")))?
    }

    /// Read-your-writes: waits until `projection` has applied write `min_seq`
    /// of `namespace`, at most the asked (bounded) time.
    async fn settle(&self, projection: &str, namespace: &Namespace, c: Consistency) -> Result<()> {
        let Some(min_seq) = c.min_seq else {
            return Ok(());
        };
        if min_seq < 1 {
            return Err(Error::invalid(
                "min_seq",
                format!("`min_seq` must be at least 1, got {min_seq}"),
            ));
        }
        let wait_ms = c.wait_ms.unwrap_or(DEFAULT_WAIT_MS).min(MAX_WAIT_MS);
        let ns = namespace.as_str().to_owned();
        let (at, last) = {
            let ns = ns.clone();
            self.read(move |tx| log::position_of(tx, &ns, min_seq))
                .await?
        };
        let Some(gseq) = at else {
            return Err(Error::NotWritten {
                namespace: ns,
                min_seq,
                last,
            });
        };
        let status = self.status(projection);
        let started = Instant::now();
        if tokio::time::timeout(Duration::from_millis(wait_ms), status.reached(gseq))
            .await
            .is_err()
        {
            return Err(Error::Lagging {
                projection: status.name,
                namespace: ns,
                min_seq,
                waited_ms: started.elapsed().as_millis() as u64,
                lag_items: (log_head(self).await.unwrap_or(gseq) - status.applied()).max(1),
                lag_ms: status.lag_ms.load(Ordering::Relaxed),
            });
        }
        Ok(())
    }

    async fn timed<T>(
        &self,
        read: &str,
        f: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let started = Instant::now();
        let r = f.await;
        self.metrics
            .read_seconds
            .with_label_values(&[read])
            .observe(started.elapsed().as_secs_f64());
        let result = if r.is_ok() { "ok" } else { "error" };
        self.metrics.reads.with_label_values(&[read, result]).inc();
        r
    }

    /// The live item `id` of `namespace`.
    pub async fn item(&self, namespace: &Namespace, id: i64, c: Consistency) -> Result<Item> {
        self.timed("item", async {
            self.settle("items", namespace, c).await?;
            let ns = namespace.as_str().to_owned();
            self.read(move |tx| {
                let rows = tx.rows(
                    "SELECT id, namespace, kind, key, content, metadata, seq, version, created_ms, updated_ms \
                     FROM items WHERE id = $1 AND namespace = $2",
                    &[Val::Int(id), ns.as_str().into()],
                )?;
                rows.first()
                    .map(|r| item_of(r))
                    .ok_or_else(|| Error::NotFound(format!("memory {id} does not exist in namespace `{ns}`")))
            })
            .await
        })
        .await
    }

    /// The current value of `key`, with its changes oldest first when asked.
    pub async fn fact(
        &self,
        namespace: &Namespace,
        key: &str,
        history: bool,
        c: Consistency,
    ) -> Result<Fact> {
        self.timed("fact", async {
            self.settle("facts", namespace, c).await?;
            let (ns, key) = (namespace.as_str().to_owned(), key.to_owned());
            self.read(move |tx| {
                let params = [ns.as_str().into(), key.as_str().into()];
                let row = tx
                    .rows(
                        "SELECT value, item_id, seq, updated_ms FROM facts WHERE namespace = $1 AND key = $2",
                        &params,
                    )?
                    .into_iter()
                    .next()
                    .ok_or_else(|| Error::NotFound(format!("no fact `{key}` in namespace `{ns}`")))?;
                let history = if history {
                    tx.rows(
                        "SELECT seq, op, value, item_id, at_ms FROM fact_history \
                         WHERE namespace = $1 AND key = $2 ORDER BY seq",
                        &params,
                    )?
                    .iter()
                    .map(|r| FactChange {
                        seq: r[0].int().unwrap_or_default(),
                        op: r[1].text().and_then(Op::parse).unwrap_or(Op::Put),
                        value: r[2].text().map(str::to_owned),
                        item_id: r[3].int().unwrap_or_default(),
                        at_ms: r[4].int().unwrap_or_default(),
                    })
                    .collect()
                } else {
                    Vec::new()
                };
                Ok(Fact {
                    value: row[0].text().unwrap_or_default().to_owned(),
                    item_id: row[1].int().unwrap_or_default(),
                    seq: row[2].int().unwrap_or_default(),
                    updated_ms: row[3].int().unwrap_or_default(),
                    namespace: ns,
                    key,
                    history,
                })
            })
            .await
        })
        .await
    }

    /// Semantic search in one namespace.
    pub async fn search(&self, search: Search, c: Consistency) -> Result<Vec<Hit>> {
        self.timed("search", async {
            let embedder = self.embedder.clone().ok_or(Error::NoEmbedder)?;
            if search.k == 0 || search.k > 100 {
                return Err(Error::invalid(
                    "k",
                    format!("`k` must be in 1..=100, got {}", search.k),
                ));
            }
            if search.query.trim().is_empty() {
                return Err(Error::invalid("q", "`q` must be a non-blank query"));
            }
            self.settle("vectors", &search.namespace, c).await?;
            let index = Arc::clone(&self.index);
            tokio::task::spawn_blocking(move || {
                let q = embedder
                    .embed(&[search.query.as_str()])
                    .map_err(Error::Embedding)?
                    .pop()
                    .ok_or_else(|| Error::Embedding("no vector for the query".into()))?;
                Ok(index.nearest(&q, &search))
            })
            .await
            .map_err(|e| Error::Storage(format!("a search task failed: {e}")))?
        })
        .await
    }

    /// The index alone: the items nearest a unit vector the caller embedded
    /// (`search.query` is not used), as the `vectors` projection holds them now.
    pub fn nearest(&self, query: &[f32], search: &Search) -> Vec<Hit> {
        self.index.nearest(query, search)
    }

    /// The newest live items of `namespace`, newest first (at most the
    /// projection's per-namespace bound).
    pub async fn recent(
        &self,
        namespace: &Namespace,
        limit: usize,
        c: Consistency,
    ) -> Result<Vec<Item>> {
        self.timed("recent", async {
            self.settle("recent", namespace, c).await?;
            let ns = namespace.as_str().to_owned();
            self.read(move |tx| {
                Ok(tx
                    .rows(
                        "SELECT r.id, r.namespace, r.kind, r.key, r.content, COALESCE(i.metadata, '{}'), r.seq, \
                         COALESCE(i.version, 1), COALESCE(i.created_ms, r.at_ms), r.at_ms \
                         FROM recent r LEFT JOIN items i ON i.id = r.id \
                         WHERE r.namespace = $1 ORDER BY r.seq DESC LIMIT $2",
                        &[ns.as_str().into(), Val::Int(limit as i64)],
                    )?
                    .iter()
                    .map(|r| item_of(r))
                    .collect())
            })
            .await
        })
        .await
    }

    /// Audit records of `namespace` after its write `after_seq`, oldest first.
    pub async fn audit(
        &self,
        namespace: &Namespace,
        after_seq: i64,
        limit: usize,
        c: Consistency,
    ) -> Result<Vec<AuditRecord>> {
        self.timed("audit", async {
            self.settle("audit", namespace, c).await?;
            let ns = namespace.as_str().to_owned();
            self.read(move |tx| {
                Ok(tx
                    .rows(
                        "SELECT gseq, namespace, seq, op, item_id, kind, key, idempotency_key, content_sha256, at_ms \
                         FROM audit WHERE namespace = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                        &[ns.as_str().into(), Val::Int(after_seq), Val::Int(limit as i64)],
                    )?
                    .iter()
                    .map(|r| AuditRecord {
                        gseq: r[0].int().unwrap_or_default(),
                        namespace: r[1].text().unwrap_or_default().to_owned(),
                        seq: r[2].int().unwrap_or_default(),
                        op: r[3].text().and_then(Op::parse).unwrap_or(Op::Put),
                        item_id: r[4].int().unwrap_or_default(),
                        kind: r[5].text().unwrap_or_default().to_owned(),
                        key: r[6].text().map(str::to_owned),
                        idempotency_key: r[7].text().map(str::to_owned),
                        content_sha256: r[8].text().unwrap_or_default().to_owned(),
                        at_ms: r[9].int().unwrap_or_default(),
                    })
                    .collect())
            })
            .await
        })
        .await
    }

    /// Every projection's position and lag, and the log head.
    pub async fn report(&self) -> Result<serde_json::Value> {
        let head = log_head(self).await?;
        let projections: Vec<serde_json::Value> = self
            .statuses
            .iter()
            .map(|s| {
                serde_json::json!({
                    "name": s.name,
                    "position": s.applied(),
                    "lag_items": (head - s.applied()).max(0),
                    "lag_ms": s.lag_ms.load(Ordering::Relaxed),
                    "failures": s.failures.load(Ordering::Relaxed),
                    "last_error": s.last_error(),
                })
            })
            .collect();
        Ok(serde_json::json!({
            "object": "memory.status",
            "log_position": head,
            "write_queue": self.writer.queued(),
            "vectors": self.index.len(),
            "projections": projections,
        }))
    }

    /// Prometheus text for every `inferd_memory_*` metric, refreshed now.
    pub fn render_metrics(&self) -> String {
        let m = &self.metrics;
        m.write_queue.set(self.writer.queued());
        let state = self.pool.state();
        m.pool_idle.set(state.idle_connections as i64);
        m.pool_in_use
            .set((state.connections - state.idle_connections) as i64);
        for s in &self.statuses {
            let l = [s.name];
            m.projection_seq.with_label_values(&l).set(s.applied());
            m.projection_lag_items
                .with_label_values(&l)
                .set(s.lag_items.load(Ordering::Relaxed));
            m.projection_lag_seconds
                .with_label_values(&l)
                .set(s.lag_ms.load(Ordering::Relaxed) as f64 / 1000.0);
            let c = m.projection_failures.with_label_values(&l);
            let now = s.failures.load(Ordering::Relaxed);
            c.inc_by(now.saturating_sub(c.get()));
        }
        m.render()
    }
}

async fn log_head(m: &Memory) -> Result<i64> {
    m.read(|tx| {
        Ok(tx
            .rows("SELECT COALESCE(MAX(gseq), 0) FROM src.log", &[])?
            .first()
            .and_then(|r| r[0].int())
            .unwrap_or(0))
    })
    .await
}

fn item_of(r: &[Val]) -> Item {
    Item {
        id: r[0].int().unwrap_or_default(),
        namespace: r[1].text().unwrap_or_default().to_owned(),
        kind: r[2].text().unwrap_or_default().to_owned(),
        key: r[3].text().map(str::to_owned),
        content: r[4].text().unwrap_or_default().to_owned(),
        metadata: serde_json::from_str(r[5].text().unwrap_or("{}"))
            .unwrap_or(serde_json::Value::Null),
        seq: r[6].int().unwrap_or_default(),
        version: r[7].int().unwrap_or_default(),
        created_ms: r[8].int().unwrap_or_default(),
        updated_ms: r[9].int().unwrap_or_default(),
    }
}

impl Drop for Memory {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for r in self.runners.drain(..) {
            let _ = r.join();
        }
    }
}

/// One projection's state digest in two stores.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Comparison {
    pub projection: &'static str,
    pub live: String,
    pub rebuilt: String,
}

impl Comparison {
    pub fn same(&self) -> bool {
        self.live == self.rebuilt
    }
}

/// Applies every built-in projection in `projections` up to the log head, on
/// this thread; their digests after.
fn run_to_head(
    config: &MemoryConfig,
    projections: &Path,
    embedder: Option<Arc<dyn TextEmbedder>>,
) -> Result<Vec<(&'static str, String)>> {
    let files = Files {
        projections: projections.to_owned(),
        ..config.files()
    };
    if !files.log.exists() {
        return Err(Error::NotFound(format!(
            "no memory log at {}",
            files.log.display()
        )));
    }
    let mut conn = files.connect()?;
    projection::create_checkpoints(&mut Sqlite(&conn))?;
    let mut out = Vec::new();
    for mut p in builtin(config, embedder, Arc::new(VectorIndex::default())) {
        p.create(&mut Sqlite(&conn))?;
        while projection::step(&mut *p, &mut conn)?.is_some() {}
        let mut tx = Sqlite(&conn);
        let mut parts = String::new();
        for q in p.state_queries() {
            parts.push_str(&sql::digest(&mut tx, q)?);
        }
        out.push((p.name(), parts));
    }
    Ok(out)
}

/// Rebuilds every projection from the log, from zero, into a fresh file that
/// then replaces `projections.db`. The store must not be open meanwhile.
pub fn rebuild(
    config: &MemoryConfig,
    embedder: Option<Arc<dyn TextEmbedder>>,
) -> Result<Vec<(&'static str, String)>> {
    let files = config.files();
    let fresh = config.dir.join("projections.rebuild.db");
    remove_db(&fresh)?;
    let digests = run_to_head(config, &fresh, embedder)?;
    remove_db(&files.projections)?;
    std::fs::rename(&fresh, &files.projections)
        .map_err(|e| Error::Storage(format!("cannot replace the projections: {e}")))?;
    Ok(digests)
}

/// Brings the live projections up to the log head, rebuilds them from zero in
/// a scratch file beside them, and compares the two states projection by
/// projection. The store must not be open meanwhile.
pub fn check(
    config: &MemoryConfig,
    embedder: Option<Arc<dyn TextEmbedder>>,
) -> Result<Vec<Comparison>> {
    let files = config.files();
    let live = run_to_head(config, &files.projections, embedder.clone())?;
    let scratch = config.dir.join("projections.check.db");
    remove_db(&scratch)?;
    let rebuilt = run_to_head(config, &scratch, embedder);
    remove_db(&scratch)?;
    Ok(live
        .into_iter()
        .zip(rebuilt?)
        .map(|((projection, live), (_, rebuilt))| Comparison {
            projection,
            live,
            rebuilt,
        })
        .collect())
}

fn remove_db(path: &Path) -> Result<()> {
    for suffix in ["", "-wal", "-shm"] {
        let p = PathBuf::from(format!("{}{suffix}", path.display()));
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::Storage(format!(
                    "cannot remove {}: {e}",
                    p.display()
                )))
            }
        }
    }
    Ok(())
}
