//! The store's Prometheus metrics (`inferd_memory_*`): writes and their latency
//! to durability, group-commit sizes, reads, the read pool (wait, in use,
//! pending, timeouts), per projection its position, lag and failures; and
//! managed keys (`inferd_keys_*`): admissions by result and their latency,
//! settlements, the key store's pool and Redis's.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

const LATENCY_BUCKETS: &[f64] = &[
    0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

pub struct MemoryMetrics {
    registry: Registry,
    /// By `result`: ok, duplicate, error.
    pub writes: IntCounterVec,
    /// Queued → durable.
    pub write_seconds: Histogram,
    /// Writes per transaction.
    pub group_size: Histogram,
    pub write_queue: IntGauge,
    /// By `read` (item, fact, search, recent, audit) and `result` (ok, error).
    pub reads: IntCounterVec,
    pub read_seconds: HistogramVec,
    pub pool_wait_seconds: Histogram,
    pub pool_timeouts: IntCounter,
    pub pool_in_use: IntGauge,
    pub pool_idle: IntGauge,
    pub pool_pending: IntGauge,
    pub projection_seq: IntGaugeVec,
    pub projection_lag_items: IntGaugeVec,
    pub projection_lag_seconds: prometheus::GaugeVec,
    pub projection_failures: IntCounterVec,
    /// 1 where this process applies the projection, 0 where it follows.
    pub projection_leading: IntGaugeVec,
    /// Items of the vector index by `search`: graph (an HNSW graph holds
    /// them) or scan (scored one by one: small namespaces, and what the
    /// indexer has not reached yet).
    pub vectors: IntGaugeVec,
    /// Keyed requests by `result`: admitted, rate_limited, budget_exceeded,
    /// budget_held, error.
    pub admissions: IntCounterVec,
    pub admission_seconds: Histogram,
    pub settled: IntCounter,
    pub keys_pool_wait_seconds: Histogram,
    pub keys_pool_timeouts: IntCounter,
    pub keys_pool_in_use: IntGauge,
    pub keys_pool_idle: IntGauge,
    pub keys_pool_pending: IntGauge,
    pub redis_pool_in_use: IntGauge,
    pub redis_pool_idle: IntGauge,
}

impl Default for MemoryMetrics {
    fn default() -> Self {
        MemoryMetrics::new()
    }
}

impl MemoryMetrics {
    pub fn new() -> MemoryMetrics {
        let registry = Registry::new();
        let hist = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("valid histogram: this is a bug");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric: this is a bug");
            h
        };
        let write_seconds = hist(
            "inferd_memory_write_seconds",
            "Memory writes: queued to durable (committed, fsynced under durability=fsync)",
            LATENCY_BUCKETS.to_vec(),
        );
        let group_size = hist(
            "inferd_memory_write_group_size",
            "Memory writes committed per log transaction (group commit)",
            vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0],
        );
        let pool_wait_seconds = hist(
            "inferd_memory_pool_wait_seconds",
            "Memory reads: wait for a pooled connection",
            LATENCY_BUCKETS.to_vec(),
        );
        let admission_seconds = hist(
            "inferd_keys_admission_seconds",
            "Keyed requests: every limit checked and reserved",
            LATENCY_BUCKETS.to_vec(),
        );
        let keys_pool_wait_seconds = hist(
            "inferd_keys_pool_wait_seconds",
            "Key lookups, admissions and admin calls: wait for a pooled connection",
            LATENCY_BUCKETS.to_vec(),
        );
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m.expect("valid metric: this is a bug");
                registry
                    .register(Box::new(m.clone()))
                    .expect("unique metric: this is a bug");
                m
            }};
        }
        MemoryMetrics {
            writes: reg!(IntCounterVec::new(
                Opts::new("inferd_memory_writes_total", "Memory writes by result"),
                &["result"]
            )),
            write_seconds,
            group_size,
            write_queue: reg!(IntGauge::new(
                "inferd_memory_write_queue",
                "Memory writes waiting for the log writer"
            )),
            reads: reg!(IntCounterVec::new(
                Opts::new(
                    "inferd_memory_reads_total",
                    "Memory reads by kind and result"
                ),
                &["read", "result"]
            )),
            read_seconds: reg!(HistogramVec::new(
                HistogramOpts::new(
                    "inferd_memory_read_seconds",
                    "Memory reads, including any read-your-writes wait"
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["read"]
            )),
            pool_wait_seconds,
            pool_timeouts: reg!(IntCounter::new(
                "inferd_memory_pool_timeouts_total",
                "Memory reads refused: no pooled connection in time"
            )),
            pool_in_use: reg!(IntGauge::new(
                "inferd_memory_pool_in_use",
                "Memory read connections in use"
            )),
            pool_idle: reg!(IntGauge::new(
                "inferd_memory_pool_idle",
                "Memory read connections idle"
            )),
            pool_pending: reg!(IntGauge::new(
                "inferd_memory_pool_pending",
                "Memory reads waiting for a connection"
            )),
            projection_leading: reg!(IntGaugeVec::new(
                Opts::new(
                    "inferd_memory_projection_leading",
                    "1 where this process applies the projection, 0 where it follows the one that does",
                ),
                &["projection"]
            )),
            vectors: reg!(IntGaugeVec::new(
                Opts::new(
                    "inferd_memory_vectors",
                    "Items of the memory vector index, by how a search reaches them: graph (HNSW) or scan",
                ),
                &["search"]
            )),
            projection_seq: reg!(IntGaugeVec::new(
                Opts::new(
                    "inferd_memory_projection_position",
                    "The last log position a projection applied"
                ),
                &["projection"]
            )),
            projection_lag_items: reg!(IntGaugeVec::new(
                Opts::new(
                    "inferd_memory_projection_lag_items",
                    "Log entries a projection has yet to apply"
                ),
                &["projection"]
            )),
            projection_lag_seconds: reg!(prometheus::GaugeVec::new(
                Opts::new(
                    "inferd_memory_projection_lag_seconds",
                    "Age of the oldest log entry a projection has yet to apply"
                ),
                &["projection"]
            )),
            projection_failures: reg!(IntCounterVec::new(
                Opts::new(
                    "inferd_memory_projection_failures_total",
                    "Failed (rolled back, retried) projection batches"
                ),
                &["projection"]
            )),
            admissions: reg!(IntCounterVec::new(
                Opts::new(
                    "inferd_keys_admissions_total",
                    "Keyed requests by admission result"
                ),
                &["result"]
            )),
            admission_seconds,
            settled: reg!(IntCounter::new(
                "inferd_keys_settled_total",
                "Keyed requests settled: reservation replaced by usage, usage in the ledger"
            )),
            keys_pool_wait_seconds,
            keys_pool_timeouts: reg!(IntCounter::new(
                "inferd_keys_pool_timeouts_total",
                "Key operations refused: no pooled connection in time"
            )),
            keys_pool_in_use: reg!(IntGauge::new(
                "inferd_keys_pool_in_use",
                "Key-store connections in use"
            )),
            keys_pool_idle: reg!(IntGauge::new(
                "inferd_keys_pool_idle",
                "Key-store connections idle"
            )),
            keys_pool_pending: reg!(IntGauge::new(
                "inferd_keys_pool_pending",
                "Key operations waiting for a connection"
            )),
            redis_pool_in_use: reg!(IntGauge::new(
                "inferd_keys_redis_pool_in_use",
                "Redis connections (rate counters) in use"
            )),
            redis_pool_idle: reg!(IntGauge::new(
                "inferd_keys_redis_pool_idle",
                "Redis connections (rate counters) idle"
            )),
            registry,
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail: this is a bug");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}
