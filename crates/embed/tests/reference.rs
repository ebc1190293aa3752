//! all-MiniLM-L6-v2 against sentence-transformers on the same weights: the
//! fixture (scripts/reference/make_embedding_fixture.py) holds 234 sentences, the
//! token ids Hugging Face's tokenizer gives them, and the embeddings
//! sentence-transformers computes for them one at a time. The real model comes
//! from `inferd models fetch minilm-l6`.

use std::path::PathBuf;
use std::sync::OnceLock;

use inferd_embed::{Embedder, Precision};
use inferd_testutil::report;
use serde::Deserialize;

/// Cosine similarity every embedding must reach against sentence-transformers:
/// f32 and bf16 stay within rounding distance; Q8's 8-bit weights cost more.
fn min_cosine(precision: Precision) -> f32 {
    match precision {
        Precision::Q8 => 0.999,
        Precision::F32 | Precision::Bf16 => 0.9999,
    }
}

#[derive(Deserialize)]
struct Fixture {
    model_sha256: String,
    dims: usize,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
}

fn fixture() -> &'static (Fixture, Vec<Vec<f32>>) {
    static F: OnceLock<(Fixture, Vec<Vec<f32>>)> = OnceLock::new();
    F.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let json =
            std::fs::read_to_string(dir.join("minilm_reference.json")).expect("fixture JSON");
        let fixture: Fixture = serde_json::from_str(&json).expect("fixture parses");
        let bytes = std::fs::read(dir.join("minilm_reference.f32")).expect("fixture embeddings");
        assert_eq!(bytes.len(), fixture.cases.len() * fixture.dims * 4);
        let floats: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let rows = floats
            .chunks_exact(fixture.dims)
            .map(<[f32]>::to_vec)
            .collect();
        (fixture, rows)
    })
}

fn embedder() -> &'static Embedder {
    static E: OnceLock<Embedder> = OnceLock::new();
    E.get_or_init(|| {
        Embedder::load(inferd_testutil::minilm_path()).expect("all-MiniLM-L6-v2 loads")
    })
}

/// Both inputs are unit vectors already; dividing by the norms anyway keeps a
/// wrongly normalised output from passing.
fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

/// The worst cosine over `got` against the reference, with the sentence it came from.
fn check(label: &str, got: &[Vec<f32>]) -> f32 {
    assert_eq!(got.len(), fixture().1.len(), "{label}: one vector per case");
    let e = embedder();
    check_on(label, e.isa(), e.precision(), got)
}

/// [`check`] for the first `got.len()` cases, computed on kernel path `isa`.
fn check_on(label: &str, isa: inferd_embed::Isa, precision: Precision, got: &[Vec<f32>]) -> f32 {
    let label = format!("{label}, {}", precision.name());
    let min = min_cosine(precision);
    let (fixture, want) = fixture();
    let want = &want[..got.len()];
    let mut worst = (f32::INFINITY, 0);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.len(), fixture.dims);
        let norm: f32 = g.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!(
            (norm - 1.0).abs() < 1e-5,
            "{label}: case {i} has norm {norm}"
        );
        let c = cosine(g, w);
        if c < worst.0 {
            worst = (c, i);
        }
    }
    let (c, i) = worst;
    let case = &fixture.cases[i];
    report(&format!(
        "embed reference ({label}, kernels {}): worst cosine vs sentence-transformers {c:.7} \
         (case {i}, {} tokens) over {} sentences",
        isa.name(),
        case.ids.len(),
        got.len()
    ));
    assert!(
        c >= min,
        "{label}: case {i} {:?}: cosine {c} < {min}",
        case.text
    );
    c
}

#[test]
fn fixture_was_made_from_the_installed_weights() {
    // The registry's pin for minilm-l6's model.safetensors.
    assert_eq!(
        fixture().0.model_sha256,
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
    );
    assert_eq!(embedder().dims(), fixture().0.dims);
    assert_eq!(embedder().max_tokens(), 512);
}

#[test]
fn token_ids_match_hugging_face() {
    let e = embedder();
    let mut mismatches = Vec::new();
    for (i, case) in fixture().0.cases.iter().enumerate() {
        let ids = e.tokenize(&case.text).expect("tokenizes");
        if ids != case.ids {
            mismatches.push(format!(
                "case {i} {:?}: {ids:?} != {:?}",
                case.text, case.ids
            ));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

/// Every fixture sentence embedded on its own (batch 1), computed once for the
/// tests that need it.
fn singles() -> &'static [Vec<f32>] {
    static S: OnceLock<Vec<Vec<f32>>> = OnceLock::new();
    S.get_or_init(|| {
        let e = embedder();
        fixture()
            .0
            .cases
            .iter()
            .map(|c| {
                let mut v = e.embed_tokens(&[&c.ids]).expect("embeds");
                v.pop().expect("one embedding per input")
            })
            .collect()
    })
}

#[test]
fn one_at_a_time_matches_sentence_transformers() {
    check("batch 1", singles());
}

#[test]
fn batches_of_32_match_sentence_transformers_and_one_at_a_time() {
    let e = embedder();
    let mut got = Vec::new();
    for chunk in fixture().0.cases.chunks(32) {
        let texts: Vec<&str> = chunk.iter().map(|c| c.text.as_str()).collect();
        got.extend(e.embed(&texts).expect("embeds"));
    }
    check("batches of 32, from text", &got);
    // Batching changes which tokens share a matmul, never what an input attends
    // to: results equal the unbatched ones up to float summation order.
    let worst = singles()
        .iter()
        .zip(&got)
        .map(|(s, g)| cosine(s, g))
        .fold(1.0f32, f32::min);
    report(&format!(
        "embed batches of 32 vs one at a time: worst cosine {worst:.8}"
    ));
    assert!(
        worst >= 0.999_999,
        "batching changed a result: cosine {worst}"
    );
}

#[test]
fn the_whole_fixture_as_one_batch_matches() {
    let ids: Vec<&[u32]> = fixture().0.cases.iter().map(|c| c.ids.as_slice()).collect();
    let got = embedder().embed_tokens(&ids).expect("embeds");
    check("one batch of all", &got);
}

#[test]
fn inputs_too_long_or_outside_the_vocabulary_are_errors_naming_the_input() {
    let e = embedder();
    let ok = e.tokenize("fine").expect("tokenizes");
    let long = vec![101u32; e.max_tokens() + 1];
    let err = e
        .embed_tokens(&[&ok, &long])
        .expect_err("too long")
        .to_string();
    assert!(
        err.contains("input 1") && err.contains("513") && err.contains("512"),
        "{err}"
    );
    let bad = [101, 30522, 102];
    let err = e.embed_tokens(&[&bad]).expect_err("outside").to_string();
    assert!(
        err.contains("input 0") && err.contains("30522") && err.contains("position 1"),
        "{err}"
    );
    let err = e.embed_tokens(&[&ok, &[]]).expect_err("empty").to_string();
    assert!(
        err.contains("input 1") && err.contains("no tokens"),
        "{err}"
    );
    // The longest input the model takes runs.
    let longest = vec![1000u32; e.max_tokens()];
    assert_eq!(
        e.embed_tokens(&[&longest]).expect("512 tokens")[0].len(),
        384
    );
    assert!(e.embed_tokens(&[]).expect("empty batch").is_empty());
    // A text past the limit tokenizes in full: the caller decides.
    let text = "word ".repeat(600);
    assert_eq!(e.tokenize(&text).expect("tokenizes").len(), 602);
    let err = e.embed(&["ok", &text]).expect_err("too long").to_string();
    assert!(err.contains("input 1") && err.contains("602"), "{err}");
}

#[test]
fn every_kernel_path_this_cpu_has_matches_sentence_transformers() {
    // The default path runs the whole fixture above; the others (the slow
    // scalar twins among them) the first 32 sentences, in one batch, in each
    // precision the path has a kernel for.
    let cases = &fixture().0.cases[..32];
    let ids: Vec<&[u32]> = cases.iter().map(|c| c.ids.as_slice()).collect();
    let mut ran = Vec::new();
    for isa in inferd_embed::Isa::available() {
        for precision in [Precision::F32, Precision::Bf16, Precision::Q8] {
            let Some(e) = Embedder::load(inferd_testutil::minilm_path())
                .expect("loads")
                .with_isa(isa)
                .expect("an available path")
                .with_precision(precision)
            else {
                continue;
            };
            assert_eq!((e.isa(), e.precision()), (isa, precision));
            check_on(
                "32 sentences",
                isa,
                precision,
                &e.embed_tokens(&ids).expect("embeds"),
            );
            ran.push(format!("{}/{}", isa.name(), precision.name()));
        }
    }
    report(&format!("embed reference: kernel paths checked: {ran:?}"));
}

/// Bf16 is the default exactly where the CPU has a bf16 kernel, and both
/// precisions agree with each other as closely as each agrees with the reference.
#[test]
fn the_default_precision_is_bf16_only_with_a_bf16_kernel() {
    let e = embedder();
    let want = Precision::best_for(e.isa());
    assert_eq!(e.precision(), want);
    report(&format!(
        "embed default precision on this CPU ({}): {}",
        e.isa().name(),
        e.precision().name()
    ));
}
