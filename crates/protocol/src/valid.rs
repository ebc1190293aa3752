//! Validation at the edge: a raw body becomes a `Valid*` request, or a
//! [`ProtocolError`] naming the field, the value and the rule. Type errors are
//! reported with the JSON path serde was at (`messages[1].role`), range errors with
//! the range.

use std::time::Instant;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::constraint::{ConstraintFields, OutputConstraint};
use crate::error::ProtocolError;
use crate::request::{
    ChatCompletionRequest, ChatMessage, CompletionRequest, Document, EmbeddingInput,
    EmbeddingRequest, MessageContent, Prompt, PromptItem, Role, Stop, StreamOptions, Tool,
    ToolChoice,
};

/// Most choices one request may ask for (prompts × `n`).
pub const MAX_CHOICES: usize = 64;
/// Most stop strings per request (OpenAI's limit).
pub const MAX_STOPS: usize = 4;
const MAX_N: u64 = 16;
const MAX_TOKENS_LIMIT: u64 = 1 << 20;
const MAX_TOP_LOGPROBS: u64 = 20;

/// OpenAI-level sampling settings (plus the usual extensions). `Default` is
/// OpenAI's: temperature 1, everything else off.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    /// 0 is greedy.
    pub temperature: f32,
    pub top_p: f32,
    /// 0 disables.
    pub top_k: usize,
    pub min_p: f32,
    /// 1 disables.
    pub repetition_penalty: f32,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub seed: Option<u64>,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
        }
    }
}

/// What chat and text completions share.
#[derive(Debug, Clone, PartialEq)]
pub struct Common {
    /// The `model` asked for; `None` means the server's default.
    pub model: Option<String>,
    /// `None`: as many as the context window leaves.
    pub max_tokens: Option<usize>,
    /// Choices per prompt.
    pub n: usize,
    pub stream: bool,
    /// Streaming: send a usage chunk before `[DONE]`.
    pub include_usage: bool,
    /// Stop strings: matched across token boundaries, never emitted.
    pub stop: Vec<String>,
    pub sampling: Sampling,
    /// Higher is scheduled first. Default 0.
    pub priority: i32,
    pub cache_salt: Option<String>,
    /// Generate exactly `max_tokens`, past end-of-sequence tokens.
    pub ignore_eos: bool,
    /// `metadata`, as strings.
    pub metadata: std::collections::BTreeMap<String, String>,
    /// OpenAI's `user`: the end user the request is for.
    pub user: Option<String>,
    /// When the request reached the server; every timing is measured from here.
    pub arrival: Instant,
}

/// A validated chat completion request.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidChatRequest {
    /// At least one; text parts already checked.
    pub messages: Vec<ChatMessage>,
    /// Tools described to the model (also with `tool_choice: "none"`, so earlier
    /// calls in the conversation render as they did).
    pub tools: Vec<Tool>,
    /// Whether the model's output may (or must) become tool calls.
    pub tool_choice: ToolMode,
    /// With a forced tool call: may the model make several (`parallel_tool_calls`,
    /// default true as in OpenAI's API).
    pub parallel_tool_calls: bool,
    /// `response_format` or a guided-decoding extension.
    pub constraint: Option<OutputConstraint>,
    /// `Some(n)`: report each output token's log-probability and `n` alternatives.
    pub logprobs: Option<usize>,
    /// Retrieved documents (an extension), most relevant first as sent.
    pub documents: Vec<Document>,
    /// Remembered facts (an extension).
    pub memory: Vec<String>,
    pub common: Common,
}

impl ValidChatRequest {
    /// The system message that carries `memory` and `documents` to the model:
    /// `None` when there are neither.
    pub fn sections_message(&self) -> Option<ChatMessage> {
        if self.memory.is_empty() && self.documents.is_empty() {
            return None;
        }
        let mut text = String::new();
        if !self.memory.is_empty() {
            text.push_str("Memory:");
            for m in &self.memory {
                text.push_str("\n- ");
                text.push_str(m);
            }
        }
        if !self.documents.is_empty() {
            if !text.is_empty() {
                text.push_str("\n\n");
            }
            text.push_str("Documents:");
            for (i, d) in self.documents.iter().enumerate() {
                match &d.id {
                    Some(id) => text.push_str(&format!("\n[{}] ({id}) ", i + 1)),
                    None => text.push_str(&format!("\n[{}] ", i + 1)),
                }
                text.push_str(&d.text);
            }
        }
        Some(ChatMessage::new(Role::System, text))
    }

    /// The messages as the model reads them: `memory` and `documents` as one
    /// system message after the leading system messages.
    pub fn with_sections(&self) -> std::borrow::Cow<'_, [ChatMessage]> {
        let Some(m) = self.sections_message() else {
            return std::borrow::Cow::Borrowed(&self.messages);
        };
        let at = self
            .messages
            .iter()
            .position(|m| !matches!(m.role, Role::System | Role::Developer))
            .unwrap_or(self.messages.len());
        let mut messages = self.messages.clone();
        messages.insert(at, m);
        std::borrow::Cow::Owned(messages)
    }

    /// Moves `memory` and `documents` into the messages (`with_sections`).
    pub fn inline_sections(&mut self) {
        if let std::borrow::Cow::Owned(m) = self.with_sections() {
            self.messages = m;
            self.memory.clear();
            self.documents.clear();
        }
    }
}

/// What `tool_choice` allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolMode {
    /// The model may call a tool (`"auto"`, the default with tools).
    Auto,
    /// The model answers in text; tool calls are not parsed out (`"none"`).
    None,
    /// The output is one or more tool calls, to any of the tools (`"required"`).
    Required,
    /// The output is a call to this tool
    /// (`{"type": "function", "function": {"name": ...}}`).
    Named(String),
}

/// A validated text completion request.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidCompletionRequest {
    /// One or more prompts; choice `k` answers prompt `k / n`.
    pub prompts: Vec<PromptInput>,
    /// Prepend each prompt to its choice's text (and, with `logprobs`, its tokens).
    pub echo: bool,
    /// `Some(n)`: per-token log-probabilities with `n` alternatives (legacy format).
    pub logprobs: Option<usize>,
    /// `response_format` or a guided-decoding extension (vLLM's, llama.cpp's).
    pub constraint: Option<OutputConstraint>,
    pub common: Common,
}

/// One completions prompt, as text or as token ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromptInput {
    Text(String),
    Tokens(Vec<u32>),
}

impl Common {
    /// Tagged private (`metadata.private` is `"true"`): a gateway keeps it on
    /// local tiers.
    pub fn is_private(&self) -> bool {
        self.metadata
            .get("private")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }
}

impl ValidCompletionRequest {
    pub fn choices(&self) -> usize {
        self.prompts.len() * self.common.n
    }
}

/// The fields both request types share, moved out of either (the wire structs
/// cannot share them through `#[serde(flatten)]` without losing error paths).
/// The structured-output fields, moved out of either request type.
macro_rules! constraint_fields {
    ($r:ident) => {
        ConstraintFields {
            response_format: $r.response_format.take(),
            guided_json: $r.guided_json.take(),
            guided_regex: $r.guided_regex.take(),
            guided_choice: $r.guided_choice.take(),
            guided_grammar: $r.guided_grammar.take(),
            grammar: $r.grammar.take(),
            json_schema: $r.json_schema.take(),
        }
    };
}

macro_rules! common_fields {
    ($r:ident, $max_field:expr, $max_tokens:expr) => {
        CommonFields {
            model: $r.model,
            max_field: $max_field,
            max_tokens: $max_tokens,
            temperature: $r.temperature,
            top_p: $r.top_p,
            n: $r.n,
            stop: $r.stop,
            stream: $r.stream,
            stream_options: $r.stream_options,
            presence_penalty: $r.presence_penalty,
            frequency_penalty: $r.frequency_penalty,
            seed: $r.seed,
            top_k: $r.top_k,
            min_p: $r.min_p,
            repetition_penalty: $r.repetition_penalty,
            ignore_eos: $r.ignore_eos,
            priority: $r.priority,
            cache_salt: $r.cache_salt,
            metadata: $r.metadata,
            user: $r.user,
        }
    };
}

/// Most inputs one embeddings request may carry (OpenAI's limit).
pub const MAX_EMBEDDING_INPUTS: usize = 2048;

/// How embedding vectors are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodingFormat {
    Float,
    /// Little-endian f32 bytes, base64-encoded.
    Base64,
}

/// A validated embeddings request.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidEmbeddingRequest {
    pub model: Option<String>,
    /// At least one, none empty.
    pub inputs: Vec<PromptInput>,
    pub encoding: EncodingFormat,
    /// When given, the model must have exactly this many dimensions.
    pub dimensions: Option<usize>,
    /// Cut inputs that are too long instead of refusing them.
    pub truncate: bool,
    pub arrival: Instant,
}

/// Parses and validates an embeddings body that arrived at `arrival`.
pub fn parse_embeddings(
    body: &[u8],
    arrival: Instant,
) -> Result<ValidEmbeddingRequest, ProtocolError> {
    let r: EmbeddingRequest = from_body(body)?;
    let inputs = match r.input {
        None => return Err(ProtocolError::field("input", "`input` is required")),
        Some(EmbeddingInput::Text(t)) => vec![PromptInput::Text(t)],
        Some(EmbeddingInput::Texts(t)) => t.into_iter().map(PromptInput::Text).collect(),
        Some(EmbeddingInput::Tokens(t)) => vec![PromptInput::Tokens(t)],
        Some(EmbeddingInput::TokenLists(t)) => t.into_iter().map(PromptInput::Tokens).collect(),
    };
    if inputs.is_empty() {
        return Err(ProtocolError::field(
            "input",
            "`input` must not be an empty list",
        ));
    }
    if inputs.len() > MAX_EMBEDDING_INPUTS {
        return Err(ProtocolError::field(
            "input",
            format!(
                "at most {MAX_EMBEDDING_INPUTS} inputs per request, got {}",
                inputs.len()
            ),
        ));
    }
    let batch = inputs.len() > 1;
    for (i, x) in inputs.iter().enumerate() {
        let empty = match x {
            PromptInput::Text(t) => t.is_empty(),
            PromptInput::Tokens(t) => t.is_empty(),
        };
        if empty {
            let param = if batch {
                format!("input[{i}]")
            } else {
                "input".into()
            };
            return Err(ProtocolError::field(
                &param,
                format!("`{param}` must not be empty"),
            ));
        }
    }
    let encoding = match r.encoding_format.as_deref() {
        None | Some("float") => EncodingFormat::Float,
        Some("base64") => EncodingFormat::Base64,
        Some(other) => {
            return Err(ProtocolError::field(
                "encoding_format",
                format!("`encoding_format` must be \"float\" or \"base64\", got {other:?}"),
            ))
        }
    };
    Ok(ValidEmbeddingRequest {
        model: r.model,
        inputs,
        encoding,
        dimensions: r.dimensions.map(|d| d as usize),
        truncate: r.truncate.unwrap_or(false),
        arrival,
    })
}

/// Parses and validates a chat completion body that arrived at `arrival`.
pub fn parse_chat(body: &[u8], arrival: Instant) -> Result<ValidChatRequest, ProtocolError> {
    let mut r: ChatCompletionRequest = from_body(body)?;
    let messages = r
        .messages
        .ok_or_else(|| ProtocolError::field("messages", "`messages` is required"))?;
    if messages.is_empty() {
        return Err(ProtocolError::field(
            "messages",
            "`messages` must not be empty",
        ));
    }
    for (i, m) in messages.iter().enumerate() {
        if let Some(MessageContent::Parts(parts)) = &m.content {
            if let Some(p) = parts.iter().find(|p| p.kind != "text" || p.text.is_none()) {
                return Err(ProtocolError::field(
                    format!("messages[{i}].content"),
                    format!(
                        "`messages[{i}].content`: only text content parts ({{\"type\": \"text\", \"text\": ...}}) are supported, got a part of type `{}`",
                        p.kind
                    ),
                ));
            }
        }
    }
    let constraint = constraint_fields!(r).validate()?;
    let tools = r.tools.unwrap_or_default();
    if let Some(i) = tools.iter().position(|t| t.kind != "function") {
        return Err(ProtocolError::field(
            format!("tools[{i}].type"),
            format!(
                "`tools[{i}].type`: only `function` tools are supported, got `{}`",
                tools[i].kind
            ),
        ));
    }
    let tool_choice = match &r.tool_choice {
        None => ToolMode::Auto,
        Some(ToolChoice::Mode(m)) => match m.as_str() {
            "auto" => ToolMode::Auto,
            "none" => ToolMode::None,
            "required" => ToolMode::Required,
            _ => {
                return Err(ProtocolError::field(
                    "tool_choice",
                    format!("`tool_choice` must be \"none\", \"auto\" or \"required\", got {m:?}"),
                ))
            }
        },
        Some(ToolChoice::Named(v)) => {
            let name = v
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(|n| n.as_str())
                .filter(|_| v.get("type").and_then(|t| t.as_str()) == Some("function"));
            let Some(name) = name else {
                return Err(ProtocolError::field(
                    "tool_choice",
                    "`tool_choice` as an object must be {\"type\": \"function\", \"function\": {\"name\": ...}}",
                ));
            };
            if !tools.iter().any(|t| t.function.name == name) {
                return Err(ProtocolError::field(
                    "tool_choice.function.name",
                    format!("`tool_choice.function.name` is `{name}`, which is not one of `tools`"),
                ));
            }
            ToolMode::Named(name.to_owned())
        }
    };
    if matches!(tool_choice, ToolMode::Required | ToolMode::Named(_)) {
        if tools.is_empty() {
            return Err(ProtocolError::field(
                "tool_choice",
                "`tool_choice` forces a tool call, but `tools` is empty",
            ));
        }
        if let Some(c) = &constraint {
            return Err(ProtocolError::field(
                c.param,
                format!(
                    "`{}` cannot be combined with a forced `tool_choice`: the output is the tool call",
                    c.param
                ),
            ));
        }
    }
    let parallel_tool_calls = r.parallel_tool_calls.unwrap_or(true);
    let logprobs = match (r.logprobs.unwrap_or(false), r.top_logprobs) {
        (true, n) => Some(in_range("top_logprobs", n.unwrap_or(0), 0, MAX_TOP_LOGPROBS)? as usize),
        (false, Some(_)) => {
            return Err(ProtocolError::field(
                "top_logprobs",
                "`top_logprobs` requires `logprobs: true`",
            ))
        }
        (false, None) => None,
    };
    // `max_completion_tokens` is the newer name; it wins when both are sent.
    let (max_field, max_tokens) = match (r.max_completion_tokens, r.max_tokens) {
        (Some(m), _) => ("max_completion_tokens", Some(m)),
        (None, m) => ("max_tokens", m),
    };
    let documents = r.documents.take().unwrap_or_default();
    if let Some(i) = documents
        .iter()
        .position(|d| d.score.is_some_and(|s| !s.is_finite()))
    {
        return Err(ProtocolError::field(
            format!("documents[{i}].score"),
            format!("`documents[{i}].score` must be a finite number"),
        ));
    }
    let memory = r.memory.take().unwrap_or_default();
    let fields = common_fields!(r, max_field, max_tokens);
    let common = fields.validate(arrival, 1)?;
    Ok(ValidChatRequest {
        messages,
        tools,
        tool_choice,
        parallel_tool_calls,
        constraint,
        logprobs,
        documents,
        memory,
        common,
    })
}

/// Parses and validates a text completion body that arrived at `arrival`.
pub fn parse_completion(
    body: &[u8],
    arrival: Instant,
) -> Result<ValidCompletionRequest, ProtocolError> {
    let mut r: CompletionRequest = from_body(body)?;
    if r.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ProtocolError::field(
            "suffix",
            "`suffix` (fill-in-the-middle) is not supported: the served models have no infill template",
        ));
    }
    if r.best_of.is_some_and(|b| b > 1) {
        return Err(ProtocolError::field(
            "best_of",
            "`best_of` above 1 is not supported; use `n`",
        ));
    }
    let constraint = constraint_fields!(r).validate()?;
    let prompts = prompts(r.prompt)?;
    let logprobs = match r.logprobs {
        None => None,
        Some(n) => Some(in_range("logprobs", n, 0, MAX_TOP_LOGPROBS)? as usize),
    };
    // OpenAI's legacy default for completions is 16 tokens.
    let fields = common_fields!(r, "max_tokens", Some(r.max_tokens.unwrap_or(16)));
    let common = fields.validate(arrival, prompts.len())?;
    Ok(ValidCompletionRequest {
        prompts,
        echo: r.echo.unwrap_or(false),
        logprobs,
        constraint,
        common,
    })
}

fn prompts(prompt: Option<Prompt>) -> Result<Vec<PromptInput>, ProtocolError> {
    let bad = "`prompt` must be a string, a list of strings, a list of token ids, or a list of lists of token ids";
    let items = match prompt {
        None => return Err(ProtocolError::field("prompt", "`prompt` is required")),
        Some(Prompt::Text(t)) => return Ok(vec![PromptInput::Text(t)]),
        Some(Prompt::Items(items)) => items,
    };
    if items.is_empty() {
        return Err(ProtocolError::field(
            "prompt",
            "`prompt` must not be an empty list",
        ));
    }
    if items.iter().all(|i| matches!(i, PromptItem::Token(_))) {
        let ids = items
            .into_iter()
            .map(|i| match i {
                PromptItem::Token(t) => t,
                _ => unreachable!("all items are tokens"),
            })
            .collect();
        return Ok(vec![PromptInput::Tokens(ids)]);
    }
    if items.len() > MAX_CHOICES {
        return Err(ProtocolError::field(
            "prompt",
            format!(
                "at most {MAX_CHOICES} prompts per request, got {}",
                items.len()
            ),
        ));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| match item {
            PromptItem::Text(t) => Ok(PromptInput::Text(t)),
            PromptItem::Tokens(ids) if !ids.is_empty() => Ok(PromptInput::Tokens(ids)),
            PromptItem::Tokens(_) => Err(ProtocolError::field(
                format!("prompt[{i}]"),
                format!("`prompt[{i}]` must not be an empty list of token ids"),
            )),
            PromptItem::Token(_) => Err(ProtocolError::field(
                format!("prompt[{i}]"),
                format!("`prompt[{i}]`: {bad}; a batch cannot mix token ids with texts"),
            )),
        })
        .collect()
}

/// The wire fields behind [`Common`], gathered from either request type.
struct CommonFields {
    model: Option<String>,
    max_field: &'static str,
    max_tokens: Option<u64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    n: Option<u64>,
    stop: Option<Stop>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    seed: Option<i64>,
    top_k: Option<i64>,
    min_p: Option<f32>,
    repetition_penalty: Option<f32>,
    ignore_eos: Option<bool>,
    priority: Option<i64>,
    cache_salt: Option<String>,
    metadata: Option<serde_json::Map<String, Value>>,
    user: Option<String>,
}

/// OpenAI's limits on `metadata`.
const MAX_METADATA_KEYS: usize = 16;
const MAX_METADATA_VALUE: usize = 512;

impl CommonFields {
    fn validate(self, arrival: Instant, prompts: usize) -> Result<Common, ProtocolError> {
        let d = Sampling::default();
        let sampling = Sampling {
            temperature: f32_in("temperature", self.temperature, 0.0, 2.0, false)?
                .unwrap_or(d.temperature),
            top_p: f32_in("top_p", self.top_p, 0.0, 1.0, true)?.unwrap_or(d.top_p),
            top_k: match self.top_k {
                None | Some(-1) | Some(0) => 0,
                Some(k) => in_range("top_k", k, 1, MAX_TOKENS_LIMIT as i64)? as usize,
            },
            min_p: f32_in("min_p", self.min_p, 0.0, 1.0, false)?.unwrap_or(d.min_p),
            repetition_penalty: f32_in(
                "repetition_penalty",
                self.repetition_penalty,
                0.0,
                10.0,
                true,
            )?
            .unwrap_or(d.repetition_penalty),
            presence_penalty: f32_in("presence_penalty", self.presence_penalty, -2.0, 2.0, false)?
                .unwrap_or(d.presence_penalty),
            frequency_penalty: f32_in(
                "frequency_penalty",
                self.frequency_penalty,
                -2.0,
                2.0,
                false,
            )?
            .unwrap_or(d.frequency_penalty),
            seed: self.seed.map(|s| s as u64),
        };
        let n = in_range("n", self.n.unwrap_or(1), 1, MAX_N)? as usize;
        if prompts * n > MAX_CHOICES {
            return Err(ProtocolError::field(
                "n",
                format!("{prompts} prompts × n = {n} exceeds {MAX_CHOICES} choices per request"),
            ));
        }
        let max_tokens = match self.max_tokens {
            None => None,
            Some(m) => Some(in_range(self.max_field, m, 1, MAX_TOKENS_LIMIT)? as usize),
        };
        let stop = match self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) if s.is_empty() => Vec::new(),
            Some(Stop::One(s)) => vec![s],
            Some(Stop::Many(v)) if v.len() > MAX_STOPS => {
                return Err(ProtocolError::field(
                    "stop",
                    format!("`stop` takes at most {MAX_STOPS} strings, got {}", v.len()),
                ))
            }
            Some(Stop::Many(v)) => {
                if let Some(i) = v.iter().position(String::is_empty) {
                    return Err(ProtocolError::field(
                        format!("stop[{i}]"),
                        format!("`stop[{i}]` must not be empty"),
                    ));
                }
                v
            }
        };
        let stream = self.stream.unwrap_or(false);
        Ok(Common {
            model: self.model,
            max_tokens,
            n,
            stream,
            include_usage: self
                .stream_options
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
            stop,
            sampling,
            priority: in_range("priority", self.priority.unwrap_or(0), -1000, 1000)? as i32,
            cache_salt: self.cache_salt,
            ignore_eos: self.ignore_eos.unwrap_or(false),
            metadata: metadata(self.metadata)?,
            user: self.user,
            arrival,
        })
    }
}

/// `metadata`: string values (booleans and numbers are taken as their text).
fn metadata(
    m: Option<serde_json::Map<String, Value>>,
) -> Result<std::collections::BTreeMap<String, String>, ProtocolError> {
    let m = m.unwrap_or_default();
    if m.len() > MAX_METADATA_KEYS {
        return Err(ProtocolError::field(
            "metadata",
            format!(
                "`metadata` takes at most {MAX_METADATA_KEYS} keys, got {}",
                m.len()
            ),
        ));
    }
    m.into_iter()
        .map(|(k, v)| {
            let text = match v {
                Value::String(s) => s,
                Value::Bool(b) => b.to_string(),
                Value::Number(n) => n.to_string(),
                _ => {
                    return Err(ProtocolError::field(
                        format!("metadata.{k}"),
                        format!("`metadata.{k}` must be a string"),
                    ))
                }
            };
            if text.len() > MAX_METADATA_VALUE {
                return Err(ProtocolError::field(
                    format!("metadata.{k}"),
                    format!("`metadata.{k}` is longer than {MAX_METADATA_VALUE} characters"),
                ));
            }
            Ok((k, text))
        })
        .collect()
}

fn in_range<T: PartialOrd + std::fmt::Display + Copy>(
    field: &str,
    x: T,
    lo: T,
    hi: T,
) -> Result<T, ProtocolError> {
    if x < lo || x > hi {
        return Err(ProtocolError::field(
            field,
            format!("`{field}` must be in [{lo}, {hi}], got {x}"),
        ));
    }
    Ok(x)
}

fn f32_in(
    field: &str,
    x: Option<f32>,
    lo: f32,
    hi: f32,
    lo_open: bool,
) -> Result<Option<f32>, ProtocolError> {
    let Some(x) = x else { return Ok(None) };
    let ok = if lo_open { x > lo } else { x >= lo } && x <= hi;
    if !ok {
        let open = if lo_open { "(" } else { "[" };
        return Err(ProtocolError::field(
            field,
            format!("`{field}` must be in {open}{lo}, {hi}], got {x}"),
        ));
    }
    Ok(Some(x))
}

/// Deserializes a body, naming the field a type error is at.
fn from_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ProtocolError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(_) => ProtocolError::body("request body must be a JSON object"),
            Err(e) => ProtocolError::body(format!("request body is not valid JSON: {e}")),
        });
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() || path == "." {
            return ProtocolError::body(format!("request body is not valid JSON: {inner}"));
        }
        let mut why = inner.to_string();
        if let Some(at) = why.rfind(" at line ") {
            why.truncate(at);
        }
        ProtocolError::field(&path, format!("`{path}`: {}", friendlier(&path, why)))
    })?;
    de.end()
        .map_err(|e| ProtocolError::body(format!("request body is not valid JSON: {e}")))?;
    Ok(value)
}

/// serde's messages for untagged enums say only "did not match any variant";
/// say what the field accepts instead.
fn friendlier(path: &str, why: String) -> String {
    if !why.starts_with("data did not match any variant") {
        return why;
    }
    let last = path.rsplit('.').next().unwrap_or(path);
    let last = last.split('[').next().unwrap_or(last);
    match last {
        "stop" => "must be a string or a list of at most 4 strings".into(),
        "prompt" => "must be a string, a list of strings, a list of token ids (integers in 0..2^32), or a list of lists of token ids".into(),
        "content" => "must be a string or a list of content parts".into(),
        "tool_choice" => "must be \"none\", \"auto\", \"required\" or an object naming a function".into(),
        "input" => "must be a string, a list of strings, a list of token ids, or a list of lists of token ids".into(),
        _ => why,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chat(v: serde_json::Value) -> Result<ValidChatRequest, ProtocolError> {
        parse_chat(v.to_string().as_bytes(), Instant::now())
    }

    fn completion(v: serde_json::Value) -> Result<ValidCompletionRequest, ProtocolError> {
        parse_completion(v.to_string().as_bytes(), Instant::now())
    }

    fn user(extra: serde_json::Value) -> serde_json::Value {
        let mut b = json!({"messages": [{"role": "user", "content": "hi"}]});
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        b
    }

    fn param(e: ProtocolError) -> String {
        e.param.unwrap_or_default()
    }

    #[test]
    fn a_chat_request_validates_with_openai_defaults() {
        let r = chat(user(
            json!({"model": "m", "stop": "END", "top_k": 5, "cache_salt": "s"}),
        ))
        .unwrap();
        assert_eq!(r.common.model.as_deref(), Some("m"));
        assert_eq!(r.common.sampling.temperature, 1.0);
        assert_eq!(r.common.sampling.top_k, 5);
        assert_eq!(r.common.stop, ["END"]);
        assert_eq!(r.common.n, 1);
        assert_eq!(r.common.max_tokens, None);
        assert_eq!(r.common.cache_salt.as_deref(), Some("s"));
        assert_eq!(r.messages[0].text(), "hi");
        assert!(r.logprobs.is_none() && r.tools.is_empty());
    }

    #[test]
    fn metadata_takes_strings_and_marks_private_requests() {
        let r = chat(user(
            json!({"metadata": {"private": "TRUE", "team": "a", "n": 3}}),
        ))
        .unwrap();
        assert!(r.common.is_private());
        assert_eq!(r.common.metadata["n"], "3");
        let r = completion(json!({"prompt": "p", "metadata": {"private": true}})).unwrap();
        assert!(r.common.is_private());
        assert!(!chat(user(json!({}))).unwrap().common.is_private());
        let e = chat(user(json!({"metadata": {"k": {"nested": 1}}}))).unwrap_err();
        assert_eq!(param(e), "metadata.k");
        let many: serde_json::Map<String, serde_json::Value> =
            (0..17).map(|i| (format!("k{i}"), json!("v"))).collect();
        let e = chat(user(json!({ "metadata": many }))).unwrap_err();
        assert!(
            param(e.clone()) == "metadata" && e.message.contains("16"),
            "{e}"
        );
        let e = chat(user(json!({"metadata": {"k": "x".repeat(513)}}))).unwrap_err();
        assert_eq!(param(e), "metadata.k");
    }

    #[test]
    fn errors_name_the_field() {
        for (body, want) in [
            (user(json!({"top_p": 1.5})), "top_p"),
            (user(json!({"temperature": "hot"})), "temperature"),
            (user(json!({"n": 0})), "n"),
            (user(json!({"n": -1})), "n"),
            (user(json!({"stop": 5})), "stop"),
            (user(json!({"stop": ["a", ""]})), "stop[1]"),
            (user(json!({"max_tokens": 0})), "max_tokens"),
            (
                user(json!({"max_completion_tokens": 0})),
                "max_completion_tokens",
            ),
            (user(json!({"top_logprobs": 2})), "top_logprobs"),
            (user(json!({"top_k": "x"})), "top_k"),
            (user(json!({"priority": 5000})), "priority"),
            (
                user(json!({"response_format": {"type": "xml"}})),
                "response_format.type",
            ),
            (user(json!({"tool_choice": "required"})), "tool_choice"),
            (user(json!({"tool_choice": "sometimes"})), "tool_choice"),
            (
                user(
                    json!({"tools": [{"type": "function", "function": {"name": "f"}}],
                    "tool_choice": {"type": "function", "function": {"name": "g"}}}),
                ),
                "tool_choice.function.name",
            ),
            (
                user(
                    json!({"tools": [{"type": "function", "function": {"name": "f"}}],
                    "tool_choice": "required", "guided_regex": "a"}),
                ),
                "guided_regex",
            ),
            (json!({"messages": []}), "messages"),
            (json!({}), "messages"),
            (
                json!({"messages": [{"role": "wizard", "content": "x"}]}),
                "messages[0].role",
            ),
            (
                json!({"messages": [{"role": "user", "content": 3}]}),
                "messages[0].content",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
                "messages[0].content",
            ),
        ] {
            let e = chat(body.clone()).unwrap_err();
            assert_eq!(param(e.clone()), want, "{body}: {e}");
            assert!(e.message.contains(want.split('[').next().unwrap()), "{e}");
        }
        let e = chat(user(json!({"top_p": 1.5}))).unwrap_err();
        assert_eq!(e.message, "`top_p` must be in (0, 1], got 1.5");
        let e = chat(user(json!({"temperature": "hot"}))).unwrap_err();
        assert!(!e.message.contains("line 1"), "no parser positions: {e}");
    }

    #[test]
    fn bodies_that_are_not_objects_are_refused_as_a_whole() {
        for body in [&b""[..], b"[1]", b"{", b"nope", b"{\"messages\": []} x"] {
            let e = parse_chat(body, Instant::now()).unwrap_err();
            assert_eq!(e.param, None, "{e}");
        }
    }

    #[test]
    fn tool_choice_none_keeps_the_tools_but_turns_parsing_off() {
        let tools = json!([{"type": "function", "function": {"name": "f"}}]);
        let r = chat(user(json!({"tools": tools}))).unwrap();
        assert_eq!((r.tools.len(), r.tool_choice), (1, ToolMode::Auto));
        let r = chat(user(json!({"tools": tools, "tool_choice": "none"}))).unwrap();
        assert_eq!((r.tools.len(), r.tool_choice), (1, ToolMode::None));
    }

    #[test]
    fn forced_tool_choices() {
        let tools = json!([{"type": "function", "function": {"name": "f"}}]);
        let r = chat(user(json!({"tools": tools, "tool_choice": "required"}))).unwrap();
        assert_eq!(
            (r.tool_choice, r.parallel_tool_calls),
            (ToolMode::Required, true)
        );
        let named = json!({"type": "function", "function": {"name": "f"}});
        let r = chat(user(
            json!({"tools": tools, "tool_choice": named, "parallel_tool_calls": false}),
        ))
        .unwrap();
        assert_eq!(
            (r.tool_choice, r.parallel_tool_calls),
            (ToolMode::Named("f".into()), false)
        );
        let e = chat(user(json!({"tool_choice": "required"}))).unwrap_err();
        assert!(e.message.contains("`tools` is empty"), "{e}");
    }

    #[test]
    fn completion_prompts_of_every_shape() {
        let r = completion(json!({"prompt": "hi"})).unwrap();
        assert_eq!(r.prompts, [PromptInput::Text("hi".into())]);
        assert_eq!(r.common.max_tokens, Some(16), "legacy default");
        let r = completion(json!({"prompt": [1, 2, 3]})).unwrap();
        assert_eq!(r.prompts, [PromptInput::Tokens(vec![1, 2, 3])]);
        let r = completion(json!({"prompt": ["a", [4, 5]], "n": 2, "echo": true, "logprobs": 2}))
            .unwrap();
        assert_eq!(r.choices(), 4);
        assert!(r.echo);
        assert_eq!(r.logprobs, Some(2));
        for (body, want) in [
            (json!({"prompt": ["ok", 7]}), "prompt[1]"),
            (json!({"prompt": []}), "prompt"),
            (json!({"prompt": [[]]}), "prompt[0]"),
            (json!({"prompt": {"x": 1}}), "prompt"),
            (json!({"prompt": [-1]}), "prompt"),
            (json!({}), "prompt"),
            (json!({"prompt": "x", "suffix": "y"}), "suffix"),
            (json!({"prompt": "x", "logprobs": 50}), "logprobs"),
            (json!({"prompt": vec!["a"; 40], "n": 2}), "n"),
        ] {
            let e = completion(body.clone()).unwrap_err();
            assert_eq!(param(e.clone()), want, "{body}: {e}");
        }
    }

    #[test]
    fn embedding_inputs_of_every_shape_and_their_errors() {
        let e = |v: serde_json::Value| parse_embeddings(v.to_string().as_bytes(), Instant::now());
        let r = e(json!({"input": "hi"})).unwrap();
        assert_eq!((r.inputs.len(), r.encoding), (1, EncodingFormat::Float));
        let r = e(json!({"input": ["a", "b"], "encoding_format": "base64", "dimensions": 384}))
            .unwrap();
        assert_eq!(
            (r.inputs.len(), r.encoding, r.dimensions),
            (2, EncodingFormat::Base64, Some(384))
        );
        assert_eq!(
            e(json!({"input": [1, 2]})).unwrap().inputs,
            [PromptInput::Tokens(vec![1, 2])]
        );
        assert_eq!(e(json!({"input": [[1], [2, 3]]})).unwrap().inputs.len(), 2);
        for (body, want) in [
            (json!({}), "input"),
            (json!({"input": []}), "input"),
            (json!({"input": ""}), "input"),
            (json!({"input": ["a", ""]}), "input[1]"),
            (json!({"input": 5}), "input"),
            (
                json!({"input": "a", "encoding_format": "int8"}),
                "encoding_format",
            ),
        ] {
            let err = e(body.clone()).unwrap_err();
            assert_eq!(err.param.as_deref(), Some(want), "{body}: {err}");
        }
    }

    #[test]
    fn arrival_is_carried() {
        let t = Instant::now();
        let r = parse_chat(user(json!({})).to_string().as_bytes(), t).unwrap();
        assert_eq!(r.common.arrival, t);
    }
}
