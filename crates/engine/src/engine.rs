//! The serving engine: one thread owns the model, the KV store and the scheduler;
//! any number of [`EngineHandle`] clones submit requests from sync or async code
//! and receive a stream of [`TokenEvent`]s.
//!
//! Each step: take new commands → drop requests whose receiver is gone (their
//! blocks are freed) → plan a step → one ragged forward over every scheduled
//! sequence's new tokens (decodes and prefill chunks together, one pass over the
//! weights) → sample for the sequences that reached their last token → emit →
//! retire finished sequences. The handle follows the actor pattern (TGI's queue):
//! commands over a channel, the state owned by one thread.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use inferd_kvcache::{KvCacheManager, PrefixCacheConfig};
use inferd_model::{KvStore, LogitsRequest, SeqBatch};
use inferd_scheduler::{NewSequence, Scheduler, SchedulerConfig, SchedulerError, SeqId};
use inferd_tokenizer::Detokenizer;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::error::{EngineError, Result};
use crate::loader::LoadedModel;
use crate::sampling::{Logprobs, Sampler, SamplingParams};

/// Engine knobs; every field has a documented default.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub scheduler: SchedulerConfig,
    /// KV cache budget in MiB. Default 512 (about 11,000 tokens of SmolLM2-135M).
    pub kv_cache_mib: usize,
    /// Tokens per KV block. Default 16.
    pub block_size: usize,
    /// Reuse KV blocks of shared prompt prefixes. Default on.
    pub enable_prefix_caching: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            scheduler: SchedulerConfig::default(),
            kv_cache_mib: 512,
            block_size: 16,
            enable_prefix_caching: true,
        }
    }
}

impl EngineConfig {
    pub fn validate(&self) -> Result<()> {
        self.scheduler.validate().map_err(EngineError::Config)?;
        if self.kv_cache_mib == 0 {
            return Err(EngineError::Config(
                "`kv_cache_mib` must be at least 1, got 0".into(),
            ));
        }
        if self.block_size == 0 || self.block_size > 1024 {
            return Err(EngineError::Config(format!(
                "`block_size` must be in 1..=1024, got {}",
                self.block_size
            )));
        }
        Ok(())
    }
}

/// A validated generation request.
#[derive(Debug, Clone, Default)]
pub struct EngineRequest {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation stops after any of these tokens (reported with the stream).
    pub stop_token_ids: Vec<u32>,
    /// Higher is scheduled first. Default 0.
    pub priority: i32,
    /// Isolates prefix-cache sharing to requests with the same salt.
    pub cache_salt: Option<String>,
}

/// Why a request finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token was produced.
    Stop,
    /// `max_tokens` was reached.
    Length,
}

/// Token counts of a finished request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens whose KV came from the prefix cache.
    pub cached_tokens: usize,
}

/// Where a request's time went (definitions in DESIGN.md).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    /// Arrival → first scheduled in a step.
    pub queue: Duration,
    /// First scheduled → first token produced.
    pub prefill: Duration,
    /// Arrival → first token.
    pub ttft: Duration,
    /// First token → last token.
    pub decode: Duration,
    /// Arrival → last token.
    pub e2e: Duration,
    pub preemptions: u32,
}

#[derive(Debug)]
pub enum TokenEvent {
    Token {
        id: u32,
        text: String,
        logprobs: Option<Logprobs>,
    },
    Done {
        reason: FinishReason,
        usage: Usage,
        timings: Timings,
    },
    Error(EngineError),
}

/// Receives one request's events. Dropping it cancels the request.
pub type EventStream = UnboundedReceiver<TokenEvent>;

enum Command {
    Submit {
        id: SeqId,
        req: EngineRequest,
        arrival: Instant,
        events: UnboundedSender<TokenEvent>,
    },
}

/// Live gauges and counters shared with handles (read without asking the engine
/// thread; updated after every step).
#[derive(Debug, Default)]
pub struct EngineGauges {
    pub running: AtomicUsize,
    pub waiting: AtomicUsize,
    pub kv_used_blocks: AtomicUsize,
    pub kv_cached_blocks: AtomicUsize,
    pub kv_free_blocks: AtomicUsize,
    /// Prompt tokens looked up in the prefix cache.
    pub prefix_queries_tokens_total: AtomicU64,
    /// Prompt tokens served from the prefix cache.
    pub prefix_hits_tokens_total: AtomicU64,
    pub kv_evictions_total: AtomicU64,
    pub preemptions_total: AtomicU64,
}

/// Cheap to clone; usable from any thread or task.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Command>,
    next_id: Arc<AtomicUsize>,
    pub gauges: Arc<EngineGauges>,
    pub context_length: usize,
}

impl EngineHandle {
    /// Submits a request. Queue overload and invalid requests arrive as the first
    /// event (`TokenEvent::Error`), within one engine step.
    pub fn submit(&self, req: EngineRequest) -> EventStream {
        let (tx, rx) = unbounded_channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) as SeqId;
        let cmd = Command::Submit {
            id,
            req,
            arrival: Instant::now(),
            events: tx.clone(),
        };
        if self.tx.send(cmd).is_err() {
            let _ = tx.send(TokenEvent::Error(EngineError::Stopped));
        }
        rx
    }

    /// Collects a whole generation (for tests and simple callers).
    pub fn generate_blocking(&self, req: EngineRequest) -> Result<(Vec<u32>, Usage, Timings)> {
        let mut rx = self.submit(req);
        let mut ids = Vec::new();
        while let Some(ev) = rx.blocking_recv() {
            match ev {
                TokenEvent::Token { id, .. } => ids.push(id),
                TokenEvent::Done { usage, timings, .. } => return Ok((ids, usage, timings)),
                TokenEvent::Error(e) => return Err(e),
            }
        }
        Err(EngineError::Stopped)
    }
}

struct Active {
    events: UnboundedSender<TokenEvent>,
    sampler: Sampler,
    detok: Detokenizer,
    stop_token_ids: Vec<u32>,
    max_tokens: usize,
    prompt_tokens: usize,
    generated: usize,
    arrival: Instant,
    first_scheduled: Option<Instant>,
    first_token: Option<Instant>,
}

/// Starts the engine thread for `model`; it runs until every handle is dropped.
pub fn start_engine(model: LoadedModel, config: EngineConfig) -> Result<EngineHandle> {
    config.validate()?;
    let c = &model.model.config;
    let bytes_per_token = KvStore::bytes_per_token(c.n_layers, c.kv_dim());
    let total_blocks = (config.kv_cache_mib << 20) / (bytes_per_token * config.block_size);
    if total_blocks < 2 {
        return Err(EngineError::Config(format!(
            "`kv_cache_mib` {} holds fewer than 2 blocks of {} tokens ({bytes_per_token} bytes per token)",
            config.kv_cache_mib, config.block_size
        )));
    }
    let kv_manager = KvCacheManager::new(PrefixCacheConfig {
        total_blocks,
        block_size: config.block_size,
        enable_prefix_caching: config.enable_prefix_caching,
    });
    let scheduler = Scheduler::new(config.scheduler.clone(), kv_manager);
    let kv = model.model.new_kv_store(total_blocks, config.block_size);
    let (tx, rx) = mpsc::channel();
    let gauges = Arc::new(EngineGauges::default());
    gauges.kv_free_blocks.store(total_blocks, Ordering::Relaxed);
    let handle = EngineHandle {
        tx,
        next_id: Arc::new(AtomicUsize::new(0)),
        gauges: gauges.clone(),
        context_length: c.context_length,
    };
    let mut state = EngineLoop {
        model,
        scheduler,
        kv,
        active: HashMap::new(),
        gauges,
    };
    std::thread::Builder::new()
        .name("inferd-engine".into())
        .spawn(move || state.run(rx))
        .map_err(|e| EngineError::Config(format!("cannot start the engine thread: {e}")))?;
    Ok(handle)
}

struct EngineLoop {
    model: LoadedModel,
    scheduler: Scheduler,
    kv: KvStore,
    active: HashMap<SeqId, Active>,
    gauges: Arc<EngineGauges>,
}

fn salt_hash(salt: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    salt.hash(&mut h);
    h.finish()
}

impl EngineLoop {
    fn run(&mut self, rx: mpsc::Receiver<Command>) {
        loop {
            if !self.scheduler.has_work() {
                match rx.recv() {
                    Ok(cmd) => self.handle(cmd),
                    Err(_) => return,
                }
            }
            while let Ok(cmd) = rx.try_recv() {
                self.handle(cmd);
            }
            self.drop_cancelled();
            self.step();
            self.publish_gauges();
        }
    }

    fn handle(&mut self, cmd: Command) {
        let Command::Submit {
            id,
            req,
            arrival,
            events,
        } = cmd;
        let reject = |e: EngineError| {
            let _ = events.send(TokenEvent::Error(e));
        };
        if req.prompt.is_empty() {
            return reject(EngineError::EmptyPrompt);
        }
        let ctx = self.model.model.config.context_length;
        if req.prompt.len() + req.max_tokens > ctx {
            return reject(EngineError::ContextOverflow {
                prompt_tokens: req.prompt.len(),
                max_tokens: req.max_tokens,
                context_length: ctx,
            });
        }
        let vocab = self.model.model.config.vocab_size;
        if let Some(&t) = req.prompt.iter().find(|&&t| t as usize >= vocab) {
            return reject(EngineError::InvalidParam {
                field: "prompt",
                value: t.to_string(),
                reason: "contains a token id outside the vocabulary",
            });
        }
        let mut sampler = match Sampler::new(req.sampling.clone()) {
            Ok(s) => s,
            Err(e) => return reject(e),
        };
        for &t in &req.prompt {
            sampler.observe_prompt(t);
        }
        let new = NewSequence {
            id,
            prompt: req.prompt.clone(),
            max_tokens: req.max_tokens,
            priority: req.priority,
            salt: req.cache_salt.as_deref().map(salt_hash),
        };
        if let Err(e) = self.scheduler.add(new) {
            return reject(match e {
                SchedulerError::QueueFull { max_waiting } => {
                    EngineError::Overloaded { max_waiting }
                }
                other => EngineError::Scheduler(other),
            });
        }
        self.active.insert(
            id,
            Active {
                events,
                sampler,
                detok: Detokenizer::new(true),
                stop_token_ids: req.stop_token_ids,
                max_tokens: req.max_tokens,
                prompt_tokens: req.prompt.len(),
                generated: 0,
                arrival,
                first_scheduled: None,
                first_token: None,
            },
        );
    }

    /// A closed event stream means the client left: free its blocks now.
    fn drop_cancelled(&mut self) {
        let gone: Vec<SeqId> = self
            .active
            .iter()
            .filter(|(_, a)| a.events.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.active.remove(&id);
            self.scheduler.finish(id);
        }
    }

    fn step(&mut self) {
        let plan = self.scheduler.schedule();
        let now = Instant::now();
        for id in &plan.first_scheduled {
            if let Some(a) = self.active.get_mut(id) {
                a.first_scheduled.get_or_insert(now);
            }
        }
        if plan.is_empty() {
            // Work exists but nothing fits right now (cannot happen with a sane
            // config, since oversized requests are refused); don't spin hot.
            if self.scheduler.has_work() {
                std::thread::sleep(Duration::from_millis(1));
            }
            return;
        }
        let batch: Vec<SeqBatch> = plan
            .chunks
            .iter()
            .map(|c| SeqBatch {
                tokens: &self
                    .scheduler
                    .tokens(c.id)
                    .expect("scheduled sequence exists: this is a bug")
                    [c.start_pos..c.start_pos + c.len],
                start_pos: c.start_pos,
                block_table: self
                    .scheduler
                    .block_table(c.id)
                    .expect("scheduled sequence exists: this is a bug"),
                logits: if c.sample {
                    LogitsRequest::Last
                } else {
                    LogitsRequest::None
                },
            })
            .collect();
        let result = self.model.model.forward(&batch, &mut self.kv);
        drop(batch);
        let logits = match result {
            Ok(l) => l,
            Err(e) => {
                // A forward error is a bug or a bad model file: fail the step's requests.
                let msg = e.to_string();
                for c in &plan.chunks {
                    self.fail(c.id, EngineError::Step(msg.clone()));
                }
                return;
            }
        };
        self.scheduler.complete_step(&plan);
        let now = Instant::now();
        for (i, c) in plan.chunks.iter().enumerate() {
            if !c.sample {
                continue;
            }
            let Some(row) = logits.last_of(i) else {
                continue;
            };
            let Some(a) = self.active.get_mut(&c.id) else {
                continue;
            };
            let (token, logprobs) = a.sampler.sample(row);
            a.sampler.observe(token);
            a.generated += 1;
            a.first_token.get_or_insert(now);
            let reason = if a.stop_token_ids.contains(&token) {
                Some(FinishReason::Stop)
            } else if a.generated >= a.max_tokens {
                Some(FinishReason::Length)
            } else {
                None
            };
            let mut text = a
                .detok
                .push(&self.model.tokenizer, token)
                .unwrap_or_default();
            if reason.is_some() {
                // Trailing bytes of an incomplete character go out with the last token.
                text.extend(a.detok.flush());
            }
            let _ = a.events.send(TokenEvent::Token {
                id: token,
                text,
                logprobs,
            });
            match reason {
                Some(reason) => self.complete(c.id, reason, now),
                None => self.scheduler.append_token(c.id, token),
            }
        }
    }

    fn complete(&mut self, id: SeqId, reason: FinishReason, now: Instant) {
        let Some(a) = self.active.remove(&id) else {
            return;
        };
        let info = self
            .scheduler
            .finish(id)
            .unwrap_or(inferd_scheduler::FinishedSequence {
                cached_tokens: 0,
                preemptions: 0,
            });
        let first_scheduled = a.first_scheduled.unwrap_or(a.arrival);
        let first_token = a.first_token.unwrap_or(now);
        let timings = Timings {
            queue: first_scheduled - a.arrival,
            prefill: first_token.saturating_duration_since(first_scheduled),
            ttft: first_token - a.arrival,
            decode: now - first_token,
            e2e: now - a.arrival,
            preemptions: info.preemptions,
        };
        let usage = Usage {
            prompt_tokens: a.prompt_tokens,
            completion_tokens: a.generated,
            cached_tokens: info.cached_tokens,
        };
        let _ = a.events.send(TokenEvent::Done {
            reason,
            usage,
            timings,
        });
    }

    fn fail(&mut self, id: SeqId, err: EngineError) {
        if let Some(a) = self.active.remove(&id) {
            let _ = a.events.send(TokenEvent::Error(err));
        }
        self.scheduler.finish(id);
    }

    fn publish_gauges(&self) {
        let s = self.scheduler.kv_stats();
        let g = &self.gauges;
        g.running
            .store(self.scheduler.num_running(), Ordering::Relaxed);
        g.waiting
            .store(self.scheduler.num_waiting(), Ordering::Relaxed);
        g.kv_used_blocks.store(s.used_blocks, Ordering::Relaxed);
        g.kv_cached_blocks.store(s.cached_blocks, Ordering::Relaxed);
        g.kv_free_blocks.store(s.free_blocks, Ordering::Relaxed);
        g.prefix_queries_tokens_total
            .store(s.prefix_queries_total, Ordering::Relaxed);
        g.prefix_hits_tokens_total
            .store(s.prefix_hits_total, Ordering::Relaxed);
        g.kv_evictions_total
            .store(s.evictions_total, Ordering::Relaxed);
        g.preemptions_total
            .store(self.scheduler.preemptions_total(), Ordering::Relaxed);
    }
}
