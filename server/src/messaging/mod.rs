//! The one path every message takes, whichever transport it came in on:
//! authorize → validate → check the recipient (or the group and that the sender is in it) →
//! moderate (`MODERATION_PLUGINS`: refuse or rewrite) → number, store durably → fan out to its
//! audience (both sides, or the group's members) → if a direct recipient is BUSY, hand the
//! message to whoever answers for them.
//!
//! This layer knows the store and two seams, and nothing above it: [`FanOut`] (who gets told,
//! in-process on one node or over NATS in a cluster) and [`BusyRecipients`] (the responder).
//! `app.rs` wires the implementations in.

mod moderation;
mod notice;
mod recipients;
mod sequencer;
mod view;
mod writer;

use std::sync::Arc;
use std::time::{Duration, Instant};

pub use moderation::{Destination, Draft, Moderator, NoModeration, Review};
pub use notice::Notice;
pub use recipients::Recipients;
pub(crate) use sequencer::random_u64;
pub use sequencer::{Sequencer, first_id_since};
pub use view::MessageView;
pub use writer::{DeliverError, Delivered, MAX_BATCH, Outgoing, Target, Writer};

use crate::domain::{
    Content, ConversationId, ConversationKind, IdempotencyKey, Message, MessageId, MessageKind,
    MessagePage, Status, UserId, ValidationError,
};
use crate::failure::{Failure, RetryAfter};
use crate::limits::Limits;
use crate::store::{CONVERSATION_NOT_FOUND, Store, StoreError, UNAVAILABLE_RETRY, User};

/// A stored message and who is told of it: both sides of a direct message; the members of a
/// group as they were when it was sent.
#[derive(Debug, Clone)]
pub struct Addressed {
    pub message: Message,
    pub audience: Vec<UserId>,
}

/// Where stored messages, status changes and notices go: every live connection they concern.
///
/// Positions come from the node's writer: `committed(.., p)` and `position(p)` both promise that
/// this node will never commit a message with an id at or below `p` from now on.
pub trait FanOut: Send + Sync + 'static {
    /// Messages this node just stored, in id order (possibly none), and the writer's position.
    fn committed(&self, messages: Vec<Addressed>, position: MessageId);
    /// Tells `audience`'s connections, on every node. Not stored: only who is online hears it.
    fn notify(&self, audience: Vec<UserId>, notice: Notice);
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
    IdempotencyKey::for_auto_reply(message)
}

/// Where a client says a message goes, before anything is trusted.
#[derive(Debug, Clone)]
pub enum SendTo {
    /// A user's id: a direct message (the seed's contract).
    Recipient(String),
    /// A conversation's id: a group, or a direct conversation the sender is in.
    Conversation(String),
}

/// A send as a client wrote it, before anything is trusted.
pub struct SendRequest {
    /// The sender the client claims; must match the authenticated user when present.
    pub claimed_sender: Option<String>,
    pub to: SendTo,
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
    /// It does not exist or the sender is not in it.
    #[error("conversation not found")]
    ConversationNotFound,
    /// A moderator refused it; the reason is for the sender.
    #[error("{0}")]
    Rejected(String),
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
            SendError::Rejected(reason) => Failure::unprocessable(reason),
            SendError::ConversationNotFound => Failure::not_found(CONVERSATION_NOT_FOUND),
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
    moderator: Arc<dyn Moderator>,
    outcomes: moderation::OutcomeMemo,
    limits: Arc<Limits>,
    recipients: Arc<Recipients>,
}

impl Messaging {
    pub fn new(
        store: Arc<dyn Store>,
        writer: Arc<Writer>,
        fanout: Arc<dyn FanOut>,
        busy: Arc<dyn BusyRecipients>,
        moderator: Arc<dyn Moderator>,
        limits: Arc<Limits>,
        recipients: Arc<Recipients>,
    ) -> Self {
        Self {
            store,
            writer,
            fanout,
            busy,
            moderator,
            outcomes: moderation::OutcomeMemo::default(),
            limits,
            recipients,
        }
    }

    /// The moderators' say on a draft the sender may send: the content to store, or the
    /// rejection. A retry (same key, same draft) gets the first outcome without asking again.
    async fn moderate(
        &self,
        sender: UserId,
        to: Destination,
        content: Content,
        key: Option<&IdempotencyKey>,
    ) -> Result<Content, SendError> {
        if !self.moderator.enabled() {
            return Ok(content);
        }
        let draft = Draft {
            sender,
            to,
            content,
        };
        let remembered = key.and_then(|key| self.outcomes.get(key, &draft));
        let review = match remembered {
            Some(review) => review,
            None => {
                let review = self.moderator.review(&draft).await?;
                if let Some(key) = key {
                    self.outcomes.put(key.clone(), &draft, review.clone());
                }
                review
            }
        };
        match review {
            Review::Pass(content) => Ok(content),
            Review::Reject(reason) => Err(SendError::Rejected(reason)),
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
        let to = match &request.to {
            SendTo::Recipient(raw) => Ok(UserId::parse(raw)
                .map_err(|problem| ValidationError::new(format!("recipient {problem}")))?),
            SendTo::Conversation(raw) => {
                Err(ConversationId::parse(raw).map_err(|_| SendError::ConversationNotFound)?)
            }
        };
        let content = Content::parse(request.content)?;
        let key = request
            .idempotency_key
            .as_deref()
            .map(IdempotencyKey::parse)
            .transpose()?;
        let recipient = match to {
            Ok(recipient) => recipient,
            Err(id) => {
                let conversation = match self.store.conversation(id).await? {
                    Some(c) if c.member(sender).is_some() => c,
                    _ => return Err(SendError::ConversationNotFound),
                };
                let members = conversation.members.iter().map(|m| m.user);
                if conversation.kind == ConversationKind::Group {
                    let content = self
                        .moderate(sender, Destination::Conversation(id), content, key.as_ref())
                        .await?;
                    let outgoing = Outgoing {
                        sender,
                        to: Target::Group {
                            conversation: id,
                            audience: members.collect(),
                        },
                        content,
                        kind: MessageKind::User,
                        idempotency_key: key,
                        // A BUSY member does not answer for a group.
                        awaits_reply: false,
                    };
                    return self.deliver(outgoing).await.map(|(message, _)| message);
                }
                // A direct conversation: the other side (or oneself, for notes to self).
                members.clone().find(|u| *u != sender).unwrap_or(sender)
            }
        };
        let recipient = match self.recipients.get(recipient) {
            Some(known) => known,
            None => {
                let asked = Instant::now();
                let Some(found) = self.store.user_by_id(recipient).await? else {
                    return Err(SendError::RecipientNotFound);
                };
                self.recipients.remember(found.clone(), asked);
                found
            }
        };
        let destination = match &request.to {
            SendTo::Recipient(_) => Destination::User(recipient.id),
            SendTo::Conversation(_) => {
                Destination::Conversation(ConversationId::direct(sender, recipient.id))
            }
        };
        let content = self
            .moderate(sender, destination, content, key.as_ref())
            .await?;
        let awaits_reply = recipient.status == Status::Busy && recipient.id != sender;
        let (message, stored) = self
            .deliver(Outgoing {
                sender,
                to: Target::User(recipient.id),
                content,
                kind: MessageKind::User,
                idempotency_key: key,
                awaits_reply,
            })
            .await?;
        if awaits_reply && stored {
            // Past the quota the sender still hears back, with the fallback: the plugin (and
            // the LLM bill behind it) does not run.
            let run_plugin = self.limits.auto_reply(sender, recipient.id);
            self.busy
                .clone()
                .message_for_busy(message.clone(), recipient, received, run_plugin);
        }
        Ok(message)
    }

    /// Stores and pushes the message; a retry (same idempotency key) gets the first message
    /// back, stored false, when it went to the same conversation with the same content.
    async fn deliver(&self, outgoing: Outgoing) -> Result<(Message, bool), SendError> {
        let conversation = match &outgoing.to {
            Target::User(recipient) => ConversationId::direct(outgoing.sender, *recipient),
            Target::Group { conversation, .. } => *conversation,
        };
        let content = outgoing.content.clone();
        let delivered = self.writer.deliver(outgoing).await.map_err(|e| match e {
            DeliverError::Store(StoreError::UnknownUser) => SendError::RecipientNotFound,
            DeliverError::Store(StoreError::NotMember) => SendError::ConversationNotFound,
            DeliverError::Store(other) => SendError::Store(other),
            DeliverError::Unavailable(down) => SendError::Unavailable(down),
        })?;
        match delivered {
            Delivered::Stored(message) => Ok((message, true)),
            Delivered::Replayed(first)
                if first.conversation == conversation && first.content == content.as_str() =>
            {
                Ok((first, false))
            }
            Delivered::Replayed(_) => Err(SendError::KeyReused),
        }
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
        self.recipients.status_changed(user, status);
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
