//! Loading a GGUF file into everything generation needs: the model, its tokenizer
//! and its chat template, all from the one file's metadata.

use std::path::Path;
use std::sync::Arc;

use inferd_model::{load_model, Model};
use inferd_tokenizer::{ChatTemplate, Tokenizer, TokenizerSpec};

use crate::error::Result;

/// A model with its tokenizer and (if the file has one) chat template.
pub struct LoadedModel {
    /// Whichever architecture the file holds (see [`inferd_model::load_model`]).
    pub model: Box<dyn Model>,
    /// Shared with the HTTP layer, which tokenizes prompts.
    pub tokenizer: Arc<Tokenizer>,
    pub chat_template: Option<Arc<ChatTemplate>>,
}

impl LoadedModel {
    pub fn load(path: impl AsRef<Path>) -> Result<LoadedModel> {
        let model = load_model(path)?;
        let spec = TokenizerSpec::from_gguf(model.gguf())?;
        let tokenizer = Tokenizer::from_spec(&spec)?;
        let token_text = |id: Option<u32>| {
            id.and_then(|i| spec.tokens.get(i as usize))
                .cloned()
                .unwrap_or_default()
        };
        let chat_template = match &spec.chat_template {
            Some(src) => Some(Arc::new(ChatTemplate::new(
                src,
                &token_text(spec.bos_id),
                &token_text(spec.eos_id),
            )?)),
            None => None,
        };
        Ok(LoadedModel {
            model,
            tokenizer: Arc::new(tokenizer),
            chat_template,
        })
    }
}
