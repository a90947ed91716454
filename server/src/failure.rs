//! A failure as the person on the other end sees it, whatever carried their request: a status
//! (HTTP's codes, which the socket framings reuse as `code`), one sentence, and when a retry may
//! succeed. Each service turns its own errors into one, in a `From` impl beside the error, so
//! every text has one source; `api` and `realtime` only choose the framing (a response with
//! `Retry-After`, an `error` frame, a Socket.IO ack).

use std::time::Duration;

use crate::domain::ValidationError;

/// How long until the same request may succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub Duration);

impl RetryAfter {
    pub const fn from_secs(seconds: u64) -> Self {
        Self(Duration::from_secs(seconds))
    }

    /// Whole seconds, rounded up, for the `Retry-After` header (at least 1).
    pub fn seconds(self) -> u64 {
        (self.0.as_secs() + u64::from(self.0.subsec_nanos() > 0)).max(1)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub status: u16,
    pub message: String,
    /// Set for 429 and 503.
    pub retry_after: Option<RetryAfter>,
}

/// The only text a client gets for a fault on our side; the cause goes to the log.
pub const INTERNAL: &str = "Internal server error";

impl Failure {
    fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(401, message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(409, message)
    }
    /// Well-formed, but refused on its merits (a moderator said no).
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(422, message)
    }
    pub fn too_many_requests(message: impl Into<String>, wait: RetryAfter) -> Self {
        Self {
            retry_after: Some(wait),
            ..Self::new(429, message)
        }
    }
    pub fn unavailable(message: impl Into<String>, wait: RetryAfter) -> Self {
        Self {
            retry_after: Some(wait),
            ..Self::new(503, message)
        }
    }
    /// Logs the cause; the client only learns that something failed on our side.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(500, INTERNAL)
    }
}

impl From<ValidationError> for Failure {
    fn from(err: ValidationError) -> Self {
        Self::bad_request(capitalize(&err.0))
    }
}

/// Validation texts are written to follow a field name ("recipient must be ..."); alone, they
/// start a sentence.
pub fn capitalize(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map(|first| first.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(RetryAfter(Duration::from_millis(1)).seconds(), 1);
        assert_eq!(RetryAfter(Duration::from_millis(2001)).seconds(), 3);
        assert_eq!(RetryAfter(Duration::ZERO).seconds(), 1);
    }

    #[test]
    fn validation_texts_start_a_sentence() {
        let failure = Failure::from(ValidationError::new("content must not be empty"));
        assert_eq!(
            (failure.status, failure.message.as_str()),
            (400, "Content must not be empty")
        );
    }
}
