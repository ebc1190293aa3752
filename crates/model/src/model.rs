//! The architecture-neutral interface the engine drives, and the loader that picks
//! an architecture from a GGUF file's `general.architecture`.
//!
//! The trait is deliberately small (config, numeric options, KV layout, one ragged
//! forward): everything an architecture differs in (norms, attention variants,
//! tensor names) stays inside its own file, so adding one (Gemma 3) touches this
//! dispatch and nothing in the engine loop.

use std::path::Path;

use inferd_gguf::{Gguf, GgufFile};

use crate::batch::{Logits, SeqBatch};
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::kv::KvStore;
use crate::llama::{ForwardOptions, Llama};

/// A loaded decoder: a ragged batched forward over a paged KV cache it is handed.
pub trait Model: Send {
    /// Hyperparameters read from the file.
    fn config(&self) -> &ModelConfig;
    /// The numeric choices of the forward pass (precision, kernel ISA).
    fn options(&self) -> ForwardOptions;
    fn set_options(&mut self, options: ForwardOptions);
    /// The file's metadata (the tokenizer and chat template are read from it).
    fn gguf(&self) -> &Gguf;
    /// A KV store laid out as this model's attention reads it.
    fn new_kv_store(&self, num_blocks: usize, block_size: usize) -> KvStore;
    /// One step over a ragged batch: writes the new tokens' K/V into their blocks
    /// and returns logits for the positions each sequence asked for.
    fn forward(&self, batch: &[SeqBatch], kv: &mut KvStore) -> Result<Logits>;
    /// [`Model::forward`] through the first `layers` layers, then the final norm
    /// and head (self-speculation's draft); `kv` holds those layers only.
    fn forward_layers(&self, batch: &[SeqBatch], kv: &mut KvStore, layers: usize)
        -> Result<Logits>;
}

/// Opens a GGUF file and loads the architecture its `general.architecture` names.
pub fn load_model(path: impl AsRef<Path>) -> Result<Box<dyn Model>> {
    let file = GgufFile::open(path)?;
    let arch = file.info.str("general.architecture")?.to_owned();
    match arch.as_str() {
        // Qwen2 is the Llama decoder with Q/K/V biases and NeoX rotary order.
        "llama" | "qwen2" => Ok(Box::new(Llama::from_file(file)?)),
        _ => Err(ModelError::UnsupportedArchitecture {
            file: file.info.file.display().to_string(),
            arch,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use inferd_gguf::writer::GgufWriter;
    use inferd_gguf::Value;

    #[test]
    fn an_unknown_architecture_is_refused_by_name() {
        let path =
            std::env::temp_dir().join(format!("inferd-model-arch-{}.gguf", std::process::id()));
        let bytes = GgufWriter::new()
            .kv("general.architecture", Value::String("gemma3".into()))
            .to_bytes();
        std::fs::write(&path, bytes).expect("temp dir is writable");
        let err = load_model(&path).err().map(|e| e.to_string());
        std::fs::remove_file(&path).expect("the test file is removable");
        let err = err.expect("an unknown architecture fails to load");
        assert!(err.contains("unsupported architecture `gemma3`"), "{err}");
    }
}
