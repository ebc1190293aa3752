//! Hyperparameters read from GGUF metadata (`<arch>.*` keys).

use inferd_gguf::Gguf;
use inferd_kernels::ops::RopeStyle;

use crate::error::{ModelError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    Qwen2,
}

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub arch: Architecture,
    pub n_layers: usize,
    pub dim: usize,
    pub ffn_dim: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub context_length: usize,
    pub rms_eps: f32,
    pub rope_base: f32,
    pub rope_dim: usize,
    pub rope_style: RopeStyle,
}

impl ModelConfig {
    pub fn from_gguf(g: &Gguf) -> Result<ModelConfig> {
        let file = g.file.display().to_string();
        let arch_name = g.str("general.architecture")?;
        let arch = match arch_name {
            "llama" => Architecture::Llama,
            "qwen2" => Architecture::Qwen2,
            other => {
                return Err(ModelError::UnsupportedArchitecture {
                    file,
                    arch: other.into(),
                })
            }
        };
        let key = |k: &str| format!("{arch_name}.{k}");
        let u = |k: &str| g.u64(&key(k)).map(|v| v as usize);
        let dim = u("embedding_length")?;
        let n_heads = u("attention.head_count")?;
        let n_kv_heads = g
            .opt(&key("attention.head_count_kv"), |v| v.as_u64())?
            .map_or(n_heads, |v| v as usize);
        let bad = |k: &str, what: String| ModelError::Config {
            file: file.clone(),
            key: key(k),
            what,
        };
        if n_heads == 0 || dim % n_heads != 0 {
            return Err(bad(
                "attention.head_count",
                format!("{n_heads} heads do not divide dim {dim}"),
            ));
        }
        if n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
            return Err(bad(
                "attention.head_count_kv",
                format!("{n_kv_heads} KV heads do not divide {n_heads} heads"),
            ));
        }
        let head_dim = dim / n_heads;
        let rope_dim = g
            .opt(&key("rope.dimension_count"), |v| v.as_u64())?
            .map_or(head_dim, |v| v as usize);
        if rope_dim > head_dim || rope_dim % 2 != 0 {
            return Err(bad(
                "rope.dimension_count",
                format!("{rope_dim} must be even and at most {head_dim}"),
            ));
        }
        let vocab_size = match g.opt(&key("vocab_size"), |v| v.as_u64())? {
            Some(v) => v as usize,
            None => g
                .get("tokenizer.ggml.tokens")
                .and_then(|v| v.as_array())
                .map_or(0, |a| a.len()),
        };
        Ok(ModelConfig {
            arch,
            n_layers: u("block_count")?,
            dim,
            ffn_dim: u("feed_forward_length")?,
            n_heads,
            n_kv_heads,
            head_dim,
            vocab_size,
            context_length: u("context_length")?,
            rms_eps: g.f64(&key("attention.layer_norm_rms_epsilon"))? as f32,
            rope_base: g
                .opt(&key("rope.freq_base"), |v| v.as_f64())?
                .unwrap_or(10000.0) as f32,
            rope_dim,
            rope_style: match arch {
                Architecture::Llama => RopeStyle::Interleaved,
                Architecture::Qwen2 => RopeStyle::Neox,
            },
        })
    }

    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}
