use std::collections::HashMap;

use inferd_kvcache::PrefixCacheConfig;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

fn scheduler(total_blocks: usize, block_size: usize, config: SchedulerConfig) -> Scheduler {
    let kv = KvCacheManager::new(PrefixCacheConfig {
        total_blocks,
        block_size,
        enable_prefix_caching: true,
    });
    Scheduler::new(config, kv)
}

fn seq(id: SeqId, prompt: Vec<u32>, max_tokens: usize, priority: i32) -> NewSequence {
    NewSequence {
        id,
        prompt,
        max_tokens,
        priority,
        salt: None,
    }
}

/// A stand-in model: the next token is a function of the whole sequence, so any
/// schedule (batching, chunking, preemption) must produce the same outputs.
fn fake_next(tokens: &[u32]) -> u32 {
    tokens
        .iter()
        .fold(7u32, |h, &t| h.wrapping_mul(31).wrapping_add(t))
        % 1000
}

/// Drives the scheduler to completion, returning each sequence's outputs. The model
/// writes each fed token into the K/V slot its block table maps it to and reads its
/// context back from there, so a prefix hit on the wrong K/V changes the outputs.
struct Driver {
    prompt_len: HashMap<SeqId, usize>,
    max_tokens: HashMap<SeqId, usize>,
    outputs: HashMap<SeqId, Vec<u32>>,
    steps: usize,
    /// The token written at each (block, slot).
    kv: HashMap<(BlockId, usize), u32>,
    /// Proposes drafts after every sampled token when set.
    spec: Option<Speculator>,
}

/// Proposes drafts the way a cheap drafter would: mostly the model's own next tokens,
/// with seeded random corruption and random lengths.
struct Speculator {
    rng: StdRng,
    drafted: usize,
    accepted: usize,
}

impl Driver {
    fn new() -> Self {
        Driver {
            prompt_len: HashMap::new(),
            max_tokens: HashMap::new(),
            outputs: HashMap::new(),
            steps: 0,
            kv: HashMap::new(),
            spec: None,
        }
    }

    /// A driver that proposes 1..=6 draft tokens after every sampled token.
    fn speculative(seed: u64) -> Self {
        Driver {
            spec: Some(Speculator {
                rng: StdRng::seed_from_u64(seed),
                drafted: 0,
                accepted: 0,
            }),
            ..Driver::new()
        }
    }

    fn add(&mut self, s: &mut Scheduler, n: NewSequence) -> Result<(), SchedulerError> {
        let (id, len, max) = (n.id, n.prompt.len(), n.max_tokens);
        s.add(n)?;
        self.prompt_len.insert(id, len);
        self.max_tokens.insert(id, max);
        Ok(())
    }

    fn step(&mut self, s: &mut Scheduler) -> StepPlan {
        let plan = s.schedule();
        assert!(
            plan.num_tokens() <= s.config().max_batch_tokens,
            "budget exceeded"
        );
        self.forward(s, &plan);
        s.complete_step(&plan);
        for c in plan.chunks.iter().filter(|c| c.sample) {
            self.sample(s, c);
        }
        s.check_invariants();
        self.steps += 1;
        plan
    }

    fn run(&mut self, s: &mut Scheduler) {
        while s.has_work() {
            self.step(s);
            assert!(self.steps < 100_000, "no progress");
        }
    }

    /// Writes every fed token, drafts included, into its K/V slot.
    fn forward(&mut self, s: &Scheduler, plan: &StepPlan) {
        let bs = s.kv.block_size();
        for c in &plan.chunks {
            assert!(c.draft == 0 || (c.sample && c.len == 1 + c.draft));
            let (tokens, table) = (s.tokens(c.id).unwrap(), s.block_table(c.id).unwrap());
            for p in c.start_pos..c.start_pos + c.len {
                self.kv.insert((table[p / bs], p % bs), tokens[p]);
            }
        }
    }

    /// The model's next token after position `pos`, from the context in the K/V.
    fn predict(&self, s: &Scheduler, id: SeqId, pos: usize) -> u32 {
        let bs = s.kv.block_size();
        let table = s.block_table(id).unwrap();
        let context: Vec<u32> = (0..=pos)
            .map(|q| {
                *self
                    .kv
                    .get(&(table[q / bs], q % bs))
                    .unwrap_or_else(|| panic!("sequence {id}: position {q} was never written"))
            })
            .collect();
        fake_next(&context)
    }

    /// Samples after a chunk: verifies its drafts (accepting the longest prefix the model
    /// agrees with), emits the model's token after them, then proposes new drafts.
    fn sample(&mut self, s: &mut Scheduler, c: &ScheduledChunk) {
        let tokens = s.tokens(c.id).unwrap().to_vec();
        let (prompt_len, max) = (self.prompt_len[&c.id], self.max_tokens[&c.id]);
        let real_end = c.start_pos + c.len - c.draft;
        let mut accepted = 0;
        let (next, generated) = loop {
            let next = self.predict(s, c.id, real_end + accepted - 1);
            let generated = real_end + accepted + 1 - prompt_len;
            if generated == max || accepted == c.draft || tokens[real_end + accepted] != next {
                break (next, generated);
            }
            accepted += 1;
        };
        if let Some(spec) = &mut self.spec {
            spec.drafted += c.draft;
            spec.accepted += accepted;
        }
        if generated == max {
            let mut out = tokens[prompt_len..real_end + accepted].to_vec();
            out.push(next);
            s.finish(c.id).unwrap();
            self.outputs.insert(c.id, out);
            return;
        }
        if c.draft > 0 {
            assert!(s.accept_draft(c.id, accepted));
        }
        s.append_token(c.id, next);
        // Verifying k drafts emits up to k + 1 tokens: stay within max_tokens.
        let room = max - generated - 1;
        let Some(spec) = &mut self.spec else {
            return;
        };
        let len = spec.rng.gen_range(1..=6).min(room);
        let mut context = s.tokens(c.id).unwrap().to_vec();
        for _ in 0..len {
            let mut guess = fake_next(&context);
            if spec.rng.gen_bool(0.2) {
                guess = (guess + spec.rng.gen_range(1..1000)) % 1000;
            }
            context.push(guess);
        }
        let draft = &context[context.len() - len..];
        assert!(s.set_draft(c.id, draft), "a decoding sequence takes drafts");
    }
}

#[test]
fn long_prompt_is_chunked_and_decodes_keep_running() {
    let mut s = scheduler(
        1000,
        16,
        SchedulerConfig {
            max_batch_tokens: 64,
            ..Default::default()
        },
    );
    let mut d = Driver::new();
    for id in 0..3 {
        d.add(&mut s, seq(id, vec![1, 2, 3, id as u32], 50, 0))
            .unwrap();
    }
    d.step(&mut s); // the three short prompts prefill together
    d.add(&mut s, seq(9, (0..1000).collect(), 4, 0)).unwrap();
    let mut long_chunks = 0;
    while s.tokens(9).is_some_and(|t| t.len() == 1000) {
        let plan = d.step(&mut s);
        let decodes = plan.chunks.iter().filter(|c| c.id < 3).count();
        assert_eq!(decodes, 3, "every running stream decodes every step");
        if let Some(c) = plan.chunks.iter().find(|c| c.id == 9) {
            assert_eq!(c.len, (64 - 3).min(1000 - c.start_pos));
            assert_eq!(c.sample, c.start_pos + c.len == 1000);
            long_chunks += 1;
        }
    }
    assert_eq!(long_chunks, 1000usize.div_ceil(61));
    d.run(&mut s);
    assert_eq!(s.kv_stats().used_blocks, 0);
}

#[test]
fn prefill_is_capped_while_streams_decode_and_uncapped_when_alone() {
    let mut s = scheduler(
        1000,
        16,
        SchedulerConfig {
            max_batch_tokens: 64,
            max_prefill_tokens_while_decoding: Some(8),
            ..Default::default()
        },
    );
    let mut d = Driver::new();
    d.add(&mut s, seq(0, vec![1, 2, 3], 30, 0)).unwrap();
    let first = d.step(&mut s);
    assert_eq!(first.chunks[0].len, 3, "nothing decodes yet: no cap");
    d.add(&mut s, seq(1, (0..100).collect(), 2, 0)).unwrap();
    d.add(&mut s, seq(2, (100..140).collect(), 2, 0)).unwrap();
    while s.tokens(1).is_some_and(|t| t.len() == 100) {
        let plan = d.step(&mut s);
        let prefill: usize = plan
            .chunks
            .iter()
            .filter(|c| c.id != 0)
            .map(|c| c.len)
            .sum();
        assert!(
            plan.chunks.iter().any(|c| c.id == 0),
            "the stream decodes every step"
        );
        assert!(
            prefill <= 8,
            "at most 8 prefill tokens beside a decode, got {prefill}"
        );
    }
    d.run(&mut s);
    assert_eq!(s.kv_stats().used_blocks, 0);
    assert!(SchedulerConfig {
        max_prefill_tokens_while_decoding: Some(0),
        ..Default::default()
    }
    .validate()
    .unwrap_err()
    .contains("max_prefill_tokens_while_decoding"));
}

#[test]
fn admission_follows_priority_then_arrival() {
    let mut s = scheduler(
        1000,
        16,
        SchedulerConfig {
            max_running: 1,
            ..Default::default()
        },
    );
    let mut d = Driver::new();
    d.add(&mut s, seq(1, vec![1; 5], 1, 0)).unwrap();
    d.add(&mut s, seq(2, vec![2; 5], 1, 5)).unwrap();
    d.add(&mut s, seq(3, vec![3; 5], 1, 0)).unwrap();
    d.add(&mut s, seq(4, vec![4; 5], 1, 5)).unwrap();
    let mut order = Vec::new();
    while s.has_work() {
        let plan = d.step(&mut s);
        order.extend(plan.first_scheduled);
    }
    assert_eq!(order, vec![2, 4, 1, 3]);
}

#[test]
fn full_queue_and_oversized_requests_are_refused_at_once() {
    let mut s = scheduler(
        10,
        16,
        SchedulerConfig {
            max_waiting: 2,
            ..Default::default()
        },
    );
    s.add(seq(1, vec![1; 10], 10, 0)).unwrap();
    s.add(seq(2, vec![1; 10], 10, 0)).unwrap();
    assert_eq!(
        s.add(seq(3, vec![1; 10], 10, 0)),
        Err(SchedulerError::QueueFull { max_waiting: 2 })
    );
    let mut s = scheduler(10, 16, SchedulerConfig::default());
    let err = s.add(seq(1, vec![1; 100], 100, 0)).unwrap_err();
    assert!(
        matches!(
            err,
            SchedulerError::TooLarge {
                needed_blocks: 13,
                total_blocks: 10,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        s.add(seq(1, vec![], 1, 0)),
        Err(SchedulerError::EmptyPrompt)
    );
}

#[test]
fn shared_prefix_is_reused_and_reported() {
    let mut s = scheduler(100, 4, SchedulerConfig::default());
    let mut d = Driver::new();
    let system: Vec<u32> = (100..140).collect();
    d.add(
        &mut s,
        seq(1, [system.clone(), vec![1, 2, 3]].concat(), 3, 0),
    )
    .unwrap();
    d.run(&mut s);
    d.add(&mut s, seq(2, [system.clone(), vec![4, 5]].concat(), 3, 0))
        .unwrap();
    d.step(&mut s);
    assert_eq!(s.cached_tokens(2), Some(40));
    d.run(&mut s);
}

#[test]
fn preemption_takes_lowest_priority_newest_and_outputs_do_not_change() {
    // 12 blocks of 4 tokens; three sequences that each grow to 20 tokens cannot all fit.
    let work = |total_blocks, speculate: bool| {
        let mut s = scheduler(total_blocks, 4, SchedulerConfig::default());
        let mut d = if speculate {
            Driver::speculative(5)
        } else {
            Driver::new()
        };
        d.add(&mut s, seq(1, vec![1; 8], 12, 1)).unwrap();
        d.add(&mut s, seq(2, vec![2; 8], 12, 0)).unwrap();
        d.add(&mut s, seq(3, vec![3; 8], 12, 0)).unwrap();
        let mut preempted = Vec::new();
        while s.has_work() {
            preempted.extend(d.step(&mut s).preempted);
        }
        (d.outputs, preempted, s.preemptions_total())
    };
    let (roomy, none, _) = work(100, false);
    assert!(none.is_empty());
    for speculate in [false, true] {
        let (tight, preempted, total) = work(12, speculate);
        assert!(
            total > 0,
            "the tight cache must preempt (speculate: {speculate})"
        );
        assert_eq!(preempted[0], 3, "lowest priority, newest goes first");
        assert!(
            !preempted.contains(&1),
            "the high-priority sequence is never preempted (speculate: {speculate})"
        );
        assert_eq!(
            roomy, tight,
            "recompute after preemption gives the same outputs (speculate: {speculate})"
        );
    }
    let (roomy_speculative, none, _) = work(100, true);
    assert!(none.is_empty(), "drafts alone never preempt");
    assert_eq!(roomy, roomy_speculative);
}

/// A workload with shared prefixes, long and short prompts and outputs, for comparing
/// schedules: every sequence must produce the same outputs under any of them.
fn mixed_workload(rng: &mut StdRng) -> Vec<NewSequence> {
    let system: Vec<u32> = (500..523).collect();
    (0..12)
        .map(|id| {
            let mut prompt = if id % 3 == 0 { vec![] } else { system.clone() };
            prompt.extend((0..rng.gen_range(1..30)).map(|_| rng.gen_range(0..1000)));
            seq(id, prompt, rng.gen_range(1..40), rng.gen_range(-1..2))
        })
        .collect()
}

#[test]
fn speculative_decoding_gives_the_plain_outputs() {
    let configs = [
        // (total blocks, block size, max_batch_tokens, prefill cap while decoding)
        (200, 4, 256, None),
        (200, 16, 64, Some(8)),
        (24, 4, 32, None),
        (30, 4, 7, Some(2)),
        (40, 8, 3, None),
    ];
    let (mut drafted, mut accepted, mut preemptions) = (0, 0, 0);
    for (round, &(total_blocks, block_size, max_batch_tokens, cap)) in configs.iter().enumerate() {
        let config = SchedulerConfig {
            max_batch_tokens,
            max_running: 8,
            max_prefill_tokens_while_decoding: cap,
            ..Default::default()
        };
        let workload = mixed_workload(&mut StdRng::seed_from_u64(round as u64));
        let mut plain = Driver::new();
        let mut s = scheduler(total_blocks, block_size, config.clone());
        for n in &workload {
            plain.add(&mut s, n.clone()).unwrap();
        }
        plain.run(&mut s);
        for seed in 0..3 {
            let mut spec = Driver::speculative(seed);
            let mut s = scheduler(total_blocks, block_size, config.clone());
            for n in &workload {
                spec.add(&mut s, n.clone()).unwrap();
            }
            spec.run(&mut s);
            assert_eq!(spec.outputs, plain.outputs, "round {round}, seed {seed}");
            assert_eq!(s.kv_stats().used_blocks, 0, "round {round}: blocks leaked");
            let sp = spec.spec.as_ref().unwrap();
            drafted += sp.drafted;
            accepted += sp.accepted;
            preemptions += s.preemptions_total();
        }
    }
    assert!(
        0 < accepted && accepted < drafted && preemptions > 0,
        "drafts must be both accepted ({accepted} of {drafted}) and rejected, \
         and the tight caches must preempt ({preemptions})"
    );
}

/// The model's next `k` tokens after `tokens`: a draft verification accepts whole.
fn model_chain(tokens: &[u32], k: usize) -> Vec<u32> {
    let mut context = tokens.to_vec();
    for _ in 0..k {
        context.push(fake_next(&context));
    }
    context.split_off(tokens.len())
}

#[test]
fn drafts_are_trimmed_to_the_token_budget() {
    let config = SchedulerConfig {
        max_batch_tokens: 5,
        ..Default::default()
    };
    let mut s = scheduler(100, 4, config);
    let mut d = Driver::new();
    d.add(&mut s, seq(1, vec![1, 2], 20, 1)).unwrap();
    d.add(&mut s, seq(2, vec![3, 4], 20, 0)).unwrap();
    d.step(&mut s);
    let len = |s: &Scheduler, id| s.tokens(id).unwrap().len();
    assert_eq!((len(&s, 1), len(&s, 2)), (3, 3), "both decode now");

    // Two real decode tokens leave 3 of the 5: of four drafts the first three
    // are kept, and the higher-priority sequence's drafts never take the other
    // one's token. Right ones are all accepted.
    let chunk = |plan: &StepPlan, id| plan.chunks.iter().find(|c| c.id == id).cloned();
    let guess = model_chain(s.tokens(1).unwrap(), 4);
    assert!(s.set_draft(1, &guess));
    assert_eq!(len(&s, 1), 3 + 4);
    let plan = d.step(&mut s);
    let one = chunk(&plan, 1).unwrap();
    assert_eq!((one.len, one.draft, one.sample), (4, 3, true));
    assert_eq!(chunk(&plan, 2).unwrap().len, 1);
    assert_eq!((plan.num_tokens(), plan.num_draft_tokens()), (5, 3));
    assert_eq!(
        len(&s, 1),
        3 + 4,
        "three accepted drafts and the model's token; the fourth draft is gone"
    );

    // With a third sequence decoding, only two drafts fit.
    d.add(&mut s, seq(3, vec![5], 20, 0)).unwrap();
    d.step(&mut s);
    let guess = model_chain(s.tokens(1).unwrap(), 4);
    assert!(s.set_draft(1, &guess));
    let plan = d.step(&mut s);
    let one = chunk(&plan, 1).unwrap();
    assert_eq!((one.len, one.draft), (3, 2));
    assert_eq!(plan.num_tokens(), 5);

    // A budget with no room left drops them all: the sequence decodes its token.
    let config = SchedulerConfig {
        max_batch_tokens: 1,
        ..Default::default()
    };
    let mut tight = scheduler(100, 4, config);
    let mut t = Driver::new();
    t.add(&mut tight, seq(1, vec![1, 2], 20, 1)).unwrap();
    t.step(&mut tight);
    t.step(&mut tight);
    let before = len(&tight, 1);
    let guess = model_chain(tight.tokens(1).unwrap(), 2);
    assert!(tight.set_draft(1, &guess));
    let plan = t.step(&mut tight);
    assert_eq!((plan.chunks[0].len, plan.chunks[0].draft), (1, 0));
    assert_eq!(
        len(&tight, 1),
        before + 1,
        "dropped drafts leave the tokens"
    );
    d.run(&mut s);

    let mut plain = Driver::new();
    let mut s = scheduler(100, 4, SchedulerConfig::default());
    plain.add(&mut s, seq(1, vec![1, 2], 20, 1)).unwrap();
    plain.add(&mut s, seq(2, vec![3, 4], 20, 0)).unwrap();
    plain.add(&mut s, seq(3, vec![5], 20, 0)).unwrap();
    plain.run(&mut s);
    assert_eq!(d.outputs, plain.outputs);
}

#[test]
fn drafts_never_preempt_and_are_trimmed_to_the_blocks() {
    // 4 blocks of 4 tokens, all held once both prompts are in: 1 (5 tokens, room up
    // to position 7) and 2 (6 tokens).
    let workload = || [seq(1, vec![1; 5], 10, 0), seq(2, vec![2; 6], 10, 0)];
    let mut s = scheduler(4, 4, SchedulerConfig::default());
    let mut d = Driver::new();
    for n in workload() {
        d.add(&mut s, n).unwrap();
    }
    d.step(&mut s);
    let stats = s.kv_stats();
    assert_eq!((stats.free_blocks, stats.cached_blocks), (0, 0));

    // Drafts at positions 6..=8: the third would need a fifth block, so the first
    // two (6 and 7, in the block it holds) are kept and nobody is preempted.
    let guess = model_chain(s.tokens(1).unwrap(), 3);
    assert!(s.set_draft(1, &guess));
    let plan = d.step(&mut s);
    assert!(plan.preempted.is_empty() && s.preemptions_total() == 0);
    assert_eq!(plan.chunks.len(), 2, "both sequences decode");
    let one = plan.chunks.iter().find(|c| c.id == 1).unwrap();
    assert_eq!((one.len, one.draft), (3, 2));
    assert_eq!(
        s.tokens(1).unwrap().len(),
        6 + 3,
        "two accepted drafts and the model's token"
    );
    let two = plan.chunks.iter().find(|c| c.id == 2).unwrap();
    assert_eq!((two.len, two.draft), (1, 0));
    d.run(&mut s);

    let mut plain = Driver::new();
    let mut s = scheduler(4, 4, SchedulerConfig::default());
    for n in workload() {
        plain.add(&mut s, n).unwrap();
    }
    plain.run(&mut s);
    assert_eq!(d.outputs, plain.outputs);
}

#[test]
fn rejected_drafts_never_reach_the_prefix_cache() {
    let mut s = scheduler(100, 4, SchedulerConfig::default());
    let mut d = Driver::new();
    d.add(&mut s, seq(1, (10..17).collect(), 10, 0)).unwrap();
    d.step(&mut s);
    // The token at position 7 is pending. Drafts at 8..=11: the first is right.
    let tokens = s.tokens(1).unwrap().to_vec();
    let right = model_chain(&tokens, 1)[0];
    let wrong = [(right + 1) % 1000, 3, 3];
    assert!(s.set_draft(1, &[&[right][..], &wrong].concat()));
    let plan = d.step(&mut s);
    assert_eq!(plan.chunks[0].draft, 4);
    // Block 2 (positions 8..=11) mixes the accepted draft with rejected ones.
    let after = s.tokens(1).unwrap();
    assert_eq!(after.len(), 10, "one accepted draft and the model's token");
    assert_eq!(after[8], right);
    assert_ne!(after[9], wrong[0]);

    // A prompt that continues with the rejected drafts hits only the real blocks.
    let rejected_prompt = [&tokens[..], &[right], &wrong, &[5]].concat();
    d.add(&mut s, seq(2, rejected_prompt, 3, 0)).unwrap();
    d.step(&mut s);
    assert_eq!(s.cached_tokens(2), Some(8));
    d.run(&mut s);
    assert_eq!(s.kv_stats().used_blocks, 0);
}

#[test]
fn set_draft_only_attaches_to_a_decoding_sequence() {
    let config = SchedulerConfig {
        max_batch_tokens: 8,
        max_running: 1,
        ..Default::default()
    };
    let mut s = scheduler(100, 4, config);
    let mut d = Driver::new();
    d.add(&mut s, seq(1, (0..12).collect(), 10, 0)).unwrap();
    d.add(&mut s, seq(2, vec![7; 3], 10, 0)).unwrap();
    assert!(!s.set_draft(9, &[1]), "unknown sequence");
    assert!(!s.set_draft(1, &[1]), "waiting sequence");
    d.step(&mut s);
    assert!(!s.set_draft(1, &[1]), "sequence in prefill");
    assert!(!s.set_draft(2, &[1]), "waiting sequence");
    d.step(&mut s);
    assert_eq!(s.tokens(1).unwrap().len(), 13);

    assert!(s.set_draft(1, &[4, 4, 4]));
    assert!(s.set_draft(1, &[5, 5]), "drafts are replaced");
    assert_eq!(s.tokens(1).unwrap()[13..], [5, 5]);
    let plan = s.schedule();
    assert_eq!(plan.chunks[0].draft, 2);
    assert!(!s.set_draft(1, &[6]), "drafts already scheduled");
    d.forward(&s, &plan);
    s.complete_step(&plan);
    assert!(!s.set_draft(1, &[6]), "drafts awaiting verification");
    assert!(!s.accept_draft(2, 0), "no drafts to verify");
    // A token appended without verification rejects every draft.
    s.append_token(1, 42);
    assert_eq!(s.tokens(1).unwrap().len(), 14);
    assert_eq!(s.tokens(1).unwrap()[13], 42);
    assert!(!s.accept_draft(1, 0));
    s.check_invariants();
    assert!(s.set_draft(1, &[]), "an empty draft clears");
    s.check_invariants();
}

#[test]
#[should_panic(expected = "accepting 3 of 2 draft tokens")]
fn accepting_more_than_the_drafts_is_a_bug() {
    let mut s = scheduler(100, 4, SchedulerConfig::default());
    let mut d = Driver::new();
    d.add(&mut s, seq(1, vec![1; 3], 10, 0)).unwrap();
    d.step(&mut s);
    assert!(s.set_draft(1, &[1, 2]));
    let plan = s.schedule();
    s.complete_step(&plan);
    s.accept_draft(1, 3);
}

#[test]
fn cancel_frees_blocks_in_any_state() {
    let mut s = scheduler(
        50,
        4,
        SchedulerConfig {
            max_batch_tokens: 8,
            ..Default::default()
        },
    );
    let mut d = Driver::new();
    d.add(&mut s, seq(1, vec![1; 30], 5, 0)).unwrap();
    d.add(&mut s, seq(2, vec![2; 30], 5, 0)).unwrap();
    d.step(&mut s); // 1 mid-prefill, 2 waiting
    assert!(s.finish(1).is_some());
    assert!(s.finish(2).is_some());
    assert!(s.finish(2).is_none());
    s.check_invariants();
    assert_eq!(s.kv_stats().used_blocks, 0);
}

#[test]
fn random_workloads_keep_every_invariant() {
    let mut rng = StdRng::seed_from_u64(11);
    let (mut preemptions, mut hits) = (0, 0);
    let (mut accepted, mut rejected) = (0, 0);
    for round in 0..20 {
        let total_blocks = rng.gen_range(8..64);
        let config = SchedulerConfig {
            max_batch_tokens: rng.gen_range(1..64),
            max_running: rng.gen_range(1..8),
            max_waiting: rng.gen_range(1..16),
            max_prefill_tokens_while_decoding: [None, Some(1), Some(5)][round % 3],
        };
        let mut s = scheduler(total_blocks, 4, config);
        let mut d = if round % 2 == 1 {
            Driver::speculative(round as u64)
        } else {
            Driver::new()
        };
        let prefixes: Vec<Vec<u32>> = (0..3)
            .map(|p| (0..rng.gen_range(0..20)).map(|i| p * 100 + i).collect())
            .collect();
        let mut next_id = 0;
        for _ in 0..300 {
            match rng.gen_range(0..10) {
                0..=2 => {
                    let prompt = [
                        prefixes[rng.gen_range(0..3)].clone(),
                        (0..rng.gen_range(1..12))
                            .map(|_| rng.gen_range(0..50))
                            .collect(),
                    ]
                    .concat();
                    let mut n = seq(next_id, prompt, rng.gen_range(1..10), rng.gen_range(-1..2));
                    n.salt = if rng.gen_bool(0.2) {
                        Some(rng.gen_range(0..2))
                    } else {
                        None
                    };
                    let _ = d.add(&mut s, n);
                    next_id += 1;
                }
                3 => {
                    // Cancel a random sequence, in whatever state.
                    let id = rng.gen_range(0..next_id.max(1));
                    s.finish(id);
                    s.check_invariants();
                }
                _ => {
                    d.step(&mut s);
                }
            }
        }
        d.run(&mut s);
        let stats = s.kv_stats();
        assert_eq!(stats.used_blocks, 0, "round {round}: blocks leaked");
        assert_eq!(stats.free_blocks + stats.cached_blocks, stats.total_blocks);
        preemptions += s.preemptions_total();
        hits += stats.prefix_hits_total;
        if let Some(spec) = &d.spec {
            accepted += spec.accepted;
            rejected += spec.drafted - spec.accepted;
        }
    }
    assert!(
        preemptions > 0 && hits > 0,
        "the workload must exercise preemption ({preemptions}) and prefix hits ({hits})"
    );
    assert!(
        accepted > 0 && rejected > 0,
        "drafts must be accepted ({accepted}) and rejected ({rejected})"
    );
}
