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
use crate::domain::{
    Content, IdempotencyKey, Message, MessageKind, Status, UserId, ValidationError,
};
use crate::limits::RetryAfter;
use crate::realtime::{Hub, Push};
use crate::state::AppState;
use crate::store::{Inserted, NewMessage, Store, StoreError};

/// The most messages stored in one transaction.
pub const MAX_BATCH: usize = 256;

/// A send as a client wrote it, before anything is trusted.
pub struct SendRequest {
    /// The sender the client claims; must match the authenticated user when present.
    pub claimed_sender: Option<String>,
    pub recipient: String,
    pub content: String,
    /// `Idempotency-Key` (HTTP) or `client_id` (sockets): a retry with the same key answers
    /// the first result and stores nothing new.
    pub idempotency_key: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("you can only send messages as yourself")]
    SenderMismatch,
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("recipient not found")]
    RecipientNotFound,
    /// The key was used for a different message (another recipient or content).
    #[error("idempotency key reused for a different message")]
    KeyReused,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("sending too fast")]
    TooFast(RetryAfter),
}

pub async fn send_message(
    state: &AppState,
    sender: UserId,
    request: SendRequest,
) -> Result<Message, SendError> {
    // The responder's 10 s run from here: receipt, not storage.
    let received = std::time::Instant::now();
    state.limits.send(sender).map_err(SendError::TooFast)?;
    if let Some(claimed) = request.claimed_sender.as_deref()
        && UserId::parse(claimed).ok() != Some(sender)
    {
        return Err(SendError::SenderMismatch);
    }
    let recipient = UserId::parse(&request.recipient)
        .map_err(|problem| ValidationError::new(format!("recipient {problem}")))?;
    let content = Content::parse(request.content)?;
    let key = request
        .idempotency_key
        .as_deref()
        .map(IdempotencyKey::parse)
        .transpose()?;
    let Some(recipient) = state.store.user_by_id(recipient).await? else {
        return Err(SendError::RecipientNotFound);
    };
    let delivered = state
        .messenger
        .deliver_keyed(
            sender,
            recipient.id,
            content.clone(),
            MessageKind::User,
            key,
        )
        .await
        .map_err(|e| match e {
            StoreError::UnknownUser => SendError::RecipientNotFound,
            other => SendError::Store(other),
        })?;
    let message = match delivered {
        Delivered::Stored(message) => message,
        // A retry: the same answer as the first time, and nothing runs again.
        Delivered::Replayed(first)
            if first.recipient == recipient.id && first.content == content.as_str() =>
        {
            return Ok(first);
        }
        Delivered::Replayed(_) => return Err(SendError::KeyReused),
    };
    if recipient.status == Status::Busy && recipient.id != sender {
        // Past the quota the sender still hears back, with the fallback: the plugin (and the
        // LLM bill behind it) does not run.
        let run_plugin = state.limits.auto_reply(sender, recipient.id);
        state
            .responder
            .answer_for(message.clone(), recipient, received, run_plugin);
    }
    Ok(message)
}

struct Pending {
    sender: UserId,
    recipient: UserId,
    content: Content,
    kind: MessageKind,
    idempotency_key: Option<IdempotencyKey>,
    reply: oneshot::Sender<Result<Delivered, StoreError>>,
}

/// What the writer did with a message.
#[derive(Debug)]
pub enum Delivered {
    /// Stored now and pushed to both sides.
    Stored(Message),
    /// Its idempotency key was used before: this is the earlier message; nothing was stored.
    Replayed(Message),
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
        match self
            .deliver_keyed(sender, recipient, content, kind, None)
            .await?
        {
            Delivered::Stored(message) | Delivered::Replayed(message) => Ok(message),
        }
    }

    /// [`Messenger::deliver`] for a send that may be a retry of an earlier one.
    pub async fn deliver_keyed(
        &self,
        sender: UserId,
        recipient: UserId,
        content: Content,
        kind: MessageKind,
        idempotency_key: Option<IdempotencyKey>,
    ) -> Result<Delivered, StoreError> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            sender,
            recipient,
            content,
            kind,
            idempotency_key,
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
        let (messages, replies): (Vec<NewMessage>, Vec<_>) = batch
            .drain(..)
            .map(|p| {
                let message = NewMessage {
                    message: Message::new(p.sender, p.recipient, p.content, p.kind),
                    idempotency_key: p.idempotency_key,
                };
                (message, p.reply)
            })
            .unzip();
        match store.insert_messages(&messages).await {
            Ok(outcomes) => {
                for ((new, reply), outcome) in messages.into_iter().zip(replies).zip(outcomes) {
                    let answer = match outcome {
                        Ok(Inserted::Stored) => {
                            let message = new.message;
                            crate::metrics::message_stored(message.kind.as_str());
                            hub.publish(
                                &[message.recipient, message.sender],
                                Push::message(message_json(&message)),
                            );
                            Ok(Delivered::Stored(message))
                        }
                        Ok(Inserted::Replayed(first)) => Ok(Delivered::Replayed(first)),
                        Err(err) => Err(err),
                    };
                    // The sender may have gone away; the message is stored and pushed anyway.
                    let _ = reply.send(answer);
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
