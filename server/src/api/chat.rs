use super::payload::SerdeJson;
use poem::web::Data;
use poem_openapi::OpenApi;
use poem_openapi::param::{Header, Query};
use poem_openapi::payload::Json;

use super::ApiTags;
use super::AppState;
use super::error::ApiError;
use super::models::{MessageSent, SendMessageBody};
use super::schema::{KeyText, PageLimit, UuidText, parse_optional};
use super::security::AuthUser;
use crate::domain::{ConversationId, MessageId, MessagePage, UserId};
use crate::messaging::{MessageView, SendRequest, SendTo};

pub struct ChatApi;

#[OpenApi(tag = "ApiTags::Chat")]
impl ChatApi {
    /// List messages
    ///
    /// Messages the caller sent or received, oldest first within the page. Without `after`, the page holds the newest `limit` matching messages (older than `before`
    /// when given: scrolling back). With `after`, it holds the oldest `limit` messages newer than
    /// `after`: catching up after a reconnect.
    #[oai(
        path = "/api/chat/messages",
        method = "get",
        operation_id = "listMessages"
    )]
    async fn messages(
        &self,
        state: Data<&AppState>,
        AuthUser(user): AuthUser,
        /// Only the conversation with this user id.
        with: Query<Option<UuidText>>,
        /// Only messages older than this message id.
        before: Query<Option<UuidText>>,
        /// Only messages newer than this message id.
        after: Query<Option<UuidText>>,
        /// Page size, 1 to 200 (default 50).
        limit: Query<Option<PageLimit>>,
    ) -> Result<SerdeJson<Vec<MessageView>>, ApiError> {
        let with = parse_optional("with", with.0.map(|t| t.0), UserId::parse)?;
        let page = MessagePage::new(
            with.map(|peer| ConversationId::direct(user, peer)),
            parse_optional("before", before.0.map(|t| t.0), MessageId::parse)?,
            parse_optional("after", after.0.map(|t| t.0), MessageId::parse)?,
            limit.0.map(|l| l.0),
        )?;
        if let Some(peer) = with
            && state.store.user_by_id(peer).await?.is_none()
        {
            return Err(ApiError::not_found(crate::store::USER_NOT_FOUND));
        }
        let messages = state.messaging.history(user, page).await?;
        Ok(SerdeJson(
            messages.into_iter().map(MessageView::from).collect(),
        ))
    }

    /// Send a message
    ///
    /// The message is stored before this answers, then pushed to the recipient's live
    /// connections (and the sender's other devices). When the recipient is BUSY, an
    /// auto-reply follows within 10 seconds.
    #[oai(path = "/api/chat/send", method = "post", operation_id = "sendMessage")]
    async fn send(
        &self,
        state: Data<&AppState>,
        AuthUser(user): AuthUser,
        body: Json<SendMessageBody>,
        /// Makes the send safe to retry: a retry with the same key within 24 hours answers the
        /// first result (same message id) and stores nothing new. 1 to 255 characters.
        #[oai(name = "Idempotency-Key")]
        idempotency_key: Header<Option<KeyText>>,
    ) -> Result<Json<MessageSent>, ApiError> {
        let Json(body) = body;
        let request = SendRequest {
            claimed_sender: body.sender.map(|s| s.0),
            to: SendTo::Recipient(body.recipient.0),
            content: body.content.0,
            idempotency_key: idempotency_key.0.map(|k| k.0),
        };
        let message = state.messaging.send(user, request).await?;
        Ok(Json(MessageSent::new(message.id)))
    }
}
