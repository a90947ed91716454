//! Types that are valid by construction: once a handler holds one, it never re-checks it.

mod content;
mod email;
mod idempotency;
mod ids;
mod message;
mod password;
mod status;
mod text;

pub use content::Content;
pub use email::Email;
pub use idempotency::{IDEMPOTENCY_WINDOW, IdempotencyKey};
pub use ids::{MessageId, UserId};
pub use message::{Message, MessageKind, MessagePage};
pub use password::Password;
pub use status::Status;
pub use text::is_invisible;

/// Why a piece of user input was refused; the text is shown to the person who sent it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValidationError(pub String);

impl ValidationError {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}
