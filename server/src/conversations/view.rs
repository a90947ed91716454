//! A conversation as every client sees it: in HTTP answers (the OpenAPI schema comes from this
//! type) and in `conversation` pushes (serde). One type, so the two cannot drift apart.

use chrono::SecondsFormat;
use poem_openapi::Object;
use poem_openapi::types::Example;
use serde::Serialize;

use super::Detailed;
use crate::domain::{ConversationKind, Role};

const GROUP: &str = "0193a5f4-1b2c-7d3e-8f40-5a6b7c8d9e0f";
const ADA: &str = "0193a5f2-7c1e-7b3a-9f1e-2b6c8d4e5f60";
const GRACE: &str = "0193a5f2-9d40-7e21-8c3b-5a6f7e8d9c0b";

#[derive(Debug, Clone, PartialEq, Object, Serialize)]
pub struct MemberView {
    pub id: String,
    pub email: String,
    /// "owner" (renames the group, adds and removes members) or "member".
    pub role: Role,
}

/// A conversation and its members, in the order they joined.
#[derive(Debug, Clone, PartialEq, Object, Serialize)]
#[oai(example)]
pub struct ConversationView {
    pub id: String,
    /// "direct" (two people) or "group".
    pub kind: ConversationKind,
    /// Groups only.
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    pub members: Vec<MemberView>,
    /// RFC 3339, UTC.
    pub created_at: String,
}

impl From<Detailed> for ConversationView {
    fn from(detailed: Detailed) -> Self {
        let Detailed {
            conversation,
            members,
        } = detailed;
        Self {
            id: conversation.id.to_string(),
            kind: conversation.kind,
            title: conversation.title.map(|t| t.as_str().to_owned()),
            members: members
                .into_iter()
                .map(|(user, role)| MemberView {
                    id: user.id.to_string(),
                    email: user.email.as_str().to_owned(),
                    role,
                })
                .collect(),
            created_at: conversation
                .created_at
                .to_rfc3339_opts(SecondsFormat::Millis, true),
        }
    }
}

impl Example for ConversationView {
    fn example() -> Self {
        Self {
            id: GROUP.to_owned(),
            kind: ConversationKind::Group,
            title: Some("Lunch crew".to_owned()),
            members: vec![
                MemberView {
                    id: ADA.to_owned(),
                    email: "ada@example.com".to_owned(),
                    role: Role::Owner,
                },
                MemberView {
                    id: GRACE.to_owned(),
                    email: "grace@example.com".to_owned(),
                    role: Role::Member,
                },
            ],
            created_at: "2026-11-27T12:00:00.000Z".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use poem_openapi::types::ToJSON;

    use super::*;

    /// Pushes serialize with serde, HTTP answers with poem-openapi: both read the same fields.
    #[test]
    fn both_serializers_write_the_same_json() {
        let mut direct = ConversationView::example();
        direct.kind = ConversationKind::Direct;
        direct.title = None;
        for view in [ConversationView::example(), direct] {
            assert_eq!(
                serde_json::to_value(&view).expect("serde"),
                view.to_json().expect("poem-openapi")
            );
        }
    }
}
