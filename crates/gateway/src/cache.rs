//! The exact response cache: a deterministic request (temperature 0, or a
//! seed) asked again gets the stored answer without a model running.
//!
//! The key is a hash of the router's name, the request's scope (its
//! `cache_salt`, OpenAI `user` and `metadata`, so one tenant's answers are
//! never another's) and the request as it would be sent upstream (messages,
//! tools, sampling, limits, stop strings, the output constraint; `stream` is
//! not part of it, so a streamed and a whole request share answers). An
//! answer is stored once every choice finished without an error; an answer
//! the client abandoned is not. Entries expire after `ttl`; past `max_bytes`
//! (the answers' text and tool calls plus a fixed overhead per event) the
//! least recently used go first.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use inferd_backend::{CacheStats, Event, EventStream, Request};
use inferd_protocol::Route;

use crate::wire::{chat_body, completion_body};

/// Bytes counted per stored event besides its text.
const EVENT_OVERHEAD: usize = 96;

pub struct ExactCache {
    ttl: Duration,
    max_bytes: usize,
    inner: Mutex<Inner>,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<u64, Entry>,
    /// Last use → key, oldest first.
    lru: BTreeMap<u64, u64>,
    bytes: usize,
    clock: u64,
}

struct Entry {
    route: Route,
    events: Arc<Vec<Event>>,
    stored: Instant,
    bytes: usize,
    used: u64,
}

impl Inner {
    fn remove(&mut self, key: u64) -> bool {
        match self.entries.remove(&key) {
            Some(e) => {
                self.lru.remove(&e.used);
                self.bytes -= e.bytes;
                true
            }
            None => false,
        }
    }
}

fn size(events: &[Event]) -> usize {
    events
        .iter()
        .map(|e| {
            EVENT_OVERHEAD
                + match e {
                    Event::Delta { text, .. } | Event::Echo { text, .. } => text.len(),
                    Event::ToolCall { call, .. } => {
                        serde_json::to_string(call).map_or(0, |s| s.len())
                    }
                    _ => 0,
                }
        })
        .sum()
}

impl ExactCache {
    pub fn new(ttl: Duration, max_bytes: usize) -> ExactCache {
        ExactCache {
            ttl,
            max_bytes,
            inner: Mutex::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The key of a deterministic request (`None`: sampled, never cached).
    pub fn key(router: &str, request: &Request) -> Option<u64> {
        let c = request.common();
        if c.sampling.temperature > 0.0 && c.sampling.seed.is_none() {
            return None;
        }
        let body = match request {
            Request::Chat(r) => serde_json::to_string(&chat_body(r, router)),
            Request::Completion(r) => serde_json::to_string(&completion_body(r, router)),
        }
        .ok()?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (router, &c.user, &c.metadata, &c.cache_salt, body).hash(&mut h);
        Some(h.finish())
    }

    /// The stored answer: its route (as first served) and events.
    pub fn get(&self, key: u64) -> Option<(Route, Arc<Vec<Event>>)> {
        let mut inner = self.lock();
        let expired = inner
            .entries
            .get(&key)
            .is_some_and(|e| e.stored.elapsed() > self.ttl);
        if expired {
            inner.remove(key);
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
        inner.clock += 1;
        let now = inner.clock;
        let Inner { entries, lru, .. } = &mut *inner;
        match entries.get_mut(&key) {
            Some(e) => {
                lru.remove(&e.used);
                e.used = now;
                lru.insert(now, key);
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some((e.route.clone(), Arc::clone(&e.events)))
            }
            None => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Stores a finished answer, making room by age of last use.
    pub fn put(&self, key: u64, route: Route, events: Vec<Event>) {
        let bytes = size(&events);
        if bytes > self.max_bytes {
            return;
        }
        let mut inner = self.lock();
        inner.remove(key);
        while inner.bytes + bytes > self.max_bytes {
            let Some((_, oldest)) = inner.lru.pop_first() else {
                break;
            };
            // `remove` looks the entry up by key; its lru slot is gone already.
            if let Some(e) = inner.entries.remove(&oldest) {
                inner.bytes -= e.bytes;
                self.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
        inner.clock += 1;
        let used = inner.clock;
        inner.lru.insert(used, key);
        inner.bytes += bytes;
        inner.entries.insert(
            key,
            Entry {
                route,
                events: Arc::new(events),
                stored: Instant::now(),
                bytes,
                used,
            },
        );
    }

    pub fn stats(&self) -> CacheStats {
        let inner = self.lock();
        CacheStats {
            entries: inner.entries.len(),
            bytes: inner.bytes,
            hits_total: self.hits.load(Ordering::Relaxed),
            misses_total: self.misses.load(Ordering::Relaxed),
            evictions_total: self.evictions.load(Ordering::Relaxed),
        }
    }
}

/// `events` (a routed answer: its route first) passed through unchanged, and
/// stored under `key` once all `choices` are done with no error among them.
pub fn storing(
    cache: Arc<ExactCache>,
    key: u64,
    events: EventStream,
    choices: usize,
) -> EventStream {
    let mut seen: Vec<Event> = Vec::new();
    let mut done = 0;
    let mut failed = false;
    let mut route: Option<Route> = None;
    let mut stored = false;
    events
        .map(move |ev| {
            match &ev {
                Event::Route(r) => route = Some((**r).clone()),
                Event::Error(_) => failed = true,
                Event::Done { .. } => done += 1,
                _ => {}
            }
            if !failed && !matches!(ev, Event::Route(_)) {
                seen.push(ev.clone());
            }
            if done == choices && !failed && !stored {
                stored = true;
                if let Some(r) = route.take() {
                    cache.put(key, r, std::mem::take(&mut seen));
                }
            }
            ev
        })
        .boxed()
}

/// A stored answer as a new response: its route marked as a cache hit, its
/// events with this request's timings.
pub fn replay(mut route: Route, events: &[Event], arrival: Instant) -> EventStream {
    route.reason = "cache".into();
    route.cache = Some("exact".into());
    route.attempts.clear();
    route.overhead_ms = None;
    route.confidence = None;
    route.prefix_match = None;
    let ms = arrival.elapsed().as_secs_f64() * 1e3;
    let mut out = vec![Event::Route(Box::new(route))];
    out.extend(events.iter().cloned().map(|ev| match ev {
        Event::Done {
            index,
            finish,
            usage,
            ..
        } => Event::Done {
            index,
            finish,
            usage,
            timings: inferd_protocol::Timings {
                ttft_ms: ms,
                e2e_ms: ms,
                prompt_tokens: usage.prompt_tokens,
                cached_prompt_tokens: usage.prompt_tokens,
                ..Default::default()
            },
        },
        other => other,
    }));
    futures_util::stream::iter(out).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use inferd_protocol::{FinishReason, Usage};

    fn answer(text: &str) -> Vec<Event> {
        vec![
            Event::Delta {
                index: 0,
                text: text.into(),
                tokens: Vec::new(),
            },
            Event::Done {
                index: 0,
                finish: FinishReason::Stop,
                usage: Usage::default(),
                timings: Default::default(),
            },
        ]
    }

    fn route() -> Route {
        Route {
            tier: "t".into(),
            backend: "b".into(),
            reason: "cost".into(),
            attempts: Vec::new(),
            balance: None,
            prefix_match: None,
            overhead_ms: None,
            confidence: None,
            handler: None,
            cache: None,
        }
    }

    #[test]
    fn entries_expire_and_the_least_recently_used_go_first() {
        let one = size(&answer("aaaa"));
        let c = ExactCache::new(Duration::from_millis(50), one * 2);
        c.put(1, route(), answer("aaaa"));
        c.put(2, route(), answer("bbbb"));
        assert!(c.get(1).is_some(), "1 is now the most recent");
        c.put(3, route(), answer("cccc"));
        assert!(c.get(2).is_none(), "2 was the least recently used");
        assert!(c.get(1).is_some() && c.get(3).is_some());
        std::thread::sleep(Duration::from_millis(60));
        assert!(c.get(1).is_none(), "expired");
        let s = c.stats();
        assert_eq!((s.hits_total, s.misses_total, s.evictions_total), (3, 2, 2));
        assert_eq!((s.entries, s.bytes), (1, one));
        c.put(9, route(), answer(&"x".repeat(one * 3)));
        assert!(
            c.get(9).is_none(),
            "larger than the whole cache: not stored"
        );
    }
}
