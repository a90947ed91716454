//! `PLUGINS_DIR`: load every `<name>.wasm` with its `<name>.toml` at start, then look again every
//! two seconds and load what changed, unload what went away. A plugin that fails to load is
//! logged and skipped; it never stops the server.
//!
//! Polling (not inotify) because it is two dozen lines, works on every filesystem including
//! network and container mounts, and a plugin change is not latency-critical.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use crate::config::BUILTIN_PLUGIN;
use crate::wasm::PluginHost;

const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// What a plugin's files looked like when it was last loaded.
type Fingerprint = (Option<SystemTime>, u64, Option<SystemTime>, u64);

/// Loads the folder now, then keeps it in sync until the host is dropped.
pub async fn watch_plugins_dir(host: &Arc<PluginHost>, dir: PathBuf) {
    let mut seen = HashMap::new();
    sync(host, &dir, &mut seen);
    let weak: Weak<PluginHost> = Arc::downgrade(host);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(POLL_INTERVAL);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let Some(host) = weak.upgrade() else { break };
            sync(&host, &dir, &mut seen);
        }
    });
}

fn fingerprint(wasm: &Path) -> Option<Fingerprint> {
    let wasm_meta = std::fs::metadata(wasm).ok()?;
    let toml_meta = std::fs::metadata(wasm.with_extension("toml")).ok()?;
    Some((
        wasm_meta.modified().ok(),
        wasm_meta.len(),
        toml_meta.modified().ok(),
        toml_meta.len(),
    ))
}

fn sync(host: &PluginHost, dir: &Path, seen: &mut HashMap<PathBuf, (Fingerprint, String)>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot read PLUGINS_DIR");
            return;
        }
    };
    let mut present = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|ext| ext != "wasm") {
            continue;
        }
        let Some(print) = fingerprint(&path) else {
            continue;
        };
        present.push(path.clone());
        if seen.get(&path).is_some_and(|(known, _)| *known == print) {
            continue;
        }
        match host.load_file(&path) {
            Ok(plugin) if plugin.manifest.name == BUILTIN_PLUGIN => {
                tracing::info!(path = %path.display(), "plugin replaces the built-in llm-responder");
                seen.insert(path, (print, plugin.manifest.name.clone()));
            }
            Ok(plugin) => {
                tracing::info!(plugin = %plugin.manifest.name, version = %plugin.manifest.version, "plugin loaded");
                seen.insert(path, (print, plugin.manifest.name.clone()));
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %format!("{e:#}"), "plugin skipped");
                // Remember the failure so it is not retried until the files change.
                seen.insert(path, (print, String::new()));
            }
        }
    }
    seen.retain(|path, (_, name)| {
        let keep = present.contains(path);
        if !keep && !name.is_empty() && name != BUILTIN_PLUGIN && host.unload(name) {
            tracing::info!(plugin = %name, "plugin removed");
        }
        keep
    });
}
