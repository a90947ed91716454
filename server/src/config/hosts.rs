//! The host-pattern grammar for plugin HTTP (`PLUGIN_ALLOWED_HOSTS`, a manifest's
//! `allowed_hosts`): what a pattern may say, checked when it is read, and which host and port it
//! matches. The rule lives here, typed at read; the plugin host (`wasm`) enforces it on every
//! request, apart from this.

use std::net::IpAddr;

/// Ports a pattern without one allows: the default ports of http and https.
const DEFAULT_PORTS: [u16; 2] = [80, 443];

/// One allow-list entry, checked when it is read (`PLUGIN_ALLOWED_HOSTS`, a manifest's
/// `allowed_hosts`): `api.example.com`, `*.example.com` (its subdomains, not itself), an IP
/// address (`10.0.0.5`, `[fd00::1]`), each with an optional `:port`. Without a port only 80 and
/// 443 are allowed: naming a host is not permission to reach its database port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    host: HostMatch,
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostMatch {
    /// A host name or an IP address (IPv6 without brackets), lower-case.
    Exact(String),
    /// `.example.com`: any name ending so.
    Subdomains(String),
}

impl HostPattern {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let text = raw.trim().to_ascii_lowercase();
        let bad = |why: &str| format!("host pattern {raw:?} {why}");
        if text.is_empty() {
            return Err(bad("is empty"));
        }
        if text.contains("://") || text.contains('/') || text.contains('@') {
            return Err(bad("must be a host (and port), not a URL"));
        }
        // `[v6]:port`, `[v6]`, a bare IPv6 address, or `host[:port]`.
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (inside, after) = rest
                .split_once(']')
                .ok_or_else(|| bad("has an unclosed ["))?;
            let port = match after {
                "" => None,
                _ => Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| bad("has junk after ]"))?,
                ),
            };
            (inside.to_owned(), port.map(str::to_owned))
        } else if text.parse::<std::net::Ipv6Addr>().is_ok() {
            (text.clone(), None)
        } else {
            match text.rsplit_once(':') {
                Some((host, port)) => (host.to_owned(), Some(port.to_owned())),
                None => (text.clone(), None),
            }
        };
        let port = port
            .map(|p| p.parse::<u16>().ok().filter(|p| *p > 0))
            .map(|p| p.ok_or_else(|| bad("has a port that is not 1-65535")))
            .transpose()?;
        if host.parse::<IpAddr>().is_ok() {
            return Ok(Self {
                host: HostMatch::Exact(host),
                port,
            });
        }
        let (wildcard, name) = match host.strip_prefix("*.") {
            Some(name) => (true, name),
            None => (false, host.as_str()),
        };
        if name.contains('*') {
            return Err(bad("may only start with *. (a wildcard for subdomains)"));
        }
        let labels: Vec<&str> = name.split('.').collect();
        let valid = name.len() <= 253
            && labels.iter().all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
        if !valid {
            return Err(bad("is not a valid host name"));
        }
        if wildcard && labels.len() < 2 {
            return Err(bad("would allow a whole top-level domain"));
        }
        let host = if wildcard {
            HostMatch::Subdomains(format!(".{name}"))
        } else {
            HostMatch::Exact(name.to_owned())
        };
        Ok(Self { host, port })
    }

    /// A host with its exact port, e.g. `LLM_API_URL`'s.
    pub fn exact(host: &str, port: u16) -> Self {
        Self {
            host: HostMatch::Exact(host.trim_matches(['[', ']']).to_ascii_lowercase()),
            port: Some(port),
        }
    }

    /// Whether `host` (lower-case, IPv6 without brackets) is this pattern's host or, for a
    /// wildcard, one of its subdomains.
    pub(crate) fn matches_host(&self, host: &str) -> bool {
        match &self.host {
            HostMatch::Exact(exact) => *exact == host,
            HostMatch::Subdomains(suffix) => host.ends_with(suffix.as_str()),
        }
    }

    /// Whether `port` is this pattern's port or, without one, a default port.
    pub(crate) fn matches_port(&self, port: u16) -> bool {
        self.port
            .map_or(DEFAULT_PORTS.contains(&port), |p| p == port)
    }

    /// Whether this pattern names `host` (lower-case, IPv6 without brackets) exactly, not by a
    /// wildcard.
    pub(crate) fn names(&self, host: &str) -> bool {
        matches!(&self.host, HostMatch::Exact(exact) if *exact == host)
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.host {
            HostMatch::Exact(host) if host.contains(':') => write!(f, "[{host}]")?,
            HostMatch::Exact(host) => f.write_str(host)?,
            HostMatch::Subdomains(suffix) => write!(f, "*{suffix}")?,
        }
        match self.port {
            Some(port) => write!(f, ":{port}"),
            None => Ok(()),
        }
    }
}

impl std::str::FromStr for HostPattern {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, String> {
        Self::parse(raw)
    }
}

impl<'de> serde::Deserialize<'de> for HostPattern {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns_are_checked_when_read() {
        for good in [
            "api.example.com",
            "*.example.com:8443",
            "10.0.0.5:80",
            "[fd00::1]:443",
            "::1",
        ] {
            let pattern = HostPattern::parse(good).expect(good);
            assert_eq!(
                HostPattern::parse(&pattern.to_string()),
                Ok(pattern),
                "{good}"
            );
        }
        for bad in [
            "",
            "https://api.example.com",
            "api.example.com/v1",
            "*",
            "*.com",
            "api.*.com",
            "bad host.com",
            "-x.example.com",
            "api.example.com:0",
            "api.example.com:99999",
            "api.example.com:http",
            "[::1",
            "user@example.com",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?}");
        }
    }
}
