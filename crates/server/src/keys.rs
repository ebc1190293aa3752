//! API keys, limits and spend over the state store ([`inferd_memory::Keys`]).
//!
//! With keys on (`inferd serve --keys`), a request's bearer token is the
//! server's admin key (`--api-key`: everything, no limits) or a key made with
//! `POST /v1/keys`, whose limits — and its team's — are checked and reserved
//! before dispatch (429 for a rate, 402 for a budget, naming the limit) and
//! settled with what the request used when it ends. The admin key alone may
//! manage keys and teams and read spend.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use inferd_memory::keys::{Usage, NANOS_PER_USD};
use inferd_memory::{KeyRecord, Keys, Limits, Memory, Refusal, SpendQuery, Ticket};
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::ServerState;

/// USD per 1M input and output tokens, by tier or upstream name.
#[derive(Debug, Clone, Default)]
pub struct Prices {
    pub by_name: HashMap<String, (f64, f64)>,
}

impl Prices {
    /// The dearest prices: what a request is reserved at before the gateway
    /// has chosen.
    fn dearest(&self) -> (f64, f64) {
        self.by_name
            .values()
            .fold((0.0, 0.0), |a, b| (a.0.max(b.0), a.1.max(b.1)))
    }

    fn of(&self, name: &str) -> (f64, f64) {
        self.by_name.get(name).copied().unwrap_or((0.0, 0.0))
    }
}

/// Nano-dollars for `tokens` at `per_mtok` USD per million.
fn nanos(tokens: i64, per_mtok: f64) -> i64 {
    (tokens as f64 * per_mtok * NANOS_PER_USD / 1e6).round() as i64
}

/// Who sent a request.
#[derive(Debug, Clone)]
pub enum Caller {
    /// No key is needed on this server.
    Open,
    /// The server's own key (`--api-key`).
    Admin,
    /// A key made with `POST /v1/keys`.
    Key(Box<KeyRecord>),
}

pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

impl ServerState {
    /// Serves managed keys from the memory store, pricing usage with `prices`.
    pub fn with_keys(mut self, prices: Prices) -> Result<ServerState, String> {
        if self.memory.is_none() {
            return Err("keys need a state store: start the server with `--state DIR` (or a postgres:// URL)".into());
        }
        if self.api_key.is_none() {
            return Err(
                "keys need an admin key to manage them: start the server with `--api-key`".into(),
            );
        }
        self.prices = Some(prices);
        Ok(self)
    }

    fn keys(&self) -> Option<&Keys> {
        self.prices.as_ref()?;
        self.memory.as_deref().map(Memory::keys)
    }

    /// The caller of a request, or 401.
    pub async fn caller(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let Some(admin) = &self.api_key else {
            return Ok(Caller::Open);
        };
        let sent = bearer(headers);
        if sent == Some(admin.as_str()) {
            return Ok(Caller::Admin);
        }
        match (self.keys(), sent) {
            (Some(keys), Some(secret)) => match keys.lookup(secret).await? {
                Some(k) => Ok(Caller::Key(Box::new(k))),
                None => Err(ApiError::unauthorized()),
            },
            _ => Err(ApiError::unauthorized()),
        }
    }

    /// The caller, who must hold the admin key.
    async fn admin(&self, headers: &HeaderMap) -> Result<&Keys, ApiError> {
        let caller = self.caller(headers).await?;
        let keys = self.keys().ok_or_else(|| ApiError {
            status: StatusCode::NOT_FOUND,
            code: Some("keys_disabled"),
            ..ApiError::bad_request(
                "this server manages no keys: start it with `--keys` (and `--state`, `--api-key`)",
            )
        })?;
        match caller {
            Caller::Admin => Ok(keys),
            _ => Err(ApiError {
                status: StatusCode::FORBIDDEN,
                message:
                    "managing keys and reading spend needs the server's admin key (`--api-key`)"
                        .into(),
                kind: "invalid_request_error",
                param: None,
                code: Some("admin_key_required"),
                retry_after_secs: None,
            }),
        }
    }

    /// Checks and reserves a keyed caller's limits for a request of at most
    /// `prompt_tokens` + `completion_tokens`; `None` for the admin and open
    /// callers, who have none.
    pub(crate) async fn admit(
        &self,
        caller: &Caller,
        model: &str,
        prompt_tokens: usize,
        completion_tokens: usize,
    ) -> Result<Option<Ticket>, ApiError> {
        let (Caller::Key(key), Some(keys), Some(prices)) = (caller, self.keys(), &self.prices)
        else {
            return Ok(None);
        };
        let (p, c) = (prompt_tokens as i64, completion_tokens as i64);
        let (pin, pout) = prices.dearest();
        let reserve = nanos(p, pin) + nanos(c, pout);
        match keys.admit(key, model, p + c, reserve).await? {
            Ok(t) => Ok(Some(t)),
            Err(r) => Err(refusal(&r)),
        }
    }

    /// What a finished request used, priced by the tier that answered (a
    /// cached or rule-answered request ran no model and costs nothing).
    pub(crate) fn charge(
        &self,
        ticket: &mut Ticket,
        model: &str,
        route: Option<&inferd_protocol::Route>,
        usage: &inferd_protocol::Usage,
        status: u16,
    ) {
        let tier = route.map(|r| r.tier.clone());
        let free = route.is_some_and(|r| {
            r.cache.is_some() || r.handler.as_ref().is_some_and(|h| h.action == "answered")
        });
        let (pin, pout) = match &self.prices {
            Some(p) if !free => p.of(tier.as_deref().unwrap_or(model)),
            _ => (0.0, 0.0),
        };
        let (p, c) = (usage.prompt_tokens as i64, usage.completion_tokens as i64);
        ticket.record(Usage {
            prompt_tokens: p,
            completion_tokens: c,
            cost_nanos: nanos(p, pin) + nanos(c, pout),
            tier,
            status,
        });
    }
}

/// 429 for a rate, 402 for a budget; the message names the limit.
pub fn refusal(r: &Refusal) -> ApiError {
    let (status, kind, code) = if r.is_rate() {
        (
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "rate_limit_exceeded",
        )
    } else if r.is_held() {
        (
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "budget_held",
        )
    } else {
        (
            StatusCode::PAYMENT_REQUIRED,
            "insufficient_quota",
            "budget_exceeded",
        )
    };
    ApiError {
        status,
        message: r.to_string(),
        kind,
        param: None,
        code: Some(code),
        retry_after_secs: r.retry_after_secs(),
    }
}

pub fn routes() -> Router<Arc<ServerState>> {
    Router::new()
        .route("/v1/keys", get(list_keys).post(create_key))
        .route("/v1/keys/{id}", get(get_key).delete(revoke_key))
        .route("/v1/teams", get(list_teams))
        .route("/v1/teams/{name}", put(set_team))
        .route("/v1/spend", get(spend))
        .route("/v1/spend/export", get(export))
}

/// `v` as the API shows it, with its `object` name.
fn shown(v: &impl serde::Serialize, object: &str) -> Value {
    let mut v = serde_json::to_value(v).expect("key-store records serialize: this is a bug");
    v["object"] = json!(object);
    v
}

fn string_field(
    m: &serde_json::Map<String, Value>,
    name: &str,
) -> Result<Option<String>, ApiError> {
    match m.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::invalid(
            name,
            format!("`{name}` must be a string"),
        )),
    }
}

fn limits_field(m: &mut serde_json::Map<String, Value>) -> Result<Limits, ApiError> {
    Ok(Limits::from_json(
        m.remove("limits").unwrap_or_else(|| json!({})),
    )?)
}

/// `POST /v1/keys` `{"name", "team"?, "limits"?}`: 201 with the secret (`key`),
/// shown this once.
async fn create_key(
    State(s): State<Arc<ServerState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let keys = s.admin(&headers).await?;
    let mut m = crate::memory::body_object(&body)?;
    let limits = limits_field(&mut m)?;
    if let Some(k) = m.keys().find(|k| !["name", "team"].contains(&k.as_str())) {
        return Err(ApiError::invalid(
            k,
            format!("unknown field `{k}`: a key takes name, team and limits"),
        ));
    }
    let name =
        string_field(&m, "name")?.ok_or_else(|| ApiError::invalid("name", "`name` is required"))?;
    let made = keys
        .create_key(name, string_field(&m, "team")?, limits)
        .await?;
    let v = shown(&made, "key");
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

async fn list_keys(
    State(s): State<Arc<ServerState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let keys = s.admin(&headers).await?;
    Ok(Json(json!({"object": "list", "data": keys.keys().await?})).into_response())
}

/// A key and the counters its limits (and its team's) are checked against.
async fn get_key(
    State(s): State<Arc<ServerState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let keys = s.admin(&headers).await?;
    let k = keys.key(&id).await?;
    let mut v = shown(&k, "key");
    v["counters"] = json!(keys.counters(format!("key:{}", k.id)).await?);
    if let Some(t) = &k.team {
        v["team_counters"] = json!(keys.counters(format!("team:{t}")).await?);
    }
    Ok(Json(v).into_response())
}

async fn revoke_key(
    State(s): State<Arc<ServerState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let keys = s.admin(&headers).await?;
    let k = keys.revoke(&id).await?;
    let v = shown(&k, "key");
    Ok(Json(v).into_response())
}

/// `PUT /v1/teams/{name}` `{"limits": {...}}`: the team's limits, shared by
/// every key naming it.
async fn set_team(
    State(s): State<Arc<ServerState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let keys = s.admin(&headers).await?;
    let mut m = crate::memory::body_object(&body)?;
    let limits = limits_field(&mut m)?;
    if let Some(k) = m.keys().next() {
        return Err(ApiError::invalid(
            k,
            format!("unknown field `{k}`: a team takes limits"),
        ));
    }
    let t = keys.set_team(name, limits).await?;
    Ok(Json(shown(&t, "team")).into_response())
}

async fn list_teams(
    State(s): State<Arc<ServerState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let keys = s.admin(&headers).await?;
    Ok(Json(json!({"object": "list", "data": keys.teams().await?})).into_response())
}

type Params = Query<HashMap<String, String>>;

/// Filters shared by spend and export: `key`, `team`, `model`, `from` and `to`
/// (Unix ms or `YYYY-MM-DD`, UTC), and `group_by` (comma-separated).
fn spend_query(p: &HashMap<String, String>) -> Result<SpendQuery, ApiError> {
    let time = |name: &str| -> Result<Option<i64>, ApiError> {
        let Some(v) = p.get(name) else {
            return Ok(None);
        };
        if let Ok(ms) = v.parse::<i64>() {
            return Ok(Some(ms));
        }
        parse_day(v).map(Some).ok_or_else(|| {
            ApiError::invalid(
                name,
                format!("`{name}` must be Unix milliseconds or YYYY-MM-DD, got {v:?}"),
            )
        })
    };
    if let Some(k) = p.keys().find(|k| {
        !["key", "team", "model", "from", "to", "group_by", "format"].contains(&k.as_str())
    }) {
        return Err(ApiError::invalid(k, format!("unknown parameter `{k}`: spend takes key, team, model, from, to, group_by (and format to export)")));
    }
    Ok(SpendQuery {
        group_by: p
            .get("group_by")
            .map(|g| {
                g.split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default(),
        key: p.get("key").cloned(),
        team: p.get("team").cloned(),
        model: p.get("model").cloned(),
        from_ms: time("from")?,
        to_ms: time("to")?,
    })
}

/// Unix ms of a `YYYY-MM-DD` day's start (UTC).
fn parse_day(s: &str) -> Option<i64> {
    let mut it = s.splitn(3, '-');
    let (y, m, d): (i64, u32, u32) = (
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
    );
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    // Days from civil (Hinnant).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mm = i64::from(m);
    let doy = (153 * (if mm > 2 { mm - 3 } else { mm + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some((era * 146_097 + doe - 719_468) * 86_400_000)
}

/// `GET /v1/spend?group_by=key,model&from=…`: requests, tokens and cost from
/// the ledger.
async fn spend(
    State(s): State<Arc<ServerState>>,
    headers: HeaderMap,
    Query(p): Params,
) -> Result<Response, ApiError> {
    let keys = s.admin(&headers).await?;
    let q = spend_query(&p)?;
    let memory = s.memory.as_ref().expect("keys imply memory");
    let rows = keys.spend(q, memory.reads()).await?;
    Ok(Json(json!({"object": "spend", "data": rows})).into_response())
}

/// `GET /v1/spend/export?format=csv|jsonl`: the ledger's rows.
async fn export(
    State(s): State<Arc<ServerState>>,
    headers: HeaderMap,
    Query(p): Params,
) -> Result<Response, ApiError> {
    let keys = s.admin(&headers).await?;
    let q = spend_query(&p)?;
    let format = p.get("format").map_or("csv", String::as_str);
    if !["csv", "jsonl"].contains(&format) {
        return Err(ApiError::invalid(
            "format",
            format!("`format` is csv or jsonl, got {format:?}"),
        ));
    }
    let memory = s.memory.as_ref().expect("keys imply memory");
    let rows = keys.ledger(q, memory.reads()).await?;
    let mut out = String::new();
    if format == "csv" {
        out.push_str("position,at_ms,key_id,key,team,model,tier,prompt_tokens,completion_tokens,cost_usd,status\n");
        for r in &rows {
            out.push_str(&format!(
                "{},{},{},{},{},{},{},{},{},{:.9},{}\n",
                r.position,
                r.at_ms,
                csv(&r.key_id),
                csv(&r.key),
                csv(r.team.as_deref().unwrap_or("")),
                csv(&r.model),
                csv(r.tier.as_deref().unwrap_or("")),
                r.prompt_tokens,
                r.completion_tokens,
                r.cost_usd,
                r.status
            ));
        }
    } else {
        for r in &rows {
            out.push_str(&serde_json::to_string(r).expect("a row serializes"));
            out.push('\n');
        }
    }
    let mut resp = out.into_response();
    let ctype = if format == "csv" {
        "text/csv; charset=utf-8"
    } else {
        "application/x-ndjson"
    };
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    Ok(resp)
}

/// A CSV field, quoted when it must be.
fn csv(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_are_counted_in_nano_dollars() {
        // 1,000 tokens at $2.50 per 1M is $0.0025.
        assert_eq!(nanos(1000, 2.5), 2_500_000);
        assert_eq!(nanos(0, 100.0), 0);
        let p = Prices {
            by_name: HashMap::from([("a".into(), (1.0, 4.0)), ("b".into(), (3.0, 2.0))]),
        };
        assert_eq!(p.dearest(), (3.0, 4.0));
        assert_eq!(p.of("nope"), (0.0, 0.0));
    }

    #[test]
    fn days_parse_as_utc_midnight() {
        assert_eq!(parse_day("1970-01-02"), Some(86_400_000));
        assert_eq!(parse_day("2026-12-03"), Some(1_796_256_000_000));
        assert_eq!(parse_day("2026-13-01"), None);
        assert_eq!(parse_day("yesterday"), None);
    }

    #[test]
    fn refusals_are_429_for_rates_and_402_for_budgets() {
        let mut r = Refusal {
            scope: "team",
            name: "research".into(),
            limit: "rpm",
            value: 2.0,
            used: 2.0,
            reserved: 0.0,
            span: "minute",
            resets_at: Some(i64::MAX / 2),
        };
        let e = refusal(&r);
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(
            e.message.contains("team `research`") && e.message.contains("`rpm`"),
            "{}",
            e.message
        );
        assert!(e.retry_after_secs.is_some());
        r.limit = "budget_tokens";
        r.resets_at = None;
        let e = refusal(&r);
        assert_eq!(e.status, StatusCode::PAYMENT_REQUIRED);
        assert_eq!(e.code, Some("budget_exceeded"));
        assert!(e.retry_after_secs.is_none());
        r.used = 1.0;
        r.reserved = 5.0;
        let e = refusal(&r);
        assert_eq!(
            (e.status, e.code),
            (StatusCode::TOO_MANY_REQUESTS, Some("budget_held"))
        );
        assert_eq!(e.retry_after_secs, Some(1));
    }
}
