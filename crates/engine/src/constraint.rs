//! Constrained decoding, as the engine sees it: a [`Constraint`] says which tokens
//! may come next ([`TokenMask`]) and is told which one was chosen. The grammar
//! behind it (JSON schema, regex, Lark...) lives outside the engine
//! (`inferd-grammar`); the engine only schedules the work.
//!
//! **Off the critical path.** A sequence's next mask depends only on the tokens
//! it has already produced, all known when a step starts. So the engine computes
//! the masks of the step's constrained sequences while the forward pass runs, on
//! a thread of their own, and applies each one to its row of logits before
//! sampling. On a machine whose every core already runs a kernel-pool worker, a
//! third busy thread would steal time slices from those spinning workers and
//! slow the whole batch; there the masks are computed on the pool itself just
//! before the forward pass, in parallel across sequences
//! ([`EngineConfig::overlap_masks`](crate::EngineConfig::overlap_masks)).
//! Unconstrained sequences in the same batch never wait for a mask of their own:
//! their rows are sampled as before.

use std::fmt;
use std::time::Duration;

/// The grammar state of one sequence.
pub trait Constraint: Send {
    /// Writes the tokens that may come next into `mask` (every bit is written).
    /// An error (the grammar reached a state with no continuation) fails the
    /// request with its message.
    fn fill_mask(&mut self, mask: &mut TokenMask) -> Result<(), String>;

    /// Advances past `token`, which the last mask allowed.
    fn commit(&mut self, token: u32) -> Result<(), String>;

    /// Whether `token` ends the output as far as the grammar is concerned (its
    /// end-of-sequence tokens): the request then finishes with `Stop`, even when
    /// the caller asked to ignore EOS.
    fn is_end(&self, token: u32) -> bool;

    /// An independent copy in the same state (for `n` > 1 and retries).
    fn boxed_clone(&self) -> Box<dyn Constraint>;

    /// Whether every id may come next, so that the engine samples the raw row
    /// and skips the mask, its copy and its application (the free text around
    /// lazily constrained tool calls). Default: no.
    fn is_free(&self) -> bool {
        false
    }
}

/// A constraint carried by an [`EngineRequest`](crate::EngineRequest).
pub struct BoxedConstraint(pub Box<dyn Constraint>);

impl Clone for BoxedConstraint {
    fn clone(&self) -> Self {
        BoxedConstraint(self.0.boxed_clone())
    }
}

impl fmt::Debug for BoxedConstraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Constraint")
    }
}

/// One bit per vocabulary id: set means allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenMask {
    words: Vec<u32>,
    vocab: usize,
}

impl TokenMask {
    /// A mask over `vocab` ids with nothing allowed.
    pub fn new(vocab: usize) -> TokenMask {
        TokenMask {
            words: vec![0; vocab.div_ceil(32)],
            vocab,
        }
    }

    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// The bit words (`words[i / 32] >> (i % 32) & 1` is id `i`), for filling.
    pub fn words_mut(&mut self) -> &mut [u32] {
        &mut self.words
    }

    pub fn allows(&self, id: u32) -> bool {
        let i = id as usize;
        i < self.vocab && self.words[i / 32] >> (i % 32) & 1 == 1
    }

    pub fn allow(&mut self, id: u32) {
        let i = id as usize;
        if i < self.vocab {
            self.words[i / 32] |= 1 << (i % 32);
        }
    }

    pub fn count(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Sets the logit of every id the mask forbids to −∞ (ids past the mask's
    /// vocabulary too).
    pub fn apply(&self, logits: &mut [f32]) {
        for (w, chunk) in self.words.iter().zip(logits.chunks_mut(32)) {
            match *w {
                u32::MAX => {}
                0 => chunk.fill(f32::NEG_INFINITY),
                bits => {
                    for (j, v) in chunk.iter_mut().enumerate() {
                        if bits >> j & 1 == 0 {
                            *v = f32::NEG_INFINITY;
                        }
                    }
                }
            }
        }
        if logits.len() > self.words.len() * 32 {
            logits[self.words.len() * 32..].fill(f32::NEG_INFINITY);
        }
        // Bits past `vocab` in the last word are never set by `allow`; a filler
        // that set them gets them cleared here.
        for v in logits.iter_mut().skip(self.vocab) {
            *v = f32::NEG_INFINITY;
        }
    }
}

/// A constrained sequence inside the engine: its constraint, the mask for its
/// next token, and the time masks took.
pub(crate) struct ConstraintState {
    pub constraint: Box<dyn Constraint>,
    pub mask: TokenMask,
    /// The result of the last `fill_mask`; `None` before the first one.
    pub ready: Option<Result<(), String>>,
    pub mask_time: Duration,
    pub masks: usize,
}

impl ConstraintState {
    pub fn new(constraint: Box<dyn Constraint>, vocab: usize) -> ConstraintState {
        ConstraintState {
            constraint,
            mask: TokenMask::new(vocab),
            ready: None,
            mask_time: Duration::ZERO,
            masks: 0,
        }
    }

    /// Computes the mask for the next token (on the mask thread).
    pub fn prepare(&mut self) {
        let t = std::time::Instant::now();
        self.ready = Some(self.constraint.fill_mask(&mut self.mask));
        self.mask_time += t.elapsed();
        self.masks += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_forbids_exactly_the_unset_ids() {
        let mut m = TokenMask::new(70);
        for id in [0, 31, 32, 69] {
            m.allow(id);
        }
        m.allow(70); // outside the vocabulary: ignored
        assert_eq!(m.count(), 4);
        let mut logits = vec![1.0f32; 72];
        m.apply(&mut logits);
        let allowed: Vec<usize> = (0..72).filter(|&i| logits[i].is_finite()).collect();
        assert_eq!(allowed, [0, 31, 32, 69]);
        assert!(m.allows(31) && !m.allows(33) && !m.allows(70));
    }

    #[test]
    fn a_full_word_is_left_alone_and_an_empty_one_cleared() {
        let mut m = TokenMask::new(64);
        m.words_mut()[0] = u32::MAX;
        let mut logits: Vec<f32> = (0..64).map(|i| i as f32).collect();
        m.apply(&mut logits);
        assert!(logits[..32].iter().enumerate().all(|(i, &v)| v == i as f32));
        assert!(logits[32..].iter().all(|v| *v == f32::NEG_INFINITY));
    }
}
