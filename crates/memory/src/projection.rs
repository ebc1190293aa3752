//! Projections: consumers of the log, each with its own thread and checkpoint.
//!
//! A runner reads the entries past its checkpoint, lets the projection prepare
//! what needs no database (embeddings), then applies them and moves the
//! checkpoint in one transaction — so a batch is applied entirely or not at all,
//! and replaying the log after any crash applies each entry exactly once. The
//! checkpoint is read again inside the transaction, so two processes running the
//! same projection over one store never apply an entry twice. A batch that fails
//! (an error or a panic) is rolled back and retried with exponential backoff
//! (50 ms doubling to 5 s); the projection stays behind, visibly (its lag and
//! failures are exported), while the log and the other projections go on.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior};

use crate::log::{self, Signal};
use crate::sql::{Sqlite, Tx, Val};
use crate::types::Entry;
use crate::{Durability, Error, Result};

/// One derived view of the log.
pub trait Projection: Send {
    /// Bounded and stable: it labels metrics and names the checkpoint.
    fn name(&self) -> &'static str;
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
    /// Queries whose rows are the projection's whole state, for [`sql::digest`].
    ///
    /// [`sql::digest`]: crate::sql::digest
    fn state_queries(&self) -> Vec<&'static str>;
}

const CHECKPOINTS: &str = "CREATE TABLE IF NOT EXISTS checkpoints (
    projection TEXT PRIMARY KEY,
    gseq INTEGER NOT NULL
)";

/// Creates the checkpoints table if it is not there.
pub fn create_checkpoints(tx: &mut dyn Tx) -> Result<()> {
    tx.exec(CHECKPOINTS, &[])?;
    Ok(())
}

pub fn checkpoint(tx: &mut dyn Tx, name: &str) -> Result<i64> {
    Ok(tx
        .rows(
            "SELECT gseq FROM checkpoints WHERE projection = $1",
            &[name.into()],
        )?
        .first()
        .and_then(|r| r[0].int())
        .unwrap_or(0))
}

fn set_checkpoint(tx: &mut dyn Tx, name: &str, gseq: i64) -> Result<()> {
    tx.exec(
        "INSERT INTO checkpoints (projection, gseq) VALUES ($1, $2) \
         ON CONFLICT (projection) DO UPDATE SET gseq = excluded.gseq",
        &[name.into(), Val::Int(gseq)],
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

/// The files a runner opens.
#[derive(Clone)]
pub struct Files {
    pub log: PathBuf,
    pub projections: PathBuf,
    pub durability: Durability,
}

impl Files {
    pub fn connect(&self) -> Result<Connection> {
        let conn = log::open_sqlite(&self.projections, self.durability)?;
        conn.execute(
            "ATTACH DATABASE ?1 AS src",
            [self.log.to_string_lossy().as_ref()],
        )?;
        Ok(conn)
    }
}

/// Applies one batch read past the checkpoint; the new checkpoint, or `None`
/// when nothing was there.
pub fn step(p: &mut dyn Projection, conn: &mut Connection) -> Result<Option<i64>> {
    let from = checkpoint(&mut Sqlite(conn), p.name())?;
    let entries = read_source(conn, from)?;
    if entries.is_empty() {
        return Ok(None);
    }
    p.prepare(&entries)?;
    let txn = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut tx = Sqlite(&txn);
    // Another process may have applied some of them meanwhile.
    let now = checkpoint(&mut tx, p.name())?;
    let fresh: Vec<Entry> = entries.into_iter().filter(|e| e.gseq > now).collect();
    let Some(last) = fresh.last().map(|e| e.gseq) else {
        return Ok(Some(now));
    };
    let applied = p.apply(&mut tx, &fresh).and_then(|()| {
        set_checkpoint(&mut tx, p.name(), last)?;
        Ok(())
    });
    match applied.and_then(|()| txn.commit().map_err(Error::from)) {
        Ok(()) => {
            p.committed();
            Ok(Some(last))
        }
        Err(e) => {
            p.rolled_back();
            Err(e)
        }
    }
}

fn read_source(conn: &Connection, after: i64) -> Result<Vec<Entry>> {
    let sql = format!(
        "SELECT {} FROM src.log WHERE gseq > $1 ORDER BY gseq LIMIT $2",
        log::ENTRY_COLUMNS
    );
    Sqlite(conn)
        .rows(&sql, &[Val::Int(after), Val::Int(BATCH as i64)])?
        .iter()
        .map(|r| log::entry_of(r))
        .collect()
}

fn refresh_lag(conn: &Connection, status: &Status, applied: i64) {
    let mut tx = Sqlite(conn);
    let head = tx
        .rows("SELECT COALESCE(MAX(gseq), 0) FROM src.log", &[])
        .ok()
        .and_then(|r| r.first().and_then(|r| r[0].int()))
        .unwrap_or(applied);
    let oldest = tx
        .rows(
            "SELECT at_ms FROM src.log WHERE gseq > $1 ORDER BY gseq LIMIT 1",
            &[Val::Int(applied)],
        )
        .ok()
        .and_then(|r| r.first().and_then(|r| r[0].int()));
    status
        .lag_items
        .store((head - applied).max(0), Ordering::Relaxed);
    status.lag_ms.store(
        oldest.map_or(0, |t| (crate::now_ms() - t).max(0)),
        Ordering::Relaxed,
    );
}

/// Runs `p` until `stop` is set.
pub fn run(
    mut p: Box<dyn Projection>,
    files: Files,
    status: Arc<Status>,
    signal: Arc<Signal>,
    stop: Arc<AtomicBool>,
) {
    let mut backoff = BACKOFF_MIN;
    let mut conn = None;
    while !stop.load(Ordering::Relaxed) {
        if conn.is_none() {
            match files.connect() {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    fail(&status, &e.to_string(), &mut backoff, &stop);
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected above");
        let result = catch_unwind(AssertUnwindSafe(|| step(&mut *p, c)));
        match result {
            Ok(Ok(Some(gseq))) => {
                status.applied.send_replace(gseq);
                refresh_lag(c, &status, gseq);
                backoff = BACKOFF_MIN;
            }
            Ok(Ok(None)) => {
                let applied = status.applied();
                refresh_lag(c, &status, applied);
                signal.wait_past(applied, POLL);
            }
            Ok(Err(e)) => {
                refresh_lag(c, &status, status.applied());
                fail(&status, &e.to_string(), &mut backoff, &stop)
            }
            Err(panic) => {
                let why = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".into());
                // The transaction was dropped while unwinding: rolled back.
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
