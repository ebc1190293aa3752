//! [`TokenizerSpec`]: the tokenizer half of a GGUF file's metadata as plain data.
//!
//! The caller (the GGUF loader) copies the `tokenizer.*` keys into this struct, so this
//! crate never parses GGUF itself and can be tested from hand-built vocabularies or a
//! JSON dump. Field names follow the GGUF keys they come from.

use inferd_gguf::{Gguf, GgufError, Value};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TokenizerError};

/// Tokenizer metadata extracted from a GGUF file (`tokenizer.ggml.*`, `tokenizer.chat_template`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TokenizerSpec {
    /// `tokenizer.ggml.model`: `"gpt2"` (byte-level BPE) or `"llama"` (SentencePiece).
    pub model: String,
    /// `tokenizer.ggml.pre`: the pre-tokenizer flavour, e.g. `"smollm"`, `"llama-bpe"`,
    /// `"qwen2"`, `"gpt2"`. `None` means plain GPT-2 byte-level splitting.
    #[serde(default)]
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`: token text indexed by id, in the model's own encoding
    /// (GPT-2 byte-to-unicode characters for `"gpt2"`).
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type`: one [`TokenType`] code per token; empty means all normal.
    #[serde(default)]
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.merges`: BPE merges in priority order, each `"left right"`.
    #[serde(default)]
    pub merges: Vec<String>,
    /// `tokenizer.ggml.scores`: SentencePiece piece scores (unused by `"gpt2"`).
    #[serde(default)]
    pub scores: Option<Vec<f32>>,
    /// `tokenizer.ggml.bos_token_id`.
    #[serde(default)]
    pub bos_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    #[serde(default)]
    pub eos_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`: prepend BOS when encoding with special tokens.
    #[serde(default)]
    pub add_bos: bool,
    /// `tokenizer.ggml.add_eos_token`: append EOS when encoding with special tokens.
    #[serde(default)]
    pub add_eos: bool,
    /// `tokenizer.chat_template`: Hugging Face Jinja chat template source.
    #[serde(default)]
    pub chat_template: Option<String>,
}

/// GGUF token type codes (`tokenizer.ggml.token_type`), as llama.cpp defines them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenType {
    /// Code 0: written by some converters for ordinary tokens.
    Undefined,
    /// Code 1: an ordinary vocabulary entry.
    Normal,
    /// Code 2: the unknown token.
    Unknown,
    /// Code 3: a control token such as `<|im_start|>`; special, skipped by
    /// `decode(.., skip_special = true)`.
    Control,
    /// Code 4: a user-added token matched verbatim in input text; not special.
    UserDefined,
    /// Code 5: a reserved slot.
    Unused,
    /// Code 6: a SentencePiece byte-fallback token `<0xNN>`.
    Byte,
}

impl TokenType {
    /// Maps a GGUF code; `None` for codes llama.cpp does not define.
    pub fn from_code(code: i32) -> Option<Self> {
        Some(match code {
            0 => Self::Undefined,
            1 => Self::Normal,
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => return None,
        })
    }
}

impl TokenizerSpec {
    /// Checks the cross-field invariants every tokenizer model relies on and returns
    /// the decoded token types (all [`TokenType::Normal`] when `token_types` is empty).
    pub(crate) fn validate(&self) -> Result<Vec<TokenType>> {
        let vocab_size = self.tokens.len();
        if vocab_size == 0 {
            return Err(TokenizerError::InvalidSpec {
                field: "tokenizer.ggml.tokens",
                reason: "the vocabulary is empty".into(),
            });
        }
        if u32::try_from(vocab_size).is_err() {
            return Err(TokenizerError::InvalidSpec {
                field: "tokenizer.ggml.tokens",
                reason: format!("{vocab_size} tokens do not fit u32 ids"),
            });
        }
        let types = if self.token_types.is_empty() {
            vec![TokenType::Normal; vocab_size]
        } else if self.token_types.len() != vocab_size {
            return Err(TokenizerError::InvalidSpec {
                field: "tokenizer.ggml.token_type",
                reason: format!(
                    "has {} entries but tokenizer.ggml.tokens has {vocab_size}",
                    self.token_types.len()
                ),
            });
        } else {
            self.token_types
                .iter()
                .enumerate()
                .map(|(id, &code)| {
                    TokenType::from_code(code).ok_or_else(|| TokenizerError::InvalidSpec {
                        field: "tokenizer.ggml.token_type",
                        reason: format!("token {id} has unknown type code {code}"),
                    })
                })
                .collect::<Result<Vec<_>>>()?
        };
        if let Some(scores) = &self.scores {
            if scores.len() != vocab_size {
                return Err(TokenizerError::InvalidSpec {
                    field: "tokenizer.ggml.scores",
                    reason: format!(
                        "has {} entries but tokenizer.ggml.tokens has {vocab_size}",
                        scores.len()
                    ),
                });
            }
        }
        check_id("tokenizer.ggml.bos_token_id", self.bos_id, vocab_size)?;
        check_id("tokenizer.ggml.eos_token_id", self.eos_id, vocab_size)?;
        if self.add_bos && self.bos_id.is_none() {
            return Err(TokenizerError::InvalidSpec {
                field: "tokenizer.ggml.bos_token_id",
                reason: "missing but tokenizer.ggml.add_bos_token is true".into(),
            });
        }
        if self.add_eos && self.eos_id.is_none() {
            return Err(TokenizerError::InvalidSpec {
                field: "tokenizer.ggml.eos_token_id",
                reason: "missing but tokenizer.ggml.add_eos_token is true".into(),
            });
        }
        Ok(types)
    }
}

fn check_id(field: &'static str, id: Option<u32>, vocab_size: usize) -> Result<()> {
    match id {
        Some(id) if id as usize >= vocab_size => Err(TokenizerError::InvalidSpec {
            field,
            reason: format!("id {id} is out of range for a vocabulary of {vocab_size} tokens"),
        }),
        _ => Ok(()),
    }
}

impl TokenizerSpec {
    /// Copies the `tokenizer.*` metadata of a GGUF file into a [`TokenizerSpec`].
    pub fn from_gguf(g: &Gguf) -> std::result::Result<TokenizerSpec, GgufError> {
        let id = |k: &str| g.opt(k, Value::as_u64).map(|v| v.map(|v| v as u32));
        let flag = |k: &str| g.opt(k, Value::as_bool).map(|v| v.unwrap_or(false));
        let int_list = |k: &str| -> std::result::Result<Vec<i32>, GgufError> {
            Ok(g.opt(k, |v| {
                v.as_array()
                    .map(|a| a.iter().map(|x| x.as_i64().unwrap_or(0) as i32).collect())
            })?
            .unwrap_or_default())
        };
        Ok(TokenizerSpec {
            model: g.str("tokenizer.ggml.model")?.to_owned(),
            pre: g.opt("tokenizer.ggml.pre", |v| v.as_str().map(str::to_owned))?,
            tokens: g.strings("tokenizer.ggml.tokens")?,
            token_types: int_list("tokenizer.ggml.token_type")?,
            merges: match g.get("tokenizer.ggml.merges") {
                Some(_) => g.strings("tokenizer.ggml.merges")?,
                None => Vec::new(),
            },
            scores: g.opt("tokenizer.ggml.scores", |v| {
                v.as_array()
                    .map(|a| a.iter().map(|x| x.as_f64().unwrap_or(0.0) as f32).collect())
            })?,
            bos_id: id("tokenizer.ggml.bos_token_id")?,
            eos_id: id("tokenizer.ggml.eos_token_id")?,
            add_bos: flag("tokenizer.ggml.add_bos_token")?,
            add_eos: flag("tokenizer.ggml.add_eos_token")?,
            chat_template: g.opt("tokenizer.chat_template", |v| v.as_str().map(str::to_owned))?,
        })
    }
}
