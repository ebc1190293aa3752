//! The ragged batch a forward pass consumes and the logits it returns.

/// Which positions of a sequence need logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsRequest {
    /// None (a prefill chunk that is not the last one).
    None,
    /// Only the last new token (decode, or the end of a prompt).
    Last,
    /// Every new token (teacher forcing, speculative verification, prompt logprobs).
    All,
}

/// One sequence's part of a step: its new tokens, where they start, and the KV
/// blocks that hold positions `0 .. start_pos + tokens.len()`.
#[derive(Debug, Clone, Copy)]
pub struct SeqBatch<'a> {
    pub tokens: &'a [u32],
    /// Position of `tokens[0]`; positions before it are already in the KV cache.
    pub start_pos: usize,
    pub block_table: &'a [u32],
    pub logits: LogitsRequest,
}

/// Logits for the requested positions, in batch order: `rows[i] = (seq, token)`
/// says which sequence (index into the batch) and which of its new tokens row `i`
/// belongs to.
#[derive(Debug, Clone)]
pub struct Logits {
    pub vocab: usize,
    pub rows: Vec<(usize, usize)>,
    pub data: Vec<f32>,
}

impl Logits {
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.vocab..(i + 1) * self.vocab]
    }

    /// The logits of sequence `seq`'s new token `token`, if they were requested.
    pub fn get(&self, seq: usize, token: usize) -> Option<&[f32]> {
        self.rows
            .iter()
            .position(|&r| r == (seq, token))
            .map(|i| self.row(i))
    }

    /// The logits of the last requested token of sequence `seq`.
    pub fn last_of(&self, seq: usize) -> Option<&[f32]> {
        self.rows
            .iter()
            .rposition(|&(s, _)| s == seq)
            .map(|i| self.row(i))
    }
}
