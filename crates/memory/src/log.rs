//! The log: the `memory_log` table — a SQLite file in WAL mode, or PostgreSQL —
//! appended by one writer thread per process.
//!
//! A write is acknowledged after the transaction holding it commits: on SQLite
//! with `Durability::Fsync` (the default: `synchronous=FULL`) a commit returns
//! after the WAL is fsynced, on PostgreSQL after the server has flushed its WAL
//! (`synchronous_commit = on`), so an acknowledged write survives a crash of the
//! process and of the machine. The writer drains whatever is queued into one
//! transaction (group commit, as databases do): under load many writes share one
//! flush, and a lone write pays exactly one. A write is checked with reads
//! before its single insert, so one that is refused (an unknown target, a reused
//! idempotency key with other content) changes nothing and leaves the others of
//! its group standing. Appenders in
//! several processes take turns — SQLite's `BEGIN IMMEDIATE`, PostgreSQL's
//! `LOCK TABLE … IN EXCLUSIVE MODE` — and read the per-namespace sequence inside
//! the transaction, so every namespace is numbered without gaps and log positions
//! commit in order.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::metrics::MemoryMetrics;
use crate::sql::{self, Conn, Dialect, Tx, Val};
use crate::store::Store;
use crate::types::{Appended, Entry, Op, Write};
use crate::{now_ms, Durability, Error, Result};

const SCHEMA: [&str; 3] = [
    "CREATE TABLE IF NOT EXISTS memory_log (
        gseq {id},
        namespace TEXT NOT NULL,
        seq BIGINT NOT NULL,
        op TEXT NOT NULL,
        target BIGINT,
        kind TEXT NOT NULL,
        key TEXT,
        content TEXT NOT NULL,
        metadata TEXT NOT NULL,
        idempotency_key TEXT,
        at_ms BIGINT NOT NULL,
        UNIQUE (namespace, seq)
    )",
    "CREATE UNIQUE INDEX IF NOT EXISTS memory_log_idempotency ON memory_log (namespace, idempotency_key)
        WHERE idempotency_key IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS memory_log_target ON memory_log (target) WHERE target IS NOT NULL",
];

/// The columns of an [`Entry`], in [`entry_of`]'s order.
pub const ENTRY_COLUMNS: &str =
    "gseq, namespace, seq, op, target, kind, key, content, metadata, idempotency_key, at_ms";

/// Opens (creating) a SQLite file with the settings every connection shares.
pub fn open_sqlite(path: &Path, durability: Durability) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    let sync = match durability {
        Durability::Fsync => "FULL",
        Durability::Os => "NORMAL",
    };
    wal_pragmas(
        &conn,
        &format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync}; PRAGMA foreign_keys = OFF;"
        ),
    )?;
    Ok(conn)
}

/// Runs `pragmas` (a switch to WAL among them), retrying while SQLite answers
/// busy: switching a fresh file's journal needs it alone, and that refusal
/// comes at once, not after the busy timeout — several processes opening one
/// new state together meet it.
pub fn wal_pragmas(conn: &Connection, pragmas: &str) -> rusqlite::Result<()> {
    let started = Instant::now();
    loop {
        match conn.execute_batch(pragmas) {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && started.elapsed() < Duration::from_secs(10) =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            other => return other,
        }
    }
}

/// Creates the log's table if it is not there.
pub fn create(tx: &mut dyn Tx) -> Result<()> {
    for s in SCHEMA {
        tx.exec(&sql::ddl(tx.dialect(), s), &[])?;
    }
    Ok(())
}

pub fn entry_of(row: &[Val]) -> Result<Entry> {
    let bad = || Error::Storage("a log row has an unexpected shape".into());
    let text = |i: usize| row[i].text().map(str::to_owned).ok_or_else(bad);
    let opt_text = |i: usize| row[i].text().map(str::to_owned);
    Ok(Entry {
        gseq: row[0].int().ok_or_else(bad)?,
        namespace: text(1)?,
        seq: row[2].int().ok_or_else(bad)?,
        op: row[3].text().and_then(Op::parse).ok_or_else(bad)?,
        target: row[4].int(),
        kind: text(5)?,
        key: opt_text(6),
        content: text(7)?,
        metadata: text(8)?,
        idempotency_key: opt_text(9),
        at_ms: row[10].int().ok_or_else(bad)?,
    })
}

/// The log position of a namespace's write `seq`, and the namespace's last seq.
pub fn position_of(tx: &mut dyn Tx, namespace: &str, seq: i64) -> Result<(Option<i64>, i64)> {
    let at = tx
        .rows(
            "SELECT gseq FROM memory_log WHERE namespace = $1 AND seq = $2",
            &[namespace.into(), Val::Int(seq)],
        )?
        .first()
        .and_then(|r| r[0].int());
    let last = tx
        .rows(
            "SELECT COALESCE(MAX(seq), 0) FROM memory_log WHERE namespace = $1",
            &[namespace.into()],
        )?
        .first()
        .and_then(|r| r[0].int())
        .unwrap_or(0);
    Ok((at, last))
}

/// Wakes the projections when the log grows (in this process; they also poll,
/// for appends by other processes).
#[derive(Default)]
pub struct Signal {
    head: Mutex<i64>,
    grew: Condvar,
}

impl Signal {
    pub fn advance(&self, gseq: i64) {
        let mut h = self
            .head
            .lock()
            .expect("signal lock poisoned: this is a bug");
        if gseq > *h {
            *h = gseq;
            self.grew.notify_all();
        }
    }

    /// Returns when the head passes `after` or `timeout` elapses.
    pub fn wait_past(&self, after: i64, timeout: Duration) {
        let h = self
            .head
            .lock()
            .expect("signal lock poisoned: this is a bug");
        let _ = self
            .grew
            .wait_timeout_while(h, timeout, |h| *h <= after)
            .expect("signal lock poisoned: this is a bug");
    }
}

struct Command {
    write: Write,
    queued: Instant,
    reply: tokio::sync::oneshot::Sender<Result<Appended>>,
}

/// A handle to the writer thread. Dropping the last one stops the thread
/// after the queued writes.
#[derive(Clone)]
pub struct LogWriter {
    queue: SyncSender<Command>,
    depth: Arc<AtomicI64>,
    capacity: usize,
}

impl LogWriter {
    /// Starts the writer on `conn` (whose log table exists); at most `capacity`
    /// writes wait at once.
    /// Starts the writer on `conn` (whose log table exists), reconnecting
    /// through `store` when the connection is lost; at most `capacity` writes
    /// wait at once. The thread ends once the handle is dropped and the queue
    /// is drained.
    pub fn start(
        conn: Box<dyn Conn>,
        store: Store,
        capacity: usize,
        signal: Arc<Signal>,
        metrics: Arc<MemoryMetrics>,
    ) -> Result<(LogWriter, std::thread::JoinHandle<()>)> {
        let (queue, rx) = sync_channel(capacity);
        let depth = Arc::new(AtomicI64::new(0));
        let d = Arc::clone(&depth);
        let thread = std::thread::Builder::new()
            .name("memory-log".into())
            .spawn(move || run(conn, store, rx, d, signal, metrics))
            .map_err(|e| Error::Storage(format!("cannot start the log writer: {e}")))?;
        Ok((
            LogWriter {
                queue,
                depth,
                capacity,
            },
            thread,
        ))
    }

    /// Appends `write`; resolves once it is durable.
    pub async fn append(&self, write: Write) -> Result<Appended> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let cmd = Command {
            write,
            queued: Instant::now(),
            reply,
        };
        match self.queue.try_send(cmd) {
            Ok(()) => {
                self.depth.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(_)) => return Err(Error::Overloaded(self.capacity)),
            Err(TrySendError::Disconnected(_)) => return Err(Error::Closed),
        }
        rx.await.unwrap_or(Err(Error::Closed))
    }

    /// Writes waiting for the writer.
    pub fn queued(&self) -> i64 {
        self.depth.load(Ordering::Relaxed)
    }
}

/// The most writes one transaction takes.
const GROUP_MAX: usize = 512;

/// How often the writer tries to reconnect while the store is unreachable
/// (meanwhile each write is answered `Unavailable` at once, for the client to
/// retry with its idempotency key).
const RECONNECT_EVERY: Duration = Duration::from_millis(100);

fn run(
    conn: Box<dyn Conn>,
    store: Store,
    rx: Receiver<Command>,
    depth: Arc<AtomicI64>,
    signal: Arc<Signal>,
    metrics: Arc<MemoryMetrics>,
) {
    let mut conn = Some(conn);
    let mut last_attempt = Instant::now();
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < GROUP_MAX {
            match rx.try_recv() {
                Ok(c) => group.push(c),
                Err(_) => break,
            }
        }
        depth.fetch_sub(group.len() as i64, Ordering::Relaxed);
        metrics.group_size.observe(group.len() as f64);
        if conn.is_none() && last_attempt.elapsed() >= RECONNECT_EVERY {
            last_attempt = Instant::now();
            match store.log_conn() {
                Ok(c) => {
                    tracing::info!("memory log: reconnected to the state store");
                    conn = Some(c);
                }
                Err(e) => tracing::warn!(error = %e, "memory log: the state store is unreachable"),
            }
        }
        let lost = || {
            Error::Unavailable(
                "the memory store's connection was lost; retry (with the same idempotency key)"
                    .into(),
            )
        };
        let results = match conn.as_mut() {
            None => group.iter().map(|_| Err(lost())).collect(),
            Some(c) => match commit_group(&mut **c, &group) {
                Ok(r) => r,
                Err(e) => {
                    let e = if c.is_broken() {
                        conn = None;
                        last_attempt = Instant::now() - RECONNECT_EVERY;
                        lost()
                    } else {
                        e
                    };
                    tracing::error!(error = %e, writes = group.len(), "memory log commit failed");
                    group.iter().map(|_| Err(e.clone())).collect()
                }
            },
        };
        let mut top = 0;
        for (cmd, result) in group.into_iter().zip(results) {
            let label = match &result {
                Ok(a) if a.duplicate => "duplicate",
                Ok(_) => "ok",
                Err(_) => "error",
            };
            if let Ok(a) = &result {
                top = top.max(a.gseq);
            }
            metrics.writes.with_label_values(&[label]).inc();
            metrics
                .write_seconds
                .observe(cmd.queued.elapsed().as_secs_f64());
            let _ = cmd.reply.send(result);
        }
        signal.advance(top);
    }
}

fn commit_group(conn: &mut dyn Tx, group: &[Command]) -> Result<Vec<Result<Appended>>> {
    let now = now_ms();
    sql::in_transaction(conn, |tx| {
        if tx.dialect() == Dialect::Postgres {
            // One appender at a time across every process sharing the log:
            // positions are then committed in the order they are taken, so a
            // projection reading past its checkpoint never skips one that
            // commits late. Reads are not blocked.
            tx.exec("LOCK TABLE memory_log IN EXCLUSIVE MODE", &[])?;
        }
        // Each namespace's last seq, read once per group: no other appender
        // runs while this transaction holds the log.
        let mut last_seq = HashMap::new();
        let mut results: Vec<Option<Result<Appended>>> = Vec::with_capacity(group.len());
        // Writes that need no reads (no idempotency key, no target) wait here
        // and go in together as multi-row inserts; any other write first puts
        // them in, so every check reads what precedes it.
        let mut plain: Vec<(usize, Vec<Val>)> = Vec::new();
        for (i, cmd) in group.iter().enumerate() {
            let w = &cmd.write;
            results.push(None);
            if w.idempotency_key.is_none() && w.target.is_none() {
                let seq = next_seq(tx, w.namespace.as_str(), &mut last_seq)?;
                plain.push((i, row_of(w, seq, now)));
                continue;
            }
            insert_plain(tx, &mut plain, &mut results, now)?;
            // A write is checked with reads before its one insert, so a refused
            // write has changed nothing and needs no savepoint; a failed
            // statement fails the group.
            match append_one(tx, w, now, &mut last_seq) {
                Err(Error::Storage(e)) => return Err(Error::Storage(e)),
                other => results[i] = Some(other),
            }
        }
        insert_plain(tx, &mut plain, &mut results, now)?;
        Ok(results
            .into_iter()
            .map(|r| r.expect("every write of the group answered"))
            .collect())
    })
}

const INSERT_HEAD: &str = "INSERT INTO memory_log (namespace, seq, op, target, kind, key, content, metadata, idempotency_key, at_ms)";

/// The values of a write with neither target nor idempotency key.
fn row_of(w: &Write, seq: i64, now: i64) -> Vec<Val> {
    let metadata = w.metadata.as_ref().map_or_else(
        || "{}".to_owned(),
        |m| serde_json::Value::Object(m.clone()).to_string(),
    );
    vec![
        w.namespace.as_str().into(),
        Val::Int(seq),
        w.op.as_str().into(),
        Val::Null,
        w.kind.as_str().into(),
        w.key.as_deref().into(),
        w.content.as_str().into(),
        metadata.into(),
        Val::Null,
        Val::Int(now),
    ]
}

/// Inserts the waiting plain writes and answers them.
fn insert_plain(
    tx: &mut dyn Tx,
    plain: &mut Vec<(usize, Vec<Val>)>,
    results: &mut [Option<Result<Appended>>],
    now: i64,
) -> Result<()> {
    if plain.is_empty() {
        return Ok(());
    }
    let rows: Vec<Vec<Val>> = plain.iter().map(|(_, r)| r.clone()).collect();
    let returned = sql::insert_rows(tx, INSERT_HEAD, "RETURNING gseq, namespace, seq", &rows)?;
    let mut gseq_of: HashMap<(String, i64), i64> = HashMap::with_capacity(returned.len());
    for r in returned {
        let bad = || Error::Storage("the log gave no position".into());
        let key = (
            r[1].text().ok_or_else(bad)?.to_owned(),
            r[2].int().ok_or_else(bad)?,
        );
        gseq_of.insert(key, r[0].int().ok_or_else(bad)?);
    }
    for (i, row) in plain.drain(..) {
        let ns = row[0].text().unwrap_or_default().to_owned();
        let seq = row[1].int().unwrap_or_default();
        let gseq = *gseq_of
            .get(&(ns.clone(), seq))
            .ok_or_else(|| Error::Storage("the log gave no position".into()))?;
        results[i] = Some(Ok(Appended {
            id: gseq,
            namespace: ns,
            seq,
            gseq,
            duplicate: false,
            at_ms: now,
        }));
    }
    Ok(())
}

/// The next seq of `ns`, read from the log the first time in a group.
fn next_seq(tx: &mut dyn Tx, ns: &str, last_seq: &mut HashMap<String, i64>) -> Result<i64> {
    let seq = match last_seq.get(ns) {
        Some(&s) => s + 1,
        None => {
            tx.rows(
                "SELECT COALESCE(MAX(seq), 0) FROM memory_log WHERE namespace = $1",
                &[ns.into()],
            )?
            .first()
            .and_then(|r| r[0].int())
            .unwrap_or(0)
                + 1
        }
    };
    last_seq.insert(ns.to_owned(), seq);
    Ok(seq)
}

fn append_one(
    tx: &mut dyn Tx,
    w: &Write,
    now: i64,
    last_seq: &mut HashMap<String, i64>,
) -> Result<Appended> {
    let ns = w.namespace.as_str();
    let mut metadata = w
        .metadata
        .as_ref()
        .map(|m| serde_json::Value::Object(m.clone()).to_string());
    let (mut kind, mut key) = (w.kind.clone(), w.key.clone());
    if let Some(idem) = &w.idempotency_key {
        let sql = format!(
            "SELECT {ENTRY_COLUMNS} FROM memory_log WHERE namespace = $1 AND idempotency_key = $2"
        );
        if let Some(row) = tx.rows(&sql, &[ns.into(), idem.as_str().into()])?.first() {
            let e = entry_of(row)?;
            let same = e.op == w.op
                && e.target == w.target
                && e.content == w.content
                && metadata.as_ref().is_none_or(|m| *m == e.metadata)
                && (w.op != Op::Put || (e.kind == w.kind && e.key == w.key));
            if !same {
                return Err(Error::IdempotencyConflict(idem.clone()));
            }
            return Ok(Appended {
                id: e.item_id(),
                namespace: e.namespace,
                seq: e.seq,
                gseq: e.gseq,
                duplicate: true,
                at_ms: e.at_ms,
            });
        }
    }
    if let Some(target) = w.target {
        let missing = || {
            Error::NotFound(format!(
                "memory {target} does not exist in namespace `{ns}`"
            ))
        };
        let row = tx
            .rows(
                "SELECT namespace, op, kind, key FROM memory_log WHERE gseq = $1",
                &[Val::Int(target)],
            )?
            .into_iter()
            .next()
            .ok_or_else(missing)?;
        if row[0].text() != Some(ns) || row[1].text() != Some("put") {
            return Err(missing());
        }
        let deleted = tx.rows(
            "SELECT 1 FROM memory_log WHERE target = $1 AND op = 'delete'",
            &[Val::Int(target)],
        )?;
        if !deleted.is_empty() {
            return Err(missing());
        }
        kind = row[2].text().unwrap_or("note").to_owned();
        key = row[3].text().map(str::to_owned);
        if metadata.is_none() {
            // The item's latest metadata (a delete keeps it too, for the audit).
            metadata = tx
                .rows(
                    "SELECT metadata FROM memory_log WHERE gseq = $1 OR target = $1 ORDER BY gseq DESC LIMIT 1",
                    &[Val::Int(target)],
                )?
                .first()
                .and_then(|r| r[0].text().map(str::to_owned));
        }
    }
    let metadata = metadata.unwrap_or_else(|| "{}".to_owned());
    let seq = next_seq(tx, ns, last_seq)?;
    let gseq = tx
        .rows(
            "INSERT INTO memory_log (namespace, seq, op, target, kind, key, content, metadata, idempotency_key, at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING gseq",
            &[
                ns.into(),
                Val::Int(seq),
                w.op.as_str().into(),
                w.target.into(),
                kind.into(),
                key.as_deref().into(),
                w.content.as_str().into(),
                metadata.into(),
                w.idempotency_key.as_deref().into(),
                Val::Int(now),
            ],
        )?
        .first()
        .and_then(|r| r[0].int())
        .ok_or_else(|| Error::Storage("the log gave no position".into()))?;
    Ok(Appended {
        id: w.target.unwrap_or(gseq),
        namespace: ns.to_owned(),
        seq,
        gseq,
        duplicate: false,
        at_ms: now,
    })
}
