//! The narrow SQL surface the projections are written against: run a statement,
//! read rows of plain values, inside a transaction the runner owns. Statements
//! use `$1, $2, …` placeholders in order of first use, which SQLite reads as
//! positional parameters and PostgreSQL as its own, so a projection's SQL is
//! written once.

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::ToSql;
use sha2::{Digest, Sha256};

use crate::Result;

/// A column value.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl Val {
    pub fn int(&self) -> Option<i64> {
        match self {
            Val::Int(v) => Some(*v),
            _ => None,
        }
    }

    pub fn text(&self) -> Option<&str> {
        match self {
            Val::Text(s) => Some(s),
            _ => None,
        }
    }

    pub fn blob(&self) -> Option<&[u8]> {
        match self {
            Val::Blob(b) => Some(b),
            _ => None,
        }
    }
}

impl From<i64> for Val {
    fn from(v: i64) -> Val {
        Val::Int(v)
    }
}

impl From<&str> for Val {
    fn from(v: &str) -> Val {
        Val::Text(v.to_owned())
    }
}

impl From<String> for Val {
    fn from(v: String) -> Val {
        Val::Text(v)
    }
}

impl From<Option<&str>> for Val {
    fn from(v: Option<&str>) -> Val {
        v.map_or(Val::Null, Val::from)
    }
}

impl From<Option<i64>> for Val {
    fn from(v: Option<i64>) -> Val {
        v.map_or(Val::Null, Val::Int)
    }
}

impl From<Vec<u8>> for Val {
    fn from(v: Vec<u8>) -> Val {
        Val::Blob(v)
    }
}

impl ToSql for Val {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Val::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Val::Int(v) => ToSqlOutput::Borrowed(ValueRef::Integer(*v)),
            Val::Real(v) => ToSqlOutput::Borrowed(ValueRef::Real(*v)),
            Val::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Val::Blob(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
        })
    }
}

fn from_ref(v: ValueRef<'_>) -> Val {
    match v {
        ValueRef::Null => Val::Null,
        ValueRef::Integer(i) => Val::Int(i),
        ValueRef::Real(r) => Val::Real(r),
        ValueRef::Text(t) => Val::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Val::Blob(b.to_vec()),
    }
}

/// Statements inside one transaction.
pub trait Tx {
    /// Runs one statement; the rows it changed.
    fn exec(&mut self, sql: &str, params: &[Val]) -> Result<usize>;
    /// Every row of a query, each a vector of its columns.
    fn rows(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Vec<Val>>>;
}

/// SQLite's side: a connection (inside a transaction the caller began).
pub struct Sqlite<'a>(pub &'a rusqlite::Connection);

impl Tx for Sqlite<'_> {
    fn exec(&mut self, sql: &str, params: &[Val]) -> Result<usize> {
        let mut stmt = self.0.prepare_cached(sql)?;
        Ok(stmt.execute(rusqlite::params_from_iter(params))?)
    }

    fn rows(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Vec<Val>>> {
        let mut stmt = self.0.prepare_cached(sql)?;
        let n = stmt.column_count();
        let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push((0..n).map(|i| from_ref(row.get_ref_unwrap(i))).collect());
        }
        Ok(out)
    }
}

/// SHA-256 over every row `sql` returns, in its order: two stores hold the same
/// state exactly when their digests of the same queries agree.
pub fn digest(tx: &mut dyn Tx, sql: &str) -> Result<String> {
    let mut h = Sha256::new();
    for row in tx.rows(sql, &[])? {
        for v in row {
            match v {
                Val::Null => h.update([0u8]),
                Val::Int(i) => {
                    h.update([1u8]);
                    h.update(i.to_le_bytes());
                }
                Val::Real(r) => {
                    h.update([2u8]);
                    h.update(r.to_le_bytes());
                }
                Val::Text(s) => {
                    h.update([3u8]);
                    h.update((s.len() as u64).to_le_bytes());
                    h.update(s.as_bytes());
                }
                Val::Blob(b) => {
                    h.update([4u8]);
                    h.update((b.len() as u64).to_le_bytes());
                    h.update(&b);
                }
            }
        }
        h.update([0xff]);
    }
    Ok(hex(&h.finalize()))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollar_placeholders_bind_by_position_in_sqlite() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let mut c = Sqlite(&conn);
        c.exec("CREATE TABLE t (a INTEGER, b TEXT)", &[]).unwrap();
        c.exec(
            "INSERT INTO t (a, b) VALUES ($1, $2)",
            &[Val::Int(7), "x".into()],
        )
        .unwrap();
        let rows = c
            .rows(
                "SELECT b, a FROM t WHERE a = $1 AND b = $2",
                &[Val::Int(7), "x".into()],
            )
            .unwrap();
        assert_eq!(rows, vec![vec![Val::from("x"), Val::Int(7)]]);
        let d1 = digest(&mut c, "SELECT * FROM t").unwrap();
        c.exec("UPDATE t SET b = 'y'", &[]).unwrap();
        assert_ne!(d1, digest(&mut c, "SELECT * FROM t").unwrap());
    }
}
