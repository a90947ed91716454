//! A message as every client sees it: in HTTP answers (the OpenAPI schema comes from this type)
//! and in pushes over both socket framings (serde). One type, so the two cannot drift apart.

use chrono::SecondsFormat;
use poem_openapi::Object;
use poem_openapi::types::Example;
use serde::Serialize;

use crate::domain::{Message, MessageKind};

#[derive(Debug, Clone, PartialEq, Eq, Object, Serialize)]
#[oai(example)]
pub struct MessageView {
    /// Time-ordered (UUIDv7): usable as a `before`/`after` cursor.
    pub id: String,
    /// The conversation it belongs to (see `GET /api/conversations/{id}`).
    pub conversation: String,
    pub sender: String,
    /// Direct messages only; a group message goes to the group's members.
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    pub content: String,
    /// RFC 3339, UTC, millisecond precision.
    pub sent_at: String,
    /// "user", or "auto_reply" when the responder answered for a BUSY user.
    pub kind: MessageKind,
    /// An auto-reply: the id of the message it answers (clients replace that message's
    /// `reply_progress` text with this one).
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
}

impl From<Message> for MessageView {
    fn from(message: Message) -> Self {
        Self {
            id: message.id.to_string(),
            conversation: message.conversation.to_string(),
            sender: message.sender.to_string(),
            recipient: message.recipient.map(|r| r.to_string()),
            content: message.content,
            sent_at: message.sent_at.to_rfc3339_opts(SecondsFormat::Millis, true),
            kind: message.kind,
            reply_to: message.reply_to.map(|id| id.to_string()),
        }
    }
}

impl From<&Message> for MessageView {
    fn from(message: &Message) -> Self {
        message.clone().into()
    }
}

impl Example for MessageView {
    fn example() -> Self {
        Self {
            id: "0193a5f3-0a4b-7c2d-8e9f-1a2b3c4d5e6f".to_owned(),
            conversation: "5b3c1f0e-2d4a-5e6f-8a9b-0c1d2e3f4a5b".to_owned(),
            sender: "0193a5f2-7c1e-7b3a-9f1e-2b6c8d4e5f60".to_owned(),
            recipient: Some("0193a5f2-9d40-7e21-8c3b-5a6f7e8d9c0b".to_owned()),
            content: "Lunch at noon?".to_owned(),
            sent_at: "2026-11-27T12:00:00.000Z".to_owned(),
            kind: MessageKind::User,
            reply_to: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use poem_openapi::types::ToJSON;

    use super::*;
    use crate::domain::{Content, UserId};

    /// Pushes serialize with serde, HTTP answers with poem-openapi: both read the same fields.
    #[test]
    fn both_serializers_write_the_same_json() {
        for kind in [MessageKind::User, MessageKind::AutoReply] {
            let message = Message::new(
                UserId::new(),
                UserId::new(),
                Content::parse("héllo \"there\"".to_owned()).expect("content"),
                kind,
            );
            let view = MessageView::from(message);
            assert_eq!(
                serde_json::to_value(&view).expect("serde"),
                view.to_json().expect("poem-openapi")
            );
        }
    }
}
