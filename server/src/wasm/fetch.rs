//! `http-fetch` for plugins: only allowed hosts, no redirects, no private addresses unless the
//! operator named the host, a timeout clipped to the call's deadline, and a capped body.
//!
//! This file owns the policy ([`NetworkPolicy`], the operator's and each plugin's
//! [`HostRules`], the LLM endpoint and its key), the fetch path and the header rules; which
//! addresses count as internal, and the resolver that keeps them out, are in `address.rs`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{AUTHORIZATION, HeaderName, HeaderValue};
use reqwest::{Method, Url};

use super::address::{GuardedResolver, is_internal};
use crate::config::HostPattern;

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
        self.patterns.iter().any(|p| p.names(&host))
    }
}

impl NetworkPolicy {
    pub fn new(operator: HostRules, llm: Option<LlmEndpoint>) -> anyhow::Result<Self> {
        let operator = Arc::new(operator);
        let client = reqwest::Client::builder()
            // A redirect could leave the allowed hosts.
            .redirect(reqwest::redirect::Policy::none())
            // A proxy (HTTP(S)_PROXY, ALL_PROXY) would resolve names itself, past the
            // private-address filter (`GuardedResolver`, address.rs).
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver::new(operator.clone())))
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
        let (status, headers, mut body) = self.open(granted, deadline, request).await?;
        let mut whole = Vec::new();
        while let Some(chunk) = body.next().await? {
            whole.extend_from_slice(&chunk);
        }
        Ok(super::HttpResponse {
            status,
            headers,
            body: whole,
        })
    }

    /// Sends the request under every rule and answers once the headers are in; the body is
    /// read from the [`BodyStream`], within the same cap and deadline.
    pub async fn open(
        &self,
        granted: &HostRules,
        deadline: Instant,
        request: super::HttpRequest,
    ) -> Result<(u16, Vec<(String, String)>, BodyStream), String> {
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

        let response = builder.send().await.map_err(describe)?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_owned())))
            .collect();
        Ok((status, headers, BodyStream { response, read: 0 }))
    }
}

/// A response body being read, at most [`MAX_RESPONSE_BYTES`] in all.
pub struct BodyStream {
    response: reqwest::Response,
    read: usize,
}

impl BodyStream {
    /// The next piece, `None` at the end.
    pub async fn next(&mut self) -> Result<Option<Vec<u8>>, String> {
        let Some(chunk) = self.response.chunk().await.map_err(describe)? else {
            return Ok(None);
        };
        if self.read + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(format!("response body over {MAX_RESPONSE_BYTES} bytes"));
        }
        self.read += chunk.len();
        Ok(Some(chunk.to_vec()))
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
