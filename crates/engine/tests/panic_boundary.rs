//! The engine's panic boundary on a tiny random-weight Llama written here: its
//! output head is all NaN, so every logit is NaN and a sampling request with min-p
//! trips the sampler's "at least one candidate survives filtering" invariant (a
//! real defect the boundary guards against: a broken model file must cost the
//! requests of one step, not the whole server).

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use inferd_engine::{
    start_engine, EngineConfig, EngineError, EngineHandle, EngineRequest, LoadedModel,
    SamplingParams, TokenEvent,
};
use inferd_gguf::writer::GgufWriter;
use inferd_gguf::{GgmlType, Value, ValueType};
use inferd_scheduler::SchedulerConfig;

const DIM: usize = 32;
const FFN: usize = 64;
const HEADS: u32 = 2;

/// Printable ASCII, one token per character: GPT-2's byte-level encoding stores
/// these bytes as themselves, so no byte-to-unicode table is needed.
fn vocabulary() -> Vec<String> {
    ('!'..='~').map(String::from).collect()
}

fn f32_bytes(values: impl IntoIterator<Item = f32>) -> Vec<u8> {
    values.into_iter().flat_map(f32::to_le_bytes).collect()
}

/// Small deterministic weights in [-0.1, 0.1) (xorshift64*).
fn weights(seed: u64, n: usize) -> Vec<u8> {
    let mut s = seed.max(1);
    f32_bytes((0..n).map(|_| {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        let u = (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32;
        (u - 0.5) * 0.2
    }))
}

/// A one-layer Llama GGUF with a NaN output head, written to a temp file.
fn nan_head_model() -> PathBuf {
    let vocab = vocabulary();
    let n_vocab = vocab.len();
    let u32v = |v: usize| Value::U32(v as u32);
    let matrix = |w: GgufWriter, name: &str, rows: usize, cols: usize, seed: u64| {
        // GGUF dims are [cols, rows]: the row length first.
        w.tensor(
            name,
            &[cols as u64, rows as u64],
            GgmlType::F32,
            weights(seed, rows * cols),
        )
    };
    let ones = |w: GgufWriter, name: &str| {
        w.tensor(name, &[DIM as u64], GgmlType::F32, f32_bytes([1.0; DIM]))
    };
    let mut w = GgufWriter::new()
        .kv("general.architecture", Value::String("llama".into()))
        .kv("llama.embedding_length", u32v(DIM))
        .kv("llama.feed_forward_length", u32v(FFN))
        .kv("llama.block_count", u32v(1))
        .kv("llama.attention.head_count", Value::U32(HEADS))
        .kv("llama.attention.head_count_kv", Value::U32(HEADS))
        .kv("llama.context_length", u32v(128))
        .kv("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5))
        .kv("tokenizer.ggml.model", Value::String("gpt2".into()))
        .kv(
            "tokenizer.ggml.tokens",
            Value::Array(
                ValueType::String,
                vocab.into_iter().map(Value::String).collect(),
            ),
        );
    w = matrix(w, "token_embd.weight", n_vocab, DIM, 1);
    w = ones(w, "blk.0.attn_norm.weight");
    w = matrix(w, "blk.0.attn_q.weight", DIM, DIM, 2);
    w = matrix(w, "blk.0.attn_k.weight", DIM, DIM, 3);
    w = matrix(w, "blk.0.attn_v.weight", DIM, DIM, 4);
    w = matrix(w, "blk.0.attn_output.weight", DIM, DIM, 5);
    w = ones(w, "blk.0.ffn_norm.weight");
    w = matrix(w, "blk.0.ffn_gate.weight", FFN, DIM, 6);
    w = matrix(w, "blk.0.ffn_up.weight", FFN, DIM, 7);
    w = matrix(w, "blk.0.ffn_down.weight", DIM, FFN, 8);
    w = ones(w, "output_norm.weight");
    w = w.tensor(
        "output.weight",
        &[DIM as u64, n_vocab as u64],
        GgmlType::F32,
        f32_bytes(vec![f32::NAN; n_vocab * DIM]),
    );
    let path = std::env::temp_dir().join(format!(
        "inferd-engine-nan-head-{}.gguf",
        std::process::id()
    ));
    std::fs::write(&path, w.to_bytes()).expect("the temp dir is writable");
    path
}

fn engine() -> EngineHandle {
    let path = nan_head_model();
    let model = LoadedModel::load(&path).expect("the tiny model loads");
    // The mapping stays valid after the name is gone.
    std::fs::remove_file(&path).expect("the temp file is removable");
    let config = EngineConfig {
        // One sequence at a time, so a request queued behind the panicking one
        // is provably not in the failing step.
        scheduler: SchedulerConfig {
            max_running: 1,
            ..Default::default()
        },
        kv_cache_mib: 1,
        ..Default::default()
    };
    start_engine(model, config).expect("the engine starts")
}

fn wait_until(limit: Duration, what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn first_terminal_event(rx: &mut inferd_engine::EventStream) -> TokenEvent {
    loop {
        match rx
            .blocking_recv()
            .expect("a stream ends with Done or Error")
        {
            TokenEvent::Token { .. } | TokenEvent::PromptLogprobs(_) => {}
            terminal => return terminal,
        }
    }
}

#[test]
fn a_panicking_step_fails_only_its_requests() {
    let handle = engine();
    let sampled = EngineRequest {
        prompt: vec![1, 2, 3],
        max_tokens: 4,
        sampling: SamplingParams {
            temperature: 1.0,
            min_p: 0.1,
            seed: Some(1),
            ..Default::default()
        },
        ..Default::default()
    };
    let greedy = EngineRequest {
        prompt: vec![4, 5, 6],
        max_tokens: 4,
        ..Default::default()
    };
    let mut doomed = handle.submit(sampled);
    let mut queued = handle.submit(greedy.clone());
    match first_terminal_event(&mut doomed) {
        TokenEvent::Error(e @ EngineError::StepPanicked(_)) => {
            let msg = e.to_string();
            assert!(
                msg.starts_with("the engine step panicked: ")
                    && msg.contains("at least one candidate survives filtering"),
                "the error names the panic and carries its message: {msg}"
            );
        }
        other => panic!("expected StepPanicked, got {other:?}"),
    }
    // Waiting while the step panicked (max_running 1), so untouched by it.
    assert!(
        matches!(first_terminal_event(&mut queued), TokenEvent::Done { .. }),
        "a request outside the failing step completes"
    );
    // The engine keeps serving new requests.
    let (ids, usage, _) = handle
        .generate_blocking(greedy)
        .expect("a greedy request after the panic completes");
    assert_eq!((ids.len(), usage.completion_tokens), (4, 4));
    assert_eq!(handle.gauges.step_failures_total.load(Ordering::Relaxed), 1);
    // Gauges are published just after the step that sent Done.
    wait_until(
        Duration::from_secs(5),
        "the failed request's blocks are freed",
        || handle.gauges.kv_used_blocks.load(Ordering::Relaxed) == 0,
    );
    assert!(handle.is_alive());

    handle.shutdown();
    wait_until(
        Duration::from_secs(1),
        "the engine exits after shutdown",
        || !handle.is_alive(),
    );
    let mut late = handle.submit(EngineRequest {
        prompt: vec![1],
        max_tokens: 1,
        ..Default::default()
    });
    assert!(
        matches!(
            late.blocking_recv(),
            Some(TokenEvent::Error(EngineError::Stopped))
        ),
        "a submit after shutdown is refused"
    );
    assert!(late.blocking_recv().is_none(), "nothing follows the error");
}
