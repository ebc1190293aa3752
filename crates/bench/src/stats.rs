//! Per-request records and the aggregates of one run, with the definitions of
//! DESIGN.md: TTFT (send → first output token), TPOT ((e2e − TTFT) / (output
//! tokens − 1), per request; undefined for one-token outputs), ITL (every gap
//! between consecutive streamed tokens, pooled), e2e, and goodput (requests per
//! second that meet every given SLO).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One request as the client saw it (times in seconds from its send).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RequestRecord {
    /// Seconds from the start of the level to the send.
    pub sent_at: f64,
    pub ok: bool,
    /// Why it failed (HTTP status and message), when it did.
    pub error: Option<String>,
    pub ttft: Option<f64>,
    pub e2e: f64,
    /// Gaps between consecutive content chunks.
    pub itl: Vec<f64>,
    pub prompt_tokens: usize,
    pub output_tokens: usize,
    pub cached_tokens: Option<usize>,
    /// The server's own `timings` object, when it sends one (inferd, llama-server).
    pub server_timings: Option<serde_json::Value>,
    /// Multi-turn workload: which turn of its conversation this was.
    pub turn: Option<usize>,
}

impl RequestRecord {
    /// `None` for outputs of fewer than two tokens, where no inter-token time exists.
    pub fn tpot(&self) -> Option<f64> {
        let ttft = self.ttft?;
        (self.output_tokens >= 2).then(|| (self.e2e - ttft) / (self.output_tokens - 1) as f64)
    }

    /// The server's TTFT (ms → s) when it reports one under a known name.
    pub fn server_ttft(&self) -> Option<f64> {
        let t = self.server_timings.as_ref()?;
        t.get("ttft_ms").and_then(|v| v.as_f64()).map(|ms| ms / 1e3)
    }

    /// The server's queue time, when it reports one.
    pub fn server_queue(&self) -> Option<f64> {
        let t = self.server_timings.as_ref()?;
        t.get("queue_ms")
            .and_then(|v| v.as_f64())
            .map(|ms| ms / 1e3)
    }
}

/// Service-level objectives; a request is good when it meets every one given.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Slo {
    pub ttft: Option<f64>,
    pub tpot: Option<f64>,
    pub e2e: Option<f64>,
}

impl Slo {
    /// Parses `ttft=500ms,tpot=50ms,e2e=10s` (units ms or s; any subset).
    pub fn parse(text: &str) -> Result<Slo, String> {
        let mut slo = Slo::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("SLO `{part}` must look like `ttft=500ms`"))?;
            let secs = parse_duration(value).ok_or_else(|| {
                format!("SLO `{part}`: `{value}` is not a duration like 500ms or 2s")
            })?;
            let slot = match key.trim() {
                "ttft" => &mut slo.ttft,
                "tpot" => &mut slo.tpot,
                "e2e" => &mut slo.e2e,
                other => return Err(format!("unknown SLO `{other}`; use ttft, tpot or e2e")),
            };
            *slot = Some(secs);
        }
        Ok(slo)
    }

    pub fn is_empty(&self) -> bool {
        self.ttft.is_none() && self.tpot.is_none() && self.e2e.is_none()
    }

    /// Whether `r` succeeded and met every objective. A one-token output has no
    /// TPOT and cannot miss that objective.
    pub fn met_by(&self, r: &RequestRecord) -> bool {
        let within = |limit: Option<f64>, value: Option<f64>| match (limit, value) {
            (None, _) | (Some(_), None) => true,
            (Some(l), Some(v)) => v <= l,
        };
        r.ok && r.ttft.is_some()
            && within(self.ttft, r.ttft)
            && within(self.tpot, r.tpot())
            && within(self.e2e, Some(r.e2e))
    }
}

impl std::fmt::Display for Slo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = [("ttft", self.ttft), ("tpot", self.tpot), ("e2e", self.e2e)]
            .iter()
            .filter_map(|(k, v)| v.map(|s| format!("{k}={}ms", (s * 1e3).round())))
            .collect();
        write!(f, "{}", parts.join(","))
    }
}

fn parse_duration(v: &str) -> Option<f64> {
    let v = v.trim();
    let (num, scale) = if let Some(n) = v.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1.0)
    } else {
        return None;
    };
    let x: f64 = num.trim().parse().ok()?;
    (x.is_finite() && x > 0.0).then_some(x * scale)
}

/// Percentile with linear interpolation between closest ranks (numpy's default);
/// `None` for no data. `p` in [0, 100].
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0).clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64))
}

/// p50 / p90 / p99 / mean of one metric, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Dist {
    pub count: usize,
    pub mean: Option<f64>,
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
}

impl Dist {
    pub fn of(values: impl IntoIterator<Item = f64>) -> Dist {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        Dist {
            count: v.len(),
            mean: (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64),
            p50: percentile(&v, 50.0),
            p90: percentile(&v, 90.0),
            p99: percentile(&v, 99.0),
        }
    }
}

/// The aggregates of one level (one concurrency or rate) against one target.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Summary {
    pub requests: usize,
    pub failed: usize,
    /// Wall time of the level: first send → last response.
    pub duration_s: f64,
    pub ttft: Dist,
    pub tpot: Dist,
    pub itl: Dist,
    pub e2e: Dist,
    /// The server's own TTFT and queue time, where it reports them.
    pub server_ttft: Dist,
    pub server_queue: Dist,
    pub prompt_tokens: usize,
    pub output_tokens: usize,
    pub output_tokens_per_s: f64,
    pub total_tokens_per_s: f64,
    pub requests_per_s: f64,
    /// Requests per second meeting every SLO (`None` without an SLO).
    pub goodput_rps: Option<f64>,
    /// Share of successful requests that met every SLO.
    pub slo_attainment: Option<f64>,
    /// Prompt tokens the servers reported as read from their prefix caches
    /// (`usage.prompt_tokens_details.cached_tokens`), over all prompt tokens;
    /// `None` when no response reported it.
    #[serde(default)]
    pub prefix_hit_rate: Option<f64>,
}

impl Summary {
    pub fn of(records: &[RequestRecord], duration: Duration, slo: &Slo) -> Summary {
        let ok: Vec<&RequestRecord> = records.iter().filter(|r| r.ok).collect();
        let secs = duration.as_secs_f64().max(1e-9);
        let prompt_tokens = ok.iter().map(|r| r.prompt_tokens).sum();
        let output_tokens: usize = ok.iter().map(|r| r.output_tokens).sum();
        let good = ok.iter().filter(|r| slo.met_by(r)).count();
        Summary {
            requests: records.len(),
            failed: records.len() - ok.len(),
            duration_s: secs,
            ttft: Dist::of(ok.iter().filter_map(|r| r.ttft)),
            tpot: Dist::of(ok.iter().filter_map(|r| r.tpot())),
            itl: Dist::of(ok.iter().flat_map(|r| r.itl.iter().copied())),
            e2e: Dist::of(ok.iter().map(|r| r.e2e)),
            server_ttft: Dist::of(ok.iter().filter_map(|r| r.server_ttft())),
            server_queue: Dist::of(ok.iter().filter_map(|r| r.server_queue())),
            prompt_tokens,
            output_tokens,
            output_tokens_per_s: output_tokens as f64 / secs,
            total_tokens_per_s: (prompt_tokens + output_tokens) as f64 / secs,
            requests_per_s: ok.len() as f64 / secs,
            goodput_rps: (!slo.is_empty()).then(|| good as f64 / secs),
            slo_attainment: (!slo.is_empty() && !ok.is_empty())
                .then(|| good as f64 / ok.len() as f64),
            prefix_hit_rate: (prompt_tokens > 0 && ok.iter().any(|r| r.cached_tokens.is_some()))
                .then(|| {
                    let cached: usize = ok.iter().filter_map(|r| r.cached_tokens).sum();
                    cached as f64 / prompt_tokens as f64
                }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(ttft: f64, e2e: f64, tokens: usize) -> RequestRecord {
        RequestRecord {
            ok: true,
            ttft: Some(ttft),
            e2e,
            output_tokens: tokens,
            ..Default::default()
        }
    }

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 50.0), Some(2.5));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&v, 100.0), Some(4.0));
        // numpy.percentile([1,2,3,4], 90) == 3.7
        assert!((percentile(&v, 90.0).unwrap() - 3.7).abs() < 1e-12);
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
        let d = Dist::of([3.0, 1.0, 2.0, f64::NAN]);
        assert_eq!((d.count, d.mean, d.p50), (3, Some(2.0), Some(2.0)));
    }

    #[test]
    fn tpot_excludes_the_first_token_and_is_undefined_for_one_token() {
        assert_eq!(rec(0.5, 1.5, 11).tpot(), Some(0.1));
        assert_eq!(rec(0.5, 0.5, 1).tpot(), None);
        assert_eq!(rec(0.5, 0.5, 0).tpot(), None);
        let failed = RequestRecord::default();
        assert_eq!(failed.tpot(), None);
    }

    #[test]
    fn goodput_counts_requests_meeting_every_slo() {
        let slo = Slo::parse("ttft=500ms,tpot=50ms,e2e=10s").unwrap();
        assert_eq!(
            slo,
            Slo {
                ttft: Some(0.5),
                tpot: Some(0.05),
                e2e: Some(10.0)
            }
        );
        let records = vec![
            rec(0.4, 1.4, 21), // tpot 0.05: good
            rec(0.6, 1.0, 5),  // ttft too slow
            rec(0.1, 2.1, 11), // tpot 0.2: too slow
            rec(0.2, 0.2, 1),  // one token: no tpot to miss: good
            RequestRecord {
                ok: false,
                ..rec(0.1, 0.2, 3)
            }, // failed: never good
        ];
        let s = Summary::of(&records, Duration::from_secs(2), &slo);
        assert_eq!((s.requests, s.failed), (5, 1));
        assert_eq!(s.goodput_rps, Some(1.0));
        assert_eq!(s.slo_attainment, Some(0.5));
        assert_eq!(s.output_tokens, 38);
        assert_eq!(s.output_tokens_per_s, 19.0);
        assert_eq!(s.tpot.count, 3);
        let none = Summary::of(&records, Duration::from_secs(2), &Slo::default());
        assert_eq!(none.goodput_rps, None);
    }

    #[test]
    fn slo_errors_name_the_problem() {
        assert!(Slo::parse("ttft=fast").unwrap_err().contains("fast"));
        assert!(Slo::parse("latency=1s").unwrap_err().contains("latency"));
        assert!(Slo::parse("ttft").unwrap_err().contains("ttft"));
        assert_eq!(Slo::parse("e2e=2s").unwrap().e2e, Some(2.0));
        assert_eq!(
            Slo::parse("ttft=1s,tpot=100ms").unwrap().to_string(),
            "ttft=1000ms,tpot=100ms"
        );
    }
}
