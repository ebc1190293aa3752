//! Confidence escalation: the cheapest tier answers first; when its answer's
//! confidence is below a threshold, the next tier is asked instead.
//!
//! The score comes from the answer's own tokens, which the first tier is asked
//! to log with their `top_logprobs` alternatives (the client sees the
//! log-probabilities only if it asked for them). Over the scored tokens
//! t = 1..T, with ℓ_t the chosen token's log-probability and p_{t,1..k} the
//! probabilities of its top k alternatives:
//! - `mean_logprob` = (1/T) Σ ℓ_t: the log of the geometric-mean token
//!   probability;
//! - `min_logprob` = min_t ℓ_t: the least sure token;
//! - `neg_entropy` = −(1/T) Σ H_t, where H_t = −Σ_i p_{t,i} ln p_{t,i} − r_t ln r_t
//!   and r_t = max(0, 1 − Σ_i p_{t,i}) is the mass outside the top k, taken as
//!   one outcome (so H_t is a lower bound of the full entropy).
//!
//! Higher is surer for all three; the configured `signal` is compared with
//! `threshold`, and a score below it escalates. A whole answer is scored for a
//! non-streamed request; a streamed one is escalated only with `hold_tokens`
//! set, and then its first `hold_tokens` tokens are held back, scored, and
//! either sent on or dropped for the next tier's answer. An answer with no
//! logged tokens (a backend that does not report them) is not escalated.

use inferd_backend::{LoggedToken, Request};

/// The score compared with the threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    MeanLogprob,
    MinLogprob,
    NegEntropy,
}

impl Signal {
    pub const NAMES: [&'static str; 3] = ["mean_logprob", "min_logprob", "neg_entropy"];

    pub fn parse(name: &str) -> Option<Signal> {
        Some(match name {
            "mean_logprob" => Signal::MeanLogprob,
            "min_logprob" => Signal::MinLogprob,
            "neg_entropy" => Signal::NegEntropy,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        Signal::NAMES[self as usize]
    }

    pub fn of(self, s: &Scores) -> f64 {
        match self {
            Signal::MeanLogprob => s.mean_logprob,
            Signal::MinLogprob => s.min_logprob,
            Signal::NegEntropy => -s.mean_entropy,
        }
    }
}

/// `[routing.escalation]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Escalation {
    pub signal: Signal,
    pub threshold: f64,
    /// Streamed requests: tokens held back and scored before any is sent
    /// (0: streamed requests are not escalated).
    pub hold_tokens: usize,
    /// Alternatives logged per token for the entropy.
    pub top_logprobs: usize,
}

/// The three signals of one answer (module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scores {
    pub tokens: usize,
    pub mean_logprob: f64,
    pub min_logprob: f64,
    pub mean_entropy: f64,
}

impl Scores {
    /// `None` when no token carries a log-probability.
    pub fn of(tokens: &[LoggedToken]) -> Option<Scores> {
        let logged: Vec<&LoggedToken> = tokens.iter().filter(|t| t.logprob.is_some()).collect();
        if logged.is_empty() {
            return None;
        }
        let n = logged.len() as f64;
        let lp = |t: &LoggedToken| f64::from(t.logprob.unwrap_or(0.0));
        let entropy = |t: &LoggedToken| {
            let mut h = 0.0;
            let mut mass = 0.0;
            for alt in &t.top {
                let p = f64::from(alt.logprob).exp();
                if p > 0.0 {
                    h -= p * f64::from(alt.logprob);
                    mass += p;
                }
            }
            let rest = (1.0 - mass).max(0.0);
            if rest > 0.0 {
                h -= rest * rest.ln();
            }
            h
        };
        Some(Scores {
            tokens: logged.len(),
            mean_logprob: logged.iter().map(|t| lp(t)).sum::<f64>() / n,
            min_logprob: logged.iter().map(|t| lp(t)).fold(f64::INFINITY, f64::min),
            mean_entropy: logged.iter().map(|t| entropy(t)).sum::<f64>() / n,
        })
    }
}

/// The request as the first tier gets it: logging every token with at least
/// `top` alternatives.
pub fn with_logprobs(request: &Request, top: usize) -> Request {
    let mut r = request.clone();
    match &mut r {
        Request::Chat(c) => c.logprobs = Some(c.logprobs.unwrap_or(0).max(top)),
        Request::Completion(c) => c.logprobs = Some(c.logprobs.unwrap_or(0).max(top)),
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use inferd_protocol::TopLogprob;

    fn token(logprob: f32, top: &[f32]) -> LoggedToken {
        LoggedToken {
            token: "x".into(),
            bytes: b"x".to_vec(),
            logprob: Some(logprob),
            top: top
                .iter()
                .map(|&l| TopLogprob {
                    token: "y".into(),
                    logprob: l,
                    bytes: None,
                })
                .collect(),
        }
    }

    #[test]
    fn scores_follow_their_formulas() {
        let half = 0.5f32.ln();
        // A sure token (p = 1, nothing else) and a coin flip between two.
        let s = Scores::of(&[token(0.0, &[0.0]), token(half, &[half, half])]).unwrap();
        assert_eq!(s.tokens, 2);
        assert!((s.mean_logprob - f64::from(half) / 2.0).abs() < 1e-6);
        assert!((s.min_logprob - f64::from(half)).abs() < 1e-6);
        assert!((s.mean_entropy - 2f64.ln() / 2.0).abs() < 1e-6, "{s:?}");
        // Mass outside the top alternatives counts as one more outcome.
        let quarter = 0.25f32.ln();
        let s = Scores::of(&[token(quarter, &[quarter])]).unwrap();
        let want = -(0.25 * 0.25f64.ln()) - 0.75 * 0.75f64.ln();
        assert!((s.mean_entropy - want).abs() < 1e-6);
        assert!((Signal::NegEntropy.of(&s) + want).abs() < 1e-6);
        assert_eq!(Scores::of(&[]), None);
        assert_eq!(
            Signal::parse("min_logprob").map(Signal::name),
            Some("min_logprob")
        );
    }
}
