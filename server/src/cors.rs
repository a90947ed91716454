//! Which web origins may use the server from a browser (`CORS_ALLOWED_ORIGINS`).
//!
//! One policy for every transport: the HTTP API gets CORS headers and answered preflights
//! (tower-http, in front of Socket.IO and poem alike); WebSocket and Socket.IO handshakes, which
//! browsers do not subject to CORS, are refused with 403 when a browser sends them from an
//! origin that is neither the server's own nor allowed. Clients that send no `Origin` (servers,
//! mobile apps, CLIs) are not browsers and are not affected.
//!
//! The setting itself ([`AllowedOrigins`], its grammar and which origins it lets in) is read and
//! typed in `config`; this module is what enforces it.

use std::time::Duration;

use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method};
use tower_http::cors::{AllowOrigin, CorsLayer};

// The setting, parsed and typed where it is read (config/origins.rs); enforced below.
pub use crate::config::AllowedOrigins;

/// How long a browser may cache a preflight answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(60 * 60);

impl AllowedOrigins {
    /// The CORS layer for HTTP answers; `None` when no other origin is allowed (then no CORS
    /// headers at all, and browsers keep other origins out).
    pub fn layer(&self) -> Option<CorsLayer> {
        let allow_origin = match self {
            Self::SameOriginOnly => return None,
            Self::Any => AllowOrigin::any(),
            Self::List(list) => AllowOrigin::list(list.iter().cloned()),
        };
        Some(
            CorsLayer::new()
                .allow_origin(allow_origin)
                .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
                .allow_headers([
                    header::AUTHORIZATION,
                    header::CONTENT_TYPE,
                    HeaderName::from_static("x-auth-token"),
                    HeaderName::from_static("idempotency-key"),
                ])
                .expose_headers([header::RETRY_AFTER])
                .max_age(PREFLIGHT_MAX_AGE),
        )
    }

    /// Whether a WebSocket or Socket.IO handshake with these headers may proceed.
    pub fn permits_handshake(&self, headers: &HeaderMap) -> bool {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return true;
        };
        same_origin(origin, headers) || self.allows(origin)
    }
}

/// The page was loaded from this server: its origin is `scheme://` + `Host`, where the scheme
/// is `http` (what the server speaks) unless a TLS-terminating proxy in front says
/// `X-Forwarded-Proto: https`. A browser cannot add that header to a WebSocket handshake, so a
/// page cannot claim it; scheme and host both have to match (`https://host` is another origin
/// than `http://host`).
fn same_origin(origin: &HeaderValue, headers: &HeaderMap) -> bool {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let (Ok(origin), Some(host)) = (origin.to_str(), text(header::HOST)) else {
        return false;
    };
    let scheme = text(HeaderName::from_static("x-forwarded-proto"))
        .and_then(|protos| protos.split(',').next())
        .map(str::trim)
        .filter(|proto| proto.eq_ignore_ascii_case("https"))
        .map_or("http", |_| "https");
    origin.split_once("://").is_some_and(|(s, authority)| {
        s.eq_ignore_ascii_case(scheme) && authority.eq_ignore_ascii_case(host)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_str(host).expect("host"));
        if let Some(origin) = origin {
            headers.insert(
                header::ORIGIN,
                HeaderValue::from_str(origin).expect("origin"),
            );
        }
        headers
    }

    #[test]
    fn handshakes_from_other_origins_need_permission() {
        let none = AllowedOrigins::SameOriginOnly;
        assert!(none.permits_handshake(&headers(None, "chat.local:3000")));
        assert!(
            none.permits_handshake(&headers(Some("http://chat.local:3000"), "chat.local:3000"))
        );
        assert!(!none.permits_handshake(&headers(Some("http://evil.test"), "chat.local:3000")));
        // Same host, other scheme: another origin, unless a TLS proxy says the page's is https.
        let tls = headers(Some("https://chat.local:3000"), "chat.local:3000");
        assert!(!none.permits_handshake(&tls));
        let mut proxied = tls.clone();
        proxied.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        assert!(none.permits_handshake(&proxied));
        let mut plain = headers(Some("http://chat.local:3000"), "chat.local:3000");
        plain.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        assert!(!none.permits_handshake(&plain));
        let list = AllowedOrigins::parse("http://app.test:8080").expect("list");
        assert!(list.permits_handshake(&headers(Some("http://APP.test:8080"), "api.test")));
        assert!(!list.permits_handshake(&headers(Some("http://app.test:8081"), "api.test")));
        assert!(AllowedOrigins::Any.permits_handshake(&headers(Some("http://evil.test"), "x")));
    }
}
