//! The one path every message takes, whichever transport it came in on:
//! authorize → validate → check the recipient → store (durable) → return it for delivery.

use crate::domain::{Content, Message, MessageKind, UserId, ValidationError};
use crate::state::AppState;
use crate::store::StoreError;

/// A send as a client wrote it, before anything is trusted.
pub struct SendRequest {
    /// The sender the client claims; must match the authenticated user when present.
    pub claimed_sender: Option<String>,
    pub recipient: String,
    pub content: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("you can only send messages as yourself")]
    SenderMismatch,
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("recipient not found")]
    RecipientNotFound,
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub async fn send_message(
    state: &AppState,
    sender: UserId,
    request: SendRequest,
) -> Result<Message, SendError> {
    if let Some(claimed) = request.claimed_sender.as_deref()
        && UserId::parse(claimed).ok() != Some(sender)
    {
        return Err(SendError::SenderMismatch);
    }
    let recipient = UserId::parse(&request.recipient)
        .map_err(|problem| ValidationError::new(format!("recipient {problem}")))?;
    let content = Content::parse(request.content)?;
    if state.store.user_by_id(recipient).await?.is_none() {
        return Err(SendError::RecipientNotFound);
    }
    let message = Message::new(sender, recipient, content, MessageKind::User);
    state.store.insert_message(&message).await?;
    Ok(message)
}
