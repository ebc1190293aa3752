//! Hand-built vocabularies and a seeded generator shared by the unit tests.

use crate::byte_level::byte_char;
use crate::spec::TokenizerSpec;

/// GPT-2 characters for `bytes`, i.e. how a byte-level vocabulary stores them.
pub(crate) fn encode_bytes(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| byte_char(b)).collect()
}

/// A tiny byte-level BPE: 3 control tokens, the 256 single bytes, a handful of merges
/// (`hello`, ` the`, and `\xF0\x9F` so that emoji split across tokens), and one
/// user-defined token `<think>`.
pub(crate) fn tiny_spec() -> TokenizerSpec {
    let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        .map(String::from)
        .to_vec();
    let mut token_types = vec![3; tokens.len()];
    for b in 0..=255u8 {
        tokens.push(encode_bytes(&[b]));
        token_types.push(1);
    }
    let merge_pairs: [(&[u8], &[u8]); 7] = [
        (b"h", b"e"),
        (b"l", b"l"),
        (b" ", b"t"),
        (b" t", b"he"),
        (b"he", b"ll"),
        (b"hell", b"o"),
        (b"\xF0", b"\x9F"),
    ];
    let mut merges = Vec::new();
    for (a, b) in merge_pairs {
        let (a, b) = (encode_bytes(a), encode_bytes(b));
        merges.push(format!("{a} {b}"));
        tokens.push(format!("{a}{b}"));
        token_types.push(1);
    }
    tokens.push("<think>".into());
    token_types.push(4);
    TokenizerSpec {
        model: "gpt2".into(),
        pre: Some("smollm".into()),
        tokens,
        token_types,
        merges,
        scores: None,
        bos_id: Some(1),
        eos_id: Some(2),
        add_bos: false,
        add_eos: false,
        chat_template: None,
    }
}

/// xorshift64*: deterministic randomness without a dependency.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
    }
}
