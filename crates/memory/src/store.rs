//! Where the log and the projections live, and the connections to them: the
//! log writer's, one per projection runner, and the read pool (r2d2 over
//! rusqlite or the `postgres` client).
//!
//! SQLite: the log is `log.db` and the projections `projections.db`, so
//! appends never wait for a projection's write lock; a projection connection
//! attaches the log, whose table name it then reads unqualified. The runners of
//! one process take turns on `projections.db` through a mutex rather than
//! SQLite's sleeping busy handler. PostgreSQL: every table in one database (the
//! schema the URL's `search_path` names), shared by any number of processes.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use r2d2_postgres::PostgresConnectionManager;
use r2d2_sqlite::SqliteConnectionManager;

use crate::log;
use crate::sql::{Conn, Pg, PgRef, Sqlite, SqliteConn, Tx};
use crate::{Durability, Error, Result};

#[derive(Clone)]
pub enum Location {
    Sqlite { log: PathBuf, projections: PathBuf },
    Postgres(Box<postgres::Config>),
}

#[derive(Clone)]
pub struct Store {
    pub location: Location,
    /// The log's durability (projections replay from the log, so theirs is
    /// relaxed).
    pub durability: Durability,
    /// SQLite: the projection runners' turn on `projections.db`.
    turn: Option<Arc<Mutex<()>>>,
}

/// A PostgreSQL error with the server's own message and SQLSTATE, which its
/// `Display` leaves out.
fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{e}: {} (SQLSTATE {})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

impl From<postgres::Error> for Error {
    fn from(e: postgres::Error) -> Error {
        Error::Storage(describe(&e))
    }
}

impl Store {
    pub fn new(location: Location, durability: Durability) -> Store {
        let turn = matches!(location, Location::Sqlite { .. }).then(|| Arc::new(Mutex::new(())));
        Store {
            location,
            durability,
            turn,
        }
    }

    /// The same store with the projections in another file (SQLite) — for
    /// rebuilding beside the live ones.
    pub fn with_projections(&self, projections: PathBuf) -> Store {
        match &self.location {
            Location::Sqlite { log, .. } => Store::new(
                Location::Sqlite {
                    log: log.clone(),
                    projections,
                },
                self.durability,
            ),
            Location::Postgres(_) => self.clone(),
        }
    }

    fn postgres(config: &postgres::Config, durability: Durability) -> Result<Pg> {
        let mut client = named(config).connect(postgres::NoTls).map_err(|e| {
            Error::Storage(format!("cannot connect to PostgreSQL: {}", describe(&e)))
        })?;
        let commit = match durability {
            Durability::Fsync => "on",
            Durability::Os => "off",
        };
        client.batch_execute(&format!("SET synchronous_commit = {commit}"))?;
        Ok(Pg::new(client))
    }

    /// The log writer's connection.
    pub fn log_conn(&self) -> Result<Box<dyn Conn>> {
        Ok(match &self.location {
            Location::Sqlite { log, .. } => {
                Box::new(SqliteConn(log::open_sqlite(log, self.durability)?))
            }
            Location::Postgres(c) => Box::new(Store::postgres(c, self.durability)?),
        })
    }

    /// A projection runner's connection: it reads the log and writes projections.
    pub fn projection_conn(&self) -> Result<Box<dyn Conn>> {
        Ok(match &self.location {
            Location::Sqlite { log, projections } => {
                let conn = log::open_sqlite(projections, Durability::Os)?;
                conn.execute(
                    "ATTACH DATABASE ?1 AS src",
                    [log.to_string_lossy().as_ref()],
                )?;
                Box::new(SqliteConn(conn))
            }
            Location::Postgres(c) => Box::new(Store::postgres(c, Durability::Os)?),
        })
    }

    /// SQLite: the lock file that makes this process the one applying
    /// projection `name`, when no other process holds it (`None` then).
    pub fn try_lead(&self, name: &str) -> Result<Option<std::fs::File>> {
        let Location::Sqlite { projections, .. } = &self.location else {
            return Ok(None);
        };
        let mut path = projections.clone().into_os_string();
        path.push(format!(".{name}.lead"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| {
                Error::Storage(format!(
                    "cannot open {}: {e}",
                    PathBuf::from(&path).display()
                ))
            })?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(Error::Storage(format!(
                "cannot lock {}: {e}",
                PathBuf::from(&path).display()
            ))),
        }
    }

    /// Runs `f` holding this process's turn on the projections (SQLite).
    pub fn in_turn<T>(&self, f: impl FnOnce() -> T) -> T {
        let _turn = self
            .turn
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
        f()
    }

    pub fn read_pool(&self, size: u32, timeout: Duration) -> Result<ReadPool> {
        let size = size.max(1);
        let pool_err = |e: r2d2::Error| Error::Storage(format!("cannot open the read pool: {e}"));
        Ok(match &self.location {
            Location::Sqlite { log, projections } => {
                let log = log.clone();
                let manager = SqliteConnectionManager::file(projections).with_init(move |c| {
                    c.busy_timeout(Duration::from_secs(10))?;
                    c.execute(
                        "ATTACH DATABASE ?1 AS src",
                        [log.to_string_lossy().as_ref()],
                    )?;
                    Ok(())
                });
                ReadPool::Sqlite(
                    r2d2::Pool::builder()
                        .max_size(size)
                        .min_idle(Some(1))
                        .connection_timeout(timeout)
                        .build(manager)
                        .map_err(pool_err)?,
                )
            }
            Location::Postgres(c) => ReadPool::Postgres(
                r2d2::Pool::builder()
                    .max_size(size)
                    .min_idle(Some(1))
                    .connection_timeout(timeout)
                    .build(PostgresConnectionManager::new(
                        (**c).clone(),
                        postgres::NoTls,
                    ))
                    .map_err(pool_err)?,
            ),
        })
    }
}

impl Store {
    /// Connections for keys and limits: on SQLite `keys.db` beside the log (so
    /// admissions never wait for the log writer's lock), committed as durably
    /// as the log; on PostgreSQL the same database as everything else.
    pub fn keys_pool(&self, size: u32, timeout: Duration) -> Result<ReadPool> {
        let Location::Sqlite { log, .. } = &self.location else {
            return self.read_pool(size, timeout);
        };
        let sync = match self.durability {
            Durability::Fsync => "FULL",
            Durability::Os => "NORMAL",
        };
        let manager =
            SqliteConnectionManager::file(log.with_file_name("keys.db")).with_init(move |c| {
                c.busy_timeout(Duration::from_secs(10))?;
                log::wal_pragmas(
                    c,
                    &format!("PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync};"),
                )
            });
        Ok(ReadPool::Sqlite(
            r2d2::Pool::builder()
                .max_size(size.max(1))
                .min_idle(Some(1))
                .connection_timeout(timeout)
                .build(manager)
                .map_err(|e| Error::Storage(format!("cannot open the keys pool: {e}")))?,
        ))
    }
}

/// The URL's `application_name`, or `inferd`: how an operator tells the
/// store's sessions apart in `pg_stat_activity`.
fn named(config: &postgres::Config) -> postgres::Config {
    let mut c = config.clone();
    if c.get_application_name().is_none() {
        c.application_name("inferd");
    }
    c
}

/// Pooled read connections.
#[derive(Clone)]
pub enum ReadPool {
    Sqlite(r2d2::Pool<SqliteConnectionManager>),
    Postgres(r2d2::Pool<PostgresConnectionManager<postgres::NoTls>>),
}

impl ReadPool {
    /// A pooled connection; `None` when none came within the pool's timeout.
    pub fn get(&self) -> Option<ReadConn> {
        match self {
            ReadPool::Sqlite(p) => p.get().ok().map(ReadConn::Sqlite),
            ReadPool::Postgres(p) => p.get().ok().map(ReadConn::Postgres),
        }
    }

    /// (connections, idle ones).
    pub fn state(&self) -> (u32, u32) {
        let s = match self {
            ReadPool::Sqlite(p) => p.state(),
            ReadPool::Postgres(p) => p.state(),
        };
        (s.connections, s.idle_connections)
    }
}

pub enum ReadConn {
    Sqlite(r2d2::PooledConnection<SqliteConnectionManager>),
    Postgres(r2d2::PooledConnection<PostgresConnectionManager<postgres::NoTls>>),
}

impl ReadConn {
    pub fn run<T>(&mut self, f: impl FnOnce(&mut dyn Tx) -> Result<T>) -> Result<T> {
        match self {
            ReadConn::Sqlite(c) => f(&mut Sqlite(c)),
            ReadConn::Postgres(c) => f(&mut PgRef(c)),
        }
    }
}
