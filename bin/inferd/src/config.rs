//! The TOML config file of `inferd serve --config`: the same keys as the flags
//! (snake_case), all optional. Unknown keys are an error naming the key, so a typo
//! never silently falls back to a default.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub model: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub api_key: Option<String>,
    pub threads: Option<usize>,
    pub max_batch_tokens: Option<usize>,
    pub max_running: Option<usize>,
    pub max_waiting: Option<usize>,
    pub max_prefill_tokens_while_decoding: Option<usize>,
    pub kv_cache_mib: Option<usize>,
    pub prefix_caching: Option<bool>,
    pub shutdown_timeout_secs: Option<u64>,
    pub request_timeout_secs: Option<u64>,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<FileConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("config file {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_keys_and_names_unknown_ones() {
        let c: FileConfig =
            toml::from_str("port = 9000\nmax_batch_tokens = 128\nprefix_caching = false\n")
                .unwrap();
        assert_eq!(
            (c.port, c.max_batch_tokens, c.prefix_caching),
            (Some(9000), Some(128), Some(false))
        );
        let err = toml::from_str::<FileConfig>("prot = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("prot"), "{err}");
    }
}
