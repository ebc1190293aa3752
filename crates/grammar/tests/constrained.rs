//! Constrained decoding on the real default model (SmolLM2-135M): every kind of
//! constraint produces output that parses and validates (checked with the
//! `jsonschema` crate, an independent validator), masks accept exactly the valid
//! continuations, unsupported schema keywords and broken grammars are errors that
//! say why, a constraint cut short by `max_tokens` ends with `Length`, and
//! constrained and unconstrained sequences share a batch without changing the
//! unconstrained ones' output.

use std::sync::{Arc, OnceLock};

use inferd_engine::{
    start_engine, BoxedConstraint, Constraint, EngineConfig, EngineHandle, EngineRequest,
    FinishReason, LoadedModel, SamplingParams, TokenEvent, TokenMask,
};
use inferd_grammar::{GrammarError, Grammars};
use inferd_protocol::{ConstraintKind, FunctionDef};
use inferd_tokenizer::Tokenizer;
use serde_json::{json, Value};

struct Fixture {
    engine: EngineHandle,
    tokenizer: Arc<Tokenizer>,
    grammars: Grammars,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let model = LoadedModel::load(inferd_testutil::smollm2_path()).unwrap();
        let tokenizer = model.tokenizer.clone();
        let vocab = model.model.config().vocab_size;
        let grammars = Grammars::new(tokenizer.clone(), vocab).unwrap();
        let engine = start_engine(model, EngineConfig::default()).unwrap();
        Fixture {
            engine,
            tokenizer,
            grammars,
        }
    })
}

/// A chat prompt in SmolLM2's template.
fn chat_prompt(user: &str) -> Vec<u32> {
    let text = format!(
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    );
    fixture().tokenizer.encode(&text, false).unwrap()
}

fn request(prompt: Vec<u32>, kind: Option<&ConstraintKind>, max_tokens: usize) -> EngineRequest {
    let f = fixture();
    EngineRequest {
        prompt,
        max_tokens,
        stop_token_ids: f.tokenizer.stop_token_ids(),
        sampling: SamplingParams {
            temperature: 0.7,
            seed: Some(7),
            ..Default::default()
        },
        constraint: kind
            .map(|k| BoxedConstraint(Box::new(f.grammars.compile(k).unwrap().constraint))),
        ..Default::default()
    }
}

/// Runs one request to the end: its text and finish reason.
fn run(req: EngineRequest) -> (String, FinishReason) {
    let f = fixture();
    let mut rx = f.engine.submit(req);
    let mut ids = Vec::new();
    while let Some(ev) = rx.blocking_recv() {
        match ev {
            TokenEvent::Token { id, .. } => ids.push(id),
            TokenEvent::Done { reason, .. } => {
                return (f.tokenizer.decode(&ids, true).unwrap(), reason)
            }
            TokenEvent::Error(e) => panic!("request failed: {e}"),
            TokenEvent::PromptLogprobs(_) => {}
        }
    }
    panic!("the stream ended without Done")
}

fn validate(schema: &Value, text: &str) {
    let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    let validator = jsonschema::validator_for(schema).unwrap();
    let errors: Vec<String> = validator.iter_errors(&v).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{text} breaks the schema: {errors:?}");
}

#[test]
fn json_schema_output_parses_and_validates() {
    let schema = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 20},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "city": {"enum": ["Paris", "London", "Tokyo"]},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 10}, "maxItems": 3}
        },
        "required": ["name", "age", "city", "tags"],
        "additionalProperties": false
    });
    let kind = ConstraintKind::JsonSchema(schema.clone());
    for user in [
        "Describe a person as JSON.",
        "Tell me about the weather.",
        "Write a poem.",
    ] {
        let (text, reason) = run(request(chat_prompt(user), Some(&kind), 200));
        assert_eq!(reason, FinishReason::Stop, "{text}");
        validate(&schema, &text);
    }
}

#[test]
fn json_object_mode_gives_an_object() {
    let (text, reason) = run(request(
        chat_prompt("List two fruits."),
        Some(&ConstraintKind::JsonObject),
        300,
    ));
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    assert!(v.is_object() && reason == FinishReason::Stop, "{text}");
}

#[test]
fn regex_choice_lark_and_gbnf_hold() {
    let cases = [
        (
            ConstraintKind::Regex(r"[0-9]{3}-[0-9]{4}".into()),
            r"^[0-9]{3}-[0-9]{4}$",
        ),
        (
            ConstraintKind::Choice(vec!["positive".into(), "negative".into()]),
            r"^(positive|negative)$",
        ),
        (
            ConstraintKind::Lark("start: \"The answer is \" NUM \".\"\nNUM: /[0-9]+/".into()),
            r"^The answer is [0-9]+\.$",
        ),
        (
            ConstraintKind::Gbnf(
                "root ::= (\"yes\" | \"no\") \", because \" [a-z ]{1,20} \".\"".into(),
            ),
            r"^(yes|no), because [a-z ]{1,20}\.$",
        ),
    ];
    for (kind, pattern) in cases {
        let (text, reason) = run(request(chat_prompt("Is the sky blue?"), Some(&kind), 60));
        // Checked with the `regex` crate, not llguidance's own engine.
        let re = regex::Regex::new(pattern).unwrap();
        assert!(
            re.is_match(&text),
            "{kind:?}: {text:?} does not match {pattern}"
        );
        assert_eq!(reason, FinishReason::Stop, "{text:?}");
    }
}

#[test]
fn forced_tool_calls_have_schema_valid_arguments() {
    let params = json!({
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 30}, "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"],
        "additionalProperties": false
    });
    let tools = vec![
        FunctionDef {
            name: "get_weather".into(),
            description: None,
            parameters: Some(params.clone()),
            strict: None,
        },
        FunctionDef {
            name: "get_time".into(),
            description: None,
            parameters: None,
            strict: None,
        },
    ];
    let kind = ConstraintKind::ToolCalls {
        tools,
        parallel: false,
    };
    let (text, reason) = run(request(
        chat_prompt("What is the weather in Paris?"),
        Some(&kind),
        120,
    ));
    assert_eq!(reason, FinishReason::Stop, "{text}");
    let inner = text
        .strip_prefix("<tool_call>\n")
        .and_then(|t| t.strip_suffix("\n</tool_call>"))
        .unwrap_or_else(|| panic!("not one tool call: {text:?}"));
    let call: Value = serde_json::from_str(inner).unwrap();
    match call["name"].as_str() {
        Some("get_weather") => validate(&params, &call["arguments"].to_string()),
        Some("get_time") => assert!(call["arguments"].is_object(), "{call}"),
        other => panic!("unknown tool {other:?}"),
    }
}

#[test]
fn a_constraint_cut_short_ends_with_length() {
    let schema = json!({"type": "object", "properties": {"story": {"type": "string"}}, "required": ["story"]});
    let (text, reason) = run(request(
        chat_prompt("Tell me a long story."),
        Some(&ConstraintKind::JsonSchema(schema)),
        8,
    ));
    assert_eq!(reason, FinishReason::Length);
    assert!(text.starts_with("{\"story\": \""), "{text:?}");
}

#[test]
fn masks_allow_exactly_the_valid_continuations() {
    let f = fixture();
    let schema = json!({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"], "additionalProperties": false});
    let mut c = f
        .grammars
        .compile(&ConstraintKind::JsonSchema(schema))
        .unwrap()
        .constraint;
    let mut mask = TokenMask::new(f.tokenizer.vocab_size());
    let text = "{\"n\": 42}";
    for id in f.tokenizer.encode(text, false).unwrap() {
        c.fill_mask(&mut mask).unwrap();
        assert!(mask.allows(id), "token {id} of {text:?} refused");
        c.commit(id).unwrap();
    }
    c.fill_mask(&mut mask).unwrap();
    let eos = f.tokenizer.stop_token_ids();
    assert!(
        eos.iter().all(|&t| mask.allows(t)),
        "complete: the end tokens are allowed"
    );
    assert_eq!(mask.count(), eos.len(), "and nothing else");
    assert!(c.is_end(eos[0]));

    // A fresh state refuses what cannot start the object.
    let mut c = f
        .grammars
        .compile(&ConstraintKind::JsonObject)
        .unwrap()
        .constraint;
    c.fill_mask(&mut mask).unwrap();
    let hello = f.tokenizer.encode("hello", false).unwrap()[0];
    let brace = f.tokenizer.encode("{", false).unwrap()[0];
    assert!(!mask.allows(hello) && mask.allows(brace));
    assert!(!mask.allows(eos[0]), "an empty output is not an object");
}

#[test]
fn unsupported_schemas_and_broken_grammars_are_errors_that_say_why() {
    let g = &fixture().grammars;
    let err = |k: ConstraintKind| match g.compile(&k) {
        Err(GrammarError::Compile(m)) => m,
        Ok(_) => panic!("{k:?} compiled"),
        Err(e) => panic!("{k:?}: {e}"),
    };
    let m = err(ConstraintKind::JsonSchema(
        json!({"type": "array", "uniqueItems": true}),
    ));
    assert!(m.contains("uniqueItems"), "{m}");
    let m = err(ConstraintKind::JsonSchema(
        json!({"type": "object", "if": {"required": ["a"]}, "then": {"required": ["b"]}}),
    ));
    assert!(m.contains("if") && m.contains("then"), "{m}");
    let m = err(ConstraintKind::Regex("[a-".into()));
    assert!(!m.is_empty());
    let m = err(ConstraintKind::Lark("start: undefined_rule".into()));
    assert!(m.contains("undefined_rule"), "{m}");
    let m = err(ConstraintKind::Gbnf("root ::= \"a".into()));
    assert!(m.contains("unterminated literal"), "{m}");
}

#[test]
fn constrained_neighbours_leave_unconstrained_output_unchanged() {
    let f = fixture();
    let plain = |p: Vec<u32>| EngineRequest {
        prompt: p,
        max_tokens: 24,
        stop_token_ids: f.tokenizer.stop_token_ids(),
        ..Default::default()
    };
    let prompt = chat_prompt("Name a famous scientist.");
    let (alone, _) = run(plain(prompt.clone()));
    // The same request in a batch with constrained ones.
    let kind = ConstraintKind::JsonObject;
    let mut streams: Vec<_> = (0..3)
        .map(|_| {
            f.engine
                .submit(request(chat_prompt("Give me JSON."), Some(&kind), 40))
        })
        .collect();
    let (batched, _) = run(plain(prompt));
    for s in &mut streams {
        while let Some(ev) = s.blocking_recv() {
            if matches!(ev, TokenEvent::Done { .. } | TokenEvent::Error(_)) {
                break;
            }
        }
    }
    assert_eq!(alone, batched);
}

#[test]
fn n_copies_of_a_constraint_are_independent() {
    let f = fixture();
    let kind = ConstraintKind::Choice(vec!["alpha".into(), "beta".into()]);
    let c = BoxedConstraint(Box::new(f.grammars.compile(&kind).unwrap().constraint));
    let mut copy = c.clone();
    let alpha = f.tokenizer.encode("alpha", false).unwrap();
    for &t in &alpha {
        copy.0.commit(t).unwrap();
    }
    // The original is still at the start.
    let mut original = c;
    let mut mask = TokenMask::new(f.tokenizer.vocab_size());
    original.0.fill_mask(&mut mask).unwrap();
    assert!(mask.allows(alpha[0]));
    assert!(!mask.allows(f.tokenizer.stop_token_ids()[0]));
    copy.0.fill_mask(&mut mask).unwrap();
    assert!(mask.allows(f.tokenizer.stop_token_ids()[0]));
}

#[test]
fn auto_tool_calls_are_free_until_a_call_opens_then_constrained() {
    let f = fixture();
    let tools = vec![FunctionDef {
        name: "get_weather".into(),
        description: None,
        parameters: Some(
            json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
        ),
        strict: None,
    }];
    let mut c = f.grammars.tool_calls_when_started(&tools).unwrap();
    let mut mask = TokenMask::new(f.tokenizer.vocab_size());
    let walk = |c: &mut inferd_grammar::LazyToolCalls, mask: &mut TokenMask, text: &str| {
        for id in f.tokenizer.encode(text, false).unwrap() {
            c.fill_mask(mask).unwrap();
            assert!(mask.allows(id), "{text:?}: token {id} refused");
            c.commit(id).unwrap();
        }
    };
    assert!(c.is_free(), "free text needs no mask");
    walk(&mut c, &mut mask, "Let me check the weather. ");
    assert!(!c.in_call() && c.is_free());
    c.fill_mask(&mut mask).unwrap();
    assert_eq!(mask.count(), mask.vocab(), "free text: everything allowed");
    walk(&mut c, &mut mask, "<tool_call>\n{\"name\": \"");
    assert!(c.in_call() && !c.is_free());
    c.fill_mask(&mut mask).unwrap();
    let bogus = f.tokenizer.encode("delete", false).unwrap()[0];
    assert!(
        !mask.allows(bogus),
        "only a declared tool's name may follow"
    );
    walk(
        &mut c,
        &mut mask,
        "get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
    );
    assert!(
        !c.in_call() && c.is_free(),
        "free again after the closing tag"
    );
    c.fill_mask(&mut mask).unwrap();
    assert_eq!(mask.count(), mask.vocab());
}

#[test]
fn thousands_of_choices_work_and_a_grammar_past_the_parser_limits_fails_only_its_request() {
    let f = fixture();
    let many: Vec<String> = (0..5000).map(|i| format!("option{i}")).collect();
    let (text, reason) = run(request(
        chat_prompt("Pick one."),
        Some(&ConstraintKind::Choice(many.clone())),
        20,
    ));
    assert!(
        many.contains(&text) && reason == FinishReason::Stop,
        "{text:?}"
    );
    // 5,000 alternatives as parser rules exceed llguidance's row limit once the
    // first token is in: the request fails with the parser's reason (the HTTP
    // layer makes it a 400), the engine carries on.
    let alts: Vec<String> = many.iter().map(|c| format!("\"{c}\"")).collect();
    let lark = ConstraintKind::Lark(format!("start: {}", alts.join(" | ")));
    let mut rx = f
        .engine
        .submit(request(chat_prompt("Pick one."), Some(&lark), 20));
    let mut failed = None;
    while let Some(ev) = rx.blocking_recv() {
        match ev {
            TokenEvent::Error(e) => {
                failed = Some(e.to_string());
                break;
            }
            TokenEvent::Done { .. } => break,
            _ => {}
        }
    }
    let msg = failed.expect("the row limit is hit");
    assert!(
        msg.contains("output constraint") && msg.contains("max is"),
        "{msg}"
    );
    let (text, _) = run(request(
        chat_prompt("Pick one."),
        Some(&ConstraintKind::Choice(many.clone())),
        20,
    ));
    assert!(many.contains(&text), "the engine still serves: {text:?}");
}
