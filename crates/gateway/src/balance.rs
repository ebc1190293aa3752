//! Choosing among the replicas of one tier.
//!
//! A tier with several backends (replicas of one model, or interchangeable
//! upstreams) orders them per request with one of four policies:
//! - `ordered`: as listed (a primary and its backups);
//! - `round_robin`: each request starts one replica further;
//! - `least_outstanding`: fewest requests in flight through this gateway
//!   first (ties rotate);
//! - `cache_aware`: the replica most likely to hold the request's prompt prefix
//!   in its KV cache, among those not overrun.
//!
//! Cache-aware routing keeps, per replica, an approximate index of the prompts
//! it was sent: the prompt's text (the tools, then each message's role and
//! text, or the completion prompt) is cut into blocks of [`BLOCK_BYTES`], and
//! each block is keyed by a hash chained over every block before it, so one key
//! stands for a whole prefix. A request's match on a replica is the number of
//! its leading keys that replica's index holds. The index forgets its least
//! recently used keys past `capacity` blocks per replica, as the replica's own
//! cache forgets. The choice is bounded by load: a replica with more than
//! `load_slack` requests in flight above the least loaded one is passed over,
//! so one hot prefix cannot pile every request onto one replica; it spills to
//! the next replica, which then holds the prefix too. A request that matches
//! nowhere goes to the least loaded replica. The rest of the order (the
//! fallbacks) is by load.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Bytes of prompt text per index block: about 16 tokens of English, the
/// engine's KV block size.
pub const BLOCK_BYTES: usize = 64;

/// How a tier orders its replicas for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Ordered,
    RoundRobin,
    LeastOutstanding,
    CacheAware {
        /// Blocks remembered per replica.
        capacity: usize,
        /// In-flight requests a replica may have above the least loaded one
        /// and still be chosen for its cache.
        load_slack: usize,
    },
}

impl Policy {
    pub const NAMES: [&'static str; 4] =
        ["ordered", "round_robin", "least_outstanding", "cache_aware"];

    /// The policy by its config name, cache-aware with default bounds.
    pub fn parse(name: &str) -> Option<Policy> {
        Some(match name {
            "ordered" => Policy::Ordered,
            "round_robin" => Policy::RoundRobin,
            "least_outstanding" => Policy::LeastOutstanding,
            "cache_aware" => Policy::CacheAware {
                capacity: 16_384,
                load_slack: 2,
            },
            _ => return None,
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Policy::Ordered => "ordered",
            Policy::RoundRobin => "round_robin",
            Policy::LeastOutstanding => "least_outstanding",
            Policy::CacheAware { .. } => "cache_aware",
        }
    }
}

/// A prompt's chained block keys (module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrefixKey(Vec<u64>);

impl PrefixKey {
    /// Keys for the whole blocks of `parts` read as one byte string.
    pub fn of<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> PrefixKey {
        let mut keys = Vec::new();
        let mut block = [0u8; BLOCK_BYTES];
        let mut filled = 0;
        let mut chain = 0u64;
        for part in parts {
            for &b in part {
                block[filled] = b;
                filled += 1;
                if filled == BLOCK_BYTES {
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    chain.hash(&mut h);
                    block.hash(&mut h);
                    chain = h.finish();
                    keys.push(chain);
                    filled = 0;
                }
            }
        }
        PrefixKey(keys)
    }

    pub fn blocks(&self) -> usize {
        self.0.len()
    }
}

/// One tier's replica state: requests in flight and (cache-aware) the index.
pub struct Balancer {
    policy: Policy,
    next: AtomicUsize,
    load: Arc<[AtomicUsize]>,
    index: Mutex<Vec<ReplicaIndex>>,
}

/// One replica's remembered prefixes: key → last use.
#[derive(Default)]
struct ReplicaIndex {
    keys: HashMap<u64, u64>,
    clock: u64,
}

impl ReplicaIndex {
    /// Leading keys of `key` held here.
    fn matched(&self, key: &PrefixKey) -> usize {
        key.0
            .iter()
            .take_while(|k| self.keys.contains_key(k))
            .count()
    }

    fn insert(&mut self, key: &PrefixKey, capacity: usize) {
        self.clock += 1;
        for &k in &key.0 {
            self.keys.insert(k, self.clock);
        }
        if self.keys.len() > capacity {
            // Forget the least recently used half of the capacity at once, so
            // that this O(n) sweep runs once per capacity/2 new blocks.
            let mut ages: Vec<u64> = self.keys.values().copied().collect();
            let cut = (ages.len() - capacity / 2).min(ages.len() - 1);
            let (_, nth, _) = ages.select_nth_unstable(cut);
            let oldest_kept = *nth;
            self.keys.retain(|_, t| *t >= oldest_kept);
        }
    }
}

/// Counts one request in flight on a replica until dropped.
pub struct InFlight {
    load: Arc<[AtomicUsize]>,
    replica: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.load[self.replica].fetch_sub(1, Ordering::Relaxed);
    }
}

/// A balancer's decision: replicas in the order to try them, and for the
/// first, the share of the prompt's blocks it was estimated to hold
/// (cache-aware only).
#[derive(Debug, Clone, PartialEq)]
pub struct Order {
    pub replicas: Vec<usize>,
    pub prefix_match: Option<f64>,
}

impl Balancer {
    pub fn new(policy: Policy, replicas: usize) -> Balancer {
        Balancer {
            policy,
            next: AtomicUsize::new(0),
            load: (0..replicas).map(|_| AtomicUsize::new(0)).collect(),
            index: Mutex::new((0..replicas).map(|_| ReplicaIndex::default()).collect()),
        }
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Whether `order` reads the request's prefix key.
    pub fn wants_prefix(&self) -> bool {
        matches!(self.policy, Policy::CacheAware { .. })
    }

    /// Requests in flight on each replica.
    pub fn loads(&self) -> Vec<usize> {
        self.load
            .iter()
            .map(|l| l.load(Ordering::Relaxed))
            .collect()
    }

    /// Marks one request in flight on `replica` until the guard is dropped.
    pub fn start(&self, replica: usize) -> InFlight {
        self.load[replica].fetch_add(1, Ordering::Relaxed);
        InFlight {
            load: Arc::clone(&self.load),
            replica,
        }
    }

    /// The replicas to try for a request with `key`, the choice first. A
    /// cache-aware choice is remembered at once: the replica will hold the
    /// prefix once its prefill runs, and requests arriving meanwhile with the
    /// same prefix should find it there.
    pub fn order(&self, key: &PrefixKey) -> Order {
        let n = self.load.len();
        if n == 0 {
            return Order {
                replicas: Vec::new(),
                prefix_match: None,
            };
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let loads = self.loads();
        // Least loaded first; equal loads in an order that rotates per request.
        let mut by_load: Vec<usize> = (0..n).map(|i| (turn + i) % n).collect();
        by_load.sort_by_key(|&i| loads[i]);
        match self.policy {
            Policy::Ordered => Order {
                replicas: (0..n).collect(),
                prefix_match: None,
            },
            Policy::RoundRobin => Order {
                replicas: (0..n).map(|i| (turn + i) % n).collect(),
                prefix_match: None,
            },
            Policy::LeastOutstanding => Order {
                replicas: by_load,
                prefix_match: None,
            },
            Policy::CacheAware {
                capacity,
                load_slack,
            } => {
                let mut index = self.index.lock().unwrap_or_else(|p| p.into_inner());
                let least = loads.iter().copied().min().unwrap_or(0);
                let matched: Vec<usize> = index.iter().map(|r| r.matched(key)).collect();
                // The best match among replicas within the slack; `by_load`
                // order breaks ties (less loaded, then rotating).
                let best = pick_first_max(&by_load, |i| {
                    (loads[i] <= least + load_slack).then_some(matched[i])
                })
                .unwrap_or(by_load[0]);
                // Matched nowhere: the least loaded, and of those the one
                // remembering the least, so new prefixes spread the caches.
                let best = if matched[best] == 0 {
                    by_load
                        .iter()
                        .copied()
                        .min_by_key(|&i| (loads[i], index[i].keys.len()))
                        .unwrap_or(best)
                } else {
                    best
                };
                index[best].insert(key, capacity);
                let mut replicas = vec![best];
                replicas.extend(by_load.into_iter().filter(|&i| i != best));
                Order {
                    replicas,
                    prefix_match: Some(if key.blocks() == 0 {
                        0.0
                    } else {
                        matched[best] as f64 / key.blocks() as f64
                    }),
                }
            }
        }
    }
}

/// The first item of `items` with the greatest score (`None` scores skipped).
fn pick_first_max(items: &[usize], score: impl Fn(usize) -> Option<usize>) -> Option<usize> {
    let mut best: Option<(usize, usize)> = None;
    for &i in items {
        if let Some(s) = score(i) {
            if best.is_none_or(|(_, b)| s > b) {
                best = Some((i, s));
            }
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> PrefixKey {
        PrefixKey::of([text.as_bytes()])
    }

    fn words(n: usize, seed: usize) -> String {
        (0..n)
            .map(|i| format!("w{} ", (i * 7 + seed) % 1000))
            .collect()
    }

    #[test]
    fn keys_chain_whole_blocks_so_equal_keys_mean_equal_prefixes() {
        let a = key(&"a".repeat(3 * BLOCK_BYTES + 10));
        assert_eq!(a.blocks(), 3, "the partial tail block is not keyed");
        let split = PrefixKey::of([
            "a".repeat(100).as_bytes(),
            "a".repeat(3 * BLOCK_BYTES + 10 - 100).as_bytes(),
        ]);
        assert_eq!(split.0, a.0, "parts read as one byte string");
        let mut other = "a".repeat(3 * BLOCK_BYTES);
        other.replace_range(0..1, "b");
        let b = key(&other);
        assert!(
            a.0.iter().all(|k| !b.0.contains(k)),
            "a different first block changes every key"
        );
    }

    #[test]
    fn round_robin_rotates_and_least_outstanding_follows_load() {
        let rr = Balancer::new(Policy::RoundRobin, 3);
        let firsts: Vec<usize> = (0..6)
            .map(|_| rr.order(&PrefixKey::default()).replicas[0])
            .collect();
        assert_eq!(firsts, [0, 1, 2, 0, 1, 2]);
        let lo = Balancer::new(Policy::LeastOutstanding, 3);
        let _a = lo.start(0);
        let _b = lo.start(0);
        let c = lo.start(1);
        assert_eq!(lo.order(&PrefixKey::default()).replicas, [2, 1, 0]);
        drop(c);
        assert_eq!(lo.loads(), [2, 0, 0]);
        assert_eq!(
            lo.order(&PrefixKey::default()).replicas[2],
            0,
            "the busiest last"
        );
    }

    #[test]
    fn cache_aware_follows_the_prefix_within_the_load_slack() {
        let b = Balancer::new(
            Policy::CacheAware {
                capacity: 1 << 12,
                load_slack: 2,
            },
            3,
        );
        let history = words(200, 1);
        let first = b.order(&key(&history));
        assert_eq!(first.prefix_match, Some(0.0));
        let home = first.replicas[0];
        // The next turn extends the conversation: it goes home, most of it matched.
        let next = b.order(&key(&format!("{history}{}", words(40, 2))));
        assert_eq!(next.replicas[0], home);
        assert!(next.prefix_match.unwrap() > 0.8, "{next:?}");
        // An unrelated prompt goes elsewhere (least loaded, rotating).
        let _busy = b.start(home);
        let other = b.order(&key(&words(200, 3)));
        assert_ne!(other.replicas[0], home);
        // Past the slack, home is passed over, and the spill replica learns it.
        let _more = [b.start(home), b.start(home)];
        let spilled = b.order(&key(&history));
        assert_ne!(spilled.replicas[0], home, "3 in flight > 0 + slack 2");
        assert_eq!(spilled.replicas.len(), 3);
        assert_eq!(*spilled.replicas.last().unwrap(), home, "fallbacks by load");
        let spill = spilled.replicas[0];
        let again = b.order(&key(&history));
        assert_eq!(again.replicas[0], spill);
        assert_eq!(again.prefix_match, Some(1.0));
    }

    #[test]
    fn the_index_forgets_the_least_recently_used_prefixes() {
        let mut r = ReplicaIndex::default();
        let old = key(&words(200, 1));
        let new = key(&words(200, 2));
        r.insert(&old, 64);
        for seed in 3..10 {
            r.insert(&key(&words(200, seed)), 64);
        }
        r.insert(&new, 64);
        assert!(r.keys.len() <= 64, "{}", r.keys.len());
        assert_eq!(r.matched(&new), new.blocks());
        assert_eq!(r.matched(&old), 0);
    }
}
