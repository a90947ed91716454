//! The one path every message takes, whichever transport it came in on:
//! authorize → validate → check the recipient → number, store durably → fan out to both sides
//! → if the recipient is BUSY, hand the message to whoever answers for them.
//!
//! This layer knows the store and two seams, and nothing above it: [`FanOut`] (who gets told,
//! in-process on one node or over NATS in a cluster) and [`BusyRecipients`] (the responder).
//! `app.rs` wires the implementations in.

mod sequencer;
mod view;
mod writer;

use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) use sequencer::random_u64;
pub use sequencer::{Sequencer, first_id_since};
pub use view::MessageView;
pub use writer::{DeliverError, Delivered, MAX_BATCH, Outgoing, Writer};

use crate::domain::{
    Content, IdempotencyKey, Message, MessageId, MessageKind, MessagePage, Status, UserId,
    ValidationError,
};
use crate::failure::{Failure, RetryAfter};
use crate::limits::Limits;
use crate::store::{Store, StoreError, UNAVAILABLE_RETRY, User};

/// Where stored messages and status changes go: every live connection they concern.
///
/// Positions come from the node's writer: `committed(.., p)` and `position(p)` both promise that
/// this node will never commit a message with an id at or below `p` from now on.
pub trait FanOut: Send + Sync + 'static {
    /// Messages this node just stored, in id order (possibly none), and the writer's position.
    fn committed(&self, messages: Vec<Message>, position: MessageId);
    /// The writer is idle; see the trait docs.
    fn position(&self, position: MessageId);
    /// How often an idle writer reports its position (`None`: nobody needs it).
    fn heartbeat_every(&self) -> Option<Duration>;
    /// `user`'s status changed: tell their own connections and those of `peers` that are online.
    fn status_changed(&self, user: UserId, status: Status, peers: Vec<UserId>);
    /// Whether this node may store new messages now.
    fn may_write(&self) -> Result<(), Unavailable>;
    /// The highest id readers may be shown (`None`: everything stored). In a cluster a message
    /// becomes visible only once every writer has moved past its id, so `after=` catch-up
    /// never skips a message that another node commits late.
    fn visible_upto(&self) -> Option<MessageId>;
    /// For `/readyz`: why this node cannot deliver right now, if it cannot.
    fn health(&self) -> Result<(), Unavailable>;
}

/// Why this node cannot store or deliver messages right now.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

/// Whoever answers for BUSY users (the responder).
pub trait BusyRecipients: Send + Sync + 'static {
    /// Called once `message` is stored for a BUSY `recipient`; returns at once. With
    /// `run_plugin` false (an auto-reply quota is used up) only the fallback may go.
    fn message_for_busy(
        self: Arc<Self>,
        message: Message,
        recipient: User,
        received: Instant,
        run_plugin: bool,
    );
    /// `message` awaited an answer from a cluster node that died: send the fallback, unless an
    /// auto-reply to it is stored already.
    fn orphaned(self: Arc<Self>, message: Message);
}

/// The idempotency key an auto-reply to `message` is stored under, so that however many nodes
/// try, the message gets one answer.
pub fn auto_reply_key(message: MessageId) -> IdempotencyKey {
    IdempotencyKey::from_trusted(format!("palaver-auto-reply/{message}"))
}

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
    #[error(transparent)]
    Unavailable(Unavailable),
}

impl From<Unavailable> for Failure {
    fn from(down: Unavailable) -> Self {
        Failure::unavailable(down.0, UNAVAILABLE_RETRY)
    }
}

impl From<SendError> for Failure {
    fn from(err: SendError) -> Self {
        match err {
            SendError::SenderMismatch => {
                Failure::forbidden("You can only send messages as yourself")
            }
            SendError::Invalid(problem) => problem.into(),
            SendError::RecipientNotFound => Failure::not_found("Recipient not found"),
            SendError::KeyReused => {
                Failure::conflict("This idempotency key was already used for a different message")
            }
            SendError::Store(err) => err.into(),
            SendError::Unavailable(down) => down.into(),
            SendError::TooFast(wait) => Failure::too_many_requests(
                format!(
                    "You are sending messages too fast; try again in {} s",
                    wait.seconds()
                ),
                wait,
            ),
        }
    }
}

/// Sending, reading history and status changes: what the API and the sockets call.
pub struct Messaging {
    store: Arc<dyn Store>,
    writer: Arc<Writer>,
    fanout: Arc<dyn FanOut>,
    busy: Arc<dyn BusyRecipients>,
    limits: Arc<Limits>,
}

impl Messaging {
    pub fn new(
        store: Arc<dyn Store>,
        writer: Arc<Writer>,
        fanout: Arc<dyn FanOut>,
        busy: Arc<dyn BusyRecipients>,
        limits: Arc<Limits>,
    ) -> Self {
        Self {
            store,
            writer,
            fanout,
            busy,
            limits,
        }
    }

    pub async fn send(&self, sender: UserId, request: SendRequest) -> Result<Message, SendError> {
        // The responder's 10 s run from here: receipt, not storage.
        let received = Instant::now();
        self.limits.send(sender).map_err(SendError::TooFast)?;
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
        let Some(recipient) = self.store.user_by_id(recipient).await? else {
            return Err(SendError::RecipientNotFound);
        };
        let awaits_reply = recipient.status == Status::Busy && recipient.id != sender;
        let delivered = self
            .writer
            .deliver(Outgoing {
                sender,
                recipient: recipient.id,
                content: content.clone(),
                kind: MessageKind::User,
                idempotency_key: key,
                awaits_reply,
            })
            .await
            .map_err(|e| match e {
                DeliverError::Store(StoreError::UnknownUser) => SendError::RecipientNotFound,
                DeliverError::Store(other) => SendError::Store(other),
                DeliverError::Unavailable(down) => SendError::Unavailable(down),
            })?;
        let message = match delivered {
            Delivered::Stored(message) => message,
            // A retry: the same answer as the first time, and nothing runs again.
            Delivered::Replayed(first)
                if first.recipient == Some(recipient.id) && first.content == content.as_str() =>
            {
                return Ok(first);
            }
            Delivered::Replayed(_) => return Err(SendError::KeyReused),
        };
        if awaits_reply {
            // Past the quota the sender still hears back, with the fallback: the plugin (and
            // the LLM bill behind it) does not run.
            let run_plugin = self.limits.auto_reply(sender, recipient.id);
            self.busy
                .clone()
                .message_for_busy(message.clone(), recipient, received, run_plugin);
        }
        Ok(message)
    }

    /// Messages `user` sent or received, as far as every writer has committed.
    pub async fn history(
        &self,
        user: UserId,
        page: MessagePage,
    ) -> Result<Vec<Message>, StoreError> {
        let page = MessagePage {
            upto: self.fanout.visible_upto(),
            ..page
        };
        self.store.list_messages(user, &page).await
    }

    /// Stores the status and tells the user's devices and online peers. False when the user
    /// does not exist.
    pub async fn set_status(&self, user: UserId, status: Status) -> Result<bool, StoreError> {
        let Some(previous) = self.store.set_status(user, status).await? else {
            return Ok(false);
        };
        if previous != status {
            let peers = self.store.conversation_peers(user).await?;
            self.fanout.status_changed(user, status, peers);
        }
        Ok(true)
    }

    /// For `/readyz`.
    pub fn health(&self) -> Result<(), Unavailable> {
        self.fanout.health()
    }
}
