use std::time::Duration;

use super::{UserId, ValidationError};

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
}
