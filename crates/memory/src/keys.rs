//! API keys, rate limits and budgets, held by the state store so that every
//! gateway sharing it agrees.
//!
//! A key is stored as the SHA-256 of its secret (the secret is shown once, when
//! the key is made). A key, and the team it belongs to, may each carry limits:
//! requests and tokens per minute, and a budget in tokens and in cost per period
//! (hour, day, month, or in total). Every limit is checked before dispatch with
//! `>=`: a request is refused once what was used (settled usage plus what the
//! requests still running reserved) has *reached* the limit — 10 requests per
//! minute admit exactly 10.
//!
//! Admission is one transaction over the counter rows (`memory_spend`): each
//! row's `UPDATE … WHERE used < limit` both checks and reserves, so two
//! processes admitting against one budget on PostgreSQL take turns on the row
//! and cannot both pass a check the other already used up. A request reserves
//! an upper bound of its tokens (the prompt's bytes plus its `max_tokens`) and
//! of its cost (those tokens at the dearest tier's prices); when it ends the
//! reservation is replaced by what it used. So admitted usage can pass a
//! budget by at most the one request admitted while some of it was left.
//! Each finished request is then appended to the memory log as a usage entry
//! (namespace `#usage`, which no client can write), and the `usage` projection
//! keeps the ledger that spend is queried and exported from.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::log::LogWriter;
use crate::metrics::MemoryMetrics;
use crate::projection::Projection;
use crate::sql::{self, hex, Tx, Val};
use crate::store::ReadPool;
use crate::types::{Entry, Namespace, Op, Write};
use crate::{now_ms, Error, Result};

/// The log namespace usage entries are appended to; `Namespace::parse` refuses
/// `#`, so no client can write or read it as memory.
pub const LEDGER_NAMESPACE: &str = "#usage";

/// Nano-dollars per dollar: costs are counted in integers, so a budget's
/// boundary is exact.
pub const NANOS_PER_USD: f64 = 1e9;

/// The tables, created with the log's.
pub fn create(tx: &mut dyn Tx) -> Result<()> {
    for t in [
        "CREATE TABLE IF NOT EXISTS memory_keys (
            id TEXT PRIMARY KEY,
            hash TEXT NOT NULL UNIQUE,
            prefix TEXT NOT NULL,
            name TEXT NOT NULL,
            team TEXT,
            limits TEXT NOT NULL,
            created_ms BIGINT NOT NULL,
            revoked_ms BIGINT
        )",
        "CREATE TABLE IF NOT EXISTS memory_meta (
            name TEXT PRIMARY KEY,
            value TEXT NOT NULL
        )",
        "CREATE TABLE IF NOT EXISTS memory_teams (
            name TEXT PRIMARY KEY,
            limits TEXT NOT NULL,
            created_ms BIGINT NOT NULL
        )",
        "CREATE TABLE IF NOT EXISTS memory_spend (
            subject TEXT NOT NULL,
            span TEXT NOT NULL,
            start_s BIGINT NOT NULL,
            requests BIGINT NOT NULL,
            tokens BIGINT NOT NULL,
            cost_nanos BIGINT NOT NULL,
            reserved_tokens BIGINT NOT NULL,
            reserved_nanos BIGINT NOT NULL,
            PRIMARY KEY (subject, span, start_s)
        )",
    ] {
        tx.exec(t, &[])?;
    }
    Ok(())
}

/// How long a budget runs before it starts again (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Hour,
    Day,
    #[default]
    Month,
    /// Never starts again.
    Total,
}

impl Period {
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Hour => "hour",
            Period::Day => "day",
            Period::Month => "month",
            Period::Total => "total",
        }
    }

    /// The start of the period holding Unix second `t`, and of the next one
    /// (`None` for `total`).
    pub fn bounds(self, t: i64) -> (i64, Option<i64>) {
        match self {
            Period::Hour => (t - t.rem_euclid(3600), Some(t - t.rem_euclid(3600) + 3600)),
            Period::Day => (
                t - t.rem_euclid(86400),
                Some(t - t.rem_euclid(86400) + 86400),
            ),
            Period::Month => {
                let (y, m, _) = civil(t.div_euclid(86400));
                let next = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                (
                    days_from_civil(y, m, 1) * 86400,
                    Some(days_from_civil(next.0, next.1, 1) * 86400),
                )
            }
            Period::Total => (0, None),
        }
    }
}

/// (year, month, day) of a day count since 1970-01-01 (Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `2026-12-01T00:00:00Z` for Unix second `t`.
pub fn utc(t: i64) -> String {
    let (y, m, d) = civil(t.div_euclid(86400));
    let s = t.rem_euclid(86400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// What a key or a team may use. Every field is optional; none set is no limit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<i64>,
    /// Tokens (prompt + completion) per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<i64>,
    /// Tokens per `period`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_tokens: Option<i64>,
    /// Dollars per `period`, by the tiers' price table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_usd: Option<f64>,
    #[serde(default)]
    pub period: Period,
}

impl Limits {
    /// Parses and checks a `limits` object.
    pub fn from_json(v: serde_json::Value) -> Result<Limits> {
        let l: Limits = serde_json::from_value(v).map_err(|e| {
            Error::invalid(
                "limits",
                format!("`limits` takes rpm, tpm, budget_tokens, budget_usd and period (hour, day, month, total): {e}"),
            )
        })?;
        for (name, v) in [
            ("rpm", l.rpm),
            ("tpm", l.tpm),
            ("budget_tokens", l.budget_tokens),
        ] {
            if matches!(v, Some(n) if n < 0) {
                return Err(Error::invalid(
                    "limits",
                    format!("`limits.{name}` must be 0 or more"),
                ));
            }
        }
        if matches!(l.budget_usd, Some(d) if !d.is_finite() || !(0.0..=1e9).contains(&d)) {
            return Err(Error::invalid(
                "limits",
                "`limits.budget_usd` must be a number from 0 to 1e9",
            ));
        }
        Ok(l)
    }

    fn budget_nanos(&self) -> Option<i64> {
        self.budget_usd.map(|d| (d * NANOS_PER_USD).round() as i64)
    }

    fn rated(&self) -> bool {
        self.rpm.is_some() || self.tpm.is_some()
    }

    fn budgeted(&self) -> bool {
        self.budget_tokens.is_some() || self.budget_usd.is_some()
    }
}

/// A stored key, without its secret.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyRecord {
    pub id: String,
    /// The secret's first characters, to tell keys apart.
    pub prefix: String,
    pub name: String,
    pub team: Option<String>,
    pub limits: Limits,
    pub created_ms: i64,
    pub revoked_ms: Option<i64>,
}

/// A key just made: the only time its secret is seen.
#[derive(Debug, Clone, Serialize)]
pub struct NewKey {
    #[serde(flatten)]
    pub record: KeyRecord,
    pub key: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Team {
    pub name: String,
    pub limits: Limits,
    pub created_ms: i64,
}

/// Which limit refused a request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Refusal {
    /// `key` or `team`.
    pub scope: &'static str,
    /// The key's name or the team's.
    pub name: String,
    /// `rpm`, `tpm`, `budget_tokens` or `budget_usd`.
    pub limit: &'static str,
    /// The limit, what finished requests used, and what running ones
    /// reserved, in its unit.
    pub value: f64,
    pub used: f64,
    pub reserved: f64,
    /// `minute` for rates, else the budget's period.
    pub span: &'static str,
    /// Unix seconds when the span starts again (`None`: a total budget).
    pub resets_at: Option<i64>,
}

impl Refusal {
    /// A rate (429) rather than a budget (402).
    pub fn is_rate(&self) -> bool {
        matches!(self.limit, "rpm" | "tpm")
    }

    /// What finished requests used is still under the limit: requests still
    /// running hold the rest, and a retry once they end may pass (429).
    pub fn is_held(&self) -> bool {
        self.used < self.value
    }

    /// When to try again: when running requests may have ended, or when the
    /// span starts again (`None`: a total budget spent).
    pub fn retry_after_secs(&self) -> Option<u64> {
        if self.is_held() {
            return Some(1);
        }
        self.resets_at.map(|t| (t - now_ms() / 1000).max(1) as u64)
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (what, used, value) = match self.limit {
            "rpm" => (
                "requests per minute".to_owned(),
                format!("{}", self.used),
                format!("{}", self.value),
            ),
            "tpm" => (
                "tokens per minute".to_owned(),
                format!("{}", self.used),
                format!("{}", self.value),
            ),
            "budget_tokens" => (
                format!("token budget per {}", self.span),
                format!("{}", self.used),
                format!("{}", self.value),
            ),
            _ => (
                format!("cost budget per {}", self.span),
                format!("${:.6}", self.used),
                format!("${:.6}", self.value),
            ),
        };
        let what = what.replace("per total", "in total");
        if self.is_held() {
            let held = if self.limit == "budget_usd" {
                format!("${:.6}", self.reserved)
            } else {
                format!("{}", self.reserved)
            };
            return write!(
                f,
                "{} `{}` is at its limit `{}` while requests run: {used} used and {held} held by running requests, of {value} {what}; retry when they finish",
                self.scope, self.name, self.limit
            );
        }
        write!(
            f,
            "{} `{}` has reached its limit `{}`: {used} used of {value} {what}",
            self.scope, self.name, self.limit
        )?;
        match self.resets_at {
            Some(t) => write!(f, "; it resets at {}", utc(t)),
            None => write!(f, "; it does not reset"),
        }
    }
}

/// What a request holds between admission and its end.
#[derive(Debug, Clone)]
struct Hold {
    key_id: String,
    key_name: String,
    team: Option<String>,
    /// (subject, span, start) of every row it reserved on.
    rows: Vec<(String, &'static str, i64)>,
    /// The Redis hashes it reserved on.
    redis_keys: Vec<String>,
    tokens: i64,
    nanos: i64,
    model: String,
}

/// What a finished request used, as the ledger records it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cost_nanos: i64,
    /// The tier that answered (a gateway's route), when there was one.
    pub tier: Option<String>,
    /// HTTP status the request ended with.
    pub status: u16,
}

enum Settle {
    Done(Box<(Hold, Usage, String)>),
    /// The store is closing: settle what is queued, then end.
    Stop,
}

/// An admitted request. Dropping it settles: the reservation is replaced by
/// the usage recorded with [`Ticket::record`] (nothing recorded: the request
/// used nothing), and the usage is appended to the ledger — also when the
/// client went away or the request failed.
pub struct Ticket {
    hold: Option<Hold>,
    usage: Usage,
    id: String,
    settle: Sender<Settle>,
}

impl Ticket {
    /// What the request used so far (each call replaces the last).
    pub fn record(&mut self, usage: Usage) {
        self.usage = usage;
    }

    pub fn usage(&self) -> &Usage {
        &self.usage
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(hold) = self.hold.take() {
            let usage = std::mem::take(&mut self.usage);
            let _ = self.settle.send(Settle::Done(Box::new((
                hold,
                usage,
                std::mem::take(&mut self.id),
            ))));
        }
    }
}

/// Keys, limits and the counters, over the state store's pool.
pub struct Keys {
    pool: ReadPool,
    settle: Sender<Settle>,
    settled: Arc<AtomicU64>,
    redis: Option<Arc<RedisRates>>,
    metrics: Arc<MemoryMetrics>,
}

/// A fresh secret, `sk-inferd-` and 32 hex digits from the OS's generator.
fn secret() -> String {
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    format!("sk-inferd-{}", hex(&b))
}

pub fn hash(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

fn limits_of(v: &Val) -> Limits {
    v.text()
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default()
}

fn key_of(r: &[Val]) -> KeyRecord {
    KeyRecord {
        id: r[0].text().unwrap_or_default().to_owned(),
        prefix: r[1].text().unwrap_or_default().to_owned(),
        name: r[2].text().unwrap_or_default().to_owned(),
        team: r[3].text().map(str::to_owned),
        limits: limits_of(&r[4]),
        created_ms: r[5].int().unwrap_or_default(),
        revoked_ms: r[6].int(),
    }
}

const KEY_COLUMNS: &str = "id, prefix, name, team, limits, created_ms, revoked_ms";

fn check_name(field: &'static str, s: &str) -> Result<()> {
    let ok = |c: char| c.is_ascii_alphanumeric() || "_.-@:".contains(c);
    if s.is_empty() || s.len() > 64 || !s.chars().all(ok) {
        return Err(Error::invalid(
            field,
            format!("`{field}` must be 1-64 of A-Z a-z 0-9 _ . - @ :, got {s:?}"),
        ));
    }
    Ok(())
}

/// One counter row an admission checks: the limits that apply to it.
struct Check<'a> {
    scope: &'static str,
    name: &'a str,
    subject: String,
    span: &'static str,
    start: i64,
    resets_at: Option<i64>,
    /// (limit name, column expression, limit in its unit).
    limits: Vec<(&'static str, &'static str, i64)>,
}

/// The rows `l` is checked on: the minute's (rates) and the period's
/// (budgets) of `subject` (`key:ID` or `team:NAME`), reported as `name`.
fn checks<'a>(
    scope: &'static str,
    name: &'a str,
    subject: String,
    l: &Limits,
    now_s: i64,
) -> Vec<Check<'a>> {
    let mut out = Vec::new();
    if l.rated() {
        let start = now_s - now_s.rem_euclid(60);
        let mut limits = Vec::new();
        if let Some(n) = l.rpm {
            limits.push(("rpm", "requests", n));
        }
        if let Some(n) = l.tpm {
            limits.push(("tpm", "tokens + reserved_tokens", n));
        }
        out.push(Check {
            scope,
            name,
            subject: subject.clone(),
            span: "minute",
            start,
            resets_at: Some(start + 60),
            limits,
        });
    }
    if l.budgeted() {
        let (start, next) = l.period.bounds(now_s);
        let mut limits = Vec::new();
        if let Some(n) = l.budget_tokens {
            limits.push(("budget_tokens", "tokens + reserved_tokens", n));
        }
        if let Some(n) = l.budget_nanos() {
            limits.push(("budget_usd", "cost_nanos + reserved_nanos", n));
        }
        out.push(Check {
            scope,
            name,
            subject,
            span: l.period.as_str(),
            start,
            resets_at: next,
            limits,
        });
    }
    out
}

/// Checks and reserves on one row; `Err(Refusal)` names the limit reached.
fn reserve(
    tx: &mut dyn Tx,
    c: &Check<'_>,
    tokens: i64,
    nanos: i64,
) -> Result<std::result::Result<(), Refusal>> {
    tx.exec(
        "INSERT INTO memory_spend (subject, span, start_s, requests, tokens, cost_nanos, reserved_tokens, reserved_nanos) \
         VALUES ($1, $2, $3, 0, 0, 0, 0, 0) ON CONFLICT (subject, span, start_s) DO NOTHING",
        &[c.subject.as_str().into(), c.span.into(), Val::Int(c.start)],
    )?;
    // `used < limit` for every limit: refused once used has reached it.
    let mut sql = String::from(
        "UPDATE memory_spend SET requests = requests + 1, reserved_tokens = reserved_tokens + $1, \
         reserved_nanos = reserved_nanos + $2 WHERE subject = $3 AND span = $4 AND start_s = $5",
    );
    let mut params = vec![
        Val::Int(tokens),
        Val::Int(nanos),
        c.subject.as_str().into(),
        c.span.into(),
        Val::Int(c.start),
    ];
    for (_, column, limit) in &c.limits {
        params.push(Val::Int(*limit));
        sql.push_str(&format!(" AND {column} < ${}", params.len()));
    }
    if tx.exec(&sql, &params)? == 1 {
        return Ok(Ok(()));
    }
    let row = tx.rows(
        "SELECT requests, tokens, reserved_tokens, cost_nanos, reserved_nanos FROM memory_spend \
         WHERE subject = $1 AND span = $2 AND start_s = $3",
        &[c.subject.as_str().into(), c.span.into(), Val::Int(c.start)],
    )?;
    let col = |i: usize| row.first().and_then(|r| r[i].int()).unwrap_or(0);
    // (name, limit, settled, reserved) of the limit that refused.
    let (limit, value, settled, reserved) = c
        .limits
        .iter()
        .map(|(name, column, limit)| match *column {
            "requests" => (*name, *limit, col(0), 0),
            "cost_nanos + reserved_nanos" => (*name, *limit, col(3), col(4)),
            _ => (*name, *limit, col(1), col(2)),
        })
        .find(|(_, limit, settled, reserved)| settled + reserved >= *limit)
        .unwrap_or((c.limits[0].0, c.limits[0].2, c.limits[0].2, 0));
    let scale = if limit == "budget_usd" {
        NANOS_PER_USD
    } else {
        1.0
    };
    Ok(Err(Refusal {
        scope: c.scope,
        name: c.name.to_owned(),
        limit,
        value: value as f64 / scale,
        used: settled as f64 / scale,
        reserved: reserved as f64 / scale,
        span: c.span,
        resets_at: c.resets_at,
    }))
}

/// One group of [`Keys::spend`]'s answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpendRow {
    /// The grouping columns' values (`key`, `team`, `model`, `tier`, `day`).
    pub group: BTreeMap<String, Option<String>>,
    pub requests: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cost_usd: f64,
}

/// Filters and grouping of a spend query.
#[derive(Debug, Clone, Default)]
pub struct SpendQuery {
    /// Of `key`, `team`, `model`, `tier`, `day`.
    pub group_by: Vec<String>,
    pub key: Option<String>,
    pub team: Option<String>,
    pub model: Option<String>,
    /// Unix ms, inclusive / exclusive.
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
}

/// One ledger row, as exported.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LedgerRow {
    pub position: i64,
    pub at_ms: i64,
    pub key_id: String,
    pub key: String,
    pub team: Option<String>,
    pub model: String,
    pub tier: Option<String>,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cost_usd: f64,
    pub status: i64,
}

fn dimension(name: &str) -> Result<&'static str> {
    Ok(match name {
        "key" => "key_name",
        "team" => "team",
        "model" => "model",
        "tier" => "tier",
        "day" => "day",
        other => {
            return Err(Error::invalid(
                "group_by",
                format!("`group_by` takes key, team, model, tier and day, got {other:?}"),
            ))
        }
    })
}

impl SpendQuery {
    /// The WHERE clause and its parameters.
    fn filter(&self) -> (String, Vec<Val>) {
        let mut sql = String::from(" WHERE 1 = 1");
        let mut params = Vec::new();
        for (column, v) in [
            ("key_name", &self.key),
            ("team", &self.team),
            ("model", &self.model),
        ] {
            if let Some(v) = v {
                params.push(Val::from(v.as_str()));
                sql.push_str(&format!(" AND {column} = ${}", params.len()));
            }
        }
        for (op, v) in [(">=", self.from_ms), ("<", self.to_ms)] {
            if let Some(v) = v {
                params.push(Val::Int(v));
                sql.push_str(&format!(" AND at_ms {op} ${}", params.len()));
            }
        }
        (sql, params)
    }
}

impl Keys {
    /// Starts the settling thread; usage goes to the ledger through `writer`.
    pub(crate) fn start(
        pool: ReadPool,
        writer: LogWriter,
        redis: Option<Arc<RedisRates>>,
        metrics: Arc<MemoryMetrics>,
    ) -> Result<(Keys, std::thread::JoinHandle<()>)> {
        let (settle, rx) = std::sync::mpsc::channel();
        let settled = Arc::new(AtomicU64::new(0));
        let thread = {
            let (pool, settled, redis, m) = (
                pool.clone(),
                Arc::clone(&settled),
                redis.clone(),
                Arc::clone(&metrics),
            );
            std::thread::Builder::new()
                .name("memory-settle".into())
                .spawn(move || settle_loop(rx, pool, writer, settled, redis, m))
                .map_err(|e| Error::Storage(format!("cannot start the usage settler: {e}")))?
        };
        Ok((
            Keys {
                pool,
                settle,
                settled,
                redis,
                metrics,
            },
            thread,
        ))
    }

    /// Refreshes the pools' gauges.
    pub(crate) fn refresh_metrics(&self) {
        let m = &self.metrics;
        let (connections, idle) = self.pool.state();
        m.keys_pool_idle.set(idle as i64);
        m.keys_pool_in_use
            .set(connections.saturating_sub(idle) as i64);
        if let Some(r) = &self.redis {
            let s = r.pool.state();
            m.redis_pool_idle.set(s.idle_connections as i64);
            m.redis_pool_in_use
                .set(s.connections.saturating_sub(s.idle_connections) as i64);
        }
    }

    /// Where the per-minute counters are kept: `store` or `redis`.
    pub fn rates_in(&self) -> &'static str {
        if self.redis.is_some() {
            "redis"
        } else {
            "store"
        }
    }

    /// Settles what is queued and ends the settling thread (tickets dropped
    /// later keep their reservations).
    pub(crate) fn stop(&self) {
        let _ = self.settle.send(Settle::Stop);
    }

    /// Requests settled so far by this process.
    pub fn settled(&self) -> u64 {
        self.settled.load(Ordering::Relaxed)
    }

    /// Runs `f` on a pooled connection, off the async threads.
    async fn on_pool<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn Tx) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (pool, m) = (self.pool.clone(), Arc::clone(&self.metrics));
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            m.keys_pool_pending.inc();
            let conn = pool.get();
            m.keys_pool_pending.dec();
            m.keys_pool_wait_seconds
                .observe(started.elapsed().as_secs_f64());
            let mut conn = conn.ok_or_else(|| {
                m.keys_pool_timeouts.inc();
                Error::PoolTimeout(5000)
            })?;
            conn.run(f)
        })
        .await
        .map_err(|e| Error::Storage(format!("a keys task failed: {e}")))?
    }

    /// Makes a key; the answer holds its secret, which is stored only hashed.
    pub async fn create_key(
        &self,
        name: String,
        team: Option<String>,
        limits: Limits,
    ) -> Result<NewKey> {
        check_name("name", &name)?;
        if let Some(t) = &team {
            check_name("team", t)?;
        }
        let key = secret();
        let mut id = [0u8; 8];
        rand::rngs::OsRng.fill_bytes(&mut id);
        let record = KeyRecord {
            id: format!("key_{}", hex(&id)),
            prefix: key[..14].to_owned(),
            name,
            team,
            limits,
            created_ms: now_ms(),
            revoked_ms: None,
        };
        let (r, hashed) = (record.clone(), hash(&key));
        self.on_pool(move |tx| {
            if !tx
                .rows(
                    "SELECT id FROM memory_keys WHERE name = $1 AND revoked_ms IS NULL",
                    &[r.name.as_str().into()],
                )?
                .is_empty()
            {
                return Err(Error::invalid(
                    "name",
                    format!("a live key is already named `{}`; revoke it first or pick another name", r.name),
                ));
            }
            tx.exec(
                "INSERT INTO memory_keys (id, hash, prefix, name, team, limits, created_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    r.id.as_str().into(),
                    hashed.into(),
                    r.prefix.as_str().into(),
                    r.name.as_str().into(),
                    r.team.as_deref().into(),
                    serde_json::to_string(&r.limits).expect("limits serialize").into(),
                    Val::Int(r.created_ms),
                ],
            )?;
            Ok(())
        })
        .await?;
        Ok(NewKey { record, key })
    }

    /// The live key whose secret is `secret`.
    pub async fn lookup(&self, secret: &str) -> Result<Option<KeyRecord>> {
        let hashed = hash(secret);
        self.on_pool(move |tx| {
            Ok(tx
                .rows(
                    &format!("SELECT {KEY_COLUMNS} FROM memory_keys WHERE hash = $1 AND revoked_ms IS NULL"),
                    &[hashed.into()],
                )?
                .first()
                .map(|r| key_of(r)))
        })
        .await
    }

    pub async fn keys(&self) -> Result<Vec<KeyRecord>> {
        self.on_pool(|tx| {
            Ok(tx
                .rows(
                    &format!("SELECT {KEY_COLUMNS} FROM memory_keys ORDER BY created_ms, id"),
                    &[],
                )?
                .iter()
                .map(|r| key_of(r))
                .collect())
        })
        .await
    }

    pub async fn key(&self, id: &str) -> Result<KeyRecord> {
        let id = id.to_owned();
        self.on_pool(move |tx| {
            tx.rows(
                &format!("SELECT {KEY_COLUMNS} FROM memory_keys WHERE id = $1"),
                &[id.as_str().into()],
            )?
            .first()
            .map(|r| key_of(r))
            .ok_or_else(|| Error::NotFound(format!("there is no key `{id}`")))
        })
        .await
    }

    /// Revokes key `id`: from now on it is refused (401).
    pub async fn revoke(&self, id: &str) -> Result<KeyRecord> {
        let id2 = id.to_owned();
        self.on_pool(move |tx| {
            tx.exec(
                "UPDATE memory_keys SET revoked_ms = $1 WHERE id = $2 AND revoked_ms IS NULL",
                &[Val::Int(now_ms()), id2.as_str().into()],
            )?;
            Ok(())
        })
        .await?;
        self.key(id).await
    }

    /// Sets (making or replacing) the limits of team `name`.
    pub async fn set_team(&self, name: String, limits: Limits) -> Result<Team> {
        check_name("team", &name)?;
        let json = serde_json::to_string(&limits).expect("limits serialize");
        let n = name.clone();
        let created_ms = self
            .on_pool(move |tx| {
                let now = now_ms();
                tx.exec(
                    "INSERT INTO memory_teams (name, limits, created_ms) VALUES ($1, $2, $3) \
                     ON CONFLICT (name) DO UPDATE SET limits = excluded.limits",
                    &[n.as_str().into(), json.into(), Val::Int(now)],
                )?;
                Ok(tx
                    .rows(
                        "SELECT created_ms FROM memory_teams WHERE name = $1",
                        &[n.as_str().into()],
                    )?
                    .first()
                    .and_then(|r| r[0].int())
                    .unwrap_or(now))
            })
            .await?;
        Ok(Team {
            name,
            limits,
            created_ms,
        })
    }

    pub async fn teams(&self) -> Result<Vec<Team>> {
        self.on_pool(|tx| {
            Ok(tx
                .rows(
                    "SELECT name, limits, created_ms FROM memory_teams ORDER BY name",
                    &[],
                )?
                .iter()
                .map(|r| Team {
                    name: r[0].text().unwrap_or_default().to_owned(),
                    limits: limits_of(&r[1]),
                    created_ms: r[2].int().unwrap_or_default(),
                })
                .collect())
        })
        .await
    }

    /// Checks every limit of `key` and its team and reserves `tokens` and
    /// `nanos` against them, in one transaction: a [`Ticket`], or the limit
    /// that refused (nothing reserved then).
    pub async fn admit(
        &self,
        key: &KeyRecord,
        model: &str,
        tokens: i64,
        nanos: i64,
    ) -> Result<std::result::Result<Ticket, Refusal>> {
        let started = std::time::Instant::now();
        let out = self.admit_timed(key, model, tokens, nanos).await;
        let m = &self.metrics;
        m.admission_seconds.observe(started.elapsed().as_secs_f64());
        let result = match &out {
            Ok(Ok(_)) => "admitted",
            Ok(Err(r)) if r.is_rate() => "rate_limited",
            Ok(Err(r)) if r.is_held() => "budget_held",
            Ok(Err(_)) => "budget_exceeded",
            Err(_) => "error",
        };
        m.admissions.with_label_values(&[result]).inc();
        out
    }

    async fn admit_timed(
        &self,
        key: &KeyRecord,
        model: &str,
        tokens: i64,
        nanos: i64,
    ) -> Result<std::result::Result<Ticket, Refusal>> {
        let key = key.clone();
        let now_s = now_ms() / 1000;
        let redis = self.redis.clone();
        let held = self
            .on_pool(move |tx| {
                let team = match &key.team {
                    None => None,
                    Some(t) => tx
                        .rows(
                            "SELECT limits FROM memory_teams WHERE name = $1",
                            &[t.as_str().into()],
                        )?
                        .first()
                        .map(|r| limits_of(&r[0])),
                };
                let mut all = checks(
                    "key",
                    &key.name,
                    format!("key:{}", key.id),
                    &key.limits,
                    now_s,
                );
                if let (Some(t), Some(name)) = (&team, &key.team) {
                    all.extend(checks("team", name, format!("team:{name}"), t, now_s));
                }
                // With Redis, the minute's rows are there, checked first.
                let (rated, all): (Vec<Check<'_>>, Vec<Check<'_>>) = match &redis {
                    Some(_) => all.into_iter().partition(|c| c.span == "minute"),
                    None => (Vec::new(), all),
                };
                let mut redis_keys = Vec::new();
                if let (Some(r), false) = (&redis, rated.is_empty()) {
                    match r.reserve(&rated, tokens)? {
                        Ok(keys) => redis_keys = keys,
                        Err(refusal) => return Ok(Err(refusal)),
                    }
                }
                if all.is_empty() {
                    return Ok(Ok((key, Vec::new(), redis_keys)));
                }
                let mut refused = None;
                let outcome = sql::in_transaction(tx, |tx| {
                    for c in &all {
                        if let Err(r) = reserve(tx, c, tokens, nanos)? {
                            refused = Some(r);
                            // Rolls back what the others reserved.
                            return Err(Error::Closed);
                        }
                    }
                    Ok(())
                });
                let release = |keys: &[String]| {
                    if let Some(r) = &redis {
                        r.settle(keys, 0, tokens, true);
                    }
                };
                match (outcome, refused) {
                    (_, Some(r)) => {
                        release(&redis_keys);
                        Ok(Err(r))
                    }
                    (Err(e), None) => {
                        release(&redis_keys);
                        Err(e)
                    }
                    (Ok(()), None) => {
                        let rows = all
                            .iter()
                            .map(|c| (c.subject.clone(), c.span, c.start))
                            .collect();
                        Ok(Ok((key, rows, redis_keys)))
                    }
                }
            })
            .await?;
        Ok(held.map(|(key, rows, redis_keys)| {
            let mut id = [0u8; 12];
            rand::rngs::OsRng.fill_bytes(&mut id);
            Ticket {
                hold: Some(Hold {
                    key_id: key.id,
                    key_name: key.name,
                    team: key.team,
                    rows,
                    redis_keys,
                    tokens,
                    nanos,
                    model: model.to_owned(),
                }),
                usage: Usage::default(),
                id: hex(&id),
                settle: self.settle.clone(),
            }
        }))
    }

    /// What each counter row of `subject` (`key:NAME`, `team:NAME`) holds now;
    /// with Redis rates, the current minute's counters there too (`"in":
    /// "redis"`).
    pub async fn counters(&self, subject: String) -> Result<Vec<serde_json::Value>> {
        let redis = self.redis.clone();
        self.on_pool(move |tx| {
            let mut out = Vec::new();
            if let Some(r) = redis {
                let now_s = now_ms() / 1000;
                let start = now_s - now_s.rem_euclid(60);
                let (requests, tokens, reserved) = r.minute(&subject, start)?;
                out.push(serde_json::json!({
                    "span": "minute",
                    "in": "redis",
                    "start": utc(start),
                    "requests": requests,
                    "tokens": tokens,
                    "reserved_tokens": reserved,
                }));
            }
            out.extend(tx
                .rows(
                    "SELECT span, start_s, requests, tokens, cost_nanos, reserved_tokens, reserved_nanos \
                     FROM memory_spend WHERE subject = $1 ORDER BY span, start_s DESC",
                    &[subject.into()],
                )?
                .iter()
                .map(|r| {
                    let int = |i: usize| r[i].int().unwrap_or_default();
                    serde_json::json!({
                        "span": r[0].text(),
                        "start": utc(int(1)),
                        "requests": int(2),
                        "tokens": int(3),
                        "cost_usd": int(4) as f64 / NANOS_PER_USD,
                        "reserved_tokens": int(5),
                        "reserved_usd": int(6) as f64 / NANOS_PER_USD,
                    })
                }));
            Ok(out)
        })
        .await
    }

    /// Spend from the ledger, grouped and filtered.
    pub async fn spend(&self, q: SpendQuery, reads: ReadPool) -> Result<Vec<SpendRow>> {
        let dims: Vec<(String, &'static str)> = q
            .group_by
            .iter()
            .map(|g| dimension(g).map(|c| (g.clone(), c)))
            .collect::<Result<_>>()?;
        tokio::task::spawn_blocking(move || {
            let mut conn = reads.get().ok_or(Error::PoolTimeout(5000))?;
            conn.run(|tx| {
                let day = "(at_ms / 86400000)";
                let cols: Vec<String> = dims
                    .iter()
                    .map(|(_, c)| {
                        if *c == "day" {
                            day.to_owned()
                        } else {
                            (*c).to_owned()
                        }
                    })
                    .collect();
                let (filter, params) = q.filter();
                let select = if cols.is_empty() {
                    String::new()
                } else {
                    format!("{}, ", cols.join(", "))
                };
                let group = if cols.is_empty() {
                    String::new()
                } else {
                    format!(" GROUP BY {0} ORDER BY {0}", cols.join(", "))
                };
                let sql = format!(
                    "SELECT {select}COUNT(*), CAST(COALESCE(SUM(prompt_tokens), 0) AS BIGINT), \
                     CAST(COALESCE(SUM(completion_tokens), 0) AS BIGINT), \
                     CAST(COALESCE(SUM(cost_nanos), 0) AS BIGINT) FROM memory_usage{filter}{group}"
                );
                let n = dims.len();
                Ok(tx
                    .rows(&sql, &params)?
                    .iter()
                    .filter(|r| n > 0 || r[0].int().unwrap_or(0) > 0)
                    .map(|r| SpendRow {
                        group: dims
                            .iter()
                            .zip(r)
                            .map(|((name, c), v)| {
                                let v = match (*c, v) {
                                    ("day", Val::Int(d)) => Some(utc(d * 86400)[..10].to_owned()),
                                    (_, Val::Text(s)) => Some(s.clone()),
                                    _ => None,
                                };
                                (name.clone(), v)
                            })
                            .collect(),
                        requests: r[n].int().unwrap_or(0),
                        prompt_tokens: r[n + 1].int().unwrap_or(0),
                        completion_tokens: r[n + 2].int().unwrap_or(0),
                        cost_usd: r[n + 3].int().unwrap_or(0) as f64 / NANOS_PER_USD,
                    })
                    .collect())
            })
        })
        .await
        .map_err(|e| Error::Storage(format!("a spend task failed: {e}")))?
    }

    /// The ledger's rows in order, filtered as `q` says (its grouping unused).
    pub async fn ledger(&self, q: SpendQuery, reads: ReadPool) -> Result<Vec<LedgerRow>> {
        tokio::task::spawn_blocking(move || {
            let mut conn = reads.get().ok_or(Error::PoolTimeout(5000))?;
            conn.run(|tx| {
                let (filter, params) = q.filter();
                Ok(tx
                    .rows(
                        &format!(
                            "SELECT gseq, at_ms, key_id, key_name, team, model, tier, prompt_tokens, completion_tokens, \
                             cost_nanos, status FROM memory_usage{filter} ORDER BY gseq"
                        ),
                        &params,
                    )?
                    .iter()
                    .map(|r| LedgerRow {
                        position: r[0].int().unwrap_or(0),
                        at_ms: r[1].int().unwrap_or(0),
                        key_id: r[2].text().unwrap_or_default().to_owned(),
                        key: r[3].text().unwrap_or_default().to_owned(),
                        team: r[4].text().map(str::to_owned),
                        model: r[5].text().unwrap_or_default().to_owned(),
                        tier: r[6].text().map(str::to_owned),
                        prompt_tokens: r[7].int().unwrap_or(0),
                        completion_tokens: r[8].int().unwrap_or(0),
                        cost_usd: r[9].int().unwrap_or(0) as f64 / NANOS_PER_USD,
                        status: r[10].int().unwrap_or(0),
                    })
                    .collect())
            })
        })
        .await
        .map_err(|e| Error::Storage(format!("a ledger task failed: {e}")))?
    }
}

/// How often old per-minute rows are swept (in settled requests).
const SWEEP_EVERY: u64 = 512;

/// Requests settled in one transaction at most.
const SETTLE_BATCH: usize = 256;

fn settle_loop(
    rx: Receiver<Settle>,
    pool: ReadPool,
    writer: LogWriter,
    settled: Arc<AtomicU64>,
    redis: Option<Arc<RedisRates>>,
    metrics: Arc<MemoryMetrics>,
) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime builds");
    let mut stopping = false;
    loop {
        // Whatever is queued settles together: one transaction for the
        // counters, one group commit for the ledger.
        let mut batch = Vec::new();
        while batch.len() < SETTLE_BATCH {
            let next = if stopping || !batch.is_empty() {
                rx.try_recv().ok()
            } else {
                rx.recv().ok()
            };
            match next {
                None => break,
                Some(Settle::Stop) => stopping = true,
                Some(Settle::Done(done)) => batch.push(*done),
            }
        }
        if batch.is_empty() {
            break;
        }
        settle_counters(&pool, &batch);
        if let Some(r) = &redis {
            for (hold, usage, _) in &batch {
                let used = usage.prompt_tokens + usage.completion_tokens;
                r.settle(&hold.redis_keys, used, hold.tokens, false);
            }
        }
        metrics.settled.inc_by(batch.len() as u64);
        let before = settled.fetch_add(batch.len() as u64, Ordering::Relaxed);
        if before / SWEEP_EVERY != (before + batch.len() as u64) / SWEEP_EVERY {
            if let Some(mut c) = pool.get() {
                let _ = c.run(|tx| {
                    tx.exec(
                        "DELETE FROM memory_spend WHERE span = 'minute' AND start_s < $1 AND reserved_tokens = 0",
                        &[Val::Int(now_ms() / 1000 - 300)],
                    )
                });
            }
        }
        append_usage(&rt, &writer, batch);
    }
}

/// Replaces the batch's reservations by its usage, summed per counter row and
/// taken in the order admissions take rows (a key's before its team's, each
/// subject's minute before its period), so a settlement and an admission
/// never wait for each other in a cycle. Retried while the store is away (a
/// restarting PostgreSQL), with a bound: a reservation left would hold its
/// limit until the period ends.
fn settle_counters(pool: &ReadPool, batch: &[(Hold, Usage, String)]) {
    let mut rows: BTreeMap<(String, bool, &'static str, i64), [i64; 4]> = BTreeMap::new();
    for (hold, usage, _) in batch {
        for (subject, span, start) in &hold.rows {
            let r = rows
                .entry((subject.clone(), *span != "minute", *span, *start))
                .or_default();
            r[0] += usage.prompt_tokens + usage.completion_tokens;
            r[1] += usage.cost_nanos;
            r[2] += hold.tokens;
            r[3] += hold.nanos;
        }
    }
    if rows.is_empty() {
        return;
    }
    for tries in 0.. {
        let result = pool.get().ok_or(Error::PoolTimeout(5000)).and_then(|mut c| {
            c.run(|tx| {
                sql::in_transaction(tx, |tx| {
                    for ((subject, _, span, start), [used, cost, tokens, nanos]) in &rows {
                        tx.exec(
                            "UPDATE memory_spend SET tokens = tokens + $1, cost_nanos = cost_nanos + $2, \
                             reserved_tokens = reserved_tokens - $3, reserved_nanos = reserved_nanos - $4 \
                             WHERE subject = $5 AND span = $6 AND start_s = $7",
                            &[
                                Val::Int(*used),
                                Val::Int(*cost),
                                Val::Int(*tokens),
                                Val::Int(*nanos),
                                subject.as_str().into(),
                                (*span).into(),
                                Val::Int(*start),
                            ],
                        )?;
                    }
                    Ok(())
                })
            })
        });
        match result {
            Ok(()) => return,
            Err(e) if tries < 50 => {
                tracing::warn!(error = %e, requests = batch.len(), "settling usage failed; retrying");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => {
                tracing::error!(error = %e, requests = batch.len(), "reservations could not be settled");
                return;
            }
        }
    }
}

/// The batch's ledger entries, appended together (the log commits them as one
/// group) and retried — under each request's idempotency key, so never twice —
/// while the log is full or unreachable.
fn append_usage(
    rt: &tokio::runtime::Runtime,
    writer: &LogWriter,
    batch: Vec<(Hold, Usage, String)>,
) {
    let mut pending: Vec<Write> = batch
        .into_iter()
        .map(|(hold, usage, id)| Write {
            namespace: Namespace::ledger(),
            op: Op::Put,
            target: None,
            kind: "usage".into(),
            key: None,
            content: serde_json::json!({
                "key_id": hold.key_id,
                "key": hold.key_name,
                "team": hold.team,
                "model": hold.model,
                "tier": usage.tier,
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "cost_nanos": usage.cost_nanos,
                "status": usage.status,
            })
            .to_string(),
            metadata: Some(serde_json::Map::new()),
            idempotency_key: Some(id),
        })
        .collect();
    for attempt in 0..50 {
        let results = rt.block_on(async {
            let tasks: Vec<_> = pending
                .iter()
                .map(|w| {
                    let (writer, w) = (writer.clone(), w.clone());
                    tokio::spawn(async move { writer.append(w).await })
                })
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap_or(Err(Error::Closed)));
            }
            out
        });
        let mut again = Vec::new();
        for (w, r) in pending.into_iter().zip(results) {
            match r {
                Ok(_) => {}
                Err(Error::Closed) => {
                    tracing::error!("the log closed before a request's usage reached the ledger");
                }
                Err(e) => {
                    if attempt == 0 {
                        tracing::warn!(error = %e, "appending usage to the ledger failed; retrying");
                    }
                    again.push(w);
                }
            }
        }
        if again.is_empty() {
            return;
        }
        pending = again;
        std::thread::sleep(Duration::from_millis(100));
    }
    tracing::error!(
        requests = pending.len(),
        "usage could not be appended to the ledger"
    );
}

/// Checks and reserves on every minute row at once, or refuses.
const REDIS_RESERVE: &str = r"
local reserve = tonumber(ARGV[1])
for i = 1, #KEYS do
  local rpm, tpm = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local v = redis.call('HMGET', KEYS[i], 'requests', 'tokens', 'reserved')
  local req, tok, res = tonumber(v[1] or '0'), tonumber(v[2] or '0'), tonumber(v[3] or '0')
  if rpm >= 0 and req >= rpm then return {i, 1, req, 0} end
  if tpm >= 0 and tok + res >= tpm then return {i, 2, tok, res} end
end
for i = 1, #KEYS do
  redis.call('HINCRBY', KEYS[i], 'requests', 1)
  redis.call('HINCRBY', KEYS[i], 'reserved', reserve)
  redis.call('EXPIRE', KEYS[i], 180)
end
return {0, 0, 0, 0}
";

/// The per-minute counters in Redis (`--limits redis://…`), for replicas
/// that share rates without a round trip to the state store: one hash per
/// subject and minute, checked and reserved by one script (Redis runs a
/// script alone, so the check and the reservation are atomic), expiring after
/// three minutes.
pub struct RedisRates {
    pool: r2d2::Pool<redis::Client>,
    /// `inferd:<the store's id>:`, so stores sharing one Redis stay apart and
    /// replicas of one store meet.
    prefix: String,
    script: redis::Script,
}

impl RedisRates {
    /// Connects to `url`, keys prefixed by the store's id.
    pub fn connect(url: &str, store_id: &str) -> Result<RedisRates> {
        let client = redis::Client::open(url).map_err(|e| {
            Error::invalid("limits", format!("`limits` is not a valid Redis URL: {e}"))
        })?;
        let pool = r2d2::Pool::builder()
            .max_size(8)
            .min_idle(Some(1))
            .connection_timeout(Duration::from_secs(3))
            .build(client)
            .map_err(|e| Error::Storage(format!("cannot reach Redis at {url}: {e}")))?;
        Ok(RedisRates {
            pool,
            prefix: format!("inferd:{store_id}:"),
            script: redis::Script::new(REDIS_RESERVE),
        })
    }

    fn conn(&self) -> Result<r2d2::PooledConnection<redis::Client>> {
        self.pool.get().map_err(|e| {
            Error::Unavailable(format!(
                "the rate-limit counters (Redis) are unreachable: {e}"
            ))
        })
    }

    /// The requests, tokens and reserved tokens of `subject`'s minute
    /// starting at `start` (zeros before the first request).
    fn minute(&self, subject: &str, start: i64) -> Result<(i64, i64, i64)> {
        let key = format!("{}{subject}:{start}", self.prefix);
        let v: Vec<Option<i64>> = redis::cmd("HMGET")
            .arg(&key)
            .arg("requests")
            .arg("tokens")
            .arg("reserved")
            .query(&mut *self.conn()?)
            .map_err(|e| {
                Error::Unavailable(format!("the rate-limit counters (Redis) failed: {e}"))
            })?;
        let at = |i: usize| v.get(i).copied().flatten().unwrap_or(0);
        Ok((at(0), at(1), at(2)))
    }

    /// Reserves on every row, or names the limit that refused (nothing
    /// reserved then): the hashes it reserved on.
    fn reserve(
        &self,
        rows: &[Check<'_>],
        tokens: i64,
    ) -> Result<std::result::Result<Vec<String>, Refusal>> {
        let keys: Vec<String> = rows
            .iter()
            .map(|c| format!("{}{}:{}", self.prefix, c.subject, c.start))
            .collect();
        let mut inv = self.script.prepare_invoke();
        inv.arg(tokens);
        for (k, c) in keys.iter().zip(rows) {
            let limit = |name: &str| c.limits.iter().find(|l| l.0 == name).map_or(-1, |l| l.2);
            inv.key(k).arg(limit("rpm")).arg(limit("tpm"));
        }
        let mut conn = self.conn()?;
        let out: Vec<i64> = inv.invoke(&mut *conn).map_err(|e| {
            Error::Unavailable(format!("the rate-limit counters (Redis) failed: {e}"))
        })?;
        let [i, which, settled, reserved] = out[..] else {
            return Err(Error::Storage(format!(
                "Redis answered {out:?} to the limits script"
            )));
        };
        if i == 0 {
            return Ok(Ok(keys));
        }
        let c = &rows[(i - 1) as usize];
        let limit = if which == 1 { "rpm" } else { "tpm" };
        let value = c.limits.iter().find(|l| l.0 == limit).map_or(0, |l| l.2);
        Ok(Err(Refusal {
            scope: c.scope,
            name: c.name.to_owned(),
            limit,
            value: value as f64,
            used: settled as f64,
            reserved: reserved as f64,
            span: c.span,
            resets_at: c.resets_at,
        }))
    }

    /// Replaces a reservation of `reserved` tokens by `used`; `release`: the
    /// request was refused after all, so it does not count either.
    fn settle(&self, keys: &[String], used: i64, reserved: i64, release: bool) {
        if keys.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for k in keys {
            pipe.hincr(k, "tokens", used).ignore();
            pipe.hincr(k, "reserved", -reserved).ignore();
            if release {
                pipe.hincr(k, "requests", -1).ignore();
            }
        }
        let done = self.conn().and_then(|mut c| {
            pipe.exec(&mut *c)
                .map_err(|e| Error::Unavailable(e.to_string()))
        });
        if let Err(e) = done {
            // The hash expires with its minute: the reservation goes then.
            tracing::warn!(error = %e, "settling rate-limit counters in Redis failed");
        }
    }
}

/// The store's id, made once: what replicas sharing the store agree on.
pub fn store_id(tx: &mut dyn Tx) -> Result<String> {
    let mut b = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut b);
    tx.exec(
        "INSERT INTO memory_meta (name, value) VALUES ('store_id', $1) ON CONFLICT (name) DO NOTHING",
        &[hex(&b).into()],
    )?;
    tx.rows("SELECT value FROM memory_meta WHERE name = 'store_id'", &[])?
        .first()
        .and_then(|r| r[0].text().map(str::to_owned))
        .ok_or_else(|| Error::Storage("the store has no id".into()))
}

/// `usage`: the ledger — one row per finished request of a key, from the log's
/// usage entries.
pub struct UsageLedger;

impl Projection for UsageLedger {
    fn name(&self) -> &'static str {
        "usage"
    }

    fn wants(&self, e: &Entry) -> bool {
        e.namespace == LEDGER_NAMESPACE
    }

    fn create(&self, tx: &mut dyn Tx) -> Result<()> {
        tx.exec(
            "CREATE TABLE IF NOT EXISTS memory_usage (
                gseq BIGINT PRIMARY KEY,
                at_ms BIGINT NOT NULL,
                key_id TEXT NOT NULL,
                key_name TEXT NOT NULL,
                team TEXT,
                model TEXT NOT NULL,
                tier TEXT,
                prompt_tokens BIGINT NOT NULL,
                completion_tokens BIGINT NOT NULL,
                cost_nanos BIGINT NOT NULL,
                status BIGINT NOT NULL
            )",
            &[],
        )?;
        tx.exec(
            "CREATE INDEX IF NOT EXISTS usage_at ON memory_usage (at_ms)",
            &[],
        )?;
        Ok(())
    }

    fn apply(&mut self, tx: &mut dyn Tx, entries: &[Entry]) -> Result<()> {
        for e in entries {
            let v: serde_json::Value = serde_json::from_str(&e.content).unwrap_or_default();
            let text = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
            let int = |k: &str| v.get(k).and_then(|x| x.as_i64()).unwrap_or(0);
            tx.exec(
                "INSERT INTO memory_usage (gseq, at_ms, key_id, key_name, team, model, tier, prompt_tokens, \
                 completion_tokens, cost_nanos, status) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                &[
                    Val::Int(e.gseq),
                    Val::Int(e.at_ms),
                    text("key_id").unwrap_or_default().into(),
                    text("key").unwrap_or_default().into(),
                    text("team").as_deref().into(),
                    text("model").unwrap_or_default().into(),
                    text("tier").as_deref().into(),
                    Val::Int(int("prompt_tokens")),
                    Val::Int(int("completion_tokens")),
                    Val::Int(int("cost_nanos")),
                    Val::Int(int("status")),
                ],
            )?;
        }
        Ok(())
    }

    fn state_queries(&self) -> Vec<&'static str> {
        vec!["SELECT * FROM memory_usage ORDER BY gseq"]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_start_on_utc_boundaries() {
        // 2026-12-03T11:39:00Z
        let t = 1_796_297_940;
        assert_eq!(utc(t), "2026-12-03T11:39:00Z");
        let (s, n) = Period::Hour.bounds(t);
        assert_eq!(
            (utc(s), utc(n.unwrap())),
            ("2026-12-03T11:00:00Z".into(), "2026-12-03T12:00:00Z".into())
        );
        let (s, n) = Period::Day.bounds(t);
        assert_eq!(
            (utc(s), utc(n.unwrap())),
            ("2026-12-03T00:00:00Z".into(), "2026-12-04T00:00:00Z".into())
        );
        let (s, n) = Period::Month.bounds(t);
        assert_eq!(
            (utc(s), utc(n.unwrap())),
            ("2026-12-01T00:00:00Z".into(), "2027-01-01T00:00:00Z".into())
        );
        let (s, n) = Period::Month.bounds(days_from_civil(2028, 2, 29) * 86400 + 5);
        assert_eq!(
            (utc(s), utc(n.unwrap())),
            ("2028-02-01T00:00:00Z".into(), "2028-03-01T00:00:00Z".into())
        );
        assert_eq!(Period::Total.bounds(t), (0, None));
        for d in [-1000, 0, 59, 10_957, 20_000, 40_000] {
            let (y, m, dd) = civil(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
    }

    #[test]
    fn limits_refuse_unknown_fields_and_negative_values() {
        let ok =
            Limits::from_json(serde_json::json!({"rpm": 3, "budget_usd": 0.5, "period": "day"}))
                .unwrap();
        assert_eq!(ok.rpm, Some(3));
        assert_eq!(ok.budget_nanos(), Some(500_000_000));
        for bad in [
            serde_json::json!({"rpn": 3}),
            serde_json::json!({"rpm": -1}),
            serde_json::json!({"budget_usd": -0.1}),
            serde_json::json!({"period": "week"}),
        ] {
            let e = Limits::from_json(bad.clone()).unwrap_err().to_string();
            assert!(e.contains("limits"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_refusal_names_the_limit_and_when_it_resets() {
        let r = Refusal {
            scope: "key",
            name: "alice".into(),
            limit: "budget_usd",
            value: 0.5,
            used: 0.500001,
            reserved: 0.0,
            span: "day",
            resets_at: Some(1_796_342_400),
        };
        assert_eq!(
            r.to_string(),
            "key `alice` has reached its limit `budget_usd`: $0.500001 used of $0.500000 cost budget per day; it resets at 2026-12-04T00:00:00Z"
        );
        assert!(!r.is_rate() && !r.is_held());
        let held = Refusal {
            used: 0.2,
            reserved: 0.4,
            ..r
        };
        assert!(held.is_held() && held.retry_after_secs() == Some(1));
        assert!(
            held.to_string()
                .contains("$0.200000 used and $0.400000 held by running requests"),
            "{held}"
        );
    }

    #[test]
    fn secrets_are_random_and_stored_hashed() {
        let (a, b) = (secret(), secret());
        assert_ne!(a, b);
        assert!(a.starts_with("sk-inferd-") && a.len() == 42, "{a}");
        assert_eq!(hash(&a).len(), 64);
        assert_ne!(hash(&a), hash(&b));
    }
}
