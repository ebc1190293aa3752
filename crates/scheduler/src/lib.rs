//! Continuous-batching scheduler. Pure: no async, no tensors; a plain `#[test]`
//! drives it and the engine thread calls it once per step.
//!
//! Every sequence is a token list (prompt, then outputs) and the count of tokens
//! whose KV is already in the cache (`num_computed`). Its pending tokens
//! `tokens[num_computed..]` are what the next forward must consume: one token for a
//! decoding sequence, a slice of the prompt for one still in prefill. A step is:
//!
//! 1. **Decode first.** Running sequences with one pending token, highest priority
//!    first, each take one token of the step's budget (`max_batch_tokens`), so a
//!    long prompt arriving never stalls the streams already running.
//! 2. **Then prefill chunks.** Running sequences still in prefill continue, then
//!    waiting sequences are admitted (priority, then arrival order) while the budget,
//!    `max_running` and free KV blocks allow; a prompt larger than what is left of the
//!    budget is split into chunks across steps (chunked prefill).
//! 3. **Preemption by recompute** when a running sequence needs a KV block and none
//!    is free: the lowest-priority, then newest, running sequence not yet in this
//!    step gives its blocks back and returns to the waiting queue with its priority
//!    and original arrival (so it keeps its place). Its computed blocks stay in the
//!    prefix cache, so re-admission usually recomputes little.
//!
//! Admission reuses cached prefix blocks ([`KvCacheManager::allocate_prompt`]);
//! after each step the newly full blocks are registered for reuse.
//!
//! **Speculative drafts.** A decoding sequence may carry draft tokens
//! ([`Scheduler::set_draft`]): guesses of its next outputs, appended provisionally after
//! its one real pending token so that one forward verifies them all. They never count
//! as pending work: drafts are added to the decode chunks only after every real decode
//! token has its slot, within what is left of the token budget and only from free or
//! evictable blocks, so they never preempt a sequence or delay another one's token.
//! A sequence keeps the first of its drafts that fit and drops the rest; with room for
//! none it decodes one token as before.
//! Only real tokens count as computed; after verification
//! ([`Scheduler::accept_draft`]) the accepted drafts do, the rejected ones are removed
//! with their slots, and so a rejected token is never hashed into the prefix cache.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};

use inferd_kvcache::{BlockId, KvCacheManager, KvCacheStats, SeqBlocks};

pub type SeqId = u64;

/// Scheduler knobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Tokens (decode + prefill) per forward step. Default 256.
    pub max_batch_tokens: usize,
    /// Sequences running at once. Default 64.
    pub max_running: usize,
    /// Sequences waiting for admission; beyond this, new requests are refused.
    /// Default 256.
    pub max_waiting: usize,
    /// Prefill tokens allowed in a step that also decodes: bounds the inter-token
    /// latency running streams see while new prompts are prefilled, at the cost of
    /// those prompts' TTFT. `None`: up to the rest of `max_batch_tokens`.
    pub max_prefill_tokens_while_decoding: Option<usize>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            max_batch_tokens: 256,
            max_running: 64,
            max_waiting: 256,
            max_prefill_tokens_while_decoding: None,
        }
    }
}

impl SchedulerConfig {
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("max_batch_tokens", self.max_batch_tokens),
            ("max_running", self.max_running),
            ("max_waiting", self.max_waiting),
            (
                "max_prefill_tokens_while_decoding",
                self.max_prefill_tokens_while_decoding.unwrap_or(1),
            ),
        ] {
            if v == 0 {
                return Err(format!("`{name}` must be at least 1, got 0"));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedulerError {
    #[error("the waiting queue is full ({max_waiting} requests); retry later")]
    QueueFull { max_waiting: usize },
    #[error(
        "prompt of {prompt_tokens} tokens plus max_tokens {max_tokens} needs {needed_blocks} KV blocks, \
         but the KV cache has only {total_blocks}"
    )]
    TooLarge {
        prompt_tokens: usize,
        max_tokens: usize,
        needed_blocks: usize,
        total_blocks: usize,
    },
    #[error("sequence {0} already exists")]
    Duplicate(SeqId),
    #[error("prompt is empty")]
    EmptyPrompt,
}

/// A request entering the scheduler.
#[derive(Debug, Clone)]
pub struct NewSequence {
    pub id: SeqId,
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    /// Higher runs first. Default 0.
    pub priority: i32,
    /// Prefix-cache salt (`cache_salt`): only requests with the same salt share blocks.
    pub salt: Option<u64>,
}

#[derive(Debug)]
struct Sequence {
    priority: i32,
    /// Order of arrival, kept across preemption.
    arrival: u64,
    tokens: Vec<u32>,
    salt: Option<u64>,
    blocks: SeqBlocks,
    /// Tokens whose KV is in the cache.
    num_computed: usize,
    /// Token slots allocated in `blocks`.
    slots: usize,
    /// Draft tokens at the tail of `tokens`, after the one real pending token; not yet
    /// verified, so never counted as computed.
    draft: usize,
    /// Prompt tokens served from the prefix cache at first admission.
    cached_tokens: Option<usize>,
    preemptions: u32,
    running: bool,
}

impl Sequence {
    /// Real tokens the next forward must consume (drafts excluded): one while decoding,
    /// more while in prefill.
    fn real_pending(&self) -> usize {
        self.tokens.len() - self.draft - self.num_computed
    }

    /// Forgets the draft tokens. It gives back no slots: callers drop drafts before any
    /// are allocated for them, after [`Scheduler::accept_draft`] gave them back, or when
    /// releasing every block.
    fn drop_draft(&mut self) {
        self.trim_draft(0);
    }

    /// Keeps the first `keep` draft tokens and forgets the rest (no slots, as for
    /// [`Self::drop_draft`]).
    fn trim_draft(&mut self, keep: usize) {
        let keep = keep.min(self.draft);
        self.tokens
            .truncate(self.tokens.len() - (self.draft - keep));
        self.draft = keep;
    }

    fn waiting_key(&self, id: SeqId) -> (Reverse<i32>, u64, SeqId) {
        (Reverse(self.priority), self.arrival, id)
    }
}

/// One sequence's part of a step: feed `tokens[start_pos .. start_pos + len]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledChunk {
    pub id: SeqId,
    pub start_pos: usize,
    pub len: usize,
    /// The chunk reaches the last real token (followed only by its drafts, if any): the
    /// model must return logits and the engine samples the next token.
    pub sample: bool,
    /// Draft tokens at the chunk's tail, after its one real token (0 for every chunk
    /// without drafts). The model must return logits for all `len` positions; the engine
    /// verifies them and reports with [`Scheduler::accept_draft`].
    pub draft: usize,
}

/// What to run this step.
#[derive(Debug, Default, Clone)]
pub struct StepPlan {
    pub chunks: Vec<ScheduledChunk>,
    /// Sequences preempted (moved back to waiting) while planning this step.
    pub preempted: Vec<SeqId>,
    /// Sequences scheduled for the first time (their queue time ends now).
    pub first_scheduled: Vec<SeqId>,
}

impl StepPlan {
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Tokens fed this step, drafts included.
    pub fn num_tokens(&self) -> usize {
        self.chunks.iter().map(|c| c.len).sum()
    }

    /// Draft tokens fed this step (part of [`Self::num_tokens`]).
    pub fn num_draft_tokens(&self) -> usize {
        self.chunks.iter().map(|c| c.draft).sum()
    }
}

/// What a finished (or cancelled) sequence reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FinishedSequence {
    pub cached_tokens: usize,
    pub preemptions: u32,
}

pub struct Scheduler {
    config: SchedulerConfig,
    kv: KvCacheManager,
    seqs: HashMap<SeqId, Sequence>,
    waiting: BTreeSet<(Reverse<i32>, u64, SeqId)>,
    running: Vec<SeqId>,
    next_arrival: u64,
    preemptions_total: u64,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig, kv: KvCacheManager) -> Scheduler {
        Scheduler {
            config,
            kv,
            seqs: HashMap::new(),
            waiting: BTreeSet::new(),
            running: Vec::new(),
            next_arrival: 0,
            preemptions_total: 0,
        }
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// Queues a sequence; refused at once when the queue is full or the request
    /// could never fit in the KV cache.
    pub fn add(&mut self, seq: NewSequence) -> Result<(), SchedulerError> {
        if seq.prompt.is_empty() {
            return Err(SchedulerError::EmptyPrompt);
        }
        if self.seqs.contains_key(&seq.id) {
            return Err(SchedulerError::Duplicate(seq.id));
        }
        if self.waiting.len() >= self.config.max_waiting {
            return Err(SchedulerError::QueueFull {
                max_waiting: self.config.max_waiting,
            });
        }
        let total_blocks = self.kv.stats().total_blocks;
        let needed_blocks = (seq.prompt.len() + seq.max_tokens).div_ceil(self.kv.block_size());
        if needed_blocks > total_blocks {
            return Err(SchedulerError::TooLarge {
                prompt_tokens: seq.prompt.len(),
                max_tokens: seq.max_tokens,
                needed_blocks,
                total_blocks,
            });
        }
        let arrival = self.next_arrival;
        self.next_arrival += 1;
        let s = Sequence {
            priority: seq.priority,
            arrival,
            tokens: seq.prompt,
            salt: seq.salt,
            blocks: SeqBlocks::default(),
            num_computed: 0,
            slots: 0,
            draft: 0,
            cached_tokens: None,
            preemptions: 0,
            running: false,
        };
        self.waiting.insert(s.waiting_key(seq.id));
        self.seqs.insert(seq.id, s);
        Ok(())
    }

    /// Plans the next step (see the module docs for the policy).
    pub fn schedule(&mut self) -> StepPlan {
        let mut plan = StepPlan::default();
        let mut budget = self.config.max_batch_tokens;

        // Decode first, then drafts, then prefill; within each, priority then arrival.
        let mut order = self.running.clone();
        order.sort_by_key(|id| {
            let s = &self.seqs[id];
            (Reverse(s.priority), s.arrival)
        });
        let (decoding, prefilling): (Vec<SeqId>, Vec<SeqId>) = order
            .into_iter()
            .partition(|id| self.seqs[id].real_pending() <= 1);
        // Prefill tokens left for this step; capped once a decode is scheduled.
        let mut prefill_left = usize::MAX;
        for id in decoding {
            self.schedule_running(id, &mut budget, &mut prefill_left, &mut plan);
        }
        self.schedule_drafts(&mut budget, &mut plan);
        for id in prefilling {
            self.schedule_running(id, &mut budget, &mut prefill_left, &mut plan);
        }

        // Admit waiting sequences while there is room.
        while budget > 0 && prefill_left > 0 && self.running.len() < self.config.max_running {
            let Some(&key) = self.waiting.first() else {
                break;
            };
            let id = key.2;
            let s = &self.seqs[&id];
            if self.kv.blocks_needed_for_prompt(&s.tokens, s.salt) > self.kv.available_blocks() {
                break;
            }
            let s = self
                .seqs
                .get_mut(&id)
                .expect("waiting sequence exists: this is a bug");
            let Ok(blocks) = self.kv.allocate_prompt(&s.tokens, s.salt) else {
                break;
            };
            self.waiting.remove(&key);
            s.num_computed = blocks.num_cached_tokens();
            s.slots = s.tokens.len();
            s.cached_tokens.get_or_insert(s.num_computed);
            s.blocks = blocks;
            s.running = true;
            self.running.push(id);
            if s.preemptions == 0 {
                plan.first_scheduled.push(id);
            }
            let n = s.real_pending().min(budget).min(prefill_left);
            budget -= n;
            prefill_left -= n;
            self.push_chunk(id, n, &mut plan);
        }
        plan
    }

    /// Schedules the real pending tokens of running sequence `id` (one to decode, or a
    /// prefill chunk) within `budget` and `prefill_left`, reserving their slots.
    fn schedule_running(
        &mut self,
        id: SeqId,
        budget: &mut usize,
        prefill_left: &mut usize,
        plan: &mut StepPlan,
    ) {
        // It may have been preempted to make room for an earlier one.
        if *budget == 0 || !self.seqs[&id].running {
            return;
        }
        let pending = self.seqs[&id].real_pending();
        let n = if pending > 1 {
            pending.min(*budget).min(*prefill_left)
        } else {
            pending.min(*budget)
        };
        if n == 0 || !self.reserve(id, n, plan) {
            return;
        }
        *budget -= n;
        if pending > 1 {
            *prefill_left -= n.min(*prefill_left);
        } else if let Some(cap) = self.config.max_prefill_tokens_while_decoding {
            *prefill_left = (*prefill_left).min(cap);
        }
        self.push_chunk(id, n, plan);
    }

    /// Extends the decode chunks planned so far by their sequences' drafts, in the
    /// chunks' (priority) order. Runs once every real decode token has its slot, and
    /// takes only blocks that are free or evictable now, never preempting: speculation
    /// only uses the room real tokens leave. A sequence whose drafts do not all fit
    /// in the budget or the blocks keeps as many of its first drafts as do (the
    /// likeliest to be accepted), and with room for none decodes its one token.
    fn schedule_drafts(&mut self, budget: &mut usize, plan: &mut StepPlan) {
        for c in &mut plan.chunks {
            let s = self
                .seqs
                .get_mut(&c.id)
                .expect("scheduled sequence exists: this is a bug");
            if s.draft == 0 {
                continue;
            }
            let mut keep = s.draft.min(*budget);
            let mut need = 0;
            while keep > 0 {
                need = (s.num_computed + c.len + keep).saturating_sub(s.slots);
                if need == 0 || self.kv.append_slots(&mut s.blocks, need).is_ok() {
                    break;
                }
                keep -= 1;
            }
            s.trim_draft(keep);
            if keep == 0 {
                continue;
            }
            s.slots += need;
            *budget -= s.draft;
            c.len += s.draft;
            c.draft = s.draft;
        }
    }

    fn push_chunk(&mut self, id: SeqId, n: usize, plan: &mut StepPlan) {
        let s = &self.seqs[&id];
        plan.chunks.push(ScheduledChunk {
            id,
            start_pos: s.num_computed,
            len: n,
            sample: s.num_computed + n == s.tokens.len() - s.draft,
            draft: 0,
        });
    }

    /// Makes sure `id` has KV slots for `n` more computed tokens, preempting others
    /// (or itself, as a last resort) when blocks run out. False if `id` was preempted.
    fn reserve(&mut self, id: SeqId, n: usize, plan: &mut StepPlan) -> bool {
        loop {
            let s = self
                .seqs
                .get_mut(&id)
                .expect("running sequence exists: this is a bug");
            let need = (s.num_computed + n).saturating_sub(s.slots);
            if need == 0 || self.kv.append_slots(&mut s.blocks, need).is_ok() {
                s.slots += need;
                return true;
            }
            let scheduled: Vec<SeqId> = plan.chunks.iter().map(|c| c.id).collect();
            let victim = self
                .running
                .iter()
                .copied()
                .filter(|v| *v != id && !scheduled.contains(v))
                .min_by_key(|v| {
                    let s = &self.seqs[v];
                    (s.priority, Reverse(s.arrival))
                })
                .unwrap_or(id);
            self.preempt(victim, plan);
            if victim == id {
                return false;
            }
        }
    }

    fn preempt(&mut self, id: SeqId, plan: &mut StepPlan) {
        let s = self
            .seqs
            .get_mut(&id)
            .expect("preempted sequence exists: this is a bug");
        // Re-admission must not prefill guesses as if they were prompt.
        s.drop_draft();
        self.kv.release(&mut s.blocks);
        s.num_computed = 0;
        s.slots = 0;
        s.running = false;
        s.preemptions += 1;
        self.waiting.insert(s.waiting_key(id));
        self.running.retain(|r| *r != id);
        self.preemptions_total += 1;
        plan.preempted.push(id);
    }

    /// Records that the planned chunks were computed (their KV is written): full
    /// blocks become reusable by later requests. A chunk's drafts are not counted as
    /// computed until [`Self::accept_draft`] says which of them were right.
    pub fn complete_step(&mut self, plan: &StepPlan) {
        for c in &plan.chunks {
            if let Some(s) = self.seqs.get_mut(&c.id).filter(|s| s.running) {
                s.num_computed += c.len - c.draft;
                self.kv
                    .commit_computed(&mut s.blocks, &s.tokens, s.num_computed);
            }
        }
    }

    /// Attaches draft tokens (guesses of the next outputs) to running sequence `id`,
    /// replacing any it holds; an empty `draft` clears them. They follow its one real
    /// pending token in [`Self::tokens`] and are fed with it when the next step has room
    /// (see the module docs); a sequence left out of a step keeps them for the next.
    /// Call it after [`Self::append_token`] and before the next [`Self::schedule`]; the
    /// caller caps the drafts so that verifying all of them cannot pass the request's
    /// `max_tokens`.
    ///
    /// Returns false and changes nothing unless the sequence is running with exactly one
    /// real pending token and no drafts already scheduled: unknown, waiting, in prefill,
    /// or between [`Self::schedule`] and the end of verification.
    pub fn set_draft(&mut self, id: SeqId, draft: &[u32]) -> bool {
        let Some(s) = self
            .seqs
            .get_mut(&id)
            .filter(|s| s.running && s.real_pending() == 1 && s.slots <= s.tokens.len() - s.draft)
        else {
            return false;
        };
        s.drop_draft();
        s.tokens.extend_from_slice(draft);
        s.draft = draft.len();
        true
    }

    /// Reports the verification of a computed chunk with drafts (after
    /// [`Self::complete_step`], before [`Self::append_token`] of the model's own next
    /// token): its first `accepted` drafts were right and become computed tokens, the
    /// rest are removed from the sequence and their slots given back. Full blocks of
    /// accepted tokens are registered in the prefix cache; rejected tokens never are.
    ///
    /// Returns false and changes nothing when the sequence is gone (finished within the
    /// burst) or holds no computed drafts. Panics if `accepted` exceeds its drafts.
    pub fn accept_draft(&mut self, id: SeqId, accepted: usize) -> bool {
        let Some(s) = self
            .seqs
            .get_mut(&id)
            .filter(|s| s.running && s.draft > 0 && s.real_pending() == 0)
        else {
            return false;
        };
        assert!(
            accepted <= s.draft,
            "sequence {id}: accepting {accepted} of {} draft tokens: this is a bug",
            s.draft
        );
        s.num_computed += accepted;
        s.tokens.truncate(s.num_computed);
        s.draft = 0;
        self.kv
            .commit_computed(&mut s.blocks, &s.tokens, s.num_computed);
        self.kv.truncate_slots(&mut s.blocks, s.num_computed);
        s.slots = s.num_computed;
        true
    }

    /// Appends a sampled token to a running sequence (it is fed next step). Drafts the
    /// sequence still holds are rejected first, as by `accept_draft(id, 0)`: a sampled
    /// token always follows the real tokens.
    pub fn append_token(&mut self, id: SeqId, token: u32) {
        self.accept_draft(id, 0);
        if let Some(s) = self.seqs.get_mut(&id) {
            s.drop_draft();
            s.tokens.push(token);
        }
    }

    /// Removes a sequence (finished, cancelled or failed) and returns its blocks.
    pub fn finish(&mut self, id: SeqId) -> Option<FinishedSequence> {
        let mut s = self.seqs.remove(&id)?;
        if s.running {
            self.running.retain(|r| *r != id);
        } else {
            self.waiting.remove(&s.waiting_key(id));
        }
        self.kv.release(&mut s.blocks);
        Some(FinishedSequence {
            cached_tokens: s.cached_tokens.unwrap_or(0),
            preemptions: s.preemptions,
        })
    }

    /// The sequence's tokens: prompt, outputs, then its draft tokens if it holds any.
    pub fn tokens(&self, id: SeqId) -> Option<&[u32]> {
        self.seqs.get(&id).map(|s| s.tokens.as_slice())
    }

    pub fn block_table(&self, id: SeqId) -> Option<&[BlockId]> {
        self.seqs.get(&id).map(|s| s.blocks.blocks())
    }

    /// Prompt tokens served from the prefix cache (known once admitted).
    pub fn cached_tokens(&self, id: SeqId) -> Option<usize> {
        self.seqs.get(&id).and_then(|s| s.cached_tokens)
    }

    pub fn contains(&self, id: SeqId) -> bool {
        self.seqs.contains_key(&id)
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Prompt tokens still to be prefilled, over every sequence (waiting ones
    /// whole; a decoding sequence's one new token is not counted).
    pub fn pending_prefill_tokens(&self) -> usize {
        self.seqs
            .values()
            .map(|s| s.real_pending())
            .filter(|&p| p > 1)
            .sum()
    }

    pub fn has_work(&self) -> bool {
        !self.seqs.is_empty()
    }

    pub fn preemptions_total(&self) -> u64 {
        self.preemptions_total
    }

    pub fn kv_stats(&self) -> KvCacheStats {
        self.kv.stats()
    }

    /// Checks the scheduler's and the KV cache's invariants (tests).
    pub fn check_invariants(&self) {
        let live: Vec<&SeqBlocks> = self.seqs.values().map(|s| &s.blocks).collect();
        self.kv.check_invariants(&live);
        assert_eq!(
            self.running.len() + self.waiting.len(),
            self.seqs.len(),
            "every sequence is running or waiting"
        );
        assert!(self.running.len() <= self.config.max_running);
        for (id, s) in &self.seqs {
            assert_eq!(
                s.running,
                self.running.contains(id),
                "sequence {id} running flag"
            );
            assert_eq!(
                !s.running,
                self.waiting.contains(&s.waiting_key(*id)),
                "sequence {id} waiting entry"
            );
            assert!(
                s.num_computed + s.draft <= s.tokens.len(),
                "sequence {id}: {} computed and {} draft tokens of {}",
                s.num_computed,
                s.draft,
                s.tokens.len()
            );
            if s.running {
                assert!(
                    s.real_pending() > 0 || s.tokens.is_empty(),
                    "sequence {id} has a pending token"
                );
                assert!(
                    s.draft == 0 || s.real_pending() == 1,
                    "sequence {id} holds {} drafts with {} real pending tokens",
                    s.draft,
                    s.real_pending()
                );
                assert!(
                    s.slots >= s.num_computed,
                    "sequence {id} computed past its slots"
                );
                assert!(
                    s.slots <= s.tokens.len(),
                    "sequence {id}: {} slots past its {} tokens",
                    s.slots,
                    s.tokens.len()
                );
                assert_eq!(
                    s.slots,
                    s.blocks.num_tokens(),
                    "sequence {id}: slots disagree with its block table"
                );
                let cap = s.blocks.blocks().len() * self.kv.block_size();
                assert!(cap >= s.slots, "sequence {id}: {} slots in {cap}", s.slots);
            } else {
                assert!(
                    s.blocks.blocks().is_empty(),
                    "waiting sequence {id} holds blocks"
                );
                assert_eq!(s.draft, 0, "waiting sequence {id} holds drafts");
            }
        }
    }
}

#[cfg(test)]
mod tests;
