//! Accounts, whatever transport asks: registration, login with the per-account lockout, and
//! taking access back (a password change, "log out everywhere", deletion). Taking access back
//! makes every token issued before it stop working at once on this node (the store's token
//! version moves on) and ends the user's live connections through [`EndSessions`], which the
//! realtime hub implements: this service knows nothing of sockets.

use std::sync::Arc;

use crate::auth::{HashError, IssuedToken, PasswordHasher, Sessions, TOKEN_REVOKED};
use crate::domain::{Email, Password, UserId, ValidationError};
use crate::failure::{Failure, RetryAfter};
use crate::limits::Limits;
use crate::store::{NewUser, Store, StoreError, User};

/// Closes every live connection of a user whose tokens were just taken back.
pub trait EndSessions: Send + Sync + 'static {
    fn end_sessions(&self, user: UserId);
}

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// Login: no such account, or not its password (the two read the same).
    #[error("invalid email or password")]
    BadCredentials,
    /// Login: too many failures for this account; refused right or wrong.
    #[error("too many failed logins")]
    LockedOut(RetryAfter),
    /// A sensitive change was asked with a password that is not the account's.
    #[error("the password is not the account's")]
    WrongPassword,
    #[error("no such user")]
    UserGone,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Hashing(#[from] HashError),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<AccountError> for Failure {
    fn from(err: AccountError) -> Self {
        match err {
            AccountError::Invalid(problem) => problem.into(),
            AccountError::BadCredentials => Failure::unauthorized("Invalid email or password"),
            AccountError::LockedOut(wait) => Failure::too_many_requests(
                format!(
                    "Too many failed logins for this account; try again in {} s",
                    wait.seconds()
                ),
                wait,
            ),
            AccountError::WrongPassword => Failure::forbidden("The password is incorrect"),
            AccountError::UserGone => Failure::unauthorized(TOKEN_REVOKED),
            AccountError::Store(err) => err.into(),
            AccountError::Hashing(err) => err.into(),
            AccountError::Internal(cause) => Failure::internal(format!("{cause:#}")),
        }
    }
}

/// A successful login.
pub struct LoggedIn {
    pub user: UserId,
    pub token: IssuedToken,
}

pub struct Accounts {
    store: Arc<dyn Store>,
    passwords: Arc<PasswordHasher>,
    sessions: Arc<Sessions>,
    limits: Arc<Limits>,
    connections: Arc<dyn EndSessions>,
}

impl Accounts {
    pub fn new(
        store: Arc<dyn Store>,
        passwords: Arc<PasswordHasher>,
        sessions: Arc<Sessions>,
        limits: Arc<Limits>,
        connections: Arc<dyn EndSessions>,
    ) -> Self {
        Self {
            store,
            passwords,
            sessions,
            limits,
            connections,
        }
    }

    pub async fn register(&self, email: &str, password: String) -> Result<User, AccountError> {
        let email = Email::parse(email)?;
        let password = Password::parse(password)?;
        let password_hash = self.passwords.hash(password).await?;
        let user = self
            .store
            .create_user(NewUser {
                id: UserId::new(),
                email,
                password_hash,
            })
            .await?;
        tracing::info!(user = %user.id, "user registered");
        Ok(user)
    }

    /// A wrong email and a wrong password fail alike, and both count against the account's
    /// lockout, so the answers cannot tell accounts apart.
    pub async fn login(&self, email: &str, password: String) -> Result<LoggedIn, AccountError> {
        // Input that could never have been registered is simply wrong credentials.
        let (Ok(email), Ok(password)) = (Email::parse(email), Password::parse(password)) else {
            return Err(AccountError::BadCredentials);
        };
        // Locked out: refused without looking at the password, right or wrong.
        self.limits
            .login_allowed(&email)
            .map_err(AccountError::LockedOut)?;
        let credentials = self.store.credentials_by_email(&email).await?;
        let (user, stored_hash) = match credentials {
            Some(c) => (Some((c.user.id, c.token_version)), Some(c.password_hash)),
            None => (None, None),
        };
        let verified = self.passwords.verify(password, stored_hash).await?;
        let (user, version) = match user {
            Some(user) if verified => user,
            _ => {
                self.limits
                    .login_failed(&email)
                    .map_err(AccountError::LockedOut)?;
                return Err(AccountError::BadCredentials);
            }
        };
        let token = self.sessions.issue(user, version)?;
        Ok(LoggedIn { user, token })
    }

    /// Sets a new password after checking the current one; answers a fresh token, so the
    /// device that asked stays logged in while every other session ends.
    pub async fn change_password(
        &self,
        user: UserId,
        current: &str,
        new: String,
    ) -> Result<IssuedToken, AccountError> {
        let new = Password::parse(new)?;
        self.check_password(user, current).await?;
        let hash = self.passwords.hash(new).await?;
        let version = self
            .store
            .revoke_tokens(user, Some(hash))
            .await?
            .ok_or(AccountError::UserGone)?;
        self.end_sessions(user, Some(version));
        Ok(self.sessions.issue(user, version)?)
    }

    pub async fn log_out_everywhere(&self, user: UserId) -> Result<(), AccountError> {
        let version = self
            .store
            .revoke_tokens(user, None)
            .await?
            .ok_or(AccountError::UserGone)?;
        self.end_sessions(user, Some(version));
        Ok(())
    }

    /// Deletes the account and every message it sent or received, after checking the password.
    pub async fn delete(&self, user: UserId, password: &str) -> Result<(), AccountError> {
        self.check_password(user, password).await?;
        if !self.store.delete_user(user).await? {
            return Err(AccountError::UserGone);
        }
        self.end_sessions(user, None);
        tracing::info!(%user, "account deleted");
        Ok(())
    }

    async fn check_password(&self, user: UserId, password: &str) -> Result<(), AccountError> {
        let hash = self
            .store
            .password_hash(user)
            .await?
            .ok_or(AccountError::UserGone)?;
        // Input that could never have been set is simply wrong; it still costs a hash, as a
        // login does.
        let Ok(password) = Password::parse(password.to_owned()) else {
            return Err(AccountError::WrongPassword);
        };
        if self.passwords.verify(password, Some(hash)).await? {
            Ok(())
        } else {
            Err(AccountError::WrongPassword)
        }
    }

    fn end_sessions(&self, user: UserId, version: Option<u64>) {
        match version {
            Some(version) => self.sessions.remember(user, version),
            None => self.sessions.forget(user),
        }
        self.connections.end_sessions(user);
    }
}
