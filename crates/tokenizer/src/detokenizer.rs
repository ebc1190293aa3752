//! [`Detokenizer`]: streaming token ids -> text for one sequence.
//!
//! Instead of vLLM/TGI's re-decoding of a prefix/read-offset window, each token is
//! mapped to the raw bytes it stands for ([`Tokenizer::token_bytes`]) and appended to a
//! small pending buffer; whatever prefix of the buffer is complete UTF-8 is emitted. This
//! is O(token length) per step and emits exactly what `String::from_utf8_lossy` of the
//! whole sequence would: a byte sequence that can never become valid is replaced by
//! U+FFFD as soon as it is known to be invalid, and only a possibly-incomplete tail
//! (at most 3 bytes) is held back, so half an emoji split across byte tokens is never
//! sent.

use crate::tokenizer::Tokenizer;

/// Per-sequence incremental decoder. Owns no reference to the tokenizer, so it can live
/// in the sequence state while the tokenizer is shared.
#[derive(Debug, Clone, Default)]
pub struct Detokenizer {
    /// Bytes received but not yet emitted: an incomplete UTF-8 character, at most 3 bytes.
    pending: Vec<u8>,
    skip_special: bool,
}

impl Detokenizer {
    /// A detokenizer for a new sequence; with `skip_special`, control tokens produce no
    /// text (as `Tokenizer::decode(.., skip_special = true)`).
    pub fn new(skip_special: bool) -> Self {
        Self {
            pending: Vec::new(),
            skip_special,
        }
    }

    /// Feeds the next generated token and returns the text it completes, if any.
    ///
    /// Ids outside the vocabulary (a sampler over padded logits) produce nothing.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Option<String> {
        if self.skip_special && tok.is_special(id) {
            return None;
        }
        self.pending.extend_from_slice(tok.token_bytes(id)?);
        let mut out = String::new();
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(rest) => {
                    out.push_str(rest);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid_end = start + e.valid_up_to();
                    out.push_str(
                        std::str::from_utf8(&self.pending[start..valid_end])
                            .expect("prefix reported valid by from_utf8: this is a bug"),
                    );
                    match e.error_len() {
                        // Invalid whatever follows: replace it now, as from_utf8_lossy would.
                        Some(invalid_len) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            start = valid_end + invalid_len;
                        }
                        // An incomplete character at the end: wait for more bytes.
                        None => {
                            start = valid_end;
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
        (!out.is_empty()).then_some(out)
    }

    /// Ends the sequence: returns any held-back bytes, lossily decoded (an incomplete
    /// character becomes U+FFFD), and resets the detokenizer.
    pub fn flush(&mut self) -> Option<String> {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        (!rest.is_empty()).then_some(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{encode_bytes, tiny_spec, Rng};

    fn tiny() -> Tokenizer {
        Tokenizer::from_spec(&tiny_spec()).expect("tiny spec is valid")
    }

    fn stream(tok: &Tokenizer, ids: &[u32], skip_special: bool) -> Vec<String> {
        let mut detok = Detokenizer::new(skip_special);
        let mut out: Vec<String> = ids.iter().filter_map(|&id| detok.push(tok, id)).collect();
        out.extend(detok.flush());
        out
    }

    #[test]
    fn emoji_split_across_byte_tokens_is_emitted_whole() {
        let tok = tiny();
        // 😀 = F0 9F 98 80: the tiny vocabulary has "\xF0\x9F" and single bytes.
        let ids = tok.encode("a😀b", false).expect("encode");
        let f09f = tok.id_of(&encode_bytes(b"\xF0\x9F")).expect("merged token");
        assert!(ids.contains(&f09f) && ids.len() == 5, "{ids:?}");

        let mut detok = Detokenizer::new(false);
        let pushed: Vec<Option<String>> = ids.iter().map(|&id| detok.push(&tok, id)).collect();
        assert_eq!(
            pushed,
            vec![
                Some("a".into()),
                None,
                None,
                Some("😀".into()),
                Some("b".into())
            ]
        );
        assert_eq!(detok.flush(), None);
    }

    #[test]
    fn streamed_text_equals_decode_for_random_ids() {
        let tok = tiny();
        let mut rng = Rng::new(42);
        for _ in 0..5000 {
            let ids: Vec<u32> = (0..rng.below(16))
                .map(|_| rng.below(tok.vocab_size()) as u32)
                .collect();
            for skip in [false, true] {
                let streamed = stream(&tok, &ids, skip).concat();
                let whole = tok.decode(&ids, skip).expect("decode");
                assert_eq!(streamed, whole, "ids {ids:?} skip_special {skip}");
            }
        }
    }

    #[test]
    fn valid_text_never_streams_a_replacement_character() {
        let tok = tiny();
        let text = "héllo 😀👍🏽 日本 the hello\n";
        let ids = tok.encode(text, false).expect("encode");
        let chunks = stream(&tok, &ids, false);
        assert!(chunks.iter().all(|c| !c.contains('\u{FFFD}')), "{chunks:?}");
        assert_eq!(chunks.concat(), text);
    }

    #[test]
    fn invalid_bytes_become_replacement_characters_like_lossy_decode() {
        let tok = tiny();
        let byte = |b: u8| tok.id_of(&encode_bytes(&[b])).expect("byte token");
        // A lone continuation byte, then an emoji cut short by ASCII, then a dangling lead.
        let ids = [
            byte(0x80),
            byte(b'a'),
            byte(0xF0),
            byte(0x9F),
            byte(b'b'),
            byte(0xE6),
        ];
        let chunks = stream(&tok, &ids, false);
        assert_eq!(chunks.concat(), "\u{FFFD}a\u{FFFD}b\u{FFFD}");
        assert_eq!(chunks.concat(), tok.decode(&ids, false).expect("decode"));
    }

    #[test]
    fn skip_special_and_out_of_range_ids_emit_nothing() {
        let tok = tiny();
        let mut detok = Detokenizer::new(true);
        assert_eq!(detok.push(&tok, 1), None);
        assert_eq!(detok.push(&tok, 1_000_000), None);
        let mut detok = Detokenizer::new(false);
        assert_eq!(detok.push(&tok, 1).as_deref(), Some("<|im_start|>"));
    }
}
