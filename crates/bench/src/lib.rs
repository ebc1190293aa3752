//! `inferd bench`: load against any OpenAI-compatible server, measured as users
//! feel it — TTFT, TPOT, inter-token latency, e2e, throughput and goodput under an
//! SLO — with several servers side by side in one run, a Markdown/JSON report and
//! plots.

pub mod client;
pub mod plot;
pub mod report;
pub mod runner;
pub mod stats;
pub mod workload;

pub use client::Target;
pub use runner::{run, BenchConfig, BenchResult, LevelResult, Mode};
pub use stats::{RequestRecord, Slo, Summary};
pub use workload::{Endpoint, RequestOptions, Workload};
