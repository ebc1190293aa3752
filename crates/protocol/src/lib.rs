//! The OpenAI API as types, written once: requests as clients send them, responses
//! and SSE chunks as servers write them, the error object, embeddings — used by the
//! server, by `inferd bench`'s client and by upstream clients alike.
//!
//! The edge turns a raw body into a [`ValidChatRequest`] or
//! [`ValidCompletionRequest`] ([`parse_chat`], [`parse_completion`]): every field
//! typed and range-checked, the OpenAI-level sampling settings gathered, the
//! arrival instant attached. A [`ProtocolError`] names the offending field
//! (`messages[0].role`, `top_p`) the way OpenAI's API does. Backends accept only
//! `Valid*` requests, so nothing past the edge re-checks a field.

mod constraint;
mod error;
mod request;
mod response;
mod valid;

pub use constraint::{ConstraintFields, ConstraintKind, OutputConstraint};
pub use error::{ErrorBody, ErrorObject, ProtocolError};
pub use request::{
    ChatCompletionRequest, ChatMessage, CompletionRequest, ContentPart, Document, EmbeddingInput,
    EmbeddingRequest, FunctionCall, FunctionDef, MessageContent, Prompt, PromptItem,
    ResponseFormat, Role, Stop, StreamOptions, Tool, ToolCall, ToolChoice,
};
pub use response::{
    AssistantMessage, ChatChoice, ChatCompletionChunk, ChatCompletionResponse, ChoiceLogprobs,
    ChunkChoice, CompletionChoice, CompletionLogprobs, CompletionResponse, Confidence,
    ContextReport, Delta, Embedding, EmbeddingResponse, EmbeddingUsage, EmbeddingVector,
    FinishReason, FunctionCallDelta, Handled, IntentLabel, ModelList, ModelObject,
    PromptTokensDetails, Route, RouteAttempt, SectionTokens, Timings, TokenLogprob, ToolCallDelta,
    ToolsNarrowed, TopLogprob, Usage,
};
pub use valid::{
    parse_chat, parse_completion, parse_embeddings, Common, EncodingFormat, PromptInput, Sampling,
    ToolMode, ValidChatRequest, ValidCompletionRequest, ValidEmbeddingRequest, MAX_CHOICES,
    MAX_EMBEDDING_INPUTS, MAX_STOPS,
};
