//! Taking access back: a password change, "log out everywhere" and account deletion. Each makes
//! every token issued before it stop working at once on this server (the store's token version
//! moves on) and closes the user's live connections.

use crate::auth::{HashError, IssuedToken};
use crate::domain::{Password, UserId};
use crate::realtime::Eviction;
use crate::state::AppState;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
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

/// Sets a new password after checking the current one; answers a fresh token, so the device
/// that asked stays logged in while every other session ends.
pub async fn change_password(
    state: &AppState,
    user: UserId,
    current: &str,
    new: Password,
) -> Result<IssuedToken, AccountError> {
    check_password(state, user, current).await?;
    let hash = state.passwords.hash(new).await?;
    let version = state
        .store
        .revoke_tokens(user, Some(hash))
        .await?
        .ok_or(AccountError::UserGone)?;
    end_sessions(state, user, Some(version));
    Ok(state.sessions.issue(user, version)?)
}

pub async fn log_out_everywhere(state: &AppState, user: UserId) -> Result<(), AccountError> {
    let version = state
        .store
        .revoke_tokens(user, None)
        .await?
        .ok_or(AccountError::UserGone)?;
    end_sessions(state, user, Some(version));
    Ok(())
}

/// Deletes the account and every message it sent or received, after checking the password.
pub async fn delete_account(
    state: &AppState,
    user: UserId,
    password: &str,
) -> Result<(), AccountError> {
    check_password(state, user, password).await?;
    if !state.store.delete_user(user).await? {
        return Err(AccountError::UserGone);
    }
    end_sessions(state, user, None);
    tracing::info!(%user, "account deleted");
    Ok(())
}

async fn check_password(
    state: &AppState,
    user: UserId,
    password: &str,
) -> Result<(), AccountError> {
    let hash = state
        .store
        .password_hash(user)
        .await?
        .ok_or(AccountError::UserGone)?;
    // Input that could never have been set is simply wrong; it still costs a hash, as a login.
    let Ok(password) = Password::parse(password.to_owned()) else {
        return Err(AccountError::WrongPassword);
    };
    if state.passwords.verify(password, Some(hash)).await? {
        Ok(())
    } else {
        Err(AccountError::WrongPassword)
    }
}

fn end_sessions(state: &AppState, user: UserId, version: Option<u64>) {
    match version {
        Some(version) => state.sessions.remember(user, version),
        None => state.sessions.forget(user),
    }
    state.hub.evict_user(user, Eviction::Revoked);
}
