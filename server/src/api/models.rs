//! The JSON shapes of the API. Field names and the seed's texts are part of the contract.

use poem_openapi::Object;
use poem_openapi::types::Example;

use super::schema::{ContentText, EmailText, PasswordText, SettingText, UuidText};
use std::collections::BTreeMap;

use crate::domain::{ResponderChoice, Status};

/// Ids in the examples: time-ordered UUIDv7s like the real ones.
const ADA: &str = "0193a5f2-7c1e-7b3a-9f1e-2b6c8d4e5f60";
const GRACE: &str = "0193a5f2-9d40-7e21-8c3b-5a6f7e8d9c0b";
const MESSAGE: &str = "0193a5f3-0a4b-7c2d-8e9f-1a2b3c4d5e6f"; // the MessageView example's id
const TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIwMTkzYTVmMi03YzFlLTdiM2EtOWYxZS0yYjZjOGQ0ZTVmNjAifQ.signature";
const EXPIRES_AT: &str = "2026-11-28T09:30:00Z";

use crate::store::User;

/// Email and password, for registering and for logging in.
#[derive(Object)]
#[oai(example)]
pub struct CredentialsBody {
    /// Trimmed and compared case-insensitively.
    pub email: EmailText,
    /// 8 to 128 characters.
    pub password: PasswordText,
}

#[derive(Object)]
#[oai(example)]
pub struct Registered {
    /// Always "User registered successfully".
    pub message: String,
    /// The new user's id.
    pub id: String,
}

#[derive(Object)]
#[oai(example)]
pub struct LoginToken {
    /// Send as `Authorization: Bearer <token>` (or `x-auth-token: <token>`).
    pub token: String,
    /// The id of the user the token belongs to.
    pub user_id: String,
    /// When the token stops working (RFC 3339).
    pub expires_at: String,
}

#[derive(Object)]
#[oai(example)]
pub struct PasswordChangeBody {
    /// The password in use now.
    #[oai(validator(max_length = 1024))]
    pub current_password: String,
    /// 8 to 128 characters.
    pub new_password: PasswordText,
}

#[derive(Object)]
#[oai(example)]
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
#[oai(example)]
pub struct PasswordBody {
    /// The account's password, to confirm.
    #[oai(validator(max_length = 1024))]
    pub password: String,
}

#[derive(Object)]
#[oai(example)]
pub struct Done {
    /// What happened, for a person.
    pub message: String,
}

#[derive(Object)]
#[oai(example)]
pub struct SendMessageBody {
    /// Optional; when present it must be the caller's own id.
    #[oai(skip_serializing_if_is_none)]
    pub sender: Option<UuidText>,
    /// The recipient's user id.
    pub recipient: UuidText,
    /// 1 to 4,000 characters, not blank.
    pub content: ContentText,
}

#[derive(Object)]
#[oai(example)]
pub struct MessageSent {
    /// Always "Message sent successfully".
    pub message: String,
    /// The stored message's id.
    pub id: String,
}

#[derive(Object)]
#[oai(example)]
pub struct StatusBody {
    pub status: Status,
}

#[derive(Object)]
#[oai(example)]
pub struct StatusUpdated {
    /// Always "User status updated".
    pub message: String,
    pub status: Status,
}

#[derive(Object)]
#[oai(example)]
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
#[oai(example)]
pub struct HealthView {
    /// "ok" when alive, "ready" when the store answers.
    pub status: String,
}

/// A user's responder: which plugin answers for them while they are BUSY, and their settings.
#[derive(Object)]
#[oai(example)]
pub struct ResponderView {
    /// A plugin name, as `GET /api/plugins` lists them.
    pub plugin: String,
    /// The user's own settings for it (keys from the plugin's `user_settings`).
    pub config: BTreeMap<String, String>,
}

impl From<ResponderChoice> for ResponderView {
    fn from(choice: ResponderChoice) -> Self {
        Self {
            plugin: choice.plugin,
            config: choice.config,
        }
    }
}

/// Which plugin should answer for the caller while they are BUSY, with their settings for it.
#[derive(Object)]
#[oai(example)]
pub struct ResponderBody {
    /// A loaded plugin's name (`GET /api/plugins`).
    #[oai(validator(min_length = 1, max_length = 64))]
    pub plugin: String,
    /// Only keys the plugin lists in `user_settings`; each value a string of 1 to 4,000
    /// characters, not blank, without control characters (newlines and tabs are fine) or
    /// bidirectional overrides: the plugin gets it as written (the LLM responder puts it in the
    /// model's instructions). Leave a key out for the plugin's default; `{}` for none. Replaces
    /// the previous settings as a whole.
    pub config: BTreeMap<String, SettingText>,
}

/// A setting users may give a plugin for themselves.
#[derive(Object, serde::Serialize)]
pub struct UserSettingView {
    pub key: String,
    /// What it means, for a form label.
    pub description: String,
}

/// A plugin, as users see it: what it is, what they may set, and whether it answers now.
#[derive(Object)]
#[oai(example)]
pub struct PluginView {
    pub name: String,
    pub version: String,
    pub description: String,
    /// What it does, from what it exports: `responder` (it may be chosen to answer for BUSY
    /// users), `moderator` (it may be named in `MODERATION_PLUGINS`), or both. Empty while
    /// loading.
    pub roles: Vec<PluginRole>,
    /// Whether this plugin answers for BUSY users now.
    pub active: bool,
    /// What users may set for themselves (`PUT /api/users/me/responder`).
    pub user_settings: Vec<UserSettingView>,
    /// "ready", or "benched": it failed too many calls in a row and sits out a cool-down (its
    /// users get the standard message without it running); it comes back by itself.
    pub state: PluginState,
    /// While benched: when it gets its next chance (RFC 3339).
    #[oai(skip_serializing_if_is_none)]
    pub benched_until: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, poem_openapi::Enum, serde::Serialize)]
#[oai(rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum PluginRole {
    Responder,
    Moderator,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, poem_openapi::Enum, serde::Serialize)]
#[oai(rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum PluginState {
    /// Compiling (after a start or a drop into `PLUGINS_DIR`): its users get the fallback.
    Loading,
    Ready,
    Benched,
}

// Examples: Swagger UI pre-fills request bodies with these and generators put them in docs.

impl Example for CredentialsBody {
    fn example() -> Self {
        Self {
            email: EmailText("ada@example.com".to_owned()),
            password: PasswordText("correct horse battery".to_owned()),
        }
    }
}

impl Example for Registered {
    fn example() -> Self {
        Self {
            message: "User registered successfully".to_owned(),
            id: ADA.to_owned(),
        }
    }
}

impl Example for LoginToken {
    fn example() -> Self {
        Self {
            token: TOKEN.to_owned(),
            user_id: ADA.to_owned(),
            expires_at: EXPIRES_AT.to_owned(),
        }
    }
}

impl Example for PasswordChangeBody {
    fn example() -> Self {
        Self {
            current_password: "correct horse battery".to_owned(),
            new_password: PasswordText("battery staple horse".to_owned()),
        }
    }
}

impl Example for PasswordChanged {
    fn example() -> Self {
        Self {
            message: "Password changed".to_owned(),
            token: TOKEN.to_owned(),
            user_id: ADA.to_owned(),
            expires_at: EXPIRES_AT.to_owned(),
        }
    }
}

impl Example for PasswordBody {
    fn example() -> Self {
        Self {
            password: "correct horse battery".to_owned(),
        }
    }
}

impl Example for Done {
    fn example() -> Self {
        Self {
            message: "Logged out everywhere".to_owned(),
        }
    }
}

impl Example for SendMessageBody {
    fn example() -> Self {
        Self {
            sender: None,
            recipient: UuidText(GRACE.to_owned()),
            content: ContentText("Lunch at noon?".to_owned()),
        }
    }
}

impl MessageSent {
    /// The answer to every send, whichever route took it.
    pub fn new(id: crate::domain::MessageId) -> Self {
        Self {
            message: "Message sent successfully".to_owned(),
            id: id.to_string(),
        }
    }
}

impl Example for MessageSent {
    fn example() -> Self {
        Self {
            message: "Message sent successfully".to_owned(),
            id: MESSAGE.to_owned(),
        }
    }
}

impl Example for StatusBody {
    fn example() -> Self {
        Self {
            status: Status::Busy,
        }
    }
}

impl Example for StatusUpdated {
    fn example() -> Self {
        Self {
            message: "User status updated".to_owned(),
            status: Status::Busy,
        }
    }
}

impl Example for UserView {
    fn example() -> Self {
        Self {
            id: GRACE.to_owned(),
            email: "grace@example.com".to_owned(),
            status: Status::Available,
        }
    }
}

impl Example for HealthView {
    fn example() -> Self {
        Self {
            status: "ready".to_owned(),
        }
    }
}

impl Example for PluginView {
    fn example() -> Self {
        Self {
            name: "llm-responder".to_owned(),
            version: "0.1.0".to_owned(),
            description:
                "Palaver's default responder: asks an OpenAI-compatible chat-completion API"
                    .to_owned(),
            roles: vec![PluginRole::Responder],
            active: true,
            user_settings: vec![UserSettingView {
                key: "persona".to_owned(),
                description: "How to answer for you, in your own words".to_owned(),
            }],
            state: PluginState::Ready,
            benched_until: None,
        }
    }
}

impl Example for ResponderView {
    fn example() -> Self {
        Self {
            plugin: "llm-responder".to_owned(),
            config: [
                ("persona", "Friendly and short. I'm in meetings until 5 pm."),
                ("language", "French"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        }
    }
}

impl Example for ResponderBody {
    fn example() -> Self {
        let ResponderView { plugin, config } = ResponderView::example();
        let config = config
            .into_iter()
            .map(|(k, v)| (k, SettingText(v)))
            .collect();
        Self { plugin, config }
    }
}
