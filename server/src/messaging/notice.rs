//! What clients are told besides messages and status changes: read marks, typing, and changes
//! to a conversation's members. Each is a plain, serializable value, so the in-process fan-out
//! renders it and the cluster carries it to other nodes as it is. On `/ws` a notice is a frame
//! with its `"type"`; on Socket.IO the type is the event name and the rest the payload.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::{ConversationId, MessageId, UserId};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Notice {
    /// `user` has read the conversation up to `upto` (to every member, the reader's other
    /// devices included).
    Read {
        conversation: String,
        user: String,
        upto: String,
    },
    /// `user` is typing in the conversation (to the other members; never stored).
    Typing { conversation: String, user: String },
    /// A conversation was created, renamed, or its members changed: the whole conversation, as
    /// `GET /api/conversations/{id}` shows it.
    Conversation { conversation: Value },
    /// The receiver is no longer a member: nothing more of the conversation reaches them.
    Removed { conversation: String },
    /// A responder's answer to message `reply_to`, as written so far (to both sides; never
    /// stored). `seq` counts up from 1 per reply; the stored auto-reply (with the same
    /// `reply_to`) replaces it, and so does the fallback if the deadline passes mid-stream.
    ReplyProgress {
        reply_to: String,
        text: String,
        seq: u64,
    },
}

impl Notice {
    pub fn read(conversation: ConversationId, user: UserId, upto: MessageId) -> Self {
        Notice::Read {
            conversation: conversation.to_string(),
            user: user.to_string(),
            upto: upto.to_string(),
        }
    }

    pub fn typing(conversation: ConversationId, user: UserId) -> Self {
        Notice::Typing {
            conversation: conversation.to_string(),
            user: user.to_string(),
        }
    }

    pub fn removed(conversation: ConversationId) -> Self {
        Notice::Removed {
            conversation: conversation.to_string(),
        }
    }

    /// The event name on Socket.IO, the `"type"` on `/ws`.
    pub fn kind(&self) -> &'static str {
        match self {
            Notice::Read { .. } => "read",
            Notice::Typing { .. } => "typing",
            Notice::Conversation { .. } => "conversation",
            Notice::Removed { .. } => "removed",
            Notice::ReplyProgress { .. } => "reply_progress",
        }
    }

    /// The conversation it is about.
    pub fn conversation(&self) -> Option<ConversationId> {
        let id = match self {
            Notice::Read { conversation, .. }
            | Notice::Typing { conversation, .. }
            | Notice::Removed { conversation } => conversation.as_str(),
            Notice::Conversation { conversation } => conversation.get("id")?.as_str()?,
            Notice::ReplyProgress { .. } => return None,
        };
        ConversationId::parse(id).ok()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_notice_is_a_typed_frame() {
        let (c, u) = (ConversationId::new_group(), UserId::new());
        let typing = Notice::typing(c, u);
        assert_eq!(
            serde_json::to_value(&typing).expect("json"),
            json!({"type": "typing", "conversation": c.to_string(), "user": u.to_string()})
        );
        assert_eq!(typing.kind(), "typing");
        assert_eq!(typing.conversation(), Some(c));
        let changed = Notice::Conversation {
            conversation: json!({"id": c.to_string(), "title": "t"}),
        };
        assert_eq!(changed.conversation(), Some(c));
        let text = serde_json::to_string(&changed).expect("json");
        assert_eq!(
            serde_json::from_str::<Notice>(&text).expect("back"),
            changed
        );
    }
}
