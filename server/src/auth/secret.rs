use std::io::Write;
use std::path::Path;

use anyhow::Context;
use base64::Engine;

use crate::config::JwtSecret;

const SECRET_FILE: &str = "jwt_secret";

/// The configured secret, or else the one kept in `data_dir` (created on first start), so
/// `cargo run` works without setup and tokens stay valid across restarts.
pub fn load_or_create_secret(
    configured: Option<JwtSecret>,
    data_dir: &Path,
) -> anyhow::Result<JwtSecret> {
    if let Some(secret) = configured {
        return Ok(secret);
    }
    let path = data_dir.join(SECRET_FILE);
    match std::fs::read(&path) {
        // Left by an older release that ran out of space while writing it: no token was ever
        // signed with it (that start failed), so a new one is as good.
        Ok(bytes) if bytes.is_empty() => {
            tracing::warn!(path = %path.display(), "the kept JWT secret is empty; generating a new one");
            create_secret(&path)
        }
        Ok(bytes) => {
            let secret = JwtSecret::new(trim_ascii_end(bytes))
                .map_err(|problem| anyhow::anyhow!("{} {problem}", path.display()))?;
            tracing::warn!(
                path = %path.display(),
                "JWT_SECRET is not set; using the generated secret kept in the data directory"
            );
            Ok(secret)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_secret(&path),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn create_secret(path: &Path) -> anyhow::Result<JwtSecret> {
    let mut random = [0u8; 48];
    getrandom::fill(&mut random).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random);
    write_private(path, encoded.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    tracing::warn!(
        path = %path.display(),
        "JWT_SECRET is not set; generated a random secret and kept it in the data directory \
         (set JWT_SECRET to share one secret between servers)"
    );
    JwtSecret::new(encoded.into_bytes()).map_err(anyhow::Error::msg)
}

fn trim_ascii_end(mut bytes: Vec<u8>) -> Vec<u8> {
    while bytes.last().is_some_and(u8::is_ascii_whitespace) {
        bytes.pop();
    }
    bytes
}

/// Creates the file readable by its owner only (0600) before any secret byte is written, and
/// whole or not at all: written beside it and renamed into place, so that a full disk (or a
/// crash) leaves no empty or partial secret that would stop every later start.
fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let partial = path.with_extension(format!("partial-{}", std::process::id()));
    let written = (|| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&partial)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&partial, path)?;
        // The rename itself survives a power cut only once the directory is synced.
        match path.parent() {
            Some(dir) => std::fs::File::open(dir)?.sync_all(),
            None => Ok(()),
        }
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_then_reuses() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = load_or_create_secret(None, dir.path()).expect("created");
        let second = load_or_create_secret(None, dir.path()).expect("loaded");
        assert_eq!(first.expose(), second.expose());
        assert!(first.expose().len() >= crate::config::MIN_JWT_SECRET_BYTES);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(SECRET_FILE))
                .expect("metadata")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn configured_secret_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let configured = JwtSecret::new(vec![7; 32]).expect("valid");
        let secret = load_or_create_secret(Some(configured), dir.path()).expect("secret");
        assert_eq!(secret.expose(), &[7; 32]);
        assert!(!dir.path().join(SECRET_FILE).exists());
    }
}
