//! The agent-memory store's settings (`[memory]`, `--state`) and `inferd memory`:
//! rebuild the projections from the log, or check that a rebuild reaches the
//! live state.

use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use inferd_memory::{AnnConfig, Durability, MemoryConfig, StateStore, TextEmbedder};
use serde::{Deserialize, Serialize};

/// `[memory]`: agent memory behind `/v1/memory`, kept under `state`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MemorySettings {
    /// Where the store lives: a directory (or `sqlite:DIR`) holding `log.db` and
    /// `projections.db`, or a `postgres://` URL shared by several servers.
    pub state: String,
    /// The served embedding model (a `[[models]]` name) whose vectors the
    /// `vectors` projection keeps; without one, search is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// `fsync` (default: a write is acknowledged once on disk, surviving power
    /// loss) or `os` (once the OS has it: survives the process being killed).
    #[serde(default)]
    pub durability: DurabilitySetting,
    /// Items the `recent` projection keeps per namespace.
    #[serde(default = "default_recent")]
    pub recent_per_namespace: usize,
    /// Managed API keys (`/v1/keys`) with rate limits and budgets, kept in
    /// the store; the server's `api_key` is then the admin key.
    #[serde(default)]
    pub keys: bool,
    /// A `redis://` URL holding keys' per-minute counters, shared by every
    /// replica (without it they are kept in the store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<String>,
    /// Items a namespace holds before its search goes through an HNSW graph
    /// (approximate) instead of scoring every item; 0 never does.
    #[serde(default = "default_ann_from")]
    pub ann_from: usize,
    /// Candidates the graph's search keeps (higher: better recall, slower).
    #[serde(default = "default_ann_ef")]
    pub ann_ef: usize,
}

fn default_recent() -> usize {
    32
}

fn default_ann_from() -> usize {
    inferd_memory::AnnConfig::default().from
}

fn default_ann_ef() -> usize {
    inferd_memory::AnnConfig::default().ef_search
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DurabilitySetting {
    #[default]
    Fsync,
    Os,
}

impl MemorySettings {
    pub fn config(&self) -> Result<MemoryConfig> {
        Ok(MemoryConfig {
            durability: match self.durability {
                DurabilitySetting::Fsync => Durability::Fsync,
                DurabilitySetting::Os => Durability::Os,
            },
            recent_per_namespace: self.recent_per_namespace,
            limits: self.limits.clone(),
            ann: AnnConfig {
                from: if self.ann_from == 0 {
                    usize::MAX
                } else {
                    self.ann_from
                },
                ef_search: self.ann_ef,
                ..AnnConfig::default()
            },
            ..MemoryConfig::at(StateStore::parse(&self.state)?)
        })
    }

    pub fn problem(&self) -> Option<String> {
        if let Err(e) = StateStore::parse(&self.state) {
            return Some(format!("`memory.state`: {e}"));
        }
        if let Some(l) = &self.limits {
            if !self.keys {
                return Some(
                    "`memory.limits` holds managed keys' rate counters: turn keys on (`memory.keys = true`, `--keys`)"
                        .to_owned(),
                );
            }
            if !l.starts_with("redis://") {
                return Some(format!("`memory.limits` must be a redis:// URL, got {l:?}"));
            }
        }
        if !(1..=4096).contains(&self.ann_ef) {
            return Some(format!(
                "`memory.ann_ef` must be 1 to 4096, got {}",
                self.ann_ef
            ));
        }
        (self.recent_per_namespace == 0)
            .then(|| "`memory.recent_per_namespace` must be at least 1, got 0".to_owned())
    }
}

#[derive(Subcommand)]
pub enum MemoryCommand {
    /// Rebuild every projection from the log, from zero (stop the server first).
    Rebuild(StoreArgs),
    /// Bring the projections up to the log, rebuild them in a scratch file and
    /// compare the two states, projection by projection (stop the server first).
    Check(StoreArgs),
}

#[derive(Args)]
pub struct StoreArgs {
    /// The store (`--state` of `inferd serve`): a directory or a postgres:// URL.
    #[arg(long)]
    state: String,
    /// The embedding model the server's `vectors` projection uses (alias or
    /// directory); without it, that projection is left out.
    #[arg(long)]
    embedding_model: Option<String>,
    /// Items the `recent` projection keeps per namespace (as the server's).
    #[arg(long, default_value_t = 32)]
    recent_per_namespace: usize,
}

pub fn run(command: MemoryCommand) -> Result<()> {
    let (args, check) = match command {
        MemoryCommand::Rebuild(a) => (a, false),
        MemoryCommand::Check(a) => (a, true),
    };
    let config = MemoryConfig {
        recent_per_namespace: args.recent_per_namespace,
        ..MemoryConfig::at(StateStore::parse(&args.state)?)
    };
    let embedder: Option<Arc<dyn TextEmbedder>> = match &args.embedding_model {
        None => None,
        Some(m) => {
            let path = crate::registry::resolve(m, false, "python3")?;
            Some(Arc::new(inferd_embed::Embedder::load(&path).with_context(
                || format!("cannot load the embedding model {}", path.display()),
            )?))
        }
    };
    let started = std::time::Instant::now();
    if check {
        let comparisons = inferd_memory::check(&config, embedder)?;
        let mut differ = Vec::new();
        for c in &comparisons {
            println!(
                "{:<8} {}",
                c.projection,
                if c.same() { "same" } else { "DIFFERS" }
            );
            if !c.same() {
                differ.push(c.projection);
            }
        }
        eprintln!("checked in {:.1} s", started.elapsed().as_secs_f64());
        if !differ.is_empty() {
            anyhow::bail!(
                "a rebuild from the log differs from the live {}",
                differ.join(", ")
            );
        }
    } else {
        let digests = inferd_memory::rebuild(&config, embedder)?;
        for (name, _) in &digests {
            println!("{name:<8} rebuilt");
        }
        eprintln!("rebuilt in {:.1} s", started.elapsed().as_secs_f64());
    }
    Ok(())
}
