//! Conversation touches, off the way to "sent".
//!
//! Every stored message moves its conversation's latest activity, and the first message of a
//! pair creates their direct conversation with both members. On a server that commits each
//! update on its own (FerretDB) those updates cost more than the insert, and done before the
//! answer they held every send behind them (about 50 msg/s where the insert alone did 500). So
//! the writer hands them to one task here, which keeps the newest per conversation and applies
//! them in passes, one at a time: under load a pass covers many messages of each conversation,
//! and the cost follows the number of active conversations, not the message rate.
//!
//! In a cluster, another node reads what this one touched a pass later: its conversation list
//! can lag by that much, and a direct conversation it reads before the touch is found from its
//! messages (`touch_from_messages`).
//!
//! What readers see: every read of conversations or memberships first waits (`settled`, at most
//! [`SETTLE_DEADLINE`]) until each touch queued before it has been tried, so a sender who lists
//! their conversations after "sent" finds the new one. A touch that fails is kept and retried
//! with a growing pause. One lost with the process is redone at the next start: the task first
//! touches every conversation with a message in the [`REPAIR_WINDOW`] before the newest.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use mongodb::Collection;
use mongodb::bson::doc;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, watch};

use super::conversations::{ConversationDoc, MemberDoc, touch};
use super::documents::MessageDoc;
use super::errors::classify;
use super::{WRITE_DEADLINE, within};
use crate::domain::{ConversationId, Message, MessageId, UserId};
use crate::store::StoreError;

/// The longest a read waits for the touches queued before it; after that it reads what is
/// there (the database is failing or far behind, and a slow answer helps nobody).
pub(super) const SETTLE_DEADLINE: Duration = Duration::from_secs(2);
/// How far before the newest message the start-up repair looks. A pass takes well under this
/// unless the database is failing, and touching a conversation again changes nothing.
pub(super) const REPAIR_WINDOW: Duration = Duration::from_secs(60);
const FIRST_RETRY: Duration = Duration::from_millis(100);
const LAST_RETRY: Duration = Duration::from_secs(5);

/// One stored message, as far as its conversation needs to know.
#[derive(Debug, Clone)]
pub(super) struct Touch {
    pub(super) conversation: ConversationId,
    pub(super) id: MessageId,
    pub(super) sent_at: DateTime<Utc>,
    /// The two people of a direct message; `None` for a group's.
    pub(super) direct: Option<[UserId; 2]>,
    /// Add the members even if the conversation exists: an earlier try may have created it
    /// and failed before they were added.
    pub(super) join: bool,
}

impl Touch {
    pub(super) fn of(message: &Message) -> Self {
        Self {
            conversation: message.conversation,
            id: message.id,
            sent_at: message.sent_at,
            direct: message.recipient.map(|to| [message.sender, to]),
            join: false,
        }
    }

    pub(super) fn retried(self) -> Self {
        Self { join: true, ..self }
    }
}

/// The store's end: queue touches, wait for them.
pub(super) struct Touches {
    queue: mpsc::UnboundedSender<Touch>,
    /// Touches queued so far, counting the start-up repair as one; `tried` counts those the
    /// task has tried at least once. Both only grow, and the queue is FIFO, so "tried ≥ queued
    /// at my start" means mine are done.
    queued: AtomicU64,
    tried: watch::Receiver<u64>,
}

impl Touches {
    /// Starts the task; it ends when this is dropped, after trying what is queued.
    pub(super) fn start(
        conversations: Collection<ConversationDoc>,
        members: Collection<MemberDoc>,
        messages: Collection<MessageDoc>,
    ) -> Self {
        let (queue, queued) = mpsc::unbounded_channel();
        let (tried_tx, tried) = watch::channel(0);
        let task = Task {
            conversations,
            members,
            messages,
        };
        tokio::spawn(task.run(queued, tried_tx));
        Self {
            queue,
            queued: AtomicU64::new(1),
            tried,
        }
    }

    /// Queues the conversations of these stored messages. The queue is unbounded, but the
    /// task drains all of it before each pass, so it holds at most one pass's arrivals.
    pub(super) fn add<'a>(&self, stored: impl IntoIterator<Item = &'a Message>) {
        for message in stored {
            self.queued.fetch_add(1, Ordering::SeqCst);
            // The task outlives the sender (it ends only once the queue is closed).
            let _ = self.queue.send(Touch::of(message));
        }
    }

    /// Returns once every touch queued before the call has been tried, or after
    /// [`SETTLE_DEADLINE`].
    pub(super) async fn settled(&self) {
        let target = self.queued.load(Ordering::SeqCst);
        let mut tried = self.tried.clone();
        let waited = tokio::time::timeout(SETTLE_DEADLINE, async {
            // An error means the task is gone: nothing more will be tried.
            let _ = tried.wait_for(|&n| n >= target).await;
        })
        .await;
        if waited.is_err() {
            tracing::debug!("read conversations before earlier messages' touches were tried");
        }
    }
}

struct Task {
    conversations: Collection<ConversationDoc>,
    members: Collection<MemberDoc>,
    messages: Collection<MessageDoc>,
}

impl Task {
    async fn run(self, mut queue: mpsc::UnboundedReceiver<Touch>, tried: watch::Sender<u64>) {
        let mut pending: HashMap<ConversationId, Touch> = HashMap::new();
        if let Err(e) = self.repair(&mut pending).await {
            tracing::warn!(error = %e, "could not look for conversations left behind by the last run");
        }
        // The repair counts as the first touch queued (see `Touches::start`), so reads right
        // after a start see what it restores.
        let mut received = 1_u64;
        let mut repaired = false;
        let mut open = true;
        let mut pause = FIRST_RETRY;
        loop {
            if pending.is_empty() && std::mem::replace(&mut repaired, true) {
                let Some(first) = queue.recv().await else {
                    return;
                };
                keep(&mut pending, first);
                received += 1;
            }
            while open {
                match queue.try_recv() {
                    Ok(next) => {
                        keep(&mut pending, next);
                        received += 1;
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => open = false,
                }
            }
            let failed = self.pass(pending.drain().map(|(_, t)| t)).await;
            tried.send_replace(received);
            let Some((_, first_error)) = failed.first() else {
                pause = FIRST_RETRY;
                continue;
            };
            tracing::warn!(
                conversations = failed.len(),
                error = %first_error,
                "conversations' latest activity is not saved yet; retrying"
            );
            for (touch, _) in failed {
                keep(&mut pending, touch.retried());
            }
            if !open {
                // The store is gone; the next start's repair redoes these.
                return;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(LAST_RETRY);
        }
    }

    /// Applies these touches one at a time; returns the ones that failed. One at a time
    /// because they share the database with the message writer: on FerretDB, 8 in flight
    /// took p99 at 500 msg/s from 33 to 260 ms and halved the writer's peak rate (measured
    /// with palaver-bench, see docs/decisions.md), and coalescing absorbs what waits.
    async fn pass(&self, touches: impl Iterator<Item = Touch>) -> Vec<(Touch, StoreError)> {
        let mut failed = Vec::new();
        for t in touches {
            let applied = within(
                WRITE_DEADLINE,
                touch(&self.conversations, &self.members, &t),
            )
            .await;
            if let Err(e) = applied {
                failed.push((t, e));
            }
        }
        failed
    }

    /// Queues every conversation with a message in the [`REPAIR_WINDOW`] before the newest,
    /// members included: the last run may have stored them and stopped before touching.
    async fn repair(&self, pending: &mut HashMap<ConversationId, Touch>) -> Result<(), StoreError> {
        let newest = self
            .messages
            .find_one(doc! {})
            .sort(doc! { "_id": -1 })
            .await
            .map_err(classify)?;
        let Some(from) = newest.and_then(|doc| earliest_id_within(&doc.id)) else {
            return Ok(());
        };
        let mut recent = self
            .messages
            .find(doc! { "_id": { "$gte": from } })
            .await
            .map_err(classify)?;
        while let Some(doc) = recent.try_next().await.map_err(classify)? {
            // Messages from before conversation ids are `give_direct_conversations_ids`'s.
            if let Ok(message) = Message::try_from(doc) {
                keep(pending, Touch::of(&message).retried());
            }
        }
        Ok(())
    }
}

/// The smallest message id of the [`REPAIR_WINDOW`] before `newest` (a UUIDv7: its first 48
/// bits are milliseconds, and ids compare as text in time order).
fn earliest_id_within(newest: &str) -> Option<String> {
    let newest = MessageId::parse(newest).ok()?;
    let (seconds, nanos) = newest.as_uuid().get_timestamp()?.to_unix();
    let millis = seconds * 1000 + u64::from(nanos / 1_000_000);
    let window = u64::try_from(REPAIR_WINDOW.as_millis()).unwrap_or(u64::MAX);
    let from = uuid::Builder::from_unix_timestamp_millis(millis.saturating_sub(window), &[0; 10]);
    Some(from.into_uuid().hyphenated().to_string())
}

/// Keeps the newest touch per conversation; a retry's members come along.
fn keep(pending: &mut HashMap<ConversationId, Touch>, touch: Touch) {
    match pending.entry(touch.conversation) {
        Entry::Vacant(slot) => {
            slot.insert(touch);
        }
        Entry::Occupied(mut slot) => {
            let join = slot.get().join || touch.join;
            if touch.id > slot.get().id {
                slot.insert(touch);
            }
            slot.get_mut().join = join;
        }
    }
}

#[cfg(test)]
mod tests {
    use mongodb::bson::{self, Document};

    use super::*;
    use crate::store::Store;
    use crate::store::mongo::MongoStore;

    /// A run that stored messages and stopped before touching their conversations: the next
    /// start touches those of the last minute (members included) and reads wait for it.
    #[tokio::test]
    async fn conversations_a_stopped_run_left_untouched_are_touched_at_the_next_start() {
        let Some((uri, settings)) = crate::store::mongo::fresh_test_settings() else {
            return;
        };
        let client = mongodb::Client::with_uri_str(&uri).await.expect("client");
        let database = client.database(settings.database.as_deref().expect("name"));
        let users: Vec<UserId> = (0..4).map(|_| UserId::new()).collect();
        for (n, id) in users.iter().enumerate() {
            database
                .collection::<Document>("users")
                .insert_one(doc! {
                    "_id": id.to_string(), "email": format!("u{n}@example.com"),
                    "password_hash": "$argon2id$x", "status": "AVAILABLE",
                    "created_at": bson::DateTime::now(),
                })
                .await
                .expect("user");
        }
        let now = Utc::now().timestamp_millis().cast_unsigned();
        // Two minutes old (outside the window) for users 2 and 3; then two recent ones, the
        // last of them a second before the newest, for users 0 and 1.
        let at = |millis: u64, fill: u8| {
            uuid::Builder::from_unix_timestamp_millis(millis, &[fill; 10]).into_uuid()
        };
        let sent = [
            (at(now - 120_000, 1), 2, 3),
            (at(now - 1_000, 2), 0, 1),
            (at(now, 3), 1, 0),
        ];
        for (id, from, to) in sent {
            let (from, to) = (users[from], users[to]);
            database
                .collection::<Document>("messages")
                .insert_one(doc! {
                    "_id": id.to_string(), "sender": from.to_string(),
                    "recipient": to.to_string(),
                    "participants": [from.to_string(), to.to_string()],
                    "conversation": ConversationId::direct(from, to).to_string(),
                    "content": "stored, then the process stopped",
                    "sent_at": bson::DateTime::now(), "kind": "user",
                })
                .await
                .expect("message");
        }

        let store = MongoStore::connect(&settings).await.expect("connect");
        let listed = store
            .conversations_of(users[0], None, 10)
            .await
            .expect("list");
        assert_eq!(listed.len(), 1, "the recent pair's conversation is back");
        assert_eq!(listed[0].activity, MessageId::from(sent[2].0));
        assert_eq!(listed[0].conversation.members.len(), 2);
        let older = store
            .conversations_of(users[2], None, 10)
            .await
            .expect("list");
        assert!(older.is_empty(), "outside the window: {older:?}");
        drop(store);
        database.drop().await.expect("drop");
    }

    #[test]
    fn the_repair_window_starts_a_minute_before_the_newest_id() {
        let newest = uuid::Builder::from_unix_timestamp_millis(1_800_000_000_123, &[0xff; 10]);
        let newest = newest.into_uuid().to_string();
        let from = earliest_id_within(&newest).expect("a UUIDv7");
        let inside = uuid::Builder::from_unix_timestamp_millis(1_799_999_940_123, &[0; 10]);
        let outside = uuid::Builder::from_unix_timestamp_millis(1_799_999_940_122, &[0xff; 10]);
        assert_eq!(from, inside.into_uuid().to_string());
        assert!(outside.into_uuid().to_string() < from);
        assert!(from < newest);
    }

    #[test]
    fn the_newest_touch_per_conversation_is_kept_with_any_retry_s_members() {
        let conversation = ConversationId::new_group();
        let older = Touch {
            conversation,
            id: MessageId::new(),
            sent_at: Utc::now(),
            direct: None,
            join: true,
        };
        let newer = Touch {
            id: MessageId::new(),
            join: false,
            ..older.clone()
        };
        let mut pending = HashMap::new();
        keep(&mut pending, newer.clone());
        keep(&mut pending, older);
        let kept = &pending[&conversation];
        assert_eq!(kept.id, newer.id);
        assert!(kept.join);
    }
}
