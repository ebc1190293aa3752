//! Loading a GGUF file into everything generation needs: the model, its tokenizer
//! and its chat template, all from the one file's metadata.

use std::path::Path;

use inferd_gguf::{Gguf, Value};
use inferd_model::Llama;
use inferd_tokenizer::{ChatTemplate, Tokenizer, TokenizerSpec};

use crate::error::Result;

/// A model with its tokenizer and (if the file has one) chat template.
pub struct LoadedModel {
    pub model: Llama,
    pub tokenizer: Tokenizer,
    pub chat_template: Option<ChatTemplate>,
}

impl LoadedModel {
    pub fn load(path: impl AsRef<Path>) -> Result<LoadedModel> {
        let model = Llama::load(path)?;
        let spec = tokenizer_spec(model.gguf())?;
        let tokenizer = Tokenizer::from_spec(&spec)?;
        let token_text = |id: Option<u32>| id.and_then(|i| spec.tokens.get(i as usize)).cloned().unwrap_or_default();
        let chat_template = match &spec.chat_template {
            Some(src) => Some(ChatTemplate::new(src, &token_text(spec.bos_id), &token_text(spec.eos_id))?),
            None => None,
        };
        Ok(LoadedModel { model, tokenizer, chat_template })
    }
}

/// Copies the `tokenizer.*` metadata of a GGUF file into a [`TokenizerSpec`].
pub fn tokenizer_spec(g: &Gguf) -> Result<TokenizerSpec> {
    let id = |k: &str| g.opt(k, Value::as_u64).map(|v| v.map(|v| v as u32));
    let flag = |k: &str| g.opt(k, Value::as_bool).map(|v| v.unwrap_or(false));
    let int_list = |k: &str| -> Result<Vec<i32>> {
        Ok(g.opt(k, |v| v.as_array().map(|a| a.iter().map(|x| x.as_i64().unwrap_or(0) as i32).collect()))?
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
            v.as_array().map(|a| a.iter().map(|x| x.as_f64().unwrap_or(0.0) as f32).collect())
        })?,
        bos_id: id("tokenizer.ggml.bos_token_id")?,
        eos_id: id("tokenizer.ggml.eos_token_id")?,
        add_bos: flag("tokenizer.ggml.add_bos_token")?,
        add_eos: flag("tokenizer.ggml.add_eos_token")?,
        chat_template: g.opt("tokenizer.chat_template", |v| v.as_str().map(str::to_owned))?,
    })
}
