//! Projections: consumers of the log, each with its own thread and checkpoint.
//!
//! A runner reads the entries past its checkpoint, lets the projection prepare
//! what needs no database (embeddings), then applies them and moves the
//! checkpoint in one transaction — so a batch is applied entirely or not at all,
//! and replaying the log after any crash applies each entry exactly once. The
//! checkpoint is read again inside the transaction (on PostgreSQL `FOR UPDATE`),
//! so several processes running the same projection over one store never apply
//! an entry twice; what another process applied, this one *follows* — the
//! projection updates what it keeps in process memory (the vector index) from
//! the tables. A batch that fails (an error or a panic) is rolled back and
//! retried with exponential backoff (50 ms doubling to 5 s); the projection stays
//! behind, visibly (its lag and failures are exported), while the log and the
//! other projections go on.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::log::{self, Signal};
use crate::sql::{self, Dialect, Tx, Val};
use crate::store::Store;
use crate::types::Entry;
use crate::Result;

/// One derived view of the log.
pub trait Projection: Send {
    /// Bounded and stable: it labels metrics and names the checkpoint.
    fn name(&self) -> &'static str;
    /// Whether it applies `e`; what it skips still moves its checkpoint. By
    /// default every memory entry and none of the usage ledger's.
    fn wants(&self, e: &Entry) -> bool {
        e.namespace != crate::keys::LEDGER_NAMESPACE
    }
    /// Creates its tables if they are not there.
    fn create(&self, tx: &mut dyn Tx) -> Result<()>;
    /// Work outside the transaction, for the entries about to be applied.
    fn prepare(&mut self, _entries: &[Entry]) -> Result<()> {
        Ok(())
    }
    /// Applies `entries` (in log order, none applied before) inside `tx`.
    fn apply(&mut self, tx: &mut dyn Tx, entries: &[Entry]) -> Result<()>;
    /// After the transaction of the last `apply` committed.
    fn committed(&mut self) {}
    /// After it rolled back.
    fn rolled_back(&mut self) {}
    /// `entries` were applied by another process sharing the store: bring what
    /// this process keeps in memory up to date from the tables.
    fn follow(&mut self, _tx: &mut dyn Tx, _entries: &[Entry]) -> Result<()> {
        Ok(())
    }
    /// Queries whose rows are the projection's whole state, for [`sql::digest`].
    ///
    /// [`sql::digest`]: crate::sql::digest
    fn state_queries(&self) -> Vec<&'static str>;
}

/// Creates the checkpoints table and `name`'s row, if they are not there.
pub fn create_checkpoint(tx: &mut dyn Tx, name: &str) -> Result<()> {
    tx.exec(
        "CREATE TABLE IF NOT EXISTS memory_checkpoints (
            projection TEXT PRIMARY KEY,
            gseq BIGINT NOT NULL
        )",
        &[],
    )?;
    tx.exec(
        "INSERT INTO memory_checkpoints (projection, gseq) VALUES ($1, 0) ON CONFLICT (projection) DO NOTHING",
        &[name.into()],
    )?;
    Ok(())
}

pub fn checkpoint(tx: &mut dyn Tx, name: &str) -> Result<i64> {
    Ok(tx
        .rows(
            "SELECT gseq FROM memory_checkpoints WHERE projection = $1",
            &[name.into()],
        )?
        .first()
        .and_then(|r| r[0].int())
        .unwrap_or(0))
}

/// The checkpoint inside a transaction that will move it: locked against the
/// same projection in other processes.
fn checkpoint_for_update(tx: &mut dyn Tx, name: &str) -> Result<i64> {
    let sql = match tx.dialect() {
        // The transaction's write lock already excludes every other writer.
        Dialect::Sqlite => "SELECT gseq FROM memory_checkpoints WHERE projection = $1",
        Dialect::Postgres => "SELECT gseq FROM memory_checkpoints WHERE projection = $1 FOR UPDATE",
    };
    Ok(tx
        .rows(sql, &[name.into()])?
        .first()
        .and_then(|r| r[0].int())
        .unwrap_or(0))
}

fn set_checkpoint(tx: &mut dyn Tx, name: &str, gseq: i64) -> Result<()> {
    tx.exec(
        "UPDATE memory_checkpoints SET gseq = $1 WHERE projection = $2",
        &[Val::Int(gseq), name.into()],
    )?;
    Ok(())
}

/// What the runner of one projection shows the world.
pub struct Status {
    pub name: &'static str,
    /// The last log position applied.
    applied: tokio::sync::watch::Sender<i64>,
    pub failures: AtomicU64,
    /// Entries behind the log head, and seconds since the oldest unapplied entry
    /// was written (refreshed as the runner polls).
    pub lag_items: AtomicI64,
    pub lag_ms: AtomicI64,
    pub last_error: Mutex<Option<String>>,
    /// Whether this process applies the projection (else it follows another).
    pub leading: AtomicBool,
}

impl Status {
    pub fn new(name: &'static str, applied: i64) -> Status {
        Status {
            name,
            applied: tokio::sync::watch::Sender::new(applied),
            failures: AtomicU64::new(0),
            lag_items: AtomicI64::new(0),
            lag_ms: AtomicI64::new(0),
            last_error: Mutex::new(None),
            leading: AtomicBool::new(false),
        }
    }

    pub fn applied(&self) -> i64 {
        *self.applied.borrow()
    }

    /// Resolves once the projection has applied log position `gseq`.
    pub async fn reached(&self, gseq: i64) {
        let mut rx = self.applied.subscribe();
        let _ = rx.wait_for(|&g| g >= gseq).await;
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .expect("status lock poisoned: this is a bug")
            .clone()
    }
}

/// Entries one transaction applies at most.
pub const BATCH: usize = 256;
/// How often an idle runner looks for appends by other processes.
const POLL: Duration = Duration::from_millis(20);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What one pass of a runner did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Applied entries, up to this position.
    Applied(i64),
    /// Caught up with entries another process applied, up to this position.
    Followed(i64),
    /// Nothing past this position yet.
    Idle(i64),
}

/// This process's lead of one projection, once taken.
#[derive(Default)]
pub struct Lead {
    held: bool,
    /// SQLite: the locked file that is the lead (released when the process
    /// ends, however it ends).
    _file: Option<std::fs::File>,
}

impl Lead {
    pub fn held(&self) -> bool {
        self.held
    }
}

/// Whether this process applies `name` for every process sharing the store
/// (the others follow, so an embedding is computed once). PostgreSQL: the
/// session holding the projection's advisory lock; the lock goes with its
/// session, so another process takes over when the holder dies. SQLite: the
/// process holding an exclusive lock on the projection's lock file beside
/// `projections.db` — also released by the OS when the holder dies.
fn leads(tx: &mut dyn Tx, store: &Store, name: &str, lead: &mut Lead) -> Result<bool> {
    if !lead.held {
        match tx.dialect() {
            Dialect::Sqlite => {
                if let Some(file) = store.try_lead(name)? {
                    lead._file = Some(file);
                    lead.held = true;
                }
            }
            Dialect::Postgres => {
                lead.held = tx
                    .rows(
                        // Advisory locks span the database: the key names the schema.
                        "SELECT pg_try_advisory_lock(hashtext(current_schema() || ':inferd_memory:' || $1))::INT4",
                        &[name.into()],
                    )?
                    .first()
                    .and_then(|r| r[0].int())
                    == Some(1);
            }
        }
    }
    Ok(lead.held)
}

/// One pass: follows what others applied past `local` (this process's
/// position), else — when it leads — applies one batch read past the
/// checkpoint.
pub fn step(
    p: &mut dyn Projection,
    store: &Store,
    conn: &mut dyn Tx,
    local: i64,
    lead: &mut Lead,
) -> Result<Progress> {
    let from = checkpoint(conn, p.name())?;
    if from > local {
        let entries = read_source(conn, local, from)?;
        let to = entries.last().map_or(from, |e| e.gseq);
        let entries = wanted(p, entries);
        p.follow(conn, &entries)?;
        return Ok(Progress::Followed(to));
    }
    if !leads(conn, store, p.name(), lead)? {
        return Ok(Progress::Idle(from));
    }
    let entries = read_source(conn, from, i64::MAX)?;
    if entries.is_empty() {
        return Ok(Progress::Idle(from));
    }
    let last_read = entries.last().map_or(from, |e| e.gseq);
    let entries = wanted(p, entries);
    p.prepare(&entries)?;
    let mut behind = Vec::new();
    let applied = store.in_turn(|| {
        sql::in_transaction(conn, |tx| {
            // Another process may have applied some of them meanwhile.
            let now = checkpoint_for_update(tx, p.name())?;
            let (done, fresh): (Vec<Entry>, Vec<Entry>) =
                entries.iter().cloned().partition(|e| e.gseq <= now);
            behind = done;
            if now >= last_read {
                return Ok(None);
            }
            p.apply(tx, &fresh)?;
            set_checkpoint(tx, p.name(), last_read)?;
            Ok(Some(last_read))
        })
    });
    match applied {
        Ok(last) => {
            p.committed();
            if !behind.is_empty() {
                p.follow(conn, &behind)?;
            }
            Ok(match last {
                Some(last) => Progress::Applied(last),
                None => Progress::Followed(last_read),
            })
        }
        Err(e) => {
            p.rolled_back();
            Err(e)
        }
    }
}

/// The entries of a batch `p` applies.
fn wanted(p: &dyn Projection, entries: Vec<Entry>) -> Vec<Entry> {
    entries.into_iter().filter(|e| p.wants(e)).collect()
}

/// Entries after `after` and at most `upto`, one batch of them.
fn read_source(tx: &mut dyn Tx, after: i64, upto: i64) -> Result<Vec<Entry>> {
    let sql = format!(
        "SELECT {} FROM memory_log WHERE gseq > $1 AND gseq <= $2 ORDER BY gseq LIMIT $3",
        log::ENTRY_COLUMNS
    );
    tx.rows(
        &sql,
        &[Val::Int(after), Val::Int(upto), Val::Int(BATCH as i64)],
    )?
    .iter()
    .map(|r| log::entry_of(r))
    .collect()
}

/// Entries past `applied` (positions can skip: PostgreSQL's identity does not
/// give back the values of rolled-back appends).
pub fn entries_after(tx: &mut dyn Tx, applied: i64) -> Result<i64> {
    Ok(tx
        .rows(
            "SELECT COUNT(*) FROM memory_log WHERE gseq > $1",
            &[Val::Int(applied)],
        )?
        .first()
        .and_then(|r| r[0].int())
        .unwrap_or(0))
}

fn refresh_lag(tx: &mut dyn Tx, status: &Status, applied: i64) {
    let behind = entries_after(tx, applied).unwrap_or(0);
    let oldest = tx
        .rows(
            "SELECT at_ms FROM memory_log WHERE gseq > $1 ORDER BY gseq LIMIT 1",
            &[Val::Int(applied)],
        )
        .ok()
        .and_then(|r| r.first().and_then(|r| r[0].int()));
    status.lag_items.store(behind, Ordering::Relaxed);
    status.lag_ms.store(
        oldest.map_or(0, |t| (crate::now_ms() - t).max(0)),
        Ordering::Relaxed,
    );
}

/// Runs `p` until `stop` is set, from `local`: the position its process-local
/// state reflects (its checkpoint when the store opened).
pub fn run(
    mut p: Box<dyn Projection>,
    store: Store,
    status: Arc<Status>,
    signal: Arc<Signal>,
    stop: Arc<AtomicBool>,
) {
    let mut backoff = BACKOFF_MIN;
    let mut conn = None;
    let mut lead = Lead::default();
    while !stop.load(Ordering::Relaxed) {
        if conn.is_none() {
            // A new session holds no lock.
            lead = Lead::default();
            match store.projection_conn() {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    fail(&status, &e.to_string(), &mut backoff, &stop);
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected above");
        let local = status.applied();
        let result = catch_unwind(AssertUnwindSafe(|| {
            step(&mut *p, &store, &mut **c, local, &mut lead)
        }));
        status.leading.store(lead.held(), Ordering::Relaxed);
        match result {
            Ok(Ok(Progress::Applied(gseq) | Progress::Followed(gseq))) => {
                status.applied.send_replace(gseq);
                refresh_lag(&mut **c, &status, gseq);
                backoff = BACKOFF_MIN;
            }
            Ok(Ok(Progress::Idle(_))) => {
                refresh_lag(&mut **c, &status, local);
                signal.wait_past(local, POLL);
            }
            Ok(Err(e)) => {
                if c.is_broken() {
                    // Reconnect on the next pass (after the backoff).
                    conn = None;
                } else {
                    refresh_lag(&mut **c, &status, local);
                }
                fail(&status, &e.to_string(), &mut backoff, &stop)
            }
            Err(panic) => {
                let why = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".into());
                // Whatever transaction was open goes with the connection.
                p.rolled_back();
                conn = None;
                fail(&status, &format!("panicked: {why}"), &mut backoff, &stop);
            }
        }
    }
}

fn fail(status: &Status, why: &str, backoff: &mut Duration, stop: &AtomicBool) {
    status.failures.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(
        projection = status.name,
        error = why,
        retry_ms = backoff.as_millis() as u64,
        "memory projection failed; retrying"
    );
    *status
        .last_error
        .lock()
        .expect("status lock poisoned: this is a bug") = Some(why.to_owned());
    let until = std::time::Instant::now() + *backoff;
    while std::time::Instant::now() < until && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(10));
    }
    *backoff = (*backoff * 2).min(BACKOFF_MAX);
}
