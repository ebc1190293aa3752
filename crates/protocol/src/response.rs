//! Response bodies and SSE chunks as servers write them (and clients read them).
//! Optional fields OpenAI always sends as `null` (`logprobs`, `finish_reason` in a
//! chunk) are written as `null`; fields it leaves out when empty are skipped.

use serde::{Deserialize, Serialize};

use crate::request::ToolCall;

/// Why a choice ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-sequence token or a stop string.
    Stop,
    /// `max_tokens` (or the context window) was reached.
    Length,
    /// The output was parsed into tool calls.
    ToolCalls,
    ContentFilter,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::ContentFilter => "content_filter",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptTokensDetails {
    pub cached_tokens: usize,
}

impl Usage {
    pub fn new(prompt_tokens: usize, completion_tokens: usize, cached_tokens: usize) -> Usage {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            prompt_tokens_details: Some(PromptTokensDetails { cached_tokens }),
        }
    }

    pub fn cached_tokens(&self) -> usize {
        self.prompt_tokens_details.map_or(0, |d| d.cached_tokens)
    }
}

/// inferd's per-response timings (milliseconds; definitions in DESIGN.md). Every
/// duration is measured from the request's arrival at the server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// Arrival → handed to the engine: validation, templating, tokenizing.
    #[serde(default)]
    pub edge_ms: f64,
    /// Arrival → first scheduled in an engine step.
    pub queue_ms: f64,
    /// First scheduled → first token.
    pub prefill_ms: f64,
    /// Arrival → first token.
    pub ttft_ms: f64,
    /// First token → last token.
    pub decode_ms: f64,
    /// Arrival → last token.
    pub e2e_ms: f64,
    pub decode_tokens_per_second: f64,
    pub prompt_tokens: usize,
    pub cached_prompt_tokens: usize,
    pub preemptions: u32,
    /// Constrained requests only: time spent computing token masks (on the mask
    /// thread, beside the forward passes) over the whole output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask_ms: Option<f64>,
    /// Speculating requests only: tokens drafted, and those the model accepted
    /// (each a token that took no step of its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_draft_tokens: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_accepted_tokens: Option<usize>,
}

/// Other servers send their own `timings` object (llama-server's has
/// `prompt_ms`, `predicted_per_second`...): read as absent, not as an error.
fn foreign_timings<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Timings>, D::Error> {
    let v = Option::<serde_json::Value>::deserialize(d)?;
    Ok(v.and_then(|v| serde_json::from_value(v).ok()))
}

/// One token's log-probability, with the most likely alternatives (chat format).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Option<Vec<u8>>,
    #[serde(default)]
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ChoiceLogprobs {
    pub content: Vec<TokenLogprob>,
}

/// `chat.completion`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionResponse {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "foreign_timings"
    )]
    pub timings: Option<Timings>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatChoice {
    pub index: usize,
    pub message: AssistantMessage,
    pub logprobs: Option<ChoiceLogprobs>,
    pub finish_reason: Option<FinishReason>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssistantMessage {
    pub role: String,
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
}

/// `chat.completion.chunk`: one SSE event of a streamed chat completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChunkChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "foreign_timings"
    )]
    pub timings: Option<Timings>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkChoice {
    pub index: usize,
    pub delta: Delta,
    pub logprobs: Option<ChoiceLogprobs>,
    pub finish_reason: Option<FinishReason>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
}

/// A piece of a streamed tool call, as OpenAI streams them: the first piece of
/// call `index` carries its `id`, `type` and `function.name`, later pieces carry
/// fragments of `function.arguments` to append.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ToolCallDelta {
    pub index: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub function: FunctionCallDelta,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FunctionCallDelta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub arguments: String,
}

impl ToolCallDelta {
    /// Appends this piece to `calls` (the calls of one choice, by index).
    pub fn merge_into(self, calls: &mut Vec<ToolCall>) {
        while calls.len() <= self.index {
            calls.push(ToolCall {
                index: None,
                id: String::new(),
                kind: "function".into(),
                function: crate::request::FunctionCall {
                    name: String::new(),
                    arguments: String::new(),
                },
            });
        }
        let c = &mut calls[self.index];
        if let Some(id) = self.id {
            c.id = id;
        }
        if let Some(name) = self.function.name {
            c.function.name = name;
        }
        c.function.arguments.push_str(&self.function.arguments);
    }
}

/// Legacy completions log-probabilities: parallel lists, one entry per token
/// (`token_logprobs[0]` is `null` for an echoed first prompt token).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<Option<f32>>,
    pub top_logprobs: Vec<Option<serde_json::Map<String, serde_json::Value>>>,
    pub text_offset: Vec<usize>,
}

/// `text_completion`: the whole response, and (with one choice each) every SSE chunk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionResponse {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "foreign_timings"
    )]
    pub timings: Option<Timings>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionChoice {
    pub index: usize,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: Option<FinishReason>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingResponse {
    pub object: String,
    pub data: Vec<Embedding>,
    pub model: String,
    pub usage: EmbeddingUsage,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Embedding {
    pub object: String,
    pub index: usize,
    pub embedding: EmbeddingVector,
}

/// A vector as `encoding_format` asked: a list of floats, or base64 of its
/// little-endian f32 bytes (what the official SDKs request by default).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EmbeddingVector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbeddingUsage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelObject {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub owned_by: String,
    /// inferd: the model's context window in tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_window: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<ModelObject>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_servers_timings_read_as_absent() {
        let chunk = serde_json::json!({"id": "x", "object": "chat.completion.chunk", "created": 1,
            "model": "m", "choices": [], "timings": {"prompt_ms": 74.7, "predicted_per_second": 80.1}});
        let c: ChatCompletionChunk = serde_json::from_value(chunk).unwrap();
        assert!(c.timings.is_none());
    }
}

/// How a gateway chose what answered: the `route` object of a response (an
/// extension; the first chunk of a stream) and the `x-inferd-route` header.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Route {
    /// The tier that answered.
    pub tier: String,
    /// The model or upstream within it.
    pub backend: String,
    /// The policy that decided: `explicit` (the request named the tier),
    /// `cost` (the cheapest eligible tier), `context` (cheaper tiers are too
    /// small for it), `privacy` (private: local tiers only), `fallback` (the
    /// tiers before failed).
    pub reason: String,
    /// What was tried before, in order, and why each failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<RouteAttempt>,
    /// How the backend was chosen among the tier's replicas (`round_robin`,
    /// `least_outstanding`, `cache_aware`, `ordered`); absent for a tier of one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance: Option<String>,
    /// Cache-aware balancing: the share of the prompt's prefix blocks the
    /// chosen replica was estimated to hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_match: Option<f64>,
    /// The gateway's own time before the answering backend got the request:
    /// from arrival to dispatch, less the time spent on backends that failed
    /// or were escalated from (their slot waits and answers are theirs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overhead_ms: Option<f64>,
    /// Confidence escalation: how sure the first tier's answer was, and
    /// whether it was asked again of the next tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<Confidence>,
    /// A deterministic handler (rule) that answered, transformed or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<Handled>,
    /// `exact` or `semantic`: the answer came from the response cache
    /// (`tier` and `backend` are those that first answered it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<String>,
    /// `semantic`: the cosine between this request's last user message and
    /// the one the answer was stored for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_similarity: Option<f64>,
    /// Tool narrowing: how many tools the request offered and which were kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<ToolsNarrowed>,
    /// The intent the request was classified as, and what that did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<IntentLabel>,
    /// The context budget: what was cut to fit the answering tier's window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<ContextReport>,
    /// Milliseconds each stage before the model took (`intent`, `rules`,
    /// `cache`, `tools`, `context`), for the stages that ran.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub stages_ms: std::collections::BTreeMap<String, f64>,
}

/// The intent layer's label for a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntentLabel {
    /// The best-scoring intent, even below the threshold.
    pub name: String,
    pub score: f64,
    pub threshold: f64,
    /// `labelled` (at or above the threshold: its tools and tier applied),
    /// `unsure` (below: the full tool list) or `clarified` (below: the
    /// configured clarification answered).
    pub action: String,
}

/// One section's tokens before and after the context budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SectionTokens {
    pub before: usize,
    pub after: usize,
}

/// What the context budget did to fit a request into a tier's window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContextReport {
    /// The tier it was fitted to, its window and the tokens kept for the answer.
    pub tier: String,
    pub window: usize,
    pub reserve: usize,
    /// `tokenizer` (the tier's own, exact) or `estimate` (one token per 3 bytes).
    pub counted: String,
    /// The prompt's tokens before and after.
    pub prompt_before: usize,
    pub prompt_after: usize,
    /// `system`, `tools`, `memory`, `documents`, `history`, `current`.
    pub sections: std::collections::BTreeMap<String, SectionTokens>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub turns_dropped: usize,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub documents_dropped: usize,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub memory_dropped: usize,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tools_dropped: usize,
    /// The dropped turns were summarised by a model into one turn.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub summarized: bool,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The tools a request offered and the ones narrowing kept for the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolsNarrowed {
    pub before: usize,
    pub after: usize,
    pub kept: Vec<String>,
}

/// What a rule did with the request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Handled {
    pub rule: String,
    /// `answered` (no model ran), `transformed` (a system hint or a tier was
    /// set, then a model answered) or `failed` (a model answered instead).
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Answered: the tokens (estimated prompt plus answer) and USD the tier
    /// that would have served it would have cost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saved_tokens: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saved_usd: Option<f64>,
}

/// The confidence score of one answer, from its own token log-probabilities
/// (the gateway's `escalate` module documents the formulas).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Confidence {
    /// The tier and backend whose answer was scored.
    pub tier: String,
    pub backend: String,
    /// Tokens scored (all of a whole answer; the held ones of a stream).
    pub tokens: usize,
    pub mean_logprob: f64,
    pub min_logprob: f64,
    /// Mean over tokens of the entropy of the top alternatives, in nats.
    pub mean_entropy: f64,
    /// The signal compared with the threshold (`mean_logprob`,
    /// `min_logprob` or `neg_entropy`), its value, and the threshold.
    pub signal: String,
    pub score: f64,
    pub threshold: f64,
    /// The score was below the threshold and another tier answered.
    pub escalated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteAttempt {
    pub tier: String,
    pub backend: String,
    pub error: String,
}

impl Route {
    /// The `x-inferd-route` header: `tier=local; backend=small; reason=cost; attempts=0`.
    pub fn header(&self) -> String {
        let mut h = format!(
            "tier={}; backend={}; reason={}; attempts={}",
            self.tier,
            self.backend,
            self.reason,
            self.attempts.len()
        );
        if let Some(b) = &self.balance {
            h.push_str(&format!("; balance={b}"));
        }
        if let Some(m) = self.prefix_match {
            h.push_str(&format!("; prefix_match={m:.2}"));
        }
        if let Some(c) = &self.cache {
            h.push_str(&format!("; cache={c}"));
        }
        if let Some(hd) = &self.handler {
            h.push_str(&format!("; rule={}; handled={}", hd.rule, hd.action));
        }
        if let Some(c) = &self.confidence {
            h.push_str(&format!(
                "; confidence={:.3}; escalated={}",
                c.score, c.escalated
            ));
        }
        h
    }
}
