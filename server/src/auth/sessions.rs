//! Whether a token still speaks for a live account: signature and expiry (the JWT), and then
//! the store: the user must still exist and the token must carry their current token version
//! (a password change, "log out everywhere" or account deletion moves it on).
//!
//! The store answer is cached briefly per user, so the hot path (every send) stays one hash
//! map read. Changes made through this server update the cache at once; a change made through
//! another server sharing the database is seen here within [`CACHE_TTL`].

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::{IssuedToken, TokenError, TokenService};
use crate::domain::UserId;
use crate::store::{Store, StoreError};

/// How long a user's token version is trusted without asking the store again.
pub const CACHE_TTL: Duration = Duration::from_secs(5);
/// Past this many cached users, stale entries are swept on the next insert.
const SWEEP_AT: usize = 10_000;

/// An authenticated caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub user: UserId,
    /// When the token stops working; live connections end then.
    pub expires_at: DateTime<Utc>,
}

impl Caller {
    /// The token's remaining life (zero once expired): how long a live connection may stay.
    pub fn time_left(&self) -> Duration {
        (self.expires_at - Utc::now()).to_std().unwrap_or_default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no token")]
    Missing,
    #[error(transparent)]
    Token(#[from] TokenError),
    /// Signed by us, but its account is gone or its tokens were revoked since.
    #[error("token revoked")]
    Revoked,
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct Sessions {
    tokens: TokenService,
    store: Arc<dyn Store>,
    versions: RwLock<HashMap<UserId, (u64, Instant)>>,
}

impl Sessions {
    pub fn new(tokens: TokenService, store: Arc<dyn Store>) -> Self {
        Self {
            tokens,
            store,
            versions: RwLock::new(HashMap::new()),
        }
    }

    pub fn issue(&self, user: UserId, version: u64) -> anyhow::Result<IssuedToken> {
        self.tokens.issue(user, version)
    }

    pub async fn authenticate(&self, token: Option<&str>) -> Result<Caller, AuthError> {
        let token = self.tokens.verify(token.ok_or(AuthError::Missing)?)?;
        let current = match self.cached(token.user) {
            Some(version) => version,
            None => {
                // Ghost tokens (no such user) are not cached: each one costs a lookup, and an
                // account created later under that id is impossible (ids are random).
                let version = self
                    .store
                    .token_version(token.user)
                    .await?
                    .ok_or(AuthError::Revoked)?;
                self.remember(token.user, version);
                version
            }
        };
        if token.version != current {
            return Err(AuthError::Revoked);
        }
        Ok(Caller {
            user: token.user,
            expires_at: token.expires_at,
        })
    }

    /// Records a version this server just wrote, so its own revocations apply at once.
    pub fn remember(&self, user: UserId, version: u64) {
        let mut versions = crate::sync::write(&self.versions);
        if versions.len() >= SWEEP_AT {
            versions.retain(|_, (_, fetched)| fetched.elapsed() < CACHE_TTL);
        }
        versions.insert(user, (version, Instant::now()));
    }

    /// Forgets a deleted user: their tokens then fail at the store lookup.
    pub fn forget(&self, user: UserId) {
        let mut versions = crate::sync::write(&self.versions);
        versions.remove(&user);
    }

    fn cached(&self, user: UserId) -> Option<u64> {
        let versions = crate::sync::read(&self.versions);
        versions
            .get(&user)
            .filter(|(_, fetched)| fetched.elapsed() < CACHE_TTL)
            .map(|(version, _)| *version)
    }
}
