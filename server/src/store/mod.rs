//! Persistence behind one trait, so handlers never know which database they talk to.

#[cfg(test)]
mod conformance;
mod mongo;
mod sqlite;

pub use mongo::MongoStore;
pub use sqlite::SqliteStore;

use async_trait::async_trait;

use crate::domain::{Email, Message, MessagePage, Status, UserId};

/// A registered user as the API shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: UserId,
    pub email: Email,
    pub status: Status,
}

/// What registration writes. The hash is a PHC string (`$argon2id$...`), never the password.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub id: UserId,
    pub email: Email,
    pub password_hash: String,
}

/// A user together with their password hash; only the login path asks for this.
#[derive(Clone)]
pub struct Credentials {
    pub user: User,
    pub password_hash: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("email is already registered")]
    EmailTaken,
    /// The database cannot be reached right now; the request may succeed later.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl StoreError {
    /// A copy for each of several waiters on one failed operation (anyhow is not `Clone`).
    pub fn duplicate(&self) -> Self {
        match self {
            StoreError::EmailTaken => StoreError::EmailTaken,
            StoreError::Unavailable(detail) => StoreError::Unavailable(detail.clone()),
            StoreError::Internal(cause) => StoreError::Internal(anyhow::anyhow!("{cause:#}")),
        }
    }
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Fails with [`StoreError::EmailTaken`] when the (normalised) email exists.
    async fn create_user(&self, user: NewUser) -> Result<User, StoreError>;
    async fn user_by_id(&self, id: UserId) -> Result<Option<User>, StoreError>;
    async fn user_by_email(&self, email: &Email) -> Result<Option<User>, StoreError>;
    async fn credentials_by_email(&self, email: &Email) -> Result<Option<Credentials>, StoreError>;
    /// Sets the status and returns the previous one; `None` when no such user exists.
    async fn set_status(&self, id: UserId, status: Status) -> Result<Option<Status>, StoreError>;
    /// Stores the messages in order and returns once they are durable. SQLite stores a batch
    /// atomically; MongoDB (no transactions) may keep the first messages of a batch that fails.
    async fn insert_messages(&self, messages: &[Message]) -> Result<(), StoreError>;
    /// Everyone `user` has exchanged at least one message with (not `user` itself).
    async fn conversation_peers(&self, user: UserId) -> Result<Vec<UserId>, StoreError>;
    /// Messages `user` sent or received, selected by `page`, oldest first.
    async fn list_messages(
        &self,
        user: UserId,
        page: &MessagePage,
    ) -> Result<Vec<Message>, StoreError>;
    /// Answers when the database is reachable; used by `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;
}

/// The key both directions of a conversation share, whichever way a message went.
pub(crate) fn conversation_key(a: UserId, b: UserId) -> String {
    let (low, high) = if a <= b { (a, b) } else { (b, a) };
    format!("{low}:{high}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversation_key_ignores_direction() {
        let (a, b) = (UserId::new(), UserId::new());
        assert_eq!(conversation_key(a, b), conversation_key(b, a));
        assert_ne!(conversation_key(a, b), conversation_key(a, a));
    }
}

/// Shared by the store conformance suite and the black-box tests; not part of the server.
#[doc(hidden)]
pub mod testing {
    use std::io::Write;
    use std::sync::Once;

    /// The MongoDB the tests may use (`TEST_MONGODB_URI`). Unset: the MongoDB tests skip, and
    /// say so loudly on stderr (past the test harness's capture); with `CI=true` that is a
    /// failure, so CI can never pass without having run them.
    pub fn test_mongodb_uri() -> Option<String> {
        if let Some(uri) = std::env::var("TEST_MONGODB_URI")
            .ok()
            .filter(|uri| !uri.trim().is_empty())
        {
            return Some(uri);
        }
        let in_ci = std::env::var("CI").is_ok_and(|v| matches!(v.as_str(), "true" | "1"));
        assert!(
            !in_ci,
            "CI is set but TEST_MONGODB_URI is not: the MongoDB tests must run in CI"
        );
        static SAID: Once = Once::new();
        SAID.call_once(|| {
            let _ = writeln!(
                std::io::stderr(),
                "\n!!! SKIPPED the MongoDB tests: TEST_MONGODB_URI is unset. \
                 See README \"Running against MongoDB\" to run them. !!!\n"
            );
        });
        None
    }

    /// A database name no other test uses.
    pub fn fresh_database_name() -> String {
        format!("palaver_test_{}", uuid::Uuid::now_v7().simple())
    }
}
