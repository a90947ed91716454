//! Persistence behind one trait, so handlers never know which database they talk to.

#[cfg(test)]
mod conformance;
pub mod full;
mod mongo;
mod sqlite;

pub use mongo::MongoStore;
pub use sqlite::SqliteStore;

use async_trait::async_trait;

use crate::domain::{
    Conversation, ConversationId, ConversationSummary, Email, IdempotencyKey, Member, Message,
    MessageId, MessagePage, ResponderChoice, Status, Title, UserId,
};
use crate::failure::{Failure, RetryAfter};

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
    /// Tokens carry the version they were issued under; see [`Store::revoke_tokens`].
    pub token_version: u64,
}

/// A message for the writer to store, with the key its sender gave the send (if any).
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub message: Message,
    pub idempotency_key: Option<IdempotencyKey>,
    /// The recipient was BUSY when it was sent: an auto-reply is owed.
    pub awaits_reply: bool,
}

/// What became of one message of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    Stored,
    /// Its sender used the same idempotency key within the window: this earlier message is the
    /// answer, and nothing new was stored.
    Replayed(Message),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("email is already registered")]
    EmailTaken,
    /// A message's sender or recipient does not exist (any more).
    #[error("no such user")]
    UnknownUser,
    /// A group message's sender is not (any more) in the group.
    #[error("not a member of the conversation")]
    NotMember,
    /// This cluster node was taken for dead and fenced: the others have shown what came after
    /// its last write, so it may not commit until it has rejoined (docs/cluster.md).
    #[error("this node was fenced by the cluster")]
    Fenced,
    /// The disk holding the database is full: nothing was written; it may succeed once space
    /// is freed (see [`full`]).
    #[error("the disk holding the database is full")]
    Full,
    /// The database cannot be reached right now; the request may succeed later.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A cluster writer's insert got no answer (the link broke or stalled mid-write): some of
    /// it may be stored. The writer shows no position past it until [`Store::settle`] has
    /// found out which.
    #[error("database unavailable: the answer to a write was lost")]
    Unanswered,
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl StoreError {
    /// Counts real faults in the metrics ("email taken" and "unknown user" are answers).
    pub fn counted(self) -> Self {
        match &self {
            StoreError::Unavailable(_) | StoreError::Unanswered => {
                crate::metrics::store_error("unavailable")
            }
            StoreError::Full => {
                crate::metrics::store_error("full");
                full::hit();
            }
            StoreError::Internal(_) => crate::metrics::store_error("internal"),
            StoreError::EmailTaken
            | StoreError::UnknownUser
            | StoreError::NotMember
            | StoreError::Fenced => {}
        }
        self
    }

    /// A copy for each of several waiters on one failed operation (anyhow is not `Clone`).
    pub fn duplicate(&self) -> Self {
        match self {
            StoreError::EmailTaken => StoreError::EmailTaken,
            StoreError::UnknownUser => StoreError::UnknownUser,
            StoreError::NotMember => StoreError::NotMember,
            StoreError::Fenced => StoreError::Fenced,
            StoreError::Full => StoreError::Full,
            StoreError::Unavailable(detail) => StoreError::Unavailable(detail.clone()),
            StoreError::Unanswered => StoreError::Unanswered,
            StoreError::Internal(cause) => StoreError::Internal(anyhow::anyhow!("{cause:#}")),
        }
    }
}

/// The one text for a conversation that does not exist or that the caller is not in (the
/// same for both, so nobody learns that a conversation they are not in exists).
pub const CONVERSATION_NOT_FOUND: &str = "Conversation not found";
/// The one text for a user id that names nobody.
pub const USER_NOT_FOUND: &str = "User not found";

/// What clients are told, and `/readyz` says, while the disk holding the database is full.
pub const STORAGE_FULL: &str = "The server's storage is full; please try again later";
/// How long clients are asked to wait then: freeing space takes an operator.
pub const FULL_RETRY: RetryAfter = RetryAfter::from_secs(30);

/// What clients are told while the database cannot be reached.
pub const DATABASE_UNAVAILABLE: &str = "The database is unavailable; please try again shortly";
/// How long clients are asked to wait when the database is unavailable.
pub const UNAVAILABLE_RETRY: RetryAfter = RetryAfter::from_secs(5);

impl From<StoreError> for Failure {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::EmailTaken => Failure::conflict("Email is already registered"),
            StoreError::UnknownUser => Failure::not_found(USER_NOT_FOUND),
            StoreError::NotMember => Failure::not_found(CONVERSATION_NOT_FOUND),
            StoreError::Full => Failure::unavailable(STORAGE_FULL, FULL_RETRY),
            StoreError::Fenced => Failure::unavailable(
                "This node is rejoining the cluster; try again shortly",
                RetryAfter::from_secs(1),
            ),
            StoreError::Unavailable(detail) => {
                tracing::warn!(%detail, "database unavailable");
                Failure::unavailable(DATABASE_UNAVAILABLE, UNAVAILABLE_RETRY)
            }
            // Logged once by the writer, not once per message of the batch.
            StoreError::Unanswered => Failure::unavailable(DATABASE_UNAVAILABLE, UNAVAILABLE_RETRY),
            StoreError::Internal(cause) => Failure::internal(format!("{cause:#}")),
        }
    }
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Fails with [`StoreError::EmailTaken`] when the (normalised) email exists.
    async fn create_user(&self, user: NewUser) -> Result<User, StoreError>;
    async fn user_by_id(&self, id: UserId) -> Result<Option<User>, StoreError>;
    async fn user_by_email(&self, email: &Email) -> Result<Option<User>, StoreError>;
    /// The users of `ids` that exist, in no particular order.
    async fn users_by_ids(&self, ids: &[UserId]) -> Result<Vec<User>, StoreError>;
    async fn credentials_by_email(&self, email: &Email) -> Result<Option<Credentials>, StoreError>;
    /// Sets the status and returns the previous one; `None` when no such user exists.
    async fn set_status(&self, id: UserId, status: Status) -> Result<Option<Status>, StoreError>;
    /// Stores the messages in order and returns once they are durable, with one outcome per
    /// message: one that cannot be stored (its sender or recipient is gone) fails alone, never
    /// the rest of the batch. A message whose sender used its idempotency key in the last
    /// [`crate::domain::IDEMPOTENCY_WINDOW`] is not stored again ([`Inserted::Replayed`]).
    /// `Err` means the database failed: SQLite then stored none of the batch; MongoDB (no
    /// transactions) may have kept its first messages.
    async fn insert_messages(
        &self,
        batch: &[NewMessage],
    ) -> Result<Vec<Result<Inserted, StoreError>>, StoreError>;
    /// After `insert_messages` failed with [`StoreError::Unanswered`]: makes sure the unanswered
    /// insert can no longer land (whenever it reaches the database), then returns the ids of
    /// that batch's messages that are stored. `Err` while the database cannot tell; try again.
    /// A store whose writes always get an answer has nothing to settle.
    async fn settle(&self) -> Result<Vec<MessageId>, StoreError> {
        Ok(Vec::new())
    }
    /// The version current tokens must carry; `None` when the user does not exist.
    async fn token_version(&self, id: UserId) -> Result<Option<u64>, StoreError>;
    /// Moves the user's token version on, so every token issued before stops working, and
    /// returns the new version (`None`: no such user). With a hash, also sets the password.
    async fn revoke_tokens(
        &self,
        id: UserId,
        new_password_hash: Option<String>,
    ) -> Result<Option<u64>, StoreError>;
    /// The user's password hash, for re-checking the password before sensitive changes.
    async fn password_hash(&self, id: UserId) -> Result<Option<String>, StoreError>;
    /// Deletes the user and every message they sent or received; false when no such user.
    async fn delete_user(&self, id: UserId) -> Result<bool, StoreError>;
    /// The user's own responder choice; `None` until they make one (or when they do not exist).
    async fn responder_choice(&self, id: UserId) -> Result<Option<ResponderChoice>, StoreError>;
    /// Replaces the user's responder choice; false when no such user.
    async fn set_responder_choice(
        &self,
        id: UserId,
        choice: &ResponderChoice,
    ) -> Result<bool, StoreError>;
    /// Everyone `user` has exchanged at least one message with, or shares a group with (not
    /// `user` itself).
    async fn conversation_peers(&self, user: UserId) -> Result<Vec<UserId>, StoreError>;
    /// One message by its id, whoever may see it.
    async fn message(&self, id: MessageId) -> Result<Option<Message>, StoreError>;
    /// Messages `user` sent or received, selected by `page`, oldest first.
    async fn list_messages(
        &self,
        user: UserId,
        page: &MessagePage,
    ) -> Result<Vec<Message>, StoreError>;
    /// Stores a new group with its members; [`StoreError::UnknownUser`] (and nothing stored)
    /// when one of them does not exist.
    async fn create_conversation(&self, conversation: &Conversation) -> Result<(), StoreError>;
    /// The conversation with its members in the order they joined. A direct conversation
    /// exists from its first message on.
    async fn conversation(&self, id: ConversationId) -> Result<Option<Conversation>, StoreError>;
    /// Renames a group; false when no such conversation.
    async fn set_title(&self, id: ConversationId, title: &Title) -> Result<bool, StoreError>;
    /// Adds a member (false: already one, nothing changed); [`StoreError::UnknownUser`] when
    /// the user does not exist. Callers check that the conversation exists.
    async fn add_member(&self, id: ConversationId, member: &Member) -> Result<bool, StoreError>;
    /// Removes a member and returns the conversation as it is after (`None`: it was not a
    /// member, or the conversation does not exist). A group always has an owner while it has
    /// members: when the owner goes, the member who joined earliest becomes the owner. The
    /// last member to leave deletes the group and its messages.
    async fn remove_member(
        &self,
        id: ConversationId,
        user: UserId,
    ) -> Result<Option<Conversation>, StoreError>;
    /// `user`'s conversations, most recent activity first, starting after the `before` cursor
    /// (see [`ConversationSummary::cursor`]).
    async fn conversations_of(
        &self,
        user: UserId,
        before: Option<MessageId>,
        limit: u32,
    ) -> Result<Vec<ConversationSummary>, StoreError>;
    /// Moves `user`'s read mark in the conversation forward to `upto` (never back) and
    /// returns the mark after; `None` when they are not a member.
    async fn mark_read(
        &self,
        id: ConversationId,
        user: UserId,
        upto: MessageId,
    ) -> Result<Option<MessageId>, StoreError>;
    /// Answers when the database is reachable; used by `/readyz`. While the disk is full
    /// ([`full`]) it fails with [`StoreError::Full`] until it finds room again (SQLite asks the
    /// file system; MongoDB tries a small write), so that readiness comes back with the space
    /// even when no client write arrives to find out.
    async fn ping(&self) -> Result<(), StoreError>;
}

/// What cluster nodes need beyond [`Store`]: the messages each node's writer stored (MongoDB
/// only; a cluster cannot share an embedded database).
#[async_trait]
pub trait ClusterLog: Send + Sync + 'static {
    /// The epoch this node's writer stores under now; it changes when the node finds itself
    /// fenced.
    fn epoch(&self) -> u64;
    /// Makes sure node `origin` stores nothing more under `epoch`, whenever its writes arrive
    /// (a paused process may send them seconds later). Call it before reading what a node
    /// taken for dead stored last: that read is then complete.
    async fn fence(&self, origin: &str, epoch: u64) -> Result<(), StoreError>;
    /// Messages node `origin` stored with ids in `(after, upto]`, oldest first.
    async fn stored_by(
        &self,
        origin: &str,
        after: MessageId,
        upto: Option<MessageId>,
    ) -> Result<Vec<Message>, StoreError>;
    /// Messages node `origin` stored with ids in `(since, upto]` whose recipient was BUSY,
    /// oldest first.
    async fn awaiting_reply(
        &self,
        origin: &str,
        since: MessageId,
        upto: Option<MessageId>,
    ) -> Result<Vec<Message>, StoreError>;
}
