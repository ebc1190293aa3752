//! One sequence from prompt to finish: chunked prefill, then one decode step per
//! token, with KV blocks taken from the pool as positions are added and all
//! returned at the end (also on error or early stop).

use std::time::{Duration, Instant};

use inferd_kvcache::{BlockPool, BlockTable};
use inferd_model::{KvStore, Llama, LogitsRequest, SeqBatch};

use crate::error::{EngineError, Result};
use crate::sampling::{Logprobs, Sampler, SamplingParams};

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation stops after producing any of these (the token is reported).
    pub stop_token_ids: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token was produced.
    Stop,
    /// `max_tokens` was reached.
    Length,
    /// The callback asked to stop.
    Cancelled,
}

/// One generated token.
#[derive(Debug, Clone)]
pub struct TokenOutput {
    pub id: u32,
    pub logprobs: Option<Logprobs>,
}

#[derive(Debug, Clone)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    pub output_tokens: usize,
    /// Start of `generate` → first token sampled.
    pub ttft: Duration,
    /// Time spent in prefill forwards.
    pub prefill: Duration,
    /// Time from the first token to the last.
    pub decode: Duration,
    pub finish: FinishReason,
}

impl GenerationStats {
    pub fn prefill_tokens_per_sec(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill.as_secs_f64().max(1e-9)
    }

    /// Decode throughput over the tokens after the first.
    pub fn decode_tokens_per_sec(&self) -> f64 {
        self.output_tokens.saturating_sub(1) as f64 / self.decode.as_secs_f64().max(1e-9)
    }
}

/// Runs single sequences on a model with its own KV pool.
pub struct Generator<'m> {
    model: &'m Llama,
    pool: BlockPool,
    kv: KvStore,
    /// Prompt tokens per prefill forward.
    pub prefill_chunk_tokens: usize,
}

impl<'m> Generator<'m> {
    /// A generator whose KV cache holds `kv_tokens` tokens in blocks of `block_size`.
    pub fn new(model: &'m Llama, kv_tokens: usize, block_size: usize) -> Self {
        let blocks = kv_tokens.div_ceil(block_size);
        Generator {
            model,
            pool: BlockPool::new(blocks, block_size),
            kv: model.new_kv_store(blocks, block_size),
            prefill_chunk_tokens: 512,
        }
    }

    pub fn free_blocks(&self) -> usize {
        self.pool.free_blocks()
    }

    /// Generates, calling `on_token` for each token; returning `false` from it
    /// stops generation.
    pub fn generate(
        &mut self,
        req: &GenerateRequest,
        on_token: impl FnMut(&TokenOutput) -> bool,
    ) -> Result<GenerationStats> {
        let mut table = BlockTable::new();
        let result = self.run(req, &mut table, on_token);
        table.release(&mut self.pool);
        result
    }

    fn run(
        &mut self,
        req: &GenerateRequest,
        table: &mut BlockTable,
        mut on_token: impl FnMut(&TokenOutput) -> bool,
    ) -> Result<GenerationStats> {
        if req.prompt.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        let ctx = self.model.config.context_length;
        if req.prompt.len() + req.max_tokens > ctx {
            return Err(EngineError::ContextOverflow {
                prompt_tokens: req.prompt.len(),
                max_tokens: req.max_tokens,
                context_length: ctx,
            });
        }
        let mut sampler = Sampler::new(req.sampling.clone())?;
        for &t in &req.prompt {
            sampler.observe(t);
        }
        let start = Instant::now();
        let chunk = self.prefill_chunk_tokens.max(1);
        let mut pos = 0;
        let mut last_logits = Vec::new();
        while pos < req.prompt.len() {
            let end = (pos + chunk).min(req.prompt.len());
            table.append(&mut self.pool, end - pos)?;
            let last = end == req.prompt.len();
            let batch = [SeqBatch {
                tokens: &req.prompt[pos..end],
                start_pos: pos,
                block_table: table.blocks(),
                logits: if last {
                    LogitsRequest::Last
                } else {
                    LogitsRequest::None
                },
            }];
            let logits = self.model.forward(&batch, &mut self.kv)?;
            if last {
                last_logits = logits
                    .last_of(0)
                    .expect("last logits were requested: this is a bug")
                    .to_vec();
            }
            pos = end;
        }
        let prefill = start.elapsed();

        let mut stats = GenerationStats {
            prompt_tokens: req.prompt.len(),
            output_tokens: 0,
            ttft: Duration::ZERO,
            prefill,
            decode: Duration::ZERO,
            finish: FinishReason::Length,
        };
        let mut first_at = None;
        while stats.output_tokens < req.max_tokens {
            let (id, logprobs) = sampler.sample(&last_logits);
            sampler.observe(id);
            stats.output_tokens += 1;
            let now = Instant::now();
            let first = *first_at.get_or_insert(now);
            if stats.output_tokens == 1 {
                stats.ttft = now - start;
            }
            stats.decode = now - first;
            if !on_token(&TokenOutput { id, logprobs }) {
                stats.finish = FinishReason::Cancelled;
                break;
            }
            if req.stop_token_ids.contains(&id) {
                stats.finish = FinishReason::Stop;
                break;
            }
            if stats.output_tokens == req.max_tokens {
                break;
            }
            table.append(&mut self.pool, 1)?;
            let batch = [SeqBatch {
                tokens: std::slice::from_ref(&id),
                start_pos: pos,
                block_table: table.blocks(),
                logits: LogitsRequest::Last,
            }];
            let logits = self.model.forward(&batch, &mut self.kv)?;
            last_logits.copy_from_slice(logits.last_of(0).expect("requested: this is a bug"));
            pos += 1;
        }
        Ok(stats)
    }
}
