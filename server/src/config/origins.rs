//! Which other web origins may use the server from a browser (`CORS_ALLOWED_ORIGINS`): the
//! [`AllowedOrigins`] value, the origin grammar it is parsed with, and which origins it lets in.
//! What enforces it (the CORS layer for HTTP answers, the origin check on socket handshakes)
//! lives in `cors`.

use http::HeaderValue;

/// The parsed `CORS_ALLOWED_ORIGINS`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AllowedOrigins {
    /// Unset: only the server's own pages (the chat page at `/`, Swagger UI) may use it.
    #[default]
    SameOriginOnly,
    /// `*`: any origin. Safe for this API because it never uses cookies: a page on another
    /// origin can only act with a token its user gave it.
    Any,
    /// `https://chat.example.com,http://localhost:5173`: exact origins, lower-cased.
    List(Vec<HeaderValue>),
}

impl AllowedOrigins {
    /// `*`, or comma-separated origins (`scheme://host[:port]`, no path).
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        if raw == "*" {
            return Ok(Self::Any);
        }
        let mut origins = Vec::new();
        for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            origins.push(parse_origin(item)?);
        }
        if origins.is_empty() {
            return Err("must be * or a comma-separated list of origins".to_owned());
        }
        Ok(Self::List(origins))
    }

    /// Whether this setting lets `origin` in (the server's own origin aside).
    pub(crate) fn allows(&self, origin: &HeaderValue) -> bool {
        match self {
            Self::SameOriginOnly => false,
            Self::Any => true,
            Self::List(list) => origin.to_str().is_ok_and(|o| {
                list.iter()
                    .any(|a| a.as_bytes() == o.to_ascii_lowercase().as_bytes())
            }),
        }
    }
}

fn parse_origin(raw: &str) -> Result<HeaderValue, String> {
    let bad = || {
        format!(
            "{raw:?} is not an origin such as https://chat.example.com or http://localhost:5173"
        )
    };
    let lower = raw.trim_end_matches('/').to_ascii_lowercase();
    let rest = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"))
        .ok_or_else(bad)?;
    let valid = !rest.is_empty()
        && rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    if !valid {
        return Err(bad());
    }
    HeaderValue::from_str(&lower).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_parsed_strictly() {
        assert_eq!(
            AllowedOrigins::parse(" * ").expect("any"),
            AllowedOrigins::Any
        );
        assert_eq!(
            AllowedOrigins::parse("https://Chat.Example.com/, http://localhost:5173")
                .expect("list"),
            AllowedOrigins::List(vec![
                HeaderValue::from_static("https://chat.example.com"),
                HeaderValue::from_static("http://localhost:5173"),
            ])
        );
        for bad in [
            "chat.example.com",
            "https://x.com/path",
            "ftp://x.com",
            ",",
            "https://",
        ] {
            assert!(AllowedOrigins::parse(bad).is_err(), "{bad}");
        }
    }
}
