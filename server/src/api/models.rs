//! The JSON shapes of the API. Field names and the seed's texts are part of the contract.

use chrono::SecondsFormat;
use poem_openapi::Object;
use poem_openapi::types::ToJSON;

use super::schema::{ContentText, EmailText, PasswordText, UuidText};
use crate::domain::{Message, MessageKind, Status};
use crate::store::User;

/// Email and password, for registering and for logging in.
#[derive(Object)]
pub struct CredentialsBody {
    /// Trimmed and compared case-insensitively.
    pub email: EmailText,
    /// 8 to 128 characters.
    pub password: PasswordText,
}

#[derive(Object)]
pub struct Registered {
    /// Always "User registered successfully".
    pub message: String,
    /// The new user's id.
    pub id: String,
}

#[derive(Object)]
pub struct LoginToken {
    /// Send as `Authorization: Bearer <token>` (or `x-auth-token: <token>`).
    pub token: String,
    /// The id of the user the token belongs to.
    pub user_id: String,
    /// When the token stops working (RFC 3339).
    pub expires_at: String,
}

#[derive(Object)]
pub struct PasswordChangeBody {
    /// The password in use now.
    #[oai(validator(max_length = 1024))]
    pub current_password: String,
    /// 8 to 128 characters.
    pub new_password: PasswordText,
}

#[derive(Object)]
pub struct PasswordChanged {
    /// Always "Password changed".
    pub message: String,
    /// A new token for this device: every token issued before the change stopped working.
    pub token: String,
    pub user_id: String,
    /// When the new token stops working (RFC 3339).
    pub expires_at: String,
}

#[derive(Object)]
pub struct PasswordBody {
    /// The account's password, to confirm.
    #[oai(validator(max_length = 1024))]
    pub password: String,
}

#[derive(Object)]
pub struct Done {
    /// What happened, for a person.
    pub message: String,
}

#[derive(Object)]
pub struct SendMessageBody {
    /// Optional; when present it must be the caller's own id.
    pub sender: Option<UuidText>,
    /// The recipient's user id.
    pub recipient: UuidText,
    /// 1 to 4,000 characters, not blank.
    pub content: ContentText,
}

#[derive(Object)]
pub struct MessageSent {
    /// Always "Message sent successfully".
    pub message: String,
    /// The stored message's id.
    pub id: String,
}

#[derive(Object)]
pub struct StatusBody {
    pub status: Status,
}

#[derive(Object)]
pub struct StatusUpdated {
    /// Always "User status updated".
    pub message: String,
    pub status: Status,
}

#[derive(Object)]
pub struct UserView {
    pub id: String,
    pub email: String,
    pub status: Status,
}

impl From<User> for UserView {
    fn from(user: User) -> Self {
        Self {
            id: user.id.to_string(),
            email: user.email.to_string(),
            status: user.status,
        }
    }
}

#[derive(Object)]
pub struct MessageView {
    /// Time-ordered (UUIDv7): usable as a `before`/`after` cursor.
    pub id: String,
    pub sender: String,
    pub recipient: String,
    pub content: String,
    /// RFC 3339, UTC, millisecond precision.
    pub sent_at: String,
    /// "user", or "auto_reply" when the responder answered for a BUSY user.
    pub kind: MessageKind,
}

impl From<Message> for MessageView {
    fn from(message: Message) -> Self {
        Self {
            id: message.id.to_string(),
            sender: message.sender.to_string(),
            recipient: message.recipient.to_string(),
            content: message.content,
            sent_at: message.sent_at.to_rfc3339_opts(SecondsFormat::Millis, true),
            kind: message.kind,
        }
    }
}

/// A message as every transport shows it (HTTP lists, WebSocket and Socket.IO pushes).
pub fn message_json(message: &Message) -> serde_json::Value {
    MessageView::from(message.clone())
        .to_json()
        .unwrap_or(serde_json::Value::Null)
}

#[derive(Object)]
pub struct HealthView {
    /// "ok" when alive, "ready" when the store answers.
    pub status: String,
}

/// A loaded responder plugin, as its manifest describes it.
#[derive(Object)]
pub struct PluginView {
    pub name: String,
    pub version: String,
    pub description: String,
    /// Hosts the manifest asks to call (the operator's list narrows this further).
    pub allowed_hosts: Vec<String>,
    pub memory_mb: u64,
    pub fuel: u64,
    /// The manifest's own deadline, when it sets one (else `RESPONDER_TIMEOUT_MS` alone).
    #[oai(skip_serializing_if_is_none)]
    pub timeout_ms: Option<u64>,
    /// Whether this plugin answers for BUSY users now.
    pub active: bool,
}
