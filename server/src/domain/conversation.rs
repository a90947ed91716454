//! Conversations: the two-person ones every message has always had (direct), and groups.
//!
//! Every conversation has one id. A group's is a UUIDv7 drawn when it is created; a direct
//! conversation's is derived from the pair of users ([`ConversationId::direct`], a UUIDv5), so
//! the send path, the stores and every node compute it without asking anyone, and a database
//! written before conversations had ids can be given them on start.

use chrono::{DateTime, SubsecRound, Utc};
use unicode_normalization::UnicodeNormalization;
use uuid::Uuid;

use super::{MessageId, UserId, ValidationError, is_invisible};

/// The id of a conversation, direct or group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConversationId(Uuid);

/// The UUIDv5 namespace of direct-conversation ids (fixed forever: changing it renumbers every
/// direct conversation).
const DIRECT_NAMESPACE: Uuid = Uuid::from_u128(0x6a0d_4f2e_9b1c_4e8a_a3f5_7c2d_1e0b_9f44);

impl ConversationId {
    /// A new group's id.
    pub fn new_group() -> Self {
        Self(Uuid::now_v7())
    }

    /// The id of the direct conversation between `a` and `b`, whichever way round.
    pub fn direct(a: UserId, b: UserId) -> Self {
        let (low, high) = if a <= b { (a, b) } else { (b, a) };
        let mut name = [0u8; 32];
        name[..16].copy_from_slice(low.as_uuid().as_bytes());
        name[16..].copy_from_slice(high.as_uuid().as_bytes());
        Self(Uuid::new_v5(&DIRECT_NAMESPACE, &name))
    }

    /// Whether this is the id of a direct conversation (a UUIDv5; groups' are UUIDv7).
    pub fn is_direct(&self) -> bool {
        self.0.get_version_num() == 5
    }

    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        Uuid::try_parse(raw.trim())
            .map(Self)
            .map_err(|_| ValidationError::new("must be a valid conversation id"))
    }
}

impl std::fmt::Display for ConversationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, poem_openapi::Enum, serde::Serialize)]
#[oai(rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum ConversationKind {
    Direct,
    Group,
}

impl ConversationKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Group => "group",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        match raw {
            "direct" => Ok(Self::Direct),
            "group" => Ok(Self::Group),
            other => Err(ValidationError::new(format!(
                "unknown conversation kind {other:?}"
            ))),
        }
    }
}

/// A member's part in a group. Both people in a direct conversation are members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, poem_openapi::Enum, serde::Serialize)]
#[oai(rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Renames the group and adds and removes members.
    Owner,
    Member,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Owner => "owner",
            Self::Member => "member",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        match raw {
            "owner" => Ok(Self::Owner),
            "member" => Ok(Self::Member),
            other => Err(ValidationError::new(format!("unknown role {other:?}"))),
        }
    }
}

/// A group's name: trimmed, NFC, 1 to [`TITLE_MAX`] characters, nothing that renders as
/// nothing except the plain spaces between words (and the joiners and variation selectors
/// inside emoji), so two groups cannot be told apart only by characters nobody sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Title(String);

pub const TITLE_MAX: usize = 100;

/// Zero-width joiner and the emoji/text variation selectors: invisible, but part of how
/// emoji are written ("👩‍💻", "❤️").
fn joins_emoji(c: char) -> bool {
    matches!(c, '\u{200D}' | '\u{FE0E}' | '\u{FE0F}')
}

impl Title {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let title: String = raw.trim().nfc().collect();
        let count = title.chars().count();
        if count == 0 {
            return Err(ValidationError::new("title must not be empty"));
        }
        if count > TITLE_MAX {
            return Err(ValidationError::new(format!(
                "title must be at most {TITLE_MAX} characters"
            )));
        }
        let mut previous: Option<char> = None;
        for c in title.chars() {
            let after_visible = previous.is_some_and(|p| !is_invisible(p) || joins_emoji(p));
            let allowed = !is_invisible(c) || c == ' ' || (joins_emoji(c) && after_visible);
            if !allowed {
                return Err(ValidationError::new(
                    "title must not contain invisible or control characters",
                ));
            }
            previous = Some(c);
        }
        Ok(Self(title))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Groups hold at most this many members unless the operator says otherwise.
pub const DEFAULT_MAX_GROUP_MEMBERS: usize = 1_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub user: UserId,
    pub role: Role,
}

/// A conversation and who is in it, members in the order they joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    pub id: ConversationId,
    pub kind: ConversationKind,
    /// Groups only.
    pub title: Option<Title>,
    pub members: Vec<Member>,
    pub created_at: DateTime<Utc>,
}

impl Conversation {
    /// A new group: the creator owns it; `others` (the creator and repeats left out) are members.
    pub fn new_group(title: Title, creator: UserId, others: &[UserId]) -> Self {
        let mut members = vec![Member {
            user: creator,
            role: Role::Owner,
        }];
        for &user in others {
            if !members.iter().any(|m| m.user == user) {
                members.push(Member {
                    user,
                    role: Role::Member,
                });
            }
        }
        Self {
            id: ConversationId::new_group(),
            kind: ConversationKind::Group,
            title: Some(title),
            members,
            created_at: Utc::now().trunc_subsecs(3),
        }
    }

    pub fn member(&self, user: UserId) -> Option<&Member> {
        self.members.iter().find(|m| m.user == user)
    }

    pub fn is_owner(&self, user: UserId) -> bool {
        self.member(user).is_some_and(|m| m.role == Role::Owner)
    }
}

/// One line of a user's conversation list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationSummary {
    pub conversation: Conversation,
    /// The id of its last message, or (before the first) one drawn when it was created: the
    /// list is ordered by it, newest first, and it is the list's paging cursor.
    pub activity: MessageId,
    pub last_message: Option<super::Message>,
    /// Messages after `read_upto` that others sent.
    pub unread: u64,
    pub read_upto: Option<MessageId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_direct_id_does_not_depend_on_direction_and_differs_per_pair() {
        let (a, b, c) = (UserId::new(), UserId::new(), UserId::new());
        assert_eq!(ConversationId::direct(a, b), ConversationId::direct(b, a));
        assert_ne!(ConversationId::direct(a, b), ConversationId::direct(a, c));
        let id = ConversationId::direct(a, b);
        assert_eq!(ConversationId::parse(&id.to_string()), Ok(id));
        assert!(id.is_direct());
        assert!(!ConversationId::new_group().is_direct());
    }

    #[test]
    fn titles_are_trimmed_normalised_and_visible() {
        assert_eq!(
            Title::parse("  Lunch crew ").map(|t| t.0),
            Ok("Lunch crew".into())
        );
        // "é" as e + combining acute becomes the one composed character.
        assert_eq!(
            Title::parse("Cafe\u{301}").map(|t| t.0),
            Ok("Caf\u{e9}".into())
        );
        assert_eq!(
            Title::parse("Team \u{2764}\u{FE0F} \u{1F469}\u{200D}\u{1F4BB}").map(|t| t.0),
            Ok("Team \u{2764}\u{FE0F} \u{1F469}\u{200D}\u{1F4BB}".into())
        );
        assert!(Title::parse("   ").is_err());
        assert!(Title::parse("\u{200B}").is_err());
        assert!(Title::parse("ad\u{200B}min").is_err());
        assert!(Title::parse("a\tb").is_err());
        assert!(Title::parse("\u{202E}evil").is_err());
        assert!(Title::parse(&"x".repeat(TITLE_MAX)).is_ok());
        assert!(Title::parse(&"x".repeat(TITLE_MAX + 1)).is_err());
    }

    #[test]
    fn the_creator_owns_a_new_group_once() {
        let (a, b) = (UserId::new(), UserId::new());
        let group = Conversation::new_group(Title::parse("t").expect("title"), a, &[b, a, b]);
        assert_eq!(group.members.len(), 2);
        assert!(group.is_owner(a));
        assert!(!group.is_owner(b));
        assert_eq!(group.member(b).map(|m| m.role), Some(Role::Member));
    }
}
