//! `inferd serve`'s configuration, layered with figment: defaults < TOML file
//! (`--config`) < environment (`INFERD_*`) < flags. The file has the flags' keys
//! (snake_case) plus a `[[models]]` table per model; an unknown key anywhere is an
//! error naming it, so a typo never silently falls back to a default.
//!
//! ```toml
//! port = 9000
//! max_batch_tokens = 128        # engine settings here apply to every model...
//!
//! [[models]]
//! model = "smollm2-135m"        # an alias or a GGUF path
//! kv_cache_mib = 256            # ...and a model's own table overrides them
//!
//! [[models]]
//! name = "small"                # the id clients send in `model`
//! model = "models/other.gguf"
//! ```
//!
//! Every default is written once: the engine's in `EngineConfig::default()`, the
//! server's in [`ServeConfig::default`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use inferd_engine::EngineConfig;
use serde::{Deserialize, Serialize};

use crate::registry;

/// A flag's help text ending in its default, so `--help` shows the default the
/// code uses rather than a second copy of it.
pub fn default_of<T: std::fmt::Display>(what: &str, v: T) -> String {
    format!("{what} [default: {v}]")
}

pub fn engine_default() -> EngineConfig {
    EngineConfig::default()
}

/// Engine settings that a `[[models]]` entry may override; `None` inherits.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_batch_tokens: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_running: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_waiting: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_prefill_tokens_while_decoding: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_cache_mib: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_caching: Option<bool>,
    /// Speculative decoding by prompt lookup: `off` (default), `adaptive`
    /// (drafts only what the step-cost model says pays), `always` (to measure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speculation: Option<SpeculationMode>,
    /// The longest draft per sequence and step (1..=8, default 6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_max_draft: Option<usize>,
    /// A draft model (alias or GGUF path) with the model's tokenizer, asked when
    /// prompt lookup finds nothing. Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_draft_model: Option<String>,
    /// Self-speculation: the model's own first N layers (with its final norm and
    /// head) as the draft model. Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_draft_layers: Option<usize>,
    /// Draft by prompt lookup and from earlier outputs (default true); false
    /// leaves drafting to the draft model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_lookup: Option<bool>,
}

/// The `speculation` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SpeculationMode {
    Off,
    Adaptive,
    Always,
}

impl EngineSettings {
    /// `self` where set, else `base`.
    fn over(&self, base: &EngineSettings) -> EngineSettings {
        EngineSettings {
            max_batch_tokens: self.max_batch_tokens.or(base.max_batch_tokens),
            max_running: self.max_running.or(base.max_running),
            max_waiting: self.max_waiting.or(base.max_waiting),
            max_prefill_tokens_while_decoding: self
                .max_prefill_tokens_while_decoding
                .or(base.max_prefill_tokens_while_decoding),
            kv_cache_mib: self.kv_cache_mib.or(base.kv_cache_mib),
            prefix_caching: self.prefix_caching.or(base.prefix_caching),
            speculation: self.speculation.or(base.speculation),
            spec_max_draft: self.spec_max_draft.or(base.spec_max_draft),
            spec_draft_model: self
                .spec_draft_model
                .clone()
                .or_else(|| base.spec_draft_model.clone()),
            spec_draft_layers: self.spec_draft_layers.or(base.spec_draft_layers),
            spec_lookup: self.spec_lookup.or(base.spec_lookup),
        }
    }

    /// What the engine's own validation cannot see: settings that exclude each other.
    pub fn problem(&self) -> Option<String> {
        (self.spec_draft_model.is_some() && self.spec_draft_layers.is_some()).then(|| {
            "`spec_draft_model` and `spec_draft_layers` are both set; a model has one draft"
                .to_owned()
        })
    }

    /// The draft model the settings name: an alias's file, or a path.
    fn draft_source(&self) -> Option<inferd_engine::DraftSource> {
        if let Some(n) = self.spec_draft_layers {
            return Some(inferd_engine::DraftSource::TargetLayers(n));
        }
        let model = self.spec_draft_model.as_ref()?;
        let path = match (registry::find(model), registry::inferd_home()) {
            (Some(entry), Ok(home)) => entry.path(&home),
            _ => std::path::PathBuf::from(model),
        };
        Some(inferd_engine::DraftSource::File(path))
    }

    /// The engine configuration: these settings over the engine's defaults.
    pub fn engine_config(&self) -> EngineConfig {
        let d = EngineConfig::default();
        let s = &d.scheduler;
        EngineConfig {
            scheduler: inferd_scheduler::SchedulerConfig {
                max_batch_tokens: self.max_batch_tokens.unwrap_or(s.max_batch_tokens),
                max_running: self.max_running.unwrap_or(s.max_running),
                max_waiting: self.max_waiting.unwrap_or(s.max_waiting),
                max_prefill_tokens_while_decoding: self
                    .max_prefill_tokens_while_decoding
                    .or(s.max_prefill_tokens_while_decoding),
            },
            kv_cache_mib: self.kv_cache_mib.unwrap_or(d.kv_cache_mib),
            enable_prefix_caching: self.prefix_caching.unwrap_or(d.enable_prefix_caching),
            speculation: match self.speculation.unwrap_or(SpeculationMode::Off) {
                SpeculationMode::Off => None,
                mode => {
                    let spec = inferd_engine::SpecConfig::default();
                    Some(inferd_engine::SpecConfig {
                        adaptive: mode == SpeculationMode::Adaptive,
                        max_draft: self.spec_max_draft.unwrap_or(spec.max_draft),
                        lookup: self.spec_lookup.unwrap_or(spec.lookup),
                        draft: self.draft_source(),
                        ..spec
                    })
                }
            },
            ..d
        }
    }
}

/// One `[[models]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSettings {
    /// An alias (`inferd models list`) or a GGUF path.
    pub model: String,
    /// The id clients send in `model`; default: the alias, or the file's stem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// An embedding model's arithmetic: `f32`, `bf16` (needs AVX512-BF16) or
    /// `q8` (8-bit weights: about twice as fast without AVX512-BF16, cosine
    /// ≥ 0.999 to f32); default: bf16 where the CPU has AVX512-BF16, else f32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<EmbedPrecision>,
    #[serde(flatten)]
    pub engine: EngineSettings,
}

/// The `precision` of an embedding model's `[[models]]` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmbedPrecision {
    F32,
    Bf16,
    Q8,
}

impl From<EmbedPrecision> for inferd_embed::Precision {
    fn from(p: EmbedPrecision) -> inferd_embed::Precision {
        match p {
            EmbedPrecision::F32 => inferd_embed::Precision::F32,
            EmbedPrecision::Bf16 => inferd_embed::Precision::Bf16,
            EmbedPrecision::Q8 => inferd_embed::Precision::Q8,
        }
    }
}

impl ModelSettings {
    pub fn name(&self) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        if registry::find(&self.model).is_some() {
            return self.model.clone();
        }
        Path::new(&self.model)
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("model")
            .to_owned()
    }
}

/// One `[[upstreams]]` entry: an OpenAI-compatible server that `inferd serve`
/// answers for under `name`, relaying its streams.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSettings {
    /// The id clients send in `model`.
    pub name: String,
    /// The API root, e.g. `http://127.0.0.1:8081/v1`.
    pub base_url: String,
    /// The model name the upstream knows; default: `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The environment variable holding the upstream's API key (never the key
    /// itself: a config file gets copied around).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// Prompt plus output tokens the upstream's model takes.
    #[serde(default = "UpstreamSettings::default_context_window")]
    pub context_window: usize,
    #[serde(default = "UpstreamSettings::default_connect_timeout")]
    pub connect_timeout_secs: f64,
    /// From sending the request to the first token.
    #[serde(default = "UpstreamSettings::default_ttft_timeout")]
    pub ttft_timeout_secs: f64,
    /// From sending the request to the end of the answer.
    #[serde(default = "UpstreamSettings::default_total_timeout")]
    pub total_timeout_secs: f64,
    /// Requests in flight at once; more wait (up to the TTFT timeout).
    #[serde(default = "UpstreamSettings::default_max_concurrent")]
    pub max_concurrent: usize,
    /// Consecutive failures that open the upstream's circuit (requests then
    /// fail at once, and a gateway moves on without waiting).
    #[serde(default = "UpstreamSettings::default_failure_threshold")]
    pub failure_threshold: usize,
    /// Seconds an open circuit refuses before one request probes it.
    #[serde(default = "UpstreamSettings::default_open_secs")]
    pub open_secs: f64,
    /// Tries again after a failure to connect or a 502/503/504, before any
    /// token (0: none). The waits grow from `retry_backoff_ms`, doubling, each
    /// drawn at random up to its bound (full jitter).
    #[serde(default = "UpstreamSettings::default_retries")]
    pub retries: usize,
    #[serde(default = "UpstreamSettings::default_retry_backoff_ms")]
    pub retry_backoff_ms: u64,
    /// Seconds between active health checks (`GET {base_url}/models`); a
    /// failed check counts as a failure toward the circuit, a passing one
    /// closes an open circuit. 0: no active checks.
    #[serde(default)]
    pub health_check_secs: f64,
    /// A PEM file of CA certificates to trust for an `https://` base_url,
    /// besides the built-in web roots (a private CA or a self-signed server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// USD per 1M prompt tokens, for cost routing.
    #[serde(default)]
    pub price_in_per_mtok: f64,
    /// USD per 1M output tokens.
    #[serde(default)]
    pub price_out_per_mtok: f64,
}

/// One `[[tiers]]` entry: interchangeable models or upstreams.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierSettings {
    /// Also the id clients send in `model` to route within this tier alone.
    pub name: String,
    /// Names of `[[models]]` or `[[upstreams]]` entries: replicas of one
    /// model, or interchangeable upstreams.
    pub backends: Vec<String>,
    /// How a request picks among `backends`: `cache_aware` (default),
    /// `least_outstanding`, `round_robin` or `ordered` (as listed: a primary
    /// and its backups). The others are tried next, on failure.
    #[serde(default = "TierSettings::default_balance")]
    pub balance: String,
    /// Cache-aware only: requests a replica may have in flight above the
    /// least loaded one and still be chosen for the prefix it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_slack: Option<usize>,
    /// Send this tier only requests that fit this many tokens (below its
    /// backends' own windows); default: the backends' windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_window: Option<usize>,
}

impl TierSettings {
    fn default_balance() -> String {
        "cache_aware".into()
    }

    /// The balancing policy this entry names (validated at load).
    pub fn policy(&self) -> Option<inferd_gateway::balance::Policy> {
        use inferd_gateway::balance::Policy;
        match Policy::parse(&self.balance)? {
            Policy::CacheAware {
                capacity,
                load_slack,
            } => Some(Policy::CacheAware {
                capacity,
                load_slack: self.load_slack.unwrap_or(load_slack),
            }),
            p => Some(p),
        }
    }
}

/// One `[[rules]]` entry: a deterministic handler (`inferd_handlers`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSettings {
    pub name: String,
    /// Matches the last user message (named groups: `input`, `key`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// Or: matches when the last user message is JSON valid against this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_schema: Option<serde_json::Value>,
    /// Or: matches when `[routing.intents]` labels the request with this intent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<String>,
    /// `arithmetic`, `convert`, `datetime`, `validate_email`, `validate_url`,
    /// `validate_uuid`, `validate_json`, `lookup`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builtin: Option<String>,
    /// The answer's template: `{result}`, `{input}`, named groups, columns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lookup_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_column: Option<String>,
    /// `validate_json`: the schema its input must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<serde_json::Value>,
    /// Transform instead of answering: add this to the system prompt ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_hint: Option<String>,
    /// ... and/or send the request to this tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
}

impl RuleSettings {
    pub fn spec(&self) -> inferd_handlers::RuleSpec {
        inferd_handlers::RuleSpec {
            name: self.name.clone(),
            regex: self.regex.clone(),
            json_schema: self.json_schema.clone(),
            intent: self.intent.clone(),
            builtin: self.builtin.clone(),
            answer: self.answer.clone(),
            lookup_file: self.lookup_file.clone(),
            key_column: self.key_column.clone(),
            schema: self.schema.clone(),
            system_hint: self.system_hint.clone(),
            tier: self.tier.clone(),
        }
    }
}

/// `[routing]`: how requests are routed over the tiers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingSettings {
    /// The id clients send in `model` to let the gateway choose.
    #[serde(default = "RoutingSettings::default_name")]
    pub name: String,
    /// Backends tried for one request at most, first try included.
    #[serde(default = "RoutingSettings::default_max_attempts")]
    pub max_attempts: usize,
    /// Requests whose text matches one of these stay on local tiers: built-in
    /// detectors `email`, `phone`, `card`, `api_key`, or regexes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub private_patterns: Vec<String>,
    /// Re-ask the next tier when the first tier's answer is unsure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalation: Option<EscalationSettings>,
    /// The exact response cache for deterministic requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheSettings>,
    /// Narrow long tool lists to the most relevant tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<ToolSettings>,
    /// Classify requests into declared intents (tools, tier, rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intents: Option<IntentSettings>,
    /// Fit chat requests into the answering tier's window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<ContextSettings>,
}

/// `[routing.intents]`: the intent layer (the gateway's `intent` module).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntentSettings {
    /// A `[[models]]` entry that embeds (MiniLM).
    pub model: String,
    /// The least score (in [-1, 1], like a cosine) that labels a request.
    #[serde(default = "IntentSettings::default_threshold")]
    pub threshold: f32,
    /// Below the threshold, answer this instead of the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clarification: Option<String>,
    /// JSONL of labelled queries, `{"query": "...", "intent": "<name>"}`;
    /// feedback is appended here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub examples_file: Option<PathBuf>,
    #[serde(rename = "intent", default)]
    pub intents: Vec<IntentEntry>,
}

/// One `[[routing.intents.intent]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntentEntry {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub examples: Vec<String>,
    /// The tools a request of this intent is given (names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<String>,
    /// The tier that answers it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
}

impl IntentSettings {
    fn default_threshold() -> f32 {
        0.5
    }

    pub fn specs(&self) -> Vec<inferd_gateway::intent::IntentSpec> {
        self.intents
            .iter()
            .map(|i| inferd_gateway::intent::IntentSpec {
                name: i.name.clone(),
                description: i.description.clone(),
                examples: i.examples.clone(),
                tools: i.tools.clone(),
                tier: i.tier.clone(),
            })
            .collect()
    }

    /// The labelled examples of the examples file, `(query, intent)`.
    pub fn examples(&self) -> Result<Vec<(String, String)>> {
        read_examples(self.examples_file.as_deref(), "routing.intents", "intent")
    }
}

/// `[routing.context]`: context budgets (the gateway's `context` module).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContextSettings {
    /// Tokens kept for the answer when a request sets no `max_tokens`.
    #[serde(default = "ContextSettings::default_reserve")]
    pub output_reserve: usize,
    /// Sections cut first to last: `documents`, `memory`, `tools`, `history`.
    #[serde(default = "ContextSettings::default_order")]
    pub cut_order: Vec<String>,
    /// Per-section budgets: a number of tokens, or a share of the window as
    /// a string ending in `%` (`"25%"`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub budgets: std::collections::BTreeMap<String, serde_json::Value>,
    /// Summarise dropped history with this `[[models]]` entry (a local model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary_model: Option<String>,
    #[serde(default = "ContextSettings::default_summary_tokens")]
    pub summary_max_tokens: usize,
}

impl ContextSettings {
    fn default_reserve() -> usize {
        256
    }
    fn default_order() -> Vec<String> {
        inferd_gateway::context::Section::ALL
            .iter()
            .map(|s| s.name().to_owned())
            .collect()
    }
    fn default_summary_tokens() -> usize {
        64
    }

    /// The cut order and budgets, or what is wrong with them.
    #[allow(clippy::type_complexity)]
    pub fn parts(
        &self,
    ) -> std::result::Result<
        (
            Vec<inferd_gateway::context::Section>,
            Vec<(
                inferd_gateway::context::Section,
                inferd_gateway::context::Limit,
            )>,
        ),
        String,
    > {
        use inferd_gateway::context::{Limit, Section};
        let section = |name: &str, field: &str| {
            Section::parse(name).ok_or_else(|| {
                format!("`routing.context.{field}`: {name:?} is not one of documents, memory, tools, history (system and the current turn are never cut)")
            })
        };
        let mut order = Vec::new();
        for name in &self.cut_order {
            let s = section(name, "cut_order")?;
            if order.contains(&s) {
                return Err(format!("`routing.context.cut_order` names {name:?} twice"));
            }
            order.push(s);
        }
        let mut limits = Vec::new();
        for (name, v) in &self.budgets {
            let s = section(name, "budgets")?;
            let limit = match v {
                serde_json::Value::Number(n) if n.as_u64().is_some() => {
                    Limit::Tokens(n.as_u64().unwrap_or(0) as usize)
                }
                serde_json::Value::String(t) => match t.trim().strip_suffix('%').map(|p| p.trim().parse::<f64>()) {
                    Some(Ok(p)) if p > 0.0 && p <= 100.0 => Limit::Share(p / 100.0),
                    _ => return Err(format!("`routing.context.budgets.{name}` must be a token count or a share like \"25%\", got {t:?}")),
                },
                other => return Err(format!("`routing.context.budgets.{name}` must be a token count or a share like \"25%\", got {other}")),
            };
            limits.push((s, limit));
        }
        Ok((order, limits))
    }
}

/// Labelled examples from a JSONL file of `{"query": ..., "<label>": ...}`.
fn read_examples(
    path: Option<&std::path::Path>,
    table: &str,
    label: &str,
) -> Result<Vec<(String, String)>> {
    let Some(path) = path else {
        return Ok(Vec::new());
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        // Made by the first feedback.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && label == "intent" => {
            return Ok(Vec::new())
        }
        Err(e) => anyhow::bail!("`{table}.examples_file` {}: {e}", path.display()),
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let v: serde_json::Value = serde_json::from_str(l)
                .map_err(|e| anyhow::anyhow!("{}:{}: not JSON: {e}", path.display(), i + 1))?;
            match (v["query"].as_str(), v[label].as_str()) {
                (Some(q), Some(t)) => Ok((q.to_owned(), t.to_owned())),
                _ => anyhow::bail!(
                    "{}:{}: not {{\"query\": ..., \"{label}\": ...}}",
                    path.display(),
                    i + 1
                ),
            }
        })
        .collect()
}

/// `[routing.tools]`: tool narrowing (the gateway's `tools` module).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolSettings {
    /// A `[[models]]` entry that embeds (MiniLM).
    pub model: String,
    #[serde(default = "ToolSettings::default_top_k")]
    pub top_k: usize,
    /// Requests with this many tools or fewer are left alone.
    #[serde(default = "ToolSettings::default_min_tools")]
    pub min_tools: usize,
    /// JSONL of labelled queries, `{"query": "...", "tool": "<tool name>"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub examples_file: Option<PathBuf>,
}

impl ToolSettings {
    fn default_top_k() -> usize {
        5
    }
    fn default_min_tools() -> usize {
        8
    }

    /// The labelled examples, `(query, tool)`.
    pub fn examples(&self) -> Result<Vec<(String, String)>> {
        read_examples(self.examples_file.as_deref(), "routing.tools", "tool")
    }
}

/// `[routing.cache]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSettings {
    /// Seconds an answer is kept.
    #[serde(default = "CacheSettings::default_ttl")]
    pub ttl_secs: f64,
    /// The answers' size bound, MiB.
    #[serde(default = "CacheSettings::default_mib")]
    pub max_mib: f64,
    /// Also answer by meaning: a `[[models]]` entry that embeds (MiniLM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semantic_model: Option<String>,
    /// The least cosine between last user messages that counts as the same
    /// question.
    #[serde(default = "CacheSettings::default_similarity")]
    pub similarity: f32,
}

impl CacheSettings {
    fn default_ttl() -> f64 {
        300.0
    }
    fn default_mib() -> f64 {
        64.0
    }
    fn default_similarity() -> f32 {
        0.92
    }

    pub fn build(&self) -> inferd_gateway::cache::ResponseCache {
        inferd_gateway::cache::ResponseCache::new(
            Duration::try_from_secs_f64(self.ttl_secs).unwrap_or(Duration::ZERO),
            (self.max_mib * 1048576.0) as usize,
            self.semantic_model.as_ref().map(|_| self.similarity),
        )
    }
}

/// `[routing.escalation]`: confidence escalation (the gateway's `escalate`
/// module gives the formulas).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscalationSettings {
    /// `mean_logprob` (default), `min_logprob` or `neg_entropy`.
    #[serde(default = "EscalationSettings::default_signal")]
    pub signal: String,
    /// A score below this escalates.
    pub threshold: f64,
    /// Streamed requests: tokens held back and scored first (0: streamed
    /// requests are not escalated).
    #[serde(default)]
    pub hold_tokens: usize,
    /// Alternatives logged per token, for `neg_entropy`.
    #[serde(default = "EscalationSettings::default_top")]
    pub top_logprobs: usize,
}

impl EscalationSettings {
    fn default_signal() -> String {
        "mean_logprob".into()
    }
    fn default_top() -> usize {
        5
    }

    pub fn build(&self) -> Option<inferd_gateway::escalate::Escalation> {
        Some(inferd_gateway::escalate::Escalation {
            signal: inferd_gateway::escalate::Signal::parse(&self.signal)?,
            threshold: self.threshold,
            hold_tokens: self.hold_tokens,
            top_logprobs: self.top_logprobs,
        })
    }
}

impl RoutingSettings {
    fn default_name() -> String {
        "auto".into()
    }
    fn default_max_attempts() -> usize {
        3
    }
}

impl Default for RoutingSettings {
    fn default() -> Self {
        RoutingSettings {
            name: Self::default_name(),
            max_attempts: Self::default_max_attempts(),
            private_patterns: Vec::new(),
            escalation: None,
            cache: None,
            tools: None,
            intents: None,
            context: None,
        }
    }
}

impl UpstreamSettings {
    fn default_context_window() -> usize {
        8192
    }
    fn default_connect_timeout() -> f64 {
        5.0
    }
    fn default_ttft_timeout() -> f64 {
        30.0
    }
    fn default_total_timeout() -> f64 {
        600.0
    }
    fn default_max_concurrent() -> usize {
        256
    }
    fn default_failure_threshold() -> usize {
        5
    }
    fn default_open_secs() -> f64 {
        10.0
    }
    fn default_retries() -> usize {
        1
    }
    fn default_retry_backoff_ms() -> u64 {
        50
    }

    /// The client's settings, with the key read from its variable.
    pub fn resolve(&self) -> Result<inferd_gateway::UpstreamConfig> {
        let api_key = match &self.api_key_env {
            None => None,
            Some(var) => Some(std::env::var(var).map_err(|_| {
                anyhow::anyhow!(
                    "upstream `{}`: api_key_env names {var}, which is not set",
                    self.name
                )
            })?),
        };
        let ca_pem = match &self.ca_file {
            None => None,
            Some(path) => Some(std::fs::read(path).map_err(|e| {
                anyhow::anyhow!(
                    "upstream `{}`: cannot read ca_file {}: {e}",
                    self.name,
                    path.display()
                )
            })?),
        };
        // Validation names a bad number; here it only must not panic.
        let secs = |v: f64| Duration::try_from_secs_f64(v).unwrap_or(Duration::ZERO);
        Ok(inferd_gateway::UpstreamConfig {
            name: self.name.clone(),
            base_url: self.base_url.clone(),
            model: self.model.clone().unwrap_or_else(|| self.name.clone()),
            api_key,
            context_window: self.context_window,
            connect_timeout: secs(self.connect_timeout_secs),
            ttft_timeout: secs(self.ttft_timeout_secs),
            total_timeout: secs(self.total_timeout_secs),
            max_concurrent: self.max_concurrent,
            failure_threshold: self.failure_threshold,
            open_for: secs(self.open_secs),
            retries: self.retries,
            retry_backoff: Duration::from_millis(self.retry_backoff_ms),
            health_check: (self.health_check_secs > 0.0).then(|| secs(self.health_check_secs)),
            ca_pem,
        })
    }
}

/// Everything `inferd serve` runs on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    pub host: String,
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// Kernel worker threads; default all cores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    /// The chat models' kernel path: `auto` (the fastest this CPU runs; never
    /// `amx`, which measures slower) or a path by name (`scalar`, `avx2`,
    /// `avx512`, `amx`, `neon`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isa: Option<String>,
    /// On SIGTERM / Ctrl-C, seconds to let in-flight requests finish.
    pub shutdown_timeout_secs: u64,
    /// Cancel a request still unfinished this long after arrival; 0 = no limit.
    pub request_timeout_secs: u64,
    /// The single model when there is no `[[models]]` table (alias or path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Several models, each in its own engine; the first is the default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<ModelSettings>,
    /// OpenAI-compatible servers answered for by name, after the local models.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstreams: Vec<UpstreamSettings>,
    /// Tiers of models and upstreams for the gateway (`model: "auto"`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<TierSettings>,
    #[serde(default)]
    pub routing: RoutingSettings,
    /// Deterministic handlers, tried in order before routing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleSettings>,
    /// Agent memory behind `/v1/memory`; none unless set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<crate::memory::MemorySettings>,
    /// Engine settings for every model (a model's own entry overrides them).
    #[serde(flatten)]
    pub engine: EngineSettings,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            host: "127.0.0.1".into(),
            port: 8080,
            api_key: None,
            threads: None,
            isa: None,
            shutdown_timeout_secs: 30,
            request_timeout_secs: 600,
            model: None,
            models: Vec::new(),
            upstreams: Vec::new(),
            tiers: Vec::new(),
            rules: Vec::new(),
            routing: RoutingSettings::default(),
            memory: None,
            engine: EngineSettings::default(),
        }
    }
}

/// The keys the environment may set, as `INFERD_<KEY>`.
const ENV_KEYS: &[&str] = &[
    "host",
    "port",
    "api_key",
    "threads",
    "isa",
    "shutdown_timeout_secs",
    "request_timeout_secs",
    "model",
    "max_batch_tokens",
    "max_running",
    "max_waiting",
    "max_prefill_tokens_while_decoding",
    "kv_cache_mib",
    "prefix_caching",
    "speculation",
    "spec_max_draft",
    "spec_draft_model",
    "spec_draft_layers",
    "spec_lookup",
];

impl ServeConfig {
    /// Layers defaults, the file, the environment and `flags` (a partial config:
    /// only the keys given on the command line).
    pub fn load(file: Option<&Path>, flags: &impl Serialize) -> Result<ServeConfig> {
        let mut f = Figment::from(Serialized::defaults(ServeConfig::default()));
        if let Some(p) = file {
            if !p.is_file() {
                anyhow::bail!("config file {} does not exist", p.display());
            }
            f = f.merge(Toml::file(p));
        }
        let config: ServeConfig = f
            .merge(Env::prefixed("INFERD_").only(ENV_KEYS))
            .merge(Serialized::defaults(flags))
            .extract()
            .map_err(|e| anyhow::anyhow!("configuration: {}", errors(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// The models to serve, each with its engine settings resolved. With
    /// upstreams and no model named, none: a pure gateway.
    pub fn models(&self) -> Vec<(ModelSettings, EngineConfig)> {
        if self.models.is_empty() && self.model.is_none() && !self.upstreams.is_empty() {
            return Vec::new();
        }
        let list = if self.models.is_empty() {
            vec![ModelSettings {
                model: self
                    .model
                    .clone()
                    .unwrap_or_else(|| registry::DEFAULT_MODEL.to_owned()),
                name: None,
                precision: None,
                engine: EngineSettings::default(),
            }]
        } else {
            self.models.clone()
        };
        list.into_iter()
            .map(|m| {
                let engine = m.engine.over(&self.engine).engine_config();
                (m, engine)
            })
            .collect()
    }

    /// Every problem at once, each naming the field, the value and the rule.
    pub fn validate(&self) -> Result<()> {
        let mut problems = Vec::new();
        if self.model.is_some() && !self.models.is_empty() {
            problems.push(
                "`model` and `[[models]]` are both set; list every model in `[[models]]`"
                    .to_owned(),
            );
        }
        if self.threads == Some(0) {
            problems.push("`threads` must be at least 1, got 0".to_owned());
        }
        if let Some(p) = self.memory.as_ref().and_then(|m| m.problem()) {
            problems.push(p);
        }
        if self.memory.as_ref().is_some_and(|m| m.keys) && self.api_key.is_none() {
            problems.push(
                "`memory.keys` needs `api_key` (`--api-key`): the admin key that manages keys"
                    .to_owned(),
            );
        }
        if self.host.parse::<std::net::IpAddr>().is_err() && self.host != "localhost" {
            problems.push(format!("`host` must be an IP address, got {:?}", self.host));
        }
        let models = self.models();
        for (i, (m, engine)) in models.iter().enumerate() {
            let at = if self.models.is_empty() {
                String::new()
            } else {
                format!("models[{i}].")
            };
            if let Some(p) = m.engine.over(&self.engine).problem() {
                problems.push(format!("{at}{p}"));
            }
            if let Err(e) = engine.validate() {
                problems.push(format!(
                    "{at}{}",
                    e.to_string()
                        .trim_start_matches("invalid engine configuration: ")
                ));
            }
            let name = m.name();
            if models[..i].iter().any(|(o, _)| o.name() == name) {
                problems.push(format!(
                    "`{at}name` {name:?} is used by two models; give each a distinct `name`"
                ));
            }
        }
        for (i, u) in self.upstreams.iter().enumerate() {
            let at = format!("upstreams[{i}]");
            let taken = models.iter().any(|(m, _)| m.name() == u.name)
                || self.upstreams[..i].iter().any(|o| o.name == u.name);
            if taken {
                problems.push(format!(
                    "`{at}.name` {:?} is already the name of a model or upstream",
                    u.name
                ));
            }
            for (key, v) in [
                ("connect_timeout_secs", u.connect_timeout_secs),
                ("ttft_timeout_secs", u.ttft_timeout_secs),
                ("total_timeout_secs", u.total_timeout_secs),
                ("open_secs", u.open_secs),
            ] {
                if !(v > 0.0 && v.is_finite()) {
                    problems.push(format!(
                        "`{at}.{key}` must be a positive number of seconds, got {v}"
                    ));
                }
            }
            if !(u.health_check_secs >= 0.0 && u.health_check_secs.is_finite()) {
                problems.push(format!(
                    "`{at}.health_check_secs` must be 0 (off) or a positive number of seconds, got {}",
                    u.health_check_secs
                ));
            }
            if u.failure_threshold == 0 {
                problems.push(format!(
                    "`{at}.failure_threshold` must be at least 1, got 0"
                ));
            }
            for (key, v) in [
                ("price_in_per_mtok", u.price_in_per_mtok),
                ("price_out_per_mtok", u.price_out_per_mtok),
            ] {
                if !(v >= 0.0 && v.is_finite()) {
                    problems.push(format!(
                        "`{at}.{key}` must be a price of 0 or more, got {v}"
                    ));
                }
            }
            if u.max_concurrent == 0 {
                problems.push(format!("`{at}.max_concurrent` must be at least 1, got 0"));
            }
            if u.context_window == 0 {
                problems.push(format!("`{at}.context_window` must be at least 1, got 0"));
            }
            if let Err(e) = u
                .resolve()
                .and_then(|c| Ok(inferd_gateway::Upstream::new(c)?))
            {
                problems.push(format!("`{at}`: {e}"));
            }
        }
        self.validate_tiers(&models, &mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            anyhow::bail!("invalid configuration:\n  - {}", problems.join("\n  - "))
        }
    }
}

impl ServeConfig {
    fn validate_tiers(&self, models: &[(ModelSettings, EngineConfig)], problems: &mut Vec<String>) {
        let backend_names: Vec<String> = models
            .iter()
            .map(|(m, _)| m.name())
            .chain(self.upstreams.iter().map(|u| u.name.clone()))
            .collect();
        for (i, t) in self.tiers.iter().enumerate() {
            let at = format!("tiers[{i}]");
            if backend_names.contains(&t.name)
                || self.tiers[..i].iter().any(|o| o.name == t.name)
                || t.name == self.routing.name
            {
                problems.push(format!(
                    "`{at}.name` {:?} is already the name of a model, upstream, tier or the router",
                    t.name
                ));
            }
            if t.backends.is_empty() {
                problems.push(format!(
                    "`{at}.backends` is empty; name at least one model or upstream"
                ));
            }
            for (j, b) in t.backends.iter().enumerate() {
                if !backend_names.contains(b) {
                    problems.push(format!(
                        "`{at}.backends[{j}]` {b:?} is not the name of a model or upstream (known: {})",
                        backend_names.join(", ")
                    ));
                }
            }
            if t.policy().is_none() {
                problems.push(format!(
                    "`{at}.balance` {:?} is not a balancing policy; use one of {}",
                    t.balance,
                    inferd_gateway::balance::Policy::NAMES.join(", ")
                ));
            } else if t.load_slack.is_some() && t.balance != "cache_aware" {
                problems.push(format!(
                    "`{at}.load_slack` applies to `balance = \"cache_aware\"` only, not {:?}",
                    t.balance
                ));
            }
            if t.context_window == Some(0) {
                problems.push(format!("`{at}.context_window` must be at least 1, got 0"));
            }
        }
        if !self.tiers.is_empty() && backend_names.contains(&self.routing.name) {
            problems.push(format!(
                "`routing.name` {:?} is already the name of a model or upstream",
                self.routing.name
            ));
        }
        if self.routing.max_attempts == 0 {
            problems.push("`routing.max_attempts` must be at least 1, got 0".to_owned());
        }
        if !self.rules.is_empty() && self.tiers.is_empty() {
            problems
                .push("`rules` apply to requests the gateway routes: add `[[tiers]]`".to_owned());
        }
        let specs: Vec<_> = self.rules.iter().map(RuleSettings::spec).collect();
        if let Err(e) = inferd_handlers::Rules::new(&specs) {
            problems.push(e);
        }
        for (i, r) in self.rules.iter().enumerate() {
            if let Some(t) = &r.tier {
                if !self.tiers.iter().any(|x| &x.name == t) {
                    problems.push(format!("`rules[{i}].tier` {t:?} is not the name of a tier"));
                }
            }
        }
        if let Some(c) = &self.routing.cache {
            for (key, v) in [("ttl_secs", c.ttl_secs), ("max_mib", c.max_mib)] {
                if !(v > 0.0 && v.is_finite()) {
                    problems.push(format!(
                        "`routing.cache.{key}` must be a positive number, got {v}"
                    ));
                }
            }
            if !(c.similarity > 0.0 && c.similarity <= 1.0) {
                problems.push(format!(
                    "`routing.cache.similarity` must be in (0, 1], got {}",
                    c.similarity
                ));
            }
            if let Some(m) = &c.semantic_model {
                if !models.iter().any(|(s, _)| &s.name() == m) {
                    problems.push(format!(
                        "`routing.cache.semantic_model` {m:?} is not the name of a model"
                    ));
                }
            }
        }
        if let Some(t) = &self.routing.tools {
            if !models.iter().any(|(s, _)| s.name() == t.model) {
                problems.push(format!(
                    "`routing.tools.model` {:?} is not the name of a model",
                    t.model
                ));
            }
            if t.top_k == 0 {
                problems.push("`routing.tools.top_k` must be at least 1".to_owned());
            }
            if let Err(e) = t.examples() {
                problems.push(e.to_string());
            }
        }
        if let Some(i) = &self.routing.intents {
            if !models.iter().any(|(s, _)| s.name() == i.model) {
                problems.push(format!(
                    "`routing.intents.model` {:?} is not the name of a model",
                    i.model
                ));
            }
            if i.intents.is_empty() {
                problems.push(
                    "`routing.intents` declares no intent: add `[[routing.intents.intent]]` entries"
                        .to_owned(),
                );
            }
            if !(-1.0..=1.0).contains(&i.threshold) {
                problems.push(format!(
                    "`routing.intents.threshold` must be in [-1, 1], got {}",
                    i.threshold
                ));
            }
            for (k, e) in i.intents.iter().enumerate() {
                if i.intents[..k].iter().any(|x| x.name == e.name) {
                    problems.push(format!("intent {:?} is declared twice", e.name));
                }
                if let Some(t) = &e.tier {
                    if !self.tiers.iter().any(|x| &x.name == t) {
                        problems.push(format!(
                            "intent {:?}: tier {t:?} is not the name of a tier",
                            e.name
                        ));
                    }
                }
            }
            match i.examples() {
                Err(e) => problems.push(e.to_string()),
                Ok(ex) => {
                    for (q, name) in ex {
                        if !i.intents.iter().any(|x| x.name == name) {
                            problems.push(format!(
                                "the intent example {q:?} names intent {name:?}, which is not declared"
                            ));
                        }
                    }
                }
            }
        }
        for r in &self.rules {
            if let Some(name) = &r.intent {
                let declared = self
                    .routing
                    .intents
                    .as_ref()
                    .is_some_and(|i| i.intents.iter().any(|x| &x.name == name));
                if !declared {
                    problems.push(format!(
                        "rule `{}` matches intent {name:?}, which `[routing.intents]` does not declare",
                        r.name
                    ));
                }
            }
        }
        if let Some(c) = &self.routing.context {
            if let Err(e) = c.parts() {
                problems.push(e);
            }
            if let Some(m) = &c.summary_model {
                if !models.iter().any(|(s, _)| &s.name() == m) {
                    problems.push(format!(
                        "`routing.context.summary_model` {m:?} is not the name of a model"
                    ));
                }
            }
        }
        if let Some(e) = &self.routing.escalation {
            if e.build().is_none() {
                problems.push(format!(
                    "`routing.escalation.signal` {:?} is not a signal; use one of {}",
                    e.signal,
                    inferd_gateway::escalate::Signal::NAMES.join(", ")
                ));
            }
            if !e.threshold.is_finite() {
                problems.push("`routing.escalation.threshold` must be a finite number".to_owned());
            }
            if !(1..=20).contains(&e.top_logprobs) {
                problems.push(format!(
                    "`routing.escalation.top_logprobs` must be 1 to 20, got {}",
                    e.top_logprobs
                ));
            }
        }
        for (i, p) in self.routing.private_patterns.iter().enumerate() {
            if let Err(e) = inferd_gateway::Detector::new(p) {
                problems.push(format!("`routing.private_patterns[{i}]`: {e}"));
            }
        }
    }
}

fn errors(e: figment::Error) -> String {
    e.into_iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(file: &str, flags: serde_json::Value) -> Result<ServeConfig> {
        let dir = std::env::temp_dir().join(format!("inferd-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!(
            "{:x}.toml",
            file.len() ^ flags.to_string().len() << 8
        ));
        std::fs::write(&path, file).unwrap();
        let r = ServeConfig::load(Some(&path), &flags);
        let _ = std::fs::remove_file(&path);
        r
    }

    #[test]
    fn flags_beat_the_file_which_beats_the_defaults() {
        let c = load(
            "port = 9000\nmax_batch_tokens = 128\nprefix_caching = false\n",
            serde_json::json!({"port": 9100}),
        )
        .unwrap();
        assert_eq!(c.port, 9100);
        assert_eq!(c.host, "127.0.0.1");
        let (m, engine) = &c.models()[0];
        assert_eq!(m.model, registry::DEFAULT_MODEL);
        assert_eq!(engine.scheduler.max_batch_tokens, 128);
        assert!(!engine.enable_prefix_caching);
        assert_eq!(engine.kv_cache_mib, EngineConfig::default().kv_cache_mib);
    }

    #[test]
    fn models_tables_inherit_and_override_engine_settings() {
        let c = load(
            "kv_cache_mib = 300\nmax_running = 8\n[[models]]\nmodel = \"smollm2-135m\"\nkv_cache_mib = 100\n[[models]]\nname = \"b\"\nmodel = \"x/other.gguf\"\n",
            serde_json::json!({}),
        )
        .unwrap();
        let models = c.models();
        assert_eq!(models.len(), 2);
        assert_eq!(
            (models[0].0.name(), models[0].1.kv_cache_mib),
            ("smollm2-135m".into(), 100)
        );
        assert_eq!(models[0].1.scheduler.max_running, 8);
        assert_eq!(
            (models[1].0.name(), models[1].1.kv_cache_mib),
            ("b".into(), 300)
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let e = load("prot = 1\n", serde_json::json!({}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("prot"), "{e}");
        let e = load(
            "[[models]]\nmodel = \"a\"\nkv_cache = 1\n",
            serde_json::json!({}),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("kv_cache"), "{e}");
        let e = load(
            "[[models]]\nmodel = \"a\"\nmax_running = 0\n[[models]]\nmodel = \"a\"\n",
            serde_json::json!({}),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("models[0].") && e.contains("max_running") && e.contains("got 0"),
            "{e}"
        );
        assert!(e.contains("used by two models"), "{e}");
        let e = load("port = \"x\"\n", serde_json::json!({}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("port"), "{e}");
    }

    #[test]
    fn a_draft_model_is_one_file_or_the_models_first_layers_never_both() {
        use inferd_engine::DraftSource;
        let draft = |file: &str| {
            let c = load(file, serde_json::json!({})).unwrap();
            c.models()[0].1.speculation.clone().and_then(|s| s.draft)
        };
        assert_eq!(
            draft("speculation = \"adaptive\"\nspec_draft_layers = 12\n"),
            Some(DraftSource::TargetLayers(12))
        );
        assert_eq!(
            draft("speculation = \"always\"\nspec_draft_model = \"x/draft.gguf\"\n"),
            Some(DraftSource::File("x/draft.gguf".into()))
        );
        // An alias names its downloaded file.
        let Some(DraftSource::File(p)) =
            draft("speculation = \"always\"\nspec_draft_model = \"smollm2-135m\"\n")
        else {
            panic!("an alias is a file draft");
        };
        assert!(p.to_string_lossy().ends_with(".gguf"), "{}", p.display());
        assert_eq!(
            draft("spec_draft_layers = 12\n"),
            None,
            "speculation is off"
        );
        let e = load(
            "speculation = \"adaptive\"\n[[models]]\nmodel = \"a\"\nspec_draft_layers = 2\nspec_draft_model = \"b\"\n",
            serde_json::json!({}),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("models[0].`spec_draft_model` and `spec_draft_layers` are both set"),
            "{e}"
        );
        let e = load(
            "speculation = \"adaptive\"\nspec_lookup = false\n",
            serde_json::json!({}),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("needs a draft model"), "{e}");
    }
}
