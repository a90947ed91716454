//! `http-fetch` for plugins: only allowed hosts, no redirects, no private addresses unless the
//! operator named the host, a timeout clipped to the call's deadline, and a capped body.

use std::collections::HashSet;
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

/// Host patterns: exact names, or `*.example.com` for any subdomain.
#[derive(Debug, Default)]
pub struct HostRules {
    exact: HashSet<String>,
    suffixes: Vec<String>,
}

impl HostRules {
    pub fn new<'a>(patterns: impl IntoIterator<Item = &'a str>) -> Self {
        let mut rules = Self::default();
        for pattern in patterns {
            let pattern = pattern.trim().to_ascii_lowercase();
            if let Some(domain) = pattern.strip_prefix("*.") {
                rules.suffixes.push(format!(".{domain}"));
            } else if !pattern.is_empty() {
                rules.exact.insert(pattern);
            }
        }
        rules
    }

    pub fn allows(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.exact.contains(&host) || self.suffixes.iter().any(|s| host.ends_with(s.as_str()))
    }

    /// Named exactly: trusted to point anywhere, private addresses included.
    pub fn names(&self, host: &str) -> bool {
        self.exact.contains(&host.to_ascii_lowercase())
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

    /// The hosts a plugin may call: what its manifest asks for that the operator also allows.
    pub fn grant(&self, requested: &[String]) -> Arc<HostRules> {
        let granted = requested
            .iter()
            .filter(|pattern| {
                let pattern = pattern.trim_start_matches("*.");
                self.operator.allows(pattern) || self.operator.allows(&format!("x.{pattern}"))
            })
            .map(String::as_str);
        Arc::new(HostRules::new(granted))
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
        if !granted.allows(bare_host) || !self.operator.allows(bare_host) {
            return Err(format!(
                "host {bare_host} is not on this plugin's allowed list"
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

    #[test]
    fn host_rules_match_exact_names_and_subdomains() {
        let rules = HostRules::new(["api.example.com", "*.models.dev", "127.0.0.1"]);
        assert!(rules.allows("api.example.com"));
        assert!(rules.allows("API.example.com"));
        assert!(!rules.allows("evil.example.com"));
        assert!(rules.allows("eu.models.dev"));
        assert!(!rules.allows("models.dev.evil.com"));
        assert!(rules.names("127.0.0.1"));
        assert!(!rules.names("eu.models.dev"));
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
    fn plugins_get_the_intersection_of_what_they_ask_and_the_operator_allows() {
        let policy = NetworkPolicy::new(HostRules::new(["api.example.com", "*.models.dev"]), None)
            .expect("policy");
        let granted = policy.grant(&[
            "api.example.com".into(),
            "evil.com".into(),
            "eu.models.dev".into(),
        ]);
        assert!(granted.allows("api.example.com"));
        assert!(granted.allows("eu.models.dev"));
        assert!(!granted.allows("evil.com"));
    }
}
