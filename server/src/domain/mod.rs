//! Types that are valid by construction: once a handler holds one, it never re-checks it.

mod content;
mod conversation;
mod email;
mod idempotency;
mod ids;
mod message;
mod password;
mod responder;
mod status;
mod text;

pub use content::{Content, MAX_CHARS as CONTENT_MAX};
pub use conversation::{
    Conversation, ConversationId, ConversationKind, ConversationSummary, DEFAULT_MAX_GROUP_MEMBERS,
    Member, Role, TITLE_MAX, Title,
};
pub use email::Email;
pub use idempotency::{IDEMPOTENCY_WINDOW, IdempotencyKey, MAX_KEY_CHARS};
pub use ids::{MessageId, UserId};
pub use message::{
    DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT, Message, MessageKind, MessagePage, page_limit,
};
pub use password::{MAX_LEN as PASSWORD_MAX, MIN_LEN as PASSWORD_MIN, Password};
pub use responder::{MAX_SETTING_CHARS, ResponderChoice};
pub use status::Status;
pub use text::{is_deceptive, is_invisible};

/// Why a piece of user input was refused; the text is shown to the person who sent it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValidationError(pub String);

impl ValidationError {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}
