//! The gateway's stages before the model, over a real `inferd serve` with
//! SmolLM2 and MiniLM: the intent layer (labels, the intent's tools as the
//! template renders them, its tier, rules by intent, clarification, feedback
//! that survives a restart) and context budgets (a 40-turn conversation over
//! the window, budgets that hold to the token, fallback to a smaller tier,
//! documents by score, the refusal when the essentials do not fit, summaries).

mod common;

use serde_json::{json, Value};

use common::{chat_body, http, local_and_remote, model, post, serve, temp_file, user};

/// The first eight of the everyday tools.
fn tools() -> Vec<Value> {
    common::everyday_tools()[..8].to_vec()
}

fn intents_config(examples: &std::path::Path, clarification: bool) -> String {
    format!(
        r#"port = 0
threads = 1

[[models]]
name = "local"
model = {model:?}

[[models]]
name = "minilm"
model = "minilm-l6"

[[tiers]]
name = "on-box"
backends = ["local"]

[[tiers]]
name = "careful"
backends = ["local"]

[routing.intents]
model = "minilm"
threshold = 0.4
examples_file = {examples:?}
{clarify}

[[routing.intents.intent]]
name = "weather"
description = "Questions about the weather, temperature, rain or the forecast"
examples = ["Will it rain in Berlin tomorrow?", "How hot is it in Madrid right now?"]
tools = ["get_weather", "get_forecast"]

[[routing.intents.intent]]
name = "email"
description = "Writing or sending an email to someone"
examples = ["Send a note to my boss saying I will be late", "Email Ann the quarterly report"]
tools = ["send_email"]

[[routing.intents.intent]]
name = "opening_hours"
description = "When the shop is open"
examples = ["When do you open on Saturday?", "What are your opening hours?"]

[[routing.intents.intent]]
name = "legal"
description = "Contracts, lawsuits and legal advice"
examples = ["Can my landlord break the lease?", "Is this contract clause enforceable?"]
tier = "careful"

[[rules]]
name = "hours"
intent = "opening_hours"
answer = "We are open 9 to 5, Monday to Saturday."
"#,
        model = model(),
        examples = examples.display().to_string(),
        clarify = if clarification {
            "clarification = \"Do you mean the weather, an email, our opening hours or a legal question?\""
        } else {
            ""
        },
    )
}

fn with_tools(q: &str, tools: &[Value]) -> String {
    chat_body(
        "auto",
        &user(q),
        &format!(r#", "tools": {}"#, Value::Array(tools.to_vec())),
    )
}

#[test]
fn intents_label_requests_narrow_their_tools_pick_tiers_and_learn_from_feedback() {
    let examples = temp_file("intent-examples.jsonl", "");
    std::fs::remove_file(&examples).unwrap();
    let p = temp_file("intents.toml", &intents_config(&examples, false));
    let (_gw, gw, log) = serve(&["--config", p.to_str().unwrap()], &[]);
    assert!(log.contains("intent layer"), "{log}");
    let all = tools();

    // Labelled: the intent's tools are the ones the template renders.
    let (status, v) = post(
        &gw,
        &with_tools("What's the weather like in Paris right now?", &all),
    );
    assert_eq!(status, 200, "{v}");
    let intent = &v["route"]["intent"];
    assert_eq!(
        (intent["name"].as_str(), intent["action"].as_str()),
        (Some("weather"), Some("labelled")),
        "{v}"
    );
    assert!(intent["score"].as_f64().unwrap() >= 0.4, "{v}");
    assert_eq!(
        v["route"]["tools"]["kept"],
        json!(["get_weather", "get_forecast"]),
        "{v}"
    );
    let (_, direct) = post(
        &gw,
        &with_tools("What's the weather like in Paris right now?", &all[..2]),
    );
    assert_eq!(
        v["usage"]["prompt_tokens"], direct["usage"]["prompt_tokens"],
        "{v} vs {direct}"
    );
    assert!(v["route"]["stages_ms"]["intent"].as_f64().is_some(), "{v}");
    assert_eq!(v["route"]["tier"], "on-box", "{v}");

    // Unsure: the full list, routed by cost.
    let (_, v) = post(&gw, &with_tools("Tell me a joke about penguins", &all));
    assert_eq!(v["route"]["intent"]["action"], "unsure", "{v}");
    assert!(v["route"].get("tools").is_none(), "{v}");
    let (_, direct) = post(
        &gw,
        &chat_body(
            "local",
            &user("Tell me a joke about penguins"),
            &format!(r#", "tools": {}"#, Value::Array(all.clone())),
        ),
    );
    assert_eq!(
        v["usage"]["prompt_tokens"],
        direct["usage"]["prompt_tokens"]
    );

    // The intent's tier.
    let (_, v) = post(
        &gw,
        &chat_body(
            "auto",
            &user("Can my employer change my contract without asking me?"),
            "",
        ),
    );
    assert_eq!(v["route"]["intent"]["name"], "legal", "{v}");
    assert_eq!(v["route"]["tier"], "careful", "{v}");

    // A rule that matches by intent answers without a model.
    let (_, v) = post(
        &gw,
        &chat_body("auto", &user("What time do you open on Sundays?"), ""),
    );
    assert_eq!(v["route"]["intent"]["name"], "opening_hours", "{v}");
    assert_eq!(v["route"]["handler"]["rule"], "hours", "{v}");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "We are open 9 to 5, Monday to Saturday."
    );

    // Feedback: a query not labelled `email` is from the next request on,
    // and after a restart.
    let q = "let my landlord know the heater is broken again";
    let label = |gw: &str| {
        let (_, v) = post(gw, &chat_body("auto", &user(q), ""));
        let i = &v["route"]["intent"];
        (
            i["name"].as_str().unwrap().to_owned(),
            i["action"].as_str().unwrap().to_owned(),
        )
    };
    let before = label(&gw);
    assert_ne!(before, ("email".to_owned(), "labelled".to_owned()));
    let feedback = |gw: &str, body: Value| {
        let (status, text) = http(gw, "POST", "/v1/intent/feedback", &body.to_string());
        (status, serde_json::from_str::<Value>(&text).unwrap())
    };
    let (status, v) = feedback(&gw, json!({"query": q, "intent": "email"}));
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["intent"].as_str(), v["persisted"].as_bool()),
        (Some("email"), Some(true)),
        "{v}"
    );
    assert_eq!(label(&gw), ("email".to_owned(), "labelled".to_owned()));
    let (status, v) = feedback(&gw, json!({"query": q, "intent": "travel"}));
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("weather, email"),
        "{v}"
    );
    let (status, _) = feedback(&gw, json!({"query": q}));
    assert_eq!(status, 400);
    // No tool narrowing here: a tool label has nowhere to go.
    let (status, v) = feedback(&gw, json!({"query": q, "tool": "send_email"}));
    assert_eq!(status, 404, "{v}");
    drop(_gw);

    // Restarted, with a clarification for unsure requests: the example held.
    let p = temp_file("intents2.toml", &intents_config(&examples, true));
    let (_gw, gw, log) = serve(&["--config", p.to_str().unwrap()], &[]);
    assert!(log.contains("learned=1"), "{log}");
    assert_eq!(label(&gw), ("email".to_owned(), "labelled".to_owned()));
    let (status, v) = post(
        &gw,
        &chat_body("auto", &user("Tell me a joke about penguins"), ""),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["route"]["intent"]["action"], "clarified", "{v}");
    assert!(
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .starts_with("Do you mean"),
        "{v}"
    );
}

/// A conversation of `turns` earlier turns (every third a tool call and its
/// result), then the current question.
fn conversation(turns: usize) -> Vec<Value> {
    let mut m =
        vec![json!({"role": "system", "content": "You are a helpful assistant. Be brief."})];
    for i in 0..turns {
        m.push(json!({"role": "user", "content": format!("Turn {i}: and {i}?")}));
        if i % 3 == 1 {
            m.push(json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": format!("call{i}"), "type": "function", "function": {"name": "lookup", "arguments": format!("{{\"n\": {i}}}")}}]}));
            m.push(json!({"role": "tool", "tool_call_id": format!("call{i}"), "content": format!("{i} is a number")}));
        }
        m.push(json!({"role": "assistant", "content": format!("{i} follows {}.", i as i64 - 1)}));
    }
    m.push(json!({"role": "user", "content": "Which turn was first?"}));
    m
}

/// The conversation's turns: (start, end) message ranges after the system
/// message and before the current question.
fn turns(m: &[Value]) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    for (i, x) in m.iter().enumerate().take(m.len() - 1).skip(1) {
        if x["role"] == "user" {
            out.push((i, i + 1));
        } else if let Some(t) = out.last_mut() {
            t.1 = i + 1;
        }
    }
    out
}

fn prompt_tokens(addr: &str, model: &str, messages: &[Value], extra: &str) -> u64 {
    let (status, v) = post(
        addr,
        &chat_body(model, &Value::Array(messages.to_vec()), extra),
    );
    assert_eq!(status, 200, "{v}");
    v["usage"]["prompt_tokens"].as_u64().unwrap()
}

/// SmolLM2 as tier `narrow` (a 400-token window) and a dead upstream as the
/// wide tier `wide`, with context budgets.
fn budget_config(summary: bool, dead: u16) -> String {
    let summary = if summary {
        "summary_model = \"local\"\nsummary_max_tokens = 24\n"
    } else {
        ""
    };
    format!(
        "{}\n[[tiers]]\nname = \"wide\"\nbackends = [\"remote\"]\n\n[[tiers]]\nname = \"narrow\"\nbackends = [\"local\"]\ncontext_window = 400\n\n[routing]\nmax_attempts = 2\n\n[routing.context]\noutput_reserve = 32\n{summary}",
        local_and_remote(&format!("127.0.0.1:{dead}"), "context_window = 8192")
    )
}

#[test]
fn context_budgets_cut_whole_turns_to_the_token_and_refit_on_fallback() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let p = temp_file("budgets.toml", &budget_config(false, dead));
    let (_gw, gw, log) = serve(&["--config", p.to_str().unwrap()], &[]);
    assert!(log.contains("context budgets"), "{log}");

    // 40 turns over the 400-token window: answered, first and last turns
    // kept, whole tool-call pairs, within the window to the token.
    let m = conversation(40);
    let (status, v) = post(&gw, &chat_body("narrow", &Value::Array(m.clone()), ""));
    assert_eq!(status, 200, "{v}");
    let c = &v["route"]["context"];
    assert_eq!(
        (
            c["tier"].as_str(),
            c["window"].as_u64(),
            c["reserve"].as_u64()
        ),
        (Some("narrow"), Some(400), Some(8)),
        "{v}"
    );
    assert_eq!(c["counted"], "tokenizer", "{v}");
    assert!(c["prompt_before"].as_u64().unwrap() > 1000, "{v}");
    let after = c["prompt_after"].as_u64().unwrap();
    assert!(after <= 400 - 8, "{v}");
    assert_eq!(v["usage"]["prompt_tokens"].as_u64(), Some(after), "{v}");
    let dropped = c["turns_dropped"].as_u64().unwrap() as usize;
    assert!(dropped > 0 && dropped < 39, "{v}");
    assert!(
        c["sections"]["history"]["after"].as_u64() < c["sections"]["history"]["before"].as_u64(),
        "{v}"
    );
    // The same prompt as the conversation with its oldest middle turns removed.
    let t = turns(&m);
    let mut expected = vec![m[0].clone()];
    expected.extend_from_slice(&m[t[0].0..t[0].1]);
    for &(a, b) in &t[1 + dropped..] {
        expected.extend_from_slice(&m[a..b]);
    }
    expected.push(m[m.len() - 1].clone());
    assert_eq!(prompt_tokens(&gw, "local", &expected, ""), after);
    // One turn fewer dropped would not have fit.
    let mut one_more = vec![m[0].clone()];
    one_more.extend_from_slice(&m[t[0].0..t[0].1]);
    for &(a, b) in &t[dropped..] {
        one_more.extend_from_slice(&m[a..b]);
    }
    one_more.push(m[m.len() - 1].clone());
    assert!(prompt_tokens(&gw, "local", &one_more, "") > 400 - 8);

    // To the token: a prompt of exactly the room is not cut; one more token is.
    let room = 400 - 8;
    let short = conversation(6);
    let mut pad = String::new();
    let padded = |pad: &str| {
        let mut x = short.clone();
        let last = x.len() - 1;
        x[last]["content"] = json!(format!("Which turn was first?{pad}"));
        x
    };
    for _ in 0..3 {
        let n = prompt_tokens(&gw, "local", &padded(&pad), "");
        if n == room {
            break;
        }
        assert!(n < room, "{n}");
        pad.push_str(&" a".repeat((room - n) as usize));
    }
    let exact = padded(&pad);
    assert_eq!(prompt_tokens(&gw, "local", &exact, ""), room);
    let (_, v) = post(&gw, &chat_body("narrow", &Value::Array(exact), ""));
    let c = &v["route"]["context"];
    assert_eq!(
        (c["prompt_after"].as_u64(), c.get("turns_dropped")),
        (Some(room), None),
        "{v}"
    );
    pad.push_str(" a");
    assert_eq!(prompt_tokens(&gw, "local", &padded(&pad), ""), room + 1);
    let (_, v) = post(&gw, &chat_body("narrow", &Value::Array(padded(&pad)), ""));
    let c = &v["route"]["context"];
    assert_eq!(c["turns_dropped"].as_u64(), Some(1), "{v}");
    assert!(c["prompt_after"].as_u64().unwrap() <= room, "{v}");

    // Routed: the wide tier takes the whole conversation but is down; the
    // narrow one is fitted again to its own window.
    let (status, v) = post(&gw, &chat_body("auto", &Value::Array(m.clone()), ""));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["route"]["tier"], "narrow", "{v}");
    assert_eq!(v["route"]["attempts"][0]["tier"], "wide", "{v}");
    assert_eq!(v["route"]["context"]["window"], 400, "{v}");
    assert_eq!(
        v["route"]["context"]["prompt_after"].as_u64(),
        Some(after),
        "{v}"
    );

    // Documents go lowest score first.
    let docs: Vec<Value> = [0.9, 0.2, 0.6, 0.4]
        .iter()
        .enumerate()
        .map(|(i, s)| json!({"id": format!("d{i}"), "text": format!("Document {i}. {}", "Some filler text about a topic. ".repeat(20)), "score": s}))
        .collect();
    let ask = vec![
        m[0].clone(),
        json!({"role": "user", "content": "Summarise the documents."}),
    ];
    let extra = format!(r#", "documents": {}"#, Value::Array(docs.clone()));
    let (status, v) = post(
        &gw,
        &chat_body("narrow", &Value::Array(ask.clone()), &extra),
    );
    assert_eq!(status, 200, "{v}");
    let c = &v["route"]["context"];
    let n = c["documents_dropped"].as_u64().unwrap() as usize;
    assert!((1..4).contains(&n), "{v}");
    let kept: Vec<Value> = docs
        .iter()
        .filter(|d| d["score"].as_f64().unwrap() > [0.2, 0.4, 0.6][n - 1])
        .cloned()
        .collect();
    let kept_extra = format!(r#", "documents": {}"#, Value::Array(kept));
    assert_eq!(
        prompt_tokens(&gw, "local", &ask, &kept_extra),
        c["prompt_after"].as_u64().unwrap()
    );

    // The system prompt and the current turn alone do not fit: a 400 with
    // the numbers, not a cut.
    let huge = vec![
        json!({"role": "system", "content": "Rules. ".repeat(400)}),
        json!({"role": "user", "content": "hi"}),
    ];
    let (status, v) = post(&gw, &chat_body("narrow", &Value::Array(huge), ""));
    assert_eq!(status, 400, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("never cut") && msg.contains("holds 400 tokens"),
        "{msg}"
    );
}

#[test]
fn dropped_turns_can_be_summarised_into_one_turn_that_still_fits() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let p = temp_file("budgets-summary.toml", &budget_config(true, dead));
    let (_gw, gw, _) = serve(&["--config", p.to_str().unwrap()], &[]);
    let (status, v) = post(
        &gw,
        &chat_body("narrow", &Value::Array(conversation(30)), ""),
    );
    assert_eq!(status, 200, "{v}");
    let c = &v["route"]["context"];
    assert_eq!(c["summarized"], true, "{v}");
    assert!(c["turns_dropped"].as_u64().unwrap() > 0, "{v}");
    let after = c["prompt_after"].as_u64().unwrap();
    assert!(after <= 400 - 8, "{v}");
    assert_eq!(v["usage"]["prompt_tokens"].as_u64(), Some(after), "{v}");
}
