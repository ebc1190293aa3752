//! The forward pass against Hugging Face transformers on the same weights
//! (fixture made by `scripts/reference/make_model_fixture.py`): teacher-forced top-1
//! agreement, top-5 log-probabilities, greedy continuations, and batch invariance.
//!
//! The default kernel path runs every prompt; the other ISA × precision paths run
//! a subset (the scalar one only the two shortest prompts, as it is slow). Each
//! test prints which paths it ran on how many prompts (`--nocapture`).

use inferd_kernels::{Isa, Precision};
use inferd_kvcache::{BlockPool, BlockTable};
use inferd_model::{ForwardOptions, KvStore, Llama, Logits, LogitsRequest, SeqBatch};
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    prompts: Vec<Prompt>,
}

#[derive(Deserialize)]
struct Prompt {
    name: String,
    prompt_ids: Vec<u32>,
    teacher_forced: TeacherForced,
    greedy: Greedy,
}

#[derive(Deserialize)]
struct TeacherForced {
    top_ids: Vec<Vec<u32>>,
    top_logprobs: Vec<Vec<f32>>,
}

#[derive(Deserialize)]
struct Greedy {
    ids: Vec<u32>,
    top2_logprobs: Vec<Vec<f32>>,
}

fn fixture() -> Fixture {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/smollm2_reference.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture readable"))
        .expect("fixture parses")
}

const BLOCK: usize = 16;

fn log_softmax(l: &[f32]) -> Vec<f32> {
    let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max + l.iter().map(|v| (v - max).exp()).sum::<f32>().ln();
    l.iter().map(|v| v - lse).collect()
}

fn argmax(l: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in l.iter().enumerate() {
        if v > l[best] {
            best = i;
        }
    }
    best as u32
}

/// Runs sequences together through forward, with their own block tables.
struct Runner<'m> {
    model: &'m Llama,
    pool: BlockPool,
    kv: KvStore,
}

impl<'m> Runner<'m> {
    fn new(model: &'m Llama, tokens: usize) -> Self {
        let blocks = tokens.div_ceil(BLOCK);
        Runner {
            model,
            pool: BlockPool::new(blocks, BLOCK),
            kv: model.new_kv_store(blocks, BLOCK),
        }
    }

    fn step(&mut self, seqs: &[(&[u32], usize, &mut BlockTable, LogitsRequest)]) -> Logits {
        let batch: Vec<SeqBatch> = seqs
            .iter()
            .map(|(tokens, start, table, logits)| SeqBatch {
                tokens,
                start_pos: *start,
                block_table: table.blocks(),
                logits: *logits,
            })
            .collect();
        self.model.forward(&batch, &mut self.kv).expect("forward")
    }
}

/// Greedy continuation of each prompt, all run in one ragged batch per step: the
/// prompts are prefilled together, then decoded together.
fn greedy_batched(model: &Llama, prompts: &[&[u32]], steps: usize) -> Vec<Vec<u32>> {
    let total: usize = prompts.iter().map(|p| p.len() + steps + BLOCK).sum();
    let mut r = Runner::new(model, total);
    let mut tables: Vec<BlockTable> = prompts.iter().map(|_| BlockTable::new()).collect();
    for (t, p) in tables.iter_mut().zip(prompts) {
        t.append(&mut r.pool, p.len()).unwrap();
    }
    let seqs: Vec<_> = prompts
        .iter()
        .zip(tables.iter_mut())
        .map(|(p, t)| (*p, 0, t, LogitsRequest::Last))
        .collect();
    let logits = r.step(&seqs);
    let mut out: Vec<Vec<u32>> = (0..prompts.len())
        .map(|i| vec![argmax(logits.last_of(i).unwrap())])
        .collect();
    for step in 1..steps {
        for t in tables.iter_mut() {
            t.append(&mut r.pool, 1).unwrap();
        }
        let last: Vec<[u32; 1]> = out.iter().map(|o| [*o.last().unwrap()]).collect();
        let seqs: Vec<_> = last
            .iter()
            .zip(tables.iter_mut())
            .zip(prompts)
            .map(|((tok, t), p)| (&tok[..], p.len() + step - 1, t, LogitsRequest::Last))
            .collect();
        let logits = r.step(&seqs);
        for (i, o) in out.iter_mut().enumerate() {
            o.push(argmax(logits.last_of(i).unwrap()));
        }
    }
    out
}

/// Top-1 agreement rate and worst top-5 log-probability error over `prompts`.
fn teacher_forced(model: &Llama, prompts: &[&Prompt]) -> (f64, f32) {
    let (mut agree, mut total) = (0usize, 0usize);
    let mut worst_lp = 0f32;
    for p in prompts {
        let mut r = Runner::new(model, p.prompt_ids.len() + BLOCK);
        let mut t = BlockTable::new();
        t.append(&mut r.pool, p.prompt_ids.len()).unwrap();
        let logits = r.step(&[(&p.prompt_ids, 0, &mut t, LogitsRequest::All)]);
        for (i, (ids, lps)) in p
            .teacher_forced
            .top_ids
            .iter()
            .zip(&p.teacher_forced.top_logprobs)
            .enumerate()
        {
            let lp = log_softmax(logits.get(0, i).unwrap());
            total += 1;
            if argmax(&lp) == ids[0] {
                agree += 1;
            }
            // Log-probabilities of the reference's top-5 tokens, where the reference
            // is confident enough for them to matter (p > 1%).
            for (&id, &want) in ids.iter().zip(lps) {
                if want > -4.6 {
                    worst_lp = worst_lp.max((lp[id as usize] - want).abs());
                }
            }
        }
    }
    let rate = agree as f64 / total as f64;
    let o = model.options;
    inferd_testutil::report(&format!(
        "reference: ran isa={:?} precision={:?} on {} prompts (teacher-forced): \
         top-1 agreement {agree}/{total} = {rate:.4}; worst top-5 |Δlogprob| {worst_lp:.4}",
        o.isa,
        o.precision,
        prompts.len()
    ));
    (rate, worst_lp)
}

/// Positions where the reference puts more than 1% on a token are compared; the
/// f32 path matches transformers to about 1e-3 (summation order only), the default
/// two-plane integer path to about 5e-3.
const LOGPROB_TOLERANCE: f32 = 0.01;

#[test]
fn teacher_forced_predictions_match_transformers() {
    let mut model = Llama::load(inferd_testutil::smollm2_path()).unwrap();
    let fx = fixture();
    assert!(fx.prompts.len() >= 8);
    let all: Vec<&Prompt> = fx.prompts.iter().collect();
    let (rate, worst) = teacher_forced(&model, &all);
    assert!(rate >= 0.99, "top-1 agreement {rate:.4} < 0.99");
    assert!(
        worst < LOGPROB_TOLERANCE,
        "top-5 logprob error {worst} exceeds {LOGPROB_TOLERANCE}"
    );
    // Every other kernel path and precision on a subset: the prompts up to 80
    // tokens, and for the scalar path (the slowest by far, and the reference the
    // SIMD paths are property-tested against in the kernels crate) the two shortest.
    let short: Vec<&Prompt> = fx
        .prompts
        .iter()
        .filter(|p| p.prompt_ids.len() <= 80)
        .collect();
    let mut shortest = short.clone();
    shortest.sort_by_key(|p| p.prompt_ids.len());
    shortest.truncate(2);
    let default = model.options;
    for isa in Isa::available() {
        for precision in [Precision::Q8x2, Precision::F32] {
            model.options = ForwardOptions { precision, isa };
            if model.options == default {
                continue;
            }
            let prompts = if isa == Isa::Scalar {
                &shortest
            } else {
                &short
            };
            let (rate, worst) = teacher_forced(&model, prompts);
            assert!(
                rate >= 0.99,
                "{isa:?} {precision:?}: top-1 agreement {rate:.4} < 0.99"
            );
            assert!(
                worst < LOGPROB_TOLERANCE,
                "{isa:?} {precision:?}: top-5 logprob error {worst}"
            );
        }
    }
}

/// The one-plane 8-bit activation path (llama.cpp's scheme) is measurably less
/// exact on this model (top-1 0.966, worst top-5 |Δlogprob| 0.59 on one Xeon, 0.91 on an AMD EPYC); this pins how
/// far it may drift so a regression in it still fails.
#[test]
fn q8_activation_path_stays_close() {
    let mut model = Llama::load(inferd_testutil::smollm2_path()).unwrap();
    model.options = ForwardOptions {
        precision: Precision::Q8,
        ..Default::default()
    };
    let fx = fixture();
    let all: Vec<&Prompt> = fx.prompts.iter().collect();
    let (rate, _) = teacher_forced(&model, &all);
    assert!(rate >= 0.96, "Q8 top-1 agreement {rate:.4} < 0.96");
}

#[test]
fn greedy_continuations_match_transformers_alone_and_batched() {
    let model = Llama::load(inferd_testutil::smollm2_path()).unwrap();
    let fx = fixture();
    let prompts: Vec<&[u32]> = fx.prompts.iter().map(|p| p.prompt_ids.as_slice()).collect();
    let steps = fx.prompts[0].greedy.ids.len();
    inferd_testutil::report(&format!(
        "reference: ran isa={:?} precision={:?} on {} prompts (greedy, alone and batched)",
        model.options.isa,
        model.options.precision,
        prompts.len()
    ));
    let batched = greedy_batched(&model, &prompts, steps);
    for (p, got_batched) in fx.prompts.iter().zip(&batched) {
        let alone = &greedy_batched(&model, &[&p.prompt_ids], steps)[0];
        assert_eq!(
            alone, got_batched,
            "{}: batched output differs from running alone",
            p.name
        );
        let want = &p.greedy.ids;
        match alone.iter().zip(want).position(|(a, b)| a != b) {
            None => eprintln!("{}: {steps} tokens identical", p.name),
            Some(i) => {
                // Allowed only where the reference itself was at a near-tie.
                let gap = p.greedy.top2_logprobs[i][0] - p.greedy.top2_logprobs[i][1];
                eprintln!(
                    "{}: first difference at token {i}, reference top-2 gap {gap:.4}",
                    p.name
                );
                assert!(
                    gap < 0.1,
                    "{}: differs at token {i} where the reference gap is {gap}",
                    p.name
                );
            }
        }
    }
}
