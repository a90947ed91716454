//! `http-fetch` for plugins: only allowed hosts, no redirects, no private addresses unless the
//! operator named the host, a timeout clipped to the call's deadline, and a capped body.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{AUTHORIZATION, HeaderName, HeaderValue};
use reqwest::{Method, Url};

pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// What the operator allows, shared by every plugin call.
#[derive(Clone)]
pub struct NetworkPolicy {
    client: reqwest::Client,
    operator: Arc<HostRules>,
    llm: Option<Arc<LlmEndpoint>>,
}

/// `LLM_API_URL`'s origin and key: the host adds the key to requests for that origin.
pub struct LlmEndpoint {
    pub url: Url,
    pub api_key: Option<String>,
}

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

    fn matches_host(&self, host: &str) -> bool {
        match &self.host {
            HostMatch::Exact(exact) => *exact == host,
            HostMatch::Subdomains(suffix) => host.ends_with(suffix.as_str()),
        }
    }

    fn matches_port(&self, port: u16) -> bool {
        self.port
            .map_or(DEFAULT_PORTS.contains(&port), |p| p == port)
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

/// A set of host patterns.
#[derive(Debug, Default)]
pub struct HostRules {
    patterns: Vec<HostPattern>,
}

impl HostRules {
    pub fn new(patterns: impl IntoIterator<Item = HostPattern>) -> Self {
        Self {
            patterns: patterns.into_iter().collect(),
        }
    }

    pub fn allows(&self, host: &str, port: u16) -> bool {
        let host = host.trim_matches(['[', ']']).to_ascii_lowercase();
        self.patterns
            .iter()
            .any(|p| p.matches_host(&host) && p.matches_port(port))
    }

    /// Named exactly (not by a wildcard): trusted to point anywhere, private addresses included.
    pub fn names(&self, host: &str) -> bool {
        let host = host.trim_matches(['[', ']']).to_ascii_lowercase();
        self.patterns
            .iter()
            .any(|p| matches!(&p.host, HostMatch::Exact(exact) if *exact == host))
    }
}

/// True for addresses a plugin must not reach unless the operator named the host: everything
/// that is not globally routable (std's `is_global` is unstable, so the IANA special-purpose
/// registries are spelled out here), and IPv6 forms that embed an IPv4 address are judged by it.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT
                || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
                || (a == 198 && (b == 18 || b == 19)) // benchmarking
                || a >= 240 // reserved (and broadcast)
        }
        IpAddr::V6(v6) => {
            let segments = v6.segments();
            let embedded = |high: u16, low: u16| {
                let [h1, h2] = high.to_be_bytes();
                let [l1, l2] = low.to_be_bytes();
                std::net::Ipv4Addr::new(h1, h2, l1, l2)
            };
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            // NAT64 (64:ff9b::/96): the IPv4 address it translates to decides.
            if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return is_internal(IpAddr::V4(embedded(segments[6], segments[7])));
            }
            let first = segments[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || segments[..6] == [0, 0, 0, 0, 0, 0] // IPv4-compatible (deprecated)
                || (first == 0x64 && segments[1] == 0xff9b) // local-use NAT64 (64:ff9b:1::/48)
                || (first == 0x100 && segments[1..4] == [0, 0, 0]) // discard-only
                || (first == 0x2001 && segments[1] < 0x200) // IETF assignments, Teredo
                || first == 0x2002 // 6to4: relays reach any IPv4 address, private ones too
                || (first == 0x2001 && segments[1] == 0x0db8) // documentation
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link local
                || (first & 0xffc0) == 0xfec0 // site local (deprecated)
        }
    }
}

/// Resolves names for the shared client, dropping internal addresses for names the operator did
/// not name, at connection time (so a DNS answer cannot smuggle in a private address).
struct GuardedResolver {
    operator: Arc<HostRules>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let operator = self.operator.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let usable: Vec<SocketAddr> = if operator.names(&host) {
                resolved
            } else {
                resolved
                    .into_iter()
                    .filter(|a| !is_internal(a.ip()))
                    .collect()
            };
            if usable.is_empty() {
                return Err(format!("{host} resolves only to internal addresses").into());
            }
            Ok(Box::new(usable.into_iter()) as Addrs)
        })
    }
}

impl NetworkPolicy {
    pub fn new(operator: HostRules, llm: Option<LlmEndpoint>) -> anyhow::Result<Self> {
        let operator = Arc::new(operator);
        let client = reqwest::Client::builder()
            // A redirect could leave the allowed hosts.
            .redirect(reqwest::redirect::Policy::none())
            // A proxy (HTTP(S)_PROXY, ALL_PROXY) would resolve names itself, past the
            // private-address filter below.
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver {
                operator: operator.clone(),
            }))
            .user_agent(concat!("palaver/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            client,
            operator,
            llm: llm.map(Arc::new),
        })
    }

    /// The hosts a plugin may call: its manifest's patterns. Each request must match them and
    /// the operator's too, so a plugin gets the intersection.
    pub fn grant(&self, requested: &[HostPattern]) -> Arc<HostRules> {
        Arc::new(HostRules::new(requested.iter().cloned()))
    }

    /// One request on behalf of a plugin. Every refusal is an error string for the guest.
    pub async fn fetch(
        &self,
        granted: &HostRules,
        deadline: Instant,
        request: super::HttpRequest,
    ) -> Result<super::HttpResponse, String> {
        let url = Url::parse(&request.url).map_err(|e| format!("invalid URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("scheme {} is not allowed", url.scheme()));
        }
        let host = url.host_str().ok_or("the URL has no host")?.to_owned();
        let bare_host = host.trim_start_matches('[').trim_end_matches(']');
        let port = url.port_or_known_default().ok_or("the URL has no port")?;
        if !granted.allows(bare_host, port) || !self.operator.allows(bare_host, port) {
            return Err(format!(
                "{bare_host} port {port} is not on this plugin's allowed list"
            ));
        }
        if let Ok(ip) = bare_host.parse::<IpAddr>()
            && is_internal(ip)
            && !self.operator.names(bare_host)
        {
            return Err(format!("address {ip} is internal"));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout = request
            .timeout_ms
            .map_or(left, |ms| Duration::from_millis(ms).min(left));
        if timeout.is_zero() {
            return Err("no time left before the deadline".into());
        }
        let method = Method::from_bytes(request.method.to_ascii_uppercase().as_bytes())
            .map_err(|_| format!("invalid method {:?}", request.method))?;

        let mut builder = self
            .client
            .request(method.clone(), url.clone())
            .timeout(timeout);
        for (name, value) in &request.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("invalid header name {name:?}"))?;
            if is_reserved_header(&name) {
                return Err(format!("plugins may not set the {name} header"));
            }
            let value =
                HeaderValue::from_str(value).map_err(|_| format!("invalid value for {name}"))?;
            builder = builder.header(name, value);
        }
        // The key goes with the very request LLM_API_URL names (method and path), nothing else
        // on that origin.
        if let Some(llm) = &self.llm
            && let Some(key) = &llm.api_key
            && method == Method::POST
            && same_origin(&llm.url, &url)
            && llm.url.path() == url.path()
        {
            let mut value = HeaderValue::from_str(&format!("Bearer {key}"))
                .map_err(|_| "LLM_API_KEY is not a valid header value".to_owned())?;
            value.set_sensitive(true);
            builder = builder.header(AUTHORIZATION, value);
        }
        if let Some(body) = request.body {
            builder = builder.body(body);
        }

        let mut response = builder.send().await.map_err(describe)?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_owned())))
            .collect();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(describe)? {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(format!("response body over {MAX_RESPONSE_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(super::HttpResponse {
            status,
            headers,
            body,
        })
    }
}

/// Headers the host owns: where the request goes and who it claims to be (`Host`,
/// credentials, cookies, proxies), how the connection behaves (hop-by-hop), and how long the
/// body is (the host frames it).
fn is_reserved_header(name: &HeaderName) -> bool {
    const RESERVED: &[&str] = &[
        "host",
        "authorization",
        "cookie",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-host",
    ];
    let name = name.as_str();
    RESERVED.contains(&name) || name.starts_with("proxy-")
}

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// A reason for the guest; never the URL's credentials or our headers.
fn describe(err: reqwest::Error) -> String {
    if err.is_timeout() {
        "the request timed out".into()
    } else if err.is_connect() {
        "could not connect".into()
    } else {
        format!("request failed: {}", err.without_url())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(patterns: &[&str]) -> HostRules {
        HostRules::new(patterns.iter().map(|p| HostPattern::parse(p).expect(p)))
    }

    #[test]
    fn host_rules_match_names_subdomains_and_ports() {
        let rules = rules(&[
            "api.example.com",
            "*.models.dev",
            "127.0.0.1:8080",
            "[::1]:9000",
        ]);
        assert!(rules.allows("api.example.com", 443));
        assert!(rules.allows("API.example.com", 80));
        // A named host is not every port of it.
        assert!(!rules.allows("api.example.com", 6379));
        assert!(!rules.allows("evil.example.com", 443));
        assert!(rules.allows("eu.models.dev", 443));
        assert!(
            !rules.allows("models.dev", 443),
            "a wildcard is subdomains only"
        );
        assert!(!rules.allows("models.dev.evil.com", 443));
        assert!(rules.allows("127.0.0.1", 8080));
        assert!(!rules.allows("127.0.0.1", 8081));
        assert!(rules.allows("[::1]", 9000));
        assert!(rules.names("127.0.0.1"));
        assert!(!rules.names("eu.models.dev"));
    }

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

    #[test]
    fn internal_addresses_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            // What a review found slipping through.
            "64:ff9b::a00:1",
            "64:ff9b::7f00:1",
            "2002:a00:1::1",
            "2002:5db8:d822::1",
            "fec0::1",
            "192.0.0.8",
            "240.0.0.1",
            "255.255.255.254",
            "192.0.2.1",
            "2001:db8::1",
            "2001::1",
            "::10.0.0.1",
            "100::1",
        ] {
            assert!(is_internal(ip.parse().expect("ip")), "{ip}");
        }
        for ip in [
            "1.1.1.1",
            "93.184.216.34",
            "2606:4700::1111",
            "64:ff9b::5db8:d822",
            "2a00:1450:4001::200e",
        ] {
            assert!(!is_internal(ip.parse().expect("ip")), "{ip}");
        }
    }

    #[test]
    fn a_plugins_grant_is_what_its_manifest_names() {
        let policy =
            NetworkPolicy::new(rules(&["api.example.com", "*.models.dev"]), None).expect("policy");
        let asked: Vec<HostPattern> = ["api.example.com", "evil.com", "eu.models.dev"]
            .iter()
            .map(|p| HostPattern::parse(p).expect("pattern"))
            .collect();
        let granted = policy.grant(&asked);
        assert!(granted.allows("api.example.com", 443));
        assert!(granted.allows("eu.models.dev", 443));
        // Granted by the manifest, but the operator's rules are checked on every request too.
        assert!(!policy.operator.allows("evil.com", 443));
    }
}
