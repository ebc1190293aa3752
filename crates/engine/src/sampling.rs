//! Token sampling. Order of operations follows common practice (llama.cpp, vLLM):
//! penalties on the raw logits → temperature → top-k → softmax → top-p → min-p →
//! draw. Log-probabilities are reported from the model's raw distribution
//! (log-softmax of the unpenalised logits), as OpenAI's API and vLLM do.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{EngineError, Result};

/// Sampling parameters. `Default` is greedy decoding.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy (argmax). Default 0.
    pub temperature: f32,
    /// Keep only the k most likely tokens; 0 disables. Default 0.
    pub top_k: usize,
    /// Nucleus: keep the smallest set with cumulative probability ≥ top_p. Default 1.
    pub top_p: f32,
    /// Drop tokens whose probability is below min_p × the top probability. Default 0.
    pub min_p: f32,
    /// Multiplicative penalty on logits of tokens already seen (>1 discourages,
    /// CTRL-style as in llama.cpp/HF). Default 1 (off).
    pub repetition_penalty: f32,
    /// Subtracted once from a seen token's logit (OpenAI semantics). Default 0.
    pub presence_penalty: f32,
    /// Subtracted per occurrence from a seen token's logit. Default 0.
    pub frequency_penalty: f32,
    /// Seed for reproducible sampling; `None` draws one from the OS.
    pub seed: Option<u64>,
    /// Report log-probabilities of the chosen token and this many alternatives.
    pub logprobs: Option<usize>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
            logprobs: None,
        }
    }
}

impl SamplingParams {
    /// Checks every field; the error names the field, the value and the rule.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, value: f32, reason| {
            Err(EngineError::InvalidParam {
                field,
                value: value.to_string(),
                reason,
            })
        };
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad("temperature", self.temperature, "must be finite and >= 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", self.top_p, "must be in (0, 1]");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", self.min_p, "must be in [0, 1]");
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad(
                "repetition_penalty",
                self.repetition_penalty,
                "must be finite and > 0",
            );
        }
        if !(-2.0..=2.0).contains(&self.presence_penalty) {
            return bad(
                "presence_penalty",
                self.presence_penalty,
                "must be in [-2, 2]",
            );
        }
        if !(-2.0..=2.0).contains(&self.frequency_penalty) {
            return bad(
                "frequency_penalty",
                self.frequency_penalty,
                "must be in [-2, 2]",
            );
        }
        if let Some(n) = self.logprobs {
            if n > 20 {
                return Err(EngineError::InvalidParam {
                    field: "top_logprobs",
                    value: n.to_string(),
                    reason: "must be at most 20",
                });
            }
        }
        Ok(())
    }
}

/// Log-probability of the sampled token and the top alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct Logprobs {
    pub token_logprob: f32,
    /// Most likely tokens first.
    pub top: Vec<(u32, f32)>,
}

/// Per-sequence sampler: owns the RNG and the counts used by the penalties.
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    /// Every token seen, with how often it was generated (0 for prompt-only
    /// tokens): the repetition penalty covers prompt and output, the presence and
    /// frequency penalties only the output, as in OpenAI's API and vLLM.
    counts: std::collections::HashMap<u32, u32>,
    scratch: Vec<(u32, f32)>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Sampler> {
        params.validate()?;
        let rng = match params.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_entropy(),
        };
        Ok(Sampler {
            params,
            rng,
            counts: Default::default(),
            scratch: Vec::new(),
        })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Records a prompt token (repetition penalty only).
    pub fn observe_prompt(&mut self, token: u32) {
        self.counts.entry(token).or_insert(0);
    }

    /// Records a generated token (all penalties).
    pub fn observe(&mut self, token: u32) {
        *self.counts.entry(token).or_insert(0) += 1;
    }

    /// Picks the next token from one row of logits (does not `observe` it).
    pub fn sample(&mut self, logits: &[f32]) -> (u32, Option<Logprobs>) {
        let p = &self.params;
        let penalised =
            p.repetition_penalty != 1.0 || p.presence_penalty != 0.0 || p.frequency_penalty != 0.0;
        let adjusted;
        let l: &[f32] = if penalised && !self.counts.is_empty() {
            let mut a = logits.to_vec();
            for (&t, &n) in &self.counts {
                let v = &mut a[t as usize];
                if p.repetition_penalty != 1.0 {
                    *v = if *v > 0.0 {
                        *v / p.repetition_penalty
                    } else {
                        *v * p.repetition_penalty
                    };
                }
                if n > 0 {
                    *v -= p.presence_penalty + p.frequency_penalty * n as f32;
                }
            }
            adjusted = a;
            &adjusted
        } else {
            logits
        };
        let (greedy, top_n) = (p.temperature == 0.0, p.logprobs);
        let token = if greedy { argmax(l) } else { self.draw(l) };
        let lp = top_n.map(|n| logprobs(logits, token, n));
        (token, lp)
    }

    fn draw(&mut self, l: &[f32]) -> u32 {
        let p = &self.params;
        let inv_t = 1.0 / p.temperature;
        let c = &mut self.scratch;
        c.clear();
        c.extend(l.iter().enumerate().map(|(i, &v)| (i as u32, v * inv_t)));
        if p.top_k > 0 && p.top_k < c.len() {
            c.select_nth_unstable_by(p.top_k - 1, |a, b| b.1.total_cmp(&a.1));
            c.truncate(p.top_k);
        }
        // Softmax over the candidates.
        let max = c.iter().map(|x| x.1).fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for x in c.iter_mut() {
            x.1 = (x.1 - max).exp();
            sum += x.1;
        }
        for x in c.iter_mut() {
            x.1 /= sum;
        }
        if p.top_p < 1.0 {
            nucleus(c, p.top_p);
        }
        if p.min_p > 0.0 {
            let top = c.iter().map(|x| x.1).fold(0.0, f32::max);
            c.retain(|x| x.1 >= p.min_p * top);
        }
        let total: f32 = c.iter().map(|x| x.1).sum();
        let mut r = self.rng.gen::<f32>() * total;
        for &(t, pr) in c.iter() {
            r -= pr;
            if r <= 0.0 {
                return t;
            }
        }
        c.last()
            .expect("at least one candidate survives filtering: this is a bug")
            .0
    }
}

/// Keeps the smallest set of most likely candidates whose probabilities sum to at
/// least `top_p`, most likely first. Sorts growing prefixes (64, 256, 1024, …)
/// chosen by selection instead of the whole vocabulary: the nucleus is usually a
/// few dozen tokens out of ~50,000.
fn nucleus(c: &mut Vec<(u32, f32)>, top_p: f32) {
    let by_prob = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1);
    let mut k = c.len().min(64);
    loop {
        if k < c.len() {
            c.select_nth_unstable_by(k - 1, by_prob);
        }
        c[..k].sort_unstable_by(by_prob);
        let mut cum = 0.0;
        for i in 0..k {
            cum += c[i].1;
            if cum >= top_p {
                c.truncate(i + 1);
                return;
            }
        }
        if k == c.len() {
            return;
        }
        k = (k * 4).min(c.len());
    }
}

/// Index of the largest logit (first on ties).
pub fn argmax(l: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in l.iter().enumerate() {
        if v > l[best] {
            best = i;
        }
    }
    best as u32
}

/// Log-softmax value of `token` and the `n` most likely tokens.
pub fn logprobs(logits: &[f32], token: u32, n: usize) -> Logprobs {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max + logits.iter().map(|&v| (v - max).exp()).sum::<f32>().ln();
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    let n = n.min(logits.len());
    if n > 0 && n < idx.len() {
        idx.select_nth_unstable_by(n - 1, |&a, &b| {
            logits[b as usize].total_cmp(&logits[a as usize])
        });
    }
    idx.truncate(n);
    idx.sort_unstable_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
    Logprobs {
        token_logprob: logits[token as usize] - lse,
        top: idx
            .into_iter()
            .map(|i| (i, logits[i as usize] - lse))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(f: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
        let mut p = SamplingParams {
            seed: Some(1),
            ..Default::default()
        };
        f(&mut p);
        p
    }

    #[test]
    fn greedy_picks_argmax() {
        let mut s = Sampler::new(SamplingParams::default()).unwrap();
        assert_eq!(s.sample(&[0.1, 3.0, 2.9]).0, 1);
    }

    #[test]
    fn seed_makes_sampling_reproducible() {
        let logits: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin()).collect();
        let run = |seed| {
            let mut s = Sampler::new(params(|p| {
                p.temperature = 1.0;
                p.seed = Some(seed);
            }))
            .unwrap();
            (0..50).map(|_| s.sample(&logits).0).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn top_k_one_is_greedy() {
        let logits = [0.0, 5.0, 1.0, 4.9];
        let mut s = Sampler::new(params(|p| {
            p.temperature = 2.0;
            p.top_k = 1;
        }))
        .unwrap();
        assert!((0..100).all(|_| s.sample(&logits).0 == 1));
    }

    /// The reference: sort everything, keep the shortest prefix reaching `top_p`.
    fn nucleus_by_full_sort(c: &mut Vec<(u32, f32)>, top_p: f32) {
        c.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
        let mut cum = 0.0;
        let mut keep = c.len();
        for (i, x) in c.iter().enumerate() {
            cum += x.1;
            if cum >= top_p {
                keep = i + 1;
                break;
            }
        }
        c.truncate(keep);
    }

    #[test]
    fn nucleus_by_partial_selection_matches_a_full_sort() {
        let mut rng = StdRng::seed_from_u64(3);
        for case in 0..60 {
            let n = [1, 7, 64, 65, 300, 5000, 49152][case % 7];
            // Peaked (a few dominant tokens) to flat distributions.
            let sharp = [0.1f32, 1.0, 4.0, 12.0][case % 4];
            let mut c: Vec<(u32, f32)> = (0..n as u32)
                .map(|i| (i, (rng.gen::<f32>() * sharp).exp()))
                .collect();
            let sum: f32 = c.iter().map(|x| x.1).sum();
            c.iter_mut().for_each(|x| x.1 /= sum);
            for top_p in [0.05f32, 0.5, 0.9, 0.99, 0.999999] {
                let (mut fast, mut reference) = (c.clone(), c.clone());
                nucleus(&mut fast, top_p);
                nucleus_by_full_sort(&mut reference, top_p);
                let probs = |v: &[(u32, f32)]| v.iter().map(|x| x.1).collect::<Vec<_>>();
                assert_eq!(
                    probs(&fast),
                    probs(&reference),
                    "n={n} sharp={sharp} top_p={top_p}"
                );
            }
        }
    }

    #[test]
    fn top_p_and_min_p_cut_the_tail() {
        // probabilities ~ [0.64, 0.24, 0.09, 0.03]
        let logits = [3.0, 2.0, 1.0, 0.0];
        let mut s = Sampler::new(params(|p| {
            p.temperature = 1.0;
            p.top_p = 0.8;
        }))
        .unwrap();
        assert!((0..300).all(|_| s.sample(&logits).0 <= 1));
        let mut s = Sampler::new(params(|p| {
            p.temperature = 1.0;
            p.min_p = 0.2;
        }))
        .unwrap();
        let seen: std::collections::HashSet<u32> = (0..300).map(|_| s.sample(&logits).0).collect();
        assert_eq!(seen, [0, 1].into_iter().collect());
    }

    #[test]
    fn penalties_discourage_seen_tokens() {
        let logits = [2.0, 1.9];
        for p in [
            params(|p| p.repetition_penalty = 1.5),
            params(|p| p.presence_penalty = 0.5),
            params(|p| p.frequency_penalty = 0.2),
        ] {
            let mut s = Sampler::new(p).unwrap();
            assert_eq!(s.sample(&logits).0, 0);
            s.observe(0);
            assert_eq!(s.sample(&logits).0, 1);
        }
    }

    #[test]
    fn presence_and_frequency_ignore_prompt_tokens_but_repetition_does_not() {
        let logits = [2.0, 1.9];
        let mut s = Sampler::new(params(|p| p.presence_penalty = 0.5)).unwrap();
        s.observe_prompt(0);
        assert_eq!(
            s.sample(&logits).0,
            0,
            "prompt tokens are not output tokens"
        );
        let mut s = Sampler::new(params(|p| p.repetition_penalty = 1.5)).unwrap();
        s.observe_prompt(0);
        assert_eq!(s.sample(&logits).0, 1);
    }

    #[test]
    fn logprobs_are_normalised_and_sorted() {
        let lp = logprobs(&[1.0, 3.0, 2.0], 2, 2);
        assert_eq!(lp.top.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 2]);
        let total: f32 = [1.0f32, 3.0, 2.0].iter().map(|v| (v - 3.0f32).exp()).sum();
        assert!((lp.top[0].1 - (-total.ln())).abs() < 1e-6);
        assert_eq!(lp.token_logprob, lp.top[1].1);
    }

    #[test]
    fn invalid_params_name_the_field() {
        let e = Sampler::new(params(|p| p.top_p = 1.5))
            .err()
            .unwrap()
            .to_string();
        assert_eq!(e, "`top_p` must be in (0, 1], got 1.5");
        let e = Sampler::new(params(|p| p.temperature = -1.0))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("`temperature`"), "{e}");
    }
}
