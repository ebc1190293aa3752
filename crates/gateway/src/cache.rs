//! The response cache: a request asked again gets the stored answer without
//! a model running.
//!
//! Exact: a deterministic request (temperature 0, or a seed) whose key
//! matches. The key is a hash of the router's name, the request's scope (its
//! `cache_salt`, OpenAI `user` and `metadata`, so one tenant's answers are
//! never another's) and the request as it would be sent upstream (messages,
//! tools, sampling, limits, stop strings, the output constraint; `stream` is
//! not part of it, so a streamed and a whole request share answers).
//!
//! Semantic (optional): a one-choice chat request whose context (the same key
//! computed with the last user message's text left out) matches a stored
//! answer's, and whose last user message embeds within a cosine `threshold`
//! of that answer's; the nearest is taken. The embeddings are normalised, so
//! the cosine is their dot product.
//!
//! An answer is stored once every choice finished without an error; an answer
//! the client abandoned is not. Entries expire after `ttl`; past `max_bytes`
//! (the answers' text and tool calls, their embeddings, plus a fixed overhead
//! per event) the least recently used go first.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use inferd_backend::{CacheStats, Event, EventStream, Request};
use inferd_protocol::{Role, Route};

use crate::wire::{chat_body, completion_body};

/// Bytes counted per stored event besides its text.
const EVENT_OVERHEAD: usize = 96;

pub struct ResponseCache {
    ttl: Duration,
    max_bytes: usize,
    /// Semantic lookups: the least cosine that counts as the same question.
    threshold: Option<f32>,
    inner: Mutex<Inner>,
    hits: AtomicU64,
    semantic_hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
}

/// What a semantic lookup and store need: the context key and the last user
/// message, embedded.
#[derive(Debug, Clone)]
pub struct Semantic {
    pub context: u64,
    pub vector: Vec<f32>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<u64, Entry>,
    /// Last use → key, oldest first.
    lru: BTreeMap<u64, u64>,
    /// Context key → the keys of the entries stored with an embedding.
    by_context: HashMap<u64, Vec<u64>>,
    bytes: usize,
    clock: u64,
}

struct Entry {
    route: Route,
    events: Arc<Vec<Event>>,
    stored: Instant,
    bytes: usize,
    used: u64,
    semantic: Option<Semantic>,
}

type Hit = (Route, Arc<Vec<Event>>);

impl Inner {
    fn remove(&mut self, key: u64) -> bool {
        let Some(e) = self.entries.remove(&key) else {
            return false;
        };
        self.lru.remove(&e.used);
        self.bytes -= e.bytes;
        if let Some(s) = e.semantic {
            if let Some(keys) = self.by_context.get_mut(&s.context) {
                keys.retain(|k| *k != key);
                if keys.is_empty() {
                    self.by_context.remove(&s.context);
                }
            }
        }
        true
    }

    /// Marks `key` as just used; its route and events.
    fn touch(&mut self, key: u64) -> Option<Hit> {
        self.clock += 1;
        let now = self.clock;
        let e = self.entries.get_mut(&key)?;
        self.lru.remove(&e.used);
        e.used = now;
        self.lru.insert(now, key);
        Some((e.route.clone(), Arc::clone(&e.events)))
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

/// The router, the request's scope and its body, hashed.
fn scoped_hash(router: &str, request: &Request, body: &str) -> u64 {
    let c = request.common();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (router, &c.user, &c.metadata, &c.cache_salt, body).hash(&mut h);
    h.finish()
}

impl ResponseCache {
    /// `threshold`: also look answers up by meaning, at this cosine or more.
    pub fn new(ttl: Duration, max_bytes: usize, threshold: Option<f32>) -> ResponseCache {
        ResponseCache {
            ttl,
            max_bytes,
            threshold,
            inner: Mutex::default(),
            hits: AtomicU64::new(0),
            semantic_hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    pub fn is_semantic(&self) -> bool {
        self.threshold.is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The key of a deterministic request (`None`: sampled, never looked up exactly).
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
        Some(scoped_hash(router, request, &body))
    }

    /// A one-choice chat request's context key and last user message (`None`:
    /// not looked up by meaning).
    pub fn context(router: &str, request: &Request) -> Option<(u64, String)> {
        let Request::Chat(r) = request else {
            return None;
        };
        if r.common.n != 1 {
            return None;
        }
        let last = r.messages.iter().rposition(|m| m.role == Role::User)?;
        let text = r.messages[last].text();
        let mut body = chat_body(r, router);
        if let Some(m) = body.messages.as_mut().and_then(|m| m.get_mut(last)) {
            m.content = None;
        }
        let body = serde_json::to_string(&body).ok()?;
        Some((scoped_hash(router, request, &body), text))
    }

    /// The answer stored under `key`: its route (as first served) and events.
    pub fn get(&self, key: u64) -> Option<Hit> {
        let mut inner = self.lock();
        let expired = inner
            .entries
            .get(&key)
            .is_some_and(|e| e.stored.elapsed() > self.ttl);
        if expired && inner.remove(key) {
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
        let hit = inner.touch(key);
        if hit.is_some() {
            self.hits.fetch_add(1, Ordering::Relaxed);
        } else if !self.is_semantic() {
            // Else the semantic lookup that follows counts the miss.
            self.misses.fetch_add(1, Ordering::Relaxed);
        }
        hit
    }

    /// The nearest stored answer within the threshold to `s`, and its cosine;
    /// a miss is counted when there is none.
    pub fn nearest(&self, s: &Semantic) -> Option<(Route, Arc<Vec<Event>>, f32)> {
        let threshold = self.threshold?;
        let mut inner = self.lock();
        let keys = inner
            .by_context
            .get(&s.context)
            .cloned()
            .unwrap_or_default();
        let mut best: Option<(u64, f32)> = None;
        for key in keys {
            let expired = match inner.entries.get(&key) {
                None => continue,
                Some(e) => e.stored.elapsed() > self.ttl,
            };
            if expired {
                if inner.remove(key) {
                    self.evictions.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
            let Some(stored) = inner.entries.get(&key).and_then(|e| e.semantic.as_ref()) else {
                continue;
            };
            let cos: f32 = stored
                .vector
                .iter()
                .zip(&s.vector)
                .map(|(a, b)| a * b)
                .sum();
            if cos >= threshold && best.is_none_or(|(_, c)| cos > c) {
                best = Some((key, cos));
            }
        }
        match best.and_then(|(key, cos)| inner.touch(key).map(|(r, e)| (r, e, cos))) {
            Some(hit) => {
                self.semantic_hits.fetch_add(1, Ordering::Relaxed);
                Some(hit)
            }
            None => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Stores a finished answer under `key` (and `semantic`, for lookups by
    /// meaning), making room by age of last use.
    pub fn put(&self, key: u64, semantic: Option<Semantic>, route: Route, events: Vec<Event>) {
        let bytes = size(&events)
            + semantic
                .as_ref()
                .map_or(0, |s| s.vector.len() * std::mem::size_of::<f32>());
        if bytes > self.max_bytes {
            return;
        }
        let mut inner = self.lock();
        inner.remove(key);
        while inner.bytes + bytes > self.max_bytes {
            let Some((_, oldest)) = inner.lru.first_key_value().map(|(u, k)| (*u, *k)) else {
                break;
            };
            if inner.remove(oldest) {
                self.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
        inner.clock += 1;
        let used = inner.clock;
        inner.lru.insert(used, key);
        inner.bytes += bytes;
        if let Some(s) = &semantic {
            inner.by_context.entry(s.context).or_default().push(key);
        }
        inner.entries.insert(
            key,
            Entry {
                route,
                events: Arc::new(events),
                stored: Instant::now(),
                bytes,
                used,
                semantic,
            },
        );
    }

    pub fn stats(&self) -> CacheStats {
        let inner = self.lock();
        CacheStats {
            entries: inner.entries.len(),
            bytes: inner.bytes,
            hits_total: self.hits.load(Ordering::Relaxed)
                + self.semantic_hits.load(Ordering::Relaxed),
            semantic_hits_total: self.semantic_hits.load(Ordering::Relaxed),
            misses_total: self.misses.load(Ordering::Relaxed),
            evictions_total: self.evictions.load(Ordering::Relaxed),
        }
    }
}

/// `events` (a routed answer: its route first) passed through unchanged, and
/// stored under `key` once all `choices` are done with no error among them.
pub fn storing(
    cache: Arc<ResponseCache>,
    key: u64,
    semantic: Option<Semantic>,
    events: EventStream,
    choices: usize,
) -> EventStream {
    let mut semantic = semantic;
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
                    cache.put(key, semantic.take(), r, std::mem::take(&mut seen));
                }
            }
            ev
        })
        .boxed()
}

/// A stored answer as a new response: its route marked as a cache hit (with
/// the cosine, for a semantic one), its events with this request's timings.
pub fn replay(
    mut route: Route,
    events: &[Event],
    arrival: Instant,
    similarity: Option<f32>,
) -> EventStream {
    route.reason = "cache".into();
    route.cache = Some(
        if similarity.is_some() {
            "semantic"
        } else {
            "exact"
        }
        .into(),
    );
    route.cache_similarity = similarity.map(f64::from);
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
            ..Default::default()
        }
    }

    #[test]
    fn entries_expire_and_the_least_recently_used_go_first() {
        let one = size(&answer("aaaa"));
        let c = ResponseCache::new(Duration::from_millis(50), one * 2, None);
        c.put(1, None, route(), answer("aaaa"));
        c.put(2, None, route(), answer("bbbb"));
        assert!(c.get(1).is_some(), "1 is now the most recent");
        c.put(3, None, route(), answer("cccc"));
        assert!(c.get(2).is_none(), "2 was the least recently used");
        assert!(c.get(1).is_some() && c.get(3).is_some());
        std::thread::sleep(Duration::from_millis(60));
        assert!(c.get(1).is_none(), "expired");
        let s = c.stats();
        assert_eq!((s.hits_total, s.misses_total, s.evictions_total), (3, 2, 2));
        assert_eq!((s.entries, s.bytes), (1, one));
        c.put(9, None, route(), answer(&"x".repeat(one * 3)));
        assert!(
            c.get(9).is_none(),
            "larger than the whole cache: not stored"
        );
    }

    #[test]
    fn the_nearest_answer_within_the_threshold_in_the_same_context() {
        let c = ResponseCache::new(Duration::from_secs(60), 1 << 20, Some(0.9));
        let s = |context: u64, v: [f32; 2]| Semantic {
            context,
            vector: v.to_vec(),
        };
        c.put(1, Some(s(7, [1.0, 0.0])), route(), answer("east"));
        c.put(2, Some(s(7, [0.0, 1.0])), route(), answer("north"));
        let (_, events, cos) = c.nearest(&s(7, [0.96, 0.28])).expect("near east");
        assert!((cos - 0.96).abs() < 1e-6);
        assert!(matches!(&events[0], Event::Delta { text, .. } if text == "east"));
        assert!(c.nearest(&s(7, [0.8, 0.6])).is_none(), "cosine 0.8 < 0.9");
        assert!(c.nearest(&s(8, [1.0, 0.0])).is_none(), "another context");
        c.put(1, None, route(), answer("replaced"));
        assert!(
            c.nearest(&s(7, [1.0, 0.0])).is_none(),
            "its index entry went with it"
        );
        let st = c.stats();
        assert_eq!((st.semantic_hits_total, st.misses_total), (1, 3));
    }
}
