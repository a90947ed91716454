//! `PLUGINS_DIR`: load every `<name>.wasm` with its `<name>.toml` at start, then look again every
//! two seconds and load what changed, unload what went away. A plugin that fails to load is
//! logged and skipped; it never stops the server.
//!
//! Listening never waits for compiling (the JavaScript and Python engines take Cranelift 15–20 s
//! on two cores when nothing is cached): at start the folder's manifests are read and their
//! plugins marked as loading, and the compiling happens in the background. Until a plugin is
//! ready, `GET /api/plugins` shows it as `loading` and its users get the fallback.
//!
//! Polling (not inotify) because it is a few dozen lines, works on every filesystem including
//! network and container mounts, and a plugin change is not latency-critical. Reading files and
//! compiling components is blocking work: it runs on the blocking pool, never on a worker.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use anyhow::Context;

use crate::config::BUILTIN_PLUGIN;
use crate::wasm::{Manifest, PluginHost};

/// How often the folder is looked at: a few `stat`s, so often enough that a plugin dropped in
/// starts compiling within a quarter of a second (part of "dropped in to first answer").
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// What a plugin's files looked like when it was last loaded.
type Fingerprint = (Option<SystemTime>, u64, Option<SystemTime>, u64);

/// Path of a `.wasm` → its fingerprint and the plugin name it loaded as ("" if it failed).
type Seen = HashMap<PathBuf, (Fingerprint, String)>;

/// Marks the folder's plugins as loading now; loads them in the background, then keeps the
/// folder in sync until the host is dropped.
pub async fn watch_plugins_dir(host: &Arc<PluginHost>, dir: PathBuf) {
    let (scanned, scan_dir) = (host.clone(), dir.clone());
    let _ = tokio::task::spawn_blocking(move || mark_loading(&scanned, &scan_dir)).await;
    let weak: Weak<PluginHost> = Arc::downgrade(host);
    tokio::spawn(async move {
        let mut seen = Seen::new();
        let mut ticker = tokio::time::interval(POLL_INTERVAL);
        loop {
            ticker.tick().await;
            let Some(host) = weak.upgrade() else { break };
            seen = sync_blocking(host, dir.clone(), seen).await;
        }
    });
}

/// Reads the manifests of the folder's plugins (not their code) and marks them as loading.
fn mark_loading(host: &PluginHost, dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|ext| ext != "wasm") {
            continue;
        }
        let manifest = std::fs::read_to_string(path.with_extension("toml"))
            .ok()
            .and_then(|text| Manifest::parse(&text).ok());
        if let Some(manifest) = manifest {
            host.loading_started(&manifest);
        }
    }
}

async fn sync_blocking(host: Arc<PluginHost>, dir: PathBuf, mut seen: Seen) -> Seen {
    let kept = seen.clone();
    tokio::task::spawn_blocking(move || {
        sync(&host, &dir, &mut seen);
        seen
    })
    .await
    .unwrap_or_else(|e| {
        tracing::error!(error = %e, "PLUGINS_DIR sync failed");
        kept
    })
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

/// Why a pair was not loaded this time.
#[derive(Debug)]
enum Skip {
    /// A file changed while it was read (a copy in progress): try again next time.
    InFlux,
    /// Broken until its files change.
    Broken(anyhow::Error),
}

/// Reads `<name>.toml` and `<name>.wasm` as one consistent pair: if either changes while they
/// are read, nothing is loaded (new code never runs under an old manifest, or the reverse).
fn read_pair(wasm_path: &Path, before: Fingerprint) -> Result<(Manifest, Vec<u8>), Skip> {
    let manifest_path = wasm_path.with_extension("toml");
    let text = std::fs::read_to_string(&manifest_path)
        .with_context(|| format!("reading {}", manifest_path.display()))
        .map_err(Skip::Broken)?;
    let wasm = std::fs::read(wasm_path)
        .with_context(|| format!("reading {}", wasm_path.display()))
        .map_err(Skip::Broken)?;
    let text_again = std::fs::read_to_string(&manifest_path).unwrap_or_default();
    if fingerprint(wasm_path) != Some(before) || text_again != text || wasm.len() as u64 != before.1
    {
        return Err(Skip::InFlux);
    }
    let manifest = Manifest::parse(&text)
        .map_err(|e| Skip::Broken(anyhow::anyhow!("{}: {e}", manifest_path.display())))?;
    Ok((manifest, wasm))
}

fn sync(host: &PluginHost, dir: &Path, seen: &mut Seen) {
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
        let loaded = read_pair(&path, print).and_then(|(manifest, wasm)| {
            host.loading_started(&manifest);
            host.load(manifest, &wasm).map_err(Skip::Broken)
        });
        match loaded {
            Ok(plugin) => {
                if plugin.manifest.name == BUILTIN_PLUGIN {
                    tracing::info!(path = %path.display(), "plugin replaces the built-in llm-responder");
                } else {
                    tracing::info!(plugin = %plugin.manifest.name, version = %plugin.manifest.version, "plugin loaded");
                }
                let previous = seen.insert(path, (print, plugin.manifest.name.clone()));
                // The file now holds another plugin: the old name goes.
                if let Some((_, old)) = previous
                    && !old.is_empty()
                    && old != plugin.manifest.name
                {
                    host.unload(&old);
                }
            }
            Err(Skip::InFlux) => {
                tracing::debug!(path = %path.display(), "plugin files changing; retrying later");
            }
            Err(Skip::Broken(e)) => {
                tracing::warn!(path = %path.display(), error = %format!("{e:#}"), "plugin skipped");
                // Remember the failure so it is not retried until the files change.
                seen.insert(path, (print, String::new()));
            }
        }
    }
    // Every pair of this pass is loaded or skipped by now.
    host.loading_done();
    seen.retain(|path, (_, name)| {
        let keep = present.contains(path);
        if !keep && !name.is_empty() && host.unload(name) {
            if name == BUILTIN_PLUGIN {
                tracing::info!("plugin override removed; the built-in llm-responder is back");
            } else {
                tracing::info!(plugin = %name, "plugin removed");
            }
        }
        keep
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wasm::{HostRules, NetworkPolicy, PLUGIN_BUILD_DIR};

    #[test]
    fn plugins_are_loading_from_the_first_look_until_they_are_compiled() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::copy(
            Path::new(PLUGIN_BUILD_DIR).join("away_message.wasm"),
            dir.path().join("away.wasm"),
        )
        .expect("copy");
        std::fs::write(
            dir.path().join("away.toml"),
            "name = \"away\"\nversion = \"1\"\n",
        )
        .expect("toml");
        let network = NetworkPolicy::new(HostRules::new([]), None).expect("policy");
        let host = PluginHost::new(network, None).expect("host");

        mark_loading(&host, dir.path());
        assert!(host.is_loading("away"));
        assert!(host.get("away").is_none());
        assert_eq!(
            host.loading()
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>(),
            ["away"]
        );

        let mut seen = Seen::new();
        sync(&host, dir.path(), &mut seen);
        assert!(host.get("away").is_some(), "loaded");
        assert!(!host.is_loading("away"));
        assert!(host.loading().is_empty());
    }

    const MANIFEST: &str = "name = \"pair\"\nversion = \"1\"\n";

    #[test]
    fn a_pair_that_changes_while_it_is_read_is_not_loaded() {
        let dir = tempfile::tempdir().expect("dir");
        let wasm = dir.path().join("pair.wasm");
        std::fs::write(&wasm, b"\0asm old code").expect("wasm");
        std::fs::write(wasm.with_extension("toml"), MANIFEST).expect("toml");
        let before = fingerprint(&wasm).expect("fingerprint");
        let (manifest, bytes) = read_pair(&wasm, before).expect("a settled pair reads");
        assert_eq!(
            (manifest.name.as_str(), bytes.as_slice()),
            ("pair", &b"\0asm old code"[..])
        );

        // New code lands after the fingerprint was taken (a copy in progress): not loaded now,
        // and not remembered as broken either, so the next look loads the finished pair.
        std::fs::write(&wasm, b"\0asm new code, longer").expect("wasm");
        assert!(matches!(read_pair(&wasm, before), Err(Skip::InFlux)));
        std::fs::write(
            wasm.with_extension("toml"),
            "name = \"pair\"\nversion = \"2\"\n",
        )
        .expect("toml");
        let settled = fingerprint(&wasm).expect("fingerprint");
        let (manifest, _) = read_pair(&wasm, settled).expect("reads once settled");
        assert_eq!(manifest.version, "2");
    }
}
