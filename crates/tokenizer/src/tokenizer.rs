//! [`Tokenizer`]: text <-> token ids for one model, built from a [`TokenizerSpec`].
//!
//! Encoding is delegated to a per-model backend (today only byte-level BPE through HF
//! `tokenizers`; SentencePiece `"llama"` vocabularies slot in as another [`Backend`]
//! variant). Decoding is backend-independent: every token id maps to the raw bytes it
//! stands for, precomputed once into one flat table, and text is the lossy UTF-8 of the
//! concatenated bytes. That is exactly HF's byte-level decode, and it lets the streaming
//! [`crate::Detokenizer`] work per token without re-decoding a window.
//!
//! BOS/EOS are added here, not by a `tokenizers` post-processor, so `add_bos`/`add_eos`
//! from the GGUF file are the single source of truth.

use crate::byte_level;
use crate::error::{Result, TokenizerError};
use crate::spec::{TokenType, TokenizerSpec};

/// Token texts that end a chat turn or document in common chat models; those present
/// in the vocabulary as control or user-defined tokens become stop tokens (llama.cpp's
/// end-of-generation list, trimmed to the families inferd targets).
const STOP_TOKEN_TEXTS: &[&str] = &[
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<end_of_turn>",
    "<|end|>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<|return|>",
    "<|call|>",
    "<EOT>",
];

/// The model-specific encoder.
#[derive(Debug)]
enum Backend {
    /// GPT-2 style byte-level BPE (`tokenizer.ggml.model = "gpt2"`).
    ByteLevelBpe(Box<tokenizers::Tokenizer>),
}

/// A tokenizer for one model. Cheap to share (`&Tokenizer` is `Sync`); build once per model.
#[derive(Debug)]
pub struct Tokenizer {
    backend: Backend,
    /// Raw bytes of token `id` are `piece_bytes[piece_offsets[id]..piece_offsets[id + 1]]`.
    piece_bytes: Vec<u8>,
    piece_offsets: Vec<usize>,
    types: Vec<TokenType>,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    stop_ids: Vec<u32>,
}

impl Tokenizer {
    /// Builds the tokenizer described by `spec`.
    ///
    /// Errors name the offending metadata field: an unknown `tokenizer.ggml.model` or
    /// `tokenizer.ggml.pre`, lengths that disagree, a bad merge, an out-of-range id.
    pub fn from_spec(spec: &TokenizerSpec) -> Result<Self> {
        let types = spec.validate()?;
        let (backend, piece) = match spec.model.as_str() {
            "gpt2" => (
                Backend::ByteLevelBpe(Box::new(byte_level::build(spec, &types)?)),
                byte_level::token_bytes as fn(&str) -> Vec<u8>,
            ),
            other => {
                return Err(TokenizerError::Unsupported {
                    field: "tokenizer.ggml.model",
                    value: other.to_owned(),
                    supported: "gpt2",
                })
            }
        };

        let mut piece_bytes = Vec::new();
        let mut piece_offsets = Vec::with_capacity(spec.tokens.len() + 1);
        piece_offsets.push(0);
        for token in &spec.tokens {
            piece_bytes.extend_from_slice(&piece(token));
            piece_offsets.push(piece_bytes.len());
        }

        let mut tokenizer = Self {
            backend,
            piece_bytes,
            piece_offsets,
            types,
            bos_id: spec.bos_id,
            eos_id: spec.eos_id,
            add_bos: spec.add_bos,
            add_eos: spec.add_eos,
            stop_ids: Vec::new(),
        };
        tokenizer.stop_ids = tokenizer.find_stop_ids();
        Ok(tokenizer)
    }

    /// Encodes `text`. Special-token text in the input (e.g. `"<|im_start|>"`) always
    /// becomes its id; `add_special` additionally prepends BOS / appends EOS when the model
    /// asks for them (`tokenizer.ggml.add_bos_token` / `add_eos_token`).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let body = match &self.backend {
            Backend::ByteLevelBpe(hf) => hf
                .encode_fast(text, false)
                .map_err(|e| TokenizerError::Backend {
                    operation: "encode",
                    message: e.to_string(),
                })?
                .get_ids()
                .to_vec(),
        };
        let (bos, eos) = if add_special {
            (
                self.bos_id.filter(|_| self.add_bos),
                self.eos_id.filter(|_| self.add_eos),
            )
        } else {
            (None, None)
        };
        let mut ids = Vec::with_capacity(body.len() + 2);
        ids.extend(bos);
        ids.extend(body);
        ids.extend(eos);
        Ok(ids)
    }

    /// Decodes `ids` to text, replacing invalid UTF-8 with U+FFFD. With `skip_special`,
    /// control tokens (BOS, `<|im_end|>`...) are left out.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        let mut bytes = Vec::new();
        for &id in ids {
            let piece = self.token_bytes(id).ok_or(TokenizerError::UnknownTokenId {
                id,
                vocab_size: self.vocab_size(),
            })?;
            if !(skip_special && self.is_special(id)) {
                bytes.extend_from_slice(piece);
            }
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The raw bytes token `id` decodes to (possibly not valid UTF-8 on its own, e.g.
    /// half of an emoji); `None` when `id` is outside the vocabulary.
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        let id = id as usize;
        let start = *self.piece_offsets.get(id)?;
        let end = *self.piece_offsets.get(id + 1)?;
        Some(&self.piece_bytes[start..end])
    }

    /// Number of tokens in the vocabulary, special ones included.
    pub fn vocab_size(&self) -> usize {
        self.types.len()
    }

    /// `tokenizer.ggml.bos_token_id`.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// `tokenizer.ggml.eos_token_id`.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// Whether `id` is a control token (skipped by `decode(.., skip_special = true)`).
    pub fn is_special(&self, id: u32) -> bool {
        self.token_type(id) == Some(TokenType::Control)
    }

    /// The GGUF type of token `id`; `None` outside the vocabulary.
    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.types.get(id as usize).copied()
    }

    /// The id of the token whose stored text is exactly `token` (e.g. `"<|im_end|>"`,
    /// or `"Ġthe"` for byte-level vocabularies).
    pub fn id_of(&self, token: &str) -> Option<u32> {
        match &self.backend {
            Backend::ByteLevelBpe(hf) => hf.token_to_id(token),
        }
    }

    /// Ids that end generation: EOS first, then any end-of-turn tokens the vocabulary
    /// has as control or user-defined tokens (`<|im_end|>`, `<|eot_id|>`,
    /// `<end_of_turn>`...). Deduplicated, in that order.
    pub fn stop_token_ids(&self) -> Vec<u32> {
        self.stop_ids.clone()
    }

    fn find_stop_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.eos_id.into_iter().collect();
        let added = |id: &u32| {
            matches!(
                self.token_type(*id),
                Some(TokenType::Control | TokenType::UserDefined)
            )
        };
        for id in STOP_TOKEN_TEXTS
            .iter()
            .filter_map(|text| self.id_of(text))
            .filter(added)
        {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        ids
    }

    /// The backend's own decode, to cross-check the byte table in tests.
    #[cfg(test)]
    pub(crate) fn backend_decode(&self, ids: &[u32], skip_special: bool) -> String {
        match &self.backend {
            Backend::ByteLevelBpe(hf) => hf
                .decode(ids, skip_special)
                .expect("HF decode of in-vocabulary ids: this is a bug"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{encode_bytes, tiny_spec, Rng};

    fn tiny() -> Tokenizer {
        Tokenizer::from_spec(&tiny_spec()).expect("tiny spec is valid")
    }

    fn id(tok: &Tokenizer, bytes: &[u8]) -> u32 {
        tok.id_of(&encode_bytes(bytes))
            .unwrap_or_else(|| panic!("{bytes:?} is in the tiny vocabulary"))
    }

    #[test]
    fn tokenizer_and_detokenizer_can_be_shared_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Tokenizer>();
        assert_send_sync::<crate::Detokenizer>();
        assert_send_sync::<crate::ChatTemplate>();
    }

    #[test]
    fn encode_applies_merges_and_decode_inverts() {
        let tok = tiny();
        let ids = tok.encode("hello the", false).expect("encode");
        assert_eq!(ids, vec![id(&tok, b"hello"), id(&tok, b" the")]);
        assert_eq!(tok.decode(&ids, false).expect("decode"), "hello the");
    }

    #[test]
    fn digits_are_split_individually_for_smollm() {
        let tok = tiny();
        let ids = tok.encode("2024", false).expect("encode");
        assert_eq!(ids.len(), 4);
    }

    #[test]
    fn round_trips_arbitrary_text() {
        let tok = tiny();
        for text in [
            "",
            " ",
            "a\n\n b\t",
            "héllo wörld",
            "日本語",
            "😀 emoji 👍🏽!",
            "x<think>y",
        ] {
            let ids = tok.encode(text, false).expect("encode");
            assert_eq!(tok.decode(&ids, false).expect("decode"), text);
        }
    }

    #[test]
    fn special_token_text_maps_to_its_id() {
        let tok = tiny();
        let ids = tok
            .encode("<|im_start|>user\nhello<|im_end|>", false)
            .expect("encode");
        assert_eq!(ids.first(), Some(&1));
        assert_eq!(ids.last(), Some(&2));
        assert!(ids.contains(&id(&tok, b"hello")));
        let think = tok.id_of("<think>").expect("user-defined token");
        assert_eq!(tok.encode("<think>", false).expect("encode"), vec![think]);
    }

    #[test]
    fn add_special_follows_add_bos_and_add_eos() {
        let plain = tiny();
        assert_eq!(plain.encode("he", true).expect("encode").len(), 1);

        let mut spec = tiny_spec();
        spec.add_bos = true;
        spec.add_eos = true;
        let tok = Tokenizer::from_spec(&spec).expect("valid spec");
        let he = id(&tok, b"he");
        assert_eq!(tok.encode("he", true).expect("encode"), vec![1, he, 2]);
        assert_eq!(tok.encode("he", false).expect("encode"), vec![he]);
    }

    #[test]
    fn skip_special_drops_control_but_keeps_user_defined_tokens() {
        let tok = tiny();
        let ids = tok
            .encode("<|im_start|>a<think>b<|im_end|>", false)
            .expect("encode");
        assert_eq!(tok.decode(&ids, true).expect("decode"), "a<think>b");
        assert_eq!(
            tok.decode(&ids, false).expect("decode"),
            "<|im_start|>a<think>b<|im_end|>"
        );
        assert!(tok.is_special(1));
        assert!(!tok.is_special(tok.id_of("<think>").expect("user-defined token")));
    }

    #[test]
    fn byte_table_decode_matches_hf_decode_on_random_ids() {
        let tok = tiny();
        let mut rng = Rng::new(7);
        for _ in 0..2000 {
            let ids: Vec<u32> = (0..rng.below(12))
                .map(|_| rng.below(tok.vocab_size()) as u32)
                .collect();
            for skip in [false, true] {
                assert_eq!(
                    tok.decode(&ids, skip).expect("decode"),
                    tok.backend_decode(&ids, skip),
                    "ids {ids:?} skip_special {skip}"
                );
            }
        }
    }

    #[test]
    fn decode_rejects_out_of_range_ids() {
        let tok = tiny();
        let err = tok.decode(&[100_000], false).expect_err("id out of range");
        assert!(matches!(
            err,
            TokenizerError::UnknownTokenId { id: 100_000, .. }
        ));
    }

    #[test]
    fn stop_tokens_are_eos_then_end_of_turn_tokens() {
        let tok = tiny();
        // eos = <|im_end|> (2); <|endoftext|> (0) also ends generation.
        assert_eq!(tok.stop_token_ids(), vec![2, 0]);
        assert_eq!((tok.bos_id(), tok.eos_id()), (Some(1), Some(2)));
    }

    #[test]
    fn sentencepiece_model_is_reported_unsupported() {
        let spec = TokenizerSpec {
            model: "llama".into(),
            ..tiny_spec()
        };
        let err = Tokenizer::from_spec(&spec).expect_err("llama is not implemented");
        assert!(
            matches!(&err, TokenizerError::Unsupported { field: "tokenizer.ggml.model", value, .. } if value == "llama"),
            "{err}"
        );
    }

    /// Breaks one field of a valid spec.
    type SpecEdit = fn(&mut TokenizerSpec);

    #[test]
    fn inconsistent_specs_name_the_field() {
        let cases: [(SpecEdit, &str); 5] = [
            (
                |s| {
                    s.token_types.pop();
                },
                "tokenizer.ggml.token_type",
            ),
            (|s| s.token_types[5] = 9, "tokenizer.ggml.token_type"),
            (|s| s.merges.push("nospace".into()), "tokenizer.ggml.merges"),
            (
                |s| s.eos_id = Some(1_000_000),
                "tokenizer.ggml.eos_token_id",
            ),
            (|s| s.pre = Some("tekken".into()), "tokenizer.ggml.pre"),
        ];
        for (break_spec, field) in cases {
            let mut spec = tiny_spec();
            break_spec(&mut spec);
            let err = Tokenizer::from_spec(&spec).expect_err("spec is broken");
            assert!(err.to_string().contains(field), "{err} should name {field}");
        }
    }
}
