//! The single writer task of a node: it takes whatever sends are waiting (up to [`MAX_BATCH`]),
//! numbers them with the node's [`Sequencer`], stores the batch in one database round trip, and
//! only then hands the stored messages, in id order, to the fan-out. So on one node ids follow
//! commit order, and every position the writer reports ("nothing at or below this id will ever
//! be committed here again") is true when it is reported: that is what cluster readers build on.

use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use tokio::sync::{mpsc, oneshot};

use super::{Addressed, FanOut, Sequencer, Unavailable};
use crate::domain::{
    Content, ConversationId, IdempotencyKey, Message, MessageId, MessageKind, UserId,
};
use crate::store::{Inserted, NewMessage, Store, StoreError};

/// The most messages stored in one database round trip.
pub const MAX_BATCH: usize = 256;
/// How often a writer whose insert got no answer asks the store whether it is settled.
const SETTLE_EVERY: Duration = Duration::from_millis(250);

/// A batch whose insert got no answer: nothing past `position` may be shown until the store
/// has settled what of it is stored.
struct Held {
    candidates: Vec<Addressed>,
    position: MessageId,
}

/// Where a message goes.
#[derive(Clone, Debug)]
pub enum Target {
    /// A direct message.
    User(UserId),
    /// A group message, pushed to `audience`: the group's members when it was sent. The store
    /// refuses it once the sender is no longer a member.
    Group {
        conversation: ConversationId,
        audience: Vec<UserId>,
    },
}

/// A message to store and push.
#[derive(Clone)]
pub struct Outgoing {
    pub sender: UserId,
    pub to: Target,
    pub content: Content,
    pub kind: MessageKind,
    pub idempotency_key: Option<IdempotencyKey>,
    /// The recipient was BUSY: an auto-reply is owed (kept with the message, so another node
    /// can send the fallback should this one die before answering).
    pub awaits_reply: bool,
}

/// What the writer did with a message.
#[derive(Debug)]
pub enum Delivered {
    /// Stored now and pushed to its audience.
    Stored(Message),
    /// Its idempotency key was used before: this is the earlier message; nothing was stored.
    Replayed(Message),
}

/// Why a message was not stored.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// This node may not store messages right now (a cluster node cut off from the bus).
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
}

struct Pending {
    outgoing: Outgoing,
    reply: oneshot::Sender<Result<Delivered, DeliverError>>,
}

pub struct Writer {
    queue: mpsc::Sender<Pending>,
}

impl Writer {
    /// Starts the writer task; it ends when the last `Writer` handle is dropped.
    pub fn start(store: Arc<dyn Store>, fanout: Arc<dyn FanOut>, ids: Arc<Sequencer>) -> Self {
        let (queue, pending) = mpsc::channel(MAX_BATCH * 4);
        tokio::spawn(write_and_push(store, fanout, ids, pending));
        Self { queue }
    }

    /// Stores a message (or finds the earlier one its idempotency key names) and pushes it to
    /// both sides; returns once it is durable.
    pub async fn deliver(&self, outgoing: Outgoing) -> Result<Delivered, DeliverError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || {
            DeliverError::from(StoreError::Internal(anyhow!(
                "the message writer has stopped"
            )))
        };
        self.queue
            .send(Pending { outgoing, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn write_and_push(
    store: Arc<dyn Store>,
    fanout: Arc<dyn FanOut>,
    ids: Arc<Sequencer>,
    mut pending: mpsc::Receiver<Pending>,
) {
    let mut heartbeat = fanout.heartbeat_every().map(|every| {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick
    });
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut held: Option<Held> = None;
    let mut next_settle = tokio::time::Instant::now();
    loop {
        // An insert got no answer: no position, no heartbeat, no new insert until the store
        // knows what of it is stored (a cluster node silent for long is fenced by the others,
        // which settles it too).
        if held.is_some() {
            tokio::select! {
                received = pending.recv_many(&mut batch, MAX_BATCH) => {
                    if received == 0 {
                        break;
                    }
                    for p in batch.drain(..) {
                        let _ = p.reply.send(Err(StoreError::Unanswered.into()));
                    }
                }
                _ = tokio::time::sleep_until(next_settle) => {
                    match store.settle().await {
                        Ok(ids) => {
                            if let Some(lost) = held.take() {
                                let stored: Vec<Addressed> = lost
                                    .candidates
                                    .into_iter()
                                    .filter(|a| ids.contains(&a.message.id))
                                    .collect();
                                for a in &stored {
                                    crate::metrics::message_stored(a.message.kind.as_str());
                                }
                                tracing::info!(stored = stored.len(), "the lost insert is settled");
                                fanout.committed(stored, lost.position);
                            }
                        }
                        Err(e) => tracing::debug!(error = %e, "the lost insert is not settled yet"),
                    }
                    next_settle = tokio::time::Instant::now() + SETTLE_EVERY;
                }
            }
            continue;
        }
        let received = match heartbeat.as_mut() {
            None => pending.recv_many(&mut batch, MAX_BATCH).await,
            Some(tick) => tokio::select! {
                received = pending.recv_many(&mut batch, MAX_BATCH) => received,
                _ = tick.tick() => {
                    // Between batches nothing is in flight: every id from here on is greater.
                    fanout.position(ids.next());
                    continue;
                }
            },
        };
        if received == 0 {
            break;
        }
        if let Err(down) = fanout.may_write() {
            for p in batch.drain(..) {
                let _ = p.reply.send(Err(down.clone().into()));
            }
            continue;
        }
        let mut audiences = Vec::with_capacity(batch.len());
        let (messages, replies): (Vec<NewMessage>, Vec<_>) = batch
            .drain(..)
            .map(|Pending { outgoing: o, reply }| {
                let (message, audience) = match o.to {
                    Target::User(recipient) => (
                        Message::new(o.sender, recipient, o.content, o.kind),
                        vec![o.sender, recipient],
                    ),
                    Target::Group {
                        conversation,
                        audience,
                    } => (
                        Message {
                            kind: o.kind,
                            ..Message::to_group(o.sender, conversation, o.content)
                        },
                        audience,
                    ),
                };
                audiences.push(audience);
                let reply_to = match o.kind {
                    MessageKind::AutoReply => o
                        .idempotency_key
                        .as_ref()
                        .and_then(|key| IdempotencyKey::answered(&key.scoped(o.sender))),
                    MessageKind::User => None,
                };
                let new = NewMessage {
                    message: Message {
                        id: ids.next(),
                        reply_to,
                        ..message
                    },
                    idempotency_key: o.idempotency_key,
                    awaits_reply: o.awaits_reply,
                };
                (new, reply)
            })
            .unzip();
        let position = messages
            .last()
            .map_or_else(|| ids.next(), |new| new.message.id);
        let mut stored = Vec::with_capacity(messages.len());
        let inserted = store.insert_messages(&messages).await;
        if let Err(StoreError::Unanswered) = inserted {
            // What of it is stored is pushed once known; the senders learn it by retrying
            // with their idempotency keys.
            held = Some(Held {
                candidates: messages
                    .into_iter()
                    .zip(audiences)
                    .map(|(new, audience)| Addressed {
                        message: new.message,
                        audience,
                    })
                    .collect(),
                position,
            });
            next_settle = tokio::time::Instant::now();
            for reply in replies {
                let _ = reply.send(Err(StoreError::Unanswered.into()));
            }
            continue;
        }
        let answers: Vec<Result<Delivered, DeliverError>> = match inserted {
            Ok(outcomes) => messages
                .into_iter()
                .zip(outcomes)
                .zip(audiences)
                .map(|((new, outcome), audience)| match outcome {
                    Ok(Inserted::Stored) => {
                        crate::metrics::message_stored(new.message.kind.as_str());
                        stored.push(Addressed {
                            message: new.message.clone(),
                            audience,
                        });
                        Ok(Delivered::Stored(new.message))
                    }
                    Ok(Inserted::Replayed(first)) => Ok(Delivered::Replayed(first)),
                    Err(err) => Err(err.into()),
                })
                .collect(),
            Err(err) => {
                match err {
                    // One line per episode, from the store: not one per batch.
                    StoreError::Full => tracing::debug!(count = messages.len(), "disk full"),
                    _ => {
                        tracing::error!(error = %err, count = messages.len(), "storing messages failed")
                    }
                }
                messages
                    .iter()
                    .map(|_| Err(err.duplicate().into()))
                    .collect()
            }
        };
        // Pushed before anyone hears "sent": a client never learns of a message it cannot see.
        fanout.committed(stored, position);
        for (reply, answer) in replies.into_iter().zip(answers) {
            // The sender may have gone away; the message is stored and pushed anyway.
            let _ = reply.send(answer);
        }
    }
}
