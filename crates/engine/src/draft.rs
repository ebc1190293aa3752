//! A draft model: a decoder with the target's vocabulary (another file, or the
//! target's own first layers with its final norm and head) that the engine runs
//! on a KV cache of its own to propose each sequence's next tokens greedily.
//!
//! Per step, the sequences that want drafts go through the draft model together:
//! the first pass catches each one up on the tokens it has not seen (the whole
//! prompt the first time, afterwards the tokens verified since) and drafts one
//! token, each further pass drafts one more token for every sequence still
//! drafting. The draft's KV is kept per sequence with the tokens it was written
//! for; the next step keeps the longest prefix that still matches the sequence
//! (everything up to the first rejected draft) and overwrites the rest, so a
//! rejection costs no separate rollback.
//!
//! Greedy drafts are point masses, so the engine's sample-and-match
//! verification keeps the output distribution unchanged (see `spec`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use inferd_model::{KvStore, LogitsRequest, Model, SeqBatch};
use inferd_scheduler::SeqId;

use crate::error::{EngineError, Result};
use crate::sampling::argmax;

/// Where a draft model's weights come from ([`crate::SpecConfig::draft`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DraftSource {
    /// A GGUF file whose vocabulary is the target's, token for token.
    File(PathBuf),
    /// The target's first `n` layers, then its final norm and output head
    /// (self-speculation: no second file, a KV cache of `n` layers).
    TargetLayers(usize),
}

impl std::fmt::Display for DraftSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DraftSource::File(p) => write!(f, "{}", p.display()),
            DraftSource::TargetLayers(n) => write!(f, "the target's first {n} layers"),
        }
    }
}

enum Weights {
    Own(Box<dyn Model>),
    Target { layers: usize },
}

/// One sequence's part of the draft KV cache.
#[derive(Default)]
struct DraftSeq {
    blocks: Vec<u32>,
    /// The tokens whose K/V the draft holds, positions `0..seen.len()`.
    seen: Vec<u32>,
}

/// A draft model with its KV cache (module docs).
pub(crate) struct DraftModel {
    weights: Weights,
    kv: KvStore,
    free: Vec<u32>,
    seqs: HashMap<SeqId, DraftSeq>,
    /// Tokens the first pass may catch up on, over all its sequences.
    max_catch_up: usize,
    /// Seconds a draft pass takes per sequence in it (moving average); `None`
    /// until a pass was timed.
    secs_per_token: Option<f64>,
}

/// What a drafting sequence needs this step.
pub(crate) struct DraftWanted<'a> {
    pub id: SeqId,
    /// The sequence's tokens: prompt and output so far.
    pub tokens: &'a [u32],
    /// Tokens to draft after them.
    pub k: usize,
}

impl DraftModel {
    /// A draft model for `target` with room for `num_blocks` blocks of
    /// `block_size` tokens (as many tokens as the target's cache holds).
    pub fn new(
        source: &DraftSource,
        target: &dyn Model,
        num_blocks: usize,
        block_size: usize,
        max_catch_up: usize,
    ) -> Result<DraftModel> {
        let t = target.config();
        let (weights, kv) = match source {
            DraftSource::TargetLayers(n) => {
                if *n == 0 || *n >= t.n_layers {
                    return Err(EngineError::Config(format!(
                        "`spec_draft_layers` must be in 1..{} (the target has {} layers), got {n}",
                        t.n_layers, t.n_layers
                    )));
                }
                let kv = KvStore::new(*n, num_blocks, block_size, t.kv_dim());
                (Weights::Target { layers: *n }, kv)
            }
            DraftSource::File(path) => {
                let model = inferd_model::load_model(path)?;
                let tokens = |m: &dyn Model| m.gguf().strings("tokenizer.ggml.tokens").ok();
                if model.config().vocab_size != t.vocab_size || tokens(&*model) != tokens(target) {
                    return Err(EngineError::Config(format!(
                        "draft model {} has a vocabulary of {} tokens unlike the target's {}: \
                         a draft model needs the target's tokenizer",
                        path.display(),
                        model.config().vocab_size,
                        t.vocab_size
                    )));
                }
                let mut model = model;
                model.set_options(target.options());
                let kv = model.new_kv_store(num_blocks, block_size);
                (Weights::Own(model), kv)
            }
        };
        Ok(DraftModel {
            weights,
            kv,
            free: (0..num_blocks as u32).rev().collect(),
            seqs: HashMap::new(),
            max_catch_up: max_catch_up.max(1),
            secs_per_token: None,
        })
    }

    /// Seconds one drafted token costs a sequence, as measured so far.
    pub fn secs_per_token(&self) -> Option<f64> {
        self.secs_per_token
    }

    /// Blocks not held by any sequence.
    #[cfg(test)]
    pub fn free_blocks(&self) -> usize {
        self.free.len()
    }

    /// Forgets the sequences `keep` rejects (finished, failed, cancelled),
    /// returning their blocks.
    pub fn retain(&mut self, keep: impl Fn(SeqId) -> bool) {
        let free = &mut self.free;
        self.seqs.retain(|&id, s| {
            let kept = keep(id);
            if !kept {
                free.append(&mut s.blocks);
            }
            kept
        });
    }

    /// Up to `k` greedy draft tokens for each wanted sequence, in order (empty
    /// where it has none this step: still catching up, or no KV room). A failed
    /// draft pass only means no drafts: verification never depends on them.
    pub fn propose(&mut self, target: &dyn Model, wanted: &[DraftWanted]) -> Vec<Vec<u32>> {
        let bs = self.kv.block_size;
        let context = target.config().context_length;
        let mut drafts = vec![Vec::new(); wanted.len()];
        // Per wanted sequence: where its first-pass chunk starts and ends, and
        // how many tokens it drafts (0: catching up only, or nothing to do).
        let mut plan = Vec::with_capacity(wanted.len());
        let mut budget = self.max_catch_up;
        for w in wanted {
            let n = w.tokens.len();
            let s = self.seqs.entry(w.id).or_default();
            let common = s
                .seen
                .iter()
                .zip(w.tokens)
                .take_while(|(a, b)| a == b)
                .count();
            // The last token is fed again when already seen: its logits are needed.
            let from = common.min(n.saturating_sub(1));
            s.seen.truncate(from);
            let mut k = w.k.min(context.saturating_sub(n));
            let mut to = n;
            if to - from > budget {
                to = from + budget;
                k = 0;
            }
            if to == from {
                plan.push((from, to, 0));
                continue;
            }
            // Room for the chunk and the k − 1 drafts fed back after it.
            let need = |k: usize| (to + k.saturating_sub(1)).div_ceil(bs);
            while k > 0 && need(k) > s.blocks.len() + self.free.len() {
                k -= 1;
            }
            let wanted_blocks = need(k);
            if wanted_blocks > s.blocks.len() + self.free.len() {
                plan.push((from, from, 0));
                continue;
            }
            while s.blocks.len() < wanted_blocks {
                s.blocks.push(self.free.pop().expect("counted above"));
            }
            budget -= to - from;
            plan.push((from, to, k));
        }
        let started = Instant::now();
        // Seconds per drafting sequence of each timed pass.
        let mut pass_secs: Vec<f64> = Vec::new();
        // The first pass: catch up, and draft one token where wanted.
        let mut rows: Vec<usize> = Vec::new();
        {
            let batch: Vec<SeqBatch> = wanted
                .iter()
                .zip(&plan)
                .enumerate()
                .filter(|(_, (_, &(from, to, _)))| to > from)
                .map(|(i, (w, &(from, to, k)))| {
                    rows.push(i);
                    SeqBatch {
                        tokens: &w.tokens[from..to],
                        start_pos: from,
                        block_table: &self.seqs[&w.id].blocks,
                        logits: if k > 0 {
                            LogitsRequest::Last
                        } else {
                            LogitsRequest::None
                        },
                    }
                })
                .collect();
            if batch.is_empty() {
                return drafts;
            }
            let tokens: usize = batch.iter().map(|b| b.tokens.len()).sum();
            let drafting = batch
                .iter()
                .filter(|b| b.logits != LogitsRequest::None)
                .count();
            let Some(logits) = run(&self.weights, &mut self.kv, target, &batch) else {
                return drafts;
            };
            drop(batch);
            for (bi, &i) in rows.iter().enumerate() {
                let (from, to, k) = plan[i];
                self.seqs
                    .get_mut(&wanted[i].id)
                    .expect("planned above")
                    .seen
                    .extend_from_slice(&wanted[i].tokens[from..to]);
                if k > 0 {
                    let row = logits
                        .last_of(bi)
                        .expect("a drafting sequence asked for logits");
                    drafts[i].push(argmax(row));
                }
            }
            // A pass that mostly decodes times the per-token cost; a long
            // catch-up would make drafting look cheaper than it is.
            if drafting > 0 && tokens <= 2 * drafting {
                pass_secs.push(started.elapsed().as_secs_f64() / drafting as f64);
            }
        }
        // Further passes: one more token for each sequence still drafting.
        let mut pass_started = Instant::now();
        let max_k = plan.iter().map(|p| p.2).max().unwrap_or(0);
        for j in 1..max_k {
            let live: Vec<usize> = (0..wanted.len())
                .filter(|&i| plan[i].2 > j && drafts[i].len() == j)
                .collect();
            if live.is_empty() {
                break;
            }
            let fed: Vec<u32> = live.iter().map(|&i| drafts[i][j - 1]).collect();
            let batch: Vec<SeqBatch> = live
                .iter()
                .zip(&fed)
                .map(|(&i, t)| SeqBatch {
                    tokens: std::slice::from_ref(t),
                    start_pos: wanted[i].tokens.len() + j - 1,
                    block_table: &self.seqs[&wanted[i].id].blocks,
                    logits: LogitsRequest::Last,
                })
                .collect();
            let result = run(&self.weights, &mut self.kv, target, &batch);
            drop(batch);
            let Some(logits) = result else {
                break;
            };
            for (bi, &i) in live.iter().enumerate() {
                let s = self.seqs.get_mut(&wanted[i].id).expect("planned above");
                s.seen.push(fed[bi]);
                drafts[i].push(argmax(logits.row(bi)));
            }
            pass_secs.push(pass_started.elapsed().as_secs_f64() / live.len() as f64);
            pass_started = Instant::now();
        }
        if !pass_secs.is_empty() {
            let per_token = pass_secs.iter().sum::<f64>() / pass_secs.len() as f64;
            self.secs_per_token = Some(match self.secs_per_token {
                None => per_token,
                Some(old) => 0.75 * old + 0.25 * per_token,
            });
        }
        drafts
    }
}

/// One forward pass of the draft; `None` when it fails.
fn run(
    weights: &Weights,
    kv: &mut KvStore,
    target: &dyn Model,
    batch: &[SeqBatch],
) -> Option<inferd_model::Logits> {
    let result = match weights {
        Weights::Own(m) => m.forward(batch, kv),
        Weights::Target { layers } => target.forward_layers(batch, kv, *layers),
    };
    result.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Box<dyn Model> {
        inferd_model::load_model(inferd_testutil::smollm2_path()).expect("the test model loads")
    }

    #[test]
    fn drafts_follow_the_sequence_reuse_what_still_matches_and_give_blocks_back() {
        let target = target();
        let mut d = DraftModel::new(&DraftSource::TargetLayers(30 - 1), &*target, 64, 16, 256)
            .expect("a draft of 29 layers");
        let prompt: Vec<u32> = (1..=40).collect();
        let first = d.propose(
            &*target,
            &[DraftWanted {
                id: 7,
                tokens: &prompt,
                k: 4,
            }],
        );
        assert_eq!(first[0].len(), 4);
        // 40 prompt tokens and 3 drafts fed back: 43 positions, 3 blocks.
        assert_eq!(d.seqs[&7].seen.len(), 43);
        assert_eq!(d.free_blocks(), 64 - 3);
        // Two drafts accepted, then another token: the first 42 positions hold.
        let mut next = prompt.clone();
        next.extend_from_slice(&first[0][..2]);
        next.push(first[0][2] + 1);
        let again = d.propose(
            &*target,
            &[DraftWanted {
                id: 7,
                tokens: &next,
                k: 2,
            }],
        );
        assert_eq!(again[0].len(), 2);
        assert_eq!(d.seqs[&7].seen[..42], next[..42]);
        assert_eq!(d.seqs[&7].seen.len(), next.len() + 1);
        // The same request again drafts the same tokens from the reused cache
        // as a fresh sequence does from nothing.
        let fresh = d.propose(
            &*target,
            &[DraftWanted {
                id: 8,
                tokens: &next,
                k: 2,
            }],
        );
        assert_eq!(fresh, again);
        // A catch-up longer than the budget drafts nothing this step.
        let mut small = DraftModel::new(&DraftSource::TargetLayers(2), &*target, 8, 16, 16)
            .expect("a draft of 2 layers");
        let none = small.propose(
            &*target,
            &[DraftWanted {
                id: 1,
                tokens: &prompt,
                k: 4,
            }],
        );
        assert!(none[0].is_empty());
        assert_eq!(small.seqs[&1].seen.len(), 16);
        // Finished sequences give their blocks back.
        d.retain(|id| id == 8);
        assert_eq!(d.free_blocks(), 64 - 3);
        d.retain(|_| false);
        assert_eq!(d.free_blocks(), 64);
        assert!(d.secs_per_token().is_some());
    }
}
