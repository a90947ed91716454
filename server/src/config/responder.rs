//! The auto-responder for BUSY users: [`ResponderSettings`], its defaults (the fallback text,
//! the built-in plugin), and how the `LLM_*`, `RESPONDER_*`, `FALLBACK_MESSAGE` and `PLUGIN*`
//! variables are read. The plugin host and the responder service use them.

use std::path::PathBuf;
use std::time::Duration;

use super::env::Env;
use super::hosts::HostPattern;
use super::secrets::Secret;
use super::{ConfigError, parse_path, parse_trimmed, parse_ttl};

/// The auto-responder for BUSY users.
#[derive(Debug, Clone)]
pub struct ResponderSettings {
    /// An OpenAI-compatible chat-completions endpoint; `None`: every auto-reply is the fallback.
    pub llm_api_url: Option<reqwest::Url>,
    pub llm_api_key: Option<Secret>,
    pub llm_model: String,
    /// From receipt of the message to the auto-reply, whatever happens.
    pub timeout: Duration,
    /// Sent when the plugin cannot answer in time.
    pub fallback_message: String,
    /// Where operator plugins live (`<name>.wasm` + `<name>.toml`), watched for changes.
    pub plugins_dir: Option<PathBuf>,
    /// Where compiled plugins are kept between starts (`PLUGIN_CACHE_DIR`; default
    /// `DATA_DIR/plugin-cache`, `off`: none).
    pub plugin_cache_dir: Option<PathBuf>,
    /// Moderators run on every message before it is stored, in this order
    /// (`MODERATION_PLUGINS`; none by default).
    pub moderators: Vec<String>,
    /// The operator's say on what a moderator's failure means, overriding its manifest
    /// (`MODERATION_ON_FAILURE=name=allow|reject,...`).
    pub moderation_on_failure: std::collections::BTreeMap<String, OnFailure>,
    /// The plugin that answers; the built-in `llm-responder` unless set.
    pub plugin: String,
    /// Hosts plugins may call (exact names or `*.example.com`, with optional ports), besides
    /// the LLM's.
    pub allowed_hosts: Vec<HostPattern>,
    /// A plugin that fails this many calls in a row is benched (`None`: never).
    pub bench_after: Option<u32>,
    /// ... for this long; then it gets one call to prove itself.
    pub bench_for: Duration,
}

pub const DEFAULT_FALLBACK_MESSAGE: &str =
    "This user is unavailable right now. Your message was delivered and they will see it later.";
pub const BUILTIN_PLUGIN: &str = "llm-responder";

impl Default for ResponderSettings {
    fn default() -> Self {
        Self {
            llm_api_url: None,
            llm_api_key: None,
            llm_model: "gpt-4o-mini".into(),
            timeout: Duration::from_secs(10),
            fallback_message: DEFAULT_FALLBACK_MESSAGE.into(),
            plugins_dir: None,
            plugin_cache_dir: None,
            plugin: BUILTIN_PLUGIN.into(),
            moderators: Vec::new(),
            moderation_on_failure: std::collections::BTreeMap::new(),
            allowed_hosts: Vec::new(),
            bench_after: Some(5),
            bench_for: Duration::from_secs(60),
        }
    }
}

impl ResponderSettings {
    pub(super) fn read(env: &Env<'_>, data_dir: &std::path::Path) -> Result<Self, ConfigError> {
        let defaults = Self::default();
        let llm_api_url = env.optional("LLM_API_URL", parse_llm_api_url)?;
        let timeout = env.var("RESPONDER_TIMEOUT_MS", defaults.timeout, parse_timeout)?;
        let fallback_message = env.var(
            "FALLBACK_MESSAGE",
            defaults.fallback_message,
            parse_fallback_message,
        )?;
        let plugin = env.var("RESPONDER_PLUGIN", defaults.plugin, parse_trimmed)?;
        let bench_after = env.var(
            "PLUGIN_BENCH_AFTER",
            defaults.bench_after,
            parse_bench_after,
        )?;
        let bench_for = env.var("PLUGIN_BENCH_FOR", defaults.bench_for, parse_bench_for)?;
        Ok(Self {
            bench_after,
            bench_for,
            llm_api_url,
            llm_api_key: env
                .optional("LLM_API_KEY", |raw| Ok(Secret::new(raw.trim().to_owned())))?,
            llm_model: env.var("LLM_MODEL", defaults.llm_model, parse_trimmed)?,
            timeout,
            fallback_message,
            plugins_dir: env.optional("PLUGINS_DIR", parse_path)?,
            plugin_cache_dir: env.var(
                "PLUGIN_CACHE_DIR",
                Some(data_dir.join("plugin-cache")),
                parse_cache_dir,
            )?,
            plugin,
            moderators: env.var("MODERATION_PLUGINS", defaults.moderators, parse_moderators)?,
            moderation_on_failure: env.var(
                "MODERATION_ON_FAILURE",
                defaults.moderation_on_failure,
                parse_on_failure_overrides,
            )?,
            allowed_hosts: env.var(
                "PLUGIN_ALLOWED_HOSTS",
                defaults.allowed_hosts,
                parse_allowed_hosts,
            )?,
        })
    }
}

/// `PLUGIN_CACHE_DIR`: a directory, or `off`.
fn parse_cache_dir(raw: &str) -> Result<Option<PathBuf>, String> {
    if raw.trim().eq_ignore_ascii_case("off") {
        Ok(None)
    } else {
        parse_path(raw).map(Some)
    }
}

/// `LLM_API_URL`: an http(s) URL with a host.
fn parse_llm_api_url(raw: &str) -> Result<reqwest::Url, String> {
    reqwest::Url::parse(raw.trim())
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
        .ok_or_else(|| {
            "must be an http(s) URL such as https://api.openai.com/v1/chat/completions".into()
        })
}

/// `RESPONDER_TIMEOUT_MS`: 100 to 120000 milliseconds.
fn parse_timeout(raw: &str) -> Result<Duration, String> {
    raw.trim()
        .parse::<u64>()
        .ok()
        .filter(|ms| (100..=120_000).contains(ms))
        .map(Duration::from_millis)
        .ok_or_else(|| format!("must be milliseconds between 100 and 120000, got {raw:?}"))
}

/// `FALLBACK_MESSAGE`: whatever a user could send.
fn parse_fallback_message(raw: &str) -> Result<String, String> {
    crate::domain::Content::parse(raw.to_owned())
        .map(crate::domain::Content::into_string)
        .map_err(|e| e.to_string())
}

/// `PLUGIN_BENCH_AFTER`: a whole number of failures, 0 for never.
fn parse_bench_after(raw: &str) -> Result<Option<u32>, String> {
    raw.trim()
        .parse::<u32>()
        .map(|n| (n > 0).then_some(n))
        .map_err(|_| format!("must be a whole number of failures (0: never), got {raw:?}"))
}

/// `PLUGIN_BENCH_FOR`: 1s to 24h.
fn parse_bench_for(raw: &str) -> Result<Duration, String> {
    parse_ttl(raw)
        .filter(|d| *d <= Duration::from_secs(24 * 60 * 60))
        .ok_or_else(|| format!("must be a duration from 1s to 24h, such as 60s or 5m, got {raw:?}"))
}

/// `PLUGIN_ALLOWED_HOSTS`: comma-separated host patterns; empty items are skipped.
fn parse_allowed_hosts(raw: &str) -> Result<Vec<HostPattern>, String> {
    raw.split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(HostPattern::parse)
        .collect()
}

/// What a moderator's failure (a trap, an error, its deadline, being benched, an invalid
/// replacement) means for the message: a manifest's `on_failure`, or the operator's override.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// The message goes on as it stands (fail open): the default.
    Allow,
    /// The message is refused (fail closed).
    Reject,
}

impl OnFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Reject => "reject",
        }
    }
}

/// `MODERATION_PLUGINS`: comma-separated plugin names, run in that order; no repeats.
fn parse_moderators(raw: &str) -> Result<Vec<String>, String> {
    let mut names: Vec<String> = Vec::new();
    for name in raw.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!(
                "{name:?} is not a plugin name (letters, digits, - or _)"
            ));
        }
        if names.iter().any(|n| n == name) {
            return Err(format!("{name:?} is named twice"));
        }
        names.push(name.to_owned());
    }
    Ok(names)
}

/// `MODERATION_ON_FAILURE`: comma-separated `name=allow` or `name=reject`.
fn parse_on_failure_overrides(
    raw: &str,
) -> Result<std::collections::BTreeMap<String, OnFailure>, String> {
    raw.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            let (name, value) = item
                .split_once('=')
                .ok_or_else(|| format!("{item:?} is not name=allow or name=reject"))?;
            let value = match value.trim() {
                "allow" => OnFailure::Allow,
                "reject" => OnFailure::Reject,
                other => return Err(format!("{other:?} is neither allow nor reject")),
            };
            Ok((name.trim().to_owned(), value))
        })
        .collect()
}
