//! The `inferd` binary as a user runs it: `generate` honours `--activations`,
//! `serve` reads a config file with a `[[models]]` table and serves every model
//! from one process, and configuration errors name the key.

mod common;

use common::{http, inferd, model, serve, temp_file};

fn generate(activations: Option<&str>) -> (String, String) {
    let mut c = inferd();
    c.args([
        "generate",
        "--model",
        &model(),
        "--chat",
        "--prompt",
        "What is the capital of France?",
    ])
    .args(["--max-tokens", "16", "--threads", "2"]);
    if let Some(a) = activations {
        c.args(["--activations", a]);
    }
    let out = c.output().expect("inferd runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    (String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
}

#[test]
fn generate_applies_the_activations_flag() {
    let (default_text, default_log) = generate(None);
    let (q8_text, q8_log) = generate(Some("q8"));
    assert!(default_log.contains("activations=Q8x2"), "{default_log}");
    assert!(q8_log.contains("activations=Q8 "), "{q8_log}");
    assert!(default_text.contains("Paris"), "{default_text}");
    // One-plane activations change SmolLM2's greedy answer (README, "Activation
    // precision"): the flag reached the kernels.
    assert_ne!(default_text, q8_text);
}

/// `inferd serve --config` on a file with `text`: it must fail; its stderr.
fn serve_fails_on(name: &str, text: &str) -> String {
    let out = inferd()
        .args(["serve", "--config"])
        .arg(temp_file(name, text))
        .output()
        .unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn serve_config_errors_name_the_key() {
    let stderr = serve_fails_on("typo.toml", "prot = 9000\n");
    assert!(stderr.contains("prot"), "{stderr}");
    let stderr = serve_fails_on(
        "zero.toml",
        "[[models]]\nmodel = \"smollm2-135m\"\nmax_running = 0\n",
    );
    assert!(
        stderr.contains("models[0].") && stderr.contains("max_running") && stderr.contains("got 0"),
        "{stderr}"
    );
    let stderr = serve_fails_on(
        "int4.toml",
        "[[models]]\nmodel = \"minilm-l6\"\nprecision = \"int4\"\n",
    );
    assert!(
        stderr.contains("int4") && stderr.contains("q8") && stderr.contains("bf16"),
        "{stderr}"
    );
    let stderr = serve_fails_on(
        "chat-precision.toml",
        &format!(
            "port = 0\n[[models]]\nmodel = {:?}\nprecision = \"q8\"\n",
            model()
        ),
    );
    assert!(
        stderr.contains("precision") && stderr.contains("embedding models"),
        "{stderr}"
    );
    // A kernel path this CPU does not run is refused, with the ones it does.
    let stderr = serve_fails_on("isa.toml", "port = 0\nisa = \"sse9\"\n");
    assert!(
        stderr.contains("isa \"sse9\"") && stderr.contains("scalar"),
        "{stderr}"
    );
    // Two draft models for one model.
    let stderr = serve_fails_on(
        "two-drafts.toml",
        "speculation = \"adaptive\"\nspec_draft_layers = 4\nspec_draft_model = \"x.gguf\"\n",
    );
    assert!(stderr.contains("both set"), "{stderr}");
}

#[test]
fn serve_runs_an_embedding_model_in_the_precision_its_entry_names() {
    let config = "port = 0\nthreads = 2\n\n[[models]]\nmodel = \"minilm-l6\"\nname = \"exact\"\nprecision = \"f32\"\n\n[[models]]\nmodel = \"minilm-l6\"\nname = \"fast\"\nprecision = \"q8\"\n";
    let p = temp_file("precision.toml", config);
    let (_child, addr, log) = serve(&["--config", p.to_str().unwrap()], &[]);
    assert!(
        log.contains("precision=f32") && log.contains("precision=q8"),
        "{log}"
    );
    let text = "Where can I book a table for four tonight?";
    let embed = |model: &str| -> Vec<f64> {
        let body = serde_json::json!({"model": model, "input": text}).to_string();
        let (status, body) = http(&addr, "POST", "/v1/embeddings", &body);
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["data"][0]["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    let (exact, fast) = (embed("exact"), embed("fast"));
    let cos: f64 = exact.iter().zip(&fast).map(|(a, b)| a * b).sum();
    // 8-bit weights move the vector (so Q8 did run) but keep its meaning.
    assert!(exact != fast && cos >= 0.999, "cosine {cos}");
    println!("minilm q8 vs f32 on one sentence: cosine {cos:.6}");
}

#[test]
fn serve_runs_two_models_from_a_config_file() {
    let m = model();
    let config = format!(
        "port = 0\nthreads = 2\nmax_running = 8\n\n[[models]]\nmodel = {m:?}\nname = \"big\"\n\n[[models]]\nmodel = {m:?}\nname = \"small\"\nkv_cache_mib = 32\n"
    );
    let p = temp_file("two.toml", &config);
    let (_child, addr, log) = serve(&["--config", p.to_str().unwrap()], &[]);
    assert!(
        log.contains("kv_mib=32"),
        "each model has its own KV budget: {log}"
    );
    let (status, body) = http(&addr, "GET", "/v1/models", "");
    assert_eq!(status, 200, "{body}");
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["big", "small"]);
    let chat = r#"{"model": "small", "messages": [{"role": "user", "content": "What is the capital of France?"}], "temperature": 0, "max_tokens": 8}"#;
    let (status, body) = http(&addr, "POST", "/v1/chat/completions", chat);
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["model"], "small");
    let (status, _) = http(
        &addr,
        "POST",
        "/v1/chat/completions",
        &chat.replace("small", "medium"),
    );
    assert_eq!(status, 404);
}

#[test]
fn generate_constrains_its_output_and_names_a_schema_it_cannot_use() {
    let run = |extra: &[&str]| {
        let out = inferd()
            .args([
                "generate",
                "--model",
                &model(),
                "--max-tokens",
                "40",
                "--threads",
                "2",
            ])
            .args(extra)
            .output()
            .expect("inferd runs");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr,
        )
    };
    let schema = temp_file(
        "city.json",
        r#"{"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"], "additionalProperties": false}"#,
    );
    let (ok, text, log) = run(&[
        "--chat",
        "--prompt",
        "Largest city in Japan?",
        "--json-schema",
        schema.to_str().unwrap(),
    ]);
    assert!(ok, "{log}");
    let v: serde_json::Value =
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    assert!(
        v["city"].is_string() && v.as_object().unwrap().len() == 1,
        "{v}"
    );

    let gbnf = temp_file("yn.gbnf", "root ::= \" \" (\"yes\" | \"no\")\n");
    let (ok, text, log) = run(&[
        "--prompt",
        "Is fire hot? Answer:",
        "--grammar",
        gbnf.to_str().unwrap(),
    ]);
    assert!(ok, "{log}");
    assert!(
        matches!(text.trim_end_matches('\n'), " yes" | " no"),
        "{text:?}"
    );

    let bad = temp_file("bad.json", r#"{"type": "array", "uniqueItems": true}"#);
    let (ok, _, log) = run(&["--prompt", "x", "--json-schema", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        log.contains("`json_schema`") && log.contains("uniqueItems"),
        "{log}"
    );
}
