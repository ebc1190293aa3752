//! The serving engine: one thread owns the model, the KV store and the scheduler;
//! any number of [`EngineHandle`] clones submit requests from sync or async code
//! and receive a stream of [`TokenEvent`]s.
//!
//! Each step: take new commands → drop requests whose receiver is gone (their
//! blocks are freed) → plan a step → one ragged forward over every scheduled
//! sequence's new tokens (decodes and prefill chunks together, one pass over the
//! weights) → sample for the sequences that reached their last token → emit →
//! retire finished sequences → draft the next tokens of the sequences that
//! speculate (`spec`), verified in the next step's forward with everyone else's
//! decode tokens. The handle follows the actor pattern (TGI's queue):
//! commands over a channel, the state owned by one thread.
//!
//! **Panic boundary.** Forward, sampling and emitting run under `catch_unwind`: a
//! panic there (a kernel bug, a model file with NaN weights tripping a sampler
//! invariant) fails the requests of that step with `EngineError::StepPanicked`,
//! frees their blocks and counts `step_failures_total`; every other request
//! carries on. The scheduler's own planning is outside the boundary: a panic there
//! means its bookkeeping is broken, so the thread exits and
//! [`EngineHandle::is_alive`] turns false (the server answers /health with 503).

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use inferd_kvcache::{stable_hash_bytes, KvCacheManager, PrefixCacheConfig};
use inferd_model::{KvStore, Logits, LogitsRequest, SeqBatch};
use inferd_scheduler::{
    FinishedSequence, NewSequence, ScheduledChunk, Scheduler, SchedulerConfig, SchedulerError,
    SeqId, StepPlan,
};
use inferd_tokenizer::Detokenizer;
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

use crate::constraint::ConstraintState;
use crate::draft::{DraftModel, DraftWanted};
use crate::error::{EngineError, Result};
use crate::loader::LoadedModel;
use crate::sampling::{logprobs, Logprobs, Sampler};
use crate::spec::{
    sample_and_match, worth_drafting, DraftState, Proposer, SpecConfig, StepCost, SuffixStore,
    MAX_DRAFT, SUFFIX_TENANTS,
};
use crate::stream::{
    Command, EngineRequest, EventStream, FinishReason, Timings, TokenEvent, Usage,
};

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
    /// Where constrained requests' token masks are computed: `Some(true)` on a
    /// thread of their own while the forward pass runs, `Some(false)` on the
    /// kernel pool just before it (in parallel across sequences). `None`
    /// (default): overlapped when the machine has a core the kernel pool does
    /// not use, else on the pool — a third busy thread on a fully used machine
    /// would steal time slices from the pool's spinning workers.
    pub overlap_masks: Option<bool>,
    /// Speculative decoding (`spec`): `None` (default) decodes one token per
    /// sequence and step.
    pub speculation: Option<SpecConfig>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            scheduler: SchedulerConfig::default(),
            kv_cache_mib: 512,
            block_size: 16,
            enable_prefix_caching: true,
            overlap_masks: None,
            speculation: None,
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
        if let Some(spec) = &self.speculation {
            spec.validate().map_err(EngineError::Config)?;
        }
        Ok(())
    }
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
    /// Steps that panicked (their requests failed with `StepPanicked`).
    pub step_failures_total: AtomicU64,
    /// Prompt tokens waiting to be prefilled (queued and partly prefilled).
    pub pending_prefill_tokens: AtomicUsize,
    /// Moving averages of step times: nanoseconds per token of steps that
    /// prefill (32 tokens or more), and nanoseconds per decode-only step
    /// (0 until such a step ran).
    pub prefill_ns_per_token: AtomicU64,
    pub decode_step_ns: AtomicU64,
    /// Speculation: tokens drafted, drafts accepted, steps that verified
    /// drafts, drafts accepted at each draft position (0 = the first drafted
    /// token), time spent drafting, and time spent verifying: the drafted
    /// rows' share of each forward pass (by token count, since they ride in the
    /// same pass as everyone else's tokens) plus the sampling and matching of
    /// the chunks that carried drafts.
    pub spec_draft_tokens_total: AtomicU64,
    pub spec_accepted_tokens_total: AtomicU64,
    pub spec_verify_steps_total: AtomicU64,
    pub spec_accepted_at_total: [AtomicU64; MAX_DRAFT],
    pub spec_draft_ns_total: AtomicU64,
    pub spec_verify_ns_total: AtomicU64,
}

impl EngineGauges {
    /// When a new request of `prompt_tokens` would get its first token if it
    /// arrived now: the prefill queued before it and its own prompt at the
    /// measured prefill rate, plus one decode step. `None` before the engine
    /// has measured a prefill step.
    pub fn ttft_estimate(&self, prompt_tokens: usize) -> Option<Duration> {
        let per_token = self.prefill_ns_per_token.load(Ordering::Relaxed);
        if per_token == 0 {
            return None;
        }
        let queued = self.pending_prefill_tokens.load(Ordering::Relaxed);
        let ns = (queued + prompt_tokens) as u64 * per_token
            + self.decode_step_ns.load(Ordering::Relaxed);
        Some(Duration::from_nanos(ns))
    }

    /// Folds one step's time into the moving averages (weight 1/8 each).
    fn observe_step(&self, tokens: usize, took: Duration) {
        let ns = took.as_nanos().min(u128::from(u64::MAX)) as u64;
        let fold = |slot: &AtomicU64, sample: u64| {
            let old = slot.load(Ordering::Relaxed);
            let new = if old == 0 {
                sample
            } else {
                (old * 7 + sample) / 8
            };
            slot.store(new.max(1), Ordering::Relaxed);
        };
        if tokens >= 32 {
            fold(&self.prefill_ns_per_token, ns / tokens as u64);
        } else if tokens > 0 {
            fold(&self.decode_step_ns, ns);
        }
    }
}

/// Cheap to clone; usable from any thread or task.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Command>,
    next_id: Arc<AtomicUsize>,
    alive: Arc<AtomicBool>,
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
            arrival: req.arrival.unwrap_or_else(Instant::now),
            req: Box::new(req),
            events: tx.clone(),
        };
        if self.tx.send(cmd).is_err() {
            let _ = tx.send(TokenEvent::Error(EngineError::Stopped));
        }
        EventStream::new(id, rx, self.tx.clone())
    }

    /// Collects a whole generation (for tests and simple callers).
    pub fn generate_blocking(&self, req: EngineRequest) -> Result<(Vec<u32>, Usage, Timings)> {
        let mut rx = self.submit(req);
        let mut ids = Vec::new();
        while let Some(ev) = rx.blocking_recv() {
            match ev {
                TokenEvent::PromptLogprobs(_) => {}
                TokenEvent::Token { id, .. } => ids.push(id),
                TokenEvent::Done { usage, timings, .. } => return Ok((ids, usage, timings)),
                TokenEvent::Error(e) => return Err(e),
            }
        }
        Err(EngineError::Stopped)
    }

    /// False once the engine thread has exited, for whatever reason (shutdown, a
    /// panic outside the step boundary); requests submitted then fail with
    /// `EngineError::Stopped`.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Stops the engine: at its next command check it fails every outstanding
    /// request with `EngineError::Stopped` and its thread exits.
    pub fn shutdown(&self) {
        // An engine that has already exited is already shut down.
        let _ = self.tx.send(Command::Shutdown);
    }
}

/// Clears the handles' `alive` flag when the engine thread ends, however it ends
/// (return or unwinding panic).
struct AliveGuard(Arc<AtomicBool>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
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
    /// Until they are sent with the first token.
    prompt_logprobs: Option<PromptLogprobs>,
    constraint: Option<ConstraintState>,
    /// `None` when the engine does not speculate.
    spec: Option<SeqSpec>,
}

/// A request's part in speculation.
struct SeqSpec {
    /// Its draft lengths and acceptance; `None` when it does not draft (a
    /// constrained request: masks are computed one token at a time).
    draft: Option<DraftState>,
    /// The same for the draft model's drafts, kept apart so that a weak draft
    /// model does not shorten or pause the lookup drafts (and the reverse);
    /// `None` without a draft model.
    model_draft: Option<DraftState>,
    /// Whether the draft being verified came from the draft model.
    by_model: bool,
    drafted: usize,
    accepted: usize,
    /// Its tenant (prefix-cache salt) and output, for the suffix store when it
    /// finishes; `None` when it is not remembered (prompt log-probabilities
    /// give it a salt of its own).
    remembered: Option<Remembered>,
}

struct Remembered {
    tenant: Option<u64>,
    output: Vec<u32>,
}

/// Prompt log-probabilities being collected over a request's prefill chunks.
struct PromptLogprobs {
    top_n: usize,
    /// `entries[i]` scores `prompt[i + 1]`. Kept per position, not appended, so a
    /// preemption that recomputes positions overwrites them instead of adding
    /// duplicates.
    entries: Vec<Option<Logprobs>>,
}

/// Starts the engine thread for `model`; it runs until every handle and stream is
/// dropped, or [`EngineHandle::shutdown`].
pub fn start_engine(model: LoadedModel, config: EngineConfig) -> Result<EngineHandle> {
    config.validate()?;
    let c = model.model.config();
    let bytes_per_token = KvStore::bytes_per_token(c.n_layers, c.kv_dim());
    let total_blocks = (config.kv_cache_mib << 20) / (bytes_per_token * config.block_size);
    if total_blocks < 2 {
        return Err(EngineError::Config(format!(
            "`kv_cache_mib` {} holds fewer than 2 blocks of {} tokens ({bytes_per_token} bytes per token)",
            config.kv_cache_mib, config.block_size
        )));
    }
    let context_length = c.context_length;
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
    let alive = Arc::new(AtomicBool::new(true));
    let handle = EngineHandle {
        tx,
        next_id: Arc::new(AtomicUsize::new(0)),
        alive: alive.clone(),
        gauges: gauges.clone(),
        context_length,
    };
    let overlap_masks = config.overlap_masks.unwrap_or_else(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        cores > inferd_kernels::pool::global().threads()
    });
    let spec = match config.speculation.clone() {
        None => None,
        Some(spec) => {
            let draft = match &spec.draft {
                None => None,
                Some(source) => Some(DraftModel::new(
                    source,
                    &*model.model,
                    total_blocks,
                    config.block_size,
                    config.scheduler.max_batch_tokens,
                )?),
            };
            Some(Speculation {
                suffix: SuffixStore::new(spec.suffix_tokens_per_tenant, SUFFIX_TENANTS),
                config: spec,
                cost: StepCost::default(),
                draft,
                scratch: Vec::new(),
            })
        }
    };
    let state = EngineLoop {
        overlap_masks,
        spec,
        model,
        scheduler,
        kv,
        active: HashMap::new(),
        gauges,
    };
    std::thread::Builder::new()
        .name("inferd-engine".into())
        .spawn(move || {
            // Declared first, so dropped last: after the command receiver, so a
            // handle that reads "dead" also finds submitting refused.
            let _alive = AliveGuard(alive);
            state.run(rx);
        })
        .map_err(|e| EngineError::Config(format!("cannot start the engine thread: {e}")))?;
    Ok(handle)
}

struct EngineLoop {
    /// See [`EngineConfig::overlap_masks`].
    overlap_masks: bool,
    spec: Option<Speculation>,
    model: LoadedModel,
    scheduler: Scheduler,
    kv: KvStore,
    active: HashMap<SeqId, Active>,
    gauges: Arc<EngineGauges>,
}

/// The engine's speculation: its settings and the step-time fit that decides
/// how much drafting pays.
struct Speculation {
    config: SpecConfig,
    cost: StepCost,
    /// Earlier outputs per tenant, drafted from when a sequence's own tokens
    /// have no match.
    suffix: SuffixStore,
    /// Asked when lookup finds nothing.
    draft: Option<DraftModel>,
    scratch: Vec<u32>,
}

/// The prefix-cache salt of a `cache_salt` string: a stable hash, so the same
/// salt isolates the same tenants in every build and process.
fn salt_hash(salt: &str) -> u64 {
    stable_hash_bytes(salt.as_bytes())
}

/// A salt no other request has, so the request shares no cached block. The 0xFF
/// prefix never occurs in UTF-8, so no `cache_salt` string hashes the same bytes.
fn unique_salt(id: SeqId) -> u64 {
    let mut bytes = vec![0xff];
    bytes.extend_from_slice(b"prompt_logprobs");
    bytes.extend_from_slice(&id.to_le_bytes());
    stable_hash_bytes(&bytes)
}

/// The text a panic was raised with (`panic!` payloads are `&str` or `String`).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".into()
    }
}

/// Which logits a chunk needs: every row while its request is scoring prompt
/// positions (any `p` with `p + 1 < prompt_tokens`) or verifying drafts, else the
/// last one when the chunk ends at the last token.
fn logits_needed(active: Option<&Active>, c: &ScheduledChunk) -> LogitsRequest {
    let scoring =
        active.is_some_and(|a| a.prompt_logprobs.is_some() && c.start_pos + 1 < a.prompt_tokens);
    match (scoring || c.draft > 0, c.sample) {
        (true, _) => LogitsRequest::All,
        (false, true) => LogitsRequest::Last,
        (false, false) => LogitsRequest::None,
    }
}

impl EngineLoop {
    fn run(mut self, rx: mpsc::Receiver<Command>) {
        'serve: loop {
            if !self.scheduler.has_work() {
                match rx.recv() {
                    Ok(cmd) => {
                        if !self.handle(cmd) {
                            break 'serve;
                        }
                    }
                    Err(_) => return,
                }
            }
            while let Ok(cmd) = rx.try_recv() {
                if !self.handle(cmd) {
                    break 'serve;
                }
            }
            self.drop_cancelled();
            self.step();
            self.publish_gauges();
        }
        self.shut_down(&rx);
    }

    /// Applies one command; false when it is `Shutdown`.
    fn handle(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Submit {
                id,
                req,
                arrival,
                events,
            } => self.admit(id, *req, arrival, events),
            Command::Stop { id } => {
                if self.active.contains_key(&id) {
                    self.complete(id, FinishReason::Stop, Instant::now());
                }
            }
            Command::Shutdown => return false,
        }
        true
    }

    /// Fails everything outstanding, including submits already queued behind the
    /// shutdown, with `Stopped`.
    fn shut_down(&mut self, rx: &mpsc::Receiver<Command>) {
        let ids: Vec<SeqId> = self.active.keys().copied().collect();
        for id in ids {
            self.fail(id, EngineError::Stopped);
        }
        while let Ok(cmd) = rx.try_recv() {
            if let Command::Submit { events, .. } = cmd {
                let _ = events.send(TokenEvent::Error(EngineError::Stopped));
            }
        }
        self.publish_gauges();
    }

    /// Checks a request against the model; the error is what its caller is told.
    fn check(&self, req: &EngineRequest) -> Result<()> {
        if req.prompt.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        let config = self.model.model.config();
        let ctx = config.context_length;
        if req.prompt.len() + req.max_tokens > ctx {
            return Err(EngineError::ContextOverflow {
                prompt_tokens: req.prompt.len(),
                max_tokens: req.max_tokens,
                context_length: ctx,
            });
        }
        let vocab = config.vocab_size;
        if let Some(&t) = req.prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(EngineError::InvalidParam {
                field: "prompt",
                value: t.to_string(),
                reason: "contains a token id outside the vocabulary",
            });
        }
        if let Some(n) = req.prompt_logprobs.filter(|&n| n > 20) {
            return Err(EngineError::InvalidParam {
                field: "prompt_logprobs",
                value: n.to_string(),
                reason: "must be at most 20",
            });
        }
        Ok(())
    }

    fn admit(
        &mut self,
        id: SeqId,
        req: EngineRequest,
        arrival: Instant,
        events: UnboundedSender<TokenEvent>,
    ) {
        let reject = |e: EngineError| {
            let _ = events.send(TokenEvent::Error(e));
        };
        if let Err(e) = self.check(&req) {
            return reject(e);
        }
        let mut sampler = match Sampler::new(req.sampling.clone()) {
            Ok(s) => s,
            Err(e) => return reject(e),
        };
        for &t in &req.prompt {
            sampler.observe_prompt(t);
        }
        // Cached positions have no logits, so a request scoring its prompt must
        // compute all of it.
        let salt = match req.prompt_logprobs {
            Some(_) => Some(unique_salt(id)),
            None => req.cache_salt.as_deref().map(salt_hash),
        };
        let new = NewSequence {
            id,
            prompt: req.prompt.clone(),
            max_tokens: req.max_tokens,
            priority: req.priority,
            salt,
        };
        if let Err(e) = self.scheduler.add(new) {
            return reject(match e {
                SchedulerError::QueueFull { max_waiting } => {
                    EngineError::Overloaded { max_waiting }
                }
                other => EngineError::Scheduler(other),
            });
        }
        // Masks are computed one token at a time: a constrained request does
        // not draft.
        let drafts = req.constraint.as_ref().is_none_or(|c| c.0.is_free());
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
                prompt_logprobs: req.prompt_logprobs.map(|top_n| PromptLogprobs {
                    top_n,
                    entries: vec![None; req.prompt.len() - 1],
                }),
                spec: self.spec.as_ref().map(|s| SeqSpec {
                    draft: drafts.then(|| DraftState::new(s.config.max_draft)),
                    model_draft: (drafts && s.draft.is_some())
                        .then(|| DraftState::new(s.config.max_draft)),
                    by_model: false,
                    drafted: 0,
                    accepted: 0,
                    remembered: req.prompt_logprobs.is_none().then(|| Remembered {
                        tenant: salt,
                        output: Vec::new(),
                    }),
                }),
                constraint: req
                    .constraint
                    .map(|c| ConstraintState::new(c.0, self.model.model.config().vocab_size)),
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

    /// Plans a step and runs it inside the panic boundary (module docs).
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
        // Unwind safety: a panic leaves half-updated state only in the requests of
        // this plan (their samplers, detokenizers, token lists and new KV rows),
        // and every one of them is removed below, its blocks freed.
        let started = Instant::now();
        let ran = catch_unwind(AssertUnwindSafe(|| self.run_step(&plan)));
        let took = started.elapsed();
        // Decode-only steps count their sequences, prefill steps their tokens
        // (drafts are neither: a decode step stays one, however many it verifies).
        self.gauges
            .observe_step(plan.num_tokens() - plan.num_draft_tokens(), took);
        if let Some(spec) = &mut self.spec {
            spec.cost.observe(plan.num_tokens(), took.as_secs_f64());
        }
        if let Err(payload) = ran {
            let msg = panic_message(payload.as_ref());
            self.gauges
                .step_failures_total
                .fetch_add(1, Ordering::Relaxed);
            for c in &plan.chunks {
                self.fail(c.id, EngineError::StepPanicked(msg.clone()));
            }
        }
    }

    /// Forward → sample → emit for one planned step.
    fn run_step(&mut self, plan: &StepPlan) {
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
                logits: logits_needed(self.active.get(&c.id), c),
            })
            .collect();
        // The masks of this step's constrained samples: beside the forward pass
        // on their own thread, or on the kernel pool just before it (module docs
        // of `constraint`).
        let masked: Vec<SeqId> = plan
            .chunks
            .iter()
            .filter(|c| c.sample)
            .filter(|c| {
                self.active.get(&c.id).is_some_and(|a| {
                    a.constraint
                        .as_ref()
                        .is_some_and(|c| !c.constraint.is_free())
                })
            })
            .map(|c| c.id)
            .collect();
        let (model, kv, active) = (&self.model, &mut self.kv, &mut self.active);
        let forward_started = Instant::now();
        let result = if masked.is_empty() {
            model.model.forward(&batch, kv)
        } else if !self.overlap_masks {
            let mut states: Vec<&mut ConstraintState> = active
                .iter_mut()
                .filter(|(id, _)| masked.contains(id))
                .filter_map(|(_, a)| a.constraint.as_mut())
                .collect();
            inferd_kernels::pool::global().for_each_chunk_mut(&mut states, 1, |_, s| {
                s[0].prepare();
            });
            model.model.forward(&batch, kv)
        } else {
            std::thread::scope(|s| {
                let masker = std::thread::Builder::new()
                    .name("inferd-mask".into())
                    .spawn_scoped(s, || {
                        for id in &masked {
                            if let Some(c) = active.get_mut(id).and_then(|a| a.constraint.as_mut())
                            {
                                c.prepare();
                            }
                        }
                    })
                    .expect("cannot start the mask thread");
                let result = model.model.forward(&batch, kv);
                if let Err(payload) = masker.join() {
                    std::panic::resume_unwind(payload);
                }
                result
            })
        };
        drop(batch);
        let forward_took = forward_started.elapsed();
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
        self.scheduler.complete_step(plan);
        self.collect_prompt_logprobs(plan, &logits);
        let now = Instant::now();
        let mut verifying = Duration::ZERO;
        for (i, c) in plan.chunks.iter().enumerate() {
            if !c.sample {
                continue;
            }
            if c.draft > 0 {
                let started = Instant::now();
                self.verify(i, c, &logits, now);
                verifying += started.elapsed();
            } else if let Some(row) = logits.last_of(i) {
                if let Some(token) = self.sample_and_emit(c.id, row, now) {
                    self.scheduler.append_token(c.id, token);
                }
            }
        }
        let drafts = plan.num_draft_tokens();
        if drafts > 0 {
            let share = forward_took.mul_f64(drafts as f64 / plan.num_tokens() as f64);
            let ns = (share + verifying).as_nanos().min(u128::from(u64::MAX)) as u64;
            self.gauges
                .spec_verify_ns_total
                .fetch_add(ns, Ordering::Relaxed);
        }
        self.draft_next(plan);
    }

    /// Emits the tokens of a chunk that carried `c.draft` drafted tokens after
    /// its last real one: row j's token is sampled exactly as plain decoding
    /// would, and while it equals draft j the next row (computed as if the
    /// draft were right) is sampled too (module docs of `spec`). The accepted
    /// drafts become computed tokens, the rest are rolled back.
    fn verify(&mut self, i: usize, c: &ScheduledChunk, logits: &Logits, now: Instant) {
        let tokens = self
            .scheduler
            .tokens(c.id)
            .expect("scheduled sequence exists: this is a bug");
        let drafts = tokens[c.start_pos + 1..c.start_pos + c.len].to_vec();
        let first = logits
            .rows
            .iter()
            .position(|r| r.0 == i)
            .expect("a verifying chunk has all its rows: this is a bug");
        let g = &self.gauges;
        g.spec_verify_steps_total.fetch_add(1, Ordering::Relaxed);
        g.spec_draft_tokens_total
            .fetch_add(drafts.len() as u64, Ordering::Relaxed);
        if let Some(s) = self.active.get_mut(&c.id).and_then(|a| a.spec.as_mut()) {
            s.drafted += drafts.len();
        }
        let verdict = sample_and_match(&drafts, |j| {
            if j > 0 {
                // Row j exists for this sequence only because draft j − 1 matched;
                // counted before sampling, so a request that finishes on this row
                // reports it in its timings.
                self.gauges
                    .spec_accepted_tokens_total
                    .fetch_add(1, Ordering::Relaxed);
                self.gauges.spec_accepted_at_total[j - 1].fetch_add(1, Ordering::Relaxed);
                if let Some(s) = self.active.get_mut(&c.id).and_then(|a| a.spec.as_mut()) {
                    s.accepted += 1;
                }
            }
            self.sample_and_emit(c.id, logits.row(first + j), now)
        });
        // Finished or failed: its blocks, drafts included, are already freed.
        let Some(token) = verdict.next else {
            return;
        };
        let state = self.active.get_mut(&c.id).and_then(|a| a.spec.as_mut());
        let state = state.and_then(|s| match s.by_model {
            true => s.model_draft.as_mut(),
            false => s.draft.as_mut(),
        });
        if let Some(d) = state {
            d.observe(drafts.len(), verdict.accepted);
        }
        self.scheduler.accept_draft(c.id, verdict.accepted);
        self.scheduler.append_token(c.id, token);
    }

    /// Drafts the next tokens of every sequence that sampled this step and
    /// speculates, as far as the step-cost model says drafting pays.
    fn draft_next(&mut self, plan: &StepPlan) {
        let Some(spec) = self.spec.as_mut() else {
            return;
        };
        let started = Instant::now();
        let fit = spec.cost.fit();
        // The next step is assumed to decode the sequences this one sampled.
        // Prefill tokens in the step are left out: they are work of their own,
        // so counting their time would make drafting look cheap beside them.
        let sampled = plan.chunks.iter().filter(|c| c.sample).count();
        let (step_tokens, step_yield) = (sampled, sampled as f64);
        let mut drafted = false;
        // Sequences left to the draft model, with how many tokens they may draft.
        let mut for_model: Vec<(SeqId, usize)> = Vec::new();
        let model_secs = spec
            .draft
            .as_ref()
            .map(|d| d.secs_per_token().unwrap_or(0.0));
        for c in plan.chunks.iter().filter(|c| c.sample) {
            let Some(a) = self.active.get_mut(&c.id) else {
                continue;
            };
            let Some(SeqSpec {
                draft: Some(d),
                model_draft,
                by_model,
                remembered,
                ..
            }) = a.spec.as_mut()
            else {
                continue;
            };
            // Never past `max_tokens`: the token after the drafts is sampled too.
            let room = a.max_tokens.saturating_sub(a.generated + 1);
            let worth = |state: &mut DraftState, draft_secs: f64| {
                let wanted = state.wanted().min(room);
                if spec.config.adaptive {
                    worth_drafting(
                        fit,
                        step_tokens,
                        step_yield,
                        state.rate(),
                        wanted,
                        draft_secs,
                    )
                } else {
                    wanted
                }
            };
            let Some(tokens) = self.scheduler.tokens(c.id) else {
                continue;
            };
            spec.scratch.clear();
            let k = if spec.config.lookup { worth(d, 0.0) } else { 0 };
            if k > 0 {
                spec.config.proposer.propose(tokens, k, &mut spec.scratch);
                if spec.scratch.is_empty() {
                    if let Some(r) = remembered {
                        let lookup = spec.config.proposer;
                        spec.suffix
                            .propose(r.tenant, &lookup, tokens, k, &mut spec.scratch);
                    }
                }
            }
            if !spec.scratch.is_empty() {
                *by_model = false;
                drafted |= self.scheduler.set_draft(c.id, &spec.scratch);
            } else if let (Some(secs), Some(m)) = (model_secs, model_draft.as_mut()) {
                let k = worth(m, secs);
                if k > 0 {
                    *by_model = true;
                    for_model.push((c.id, k));
                }
            }
        }
        if let Some(model) = spec.draft.as_mut() {
            let active = &self.active;
            model.retain(|id| active.contains_key(&id));
            if !for_model.is_empty() {
                let wanted: Vec<DraftWanted> = for_model
                    .iter()
                    .filter_map(|&(id, k)| {
                        let tokens = self.scheduler.tokens(id)?;
                        Some(DraftWanted { id, tokens, k })
                    })
                    .collect();
                let drafts = model.propose(&*self.model.model, &wanted);
                let ids: Vec<SeqId> = wanted.iter().map(|w| w.id).collect();
                drop(wanted);
                for (id, d) in ids.into_iter().zip(drafts) {
                    if !d.is_empty() {
                        drafted |= self.scheduler.set_draft(id, &d);
                    }
                }
            }
        }
        if drafted {
            let ns = started.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
            self.gauges
                .spec_draft_ns_total
                .fetch_add(ns, Ordering::Relaxed);
        }
    }

    /// Scores the prompt tokens each `All` row predicts (one pass over the rows).
    fn collect_prompt_logprobs(&mut self, plan: &StepPlan, logits: &Logits) {
        for (r, &(seq, j)) in logits.rows.iter().enumerate() {
            let c = &plan.chunks[seq];
            let Some(a) = self.active.get_mut(&c.id) else {
                continue;
            };
            let Some(pl) = a.prompt_logprobs.as_mut() else {
                continue;
            };
            let pos = c.start_pos + j;
            // The last prompt position predicts the first generated token instead.
            if pos + 1 >= a.prompt_tokens {
                continue;
            }
            let next = self
                .scheduler
                .tokens(c.id)
                .expect("scheduled sequence exists: this is a bug")[pos + 1];
            pl.entries[pos] = Some(logprobs(logits.row(r), next, pl.top_n));
        }
    }

    /// Samples `row` for sequence `id` and sends the token; the token when the
    /// sequence goes on (the caller appends it), `None` when it finished or failed.
    fn sample_and_emit(&mut self, id: SeqId, row: &[f32], now: Instant) -> Option<u32> {
        let a = self.active.get_mut(&id)?;
        if let Some(pl) = a.prompt_logprobs.take() {
            let entries = pl
                .entries
                .into_iter()
                .map(|e| {
                    e.expect(
                        "every prompt position is computed before the first token: this is a bug",
                    )
                })
                .collect();
            let _ = a.events.send(TokenEvent::PromptLogprobs(entries));
        }
        let (token, logprobs) = match a.constraint.as_mut() {
            None => a.sampler.sample(row),
            Some(c) if c.constraint.is_free() => a.sampler.sample(row),
            Some(c) => {
                if c.ready.is_none() {
                    c.prepare();
                }
                if let Some(Err(e)) = c.ready.take() {
                    self.fail(id, EngineError::Constraint(e));
                    return None;
                }
                // An empty mask (1,536 words for 49k ids) is cheaper to spot than
                // a row of −∞ (49k floats).
                if c.mask.count() == 0 {
                    self.fail(
                        id,
                        EngineError::Constraint("the grammar allows no next token".into()),
                    );
                    return None;
                }
                let mut masked = row.to_vec();
                c.mask.apply(&mut masked);
                a.sampler.sample(&masked)
            }
        };
        let grammar_end = a
            .constraint
            .as_ref()
            .is_some_and(|c| c.constraint.is_end(token));
        if !grammar_end && !a.stop_token_ids.contains(&token) {
            if let Some(c) = a.constraint.as_mut() {
                if let Err(e) = c.constraint.commit(token) {
                    self.fail(id, EngineError::Constraint(e));
                    return None;
                }
            }
        }
        a.sampler.observe(token);
        a.generated += 1;
        if let Some(r) = a.spec.as_mut().and_then(|s| s.remembered.as_mut()) {
            r.output.push(token);
        }
        a.first_token.get_or_insert(now);
        let reason = if grammar_end || a.stop_token_ids.contains(&token) {
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
            Some(reason) => {
                self.complete(id, reason, now);
                None
            }
            None => Some(token),
        }
    }

    fn complete(&mut self, id: SeqId, reason: FinishReason, now: Instant) {
        let Some(a) = self.active.remove(&id) else {
            return;
        };
        let remembered = a.spec.as_ref().and_then(|s| s.remembered.as_ref());
        if let (Some(spec), Some(r)) = (self.spec.as_mut(), remembered) {
            spec.suffix.record(r.tenant, &r.output);
        }
        let info = self.scheduler.finish(id).unwrap_or(FinishedSequence {
            cached_tokens: 0,
            preemptions: 0,
        });
        // Saturating: a caller-given arrival could lie in the future.
        let since = |later: Instant, earlier: Instant| later.saturating_duration_since(earlier);
        let first_scheduled = a.first_scheduled.unwrap_or(a.arrival);
        let first_token = a.first_token.unwrap_or(now);
        let timings = Timings {
            queue: since(first_scheduled, a.arrival),
            prefill: since(first_token, first_scheduled),
            ttft: since(first_token, a.arrival),
            decode: since(now, first_token),
            e2e: since(now, a.arrival),
            preemptions: info.preemptions,
            mask: a
                .constraint
                .as_ref()
                .map_or(Duration::ZERO, |c| c.mask_time),
            masks: a.constraint.as_ref().map_or(0, |c| c.masks),
            spec_draft_tokens: a.spec.as_ref().map_or(0, |s| s.drafted),
            spec_accepted_tokens: a.spec.as_ref().map_or(0, |s| s.accepted),
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
        g.pending_prefill_tokens
            .store(self.scheduler.pending_prefill_tokens(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ttft_estimate_is_queued_plus_own_prefill_at_the_measured_rate() {
        let g = EngineGauges::default();
        assert_eq!(g.ttft_estimate(10), None, "nothing measured yet");
        g.observe_step(64, Duration::from_millis(64));
        g.observe_step(4, Duration::from_millis(10));
        g.pending_prefill_tokens.store(100, Ordering::Relaxed);
        assert_eq!(g.ttft_estimate(50), Some(Duration::from_millis(160)));
        // A slower prefill step moves the average by an eighth of the gap.
        g.observe_step(64, Duration::from_millis(128));
        assert_eq!(g.prefill_ns_per_token.load(Ordering::Relaxed), 1_125_000);
    }

    #[test]
    fn cache_salt_hash_is_stable_across_processes() {
        // Pinned: `DefaultHasher` may change between builds, which would silently
        // stop a tenant's requests from sharing blocks with a restarted replica's.
        assert_eq!(salt_hash("tenant-a"), PINNED_TENANT_A);
        assert_ne!(salt_hash("tenant-a"), salt_hash("tenant-b"));
    }

    /// SplitMix64 over the salt's little-endian words (`stable_hash_bytes`),
    /// cross-checked against a Python transcription of the algorithm.
    const PINNED_TENANT_A: u64 = 0x3b16_3f92_4e90_5280;
}
