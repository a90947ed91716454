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
    /// The user's token version when issued; a password change, "log out everywhere" or account
    /// deletion moves the version on, so every earlier token stops working at once. Tokens from
    /// before versions existed carry none and count as version 0.
    #[serde(default)]
    ver: u64,
}

pub struct IssuedToken {
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

/// What a token says once its signature and expiry check out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifiedToken {
    pub user: UserId,
    pub version: u64,
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
        // A token works while now < exp, so a live connection closed at `exp` (see
        // `VerifiedToken::expires_at`) closes exactly when the token stops working over HTTP.
        validation.reject_tokens_expiring_in_less_than = 1;
        Self {
            encoding: EncodingKey::from_secret(secret.expose()),
            decoding: DecodingKey::from_secret(secret.expose()),
            validation,
            ttl,
        }
    }

    /// Never panics: a TTL past the end of chrono's calendar is an error, not an overflow
    /// (`Config` also refuses TTLs over [`crate::config::MAX_TOKEN_TTL`]).
    pub fn issue(&self, user: UserId, version: u64) -> anyhow::Result<IssuedToken> {
        let now = Utc::now();
        let expires_at = chrono::Duration::from_std(self.ttl)
            .ok()
            .and_then(|ttl| now.checked_add_signed(ttl))
            .ok_or_else(|| anyhow::anyhow!("TOKEN_TTL {:?} is out of range", self.ttl))?;
        let claims = Claims {
            sub: user.to_string(),
            iat: now.timestamp(),
            exp: expires_at.timestamp(),
            ver: version,
        };
        let token = encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)?;
        Ok(IssuedToken { token, expires_at })
    }

    pub fn verify(&self, token: &str) -> Result<VerifiedToken, TokenError> {
        let data =
            decode::<Claims>(token, &self.decoding, &self.validation).map_err(|e| {
                match e.kind() {
                    ErrorKind::ExpiredSignature => TokenError::Expired,
                    _ => TokenError::Invalid,
                }
            })?;
        let claims = data.claims;
        Ok(VerifiedToken {
            user: UserId::parse(&claims.sub).map_err(|_| TokenError::Invalid)?,
            version: claims.ver,
            expires_at: DateTime::from_timestamp(claims.exp, 0).ok_or(TokenError::Invalid)?,
        })
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
        let issued = tokens.issue(user, 3).expect("issue");
        let verified = tokens.verify(&issued.token).expect("valid");
        assert_eq!((verified.user, verified.version), (user, 3));
        assert_eq!(
            verified.expires_at.timestamp(),
            issued.expires_at.timestamp()
        );
    }

    #[test]
    fn refuses_another_secret_and_garbage() {
        let other = TokenService::new(
            &JwtSecret::new(vec![1; 32]).expect("secret"),
            Duration::from_secs(60),
        );
        let issued = other.issue(UserId::new(), 0).expect("issue");
        assert_eq!(service().verify(&issued.token), Err(TokenError::Invalid));
        assert_eq!(service().verify("not.a.token"), Err(TokenError::Invalid));
        assert_eq!(service().verify(""), Err(TokenError::Invalid));
    }

    #[test]
    fn an_absurd_ttl_is_an_error_not_a_panic() {
        let tokens = TokenService::new(
            &JwtSecret::new(vec![42; 32]).expect("secret"),
            Duration::from_secs(300_000 * 366 * 86_400),
        );
        assert!(tokens.issue(UserId::new(), 0).is_err());
    }
}
