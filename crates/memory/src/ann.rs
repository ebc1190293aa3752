//! The approximate index in front of a large namespace's exact scan: an HNSW
//! graph (the `hnsw_rs` crate) over the namespace's vectors, built and kept up
//! to date by one low-priority indexer thread, never by the projection or a
//! search.
//!
//! A search asks the graph for the nearest indexed items that pass its
//! filters, scores them again exactly, and scans the items not yet in the graph
//! (written since the indexer last ran) exactly — so a write is searchable as
//! soon as the projection has applied it, whether or not the graph has it yet.
//! An update or a delete leaves its old point in the graph, unreachable through
//! the filter (a point counts only while it is its item's current one); once
//! such stale points are a quarter of the graph the indexer builds a new graph
//! beside the old one and swaps it in. A filter that lets fewer than k of the
//! graph's candidates through falls back to the exact scan.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

use hnsw_rs::prelude::{Distance, Hnsw};
use inferd_kernels::Isa;

/// 1 − the dot product of two unit vectors (their cosine distance), on the
/// kernels' SIMD dot; clamped at 0, where rounding would take an item's
/// distance to itself below it.
#[derive(Clone, Copy)]
struct UnitDot(Isa);

impl Distance<f32> for UnitDot {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        (1.0 - inferd_kernels::dot::dot_f32_f32(self.0, a, b)).max(0.0)
    }
}

/// When a namespace gets a graph, and how the graph is built and searched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnnConfig {
    /// Items a namespace holds before it is given a graph (below half of it,
    /// the graph is dropped again). `usize::MAX`: always exact.
    pub from: usize,
    /// Candidates the search keeps on the graph's bottom layer (at least k).
    pub ef_search: usize,
    /// Neighbours per point per layer.
    pub connections: usize,
    /// Candidates kept while inserting.
    pub ef_construction: usize,
}

impl Default for AnnConfig {
    fn default() -> AnnConfig {
        AnnConfig {
            from: DEFAULT_FROM,
            ef_search: 64,
            connections: 16,
            ef_construction: 100,
        }
    }
}

/// Measured (benchmarks/RESULTS.md, "Agent memory", MiniLM vectors, two Zen 4
/// cores): the scan costs ~0.13 µs an item (1.35 ms at 10k, 11.9 ms at 100k),
/// the graph ~0.7 ms at 10k and 2.1 ms at 100k with recall@5 ≥ 0.99. They cross
/// near 5k; up to 10k the scan stays under one query embedding and is exact.
pub const DEFAULT_FROM: usize = 10_000;

/// Items one indexing pass inserts into a graph that exists, before the new
/// points are published to searches.
pub const CHUNK: usize = 2048;

/// One namespace's graph. Point numbers are the graph's own; `Space` maps them
/// to items.
pub struct Graph {
    hnsw: Hnsw<'static, f32, UnitDot>,
    next: AtomicUsize,
}

impl Graph {
    pub fn new(config: &AnnConfig, capacity: usize) -> Graph {
        Graph {
            hnsw: Hnsw::new(
                config.connections,
                capacity.max(1024),
                16,
                config.ef_construction,
                UnitDot(Isa::detect()),
            ),
            next: AtomicUsize::new(0),
        }
    }

    /// Inserts `vectors`; returns the point number of the first (the others
    /// follow in order).
    pub fn insert(&self, vectors: &[&[f32]]) -> usize {
        let base = self.next.fetch_add(vectors.len(), Ordering::Relaxed);
        for (i, v) in vectors.iter().enumerate() {
            self.hnsw.insert_slice((v, base + i));
        }
        base
    }

    /// The points nearest `query` that `keep` lets through, nearest first: the
    /// graph's `ef` nearest, filtered afterwards. (`hnsw_rs`'s own filtered
    /// search gives up its early stop and walks much of the graph — slower than
    /// the scan at 10k items, measured.)
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        keep: &dyn Fn(usize) -> bool,
    ) -> Vec<usize> {
        let ef = ef.max(k);
        self.hnsw
            .search(query, ef, ef)
            .into_iter()
            .map(|n| n.d_id)
            .filter(|&p| keep(p))
            .take(k)
            .collect()
    }
}

/// Wakes the indexer when the vectors change.
#[derive(Default)]
pub struct Wake {
    dirty: Mutex<bool>,
    cv: Condvar,
}

impl Wake {
    pub fn poke(&self) {
        *self.dirty.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.cv.notify_one();
    }

    /// Returns after a poke, or `timeout`.
    fn wait(&self, timeout: Duration) {
        let dirty = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
        let (mut dirty, _) = self
            .cv
            .wait_timeout_while(dirty, timeout, |d| !*d)
            .unwrap_or_else(|p| p.into_inner());
        *dirty = false;
    }
}

/// What the index does for the indexer.
pub trait Indexed: Send + Sync {
    fn wake(&self) -> &Wake;
    /// One pass over the namespaces; whether there is more to do at once.
    fn index_pass(&self) -> bool;
}

/// Starts the indexer for `index`; it ends when the index is dropped.
pub fn start_indexer<I: Indexed + 'static>(index: &Arc<I>) -> std::io::Result<()> {
    let weak: Weak<I> = Arc::downgrade(index);
    std::thread::Builder::new()
        .name("memory-indexer".into())
        .spawn(move || {
            lower_priority(INDEXER_NICE);
            loop {
                let more = match weak.upgrade() {
                    Some(index) => index.index_pass(),
                    None => return,
                };
                if !more {
                    let Some(index) = weak.upgrade() else { return };
                    index.wake().wait(Duration::from_millis(200));
                }
            }
        })
        .map(|_| ())
}

/// The indexer's niceness: it yields the CPU to requests and projections.
const INDEXER_NICE: i32 = 10;

/// Lowers the calling thread's priority to `nice` (Linux; elsewhere nothing).
pub fn lower_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority with this thread's id only changes its scheduling.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, nice);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}
