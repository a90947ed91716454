//! Where a request carries its token, and what a client is told when the token does not do.
//! Both transports read tokens from HTTP headers (the API on every request, `/ws` on its
//! handshake), so this lives below them.

use http::HeaderMap;

use super::{AuthError, HashError, TokenError};
use crate::failure::{Failure, RetryAfter};

/// The header many existing clients of this API send their token in.
pub const AUTH_TOKEN_HEADER: &str = "x-auth-token";

pub const TOKEN_REQUIRED: &str = "Authentication required: send Authorization: Bearer <token>";
pub const TOKEN_EXPIRED: &str = "Token has expired; please log in again";
pub const TOKEN_INVALID: &str = "Invalid token";
pub const TOKEN_REVOKED: &str = "Token is no longer valid; please log in again";

/// When every hashing slot stayed busy for the whole wait.
const HASHING_RETRY: RetryAfter = RetryAfter::from_secs(2);

/// The token a request carries, if any: `Authorization: Bearer` first, then `x-auth-token`.
pub fn token_from_headers(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            let (scheme, token) = value.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    bearer
        .or_else(|| {
            headers
                .get(AUTH_TOKEN_HEADER)
                .and_then(|value| value.to_str().ok())
                .map(str::trim)
        })
        .filter(|token| !token.is_empty())
}

impl From<AuthError> for Failure {
    fn from(err: AuthError) -> Self {
        match err {
            AuthError::Missing => Failure::unauthorized(TOKEN_REQUIRED),
            AuthError::Token(TokenError::Expired) => Failure::unauthorized(TOKEN_EXPIRED),
            AuthError::Token(TokenError::Invalid) => Failure::unauthorized(TOKEN_INVALID),
            AuthError::Revoked => Failure::unauthorized(TOKEN_REVOKED),
            AuthError::Store(e) => e.into(),
        }
    }
}

impl From<HashError> for Failure {
    fn from(err: HashError) -> Self {
        match err {
            HashError::Busy => Failure::unavailable(
                "Too many logins in progress; please try again shortly",
                HASHING_RETRY,
            ),
            HashError::Failed(cause) => Failure::internal(format!("{cause:#}")),
        }
    }
}
