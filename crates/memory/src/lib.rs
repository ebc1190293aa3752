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

mod ann;
pub mod keys;
mod log;
mod metrics;
pub mod projection;
mod projections;
pub mod sql;
mod store;
mod types;
mod vectors;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use ann::AnnConfig;
pub use keys::{KeyRecord, Keys, Limits, NewKey, Period, Refusal, SpendQuery, Team, Ticket};
pub use metrics::MemoryMetrics;
pub use projection::{Projection, Status};
pub use projections::{Audit, Facts, Items, Recent};
pub use sql::{Tx, Val};
pub use types::*;
pub use vectors::{TextEmbedder, VectorIndex, Vectors};

use crate::log::{LogWriter, Signal};
use crate::store::{Location, ReadPool, Store};

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
    #[error("{0}")]
    Unavailable(String),
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

/// Runs `f` (the tables' creation) holding, on PostgreSQL, an advisory lock
/// of the schema: servers starting together would otherwise race on `CREATE
/// TABLE IF NOT EXISTS`, which is not safe against itself there.
fn with_schema_lock<T>(conn: &mut dyn Tx, f: impl FnOnce(&mut dyn Tx) -> Result<T>) -> Result<T> {
    if conn.dialect() != sql::Dialect::Postgres {
        return f(conn);
    }
    const KEY: &str = "hashtext(current_schema() || ':inferd_memory:tables')";
    conn.exec(&format!("SELECT pg_advisory_lock({KEY})"), &[])?;
    let result = f(conn);
    conn.exec(&format!("SELECT pg_advisory_unlock({KEY})"), &[])?;
    result
}

/// Runs `f` on a thread of its own: the PostgreSQL client blocks on a runtime
/// of its own, which tokio refuses inside an async task.
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| match s.spawn(f).join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

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

/// Where the log and its projections live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateStore {
    /// A directory holding `log.db` and `projections.db` (SQLite, WAL).
    Sqlite(PathBuf),
    /// A PostgreSQL URL (`postgres://user@host:port/db`); every table is made in
    /// the schema its `search_path` names (`?options=-csearch_path%3Dname`).
    Postgres(String),
}

impl StateStore {
    /// `postgres://…` or `postgresql://…`, `sqlite:DIR`, or a directory.
    pub fn parse(s: &str) -> Result<StateStore> {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            s.parse::<postgres::Config>().map_err(|e| {
                Error::invalid(
                    "state",
                    format!("`state` is not a valid PostgreSQL URL: {e}"),
                )
            })?;
            return Ok(StateStore::Postgres(s.to_owned()));
        }
        let dir = s.strip_prefix("sqlite:").unwrap_or(s);
        if dir.trim().is_empty() {
            return Err(Error::invalid(
                "state",
                format!("`state` must be a directory or a postgres:// URL, got {s:?}"),
            ));
        }
        Ok(StateStore::Sqlite(PathBuf::from(dir)))
    }
}

impl std::fmt::Display for StateStore {
    /// For logs: a URL without its password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateStore::Sqlite(dir) => write!(f, "sqlite:{}", dir.display()),
            StateStore::Postgres(url) => {
                let scheme_end = url.find("://").map_or(0, |i| i + 3);
                match url[scheme_end..].split_once('@') {
                    Some((auth, rest)) => match auth.split_once(':') {
                        Some((user, _)) => {
                            write!(f, "{}{user}:***@{rest}", &url[..scheme_end])
                        }
                        None => f.write_str(url),
                    },
                    None => f.write_str(url),
                }
            }
        }
    }
}

/// Where and how the store keeps its state.
#[derive(Debug, Clone)]
pub struct MemoryConfig {
    pub state: StateStore,
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
    /// A `redis://` URL: keys' per-minute counters are kept there, shared by
    /// every replica, instead of in the store.
    pub limits: Option<String>,
    /// When a namespace's search goes through an HNSW graph, and its settings.
    pub ann: AnnConfig,
}

impl MemoryConfig {
    /// SQLite files in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> MemoryConfig {
        MemoryConfig::at(StateStore::Sqlite(dir.into()))
    }

    pub fn at(state: StateStore) -> MemoryConfig {
        MemoryConfig {
            state,
            durability: Durability::Fsync,
            recent_per_namespace: 32,
            write_queue: 8192,
            read_connections: 4,
            read_timeout_ms: 5000,
            limits: None,
            ann: AnnConfig::default(),
        }
    }

    fn store(&self) -> Result<Store> {
        let location = match &self.state {
            StateStore::Sqlite(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| Error::Storage(format!("cannot create {}: {e}", dir.display())))?;
                Location::Sqlite {
                    log: dir.join("log.db"),
                    projections: dir.join("projections.db"),
                }
            }
            StateStore::Postgres(url) => {
                Location::Postgres(Box::new(url.parse().map_err(|e| {
                    Error::invalid(
                        "state",
                        format!("`state` is not a valid PostgreSQL URL: {e}"),
                    )
                })?))
            }
        };
        Ok(Store::new(location, self.durability))
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
        Box::new(keys::UsageLedger),
    ];
    if let Some(e) = embedder {
        out.push(Box::new(Vectors::new(e, index)));
    }
    out
}

/// A running store: the log writer, one thread per projection, a read pool.
pub struct Memory {
    /// `None` only while dropping.
    writer: Option<LogWriter>,
    writer_thread: Option<JoinHandle<()>>,
    /// `None` only while dropping.
    pool: Option<ReadPool>,
    read_timeout_ms: u64,
    statuses: Vec<Arc<Status>>,
    embedder: Option<Arc<dyn TextEmbedder>>,
    index: Arc<VectorIndex>,
    stop: Arc<AtomicBool>,
    runners: Vec<JoinHandle<()>>,
    pub metrics: Arc<MemoryMetrics>,
    /// `None` only while dropping.
    keys: Option<Keys>,
    settler: Option<JoinHandle<()>>,
}

impl Memory {
    /// Opens (creating) the store at `config.state` and starts its projections;
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
        off_runtime(|| Memory::start(config, embedder, extra))
    }

    fn start(
        config: &MemoryConfig,
        embedder: Option<Arc<dyn TextEmbedder>>,
        extra: Vec<Box<dyn Projection>>,
    ) -> Result<Memory> {
        let store = config.store()?;
        let mut log_conn = store.log_conn()?;
        let mut conn = store.projection_conn()?;
        let index = Arc::new(VectorIndex::new(config.ann));
        let mut all = builtin(config, embedder.clone(), Arc::clone(&index));
        all.extend(extra);
        let positions = with_schema_lock(&mut *log_conn, |log_conn| {
            log::create(log_conn)?;
            let mut positions = Vec::new();
            for p in &all {
                p.create(&mut *conn)?;
                projection::create_checkpoint(&mut *conn, p.name())?;
                positions.push(projection::checkpoint(&mut *conn, p.name())?);
            }
            Ok(positions)
        })?;
        // Loaded after its checkpoint was read: whatever the table holds past
        // it is followed again from the log, so nothing is missed.
        if embedder.is_some() {
            index.reload(&mut *conn)?;
            ann::start_indexer(&index)
                .map_err(|e| Error::Storage(format!("cannot start the vector indexer: {e}")))?;
        }
        drop(conn);
        let signal = Arc::new(Signal::default());
        let stop = Arc::new(AtomicBool::new(false));
        let metrics = Arc::new(MemoryMetrics::new());
        let mut statuses = Vec::new();
        let mut runners = Vec::new();
        for (p, position) in all.into_iter().zip(positions) {
            let status = Arc::new(Status::new(p.name(), position));
            statuses.push(Arc::clone(&status));
            let (store, signal, stop) = (store.clone(), Arc::clone(&signal), Arc::clone(&stop));
            runners.push(
                std::thread::Builder::new()
                    .name(format!("memory-{}", p.name()))
                    .spawn(move || projection::run(p, store, status, signal, stop))
                    .map_err(|e| Error::Storage(format!("cannot start a projection: {e}")))?,
            );
        }
        let (writer, writer_thread) = LogWriter::start(
            log_conn,
            store.clone(),
            config.write_queue,
            signal,
            Arc::clone(&metrics),
        )?;
        let pool = store.read_pool(
            config.read_connections,
            Duration::from_millis(config.read_timeout_ms),
        )?;
        let keys_pool = store.keys_pool(
            config.read_connections,
            Duration::from_millis(config.read_timeout_ms),
        )?;
        let store_id = keys_pool
            .get()
            .ok_or(Error::PoolTimeout(config.read_timeout_ms))?
            .run(|tx| {
                with_schema_lock(tx, keys::create)?;
                keys::store_id(tx)
            })?;
        let redis = match &config.limits {
            None => None,
            Some(url) => Some(Arc::new(keys::RedisRates::connect(url, &store_id)?)),
        };
        let (keys, settler) = Keys::start(keys_pool, writer.clone(), redis, Arc::clone(&metrics))?;
        Ok(Memory {
            writer: Some(writer),
            writer_thread: Some(writer_thread),
            pool: Some(pool),
            read_timeout_ms: config.read_timeout_ms,
            statuses,
            embedder,
            index,
            stop,
            runners,
            metrics,
            keys: Some(keys),
            settler: Some(settler),
        })
    }

    /// API keys, limits and the usage ledger.
    pub fn keys(&self) -> &Keys {
        self.keys
            .as_ref()
            .expect("the keys outlive the store's use: this is a bug")
    }

    /// The read pool, for queries of the projections (spend).
    pub fn reads(&self) -> ReadPool {
        self.pool
            .clone()
            .expect("the pool outlives the store's use: this is a bug")
    }

    /// Appends one write; resolves once it is durable.
    pub async fn write(&self, w: Write) -> Result<Appended> {
        match &self.writer {
            Some(writer) => writer.append(w).await,
            None => Err(Error::Closed),
        }
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
        let pool = self
            .pool
            .clone()
            .expect("the pool outlives the store's use: this is a bug");
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
            let mut conn = conn.ok_or_else(|| {
                metrics.pool_timeouts.inc();
                Error::PoolTimeout(timeout_ms)
            })?;
            conn.run(f)
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
                lag_items: {
                    let applied = status.applied();
                    self.read(move |tx| projection::entries_after(tx, applied))
                        .await
                        .unwrap_or(1)
                        .max(1)
                },
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
                     FROM memory_items WHERE id = $1 AND namespace = $2",
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
                        "SELECT value, item_id, seq, updated_ms FROM memory_facts WHERE namespace = $1 AND key = $2",
                        &params,
                    )?
                    .into_iter()
                    .next()
                    .ok_or_else(|| Error::NotFound(format!("no fact `{key}` in namespace `{ns}`")))?;
                let history = if history {
                    tx.rows(
                        "SELECT seq, op, value, item_id, at_ms FROM memory_fact_history \
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

    /// [`Memory::nearest`] scanning every item, never a graph: the exact
    /// answer.
    pub fn scan(&self, query: &[f32], search: &Search) -> Vec<Hit> {
        self.index.scan(query, search)
    }

    /// Vectors held, and how many of them are in graphs.
    pub fn vector_counts(&self) -> (usize, usize) {
        self.index.counts()
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
                         FROM memory_recent r LEFT JOIN memory_items i ON i.id = r.id \
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
                         FROM memory_audit WHERE namespace = $1 AND seq > $2 ORDER BY seq LIMIT $3",
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
        let mut behind = Vec::new();
        for s in &self.statuses {
            let applied = s.applied();
            behind.push(
                self.read(move |tx| projection::entries_after(tx, applied))
                    .await?,
            );
        }
        let projections: Vec<serde_json::Value> = self
            .statuses
            .iter()
            .zip(behind)
            .map(|(s, behind)| {
                serde_json::json!({
                    "name": s.name,
                    "position": s.applied(),
                    "lag_items": behind,
                    "lag_ms": s.lag_ms.load(Ordering::Relaxed),
                    "failures": s.failures.load(Ordering::Relaxed),
                    "last_error": s.last_error(),
                    "leading": s.leading.load(Ordering::Relaxed),
                })
            })
            .collect();
        Ok(serde_json::json!({
            "object": "memory.status",
            "log_position": head,
            "write_queue": self.writer.as_ref().map_or(0, LogWriter::queued),
            "vectors": self.index.len(),
            "vectors_in_graphs": self.index.counts().1,
            "projections": projections,
        }))
    }

    /// Prometheus text for every `inferd_memory_*` metric, refreshed now.
    pub fn render_metrics(&self) -> String {
        let m = &self.metrics;
        m.write_queue
            .set(self.writer.as_ref().map_or(0, LogWriter::queued));
        let (connections, idle) = self.pool.as_ref().map_or((0, 0), ReadPool::state);
        m.pool_idle.set(idle as i64);
        m.pool_in_use.set(connections.saturating_sub(idle) as i64);
        if let Some(k) = &self.keys {
            k.refresh_metrics();
        }
        let (vectors, in_graphs) = self.index.counts();
        m.vectors
            .with_label_values(&["graph"])
            .set(in_graphs as i64);
        m.vectors
            .with_label_values(&["scan"])
            .set((vectors - in_graphs) as i64);
        for s in &self.statuses {
            let l = [s.name];
            m.projection_seq.with_label_values(&l).set(s.applied());
            m.projection_lag_items
                .with_label_values(&l)
                .set(s.lag_items.load(Ordering::Relaxed));
            m.projection_lag_seconds
                .with_label_values(&l)
                .set(s.lag_ms.load(Ordering::Relaxed) as f64 / 1000.0);
            m.projection_leading
                .with_label_values(&l)
                .set(s.leading.load(Ordering::Relaxed).into());
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
            .rows("SELECT COALESCE(MAX(gseq), 0) FROM memory_log", &[])?
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
        // Usage still being settled reaches the log; then the writer finishes
        // what is queued and its thread (and connection) ends, before anything
        // else of the store goes.
        if let Some(k) = &self.keys {
            k.stop();
        }
        if let Some(t) = self.settler.take() {
            let _ = t.join();
        }
        drop(self.writer.take());
        if let Some(t) = self.writer_thread.take() {
            let _ = t.join();
        }
        self.stop.store(true, Ordering::Relaxed);
        for r in self.runners.drain(..) {
            let _ = r.join();
        }
        // Closing PostgreSQL connections blocks: not on an async thread.
        let (pool, keys) = (self.pool.take(), self.keys.take());
        off_runtime(move || drop((pool, keys)));
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

/// Applies every built-in projection in `store` up to the log head, on this
/// thread; each one's state digest after.
fn run_to_head(
    config: &MemoryConfig,
    store: &Store,
    embedder: Option<Arc<dyn TextEmbedder>>,
) -> Result<Vec<(&'static str, String)>> {
    let mut conn = store.projection_conn()?;
    let mut out = Vec::new();
    for mut p in builtin(config, embedder, Arc::new(VectorIndex::default())) {
        p.create(&mut *conn)?;
        projection::create_checkpoint(&mut *conn, p.name())?;
        let mut local = projection::checkpoint(&mut *conn, p.name())?;
        let mut lead = projection::Lead::default();
        while let projection::Progress::Applied(g) | projection::Progress::Followed(g) =
            projection::step(&mut *p, store, &mut *conn, local, &mut lead)?
        {
            local = g;
        }
        if !lead.held() {
            return Err(Error::Storage(format!(
                "another process is applying the `{}` projection: stop the servers on this store first",
                p.name()
            )));
        }
        let mut parts = String::new();
        for q in p.state_queries() {
            parts.push_str(&sql::digest(&mut *conn, q)?);
        }
        out.push((p.name(), parts));
    }
    Ok(out)
}

/// The tables every built-in projection keeps, and the checkpoints.
const PROJECTION_TABLES: &str = "memory_items, memory_facts, memory_fact_history, memory_recent, memory_audit, memory_vectors, memory_checkpoints";

fn no_log(config: &MemoryConfig) -> Result<()> {
    if let StateStore::Sqlite(dir) = &config.state {
        if !dir.join("log.db").exists() {
            return Err(Error::NotFound(format!(
                "no memory log in {}",
                dir.display()
            )));
        }
    }
    Ok(())
}

/// Rebuilds every projection from the log, from zero — on SQLite into a fresh
/// file that then replaces `projections.db`, on PostgreSQL in place. The store
/// must not be open meanwhile.
pub fn rebuild(
    config: &MemoryConfig,
    embedder: Option<Arc<dyn TextEmbedder>>,
) -> Result<Vec<(&'static str, String)>> {
    off_runtime(|| rebuild_here(config, embedder))
}

fn rebuild_here(
    config: &MemoryConfig,
    embedder: Option<Arc<dyn TextEmbedder>>,
) -> Result<Vec<(&'static str, String)>> {
    no_log(config)?;
    let store = config.store()?;
    match (&config.state, &store.location) {
        (StateStore::Sqlite(dir), Location::Sqlite { projections, .. }) => {
            let fresh = dir.join("projections.rebuild.db");
            remove_db(&fresh)?;
            let digests = run_to_head(config, &store.with_projections(fresh.clone()), embedder)?;
            remove_db(projections)?;
            std::fs::rename(&fresh, projections)
                .map_err(|e| Error::Storage(format!("cannot replace the projections: {e}")))?;
            Ok(digests)
        }
        _ => {
            let mut conn = store.projection_conn()?;
            conn.exec(&format!("DROP TABLE IF EXISTS {PROJECTION_TABLES}"), &[])?;
            drop(conn);
            run_to_head(config, &store, embedder)
        }
    }
}

/// Brings the live projections up to the log head, rebuilds them from zero
/// beside them (a scratch file on SQLite, a scratch schema on PostgreSQL), and
/// compares the two states projection by projection. The store must not be
/// open meanwhile.
pub fn check(
    config: &MemoryConfig,
    embedder: Option<Arc<dyn TextEmbedder>>,
) -> Result<Vec<Comparison>> {
    off_runtime(|| check_here(config, embedder))
}

fn check_here(
    config: &MemoryConfig,
    embedder: Option<Arc<dyn TextEmbedder>>,
) -> Result<Vec<Comparison>> {
    no_log(config)?;
    let store = config.store()?;
    let live = run_to_head(config, &store, embedder.clone())?;
    let rebuilt = match (&config.state, &store.location) {
        (StateStore::Sqlite(dir), _) => {
            let scratch = dir.join("projections.check.db");
            remove_db(&scratch)?;
            let rebuilt = run_to_head(config, &store.with_projections(scratch.clone()), embedder);
            remove_db(&scratch)?;
            rebuilt?
        }
        (_, Location::Postgres(pg)) => {
            // Tables are made in the first schema of the search path; the log
            // is found further along it, in the live schema.
            let mut conn = store.projection_conn()?;
            let path = conn
                .rows("SELECT current_setting('search_path')", &[])?
                .first()
                .and_then(|r| r[0].text().map(str::to_owned))
                .unwrap_or_else(|| "public".into());
            let scratch = format!("memory_check_{}", std::process::id());
            conn.exec(
                &format!("DROP SCHEMA IF EXISTS {scratch} CASCADE; CREATE SCHEMA {scratch}"),
                &[],
            )?;
            let mut pg = (**pg).clone();
            pg.options(&format!(
                "-c search_path={scratch},{}",
                path.replace(' ', "")
            ));
            let scratch_store = Store::new(Location::Postgres(Box::new(pg)), store.durability);
            let rebuilt = run_to_head(config, &scratch_store, embedder);
            conn.exec(&format!("DROP SCHEMA IF EXISTS {scratch} CASCADE"), &[])?;
            rebuilt?
        }
        _ => unreachable!("a SQLite state has a SQLite location"),
    };
    Ok(live
        .into_iter()
        .zip(rebuilt)
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
