//! [`ChatTemplate`]: Hugging Face chat templates (`tokenizer.chat_template`) on minijinja.
//!
//! HF renders templates with Jinja2's `ImmutableSandboxedEnvironment(trim_blocks=True,
//! lstrip_blocks=True)` plus the loop-controls extension, a `raise_exception` global and
//! its own `tojson` (Python `json.dumps`, see [`crate::pyjson`]). We mirror that setup:
//! minijinja with the same whitespace settings, `{% break %}`/`{% continue %}`,
//! minijinja-contrib's pycompat method shims (`.strip()`, `.startswith()`, `.items()`,
//! `.get()`...), and undefined values lenient as in Jinja2 (an undefined variable
//! renders empty and is falsy; using an attribute of one is an error), and booleans and
//! none print as Python's `True`/`False`/`None`. Context variables are the ones HF
//! passes: `messages`, `tools` (none when absent, so `tools is defined` holds as in HF),
//! `add_generation_prompt`, `bos_token`, `eos_token`, plus any caller-supplied extras
//! (`enable_thinking`...).
//!
//! Not supported: HF's `{% generation %}` tag (a syntax error here) and the
//! `strftime_now` global (templates that test `strftime_now is defined` fall back to
//! their built-in date).

use std::fmt;

use minijinja::value::{merge_maps, Kwargs, ValueKind};
use minijinja::{context, escape_formatter, Environment, Error, ErrorKind, Output, State, Value};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TokenizerError};
use crate::pyjson::{self, DumpOptions};
use crate::spec::TokenizerSpec;

/// Name under which the template is registered; appears in minijinja's messages.
const TEMPLATE_NAME: &str = "chat_template";

/// One chat message as templates see it (`message['role']`, `message['content']`).
/// Extra fields (`tool_calls`, `name`...) are passed through via `extra`; for
/// multi-part content pass `serde_json::Value` messages instead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `"system"`, `"user"`, `"assistant"`, `"tool"`...
    pub role: String,
    /// The message text.
    pub content: String,
    /// Any other fields, flattened into the message object.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl ChatMessage {
    /// A message with just a role and text content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
            extra: serde_json::Map::new(),
        }
    }
}

/// A compiled chat template with the model's BOS/EOS token texts bound.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    renders_tools: bool,
}

impl ChatTemplate {
    /// Compiles `source`; a syntax error is reported with its line.
    /// `bos_token`/`eos_token` are the token *texts* (e.g. `"<|im_start|>"`).
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(python_formatter);
        minijinja_contrib::add_to_environment(&mut env);
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned(TEMPLATE_NAME, source.to_owned())
            .map_err(template_error)?;
        Ok(Self {
            env,
            bos_token: bos_token.to_owned(),
            eos_token: eos_token.to_owned(),
            renders_tools: source.contains("tools"),
        })
    }

    /// Whether the template reads the `tools` variable at all. Many small models'
    /// templates do not; a caller with tools then has to describe them itself.
    pub fn renders_tools(&self) -> bool {
        self.renders_tools
    }

    /// The template a model file ships (`tokenizer.chat_template`), with BOS/EOS texts
    /// taken from its vocabulary (empty when the model has none); `None` when the file
    /// has no template.
    pub fn from_spec(spec: &TokenizerSpec) -> Result<Option<Self>> {
        let Some(source) = spec.chat_template.as_deref() else {
            return Ok(None);
        };
        let text = |field: &'static str, id: Option<u32>| -> Result<&str> {
            match id {
                None => Ok(""),
                Some(id) => spec
                    .tokens
                    .get(id as usize)
                    .map(String::as_str)
                    .ok_or_else(|| TokenizerError::InvalidSpec {
                        field,
                        reason: format!(
                            "id {id} is out of range for a vocabulary of {} tokens",
                            spec.tokens.len()
                        ),
                    }),
            }
        };
        let bos = text("tokenizer.ggml.bos_token_id", spec.bos_id)?;
        let eos = text("tokenizer.ggml.eos_token_id", spec.eos_id)?;
        Self::new(source, bos, eos).map(Some)
    }

    /// Renders the prompt for `messages` (any serializable shape, usually
    /// [`ChatMessage`] or `serde_json::Value`), optional tool schemas, and whether to
    /// open the assistant's turn at the end.
    pub fn render<M: Serialize>(
        &self,
        messages: &[M],
        tools: Option<&[serde_json::Value]>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        self.render_with_context(
            messages,
            tools,
            add_generation_prompt,
            &serde_json::Map::new(),
        )
    }

    /// As [`render`](Self::render), with extra template variables (HF's
    /// `chat_template_kwargs`). The named arguments win over extras of the same name.
    pub fn render_with_context<M: Serialize>(
        &self,
        messages: &[M],
        tools: Option<&[serde_json::Value]>,
        add_generation_prompt: bool,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .expect("template added in ChatTemplate::new: this is a bug");
        let named = context! {
            messages => Value::from_serialize(messages),
            tools => Value::from_serialize(tools),
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        };
        let ctx = merge_maps([named, Value::from_serialize(extra)]);
        template.render(ctx).map_err(template_error)
    }
}

/// Prints top-level booleans and none as Python does (`True`, `False`, `None`), so
/// `{{ flag }}` renders as under HF's Jinja2.
fn python_formatter(
    out: &mut Output,
    state: &State,
    value: &Value,
) -> std::result::Result<(), Error> {
    let python = match value.kind() {
        ValueKind::Bool if value.is_true() => "True",
        ValueKind::Bool => "False",
        ValueKind::None => "None",
        _ => return escape_formatter(out, state, value),
    };
    out.write_str(python).map_err(Error::from)
}

/// The error `raise_exception` attaches as the source of minijinja's error, so the
/// template's own message can be told apart from other render failures.
#[derive(Debug)]
struct RaisedException(String);

impl fmt::Display for RaisedException {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RaisedException {}

/// HF's `raise_exception(message)` global: aborts rendering with `message`.
fn raise_exception(message: String) -> std::result::Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message.clone())
        .with_source(RaisedException(message)))
}

/// HF's `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
fn tojson(value: &Value, kwargs: Kwargs) -> std::result::Result<Value, Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;

    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => Some(match (v.as_str(), i64::try_from(v.clone())) {
            (Some(s), _) => s.to_owned(),
            // Python: a negative indent means newlines without indentation.
            (None, Ok(n)) => " ".repeat(usize::try_from(n).unwrap_or(0)),
            (None, Err(_)) => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson: `indent` must be an integer or string, got {v}"),
                ))
            }
        }),
    };
    let separators = match separators.as_deref() {
        None => None,
        Some([item, key]) => Some((item.clone(), key.clone())),
        Some(other) => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: `separators` must be two strings, got {other:?}"),
            ))
        }
    };
    let json = serde_json::to_value(value).map_err(|e| {
        Error::new(ErrorKind::BadSerialization, format!("tojson: {e}")).with_source(e)
    })?;
    let options = DumpOptions {
        indent,
        separators,
        sort_keys: sort_keys.unwrap_or(false),
        ensure_ascii: ensure_ascii.unwrap_or(false),
    };
    Ok(Value::from_safe_string(pyjson::dumps(&json, &options)))
}

fn template_error(err: Error) -> TokenizerError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(e) = source {
        if let Some(raised) = e.downcast_ref::<RaisedException>() {
            return TokenizerError::TemplateRaised {
                message: raised.0.clone(),
            };
        }
        source = e.source();
    }
    let message = match err.detail() {
        Some(detail) => format!("{}: {detail}", err.kind()),
        None => err.kind().to_string(),
    };
    match err.kind() {
        ErrorKind::SyntaxError => TokenizerError::TemplateSyntax {
            line: err.line(),
            message,
        },
        _ => TokenizerError::TemplateRender {
            line: err.line(),
            message,
        },
    }
}
