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
    pub conversation: ConversationId,
    pub sender: UserId,
    /// Direct messages only: a group message goes to whoever is in the group.
    pub recipient: Option<UserId>,
    pub content: String,
    pub sent_at: DateTime<Utc>,
    pub kind: MessageKind,
    /// An auto-reply: the message it answers.
    pub reply_to: Option<MessageId>,
}

impl Message {
    /// A direct message.
    pub fn new(sender: UserId, recipient: UserId, content: Content, kind: MessageKind) -> Self {
        Self {
            id: MessageId::new(),
            conversation: ConversationId::direct(sender, recipient),
            sender,
            recipient: Some(recipient),
            content: content.into_string(),
            sent_at: Utc::now().trunc_subsecs(3),
            kind,
            reply_to: None,
        }
    }

    /// A message to a group.
    pub fn to_group(sender: UserId, conversation: ConversationId, content: Content) -> Self {
        Self {
            id: MessageId::new(),
            conversation,
            sender,
            recipient: None,
            content: content.into_string(),
            sent_at: Utc::now().trunc_subsecs(3),
            kind: MessageKind::User,
            reply_to: None,
        }
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
    /// Only this conversation (the caller checks that the user is in it).
    pub conversation: Option<ConversationId>,
    pub before: Option<MessageId>,
    pub after: Option<MessageId>,
    pub limit: u32,
    /// Nothing newer than this, whatever else asks (set by the server, never by a client): in a
    /// cluster, what every writer has committed.
    pub upto: Option<MessageId>,
}

/// A page size as a client gave it: [`DEFAULT_PAGE_LIMIT`] when absent, else 1 to
/// [`MAX_PAGE_LIMIT`]. Every paged list (messages, conversations) reads its `limit` here.
pub fn page_limit(limit: Option<u32>) -> Result<u32, ValidationError> {
    let limit = limit.unwrap_or(DEFAULT_PAGE_LIMIT);
    if !(1..=MAX_PAGE_LIMIT).contains(&limit) {
        return Err(ValidationError::new(format!(
            "limit must be between 1 and {MAX_PAGE_LIMIT}"
        )));
    }
    Ok(limit)
}

impl MessagePage {
    pub fn new(
        conversation: Option<ConversationId>,
        before: Option<MessageId>,
        after: Option<MessageId>,
        limit: Option<u32>,
    ) -> Result<Self, ValidationError> {
        let limit = page_limit(limit)?;
        Ok(Self {
            conversation,
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
            conversation: None,
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
