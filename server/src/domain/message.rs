use chrono::{DateTime, SubsecRound, Utc};

use super::{Content, ConversationId, MessageId, UserId, ValidationError};

/// Who wrote a message: the person, or the responder answering for them while they were BUSY.
#[derive(Debug, Clone, Copy, PartialEq, Eq, poem_openapi::Enum, serde::Serialize)]
#[oai(rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    User,
    AutoReply,
}

impl MessageKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            MessageKind::User => "user",
            MessageKind::AutoReply => "auto_reply",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        match raw {
            "user" => Ok(MessageKind::User),
            "auto_reply" => Ok(MessageKind::AutoReply),
            other => Err(ValidationError::new(format!(
                "unknown message kind {other:?}"
            ))),
        }
    }
}

/// A stored message. `sent_at` has millisecond precision so it survives every store unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: MessageId,
    pub sender: UserId,
    pub recipient: UserId,
    pub content: String,
    pub sent_at: DateTime<Utc>,
    pub kind: MessageKind,
}

impl Message {
    pub fn new(sender: UserId, recipient: UserId, content: Content, kind: MessageKind) -> Self {
        Self {
            id: MessageId::new(),
            sender,
            recipient,
            content: content.into_string(),
            sent_at: Utc::now().trunc_subsecs(3),
            kind,
        }
    }

    /// The conversation the message belongs to.
    pub fn conversation(&self) -> ConversationId {
        ConversationId::direct(self.sender, self.recipient)
    }
}

pub const DEFAULT_PAGE_LIMIT: u32 = 50;
pub const MAX_PAGE_LIMIT: u32 = 200;

/// Which slice of a user's messages to return. Ids are time-ordered, so they double as cursors.
///
/// Without `after`, the page is the newest `limit` matches (older than `before` when given:
/// scrolling back). With `after`, it is the oldest `limit` matches newer than `after`: catching
/// up after a reconnect. Either way the page is returned oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessagePage {
    pub with: Option<UserId>,
    pub before: Option<MessageId>,
    pub after: Option<MessageId>,
    pub limit: u32,
    /// Nothing newer than this, whatever else asks (set by the server, never by a client): in a
    /// cluster, what every writer has committed.
    pub upto: Option<MessageId>,
}

impl MessagePage {
    pub fn new(
        with: Option<UserId>,
        before: Option<MessageId>,
        after: Option<MessageId>,
        limit: Option<u32>,
    ) -> Result<Self, ValidationError> {
        let limit = limit.unwrap_or(DEFAULT_PAGE_LIMIT);
        if !(1..=MAX_PAGE_LIMIT).contains(&limit) {
            return Err(ValidationError::new(format!(
                "limit must be between 1 and {MAX_PAGE_LIMIT}"
            )));
        }
        Ok(Self {
            with,
            before,
            after,
            limit,
            upto: None,
        })
    }
}

impl Default for MessagePage {
    fn default() -> Self {
        Self {
            with: None,
            before: None,
            after: None,
            limit: DEFAULT_PAGE_LIMIT,
            upto: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_limit_bounds() {
        assert_eq!(
            MessagePage::new(None, None, None, None).map(|p| p.limit),
            Ok(DEFAULT_PAGE_LIMIT)
        );
        assert!(MessagePage::new(None, None, None, Some(0)).is_err());
        assert!(MessagePage::new(None, None, None, Some(MAX_PAGE_LIMIT)).is_ok());
        assert!(MessagePage::new(None, None, None, Some(MAX_PAGE_LIMIT + 1)).is_err());
    }

    #[test]
    fn kind_round_trips() {
        for kind in [MessageKind::User, MessageKind::AutoReply] {
            assert_eq!(MessageKind::parse(kind.as_str()), Ok(kind));
        }
    }
}
