//! The one path every message takes, whichever transport it came in on:
//! authorize → validate → check the recipient → sequence, store durably → push to both sides.
//!
//! Accepted messages go through a single writer task ([`Messenger`]). It takes whatever is
//! waiting (up to [`MAX_BATCH`]), assigns ids in order, stores the batch in one transaction
//! (one fsync however many messages), and only then pushes them, in id order. So ids follow
//! commit order and every client sees pushes in id order: `?after=<last id seen>` after a
//! reconnect returns exactly what was missed.

use std::sync::Arc;

use anyhow::anyhow;
use tokio::sync::{mpsc, oneshot};

use crate::api::models::message_json;
use crate::domain::{Content, Message, MessageKind, Status, UserId, ValidationError};
use crate::realtime::{Hub, Push};
use crate::state::AppState;
use crate::store::{Store, StoreError};

/// The most messages stored in one transaction.
pub const MAX_BATCH: usize = 256;

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
    // The responder's 10 s run from here: receipt, not storage.
    let received = std::time::Instant::now();
    if let Some(claimed) = request.claimed_sender.as_deref()
        && UserId::parse(claimed).ok() != Some(sender)
    {
        return Err(SendError::SenderMismatch);
    }
    let recipient = UserId::parse(&request.recipient)
        .map_err(|problem| ValidationError::new(format!("recipient {problem}")))?;
    let content = Content::parse(request.content)?;
    let Some(recipient) = state.store.user_by_id(recipient).await? else {
        return Err(SendError::RecipientNotFound);
    };
    let message = state
        .messenger
        .deliver(sender, recipient.id, content, MessageKind::User)
        .await?;
    if recipient.status == Status::Busy && recipient.id != sender {
        state
            .responder
            .answer_for(message.clone(), recipient, received);
    }
    Ok(message)
}

struct Pending {
    sender: UserId,
    recipient: UserId,
    content: Content,
    kind: MessageKind,
    reply: oneshot::Sender<Result<Message, StoreError>>,
}

/// The sequencer in front of the store: see the module docs.
pub struct Messenger {
    queue: mpsc::Sender<Pending>,
}

impl Messenger {
    /// Starts the writer task; it ends when the last `Messenger` handle is dropped.
    pub fn start(store: Arc<dyn Store>, hub: Arc<Hub>) -> Self {
        let (queue, pending) = mpsc::channel(MAX_BATCH * 4);
        tokio::spawn(write_and_push(store, hub, pending));
        Self { queue }
    }

    /// Stores a message and pushes it to both sides; returns once it is durable.
    pub async fn deliver(
        &self,
        sender: UserId,
        recipient: UserId,
        content: Content,
        kind: MessageKind,
    ) -> Result<Message, StoreError> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            sender,
            recipient,
            content,
            kind,
            reply,
        };
        let stopped = || StoreError::Internal(anyhow!("the message writer has stopped"));
        self.queue.send(pending).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn write_and_push(
    store: Arc<dyn Store>,
    hub: Arc<Hub>,
    mut pending: mpsc::Receiver<Pending>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while pending.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let (messages, replies): (Vec<Message>, Vec<_>) = batch
            .drain(..)
            .map(|p| {
                (
                    Message::new(p.sender, p.recipient, p.content, p.kind),
                    p.reply,
                )
            })
            .unzip();
        match store.insert_messages(&messages).await {
            Ok(()) => {
                for (message, reply) in messages.into_iter().zip(replies) {
                    hub.publish(
                        &[message.recipient, message.sender],
                        Push::message(message_json(&message)),
                    );
                    // The sender may have gone away; the message is stored and pushed anyway.
                    let _ = reply.send(Ok(message));
                }
            }
            Err(err) => {
                tracing::error!(error = %err, count = messages.len(), "storing messages failed");
                for reply in replies {
                    let _ = reply.send(Err(err.duplicate()));
                }
            }
        }
    }
}
