//! SmolLM2-135M's tokenizer, built from its GGUF metadata, against Hugging Face.
//!
//! `tests/fixtures/smollm2_tokenizer.json` holds encode/decode results of the HF
//! tokenizer for the same vocabulary (its `source` field says how it was made). Every
//! case must match exactly: encode ids, whole-sequence decode, and streamed decode.
//!
//! The tokenizer spec comes from the real model file's metadata. A missing model fails
//! the test rather than skipping it: a silently skipped reference check is worse than
//! none.

use std::path::Path;
use std::sync::OnceLock;

use inferd_gguf::GgufFile;
use inferd_tokenizer::{ChatMessage, ChatTemplate, Detokenizer, Tokenizer, TokenizerSpec};
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    source: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
    decoded: String,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2_tokenizer.json");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading fixture {}: {e}", path.display()));
        let fixture: Fixture = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("parsing fixture {}: {e}", path.display()));
        assert!(
            !fixture.source.is_empty(),
            "fixture must say how it was made"
        );
        assert!(fixture.cases.len() >= 300, "fixture has too few cases");
        fixture
    })
}

fn load_spec(path: &Path) -> TokenizerSpec {
    let file = GgufFile::open(path)
        .unwrap_or_else(|e| panic!("{e}; run `make fetch-models` to get the SmolLM2 model"));
    TokenizerSpec::from_gguf(&file.info).expect("SmolLM2 tokenizer metadata is complete")
}

fn spec() -> &'static TokenizerSpec {
    static SPEC: OnceLock<TokenizerSpec> = OnceLock::new();
    SPEC.get_or_init(|| load_spec(&inferd_testutil::smollm2_path()))
}

fn tokenizer() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| Tokenizer::from_spec(spec()).expect("SmolLM2 spec builds"))
}

/// Runs `check` on every case and fails listing the first mismatches and the count.
fn assert_all_cases(what: &str, check: impl Fn(&Case) -> Option<String>) {
    let cases = &fixture().cases;
    let failures: Vec<String> = cases.iter().filter_map(&check).collect();
    eprintln!(
        "{what}: {}/{} cases match",
        cases.len() - failures.len(),
        cases.len()
    );
    assert!(
        failures.is_empty(),
        "{what}: {} of {} cases differ from Hugging Face; first ones:\n{}",
        failures.len(),
        cases.len(),
        failures
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn encode_matches_hugging_face() {
    let tok = tokenizer();
    assert_all_cases("encode", |case| {
        let ids = tok.encode(&case.text, false).expect("encode");
        (ids != case.ids).then(|| format!("{:?}: got {ids:?}, want {:?}", case.text, case.ids))
    });
}

#[test]
fn decode_matches_hugging_face() {
    let tok = tokenizer();
    assert_all_cases("decode", |case| {
        let text = tok.decode(&case.ids, false).expect("decode");
        (text != case.decoded).then(|| format!("{:?}: got {text:?}", case.decoded))
    });
}

#[test]
fn streamed_decode_matches_hugging_face() {
    let tok = tokenizer();
    assert_all_cases("stream", |case| {
        let mut detok = Detokenizer::new(false);
        let mut chunks: Vec<String> = case
            .ids
            .iter()
            .filter_map(|&id| detok.push(tok, id))
            .collect();
        chunks.extend(detok.flush());
        let streamed = chunks.concat();
        if streamed != case.decoded {
            return Some(format!("{:?}: streamed {streamed:?}", case.decoded));
        }
        let partial = chunks.iter().any(|c| c.contains('\u{FFFD}'));
        (partial && !case.decoded.contains('\u{FFFD}'))
            .then(|| format!("{:?}: a chunk split a character: {chunks:?}", case.decoded))
    });
}

#[test]
fn metadata_special_and_stop_tokens() {
    let tok = tokenizer();
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!((tok.bos_id(), tok.eos_id()), (Some(1), Some(2)));
    assert_eq!(tok.id_of("<|im_start|>"), Some(1));
    assert!(tok.is_special(1) && !tok.is_special(17));
    // EOS is <|im_end|>; <|endoftext|> also ends generation.
    assert_eq!(tok.stop_token_ids(), vec![2, 0]);
    // add_bos_token is false for SmolLM2.
    assert_eq!(
        tok.encode("Hi", true).expect("encode"),
        tok.encode("Hi", false).expect("encode")
    );
}

#[test]
fn gguf_chat_template_renders_and_encodes_with_special_tokens() {
    let spec = spec();
    let source = spec
        .chat_template
        .as_deref()
        .expect("SmolLM2 GGUF has a chat template");
    let tok = tokenizer();
    let template = ChatTemplate::new(source, "<|im_start|>", "<|im_end|>").expect("compiles");
    let prompt = template
        .render(&[ChatMessage::new("user", "Hi")], None, true)
        .expect("renders");
    assert_eq!(
        prompt,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    let ids = tok.encode(&prompt, true).expect("encode");
    assert_eq!(
        ids.iter().filter(|&&id| id == 1).count(),
        3,
        "three <|im_start|>"
    );
    assert_eq!(
        ids.iter().filter(|&&id| id == 2).count(),
        2,
        "two <|im_end|>"
    );
    assert_eq!(tok.decode(&ids, false).expect("decode"), prompt);
}
