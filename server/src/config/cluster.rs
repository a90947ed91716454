//! How a node joins a cluster (`NATS_URL`, `NODE_ID`, `NATS_SUBJECT_PREFIX`): the settings, the
//! NATS URL that never shows its credentials, and the rules for node names and subject
//! prefixes. Whether a cluster may be configured at all (it needs MongoDB and a shared secret)
//! is checked by `Config::from_lookup`, which sees every variable.

use super::ConfigError;
use super::env::Env;
use super::secrets::Secret;

/// How a node joins a cluster: see docs/cluster.md.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub nats_url: NatsUrl,
    /// This node's name (`NODE_ID`), unique in the cluster; kept on every message it stores.
    pub node_id: String,
    /// The first token(s) of every NATS subject the cluster uses (`NATS_SUBJECT_PREFIX`), so
    /// that several clusters can share one NATS.
    pub subject_prefix: String,
}

impl ClusterSettings {
    /// The rest of the cluster's settings, once `NATS_URL` has made this node one.
    pub(super) fn read(env: &Env<'_>, nats_url: NatsUrl) -> Result<Self, ConfigError> {
        let node_id = env
            .optional("NODE_ID", parse_node_id)?
            .unwrap_or_else(generated_node_id);
        let subject_prefix = env.var(
            "NATS_SUBJECT_PREFIX",
            "palaver".to_owned(),
            parse_subject_prefix,
        )?;
        Ok(Self {
            nats_url,
            node_id,
            subject_prefix,
        })
    }
}

/// One or more NATS server URLs, comma-separated (`nats://`, `tls://`, `ws://`, `wss://`). They
/// may carry credentials (`nats://user:password@host`, `nats://token@host`), so `Debug` and
/// [`NatsUrl::redacted`] replace any user part with `***`.
#[derive(Clone)]
pub struct NatsUrl(Secret);

impl NatsUrl {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let url = Self(Secret::new(raw.trim().to_owned()));
        for server in url.expose().split(',') {
            let server = server.trim();
            let ok = ["nats://", "tls://", "ws://", "wss://"]
                .iter()
                .any(|scheme| server.starts_with(scheme) && server.len() > scheme.len());
            if !ok {
                return Err(format!(
                    "must be nats://host:port (or tls://, ws://, wss://; several separated by \
                     commas), got {:?}",
                    Self::redact(server)
                ));
            }
        }
        Ok(url)
    }

    pub fn expose(&self) -> &str {
        self.0.expose()
    }

    /// The servers with any user, password or token replaced by `***`.
    pub fn redacted(&self) -> String {
        self.expose()
            .split(',')
            .map(|server| Self::redact(server.trim()))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn redact(server: &str) -> String {
        let Some(start) = server.find("://").map(|i| i + 3) else {
            return server.to_owned();
        };
        match server.rfind('@').filter(|&at| at >= start) {
            Some(at) => format!("{}***{}", &server[..start], &server[at..]),
            None => server.to_owned(),
        }
    }
}

impl std::fmt::Debug for NatsUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// `NODE_ID`: 1 to 64 of `A-Z a-z 0-9 - _` (it is a NATS-safe token and a stored field).
pub(super) fn parse_node_id(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    let ok = (1..=64).contains(&raw.len())
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(raw.to_owned())
    } else {
        Err(format!(
            "must be 1 to 64 letters, digits, '-' or '_', got {raw:?}"
        ))
    }
}

/// `NATS_SUBJECT_PREFIX`: dot-separated tokens of `A-Z a-z 0-9 - _`.
fn parse_subject_prefix(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    let ok = raw.len() <= 128
        && raw.split('.').all(|token| {
            !token.is_empty()
                && token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(raw.to_owned())
    } else {
        Err(format!(
            "must be dot-separated tokens of letters, digits, '-' or '_' (such as \
             palaver or acme.chat), got {raw:?}"
        ))
    }
}

/// A node name nobody else has: the host's name (when the environment tells it) and randomness.
fn generated_node_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .and_then(|h| parse_node_id(&h).ok())
        .map(|h| h.chars().take(40).collect::<String>())
        .unwrap_or_else(|| "node".to_owned());
    let mut random = [0u8; 4];
    let _ = getrandom::fill(&mut random);
    let suffix: String = random.iter().map(|b| format!("{b:02x}")).collect();
    format!("{host}-{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_credentials_never_show() {
        let url = NatsUrl::parse("nats://user:s3cret@a:4222, tls://tok3n@b:4222").expect("url");
        assert_eq!(url.redacted(), "nats://***@a:4222,tls://***@b:4222");
        assert!(!format!("{url:?}").contains("s3cret"));
        let refused = NatsUrl::parse("http://user:s3cret@a")
            .err()
            .unwrap_or_default();
        assert!(!refused.contains("s3cret"), "{refused}");
    }
}
