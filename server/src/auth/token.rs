use std::time::Duration;

use chrono::{DateTime, Utc};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, encode};
use serde::{Deserialize, Serialize};

use crate::config::JwtSecret;
use crate::domain::UserId;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    iat: i64,
    exp: i64,
}

pub struct IssuedToken {
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token has expired")]
    Expired,
    #[error("token is invalid")]
    Invalid,
}

/// Issues and checks HS256 tokens. The algorithm is pinned: a token that claims any other
/// (`none`, RS256, ...) is refused whatever its signature.
pub struct TokenService {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
}

impl TokenService {
    pub fn new(secret: &JwtSecret, ttl: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub", "iat"]);
        // One server issues and checks its own tokens: no clock skew to forgive.
        validation.leeway = 0;
        Self {
            encoding: EncodingKey::from_secret(secret.expose()),
            decoding: DecodingKey::from_secret(secret.expose()),
            validation,
            ttl,
        }
    }

    pub fn issue(&self, user: UserId) -> anyhow::Result<IssuedToken> {
        let now = Utc::now();
        let expires_at = now + self.ttl;
        let claims = Claims {
            sub: user.to_string(),
            iat: now.timestamp(),
            exp: expires_at.timestamp(),
        };
        let token = encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)?;
        Ok(IssuedToken { token, expires_at })
    }

    pub fn verify(&self, token: &str) -> Result<UserId, TokenError> {
        let data =
            decode::<Claims>(token, &self.decoding, &self.validation).map_err(|e| {
                match e.kind() {
                    ErrorKind::ExpiredSignature => TokenError::Expired,
                    _ => TokenError::Invalid,
                }
            })?;
        UserId::parse(&data.claims.sub).map_err(|_| TokenError::Invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service() -> TokenService {
        TokenService::new(
            &JwtSecret::new(vec![42; 32]).expect("secret"),
            Duration::from_secs(60),
        )
    }

    #[test]
    fn round_trips_the_user() {
        let tokens = service();
        let user = UserId::new();
        let issued = tokens.issue(user).expect("issue");
        assert_eq!(tokens.verify(&issued.token), Ok(user));
    }

    #[test]
    fn refuses_another_secret_and_garbage() {
        let other = TokenService::new(
            &JwtSecret::new(vec![1; 32]).expect("secret"),
            Duration::from_secs(60),
        );
        let issued = other.issue(UserId::new()).expect("issue");
        assert_eq!(service().verify(&issued.token), Err(TokenError::Invalid));
        assert_eq!(service().verify("not.a.token"), Err(TokenError::Invalid));
        assert_eq!(service().verify(""), Err(TokenError::Invalid));
    }
}
