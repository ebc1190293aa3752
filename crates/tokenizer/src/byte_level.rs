//! Byte-level BPE (`tokenizer.ggml.model = "gpt2"`), built on Hugging Face `tokenizers`.
//!
//! GGUF stores exactly what a `tokenizer.json` holds for these models, just flattened:
//! the vocabulary, the merges and a `pre` name standing for the pre-tokenizer. We rebuild
//! the same pipeline HF would run (pre-tokenizer chosen by `pre`, BPE, added tokens for
//! control / user-defined entries) so encoding is token-for-token identical to the
//! reference. Decoding does not go through `tokenizers`: each token maps to its raw bytes
//! once (see [`token_bytes`]) so whole-sequence decoding and streaming share one table.

use std::collections::HashMap;
use std::sync::OnceLock;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

use crate::error::{Result, TokenizerError};
use crate::spec::{TokenType, TokenizerSpec};

/// The `tokenizer.ggml.pre` values [`build`] understands, for error messages.
const SUPPORTED_PRE: &str = "gpt2 (or absent), smollm, starcoder, refact, llama-bpe, llama3, qwen2";

/// Llama 3's split regex (`tokenizer.json` of Meta-Llama-3).
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's split regex: Llama 3's with single digits.
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Builds the HF tokenizer for a `"gpt2"` spec whose token types are already validated.
pub(crate) fn build(spec: &TokenizerSpec, types: &[TokenType]) -> Result<tokenizers::Tokenizer> {
    let pre = spec.pre.as_deref();
    let (normalize_nfc, pre_tokenizer) = pre_tokenizer(pre)?;

    let mut vocab = Vocab::with_capacity(spec.tokens.len());
    for (id, token) in spec.tokens.iter().enumerate() {
        // Some converters repeat filler tokens; the first id wins, as in llama.cpp.
        let id = u32::try_from(id).expect("vocab size checked by validate(): this is a bug");
        vocab.entry(token.clone()).or_insert(id);
    }
    let merges = spec
        .merges
        .iter()
        .enumerate()
        .map(|(i, merge)| {
            merge
                .split_once(' ')
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .ok_or_else(|| TokenizerError::InvalidSpec {
                    field: "tokenizer.ggml.merges",
                    reason: format!("merge {i} ({merge:?}) is not two tokens separated by a space"),
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| TokenizerError::InvalidSpec {
            field: "tokenizer.ggml.merges",
            reason: e.to_string(),
        })?;

    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    if normalize_nfc {
        tokenizer.with_normalizer(Some(NFC));
    }
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));

    // Control tokens are special (matched in any input, skippable on decode); user-defined
    // tokens are matched verbatim but decode like text. `normalized(false)`: match the raw
    // input, as HF's `tokenizer.json` does for these models.
    let added = |kind: TokenType, special: bool| -> Vec<AddedToken> {
        spec.tokens
            .iter()
            .zip(types)
            .filter(|(_, &t)| t == kind)
            .map(|(text, _)| AddedToken::from(text.clone(), special).normalized(false))
            .collect()
    };
    tokenizer.add_special_tokens(&added(TokenType::Control, true));
    tokenizer.add_tokens(&added(TokenType::UserDefined, false));
    Ok(tokenizer)
}

/// Picks the pre-tokenizer for `tokenizer.ggml.pre`; also says whether HF normalizes
/// the input to NFC first (Qwen2 does).
fn pre_tokenizer(pre: Option<&str>) -> Result<(bool, PreTokenizerWrapper)> {
    // add_prefix_space=false, trim_offsets=true everywhere, as in the reference files.
    let byte_level = |use_regex| ByteLevel::new(false, true, use_regex);
    let split = |pattern: &str| -> Result<PreTokenizerWrapper> {
        let split = Split::new(
            SplitPattern::Regex(pattern.to_owned()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| TokenizerError::Backend {
            operation: "compile the pre-tokenizer regex",
            message: e.to_string(),
        })?;
        Ok(Sequence::new(vec![split.into(), byte_level(false).into()]).into())
    };
    Ok(match pre {
        None | Some("gpt2") => (false, byte_level(true).into()),
        Some("smollm" | "starcoder" | "refact") => (
            false,
            Sequence::new(vec![Digits::new(true).into(), byte_level(true).into()]).into(),
        ),
        Some("llama-bpe" | "llama3") => (false, split(LLAMA3_PATTERN)?),
        Some("qwen2") => (true, split(QWEN2_PATTERN)?),
        Some(other) => {
            return Err(TokenizerError::Unsupported {
                field: "tokenizer.ggml.pre",
                value: other.to_owned(),
                supported: SUPPORTED_PRE,
            })
        }
    })
}

/// The raw bytes a byte-level token stands for.
///
/// Mirrors HF's `ByteLevel` decoder: when every character is one of GPT-2's 256
/// byte-standing characters the token is those bytes; otherwise (an added token such as
/// `"<think>\n"` stored verbatim) it is its own UTF-8 text.
pub(crate) fn token_bytes(token: &str) -> Vec<u8> {
    let table = char_to_byte();
    token
        .chars()
        .map(|c| table.get(&c).copied())
        .collect::<Option<Vec<u8>>>()
        .unwrap_or_else(|| token.as_bytes().to_vec())
}

/// GPT-2's reversible byte <-> unicode mapping, char side first
/// (`bytes_to_unicode` in openai/gpt-2 `encoder.py`): printable bytes map to themselves,
/// the other 68 to U+0100 onwards in byte order.
fn char_to_byte() -> &'static HashMap<char, u8> {
    static TABLE: OnceLock<HashMap<char, u8>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let mut next_unprintable = 0x100u32;
        (0..=255u8)
            .map(|b| {
                let c = if printable(b) {
                    char::from(b)
                } else {
                    let c = char::from_u32(next_unprintable)
                        .expect("U+0100..U+0143 are valid chars: this is a bug");
                    next_unprintable += 1;
                    c
                };
                (c, b)
            })
            .collect()
    })
}

/// The GPT-2 character standing for byte `b`, for building vocabularies in tests.
#[cfg(test)]
pub(crate) fn byte_char(b: u8) -> char {
    *char_to_byte()
        .iter()
        .find(|(_, &byte)| byte == b)
        .expect("the table covers all 256 bytes: this is a bug")
        .0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_a_bijection_matching_gpt2() {
        let table = char_to_byte();
        assert_eq!(table.len(), 256);
        assert_eq!(table[&'Ġ'], b' ');
        assert_eq!(table[&'Ċ'], b'\n');
        assert_eq!(table[&'A'], b'A');
        assert_eq!(table[&'\u{100}'], 0);
        let mut bytes: Vec<u8> = table.values().copied().collect();
        bytes.sort_unstable();
        assert_eq!(bytes, (0..=255).collect::<Vec<u8>>());
    }

    #[test]
    fn token_bytes_falls_back_to_utf8_for_verbatim_tokens() {
        assert_eq!(token_bytes("ĠhelloĊ"), b" hello\n");
        assert_eq!(token_bytes("<|im_start|>"), b"<|im_start|>");
        // A literal space is not a byte-level character: the token is taken verbatim.
        assert_eq!(token_bytes("a b"), b"a b");
    }

    #[test]
    fn unknown_pre_is_named_in_the_error() {
        let err = pre_tokenizer(Some("tekken")).expect_err("tekken is unsupported");
        let msg = err.to_string();
        assert!(
            msg.contains("tokenizer.ggml.pre") && msg.contains("tekken"),
            "{msg}"
        );
    }

    /// Expected splits from Python `tokenizers` 0.23 with the same pre-tokenizers.
    #[test]
    fn pre_tokenizers_split_like_hugging_face() {
        use tokenizers::PreTokenizer;

        let text = "I'LL pay $12345.67 for  naïve café\n\n  ok!";
        let cases: [(&str, &[&str]); 3] = [
            (
                "llama-bpe",
                &[
                    "I",
                    "'LL",
                    "Ġpay",
                    "Ġ$",
                    "123",
                    "45",
                    ".",
                    "67",
                    "Ġfor",
                    "Ġ",
                    "ĠnaÃ¯ve",
                    "ĠcafÃ©",
                    "ĊĊ",
                    "Ġ",
                    "Ġok",
                    "!",
                ],
            ),
            (
                "qwen2",
                &[
                    "I",
                    "'LL",
                    "Ġpay",
                    "Ġ$",
                    "1",
                    "2",
                    "3",
                    "4",
                    "5",
                    ".",
                    "6",
                    "7",
                    "Ġfor",
                    "Ġ",
                    "ĠnaÃ¯ve",
                    "ĠcafÃ©",
                    "ĊĊ",
                    "Ġ",
                    "Ġok",
                    "!",
                ],
            ),
            (
                "smollm",
                &[
                    "I",
                    "'",
                    "LL",
                    "Ġpay",
                    "Ġ$",
                    "1",
                    "2",
                    "3",
                    "4",
                    "5",
                    ".",
                    "6",
                    "7",
                    "Ġfor",
                    "Ġ",
                    "ĠnaÃ¯ve",
                    "ĠcafÃ©",
                    "ĊĊĠ",
                    "Ġok",
                    "!",
                ],
            ),
        ];
        for (pre, expected) in cases {
            let (_, pre_tokenizer) = pre_tokenizer(Some(pre)).expect("supported");
            let mut pretokenized = tokenizers::PreTokenizedString::from(text);
            pre_tokenizer
                .pre_tokenize(&mut pretokenized)
                .expect("pre-tokenize");
            let splits: Vec<String> = pretokenized
                .get_splits(
                    tokenizers::OffsetReferential::Original,
                    tokenizers::OffsetType::Byte,
                )
                .into_iter()
                .map(|(piece, _, _)| piece.to_owned())
                .collect();
            assert_eq!(splits, expected, "{pre}");
        }
    }

    #[test]
    fn every_supported_pre_builds() {
        for pre in [
            None,
            Some("gpt2"),
            Some("smollm"),
            Some("llama-bpe"),
            Some("qwen2"),
        ] {
            assert!(pre_tokenizer(pre).is_ok(), "{pre:?}");
        }
    }
}
