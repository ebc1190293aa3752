//! Speculative decoding: cheap guesses of a sequence's next tokens, checked by
//! the model in the same forward step as everyone else's decode tokens.
//!
//! A [`Proposer`] drafts up to `k` tokens; the engine appends them to the
//! sequence (the scheduler's `set_draft`), the step computes logits at all
//! `1 + k` positions, and the verifier samples each row exactly as plain
//! decoding would and keeps drafts while they match what it sampled
//! ("sample and match"). Greedy output is then identical with speculation on
//! or off, and so is seeded sampling: the sampler draws once per emitted token,
//! in the same order. For a draft that is one token with certainty (every
//! proposer here), this is rejection sampling itself: the draft `d` survives
//! with probability `p(d) = min(1, p(d)/q(d))`, and otherwise the emitted token
//! is distributed as `p` without `d`, renormalised — the residual
//! `max(0, p − q)`.
//!
//! Whether to draft at all is a cost question ([`StepCost`]): a CPU step over
//! few tokens is bound by streaming the weights, so extra tokens are nearly
//! free; a step over many is bound by arithmetic, so each drafted token costs
//! its share and only pays if it is likely to be accepted. Each sequence keeps
//! its own acceptance rate and draft length ([`DraftState`]): full acceptance
//! lengthens the next draft, a miss shortens it to what was accepted, and
//! repeated misses pause drafting for a while.

/// Speculation settings of an engine ([`crate::EngineConfig::speculation`]).
#[derive(Debug, Clone, PartialEq)]
pub struct SpecConfig {
    pub proposer: PromptLookup,
    /// Tokens of earlier outputs kept per tenant for [`SuffixStore`] (0: none).
    /// Default 16,384; at most [`SUFFIX_TENANTS`] tenants are kept.
    pub suffix_tokens_per_tenant: usize,
    /// The longest draft per sequence and step, 1..=[`MAX_DRAFT`]. Default 6.
    pub max_draft: usize,
    /// Draft only what the step-cost model says pays ([`worth_drafting`]).
    /// Default true; false drafts whatever the proposer finds (to measure).
    pub adaptive: bool,
    /// Draft by prompt lookup and from the suffix store. Default true; false
    /// leaves drafting to the draft model.
    pub lookup: bool,
    /// A draft model, asked when lookup finds nothing (or always, without
    /// lookup). Default none.
    pub draft: Option<crate::draft::DraftSource>,
}

impl Default for SpecConfig {
    fn default() -> Self {
        SpecConfig {
            proposer: PromptLookup::default(),
            suffix_tokens_per_tenant: 16_384,
            max_draft: 6,
            adaptive: true,
            lookup: true,
            draft: None,
        }
    }
}

impl SpecConfig {
    /// The first setting out of range, named.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_DRAFT).contains(&self.max_draft) {
            return Err(format!(
                "`spec_max_draft` must be in 1..={MAX_DRAFT}, got {}",
                self.max_draft
            ));
        }
        let p = &self.proposer;
        if p.min_ngram == 0 || p.min_ngram > p.max_ngram || p.max_ngram > 32 {
            return Err(format!(
                "`spec_ngram` must be 1 <= min <= max <= 32, got {}..={}",
                p.min_ngram, p.max_ngram
            ));
        }
        if !self.lookup && self.draft.is_none() {
            return Err(
                "speculation without lookup needs a draft model (`spec_draft_model` \
                 or `spec_draft_layers`)"
                    .into(),
            );
        }
        Ok(())
    }
}

/// Tenants whose outputs a [`SuffixStore`] keeps.
pub const SUFFIX_TENANTS: usize = 256;

/// Drafts tokens likely to follow a sequence.
pub trait Proposer: Send {
    /// Up to `max` tokens that may follow `tokens` (the prompt and the output so
    /// far), pushed onto `out` (empty on entry).
    fn propose(&self, tokens: &[u32], max: usize, out: &mut Vec<u32>);

    fn name(&self) -> &'static str;
}

/// Prompt lookup: the last `n` tokens searched for earlier in the sequence
/// (prompt and output), longest `n` first, most recent occurrence first; the
/// tokens that followed it are the draft. Wins where the output copies its
/// input: editing code, quoting, extraction, agents re-reading tool output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromptLookup {
    /// Shortest suffix matched. Default 2: single tokens match too often by chance.
    pub min_ngram: usize,
    /// Longest suffix matched. Default 4.
    pub max_ngram: usize,
}

impl Default for PromptLookup {
    fn default() -> Self {
        PromptLookup {
            min_ngram: 2,
            max_ngram: 4,
        }
    }
}

impl Proposer for PromptLookup {
    fn propose(&self, tokens: &[u32], max: usize, out: &mut Vec<u32>) {
        let len = tokens.len();
        if max == 0 {
            return;
        }
        for n in (self.min_ngram.max(1)..=self.max_ngram.min(len.saturating_sub(1))).rev() {
            let tail = &tokens[len - n..];
            // The most recent earlier occurrence that is followed by something.
            let found = (0..len - n).rev().find(|&s| &tokens[s..s + n] == tail);
            if let Some(s) = found {
                let from = s + n;
                out.extend_from_slice(&tokens[from..(from + max).min(len)]);
                return;
            }
        }
    }

    fn name(&self) -> &'static str {
        "prompt_lookup"
    }
}

/// Earlier requests' outputs, per tenant (prefix-cache salt), searched for the
/// sequence's last tokens when its own tokens have no match: agent loops and
/// templated tasks repeat their own earlier answers (a tool call's shape, a
/// boilerplate paragraph), as SuffixDecoding and Arctic Inference exploit.
/// Bounded: each tenant keeps its most recent outputs up to
/// `tokens_per_tenant`, and at most `tenants` tenants are kept, the least
/// recently used forgotten first. A bounded store is small enough to scan per
/// draft (16,384 tokens by default: microseconds), so there is no index to
/// keep consistent.
#[derive(Debug, Clone)]
pub struct SuffixStore {
    tokens_per_tenant: usize,
    tenants: usize,
    /// Tenant → its outputs (oldest first) and their token count, with the
    /// tick of its last use.
    by_tenant: std::collections::HashMap<Option<u64>, TenantOutputs>,
    tick: u64,
}

#[derive(Debug, Clone, Default)]
struct TenantOutputs {
    outputs: std::collections::VecDeque<Vec<u32>>,
    tokens: usize,
    used: u64,
}

impl SuffixStore {
    pub fn new(tokens_per_tenant: usize, tenants: usize) -> SuffixStore {
        SuffixStore {
            tokens_per_tenant,
            tenants: tenants.max(1),
            by_tenant: std::collections::HashMap::new(),
            tick: 0,
        }
    }

    /// Remembers a finished request's output for its tenant.
    pub fn record(&mut self, tenant: Option<u64>, output: &[u32]) {
        if output.len() < 2 || output.len() > self.tokens_per_tenant {
            return;
        }
        self.tick += 1;
        if !self.by_tenant.contains_key(&tenant) && self.by_tenant.len() >= self.tenants {
            let oldest = self
                .by_tenant
                .iter()
                .min_by_key(|(_, t)| t.used)
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                self.by_tenant.remove(&k);
            }
        }
        let t = self.by_tenant.entry(tenant).or_default();
        t.used = self.tick;
        t.tokens += output.len();
        t.outputs.push_back(output.to_vec());
        while t.tokens > self.tokens_per_tenant {
            let gone = t.outputs.pop_front().map_or(0, |o| o.len());
            t.tokens -= gone;
        }
    }

    /// Tokens held for all tenants.
    pub fn tokens(&self) -> usize {
        self.by_tenant.values().map(|t| t.tokens).sum()
    }

    /// Up to `max` tokens that followed the longest suffix of `tokens`
    /// (`lookup`'s n-gram range) in this tenant's earlier outputs, the most
    /// recent output first.
    pub fn propose(
        &mut self,
        tenant: Option<u64>,
        lookup: &PromptLookup,
        tokens: &[u32],
        max: usize,
        out: &mut Vec<u32>,
    ) {
        self.tick += 1;
        let Some(t) = self.by_tenant.get_mut(&tenant) else {
            return;
        };
        t.used = self.tick;
        let len = tokens.len();
        for n in (lookup.min_ngram.max(1)..=lookup.max_ngram.min(len)).rev() {
            let tail = &tokens[len - n..];
            for o in t.outputs.iter().rev() {
                let found = (0..o.len().saturating_sub(n))
                    .rev()
                    .find(|&s| &o[s..s + n] == tail);
                if let Some(s) = found {
                    let from = s + n;
                    out.extend_from_slice(&o[from..(from + max).min(o.len())]);
                    return;
                }
            }
        }
    }
}

/// What verifying one draft came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Drafts that matched what was sampled at their position.
    pub accepted: usize,
    /// The token sampled after the accepted drafts (the first mismatch, or the
    /// token after a fully accepted draft); `None` when sampling ended the
    /// sequence first.
    pub next: Option<u32>,
}

/// Sample and match: `sample(j)` samples the row computed after draft tokens
/// `0..j` (as plain decoding would sample it), or `None` when that token ended
/// the sequence; drafts are kept while they equal what was sampled. Each emitted
/// token is then distributed exactly as without drafts, whatever proposed them
/// (the chi-square test below checks it on a small vocabulary).
pub fn sample_and_match(drafts: &[u32], mut sample: impl FnMut(usize) -> Option<u32>) -> Verdict {
    for j in 0..=drafts.len() {
        let Some(token) = sample(j) else {
            return Verdict {
                accepted: j,
                next: None,
            };
        };
        if j == drafts.len() || token != drafts[j] {
            return Verdict {
                accepted: j,
                next: Some(token),
            };
        }
    }
    unreachable!("the row after the last draft always ends the loop: this is a bug")
}

/// The longest a draft grows (tokens per sequence per step).
pub const MAX_DRAFT: usize = 8;

/// One sequence's speculation state: how long its next draft may be, how
/// often its drafts were accepted lately, and a pause after repeated misses.
#[derive(Debug, Clone)]
pub struct DraftState {
    /// Length of the next draft.
    len: usize,
    /// Moving average of the per-token acceptance rate (weight 1/4).
    rate: f64,
    /// Steps left before drafting again.
    paused: usize,
    /// Consecutive verifications that accepted nothing.
    misses: u32,
    /// The longest draft this request may have.
    max_len: usize,
}

impl DraftState {
    pub fn new(max_len: usize) -> DraftState {
        let max_len = max_len.clamp(1, MAX_DRAFT);
        DraftState {
            len: max_len.min(4),
            // Optimistic until measured: the first drafts are how it finds out.
            rate: 0.6,
            paused: 0,
            misses: 0,
            max_len,
        }
    }

    /// The per-token acceptance rate lately.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// How many tokens to draft this step (0 while paused); counts a paused step.
    pub fn wanted(&mut self) -> usize {
        if self.paused > 0 {
            self.paused -= 1;
            return 0;
        }
        self.len
    }

    /// Folds in a verification: `accepted` of `drafted` drafts matched.
    pub fn observe(&mut self, drafted: usize, accepted: usize) {
        if drafted == 0 {
            return;
        }
        // The rate of a geometric acceptance: a run of `accepted` then a miss
        // (or the end of the draft) estimates it as accepted / (accepted + misses).
        let tries = accepted + usize::from(accepted < drafted);
        let sample = accepted as f64 / tries as f64;
        self.rate = 0.75 * self.rate + 0.25 * sample;
        if accepted == drafted {
            self.len = (self.len + 1).min(self.max_len);
            self.misses = 0;
        } else {
            self.len = (accepted + 1).min(self.max_len);
            if accepted == 0 {
                self.misses += 1;
                // 2, 4, 8, 16 steps off after consecutive empty verifications.
                if self.misses >= 2 {
                    self.paused = 1 << self.misses.min(4);
                }
            } else {
                self.misses = 0;
            }
        }
    }
}

/// Expected tokens a verification emits for a draft of `k` at per-token
/// acceptance `rate`: `1 + rate + rate² + … + rateᵏ`.
pub fn expected_tokens(rate: f64, k: usize) -> f64 {
    let mut sum = 0.0;
    let mut term = 1.0;
    for _ in 0..=k {
        sum += term;
        term *= rate;
    }
    sum
}

/// Step time as a line in its token count, `t(n) = fixed + per_token · n`,
/// fitted by exponentially weighted least squares over recent steps: the
/// fixed part is streaming the weights, the slope the arithmetic per token.
#[derive(Debug, Clone, Default)]
pub struct StepCost {
    /// Weighted sums of 1, n, n², t, n·t.
    w: f64,
    n: f64,
    nn: f64,
    t: f64,
    nt: f64,
}

/// Weight of the newest step in the fit (older ones decay by 1 − this).
const COST_DECAY: f64 = 1.0 / 64.0;

impl StepCost {
    /// Folds in one step of `tokens` that took `secs`.
    pub fn observe(&mut self, tokens: usize, secs: f64) {
        let (n, k) = (tokens as f64, 1.0 - COST_DECAY);
        self.w = self.w * k + 1.0;
        self.n = self.n * k + n;
        self.nn = self.nn * k + n * n;
        self.t = self.t * k + secs;
        self.nt = self.nt * k + n * secs;
    }

    /// `(fixed_secs, per_token_secs)`, once steps of different sizes were
    /// seen; `None` before. Both are kept non-negative.
    pub fn fit(&self) -> Option<(f64, f64)> {
        if self.w < 4.0 {
            return None;
        }
        let var = self.nn / self.w - (self.n / self.w).powi(2);
        let mean_n = self.n / self.w;
        // Sizes that barely vary say nothing about the slope.
        if var < 0.25 || mean_n <= 0.0 {
            return None;
        }
        let cov = self.nt / self.w - mean_n * (self.t / self.w);
        let per_token = (cov / var).max(0.0);
        let fixed = (self.t / self.w - per_token * mean_n).max(0.0);
        Some((fixed, per_token))
    }
}

/// How many of `wanted` draft tokens pay for themselves in a step of
/// `step_tokens` tokens that emits `step_yield` tokens without them, for a
/// sequence accepting at `rate`. The i-th draft token is emitted with
/// probability `rateⁱ⁺¹` and costs `per_token` seconds to verify plus
/// `draft_secs` to propose (0 for lookup, a pass of the draft model
/// otherwise); it pays when that yield per second beats the step's own,
/// `step_yield / t(step_tokens)`. Without a fit yet, nothing is drafted: the
/// first steps measure.
pub fn worth_drafting(
    cost: Option<(f64, f64)>,
    step_tokens: usize,
    step_yield: f64,
    rate: f64,
    wanted: usize,
    draft_secs: f64,
) -> usize {
    let Some((fixed, per_token)) = cost else {
        return 0;
    };
    let step_secs = fixed + per_token * step_tokens as f64;
    if step_secs <= 0.0 || step_yield <= 0.0 {
        return wanted;
    }
    let rate_now = step_yield / step_secs;
    let mut p = rate;
    let mut k = 0;
    while k < wanted && p > rate_now * (per_token + draft_secs) {
        k += 1;
        p *= rate;
    }
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(tokens: &[u32], max: usize) -> Vec<u32> {
        let mut out = Vec::new();
        PromptLookup::default().propose(tokens, max, &mut out);
        out
    }

    #[test]
    fn prompt_lookup_continues_the_most_recent_longest_match() {
        // "1 2 3" appears twice; the last "2 3" is the suffix: the most recent
        // earlier occurrence (at 5) continues with 9 9.
        let t = [1, 2, 3, 7, 7, 2, 3, 9, 9, 4, 1, 2, 3];
        // Longest first: "1 2 3" matches at 0 (followed by 7 7 2), not "2 3" at 5.
        assert_eq!(lookup(&t, 3), [7, 7, 2]);
        assert_eq!(lookup(&t, 10).len(), 10);
        // Only "2 3" repeats: its most recent earlier occurrence is at 5.
        let t = [5, 2, 3, 8, 6, 2, 3, 9, 9, 4, 2, 3];
        assert_eq!(lookup(&t, 2), [9, 9]);
        // A draft stops at the end of what is known.
        let t = [4, 5, 6, 4, 5];
        assert_eq!(lookup(&t, 8), [6, 4, 5]);
        // No repeated suffix of 2 or more: no draft; and none asked for.
        assert!(lookup(&[1, 2, 3, 4, 5, 1], 4).is_empty());
        assert!(lookup(&t, 0).is_empty());
        assert!(lookup(&[], 4).is_empty());
        assert!(lookup(&[3], 4).is_empty());
    }

    #[test]
    fn the_suffix_store_drafts_from_a_tenants_earlier_outputs_only_and_stays_bounded() {
        let lookup = PromptLookup::default();
        let mut store = SuffixStore::new(10, 2);
        store.record(Some(1), &[7, 8, 9, 10, 11]);
        store.record(Some(2), &[7, 8, 20, 21]);
        let draft = |store: &mut SuffixStore, tenant, tokens: &[u32]| {
            let mut out = Vec::new();
            store.propose(tenant, &lookup, tokens, 3, &mut out);
            out
        };
        // "… 7 8" continues as tenant 1's output did, and as tenant 2's did for it.
        assert_eq!(draft(&mut store, Some(1), &[1, 7, 8]), [9, 10, 11]);
        assert_eq!(draft(&mut store, Some(2), &[1, 7, 8]), [20, 21]);
        // A tenant with no outputs gets nothing; a suffix seen nowhere, nothing.
        assert!(draft(&mut store, None, &[1, 7, 8]).is_empty());
        assert!(draft(&mut store, Some(1), &[5, 6]).is_empty());
        // The most recent output wins.
        store.record(Some(1), &[7, 8, 30]);
        assert_eq!(draft(&mut store, Some(1), &[7, 8]), [30]);
        // Over 10 tokens for tenant 1: its oldest output goes.
        store.record(Some(1), &[40, 41, 42, 43]);
        assert_eq!(store.tokens(), 3 + 4 + 4);
        assert_eq!(draft(&mut store, Some(1), &[9, 10]), Vec::<u32>::new());
        // A third tenant pushes out the least recently used (tenant 2).
        store.record(Some(3), &[1, 2, 3]);
        assert!(draft(&mut store, Some(2), &[7, 8]).is_empty());
        assert_eq!(draft(&mut store, Some(1), &[7, 8]), [30]);
        // An output longer than a tenant may hold is not kept at all.
        store.record(Some(1), &[0; 11]);
        assert_eq!(draft(&mut store, Some(1), &[7, 8]), [30]);
    }

    #[test]
    fn drafts_lengthen_on_full_acceptance_shorten_on_a_miss_and_pause_on_repeated_misses() {
        let mut s = DraftState::new(6);
        assert_eq!(s.wanted(), 4);
        s.observe(4, 4);
        assert_eq!(s.wanted(), 5);
        s.observe(5, 5);
        s.observe(6, 6);
        assert_eq!(s.wanted(), 6, "capped at the request's maximum");
        s.observe(6, 2);
        assert_eq!(s.wanted(), 3, "what was accepted, plus one");
        s.observe(3, 0);
        assert_eq!(s.wanted(), 1);
        s.observe(1, 0);
        // Two empty verifications in a row: four steps off, then one token.
        assert_eq!((0..4).map(|_| s.wanted()).sum::<usize>(), 0);
        assert_eq!(s.wanted(), 1);
        assert!(s.rate() < 0.5, "{}", s.rate());
    }

    /// Pearson's statistic of `counts` against `probs` over `n` draws.
    fn chi_square(counts: &[u64], probs: &[f64], n: u64) -> f64 {
        counts
            .iter()
            .zip(probs)
            .map(|(&o, &p)| {
                let e = p * n as f64;
                (o as f64 - e).powi(2) / e
            })
            .sum()
    }

    /// Two tokens of a 4-token vocabulary, drafted from a distribution unlike
    /// the model's, then verified by sample and match (plain decoding samples
    /// the second token after a rejected first draft): the joint distribution
    /// of what is emitted must be the model's, `p1(a)·p2(b | a)`. A verifier
    /// that keeps any likely-enough draft fails the same test.
    #[test]
    fn sample_and_match_keeps_the_models_distribution_under_any_drafts() {
        use crate::sampling::{Sampler, SamplingParams};
        use rand::{Rng, SeedableRng};

        const V: usize = 4;
        let first: [f32; V] = [1.2, 0.3, -0.5, 0.8];
        // Logits of the second token given the first.
        let second: [[f32; V]; V] = [
            [0.0, 1.0, -1.0, 0.5],
            [2.0, -0.3, 0.1, 0.0],
            [-0.7, 0.2, 1.5, 0.3],
            [0.4, 0.4, -2.0, 1.1],
        ];
        let softmax = |l: &[f32; V]| -> [f64; V] {
            let z: f64 = l.iter().map(|&x| (x as f64).exp()).sum();
            std::array::from_fn(|i| (l[i] as f64).exp() / z)
        };
        let p1 = softmax(&first);
        let joint: Vec<f64> = (0..V * V)
            .map(|ab| p1[ab / V] * softmax(&second[ab / V])[ab % V])
            .collect();
        type Verifier<'a> =
            dyn Fn(&[u32], &mut Sampler, &mut dyn FnMut(usize) -> [f32; V]) -> Verdict + 'a;
        // Drafts favour the tokens the model finds least likely.
        let q = [0.1, 0.2, 0.4, 0.3];
        let run = |verify: &Verifier<'_>| {
            let mut sampler = Sampler::new(SamplingParams {
                temperature: 1.0,
                seed: Some(11),
                ..Default::default()
            })
            .expect("valid parameters");
            let mut rng = rand::rngs::StdRng::seed_from_u64(5);
            let draw = |rng: &mut rand::rngs::StdRng| {
                let mut u: f64 = rng.gen();
                q.iter()
                    .position(|&p| {
                        u -= p;
                        u < 0.0
                    })
                    .unwrap_or(V - 1) as u32
            };
            let (mut counts, mut accepted) = ([0u64; V * V], 0);
            let n = 40_000;
            for _ in 0..n {
                let drafts = [draw(&mut rng), draw(&mut rng)];
                let mut emitted = Vec::new();
                let mut rows = |j: usize| match j {
                    0 => first,
                    _ => second[drafts[j - 1] as usize],
                };
                let v = verify(&drafts, &mut sampler, &mut rows);
                accepted += v.accepted;
                emitted.extend_from_slice(&drafts[..v.accepted]);
                emitted.push(v.next.expect("nothing ends the sequence"));
                if emitted.len() == 1 {
                    // The next step decodes the second token after the first.
                    let row = second[emitted[0] as usize];
                    emitted.push(sampler.sample(&row).0);
                }
                counts[emitted[0] as usize * V + emitted[1] as usize] += 1;
            }
            (chi_square(&counts, &joint, n), accepted)
        };
        let exact = |d: &[u32], s: &mut Sampler, rows: &mut dyn FnMut(usize) -> [f32; V]| {
            sample_and_match(d, |j| Some(s.sample(&rows(j)).0))
        };
        // 15 degrees of freedom: 37.7 is the 0.1% critical value.
        let (stat, accepted) = run(&exact);
        assert!(
            stat < 37.7,
            "chi-square {stat:.1} over 15 degrees of freedom"
        );
        assert!(accepted > 10_000, "drafts were accepted {accepted} times");
        // Keeping a draft the model gives at least 20% (rejecting by sampling
        // otherwise) skews the distribution towards the drafts.
        let lenient = |d: &[u32], s: &mut Sampler, rows: &mut dyn FnMut(usize) -> [f32; V]| {
            sample_and_match(d, |j| {
                let row = rows(j);
                let p = softmax(&row);
                match d.get(j) {
                    Some(&t) if p[t as usize] >= 0.2 => Some(t),
                    _ => Some(s.sample(&row).0),
                }
            })
        };
        let (stat, _) = run(&lenient);
        assert!(
            stat > 100.0,
            "a biased verifier went unnoticed: chi-square {stat:.1}"
        );
    }

    #[test]
    fn expected_tokens_is_the_geometric_sum() {
        assert_eq!(expected_tokens(0.0, 4), 1.0);
        assert_eq!(expected_tokens(1.0, 4), 5.0);
        assert!((expected_tokens(0.5, 2) - 1.75).abs() < 1e-12);
    }

    #[test]
    fn the_cost_line_is_recovered_from_steps_of_several_sizes() {
        let mut c = StepCost::default();
        assert!(c.fit().is_none());
        for i in 0..200 {
            let n = 1 + (i * 7) % 40;
            c.observe(n, 0.010 + 0.0005 * n as f64);
        }
        let (fixed, per_token) = c.fit().expect("fitted");
        assert!((fixed - 0.010).abs() < 1e-6, "{fixed}");
        assert!((per_token - 0.0005).abs() < 1e-8, "{per_token}");
        // Steps of one size say nothing about the slope.
        let mut same = StepCost::default();
        for _ in 0..50 {
            same.observe(8, 0.02);
        }
        assert!(same.fit().is_none());
    }

    #[test]
    fn drafting_pays_when_weights_dominate_and_not_when_arithmetic_does() {
        // One sequence, a step bound by streaming the weights (10 ms fixed,
        // 0.1 ms a token): a draft of 4 at 60% acceptance is worth it whole.
        let weights_bound = Some((0.010, 0.0001));
        assert_eq!(worth_drafting(weights_bound, 1, 1.0, 0.6, 4, 0.0), 4);
        // 32 sequences on an arithmetic-bound step (0.5 ms fixed, 1 ms a
        // token): each token of the step already yields one token; a draft
        // token yields 0.6 at best, so none is drafted.
        let compute_bound = Some((0.0005, 0.001));
        assert_eq!(worth_drafting(compute_bound, 32, 32.0, 0.6, 4, 0.0), 0);
        // ...unless drafts are nearly always right.
        assert!(worth_drafting(compute_bound, 32, 32.0, 0.99, 4, 0.0) > 0);
        // Before a fit there is nothing to go by: no drafts.
        assert_eq!(worth_drafting(None, 1, 1.0, 0.9, 4, 0.0), 0);
        // A draft model whose pass costs as much as the step itself never pays
        // at 60%; one at a tenth of it does.
        assert_eq!(worth_drafting(weights_bound, 1, 1.0, 0.6, 4, 0.010), 0);
        assert_eq!(worth_drafting(weights_bound, 1, 1.0, 0.6, 4, 0.001), 4);
    }
}
