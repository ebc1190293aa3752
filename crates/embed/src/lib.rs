//! Sentence embeddings from a BERT encoder in a Hugging Face / sentence-transformers
//! folder (all-MiniLM-L6-v2: `inferd models fetch minilm-l6`): the tokenizer from
//! `tokenizer.json`, the encoder from `config.json` + `model.safetensors` (memory
//! mapped, f32), then mean pooling over each input's tokens and L2 normalisation —
//! what sentence-transformers computes for this model (Transformer → Pooling(mean)
//! → Normalize).
//!
//! Inputs are never truncated or padded: an input longer than the encoder's
//! `max_position_embeddings` is an error, and the caller decides what to do with it
//! (sentence-transformers would silently cut all-MiniLM-L6-v2 inputs at its
//! `max_seq_length` of 256 tokens). A batch runs as one ragged forward pass
//! ([`bert`]), so batching changes speed, not results.

mod bert;
mod config;
mod error;

use std::ops::Range;
use std::path::Path;

pub use bert::Precision;
pub use config::BertConfig;
pub use error::{EmbedError, Result};
pub use inferd_kernels::Isa;

use bert::Bert;

/// A loaded embedding model. `Send + Sync`: one instance serves every thread (the
/// forward pass parallelises over the kernels' worker pool, `inferd_kernels::pool`).
pub struct Embedder {
    bert: Bert,
    tokenizer: tokenizers::Tokenizer,
}

const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Embedder>()
};

impl Embedder {
    /// Loads `dir/config.json`, `dir/model.safetensors` and `dir/tokenizer.json`; when
    /// `dir/1_Pooling/config.json` exists (a sentence-transformers folder) it must
    /// ask for mean pooling, the only pooling implemented.
    pub fn load(dir: impl AsRef<Path>) -> Result<Embedder> {
        let dir = dir.as_ref();
        let config = BertConfig::from_file(&dir.join("config.json"))?;
        let pooling = dir.join("1_Pooling").join("config.json");
        if pooling.exists() {
            config::check_pooling(&pooling, config.dim)?;
        }
        let tokenizer = load_tokenizer(&dir.join("tokenizer.json"), config.vocab_size)?;
        let bert = Bert::load(config, &dir.join("model.safetensors"))?;
        Ok(Embedder { bert, tokenizer })
    }

    /// The kernel path in use: the best this CPU has, unless [`Embedder::with_isa`]
    /// chose another.
    pub fn isa(&self) -> Isa {
        self.bert.isa()
    }

    /// The same model on kernel path `isa` (to check each path this CPU has against
    /// the reference); `None` when this CPU cannot run it. A path without a bf16
    /// kernel (AVX2) computes in f32.
    pub fn with_isa(mut self, isa: Isa) -> Option<Embedder> {
        if !Isa::available().contains(&isa) {
            return None;
        }
        self.bert.set_isa(isa);
        Some(self)
    }

    /// The dense layers' arithmetic: [`Precision::Bf16`] where the CPU has
    /// AVX512-BF16, else [`Precision::F32`]; [`Embedder::with_precision`]
    /// chooses another.
    pub fn precision(&self) -> Precision {
        self.bert.precision()
    }

    /// The same model in `precision`; `None` when the kernel path has no kernel
    /// for it (bf16 without AVX512-BF16).
    pub fn with_precision(mut self, precision: Precision) -> Option<Embedder> {
        self.bert.set_precision(precision).ok()?;
        Some(self)
    }

    /// Width of an embedding (384 for all-MiniLM-L6-v2).
    pub fn dims(&self) -> usize {
        self.bert.config.dim
    }

    /// The longest input in tokens, `[CLS]` and `[SEP]` included: the encoder's
    /// `max_position_embeddings` (512 for all-MiniLM-L6-v2).
    pub fn max_tokens(&self) -> usize {
        self.bert.config.max_positions
    }

    /// The encoder's shape, as read from `config.json`.
    pub fn config(&self) -> &BertConfig {
        &self.bert.config
    }

    /// Token ids of `text` as the Hugging Face tokenizer gives them: `[CLS] … [SEP]`,
    /// never truncated (see [`Embedder::max_tokens`]).
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode_fast(text, true)
            .map_err(|e| EmbedError::Tokenize(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// One L2-normalised embedding per input, in order. Each input must have
    /// between 1 and [`Embedder::max_tokens`] tokens, each inside the vocabulary;
    /// otherwise the error names the input's index in `batch`. The whole batch is
    /// one forward pass holding about 16 KB of activations per token (for
    /// all-MiniLM-L6-v2), so the caller bounds its size.
    pub fn embed_tokens(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        let (vocab, max) = (self.bert.config.vocab_size, self.max_tokens());
        for (index, input) in batch.iter().enumerate() {
            let input_err = |what| EmbedError::Input { index, what };
            if input.is_empty() {
                return Err(input_err("has no tokens".into()));
            }
            if input.len() > max {
                return Err(input_err(format!(
                    "{} tokens is more than the model's maximum of {max}",
                    input.len()
                )));
            }
            if let Some((pos, id)) = input
                .iter()
                .enumerate()
                .find(|(_, &id)| id as usize >= vocab)
            {
                return Err(input_err(format!(
                    "token {id} at position {pos} is outside the vocabulary of {vocab}"
                )));
            }
        }
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let tokens: Vec<u32> = batch.iter().flat_map(|t| t.iter().copied()).collect();
        let mut spans: Vec<Range<usize>> = Vec::with_capacity(batch.len());
        let mut start = 0;
        for input in batch {
            spans.push(start..start + input.len());
            start += input.len();
        }
        let hidden = self.bert.forward(&tokens, &spans);
        let dim = self.dims();
        Ok(spans
            .iter()
            .map(|s| mean_pool_normalised(&hidden[s.start * dim..s.end * dim], dim))
            .collect())
    }

    /// Tokenizes and embeds `texts` as one batch ([`Embedder::embed_tokens`]).
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let ids = texts
            .iter()
            .enumerate()
            .map(|(index, t)| {
                self.tokenize(t).map_err(|e| EmbedError::Input {
                    index,
                    what: e.to_string(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let batch: Vec<&[u32]> = ids.iter().map(|t| t.as_slice()).collect();
        self.embed_tokens(&batch)
    }
}

/// Reads `tokenizer.json` with its own truncation and padding switched off (the
/// all-MiniLM-L6-v2 file pads and truncates to 128), so that ids are exactly the
/// text's.
fn load_tokenizer(path: &Path, vocab_size: usize) -> Result<tokenizers::Tokenizer> {
    let file = path.display().to_string();
    let err = |what: String| EmbedError::TokenizerFile {
        file: file.clone(),
        what,
    };
    let mut tokenizer = tokenizers::Tokenizer::from_file(path).map_err(|e| err(e.to_string()))?;
    tokenizer
        .with_truncation(None)
        .map_err(|e| err(e.to_string()))?
        .with_padding(None);
    let n = tokenizer.get_vocab_size(true);
    if n > vocab_size {
        return Err(err(format!(
            "{n} tokens, more than config.json's vocab_size {vocab_size}"
        )));
    }
    Ok(tokenizer)
}

/// sentence-transformers' Pooling(mean) then Normalize over one input's hidden
/// states `[tokens, dim]`:
///   m = Σ_t h_t / T (every token is real: nothing was padded)
///   e = m / max(‖m‖₂, 1e-12)   (torch's `F.normalize`)
fn mean_pool_normalised(hidden: &[f32], dim: usize) -> Vec<f32> {
    let mut sum = vec![0f32; dim];
    for row in hidden.chunks_exact(dim) {
        for (s, v) in sum.iter_mut().zip(row) {
            *s += v;
        }
    }
    let n = (hidden.len() / dim) as f32;
    let norm = sum
        .iter()
        .map(|v| (v / n) * (v / n))
        .sum::<f32>()
        .sqrt()
        .max(1e-12);
    sum.iter().map(|v| v / n / norm).collect()
}
