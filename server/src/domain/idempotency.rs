use std::time::Duration;

use super::{MessageId, UserId, ValidationError};

const AUTO_REPLY_PREFIX: &str = "palaver-auto-reply/";

/// How long a send's idempotency key keeps answering retries with the first result.
pub const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);

/// The key a client gives a send (`Idempotency-Key` header, or `client_id` on the sockets) so a
/// retry of the same send, within [`IDEMPOTENCY_WINDOW`], answers the first result instead of
/// storing the message again. Keys are the sender's own: two users never share one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

pub const MAX_KEY_CHARS: usize = 255;

impl IdempotencyKey {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let invalid = || {
            ValidationError::new(format!(
                "idempotency key must be 1 to {MAX_KEY_CHARS} characters"
            ))
        };
        let count = raw.chars().count();
        // Opaque to us: any characters, compared exactly.
        if count == 0 || count > MAX_KEY_CHARS {
            return Err(invalid());
        }
        Ok(Self(raw.to_owned()))
    }

    /// A key the server makes itself (never from a client).
    pub fn from_trusted(key: String) -> Self {
        Self(key)
    }

    /// The key an auto-reply to `message` is stored under: however many nodes try, a message
    /// gets one answer.
    pub fn for_auto_reply(message: MessageId) -> Self {
        Self(format!("{AUTO_REPLY_PREFIX}{message}"))
    }

    /// The message an auto-reply stored under `stored` (a key as [`Self::for_auto_reply`] made
    /// it, with or without the scope of [`Self::scoped`]) answers.
    pub fn answered(stored: &str) -> Option<MessageId> {
        let (_, id) = stored.split_once(AUTO_REPLY_PREFIX)?;
        MessageId::parse(id).ok()
    }

    /// The form stores keep: the sender's id and the key, so that keys are per sender.
    pub fn scoped(&self, sender: UserId) -> String {
        format!("{sender}/{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_and_scope() {
        assert!(IdempotencyKey::parse("").is_err());
        assert!(IdempotencyKey::parse(&"k".repeat(MAX_KEY_CHARS + 1)).is_err());
        let key = IdempotencyKey::parse("retry-1 ü").expect("valid");
        let (a, b) = (UserId::new(), UserId::new());
        assert_ne!(key.scoped(a), key.scoped(b));
    }

    #[test]
    fn an_auto_reply_key_names_the_message_it_answers() {
        let (message, sender) = (MessageId::new(), UserId::new());
        let key = IdempotencyKey::for_auto_reply(message);
        assert_eq!(IdempotencyKey::answered(&key.scoped(sender)), Some(message));
        assert_eq!(IdempotencyKey::answered(&key.0), Some(message));
        assert_eq!(IdempotencyKey::answered("retry-1"), None);
    }
}
