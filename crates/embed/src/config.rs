//! The encoder's hyper-parameters, read from Hugging Face's `config.json`, and the
//! pooling a sentence-transformers folder asks for (`1_Pooling/config.json`).
//!
//! Only what this encoder implements is accepted: a BERT with absolute position
//! embeddings and exact GELU, pooled by the mean over its tokens. Anything else
//! is refused at load with the key and the value found, rather than run wrongly.

use std::path::Path;

use serde_json::Value;

use crate::error::{EmbedError, Result};

/// A BERT encoder's shape (all-MiniLM-L6-v2: 6 layers, hidden 384, 12 heads,
/// FFN 1536, 30,522 tokens, 512 positions).
#[derive(Debug, Clone, PartialEq)]
pub struct BertConfig {
    /// `hidden_size`: width of every token's hidden state.
    pub dim: usize,
    /// `num_hidden_layers`.
    pub n_layers: usize,
    /// `num_attention_heads`; `dim / n_heads` is the head width.
    pub n_heads: usize,
    /// `intermediate_size`: width of the feed-forward layer.
    pub ffn_dim: usize,
    /// `vocab_size`: rows of the word embedding.
    pub vocab_size: usize,
    /// `max_position_embeddings`: the longest input, in tokens (special ones included).
    pub max_positions: usize,
    /// `type_vocab_size`: rows of the token-type embedding (only type 0 is used).
    pub type_vocab_size: usize,
    /// `layer_norm_eps` (1e-12 for BERT).
    pub layer_norm_eps: f32,
}

impl BertConfig {
    pub fn head_dim(&self) -> usize {
        self.dim / self.n_heads
    }

    pub fn from_file(path: &Path) -> Result<BertConfig> {
        let keys = Keys::read(path)?;
        keys.expect_str("model_type", &["bert"])?;
        // HF's "gelu" is the exact erf form; "gelu_new"/"gelu_pytorch_tanh" are not.
        keys.expect_str("hidden_act", &["gelu"])?;
        if keys.get("position_embedding_type").is_some() {
            keys.expect_str("position_embedding_type", &["absolute"])?;
        }
        let c = BertConfig {
            dim: keys.positive("hidden_size")?,
            n_layers: keys.positive("num_hidden_layers")?,
            n_heads: keys.positive("num_attention_heads")?,
            ffn_dim: keys.positive("intermediate_size")?,
            vocab_size: keys.positive("vocab_size")?,
            max_positions: keys.positive("max_position_embeddings")?,
            type_vocab_size: keys.positive("type_vocab_size")?,
            layer_norm_eps: keys.number("layer_norm_eps")? as f32,
        };
        if !c.dim.is_multiple_of(c.n_heads) {
            return Err(keys.err(
                "num_attention_heads",
                format!("{} does not divide hidden_size {}", c.n_heads, c.dim),
            ));
        }
        if c.layer_norm_eps.is_nan() || c.layer_norm_eps <= 0.0 {
            return Err(keys.err("layer_norm_eps", "must be positive".into()));
        }
        Ok(c)
    }
}

/// Checks a sentence-transformers `1_Pooling/config.json`: it must ask for mean
/// pooling (the only pooling this crate does) over `dim`-wide token embeddings.
pub fn check_pooling(path: &Path, dim: usize) -> Result<()> {
    let keys = Keys::read(path)?;
    let width = keys.positive("word_embedding_dimension")?;
    if width != dim {
        return Err(keys.err(
            "word_embedding_dimension",
            format!("{width}, but the encoder's hidden_size is {dim}"),
        ));
    }
    let flag = |key: &str| match keys.get(key) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(keys.err(key, format!("expected true or false, got {v}"))),
    };
    if !flag("pooling_mode_mean_tokens")? {
        return Err(keys.err(
            "pooling_mode_mean_tokens",
            "must be true: only mean pooling is implemented".into(),
        ));
    }
    for other in [
        "pooling_mode_cls_token",
        "pooling_mode_max_tokens",
        "pooling_mode_mean_sqrt_len_tokens",
        "pooling_mode_weightedmean_tokens",
        "pooling_mode_lasttoken",
    ] {
        if flag(other)? {
            return Err(keys.err(
                other,
                "must be false: only mean pooling is implemented".into(),
            ));
        }
    }
    Ok(())
}

/// A JSON object read from a file, with typed look-ups whose errors name the key.
struct Keys {
    file: String,
    map: serde_json::Map<String, Value>,
}

impl Keys {
    fn read(path: &Path) -> Result<Keys> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| EmbedError::Io {
            file: file.clone(),
            source,
        })?;
        match serde_json::from_str(&text) {
            Ok(Value::Object(map)) => Ok(Keys { file, map }),
            Ok(_) => Err(EmbedError::Config {
                file,
                key: "(top level)".into(),
                what: "expected a JSON object".into(),
            }),
            Err(source) => Err(EmbedError::Json { file, source }),
        }
    }

    fn err(&self, key: &str, what: String) -> EmbedError {
        EmbedError::Config {
            file: self.file.clone(),
            key: key.into(),
            what,
        }
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key)
    }

    fn required(&self, key: &str) -> Result<&Value> {
        self.get(key).ok_or_else(|| self.err(key, "missing".into()))
    }

    fn positive(&self, key: &str) -> Result<usize> {
        match self.required(key)?.as_u64() {
            Some(n) if n > 0 => Ok(n as usize),
            _ => Err(self.err(
                key,
                format!("expected a positive integer, got {}", self.map[key]),
            )),
        }
    }

    fn number(&self, key: &str) -> Result<f64> {
        self.required(key)?
            .as_f64()
            .ok_or_else(|| self.err(key, format!("expected a number, got {}", self.map[key])))
    }

    fn expect_str(&self, key: &str, allowed: &[&str]) -> Result<()> {
        match self.required(key)?.as_str() {
            Some(s) if allowed.contains(&s) => Ok(()),
            _ => Err(self.err(
                key,
                format!(
                    "{} is not supported (supported: {})",
                    self.map[key],
                    allowed.join(", ")
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("inferd-embed-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let p = dir.join(name);
        std::fs::write(&p, text).expect("temp file");
        p
    }

    const MINILM: &str = r#"{"model_type": "bert", "hidden_act": "gelu", "hidden_size": 384,
        "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536,
        "vocab_size": 30522, "max_position_embeddings": 512, "type_vocab_size": 2,
        "layer_norm_eps": 1e-12, "position_embedding_type": "absolute"}"#;

    #[test]
    fn reads_minilm() {
        let c = BertConfig::from_file(&write("ok.json", MINILM)).expect("valid");
        assert_eq!(
            (c.dim, c.n_layers, c.n_heads, c.head_dim()),
            (384, 6, 12, 32)
        );
        assert_eq!((c.ffn_dim, c.max_positions), (1536, 512));
        assert_eq!(c.layer_norm_eps, 1e-12);
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("hidden_act", MINILM.replace(r#""gelu""#, r#""gelu_new""#)),
            ("hidden_size", MINILM.replace(r#""hidden_size": 384,"#, "")),
            (
                "num_attention_heads",
                MINILM.replace("\"num_attention_heads\": 12", "\"num_attention_heads\": 7"),
            ),
            ("vocab_size", MINILM.replace("30522", "\"many\"")),
        ];
        for (i, (key, text)) in cases.iter().enumerate() {
            let err = BertConfig::from_file(&write(&format!("bad{i}.json"), text))
                .expect_err("invalid")
                .to_string();
            assert!(
                err.contains(&format!("`{key}`")) && err.contains("bad"),
                "{err}"
            );
        }
    }

    #[test]
    fn pooling_must_be_mean() {
        let ok = r#"{"word_embedding_dimension": 384, "pooling_mode_cls_token": false,
            "pooling_mode_mean_tokens": true, "pooling_mode_max_tokens": false}"#;
        check_pooling(&write("pool.json", ok), 384).expect("mean pooling");
        let cls = ok.replace(
            "\"pooling_mode_cls_token\": false",
            "\"pooling_mode_cls_token\": true",
        );
        let err = check_pooling(&write("cls.json", &cls), 384)
            .expect_err("cls")
            .to_string();
        assert!(err.contains("pooling_mode_cls_token"), "{err}");
        let err = check_pooling(&write("pool.json", ok), 768)
            .expect_err("width")
            .to_string();
        assert!(err.contains("word_embedding_dimension"), "{err}");
    }
}
