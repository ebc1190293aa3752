//! Prometheus metrics (`inferd_<subsystem>_<name>_<unit>`, bounded labels). Request
//! latencies are histograms observed here; engine gauges and counters are read from
//! the engine's atomics at scrape time.

use std::sync::atomic::Ordering;

use inferd_engine::{EngineGauges, Timings, Usage};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub ttft: Histogram,
    pub queue: Histogram,
    pub prefill: Histogram,
    pub tpot: Histogram,
    pub itl: Histogram,
    pub e2e: Histogram,
    pub lengths: HistogramVec,
    pub requests: IntCounterVec,
    pub errors: IntCounterVec,
    pub prompt_tokens: IntCounter,
    pub output_tokens: IntCounter,
    pub cached_tokens: IntCounter,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const TOKEN_BUCKETS: &[f64] = &[1.0, 8.0, 32.0, 128.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0];

fn histogram(r: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
        .expect("static histogram options are valid: this is a bug");
    r.register(Box::new(h.clone()))
        .expect("metric names are unique: this is a bug");
    h
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let counter_vec = |name: &str, help: &str, label: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &[label])
                .expect("valid counter: this is a bug");
            r.register(Box::new(c.clone()))
                .expect("metric names are unique: this is a bug");
            c
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid counter: this is a bug");
            r.register(Box::new(c.clone()))
                .expect("metric names are unique: this is a bug");
            c
        };
        let lengths = HistogramVec::new(
            HistogramOpts::new(
                "inferd_request_length_tokens",
                "Prompt and output lengths per request",
            )
            .buckets(TOKEN_BUCKETS.to_vec()),
            &["kind"],
        )
        .expect("valid histogram: this is a bug");
        r.register(Box::new(lengths.clone()))
            .expect("metric names are unique: this is a bug");
        Metrics {
            ttft: histogram(
                &r,
                "inferd_request_ttft_seconds",
                "Arrival to first output token",
                LATENCY_BUCKETS,
            ),
            queue: histogram(
                &r,
                "inferd_request_queue_seconds",
                "Arrival to first scheduled step",
                LATENCY_BUCKETS,
            ),
            prefill: histogram(
                &r,
                "inferd_request_prefill_seconds",
                "First scheduled to first token",
                LATENCY_BUCKETS,
            ),
            tpot: histogram(
                &r,
                "inferd_request_tpot_seconds",
                "(e2e - TTFT) / (output tokens - 1)",
                LATENCY_BUCKETS,
            ),
            itl: histogram(
                &r,
                "inferd_request_itl_seconds",
                "Gap between consecutive streamed tokens",
                LATENCY_BUCKETS,
            ),
            e2e: histogram(
                &r,
                "inferd_request_e2e_seconds",
                "Arrival to last token",
                LATENCY_BUCKETS,
            ),
            lengths,
            requests: counter_vec(
                "inferd_requests_total",
                "Finished requests by finish reason",
                "finish_reason",
            ),
            errors: counter_vec(
                "inferd_request_errors_total",
                "Failed requests by error type",
                "type",
            ),
            prompt_tokens: counter(
                "inferd_prompt_tokens_total",
                "Prompt tokens of finished requests",
            ),
            output_tokens: counter(
                "inferd_output_tokens_total",
                "Output tokens of finished requests",
            ),
            cached_tokens: counter(
                "inferd_cached_prompt_tokens_total",
                "Prompt tokens served from the prefix cache",
            ),
            registry: r,
        }
    }

    pub fn observe_done(&self, finish_reason: &str, usage: &Usage, t: &Timings) {
        self.requests.with_label_values(&[finish_reason]).inc();
        self.ttft.observe(t.ttft.as_secs_f64());
        self.queue.observe(t.queue.as_secs_f64());
        self.prefill.observe(t.prefill.as_secs_f64());
        self.e2e.observe(t.e2e.as_secs_f64());
        if usage.completion_tokens > 1 {
            self.tpot
                .observe(t.decode.as_secs_f64() / (usage.completion_tokens - 1) as f64);
        }
        self.lengths
            .with_label_values(&["prompt"])
            .observe(usage.prompt_tokens as f64);
        self.lengths
            .with_label_values(&["output"])
            .observe(usage.completion_tokens as f64);
        self.prompt_tokens.inc_by(usage.prompt_tokens as u64);
        self.output_tokens.inc_by(usage.completion_tokens as u64);
        self.cached_tokens.inc_by(usage.cached_tokens as u64);
    }

    /// The Prometheus text exposition of everything, engine state included.
    pub fn render(&self, g: &EngineGauges) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail: this is a bug");
        let mut s = String::from_utf8(buf).expect("Prometheus text is UTF-8: this is a bug");
        let load = |a: &std::sync::atomic::AtomicUsize| a.load(Ordering::Relaxed);
        let load64 = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let mut put = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            s.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for (labels, v) in samples {
                s.push_str(&format!("{name}{labels} {v}\n"));
            }
        };
        put(
            "inferd_engine_running_requests",
            "gauge",
            "Requests running in the engine",
            &[("", load(&g.running) as u64)],
        );
        put(
            "inferd_engine_waiting_requests",
            "gauge",
            "Requests waiting for admission",
            &[("", load(&g.waiting) as u64)],
        );
        put(
            "inferd_kv_blocks",
            "gauge",
            "KV cache blocks by state",
            &[
                ("{state=\"used\"}", load(&g.kv_used_blocks) as u64),
                ("{state=\"cached\"}", load(&g.kv_cached_blocks) as u64),
                ("{state=\"free\"}", load(&g.kv_free_blocks) as u64),
            ],
        );
        put(
            "inferd_prefix_cache_queries_tokens_total",
            "counter",
            "Prompt tokens looked up in the prefix cache",
            &[("", load64(&g.prefix_queries_tokens_total))],
        );
        put(
            "inferd_prefix_cache_hits_tokens_total",
            "counter",
            "Prompt tokens served from the prefix cache",
            &[("", load64(&g.prefix_hits_tokens_total))],
        );
        put(
            "inferd_kv_evictions_total",
            "counter",
            "Cached KV blocks evicted",
            &[("", load64(&g.kv_evictions_total))],
        );
        put(
            "inferd_engine_preemptions_total",
            "counter",
            "Sequences preempted",
            &[("", load64(&g.preemptions_total))],
        );
        s
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
