//! Prometheus metrics (`inferd_<subsystem>_<name>_<unit>`, bounded labels). Request
//! latencies are histograms observed here, labelled by `model` (one of the served
//! models' names, or `none` for a request that named no served model — a bounded
//! set); engine gauges and counters are read from each backend at scrape time.

use std::sync::Arc;

use inferd_backend::{Backend, EngineStats, UpstreamStats};
use inferd_protocol::{Timings, Usage};
use prometheus::{
    CounterVec, Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub ttft: HistogramVec,
    pub queue: HistogramVec,
    pub prefill: HistogramVec,
    pub edge: HistogramVec,
    /// Constrained requests: mask time per output token.
    pub mask: HistogramVec,
    pub tpot: HistogramVec,
    pub itl: HistogramVec,
    pub e2e: HistogramVec,
    pub lengths: HistogramVec,
    pub requests: IntCounterVec,
    pub errors: IntCounterVec,
    pub prompt_tokens: IntCounterVec,
    pub output_tokens: IntCounterVec,
    pub cached_tokens: IntCounterVec,
    /// Gateway: requests by what answered and why.
    pub routes: IntCounterVec,
    /// Gateway: failed attempts before the answer (or before giving up).
    pub fallbacks: IntCounterVec,
    pub escalations: IntCounterVec,
    /// Gateway: its own time before dispatch (`Route::overhead_ms`).
    pub gateway_overhead: HistogramVec,
    /// Gateway: requests a rule answered, transformed or failed on.
    pub handled: IntCounterVec,
    pub saved_tokens: IntCounterVec,
    pub saved_usd: CounterVec,
}

/// The `model` label of a request that named no served model.
pub const NO_MODEL: &str = "none";

const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const EDGE_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
];
const MASK_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
];
/// The `position` labels of the per-position acceptance counters.
const DRAFT_POSITIONS: [&str; inferd_backend::MAX_DRAFT] = [
    ",position=\"1\"",
    ",position=\"2\"",
    ",position=\"3\"",
    ",position=\"4\"",
    ",position=\"5\"",
    ",position=\"6\"",
    ",position=\"7\"",
    ",position=\"8\"",
];
const TOKEN_BUCKETS: &[f64] = &[1.0, 8.0, 32.0, 128.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0];

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let histogram = |name: &str, help: &str, buckets: &[f64], labels: &[&str]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                labels,
            )
            .expect("static histogram options are valid: this is a bug");
            r.register(Box::new(h.clone()))
                .expect("metric names are unique: this is a bug");
            h
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)
                .expect("valid counter: this is a bug");
            r.register(Box::new(c.clone()))
                .expect("metric names are unique: this is a bug");
            c
        };
        let m = &["model"];
        let latency = |name: &str, help: &str| histogram(name, help, LATENCY_BUCKETS, m);
        Metrics {
            ttft: latency(
                "inferd_request_ttft_seconds",
                "Arrival to first output token",
            ),
            queue: latency(
                "inferd_request_queue_seconds",
                "Arrival to first scheduled step",
            ),
            prefill: latency(
                "inferd_request_prefill_seconds",
                "First scheduled to first token",
            ),
            edge: histogram(
                "inferd_request_edge_seconds",
                "Arrival to submission: validation, templating, tokenizing",
                EDGE_BUCKETS,
                m,
            ),
            mask: histogram(
                "inferd_request_mask_per_token_seconds",
                "Constrained requests: token-mask time over the output, per output token",
                MASK_BUCKETS,
                m,
            ),
            tpot: latency(
                "inferd_request_tpot_seconds",
                "(e2e - TTFT) / (output tokens - 1)",
            ),
            itl: latency(
                "inferd_request_itl_seconds",
                "Gap between consecutive streamed tokens",
            ),
            e2e: latency("inferd_request_e2e_seconds", "Arrival to last token"),
            lengths: histogram(
                "inferd_request_length_tokens",
                "Prompt and output lengths per request",
                TOKEN_BUCKETS,
                &["model", "kind"],
            ),
            requests: counter(
                "inferd_requests_total",
                "Finished requests by finish reason",
                &["model", "finish_reason"],
            ),
            errors: counter(
                "inferd_request_errors_total",
                "Failed requests by error type",
                &["model", "type"],
            ),
            prompt_tokens: counter(
                "inferd_prompt_tokens_total",
                "Prompt tokens of finished requests",
                m,
            ),
            output_tokens: counter(
                "inferd_output_tokens_total",
                "Output tokens of finished requests",
                m,
            ),
            cached_tokens: counter(
                "inferd_cached_prompt_tokens_total",
                "Prompt tokens served from the prefix cache",
                m,
            ),
            routes: counter(
                "inferd_gateway_routes_total",
                "Routed requests by router, tier and backend that answered, and reason",
                &["router", "tier", "backend", "reason"],
            ),
            fallbacks: counter(
                "inferd_gateway_fallbacks_total",
                "Attempts that failed before another backend answered, by the tier and backend that failed",
                &["router", "tier", "backend"],
            ),
            escalations: counter(
                "inferd_gateway_escalations_total",
                "Answers scored by confidence, by the tier scored, the tier that answered, and whether it escalated",
                &["router", "scored", "answered", "escalated"],
            ),
            handled: counter(
                "inferd_gateway_handled_total",
                "Requests a rule answered, transformed, or failed on (then a model answered)",
                &["router", "rule", "action"],
            ),
            saved_tokens: counter(
                "inferd_gateway_handler_saved_tokens_total",
                "Estimated prompt and answer tokens of requests rules answered without a model",
                &["router", "rule"],
            ),
            saved_usd: {
                let c = CounterVec::new(
                    Opts::new(
                        "inferd_gateway_handler_saved_usd_total",
                        "What the tier that would have answered would have cost, for requests rules answered",
                    ),
                    &["router", "rule"],
                )
                .expect("valid metric");
                r.register(Box::new(c.clone()))
                    .expect("metric names are unique: this is a bug");
                c
            },
            gateway_overhead: histogram(
                "inferd_gateway_overhead_seconds",
                "A router's own time before the answering backend got the request",
                EDGE_BUCKETS,
                &["router"],
            ),
            registry: r,
        }
    }

    /// A gateway's choice (`router` is the name the request asked for).
    pub fn observe_route(&self, router: &str, route: &inferd_protocol::Route) {
        self.routes
            .with_label_values(&[router, &route.tier, &route.backend, &route.reason])
            .inc();
        for a in &route.attempts {
            self.fallbacks
                .with_label_values(&[router, &a.tier, &a.backend])
                .inc();
        }
        if let Some(h) = &route.handler {
            self.handled
                .with_label_values(&[router, &h.rule, &h.action])
                .inc();
            if let Some(t) = h.saved_tokens {
                self.saved_tokens
                    .with_label_values(&[router, &h.rule])
                    .inc_by(t as u64);
            }
            if let Some(usd) = h.saved_usd {
                self.saved_usd
                    .with_label_values(&[router, &h.rule])
                    .inc_by(usd);
            }
        }
        if let Some(ms) = route.overhead_ms {
            self.gateway_overhead
                .with_label_values(&[router])
                .observe(ms / 1e3);
        }
        if let Some(c) = &route.confidence {
            let escalated = if c.escalated { "true" } else { "false" };
            self.escalations
                .with_label_values(&[router, &c.tier, &route.tier, escalated])
                .inc();
        }
    }

    /// One finished choice.
    pub fn observe_done(&self, model: &str, finish_reason: &str, usage: &Usage, t: &Timings) {
        let secs = |ms: f64| ms / 1e3;
        self.requests
            .with_label_values(&[model, finish_reason])
            .inc();
        self.ttft
            .with_label_values(&[model])
            .observe(secs(t.ttft_ms));
        self.queue
            .with_label_values(&[model])
            .observe(secs(t.queue_ms));
        self.prefill
            .with_label_values(&[model])
            .observe(secs(t.prefill_ms));
        self.edge
            .with_label_values(&[model])
            .observe(secs(t.edge_ms));
        self.e2e.with_label_values(&[model]).observe(secs(t.e2e_ms));
        if let Some(mask) = t.mask_ms.filter(|_| usage.completion_tokens > 0) {
            self.mask
                .with_label_values(&[model])
                .observe(secs(mask) / usage.completion_tokens as f64);
        }
        if usage.completion_tokens > 1 {
            self.tpot
                .with_label_values(&[model])
                .observe(secs(t.decode_ms) / (usage.completion_tokens - 1) as f64);
        }
        self.lengths
            .with_label_values(&[model, "prompt"])
            .observe(usage.prompt_tokens as f64);
        self.lengths
            .with_label_values(&[model, "output"])
            .observe(usage.completion_tokens as f64);
        self.prompt_tokens
            .with_label_values(&[model])
            .inc_by(usage.prompt_tokens as u64);
        self.output_tokens
            .with_label_values(&[model])
            .inc_by(usage.completion_tokens as u64);
        self.cached_tokens
            .with_label_values(&[model])
            .inc_by(usage.cached_tokens() as u64);
    }

    /// The Prometheus text exposition of everything, every engine's state included.
    pub fn render(&self, backends: &[Arc<dyn Backend>]) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail: this is a bug");
        let mut s = String::from_utf8(buf).expect("Prometheus text is UTF-8: this is a bug");
        let stats: Vec<(&str, EngineStats)> = backends
            .iter()
            .filter_map(|b| b.engine_stats().map(|st| (b.name(), st)))
            .collect();
        let mut put =
            |name: &str,
             kind: &str,
             help: &str,
             value: &dyn Fn(&EngineStats) -> Vec<(&'static str, u64)>| {
                s.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
                for (model, st) in &stats {
                    for (extra, v) in value(st) {
                        s.push_str(&format!("{name}{{model=\"{model}\"{extra}}} {v}\n"));
                    }
                }
            };
        put(
            "inferd_engine_running_requests",
            "gauge",
            "Requests running in the engine",
            &|g| vec![("", g.running as u64)],
        );
        put(
            "inferd_engine_waiting_requests",
            "gauge",
            "Requests waiting for admission",
            &|g| vec![("", g.waiting as u64)],
        );
        put(
            "inferd_kv_blocks",
            "gauge",
            "KV cache blocks by state",
            &|g| {
                vec![
                    (",state=\"used\"", g.kv_used_blocks as u64),
                    (",state=\"cached\"", g.kv_cached_blocks as u64),
                    (",state=\"free\"", g.kv_free_blocks as u64),
                ]
            },
        );
        put(
            "inferd_prefix_cache_queries_tokens_total",
            "counter",
            "Prompt tokens looked up in the prefix cache",
            &|g| vec![("", g.prefix_queries_tokens_total)],
        );
        put(
            "inferd_prefix_cache_hits_tokens_total",
            "counter",
            "Prompt tokens served from the prefix cache",
            &|g| vec![("", g.prefix_hits_tokens_total)],
        );
        put(
            "inferd_kv_evictions_total",
            "counter",
            "Cached KV blocks evicted",
            &|g| vec![("", g.kv_evictions_total)],
        );
        put(
            "inferd_engine_preemptions_total",
            "counter",
            "Sequences preempted",
            &|g| vec![("", g.preemptions_total)],
        );
        put(
            "inferd_engine_step_failures_total",
            "counter",
            "Engine steps that failed (their requests got a 500; the engine kept serving)",
            &|g| vec![("", g.step_failures_total)],
        );
        put(
            "inferd_spec_draft_tokens_total",
            "counter",
            "Tokens drafted by speculative decoding",
            &|g| vec![("", g.spec_draft_tokens_total)],
        );
        put(
            "inferd_spec_accepted_tokens_total",
            "counter",
            "Drafted tokens the model accepted",
            &|g| vec![("", g.spec_accepted_tokens_total)],
        );
        put(
            "inferd_spec_accepted_at_position_total",
            "counter",
            "Drafted tokens accepted, by position in the draft (1 = first)",
            &|g| {
                DRAFT_POSITIONS
                    .iter()
                    .zip(g.spec_accepted_at_total)
                    .map(|(label, v)| (*label, v))
                    .collect()
            },
        );
        put(
            "inferd_spec_verify_steps_total",
            "counter",
            "Sequence steps that verified drafted tokens",
            &|g| vec![("", g.spec_verify_steps_total)],
        );
        s.push_str(
            "# HELP inferd_spec_draft_seconds_total Time spent drafting\n# TYPE inferd_spec_draft_seconds_total counter\n",
        );
        for (model, st) in &stats {
            s.push_str(&format!(
                "inferd_spec_draft_seconds_total{{model=\"{model}\"}} {}\n",
                st.spec_draft_ns_total as f64 / 1e9
            ));
        }
        s.push_str(
            "# HELP inferd_spec_verify_seconds_total Time spent verifying drafts: the drafted rows' share of each forward pass, and their sampling\n# TYPE inferd_spec_verify_seconds_total counter\n",
        );
        for (model, st) in &stats {
            s.push_str(&format!(
                "inferd_spec_verify_seconds_total{{model=\"{model}\"}} {}\n",
                st.spec_verify_ns_total as f64 / 1e9
            ));
        }
        render_upstreams(&mut s, backends);
        render_caches(&mut s, backends);
        s
    }
}

/// One upstream series: name, Prometheus type, help, and its value.
/// One metric read off per-backend stats: name, type, help, value.
type Series<T> = (&'static str, &'static str, &'static str, fn(&T) -> u64);

/// Each series, with one sample per `(name, stats)`, labelled `label="name"`.
fn render_series<T>(s: &mut String, label: &str, stats: &[(&str, T)], rows: &[Series<T>]) {
    for (name, kind, help, value) in rows {
        s.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (who, st) in stats {
            s.push_str(&format!("{name}{{{label}=\"{who}\"}} {}\n", value(st)));
        }
    }
}

/// Each router's response cache, read at scrape time.
fn render_caches(s: &mut String, backends: &[Arc<dyn Backend>]) {
    let stats: Vec<(&str, inferd_backend::CacheStats)> = backends
        .iter()
        .filter_map(|b| b.cache_stats().map(|st| (b.name(), st)))
        .collect();
    if stats.is_empty() {
        return;
    }
    let rows: [Series<inferd_backend::CacheStats>; 6] = [
        (
            "inferd_gateway_cache_entries",
            "gauge",
            "Answers in the response cache",
            |c| c.entries as u64,
        ),
        (
            "inferd_gateway_cache_bytes",
            "gauge",
            "Bytes the cached answers count for",
            |c| c.bytes as u64,
        ),
        (
            "inferd_gateway_cache_hits_total",
            "counter",
            "Requests answered from the cache",
            |c| c.hits_total,
        ),
        (
            "inferd_gateway_cache_semantic_hits_total",
            "counter",
            "Of the hits, those found by meaning (the semantic cache)",
            |c| c.semantic_hits_total,
        ),
        (
            "inferd_gateway_cache_misses_total",
            "counter",
            "Cache lookups that found no answer",
            |c| c.misses_total,
        ),
        (
            "inferd_gateway_cache_evictions_total",
            "counter",
            "Answers dropped, expired or for room",
            |c| c.evictions_total,
        ),
    ];
    render_series(s, "router", &stats, &rows);
}

/// Each upstream's pool and circuit, read at scrape time.
fn render_upstreams(s: &mut String, backends: &[Arc<dyn Backend>]) {
    let stats: Vec<(&str, UpstreamStats)> = backends
        .iter()
        .filter_map(|b| b.upstream_stats().map(|st| (b.name(), st)))
        .collect();
    let rows: [Series<UpstreamStats>; 7] = [
        (
            "inferd_upstream_requests_in_flight",
            "gauge",
            "Requests holding a connection slot",
            |u| u.in_flight as u64,
        ),
        (
            "inferd_upstream_requests_waiting",
            "gauge",
            "Requests waiting for a connection slot",
            |u| u.waiting as u64,
        ),
        (
            "inferd_upstream_slots",
            "gauge",
            "Connection slots (max_concurrent)",
            |u| u.max_concurrent as u64,
        ),
        (
            "inferd_upstream_circuit_open",
            "gauge",
            "1 while the circuit is open or half-open",
            |u| u.circuit_open as u64,
        ),
        (
            "inferd_upstream_timeouts_total",
            "counter",
            "Requests with no slot or no first token in time",
            |u| u.timeouts_total,
        ),
        (
            "inferd_upstream_failures_total",
            "counter",
            "Failures counted by the circuit breaker",
            |u| u.failures_total,
        ),
        (
            "inferd_upstream_retries_total",
            "counter",
            "Requests sent again after a failure before their first token",
            |u| u.retries_total,
        ),
    ];
    if stats.is_empty() {
        return;
    }
    render_series(s, "upstream", &stats, &rows);
    let name = "inferd_upstream_slot_wait_seconds";
    s.push_str(&format!(
        "# HELP {name} Time requests waited for one of the upstream's connection slots\n# TYPE {name} histogram\n"
    ));
    for (upstream, st) in &stats {
        let mut below = 0;
        for (bound, count) in inferd_backend::SLOT_WAIT_BUCKETS
            .iter()
            .zip(&st.slot_wait_counts)
        {
            below += count;
            s.push_str(&format!(
                "{name}_bucket{{upstream=\"{upstream}\",le=\"{bound}\"}} {below}\n"
            ));
        }
        let total: u64 = st.slot_wait_counts.iter().sum();
        s.push_str(&format!(
            "{name}_bucket{{upstream=\"{upstream}\",le=\"+Inf\"}} {total}\n{name}_sum{{upstream=\"{upstream}\"}} {}\n{name}_count{{upstream=\"{upstream}\"}} {total}\n",
            st.slot_wait_sum_secs
        ));
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
