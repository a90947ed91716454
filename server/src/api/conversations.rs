use super::payload::SerdeJson;
use poem::web::Data;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::types::Example;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::ApiTags;
use super::AppState;
use super::error::ApiError;
use super::models::MessageSent;
use super::schema::{ContentText, KeyText, PageLimit, TitleText, UuidText, parse_optional};
use super::security::AuthUser;
use crate::conversations::ConversationView;
use crate::domain::{
    ConversationKind, ConversationSummary, MessageId, MessagePage, UserId, page_limit,
};
use crate::messaging::{MessageView, SendRequest, SendTo};

pub struct ConversationsApi;

const GROUP: &str = "0193a5f4-1b2c-7d3e-8f40-5a6b7c8d9e0f";
const ADA: &str = "0193a5f2-7c1e-7b3a-9f1e-2b6c8d4e5f60";
const GRACE: &str = "0193a5f2-9d40-7e21-8c3b-5a6f7e8d9c0b";
const MESSAGE: &str = "0193a5f3-0a4b-7c2d-8e9f-1a2b3c4d5e6f";

/// A new group.
#[derive(Object)]
#[oai(example)]
pub struct NewGroupBody {
    pub title: TitleText,
    /// The other members' user ids (the creator is the owner without being listed).
    #[oai(validator(max_items = 100000))]
    pub members: Vec<UuidText>,
}

impl Example for NewGroupBody {
    fn example() -> Self {
        Self {
            title: TitleText("Lunch crew".to_owned()),
            members: vec![UuidText(GRACE.to_owned())],
        }
    }
}

#[derive(Object)]
#[oai(example)]
pub struct RenameBody {
    pub title: TitleText,
}

impl Example for RenameBody {
    fn example() -> Self {
        Self {
            title: TitleText("Dinner crew".to_owned()),
        }
    }
}

#[derive(Object)]
#[oai(example)]
pub struct AddMemberBody {
    /// The user id to add.
    pub user: UuidText,
}

impl Example for AddMemberBody {
    fn example() -> Self {
        Self {
            user: UuidText(GRACE.to_owned()),
        }
    }
}

#[derive(Object)]
#[oai(example)]
pub struct ReadBody {
    /// A message of the conversation: everything up to it is read.
    pub upto: UuidText,
}

impl Example for ReadBody {
    fn example() -> Self {
        Self {
            upto: UuidText(MESSAGE.to_owned()),
        }
    }
}

/// One line of the conversation list.
#[derive(Object)]
#[oai(example)]
pub struct ConversationListItem {
    pub id: String,
    pub kind: ConversationKind,
    /// Groups only.
    #[oai(skip_serializing_if_is_none)]
    pub title: Option<String>,
    /// Direct conversations only: the other person's user id.
    #[oai(skip_serializing_if_is_none)]
    pub peer: Option<String>,
    /// The newest message, if there is one.
    #[oai(skip_serializing_if_is_none)]
    pub last_message: Option<MessageView>,
    /// Messages after `read_upto` that others sent.
    pub unread: u64,
    /// The caller's read mark: the id of the last message they have read.
    #[oai(skip_serializing_if_is_none)]
    pub read_upto: Option<String>,
    /// Pass the last item's `cursor` as `before` for the next page.
    pub cursor: String,
}

impl ConversationListItem {
    fn new(caller: UserId, summary: ConversationSummary) -> Self {
        let ConversationSummary {
            conversation,
            activity,
            last_message,
            unread,
            read_upto,
        } = summary;
        let peer = (conversation.kind == ConversationKind::Direct).then(|| {
            conversation
                .members
                .iter()
                .map(|m| m.user)
                .find(|&u| u != caller)
                .unwrap_or(caller)
                .to_string()
        });
        Self {
            id: conversation.id.to_string(),
            kind: conversation.kind,
            title: conversation.title.map(|t| t.as_str().to_owned()),
            peer,
            last_message: last_message.map(MessageView::from),
            unread,
            read_upto: read_upto.map(|r| r.to_string()),
            cursor: activity.to_string(),
        }
    }
}

impl Example for ConversationListItem {
    fn example() -> Self {
        Self {
            id: GROUP.to_owned(),
            kind: ConversationKind::Group,
            title: Some("Lunch crew".to_owned()),
            peer: None,
            last_message: None,
            unread: 2,
            read_upto: Some(MESSAGE.to_owned()),
            cursor: MESSAGE.to_owned(),
        }
    }
}

/// A message to a conversation.
#[derive(Object)]
#[oai(example)]
pub struct ConversationSendBody {
    /// 1 to 4,000 characters, not blank.
    pub content: ContentText,
}

impl Example for ConversationSendBody {
    fn example() -> Self {
        Self {
            content: ContentText("Lunch at noon?".to_owned()),
        }
    }
}

/// A read mark, as it is after the request.
#[derive(Object)]
#[oai(example)]
pub struct ReadMark {
    pub conversation: String,
    pub user: String,
    /// Never moves back: an older `upto` leaves it where it was.
    pub upto: String,
}

impl Example for ReadMark {
    fn example() -> Self {
        Self {
            conversation: GROUP.to_owned(),
            user: ADA.to_owned(),
            upto: MESSAGE.to_owned(),
        }
    }
}

#[derive(ApiResponse)]
enum CreatedResponse {
    /// The group exists, with the caller as its owner.
    #[oai(status = 201)]
    Created(Json<ConversationView>),
}

#[derive(ApiResponse)]
enum RemovedResponse {
    /// They are out of the group (the last member out deletes it).
    #[oai(status = 204)]
    Removed,
}

#[OpenApi(tag = "ApiTags::Conversations")]
impl ConversationsApi {
    /// Create a group
    ///
    /// The caller becomes its owner; the listed users its members. 404 `User not found` when
    /// one of them does not exist.
    #[oai(
        path = "/api/conversations",
        method = "post",
        operation_id = "createGroup"
    )]
    async fn create(
        &self,
        state: Data<&AppState>,
        AuthUser(user): AuthUser,
        body: Json<NewGroupBody>,
    ) -> Result<CreatedResponse, ApiError> {
        let Json(body) = body;
        let members: Vec<String> = body.members.into_iter().map(|m| m.0).collect();
        let group = state
            .conversations
            .create_group(user, &body.title.0, &members)
            .await?;
        Ok(CreatedResponse::Created(Json(group)))
    }

    /// List conversations
    ///
    /// The caller's conversations, most recent activity first, with the newest message, the
    /// unread count and the caller's read mark. Paged: pass the last item's `cursor` as
    /// `before` for the next page.
    #[oai(
        path = "/api/conversations",
        method = "get",
        operation_id = "listConversations"
    )]
    async fn list(
        &self,
        state: Data<&AppState>,
        AuthUser(user): AuthUser,
        /// Only conversations older than this cursor (an item's `cursor`).
        before: Query<Option<UuidText>>,
        /// Page size, 1 to 200 (default 50).
        limit: Query<Option<PageLimit>>,
    ) -> Result<Json<Vec<ConversationListItem>>, ApiError> {
        let before = before
            .0
            .map(|b| MessageId::parse(&b.0))
            .transpose()
            .map_err(|_| ApiError::bad_request("before must be a cursor from this list"))?;
        let limit = page_limit(limit.0.map(|l| l.0))?;
        let summaries = state.conversations.list(user, before, limit).await?;
        Ok(Json(
            summaries
                .into_iter()
                .map(|s| ConversationListItem::new(user, s))
                .collect(),
        ))
    }

    /// Get a conversation
    ///
    /// Its kind, title (groups) and members. 404 `Conversation not found` when it does not
    /// exist or the caller is not in it.
    #[oai(
        path = "/api/conversations/:id",
        method = "get",
        operation_id = "getConversation"
    )]
    async fn get(
        &self,
        state: Data<&AppState>,
        AuthUser(user): AuthUser,
        /// The conversation's id.
        id: Path<String>,
    ) -> Result<Json<ConversationView>, ApiError> {
        let detailed = state.conversations.get_detailed(user, &id.0).await?;
        Ok(Json(detailed))
    }

    /// Rename a group
    ///
    /// The owner only (403 for other members).
    #[oai(
        path = "/api/conversations/:id",
        method = "patch",
        operation_id = "renameGroup"
    )]
    async fn rename(
        &self,
        state: Data<&AppState>,
        AuthUser(user): AuthUser,
        /// The group's id.
        id: Path<String>,
        body: Json<RenameBody>,
    ) -> Result<Json<ConversationView>, ApiError> {
        let detailed = state
            .conversations
            .rename(user, &id.0, &body.0.title.0)
            .await?;
        Ok(Json(detailed))
    }

    /// Add a member
    ///
    /// The owner only (403 for other members). Adding someone who is a member already changes
    /// nothing.
    #[oai(
        path = "/api/conversations/:id/members",
        method = "post",
        operation_id = "addMember"
    )]
    async fn add_member(
        &self,
        state: Data<&AppState>,
        AuthUser(user): AuthUser,
        /// The group's id.
        id: Path<String>,
        body: Json<AddMemberBody>,
    ) -> Result<Json<ConversationView>, ApiError> {
        let detailed = state
            .conversations
            .add_member(user, &id.0, &body.0.user.0)
            .await?;
        Ok(Json(detailed))
    }

    /// Remove a member, or leave
    ///
    /// The owner removes anyone; anyone removes themself, which is leaving. When the owner
    /// leaves, the member who joined earliest becomes the owner; the last member out deletes
    /// the group and its messages.
    #[oai(
        path = "/api/conversations/:id/members/:user",
        method = "delete",
        operation_id = "removeMember"
    )]
    async fn remove_member(
        &self,
        state: Data<&AppState>,
        AuthUser(caller): AuthUser,
        /// The group's id.
        id: Path<String>,
        /// The member's user id.
        user: Path<String>,
    ) -> Result<RemovedResponse, ApiError> {
        state
            .conversations
            .remove_member(caller, &id.0, &user.0)
            .await?;
        Ok(RemovedResponse::Removed)
    }

    /// List a conversation's messages
    ///
    /// The messages of one conversation (direct or group) the caller is in, with the same
    /// paging as `GET /api/chat/messages`: without `after`, the newest `limit` (older than
    /// `before` when given); with `after`, the oldest `limit` newer than it. Oldest first.
    #[oai(
        path = "/api/conversations/:id/messages",
        method = "get",
        operation_id = "listConversationMessages"
    )]
    async fn messages(
        &self,
        state: Data<&AppState>,
        AuthUser(user): AuthUser,
        /// The conversation's id.
        id: Path<String>,
        /// Only messages older than this message id.
        before: Query<Option<UuidText>>,
        /// Only messages newer than this message id.
        after: Query<Option<UuidText>>,
        /// Page size, 1 to 200 (default 50).
        limit: Query<Option<PageLimit>>,
    ) -> Result<SerdeJson<Vec<MessageView>>, ApiError> {
        let conversation = state.conversations.get(user, &id.0).await?;
        let page = MessagePage::new(
            Some(conversation.id),
            parse_optional("before", before.0.map(|t| t.0), MessageId::parse)?,
            parse_optional("after", after.0.map(|t| t.0), MessageId::parse)?,
            limit.0.map(|l| l.0),
        )?;
        let messages = state.messaging.history(user, page).await?;
        Ok(SerdeJson(
            messages.into_iter().map(MessageView::from).collect(),
        ))
    }

    /// Send to a conversation
    ///
    /// To a group (pushed to every member's connections) or a direct conversation the caller
    /// is in; answered like `POST /api/chat/send`. Auto-replies for BUSY users answer direct
    /// messages only, never a group.
    #[oai(
        path = "/api/conversations/:id/messages",
        method = "post",
        operation_id = "sendToConversation"
    )]
    async fn send(
        &self,
        state: Data<&AppState>,
        AuthUser(user): AuthUser,
        /// The conversation's id.
        id: Path<String>,
        body: Json<ConversationSendBody>,
        /// Makes the send safe to retry, as on `POST /api/chat/send`.
        #[oai(name = "Idempotency-Key")]
        idempotency_key: Header<Option<KeyText>>,
    ) -> Result<Json<MessageSent>, ApiError> {
        let request = SendRequest {
            claimed_sender: None,
            to: SendTo::Conversation(id.0),
            content: body.0.content.0,
            idempotency_key: idempotency_key.0.map(|k| k.0),
        };
        let message = state.messaging.send(user, request).await?;
        Ok(Json(MessageSent::new(message.id)))
    }

    /// Mark as read
    ///
    /// Moves the caller's read mark forward to `upto`, a message of the conversation (never
    /// back). 404 `Message not found` for a message that is not in it.
    #[oai(
        path = "/api/conversations/:id/read",
        method = "post",
        operation_id = "markRead"
    )]
    async fn mark_read(
        &self,
        state: Data<&AppState>,
        AuthUser(user): AuthUser,
        /// The conversation's id.
        id: Path<String>,
        body: Json<ReadBody>,
    ) -> Result<Json<ReadMark>, ApiError> {
        let (conversation, mark) = state
            .conversations
            .mark_read(user, &id.0, &body.0.upto.0)
            .await?;
        Ok(Json(ReadMark {
            conversation: conversation.id.to_string(),
            user: user.to_string(),
            upto: mark.to_string(),
        }))
    }
}
