//! `<name>.toml` beside `<name>.wasm`: what a plugin is and what it asks for.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::config::{HostPattern, OnFailure};

/// Hard ceilings, whatever a manifest asks for.
pub const MAX_MEMORY_MB: u64 = 256;
pub const DEFAULT_MEMORY_MB: u64 = 64;
/// A moderator runs in the send path: its deadline is short by default, and capped.
pub const DEFAULT_MODERATOR_TIMEOUT_MS: u64 = 100;
pub const MAX_MODERATOR_TIMEOUT_MS: u64 = 1_000;
/// Unless a manifest sets `fuel`, the wall-clock deadline alone is a plugin's budget: the card
/// promises the responder its whole 10 s, whatever the CPU. A tight loop burns roughly 8e9 fuel
/// per second here, so 1e14 outlasts the longest deadline (`RESPONDER_TIMEOUT_MS` 120 s) on any
/// CPU up to ~100 times faster; it only matters if epoch interruption were ever missing. It stays
/// below 2^53 so `GET /api/plugins` shows it exactly to JavaScript clients.
pub const DEFAULT_FUEL: u64 = 100_000_000_000_000;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub description: String,
    /// Hosts the plugin may call with `http-fetch` (exact names, or `*.example.com`); it gets
    /// only those the operator also allows.
    #[serde(default)]
    pub allowed_hosts: Vec<HostPattern>,
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u64,
    #[serde(default = "default_fuel")]
    pub fuel: u64,
    /// A responder's: at most the global `RESPONDER_TIMEOUT_MS` (the smaller applies). A
    /// moderator's: its deadline per message, default [`DEFAULT_MODERATOR_TIMEOUT_MS`], at
    /// most [`MAX_MODERATOR_TIMEOUT_MS`].
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// For a moderator: what its failure means (default `allow`); the operator may override it.
    #[serde(default)]
    pub on_failure: Option<OnFailure>,
    /// Default configuration handed to the plugin.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// The settings users may give the plugin for themselves: key → what it means, for a form.
    /// Every other key (the `[config]` defaults, the host's) stays the operator's.
    #[serde(default)]
    pub user_config: BTreeMap<String, String>,
}

/// Keys the host sets for the operator; no user may override them.
pub const OPERATOR_KEYS: &[&str] = &["llm_api_url", "llm_model"];
const MAX_KEY_LEN: usize = 64;

fn default_memory_mb() -> u64 {
    DEFAULT_MEMORY_MB
}

fn default_fuel() -> u64 {
    DEFAULT_FUEL
}

impl Manifest {
    /// This plugin's deadline per message as a moderator.
    pub fn moderator_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(
            self.timeout_ms
                .unwrap_or(DEFAULT_MODERATOR_TIMEOUT_MS)
                .min(MAX_MODERATOR_TIMEOUT_MS),
        )
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let manifest: Manifest = toml::from_str(text).map_err(|e| e.to_string())?;
        let valid_name = !manifest.name.is_empty()
            && manifest
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid_name {
            return Err(format!(
                "name {:?} must be letters, digits, - or _",
                manifest.name
            ));
        }
        if manifest.memory_mb == 0 || manifest.memory_mb > MAX_MEMORY_MB {
            return Err(format!("memory_mb must be between 1 and {MAX_MEMORY_MB}"));
        }
        if manifest.timeout_ms == Some(0) {
            return Err("timeout_ms must be positive".into());
        }
        if manifest.fuel == 0 {
            return Err("fuel must be positive".into());
        }
        for (key, description) in &manifest.user_config {
            let valid = key.len() <= MAX_KEY_LEN
                && key.starts_with(|c: char| c.is_ascii_lowercase())
                && key
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !valid {
                return Err(format!(
                    "user_config key {key:?} must be lower-case letters, digits and _ \
                     (starting with a letter, at most {MAX_KEY_LEN})"
                ));
            }
            if OPERATOR_KEYS.contains(&key.as_str()) {
                return Err(format!("user_config key {key:?} is the operator's"));
            }
            if description.trim().is_empty() {
                return Err(format!("user_config key {key:?} needs a description"));
            }
        }
        Ok(manifest)
    }

    /// The manifest of the built-in responder: it may call exactly the LLM's host.
    pub fn builtin(llm_host: Option<HostPattern>) -> Self {
        Self {
            name: "llm-responder".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Asks the OpenAI-compatible chat-completion API at LLM_API_URL".into(),
            allowed_hosts: llm_host.into_iter().collect(),
            memory_mb: DEFAULT_MEMORY_MB,
            fuel: DEFAULT_FUEL,
            timeout_ms: None,
            on_failure: None,
            config: BTreeMap::new(),
            user_config: [
                (
                    "persona",
                    "How to answer for you, in your own words: tone, what to say, when you are \
                     back (e.g. \"Friendly and short. I'm in meetings until 5 pm.\")",
                ),
                (
                    "language",
                    "The language to answer in (e.g. \"French\"); unset: the language of the \
                     message",
                ),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_manifest_and_fills_defaults() {
        let manifest = Manifest::parse(
            r#"
            name = "away"
            version = "1.0.0"
            allowed_hosts = ["api.example.com"]
            [config]
            message = "Back soon"
            "#,
        )
        .expect("valid");
        assert_eq!(manifest.memory_mb, DEFAULT_MEMORY_MB);
        assert_eq!(manifest.fuel, DEFAULT_FUEL);
        assert_eq!(manifest.config["message"], "Back soon");
        assert_eq!(manifest.allowed_hosts[0].to_string(), "api.example.com");
    }

    #[test]
    fn refuses_bad_names_limits_and_unknown_keys() {
        for text in [
            "name = \"../etc\"\nversion = \"1\"",
            "name = \"a\"\nversion = \"1\"\nmemory_mb = 100000",
            "name = \"a\"\nversion = \"1\"\nfuel = 0",
            "name = \"a\"\nversion = \"1\"\nsurprise = true",
            "name = \"a\"\nversion = \"1\"\nallowed_hosts = [\"https://api.example.com/\"]",
            "name = \"a\"\nversion = \"1\"\nallowed_hosts = [\"*.com\"]",
            "name = \"a\"\nversion = \"1\"\n[user_config]\nllm_model = \"x\"",
            "name = \"a\"\nversion = \"1\"\n[user_config]\n\"Bad Key\" = \"x\"",
            "name = \"a\"\nversion = \"1\"\n[user_config]\nmessage = \" \"",
            "version = \"1\"",
        ] {
            assert!(Manifest::parse(text).is_err(), "{text}");
        }
    }
}
