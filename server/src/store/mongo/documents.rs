//! The documents as MongoDB stores them ([`UserDoc`], [`MessageDoc`]) and their conversions
//! from and to the domain types. Only this store writes them, so a field that does not parse
//! on the way back is a corrupted document, not a user error.

use chrono::{DateTime, Utc};
use mongodb::bson;
use serde::{Deserialize, Serialize};

use super::errors::corrupt;
use crate::domain::{
    ConversationId, Email, Message, MessageId, MessageKind, ResponderChoice, Status, UserId,
};
use crate::store::{NewMessage, StoreError, User};

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct UserDoc {
    #[serde(rename = "_id")]
    pub(super) id: String,
    /// Normalised (trimmed, lower-case) by `Email::parse`, so a plain unique index suffices.
    pub(super) email: String,
    pub(super) password_hash: String,
    pub(super) status: String,
    pub(super) created_at: bson::DateTime,
    /// See `Store::revoke_tokens`; absent in documents from before it existed.
    #[serde(default)]
    pub(super) token_version: i64,
    /// Absent until the user chooses a responder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) responder: Option<ResponderChoice>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct MessageDoc {
    /// The UUIDv7 text: it sorts in time order, so `_id` is also the paging cursor.
    #[serde(rename = "_id")]
    pub(super) id: String,
    pub(super) sender: String,
    /// Direct messages only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) recipient: Option<String>,
    /// `[sender, recipient]` of a direct message (empty for a group message, which its
    /// conversation's members see): one multikey index serves "all of a user's direct
    /// messages".
    pub(super) participants: Vec<String>,
    /// The conversation's id (see `ConversationId::direct`); before conversations had ids,
    /// the pair's key `low:high` (see `give_direct_conversations_ids`).
    pub(super) conversation: String,
    pub(super) content: String,
    pub(super) sent_at: bson::DateTime,
    pub(super) kind: String,
    /// `<sender>/<key>` when the send carried an idempotency key (see `IdempotencyKey`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) idempotency: Option<String>,
    /// The node whose writer stored it (cluster mode), so that other nodes can recover what a
    /// node committed but could not announce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) origin: Option<String>,
    /// The recipient was BUSY: an auto-reply is owed (see `NewMessage::awaits_reply`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(super) awaits_reply: bool,
}

impl TryFrom<UserDoc> for User {
    type Error = StoreError;

    fn try_from(doc: UserDoc) -> Result<Self, StoreError> {
        let bad = |e| corrupt("user", &doc.id, e);
        Ok(User {
            id: UserId::parse(&doc.id).map_err(bad)?,
            email: Email::parse(&doc.email).map_err(bad)?,
            status: Status::parse(&doc.status).map_err(bad)?,
        })
    }
}

impl From<&NewMessage> for MessageDoc {
    fn from(new: &NewMessage) -> Self {
        let mut doc = MessageDoc::from(&new.message);
        doc.idempotency = new
            .idempotency_key
            .as_ref()
            .map(|key| key.scoped(new.message.sender));
        doc.awaits_reply = new.awaits_reply;
        doc
    }
}

impl From<&Message> for MessageDoc {
    fn from(message: &Message) -> Self {
        let sender = message.sender.to_string();
        let recipient = message.recipient.map(|r| r.to_string());
        Self {
            id: message.id.to_string(),
            participants: recipient
                .iter()
                .map(|r| vec![sender.clone(), r.clone()])
                .next()
                .unwrap_or_default(),
            conversation: message.conversation.to_string(),
            sender,
            recipient,
            content: message.content.clone(),
            sent_at: bson::DateTime::from_millis(message.sent_at.timestamp_millis()),
            kind: message.kind.as_str().to_owned(),
            idempotency: None,
            origin: None,
            awaits_reply: false,
        }
    }
}

impl TryFrom<MessageDoc> for Message {
    type Error = StoreError;

    fn try_from(doc: MessageDoc) -> Result<Self, StoreError> {
        let bad = |e| corrupt("message", &doc.id, e);
        let sent_at = DateTime::<Utc>::from_timestamp_millis(doc.sent_at.timestamp_millis())
            .ok_or_else(|| corrupt("message", &doc.id, "timestamp out of range"))?;
        let sender = UserId::parse(&doc.sender).map_err(bad)?;
        let recipient = doc
            .recipient
            .as_deref()
            .map(UserId::parse)
            .transpose()
            .map_err(bad)?;
        let conversation = match recipient {
            // Written before conversations had ids (the pair's key): being given its id.
            Some(recipient) if doc.conversation.contains(':') => {
                ConversationId::direct(sender, recipient)
            }
            _ => ConversationId::parse(&doc.conversation).map_err(bad)?,
        };
        Ok(Message {
            id: MessageId::parse(&doc.id).map_err(bad)?,
            conversation,
            sender,
            recipient,
            kind: MessageKind::parse(&doc.kind).map_err(bad)?,
            content: doc.content,
            sent_at,
            // Auto-replies are stored under a key that names the message they answer.
            reply_to: doc
                .idempotency
                .as_deref()
                .and_then(crate::domain::IdempotencyKey::answered),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_documents_round_trip() {
        let (sender, recipient) = (UserId::new(), UserId::new());
        let message = Message {
            id: MessageId::new(),
            conversation: ConversationId::direct(sender, recipient),
            sender,
            recipient: Some(recipient),
            content: "hello".into(),
            sent_at: DateTime::from_timestamp_millis(1_790_000_000_123).expect("valid"),
            kind: MessageKind::AutoReply,
            reply_to: None,
        };
        let doc = MessageDoc::from(&message);
        assert_eq!(
            doc.participants,
            [sender.to_string(), recipient.to_string()]
        );
        assert_eq!(Message::try_from(doc).expect("valid"), message);
        let group = Message {
            conversation: ConversationId::new_group(),
            recipient: None,
            kind: MessageKind::User,
            ..message
        };
        let doc = MessageDoc::from(&group);
        assert!(doc.participants.is_empty());
        assert_eq!(Message::try_from(doc).expect("valid"), group);
    }
}
