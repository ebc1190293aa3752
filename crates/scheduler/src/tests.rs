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
}

impl Driver {
    fn new() -> Self {
        Driver {
            prompt_len: HashMap::new(),
            max_tokens: HashMap::new(),
            outputs: HashMap::new(),
            steps: 0,
            kv: HashMap::new(),
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

    /// Writes every fed token into its K/V slot.
    fn forward(&mut self, s: &Scheduler, plan: &StepPlan) {
        let bs = s.kv.block_size();
        for c in &plan.chunks {
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

    /// Samples after a chunk that reached the last token: the model's next token, read
    /// from the K/V.
    fn sample(&mut self, s: &mut Scheduler, c: &ScheduledChunk) {
        let next = self.predict(s, c.id, c.start_pos + c.len - 1);
        s.append_token(c.id, next);
        let generated = s.tokens(c.id).unwrap().len() - self.prompt_len[&c.id];
        if generated == self.max_tokens[&c.id] {
            let toks = s.tokens(c.id).unwrap()[self.prompt_len[&c.id]..].to_vec();
            s.finish(c.id).unwrap();
            self.outputs.insert(c.id, toks);
        }
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
    let work = |total_blocks| {
        let mut s = scheduler(total_blocks, 4, SchedulerConfig::default());
        let mut d = Driver::new();
        d.add(&mut s, seq(1, vec![1; 8], 12, 1)).unwrap();
        d.add(&mut s, seq(2, vec![2; 8], 12, 0)).unwrap();
        d.add(&mut s, seq(3, vec![3; 8], 12, 0)).unwrap();
        let mut preempted = Vec::new();
        while s.has_work() {
            preempted.extend(d.step(&mut s).preempted);
        }
        (d.outputs, preempted, s.preemptions_total())
    };
    let (roomy, none, _) = work(100);
    assert!(none.is_empty());
    let (tight, preempted, total) = work(12);
    assert!(total > 0, "the tight cache must preempt");
    assert_eq!(preempted[0], 3, "lowest priority, newest goes first");
    assert!(
        !preempted.contains(&1),
        "the high-priority sequence is never preempted"
    );
    assert_eq!(
        roomy, tight,
        "recompute after preemption gives the same outputs"
    );
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
    for round in 0..20 {
        let total_blocks = rng.gen_range(8..64);
        let config = SchedulerConfig {
            max_batch_tokens: rng.gen_range(1..64),
            max_running: rng.gen_range(1..8),
            max_waiting: rng.gen_range(1..16),
            max_prefill_tokens_while_decoding: [None, Some(1), Some(5)][round % 3],
        };
        let mut s = scheduler(total_blocks, 4, config);
        let mut d = Driver::new();
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
    }
    assert!(
        preemptions > 0 && hits > 0,
        "the workload must exercise preemption ({preemptions}) and prefix hits ({hits})"
    );
}
