//! Managed API keys over HTTP on real `inferd serve` processes: rate limits and
//! token budgets refused at their boundary with a 429/402 that names the
//! limit, a cost budget priced by the tiers' price table through a real
//! upstream, the usage ledger's spend and export, and two gateways sharing
//! PostgreSQL enforcing one budget together.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const ADMIN: &str = "admin-secret";

fn as_key(addr: &str, key: &str, method: &str, path: &str, body: &str) -> (u16, String, Value) {
    let (status, head, body) = request(
        addr,
        method,
        path,
        &format!("Authorization: Bearer {key}\r\n"),
        body,
    );
    let v = serde_json::from_str(&body).unwrap_or(Value::Null);
    (status, head, v)
}

/// A key made through the admin API: (id, secret).
fn make_key(addr: &str, spec: Value) -> (String, String) {
    let (status, _, v) = as_key(addr, ADMIN, "POST", "/v1/keys", &spec.to_string());
    assert_eq!(status, 201, "{v}");
    (
        v["id"].as_str().unwrap().to_owned(),
        v["key"].as_str().unwrap().to_owned(),
    )
}

/// One greedy one-token chat request: the same prompt, so the same usage,
/// every time.
fn ask(model: &str) -> String {
    chat_body(model, &user("Say hi."), r#", "max_tokens": 1"#)
}

fn chat(addr: &str, key: &str, body: &str) -> (u16, String, Value) {
    as_key(addr, key, "POST", "/v1/chat/completions", body)
}

/// Spend grouped by `by`, once the ledger holds `requests` requests.
fn spend_when(addr: &str, by: &str, requests: i64) -> Vec<Value> {
    let t0 = Instant::now();
    loop {
        let (status, _, v) = as_key(addr, ADMIN, "GET", &format!("/v1/spend?group_by={by}"), "");
        assert_eq!(status, 200, "{v}");
        let rows = v["data"].as_array().unwrap().clone();
        if rows
            .iter()
            .map(|r| r["requests"].as_i64().unwrap())
            .sum::<i64>()
            >= requests
        {
            return rows;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the ledger stalled: {v}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn row<'a>(rows: &'a [Value], by: &str, name: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["group"][by] == name)
        .unwrap_or_else(|| panic!("no {by} {name} in {rows:?}"))
}

#[test]
fn keys_are_refused_at_their_limits_boundary_and_the_ledger_shows_their_spend() {
    let dir = state_dir("keys");
    let (_server, addr) = keyed(&dir.display().to_string(), &[]);
    // Who may do what.
    let (status, _, e) = chat(&addr, "sk-inferd-made-up", &ask("chat"));
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (401, Some("invalid_api_key")),
        "{e}"
    );
    let (status, _, e) = as_key(&addr, "nobody", "POST", "/v1/keys", "{}");
    assert_eq!(status, 401, "{e}");
    // What one request uses, asked with the admin key (which has no limits).
    let (status, _, v) = chat(&addr, ADMIN, &ask("chat"));
    assert_eq!(status, 200, "{v}");
    let u = v["usage"]["total_tokens"].as_i64().unwrap();

    // Two requests a minute: the second passes, the third is refused.
    let (_, alice) = make_key(&addr, json!({"name": "alice", "limits": {"rpm": 2}}));
    for _ in 0..2 {
        let (status, _, v) = chat(&addr, &alice, &ask("chat"));
        assert_eq!(status, 200, "{v}");
    }
    let (status, head, e) = chat(&addr, &alice, &ask("chat"));
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (429, Some("rate_limit_exceeded")),
        "{e}"
    );
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("key `alice` has reached its limit `rpm`: 2 used of 2"),
        "{msg}"
    );
    assert!(head.contains("retry-after: "), "{head}");
    // A key cannot manage keys.
    let (status, _, e) = as_key(&addr, &alice, "GET", "/v1/keys", "");
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (403, Some("admin_key_required")),
        "{e}"
    );

    // A budget of exactly two requests' tokens admits two, not three; one
    // token more admits the third.
    for (name, budget, admitted) in [("exact", 2 * u, 2), ("above", 2 * u + 1, 3)] {
        let (_, key) = make_key(
            &addr,
            json!({"name": name, "limits": {"budget_tokens": budget, "period": "day"}}),
        );
        let mut passed = 0;
        for i in 0..4 {
            let (status, _, v) = chat(&addr, &key, &ask("chat"));
            match status {
                200 => passed += 1,
                402 => {
                    assert_eq!(v["error"]["code"], "budget_exceeded", "{v}");
                    let msg = v["error"]["message"].as_str().unwrap();
                    assert!(
                        msg.contains(&format!(
                            "key `{name}` has reached its limit `budget_tokens`"
                        )),
                        "{msg}"
                    );
                    assert!(msg.contains("resets at"), "{msg}");
                    break;
                }
                other => panic!("request {i} of {name}: {other} {v}"),
            }
            // Each request settles before the next is admitted.
            let t0 = Instant::now();
            while row_tokens(&addr, name) < passed * u {
                assert!(t0.elapsed() < Duration::from_secs(20));
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        assert_eq!(
            passed, admitted,
            "{name}: budget {budget}, {u} tokens a request"
        );
    }

    // A team's limits bind each of its keys; a streamed request is charged
    // what its usage chunk says.
    let (status, _, t) = as_key(
        &addr,
        ADMIN,
        "PUT",
        "/v1/teams/research",
        &json!({"limits": {"rpm": 1}}).to_string(),
    );
    assert_eq!(status, 200, "{t}");
    let (_, carol) = make_key(&addr, json!({"name": "carol", "team": "research"}));
    let streamed = chat_body(
        "chat",
        &user("Say hi."),
        r#", "max_tokens": 3, "stream": true, "stream_options": {"include_usage": true}"#,
    );
    let (status, _, _) = chat(&addr, &carol, &streamed);
    assert_eq!(status, 200);
    let (status, _, e) = chat(&addr, &carol, &ask("chat"));
    assert_eq!(status, 429, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("team `research` has reached its limit `rpm`"),
        "{e}"
    );

    // The ledger: per key, and as CSV.
    let rows = spend_when(&addr, "key", 2 + 2 + 3 + 1);
    assert_eq!(row(&rows, "key", "alice")["requests"], 2);
    let carol_row = row(&rows, "key", "carol");
    assert_eq!(carol_row["requests"], 1);
    assert!(
        carol_row["completion_tokens"].as_i64().unwrap() >= 1,
        "{carol_row}"
    );
    let (status, head, _) = as_key(&addr, ADMIN, "GET", "/v1/spend/export?format=csv", "");
    assert_eq!(status, 200);
    assert!(head.contains("text/csv"), "{head}");
    let (_, _, csv) = request(
        &addr,
        "GET",
        "/v1/spend/export?format=csv&key=alice",
        &format!("Authorization: Bearer {ADMIN}\r\n"),
        "",
    );
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(
        lines[0].starts_with("position,at_ms,key_id,key,team,model"),
        "{csv}"
    );
    assert!(lines[1].contains(",alice,,chat,"), "{csv}");
    let (status, _, e) = as_key(&addr, ADMIN, "GET", "/v1/spend?group_by=colour", "");
    assert_eq!(
        (status, e["error"]["param"].as_str()),
        (400, Some("group_by")),
        "{e}"
    );

    // Every admission is counted by its result.
    let admissions = |result: &str| {
        metric(
            &addr,
            "inferd_keys_admissions_total",
            &[&format!("result=\"{result}\"")],
        )
    };
    assert_eq!(admissions("admitted"), 8.0);
    assert_eq!(admissions("rate_limited"), 2.0);
    assert_eq!(admissions("budget_exceeded"), 2.0);
    assert!(metric(&addr, "inferd_keys_settled_total", &[]) >= 8.0);
    // Keys are listed without secrets; a revoked key is refused.
    let (_, _, list) = as_key(&addr, ADMIN, "GET", "/v1/keys", "");
    assert!(!list.to_string().contains(&alice), "{list}");
    let alice_id = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "alice")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _, k) = as_key(&addr, ADMIN, "GET", &format!("/v1/keys/{alice_id}"), "");
    assert_eq!(status, 200, "{k}");
    assert_eq!(k["counters"][0]["requests"], 2, "{k}");
    let (status, _, _) = as_key(&addr, ADMIN, "DELETE", &format!("/v1/keys/{alice_id}"), "");
    assert_eq!(status, 200);
    let (status, _, _) = chat(&addr, &alice, &ask("chat"));
    assert_eq!(status, 401);
    // Bad key specs name their field.
    for (spec, param) in [
        (json!({"limits": {"rpm": 1}}), "name"),
        (json!({"name": "x", "limits": {"rpm": -1}}), "limits"),
        (json!({"name": "x", "limits": {"period": "week"}}), "limits"),
        (json!({"name": "x y"}), "name"),
        (json!({"name": "x", "colour": 1}), "colour"),
    ] {
        let (status, _, e) = as_key(&addr, ADMIN, "POST", "/v1/keys", &spec.to_string());
        assert_eq!(
            (status, e["error"]["param"].as_str()),
            (400, Some(param)),
            "{spec}: {e}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Tokens the ledger has for key `name`.
fn row_tokens(addr: &str, name: &str) -> i64 {
    let (_, _, v) = as_key(addr, ADMIN, "GET", &format!("/v1/spend?key={name}"), "");
    v["data"]
        .as_array()
        .and_then(|rows| rows.first())
        .map_or(0, |r| {
            r["prompt_tokens"].as_i64().unwrap() + r["completion_tokens"].as_i64().unwrap()
        })
}

#[test]
fn a_cost_budget_is_priced_by_the_tier_that_answered() {
    // A real upstream behind a priced tier: $1,000 and $2,000 per 1M tokens.
    let (_upper, upper, _) = serve(
        &[
            "--model",
            &format!("small={}", model()),
            "--threads",
            "1",
            "--port",
            "0",
        ],
        &[],
    );
    let dir = state_dir("priced");
    let config = format!("api_key = {ADMIN:?}\n")
        + &local_and_remote(&upper, "price_in_per_mtok = 1000.0\nprice_out_per_mtok = 2000.0")
        + &format!(
            "\n[[tiers]]\nname = \"paid\"\nbackends = [\"remote\"]\n\n[memory]\nstate = {:?}\nkeys = true\n",
            dir.display().to_string()
        );
    let p = temp_file("priced.toml", &config);
    let (_gw, gw, _) = serve(&["--config", p.to_str().unwrap()], &[]);
    let (status, _, v) = chat(&gw, ADMIN, &ask("paid"));
    assert_eq!(status, 200, "{v}");
    let (pt, ct) = (
        v["usage"]["prompt_tokens"].as_f64().unwrap(),
        v["usage"]["completion_tokens"].as_f64().unwrap(),
    );
    let cost = (pt * 1000.0 + ct * 2000.0) / 1e6;
    // Room for one request and a bit: the second is admitted (the budget is
    // not yet reached), the third is not.
    let (_, key) = make_key(
        &gw,
        json!({"name": "payer", "limits": {"budget_usd": cost * 1.5, "period": "total"}}),
    );
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let (status, _, v) = chat(&gw, &key, &ask("paid"));
        statuses.push(status);
        if status == 402 {
            assert!(
                v["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("limit `budget_usd`"),
                "{v}"
            );
            assert!(
                v["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("does not reset"),
                "{v}"
            );
        }
        let t0 = Instant::now();
        while status == 200
            && spend_when(&gw, "key", 0)
                .iter()
                .map(|r| r["requests"].as_i64().unwrap())
                .sum::<i64>()
                < statuses.len() as i64
        {
            assert!(t0.elapsed() < Duration::from_secs(20));
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    assert_eq!(statuses, [200, 200, 402]);
    let rows = spend_when(&gw, "tier", 2);
    let paid = row(&rows, "tier", "paid");
    assert_eq!(paid["requests"], 2);
    let spent = paid["cost_usd"].as_f64().unwrap();
    assert!(
        (spent - 2.0 * cost).abs() < 1e-9,
        "spent {spent}, two requests at {cost}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A keyed server of the small model on `state`, with `extra` flags.
fn keyed(state: &str, extra: &[&str]) -> (Killed, String) {
    let mut args = vec![
        "--model",
        "chat=smollm2-135m",
        "--threads",
        "1",
        "--port",
        "0",
        "--state",
        state,
        "--keys",
        "--api-key",
        ADMIN,
    ];
    args.extend_from_slice(extra);
    let (child, addr, _) = serve(&args, &[]);
    (child, addr)
}

/// Two of them on one state.
fn keyed_pair(state: &str, extra: &[&str]) -> ((Killed, String), (Killed, String)) {
    (keyed(state, extra), keyed(state, extra))
}

#[test]
fn two_gateways_sharing_postgres_enforce_one_budget() {
    let Some(state) = postgres_state("budget") else {
        return;
    };
    let ((_a, a), (_b, b)) = keyed_pair(&state, &[]);
    let (status, _, v) = chat(&a, ADMIN, &ask("chat"));
    assert_eq!(status, 200, "{v}");
    let u = v["usage"]["total_tokens"].as_i64().unwrap();
    let budget = 12 * u;
    let (_, key) = make_key(
        &a,
        json!({"name": "shared", "limits": {"budget_tokens": budget}}),
    );
    // Eight clients, half on each gateway, until both refuse.
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let (addr, key) = (if i % 2 == 0 { a.clone() } else { b.clone() }, key.clone());
            std::thread::spawn(move || {
                let mut used = 0;
                loop {
                    let (status, _, v) = chat(&addr, &key, &ask("chat"));
                    match status {
                        200 => used += v["usage"]["total_tokens"].as_i64().unwrap(),
                        // Requests still running hold the rest of the budget.
                        429 if v["error"]["code"] == "budget_held" => {
                            std::thread::sleep(Duration::from_millis(20))
                        }
                        402 => return used,
                        other => panic!("{other}: {v}"),
                    }
                }
            })
        })
        .collect();
    let used: i64 = clients.into_iter().map(|c| c.join().unwrap()).sum();
    assert!(
        used <= budget + u,
        "the two gateways admitted {used} tokens against a budget of {budget} ({u} a request)"
    );
    // Refused only once finished requests had used it all.
    assert!(used >= budget, "{used} of {budget}");
    // Both ledgers are one: the spend either gateway reports is what was used.
    for addr in [&a, &b] {
        let rows = spend_when(addr, "key", used / u);
        let r = row(&rows, "key", "shared");
        assert_eq!(
            r["prompt_tokens"].as_i64().unwrap() + r["completion_tokens"].as_i64().unwrap(),
            used,
            "{r}"
        );
    }
    drop((_a, _b));
    drop_schema(&state);
}

/// The Redis at 127.0.0.1:6379 (or `INFERD_TEST_REDIS`); `None`, saying so,
/// when none answers.
fn redis_url(test: &str) -> Option<String> {
    let url =
        std::env::var("INFERD_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let reachable = redis::Client::open(url.as_str())
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(3)))
        .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
    match reachable {
        Ok(_) => Some(url),
        Err(e) => {
            inferd_testutil::report(&format!(
                "skipped: {test}: no Redis reachable at {url}: {e}"
            ));
            None
        }
    }
}

#[test]
fn two_gateways_share_rate_limits_through_redis() {
    let Some(redis) = redis_url("two_gateways_share_rate_limits_through_redis") else {
        return;
    };
    let Some(state) = postgres_state("rates") else {
        return;
    };
    let ((_a, a), (_b, b)) = keyed_pair(&state, &["--limits", &redis]);
    let (id, key) = make_key(
        &a,
        json!({"name": "rated", "limits": {"rpm": 3, "budget_tokens": 1_000_000}}),
    );
    // Three a minute between the two gateways, not three each.
    let statuses: Vec<u16> = (0..6)
        .map(|i| chat(if i % 2 == 0 { &a } else { &b }, &key, &ask("chat")).0)
        .collect();
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        3,
        "{statuses:?}"
    );
    assert!(statuses[3..].iter().all(|&s| s == 429), "{statuses:?}");
    // The counter is in Redis, under the store's prefix.
    let mut c = redis::Client::open(redis.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let found: Vec<String> = redis::cmd("KEYS")
        .arg(format!("inferd:*:key:{id}:*"))
        .query(&mut c)
        .unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    let requests: i64 = redis::cmd("HGET")
        .arg(&found[0])
        .arg("requests")
        .query(&mut c)
        .unwrap();
    assert_eq!(requests, 3);
    // The key's record shows the minute as Redis holds it, on either gateway.
    let (status, _, k) = as_key(&b, ADMIN, "GET", &format!("/v1/keys/{id}"), "");
    assert_eq!(status, 200, "{k}");
    let minute = &k["counters"][0];
    assert_eq!(minute["in"], "redis", "{k}");
    let this_minute = found[0].ends_with(&format!(":{}", unix_s() / 60 * 60));
    if this_minute {
        assert_eq!(minute["requests"], 3, "{k}");
    }
    // Settled: nothing stays reserved once the requests are done.
    let t0 = Instant::now();
    loop {
        let reserved: i64 = redis::cmd("HGET")
            .arg(&found[0])
            .arg("reserved")
            .query(&mut c)
            .unwrap();
        if reserved == 0 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "{reserved} still reserved"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let _: () = redis::cmd("DEL").arg(&found[0]).query(&mut c).unwrap();
    drop((_a, _b));
    drop_schema(&state);
}

fn unix_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}
