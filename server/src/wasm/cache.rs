//! Compiled components on disk (`PLUGIN_CACHE_DIR`), so a restart does not compile every plugin
//! again: Cranelift takes 13–16 s for the JavaScript and Python engines on two cores, while
//! loading the compiled code takes milliseconds.
//!
//! An entry is named by the SHA-256 of the component's bytes and of the engine's compatibility
//! hash (wasmtime's version and every setting that changes the code), so a new wasmtime, other
//! settings or other bytes never meet an old entry. Deserializing compiled code runs it without
//! validation, so only files this server wrote are read: each entry carries an HMAC-SHA256 of its
//! name and contents under a key kept in the cache directory, created with it, readable only by
//! the server's user. A damaged, foreign or stale entry is ignored (and written anew). Entries are
//! written to a temporary file and renamed, so a reader never sees half of one. Nothing here can
//! fail a load: the cache only ever saves time.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

const KEY_FILE: &str = "cache.key";
const KEY_BYTES: usize = 32;
const MAC_BYTES: usize = 32;

pub struct ComponentCache {
    dir: PathBuf,
    key: [u8; KEY_BYTES],
}

/// Feeds `Hash` output into SHA-256, so the engine's compatibility hash becomes stable bytes.
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        0 // unused: the digest is read with `finalize`
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl ComponentCache {
    /// Opens (creating) the directory and its key.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        restrict(dir, 0o700);
        let key_path = dir.join(KEY_FILE);
        let key = match std::fs::read(&key_path) {
            Ok(bytes) if bytes.len() == KEY_BYTES => {
                let mut key = [0; KEY_BYTES];
                key.copy_from_slice(&bytes);
                key
            }
            // Missing or damaged: a new key, which makes every old entry foreign (rebuilt).
            _ => {
                let mut key = [0; KEY_BYTES];
                getrandom::fill(&mut key).map_err(|e| anyhow::anyhow!("random key: {e}"))?;
                write_atomically(&key_path, &key)
                    .with_context(|| format!("writing {}", key_path.display()))?;
                key
            }
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            key,
        })
    }

    fn entry_name(engine: &Engine, wasm: &[u8]) -> String {
        let mut hasher = ShaHasher(Sha256::new());
        hasher.write(&Sha256::digest(wasm));
        engine.precompile_compatibility_hash().hash(&mut hasher);
        format!("{}.cwasm", hex(&hasher.0.finalize()))
    }

    fn mac(&self, name: &str, body: &[u8]) -> Hmac<Sha256> {
        let mut mac =
            <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key).expect("HMAC takes any key size");
        mac.update(name.as_bytes());
        mac.update(body);
        mac
    }

    /// The compiled component for `wasm`, if this server cached it before.
    pub fn get(&self, engine: &Engine, wasm: &[u8]) -> Option<Component> {
        let name = Self::entry_name(engine, wasm);
        let bytes = std::fs::read(self.dir.join(&name)).ok()?;
        if bytes.len() < MAC_BYTES {
            return None;
        }
        let (tag, body) = bytes.split_at(MAC_BYTES);
        if self.mac(&name, body).verify_slice(tag).is_err() {
            tracing::warn!(entry = %name, "ignoring a plugin cache entry this server did not write");
            return None;
        }
        // SAFETY: `body` is what `Component::serialize` wrote for this engine's settings (the
        // name covers them), unchanged since: the HMAC under this server's key says so.
        match unsafe { Component::deserialize(engine, body) } {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(entry = %name, error = %e, "ignoring an unusable plugin cache entry");
                None
            }
        }
    }

    /// Keeps `component` (compiled from `wasm`) for the next start; failures are logged.
    pub fn put(&self, engine: &Engine, wasm: &[u8], component: &Component) {
        let name = Self::entry_name(engine, wasm);
        let stored = component
            .serialize()
            .map_err(anyhow::Error::from)
            .and_then(|body| {
                let tag = self.mac(&name, &body).finalize().into_bytes();
                let mut bytes = Vec::with_capacity(MAC_BYTES + body.len());
                bytes.extend_from_slice(&tag);
                bytes.extend_from_slice(&body);
                write_atomically(&self.dir.join(&name), &bytes)
            });
        if let Err(e) = stored {
            tracing::warn!(entry = %name, error = %format!("{e:#}"), "could not cache a compiled plugin");
        }
    }
}

/// Writes `bytes` to a temporary file beside `path`, then renames it into place.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut suffix = [0u8; 8];
    getrandom::fill(&mut suffix).map_err(|e| anyhow::anyhow!("random name: {e}"))?;
    let temporary = path.with_extension(format!("tmp-{}", hex(&suffix)));
    let written = (|| {
        let mut file = std::fs::File::create(&temporary)?;
        restrict(&temporary, 0o600);
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    Ok(written?)
}

#[cfg(unix)]
fn restrict(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
}

#[cfg(not(unix))]
fn restrict(_: &Path, _: u32) {}

#[cfg(test)]
mod tests {
    use super::*;

    fn away_message() -> Vec<u8> {
        std::fs::read(Path::new(super::super::PLUGIN_BUILD_DIR).join("away_message.wasm"))
            .expect("the build script builds the away-message example")
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".cwasm"))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_compiled_component_comes_back_only_as_this_server_wrote_it() {
        let engine = Engine::default();
        let dir = tempfile::tempdir().expect("dir");
        let cache = ComponentCache::open(dir.path()).expect("cache");
        let wasm = away_message();
        assert!(cache.get(&engine, &wasm).is_none(), "nothing cached yet");
        let compiled = Component::new(&engine, &wasm).expect("compiles");
        cache.put(&engine, &wasm, &compiled);
        let [entry] = &entries(dir.path())[..] else {
            panic!("one entry: {:?}", entries(dir.path()));
        };
        assert!(cache.get(&engine, &wasm).is_some(), "found after a put");
        // Another server's cache (another key) does not trust this one's entries.
        let reopened = ComponentCache::open(dir.path()).expect("same key");
        assert!(reopened.get(&engine, &wasm).is_some(), "the key is kept");
        std::fs::remove_file(dir.path().join(KEY_FILE)).expect("key");
        let rekeyed = ComponentCache::open(dir.path()).expect("new key");
        assert!(
            rekeyed.get(&engine, &wasm).is_none(),
            "a foreign entry is ignored"
        );

        // A changed byte is caught before anything is deserialized.
        cache.put(&engine, &wasm, &compiled);
        let path = dir.path().join(entry);
        let mut bytes = std::fs::read(&path).expect("entry");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).expect("tamper");
        assert!(
            cache.get(&engine, &wasm).is_none(),
            "a damaged entry is ignored"
        );

        // Other bytes, or other engine settings, are another entry.
        let mut other = wasm.clone();
        other.extend_from_slice(b"\0");
        assert!(cache.get(&engine, &other).is_none());
        let mut config = wasmtime::Config::new();
        config.consume_fuel(true);
        let fueled = Engine::new(&config).expect("engine");
        assert_ne!(
            ComponentCache::entry_name(&engine, &wasm),
            ComponentCache::entry_name(&fueled, &wasm)
        );
    }
}
