//! Constrained decoding with [llguidance]: a request's [`ConstraintKind`] (JSON
//! schema, any JSON object, regex, choice, Lark or GBNF grammar, forced tool
//! calls) compiled against one model's vocabulary into a [`GrammarConstraint`],
//! which the engine asks for a token mask before each sampled token.
//!
//! llguidance is the grammar engine behind llama.cpp's and vLLM's guidance
//! backends: an Earley parser over a lazy derivative-based lexer, which computes a
//! mask over a 50,000-token vocabulary in tens of microseconds by walking the
//! token trie once. [`Grammars`] holds the per-model state (the trie built from
//! the model's tokenizer, the parser factory) and a small cache of compiled
//! grammars, so a schema sent with every request is compiled once.
//!
//! JSON is generated compactly but readably (`", "` and `": "`, no other
//! whitespace), so a small model cannot wander off into endless newlines inside
//! an object. Properties come out in the order the schema lists them.

mod gbnf;
mod tool_stream;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use inferd_engine::{Constraint, TokenMask};
use inferd_protocol::{ConstraintKind, FunctionDef};
use inferd_tokenizer::{TokenType, Tokenizer};
use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory};
use serde_json::{json, Value};
use toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};

pub use gbnf::to_lark as gbnf_to_lark;
pub use tool_stream::{CallPiece, ToolCallStream};

/// The tags around one tool call in the model's output (the Hermes format the
/// supported chat templates use).
pub const TOOL_CALL_OPEN: &str = "<tool_call>";
pub const TOOL_CALL_CLOSE: &str = "</tool_call>";

/// How many compiled grammars [`Grammars`] keeps.
const CACHE_ENTRIES: usize = 64;

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum GrammarError {
    /// The constraint cannot be compiled: an unsupported JSON-schema keyword, a
    /// regex or grammar syntax error... The message is the compiler's.
    #[error("{0}")]
    Compile(String),
    /// The model's vocabulary cannot carry a constraint.
    #[error("constrained decoding is unavailable for this model: {0}")]
    Vocabulary(String),
}

/// Per-model grammar state: the token trie, the parser factory and a cache of
/// compiled grammars. Build once per model; share with `Arc`.
pub struct Grammars {
    factory: ParserFactory,
    env: TokEnv,
    eos: Arc<[u32]>,
    cache: Mutex<HashMap<String, Matcher>>,
}

/// A compiled constraint, ready for one sequence.
pub struct Compiled {
    pub constraint: GrammarConstraint,
    /// Zero when the grammar came from the cache.
    pub compile_time: Duration,
}

impl Grammars {
    /// Builds the trie of `tokenizer`'s vocabulary, padded to `vocab_size` (the
    /// width of the model's logits). End-of-sequence tokens are the tokenizer's
    /// stop tokens.
    pub fn new(tokenizer: Arc<Tokenizer>, vocab_size: usize) -> Result<Grammars, GrammarError> {
        let eos: Vec<u32> = tokenizer.stop_token_ids();
        let Some(&first) = eos.first() else {
            return Err(GrammarError::Vocabulary(
                "the tokenizer has no end-of-sequence token".into(),
            ));
        };
        if tokenizer.vocab_size() > vocab_size {
            return Err(GrammarError::Vocabulary(format!(
                "the tokenizer has {} tokens but the model's logits only {vocab_size}",
                tokenizer.vocab_size()
            )));
        }
        let words: Vec<Vec<u8>> = (0..vocab_size as u32)
            .map(|id| match tokenizer.token_bytes(id) {
                Some(b) if tokenizer.token_type(id) != Some(TokenType::Control) => b.to_vec(),
                // Control tokens (and padding past the tokenizer) are special:
                // a grammar never produces them as text.
                other => {
                    let name = other
                        .map(|b| String::from_utf8_lossy(b).into_owned())
                        .unwrap_or_else(|| format!("<[{id}]>"));
                    let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    w.extend_from_slice(name.as_bytes());
                    w
                }
            })
            .collect();
        let mut info = TokRxInfo::new(vocab_size as u32, first);
        info.tok_bos = tokenizer.bos_id();
        let trie = TokTrie::from(&info, &words).with_eos_tokens(&eos);
        let env: TokEnv = Arc::new(Env { trie, tokenizer });
        let mut factory =
            ParserFactory::new_simple(&env).map_err(|e| GrammarError::Vocabulary(e.to_string()))?;
        factory.quiet();
        Ok(Grammars {
            factory,
            env,
            eos: eos.into(),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Compiles `kind` (or takes it from the cache).
    pub fn compile(&self, kind: &ConstraintKind) -> Result<Compiled, GrammarError> {
        let grammar = top_level(kind)?;
        let key = serde_json::to_string(&grammar).expect("a grammar serializes");
        let cached = self.cache.lock().expect("cache lock").get(&key).cloned();
        let (matcher, compile_time) = match cached {
            Some(m) => (m, Duration::ZERO),
            None => {
                let t = Instant::now();
                let m = self.matcher(grammar)?;
                let elapsed = t.elapsed();
                let mut cache = self.cache.lock().expect("cache lock");
                if cache.len() >= CACHE_ENTRIES {
                    cache.clear();
                }
                cache.insert(key, m.clone());
                (m, elapsed)
            }
        };
        Ok(Compiled {
            constraint: GrammarConstraint {
                matcher,
                eos: self.eos.clone(),
            },
            compile_time,
        })
    }
}

impl Grammars {
    /// Compiles `kind` without the cache (for measuring compile time).
    pub fn compile_uncached(&self, kind: &ConstraintKind) -> Result<Compiled, GrammarError> {
        let t = Instant::now();
        let matcher = self.matcher(top_level(kind)?)?;
        Ok(Compiled {
            constraint: GrammarConstraint {
                matcher,
                eos: self.eos.clone(),
            },
            compile_time: t.elapsed(),
        })
    }

    /// For `tool_choice: "auto"`: the output is free until the model opens a
    /// tool call (`<tool_call>`); from there to the closing tag the call is
    /// constrained like a forced one (a name among `tools`, arguments valid for
    /// its `parameters`); after it the output is free again.
    pub fn tool_calls_when_started(
        &self,
        tools: &[FunctionDef],
    ) -> Result<LazyToolCalls, GrammarError> {
        let body = tool_call_body(tools);
        let key = format!("lazy:{body}");
        let cached = self.cache.lock().expect("cache lock").get(&key).cloned();
        let template = match cached {
            Some(m) => m,
            None => {
                let m = self.matcher(TopLevelGrammar::from_lark(format!(
                    "start: /[ \\n]*/ %json {body} /[ \\n]*/ {}\n",
                    serde_json::to_string(TOOL_CALL_CLOSE).expect("serializes")
                )))?;
                self.cache
                    .lock()
                    .expect("cache lock")
                    .insert(key, m.clone());
                m
            }
        };
        Ok(LazyToolCalls {
            template,
            active: None,
            tail: Vec::new(),
            env: self.env.clone(),
            eos: self.eos.clone(),
        })
    }

    fn matcher(&self, grammar: TopLevelGrammar) -> Result<Matcher, GrammarError> {
        let parser = self
            .factory
            .create_parser(grammar)
            .map_err(|e| GrammarError::Compile(e.to_string()))?;
        let m = Matcher::new(Ok(parser));
        // The first mask, computed once on a throw-away copy: a grammar that
        // cannot even start (or trips a parser limit there) is refused now, as a
        // compile error, not in the middle of a generation.
        if let Some(e) = m.get_error() {
            return Err(GrammarError::Compile(e));
        }
        let mut probe = m.clone();
        if let Err(e) = probe.compute_mask() {
            return Err(GrammarError::Compile(runtime_error(e)));
        }
        Ok(m)
    }
}

/// The llguidance grammar for a constraint.
fn top_level(kind: &ConstraintKind) -> Result<TopLevelGrammar, GrammarError> {
    Ok(match kind {
        ConstraintKind::JsonObject => {
            TopLevelGrammar::from_json_schema(with_layout(json!({"type": "object"})))
        }
        ConstraintKind::JsonSchema(schema) => {
            TopLevelGrammar::from_json_schema(with_layout(schema.clone()))
        }
        ConstraintKind::Regex(rx) => TopLevelGrammar::from_regex(rx),
        ConstraintKind::Choice(choices) => {
            let alts: Vec<String> = choices
                .iter()
                .map(|c| serde_json::to_string(c).expect("a string serializes"))
                .collect();
            // One terminal (a lexer-level alternation), so thousands of choices
            // stay one parser item instead of one each.
            TopLevelGrammar::from_lark(format!("start: CHOICE\nCHOICE: {}", alts.join(" | ")))
        }
        ConstraintKind::Lark(src) => TopLevelGrammar::from_lark(src.clone()),
        ConstraintKind::Gbnf(src) => {
            TopLevelGrammar::from_lark(gbnf::to_lark(src).map_err(GrammarError::Compile)?)
        }
        ConstraintKind::ToolCalls { tools, parallel } => {
            TopLevelGrammar::from_lark(tool_calls_lark(tools, *parallel))
        }
    })
}

/// Separators and whitespace for generated JSON, unless the schema sets its own
/// (`x-guidance`, llguidance's schema extension).
fn with_layout(mut schema: Value) -> Value {
    if let Value::Bool(true) = schema {
        schema = json!({});
    }
    if let Value::Object(o) = &mut schema {
        o.entry("x-guidance").or_insert_with(
            || json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}),
        );
    }
    schema
}

/// One call (or, with `parallel`, one or more separated by newlines), each
/// `<tool_call>\n{"name": ..., "arguments": ...}\n</tool_call>` with the
/// arguments matching that tool's `parameters`.
fn tool_calls_lark(tools: &[FunctionDef], parallel: bool) -> String {
    let schema = tool_call_body(tools);
    let open = serde_json::to_string(&format!("{TOOL_CALL_OPEN}\n")).expect("serializes");
    let close = serde_json::to_string(&format!("\n{TOOL_CALL_CLOSE}")).expect("serializes");
    let start = if parallel {
        "start: call (\"\\n\" call)*"
    } else {
        "start: call"
    };
    format!("{start}\ncall: {open} %json {schema} {close}\n")
}

/// The JSON schema of one call's object: `{"name": <one of tools>, "arguments":
/// <that tool's parameters>}`, laid out as [`with_layout`] says.
fn tool_call_body(tools: &[FunctionDef]) -> Value {
    let variants: Vec<Value> = tools
        .iter()
        .map(|t| {
            let params = match &t.parameters {
                Some(p) if p.as_object().is_some_and(|o| !o.is_empty()) => p.clone(),
                _ => json!({"type": "object", "properties": {}}),
            };
            json!({
                "type": "object",
                "properties": {"name": {"const": t.name}, "arguments": params},
                "required": ["name", "arguments"],
                "additionalProperties": false,
            })
        })
        .collect();
    with_layout(json!({"anyOf": variants}))
}

/// The model's vocabulary as llguidance sees it.
struct Env {
    trie: TokTrie,
    tokenizer: Arc<Tokenizer>,
}

impl TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.tokenize_with_greedy_fallback(s, |s| {
            self.tokenizer.encode(s, false).unwrap_or_default()
        })
    }
}

/// One sequence's grammar state.
pub struct GrammarConstraint {
    matcher: Matcher,
    eos: Arc<[u32]>,
}

impl GrammarConstraint {
    /// Whether the output so far is complete under the grammar.
    pub fn is_accepting(&mut self) -> bool {
        self.matcher.is_accepting().unwrap_or(false)
    }
}

impl Constraint for GrammarConstraint {
    fn fill_mask(&mut self, mask: &mut TokenMask) -> Result<(), String> {
        let allowed = self.matcher.compute_mask_or_eos().map_err(runtime_error)?;
        copy_mask(allowed.as_slice(), mask);
        Ok(())
    }

    fn commit(&mut self, token: u32) -> Result<(), String> {
        self.matcher.consume_token(token).map_err(runtime_error)
    }

    fn is_end(&self, token: u32) -> bool {
        self.eos.contains(&token)
    }

    fn boxed_clone(&self) -> Box<dyn Constraint> {
        Box::new(GrammarConstraint {
            matcher: self.matcher.clone(),
            eos: self.eos.clone(),
        })
    }
}

/// See [`Grammars::tool_calls_when_started`].
pub struct LazyToolCalls {
    /// The call grammar, fresh; cloned when a call opens.
    template: Matcher,
    /// Inside a call.
    active: Option<Matcher>,
    /// The output's last bytes while free, to spot the opening tag across tokens.
    tail: Vec<u8>,
    env: TokEnv,
    eos: Arc<[u32]>,
}

impl LazyToolCalls {
    /// Whether a call is open (its grammar in force).
    pub fn in_call(&self) -> bool {
        self.active.is_some()
    }
}

impl Constraint for LazyToolCalls {
    fn fill_mask(&mut self, mask: &mut TokenMask) -> Result<(), String> {
        match &mut self.active {
            None => {
                mask.words_mut().fill(u32::MAX);
                Ok(())
            }
            Some(m) => {
                let allowed = m.compute_mask().map_err(runtime_error)?;
                copy_mask(allowed.as_slice(), mask);
                Ok(())
            }
        }
    }

    fn commit(&mut self, token: u32) -> Result<(), String> {
        if let Some(m) = &mut self.active {
            m.consume_token(token).map_err(runtime_error)?;
            if m.is_stopped() {
                self.active = None;
            }
            return Ok(());
        }
        let trie = self.env.tok_trie();
        if trie.is_special_token(token) {
            self.tail.clear();
            return Ok(());
        }
        self.tail.extend_from_slice(trie.token(token));
        let open = TOOL_CALL_OPEN.as_bytes();
        match self.tail.windows(open.len()).position(|w| w == open) {
            Some(at) => {
                let rest = self.tail[at + open.len()..].to_vec();
                self.tail.clear();
                let mut m = self.template.clone();
                // Bytes of the same token after the tag belong to the call.
                if !rest.is_empty() {
                    let ids = self.env.tokenize_bytes(&rest);
                    m.consume_tokens(&ids).map_err(runtime_error)?;
                }
                self.active = Some(m);
            }
            None => {
                let keep = self.tail.len().saturating_sub(open.len());
                self.tail.drain(..keep);
            }
        }
        Ok(())
    }

    fn is_free(&self) -> bool {
        self.active.is_none()
    }

    fn is_end(&self, token: u32) -> bool {
        self.eos.contains(&token)
    }

    fn boxed_clone(&self) -> Box<dyn Constraint> {
        Box::new(LazyToolCalls {
            template: self.template.clone(),
            active: self.active.clone(),
            tail: self.tail.clone(),
            env: self.env.clone(),
            eos: self.eos.clone(),
        })
    }
}

/// Copies llguidance's allowed-token bits into the engine's mask.
fn copy_mask(src: &[u32], mask: &mut TokenMask) {
    let dst = mask.words_mut();
    let n = src.len().min(dst.len());
    dst[..n].copy_from_slice(&src[..n]);
    dst[n..].fill(0);
}

/// A parser error during generation: its first line (llguidance follows it with a
/// dump of the parser state, which is for its developers).
fn runtime_error(e: impl std::fmt::Display) -> String {
    let text = e.to_string();
    text.lines().next().unwrap_or_default().to_owned()
}
