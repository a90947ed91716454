//! The socket protocol, written once: typed client frames in, typed server frames out, and one
//! handler between them. `/ws` carries frames as JSON text with a `"type"`; Socket.IO carries the
//! same frames as events (the event name is the type) and answers as acks. Adding a frame is a
//! variant here and an arm in [`handle`]; each framing only says how it looks on its wire.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Live;
use crate::domain::{MessageId, Status, UserId};
use crate::failure::Failure;
use crate::messaging::{MessageView, SendRequest, SendTo};

/// What a client may send, over either framing.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    Send(SendFrame),
    /// "I am typing in this conversation": relayed to its other members, never answered.
    Typing {
        conversation: String,
    },
    /// An application-level ping (`/ws` only: Socket.IO has Engine.IO's heartbeat).
    Ping,
    /// Any other type: refused with the type's name.
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Deserialize)]
pub struct SendFrame {
    /// A user's id (a direct message) ...
    #[serde(default)]
    pub recipient: Option<String>,
    /// ... or a conversation's id (a group, or a direct conversation): exactly one of the two.
    #[serde(default)]
    pub conversation: Option<String>,
    pub content: String,
    /// Must be the caller's own id when given.
    #[serde(default)]
    pub sender: Option<String>,
    /// Echoed in the answer, and the send's idempotency key (as `Idempotency-Key` over HTTP).
    #[serde(default)]
    pub client_id: Option<ClientId>,
}

/// A send's `client_id`: a string, or a number (taken as its decimal text).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ClientId {
    Text(String),
    Number(serde_json::Number),
}

impl ClientId {
    pub fn into_key(self) -> String {
        match self {
            ClientId::Text(text) => text,
            ClientId::Number(number) => number.to_string(),
        }
    }
}

/// What the server answers to one client frame.
#[derive(Debug)]
pub enum Reply {
    Sent {
        id: MessageId,
    },
    Pong,
    Refused(Failure),
    /// Nothing to say (typing): `/ws` writes nothing, Socket.IO acks `{}`.
    Quiet,
}

/// Everything the server sends on `/ws`, as it looks there (`"type"` first). Socket.IO sends
/// the pushes as events (see [`super::Push`]) and the replies as acks.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    Sent {
        client_id: &'a Value,
        id: String,
    },
    Pong {
        client_id: &'a Value,
    },
    Error {
        client_id: &'a Value,
        code: u16,
        message: &'a str,
        /// Seconds, with 429 and 503.
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after: Option<u64>,
    },
    Message {
        message: &'a MessageView,
    },
    Status {
        user: String,
        status: &'static str,
    },
}

impl<'a> ServerFrame<'a> {
    /// The answer to the frame that carried `client_id`.
    pub fn reply(client_id: &'a Value, reply: &'a Reply) -> Self {
        match reply {
            Reply::Sent { id } => ServerFrame::Sent {
                client_id,
                id: id.to_string(),
            },
            Reply::Pong | Reply::Quiet => ServerFrame::Pong { client_id },
            Reply::Refused(failure) => ServerFrame::Error {
                client_id,
                code: failure.status,
                message: &failure.message,
                retry_after: failure.retry_after.map(|wait| wait.seconds()),
            },
        }
    }

    pub fn status(user: UserId, status: Status) -> Self {
        ServerFrame::Status {
            user: user.to_string(),
            status: status.as_str(),
        }
    }

    pub fn to_text(&self) -> String {
        // Plain data with string keys: serializing it cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

const NOT_A_FRAME: &str = "frames must be JSON objects with a \"type\"";
const ONE_TARGET: &str = "a send needs either a recipient or a conversation";

/// Reads a client frame. `noun` names the unit in the error text ("frame" on `/ws`, "payload"
/// for a Socket.IO event's data).
pub fn parse(frame: Value, noun: &str) -> Result<ClientFrame, Failure> {
    let Value::Object(fields) = frame else {
        return Err(Failure::bad_request(NOT_A_FRAME));
    };
    let Some(kind) = fields
        .get("type")
        .and_then(Value::as_str)
        .map(str::to_owned)
    else {
        return Err(Failure::bad_request(NOT_A_FRAME));
    };
    match serde_json::from_value(Value::Object(fields)) {
        Ok(ClientFrame::Unknown) => {
            Err(Failure::bad_request(format!("unknown frame type {kind:?}")))
        }
        Ok(frame) => Ok(frame),
        Err(e) => Err(Failure::bad_request(format!("invalid {kind} {noun}: {e}"))),
    }
}

/// The one place a client frame is acted on, whichever framing carried it.
pub async fn handle(live: &Live, user: UserId, frame: ClientFrame) -> Reply {
    match frame {
        ClientFrame::Send(send) => {
            let to = match (send.recipient, send.conversation) {
                (Some(recipient), None) => SendTo::Recipient(recipient),
                (None, Some(conversation)) => SendTo::Conversation(conversation),
                _ => return Reply::Refused(Failure::bad_request(ONE_TARGET)),
            };
            let request = SendRequest {
                claimed_sender: send.sender,
                to,
                content: send.content,
                idempotency_key: send.client_id.map(ClientId::into_key),
            };
            match live.messaging.send(user, request).await {
                Ok(message) => Reply::Sent { id: message.id },
                Err(err) => Reply::Refused(err.into()),
            }
        }
        ClientFrame::Typing { conversation } => {
            // Best effort: a typing frame is never refused, whatever becomes of it.
            if let Err(e) = live.conversations.typing(user, &conversation).await {
                tracing::debug!(error = %e, "typing not relayed");
            }
            Reply::Quiet
        }
        ClientFrame::Ping => Reply::Pong,
        // `parse` refuses these with the type's name; nothing else makes one.
        ClientFrame::Unknown => Reply::Refused(Failure::bad_request("unknown frame type")),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn refusal(frame: Value) -> String {
        parse(frame, "frame").expect_err("refused").message
    }

    #[test]
    fn frames_are_objects_with_a_known_type() {
        assert_eq!(refusal(json!([1, 2])), NOT_A_FRAME);
        assert_eq!(refusal(json!({"client_id": 7})), NOT_A_FRAME);
        assert_eq!(
            refusal(json!({"type": "dance"})),
            "unknown frame type \"dance\""
        );
        assert!(
            refusal(json!({"type": "send", "recipient": "r"})).starts_with("invalid send frame:")
        );
        assert!(matches!(
            parse(json!({"type": "typing", "conversation": "c"}), "frame"),
            Ok(ClientFrame::Typing { conversation }) if conversation == "c"
        ));
        assert!(matches!(
            parse(json!({"type": "ping", "client_id": "p"}), "frame"),
            Ok(ClientFrame::Ping)
        ));
        let Ok(ClientFrame::Send(send)) = parse(
            json!({"type": "send", "recipient": "r", "content": "c", "client_id": 12}),
            "frame",
        ) else {
            panic!("a send frame");
        };
        assert_eq!(
            send.client_id.map(ClientId::into_key).as_deref(),
            Some("12")
        );
    }

    #[test]
    fn server_frames_carry_their_type_first() {
        let client_id = json!("c1");
        let refused = Reply::Refused(Failure::too_many_requests(
            "slow down",
            crate::failure::RetryAfter::from_secs(3),
        ));
        assert_eq!(
            ServerFrame::reply(&client_id, &refused).to_text(),
            r#"{"type":"error","client_id":"c1","code":429,"message":"slow down","retry_after":3}"#
        );
        assert_eq!(
            ServerFrame::reply(&client_id, &Reply::Pong).to_text(),
            r#"{"type":"pong","client_id":"c1"}"#
        );
    }
}
