//! Fencing a cluster node's writer in the database, so that a node taken for dead can never
//! commit behind what the others have already shown (docs/cluster.md, "Fencing").
//!
//! A node's writer stores its messages under an *epoch* (random, drawn at start and again each
//! time it finds itself fenced). Every `insertMany` it sends starts with a *commit token*, a
//! small document whose `_id` names the node, the epoch and a slot number that grows by one
//! per insert: `~w/<node>/<epoch>/<slot>`. The insert is ordered, so when the token's `_id`
//! is taken nothing of that insert is stored.
//!
//! A node that takes another for dead first fences it: it inserts a token marked `fence` in
//! the slot after the highest one the dead node's epoch has used. From then on that epoch's
//! next insert fails on its first document, whenever it arrives (a paused process wakes up
//! seconds later and sends what it had prepared). Only then does the node read what the dead
//! one stored, which is therefore all it will ever store under that epoch. The check is in the
//! same write as the messages, as with Kafka's producer epochs or Kleppmann's fencing tokens,
//! and works on every MongoDB-wire server: it needs only the `_id` index and ordered inserts.
//!
//! Tokens sort after every message id (`~` sorts after hex digits), carry none of the fields
//! message queries filter on, and are removed a few at a time once later ones exist.

use std::sync::Mutex;

use std::collections::HashSet;

use mongodb::bson::{Document, doc};

use super::errors::{all, classify, is_duplicate_key};
use super::{MongoStore, WRITE_DEADLINE, within};
use crate::domain::{Message, MessageId};
use crate::store::StoreError;

/// Every this many slots the writer deletes its older tokens.
const PRUNE_EVERY: u64 = 64;

/// The slot a writer fills next, under which epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Slot {
    pub epoch: u64,
    pub slot: u64,
}

/// One node's writer: its name (kept on every message it stores, see `MessageDoc::origin`)
/// and where it is in its epoch.
pub(super) struct Writer {
    pub node: String,
    next: Mutex<Slot>,
    /// An insert that got no answer, until [`MongoStore::settle_unanswered`] settles it.
    unanswered: Mutex<Option<Unanswered>>,
}

/// An insert whose answer was lost: it may still land, whole or in part, until its slot is
/// taken.
#[derive(Clone)]
pub(super) struct Unanswered {
    pub at: Slot,
    /// Stored by earlier inserts of the same batch (answered).
    pub stored: Vec<Message>,
    /// In the unanswered insert.
    pub unsure: Vec<Message>,
}

impl Writer {
    pub fn new(node: String) -> Self {
        Self {
            node,
            next: Mutex::new(Slot {
                epoch: new_epoch(),
                slot: 1,
            }),
            unanswered: Mutex::new(None),
        }
    }

    pub fn unanswered(&self, lost: Unanswered) {
        *crate::sync::lock(&self.unanswered) = Some(lost);
    }

    pub fn epoch(&self) -> u64 {
        crate::sync::lock(&self.next).epoch
    }

    /// The slot the next insert claims.
    pub fn next(&self) -> Slot {
        *crate::sync::lock(&self.next)
    }

    /// `used` holds a token now (ours): the next insert takes the slot after it.
    pub fn filled(&self, used: Slot) {
        let mut next = crate::sync::lock(&self.next);
        if *next == used {
            next.slot += 1;
        }
    }

    /// This epoch is fenced: carry on under a fresh one. The cluster sees the new epoch in
    /// this node's frames and waits for it again before it lets this node write.
    pub fn refenced(&self, fenced: Slot) {
        let mut next = crate::sync::lock(&self.next);
        if next.epoch == fenced.epoch {
            *next = Slot {
                epoch: new_epoch(),
                slot: 1,
            };
        }
    }

    pub fn token(&self, at: Slot) -> Document {
        doc! { "_id": token_id(&self.node, at), "slot": at.slot as i64 }
    }
}

fn new_epoch() -> u64 {
    let mut bytes = [0u8; 8];
    // Without randomness a restart could reuse an epoch; the time is a fine fallback.
    if getrandom::fill(&mut bytes).is_err() {
        return chrono::Utc::now().timestamp_nanos_opt().unwrap_or(1) as u64;
    }
    u64::from_le_bytes(bytes)
}

/// All tokens of one epoch sort between `prefix` and `prefix~`.
fn prefix(node: &str, epoch: u64) -> String {
    format!("~w/{node}/{epoch:016x}/")
}

pub(super) fn token_id(node: &str, at: Slot) -> String {
    format!("{}{:016x}", prefix(node, at.epoch), at.slot)
}

fn epoch_range(node: &str, epoch: u64) -> Document {
    let prefix = prefix(node, epoch);
    doc! { "$gt": &prefix, "$lt": format!("{prefix}~") }
}

impl MongoStore {
    /// Whether the token in slot `at` of `node` is a fence (rather than the node's own token
    /// from an insert whose answer was lost).
    pub(super) async fn is_fence(&self, node: &str, at: Slot) -> Result<bool, StoreError> {
        let found = self
            .raw_messages()
            .find_one(doc! { "_id": token_id(node, at) })
            .await
            .map_err(classify)?;
        Ok(found.is_some_and(|token| token.get_bool("fence").unwrap_or(false)))
    }

    /// Deletes the writer's tokens before `at`, now and then: only the newest one is needed
    /// (a fence goes in the slot after it).
    pub(super) async fn prune_tokens(&self, node: &str, at: Slot) {
        if !at.slot.is_multiple_of(PRUNE_EVERY) {
            return;
        }
        let older = doc! { "$gt": prefix(node, at.epoch), "$lt": token_id(node, at) };
        if let Err(e) = self.raw_messages().delete_many(doc! { "_id": older }).await {
            tracing::debug!(error = %e, "pruning commit tokens failed; the next prune retries");
        }
    }

    /// Settles this node's unanswered insert, if any (see `Store::settle`). Its token's slot is
    /// taken first: by a void token of ours if the insert has not landed (then it never can),
    /// or already by its own token (it landed) or by another node's fence (it never can). Only
    /// then is what it stored read, so the answer is final.
    pub(super) async fn settle_unanswered(&self) -> Result<Vec<MessageId>, StoreError> {
        let Some(writer) = &self.writer else {
            return Ok(Vec::new());
        };
        let Some(lost) = crate::sync::lock(&writer.unanswered).clone() else {
            return Ok(Vec::new());
        };
        let at = lost.at;
        let void = doc! { "_id": token_id(&writer.node, at), "slot": at.slot as i64, "void": true };
        // Each step may go unanswered too (a void token landing late only takes the slot, as
        // meant); the writer asks again.
        within(WRITE_DEADLINE, async {
            match self.raw_messages().insert_one(void).await {
                Ok(_) => Ok(()),
                Err(e) if is_duplicate_key(&e) => Ok(()),
                Err(e) => Err(classify(e)),
            }
        })
        .await?;
        let fenced = within(WRITE_DEADLINE, self.is_fence(&writer.node, at)).await?;
        let ids: Vec<String> = lost.unsure.iter().map(|m| m.id.to_string()).collect();
        let messages = self.raw_messages();
        let finding = messages
            .find(doc! { "_id": { "$in": ids } })
            .projection(doc! { "_id": 1 });
        let found: Vec<Document> =
            within(WRITE_DEADLINE, async { all(finding.await).await }).await?;
        let found: HashSet<&str> = found.iter().filter_map(|d| d.get_str("_id").ok()).collect();
        let stored: Vec<&Message> = lost
            .stored
            .iter()
            .chain(
                lost.unsure
                    .iter()
                    .filter(|m| found.contains(m.id.to_string().as_str())),
            )
            .collect();
        self.touches.add(stored.iter().copied());
        if fenced {
            writer.refenced(at);
        } else {
            writer.filled(at);
        }
        *crate::sync::lock(&writer.unanswered) = None;
        Ok(stored.iter().map(|m| m.id).collect())
    }

    /// After this returns `Ok`, writer `node` can store nothing more under `epoch`.
    pub(super) async fn fence_writer(&self, node: &str, epoch: u64) -> Result<(), StoreError> {
        // Each round either places the fence or finds a token the writer placed meanwhile; a
        // writer fills at most one slot per round trip, so this ends quickly.
        for _ in 0..100 {
            let newest = self
                .raw_messages()
                .find_one(doc! { "_id": epoch_range(node, epoch) })
                .sort(doc! { "_id": -1 })
                .await
                .map_err(classify)?;
            let slot = match &newest {
                Some(token) if token.get_bool("fence").unwrap_or(false) => return Ok(()),
                Some(token) => token.get_i64("slot").unwrap_or(0) as u64 + 1,
                None => 1,
            };
            let at = Slot { epoch, slot };
            let fence = doc! { "_id": token_id(node, at), "slot": slot as i64, "fence": true };
            match self.raw_messages().insert_one(fence).await {
                Ok(_) => return Ok(()),
                Err(e) if is_duplicate_key(&e) => continue,
                Err(e) => return Err(classify(e)),
            }
        }
        Err(StoreError::Internal(anyhow::anyhow!(
            "could not fence node {node}: its writer kept filling slots"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Content, Email, Message, MessageId, MessageKind, MessagePage, UserId};
    use crate::store::mongo::documents::MessageDoc;
    use crate::store::{ClusterLog, Inserted, NewMessage, NewUser, Store};
    use mongodb::bson;

    fn new_message(sender: UserId, recipient: UserId, text: &str) -> NewMessage {
        NewMessage {
            message: Message::new(
                sender,
                recipient,
                Content::parse(text.to_owned()).expect("content"),
                MessageKind::User,
            ),
            idempotency_key: None,
            awaits_reply: false,
        }
    }

    /// What node n1's writer stores, one message at a time.
    async fn send(writer: &MongoStore, from: UserId, to: UserId, text: &str) -> bool {
        let outcome = writer
            .insert_messages(&[new_message(from, to, text)])
            .await
            .expect("the insert runs");
        match outcome.into_iter().next().expect("one outcome") {
            Ok(Inserted::Stored) => true,
            Err(StoreError::Fenced) => false,
            other => panic!("unexpected outcome {other:?}"),
        }
    }

    /// A writer fenced by another node stores nothing more under that epoch, whenever its
    /// insert arrives; it carries on under a new epoch; the tokens never show as messages.
    #[tokio::test]
    async fn a_fenced_writer_stores_nothing_more_under_its_epoch() {
        let Some((_, settings)) = crate::store::mongo::fresh_test_settings() else {
            return;
        };
        let writer = MongoStore::connect(&settings)
            .await
            .expect("connect")
            .with_origin("n1".to_owned());
        let other = MongoStore::connect(&settings).await.expect("connect");
        let mut users = Vec::new();
        for local in ["a", "b"] {
            let user = NewUser {
                id: UserId::new(),
                email: Email::parse(&format!("{local}@example.com")).expect("email"),
                password_hash: "$argon2id$x".to_owned(),
            };
            users.push(other.create_user(user).await.expect("user").id);
        }
        let (a, b) = (users[0], users[1]);
        let stored_by_n1 = || async {
            let nil = MessageId::from(uuid::Uuid::nil());
            let found = other.stored_by("n1", nil, None).await.expect("read");
            found.into_iter().map(|m| m.content).collect::<Vec<_>>()
        };

        assert!(send(&writer, a, b, "before").await);
        let epoch = writer.epoch();
        other.fence("n1", epoch).await.expect("fence");
        other
            .fence("n1", epoch)
            .await
            .expect("fencing twice is fine");
        assert!(!send(&writer, a, b, "late").await, "refused once fenced");
        assert_eq!(stored_by_n1().await, ["before"]);
        assert_ne!(writer.epoch(), epoch, "a new epoch");
        assert!(send(&writer, a, b, "rejoined").await);

        // A token the writer placed for an insert whose answer was lost: not a fence.
        let lost = writer.writer.as_ref().expect("a cluster writer").next();
        writer
            .raw_messages()
            .insert_one(writer.writer.as_ref().expect("writer").token(lost))
            .await
            .expect("token");
        assert!(send(&writer, a, b, "after a lost answer").await);

        // An epoch that never stored anything is fenced from its first slot.
        other.fence("n1", writer.epoch()).await.expect("fence");
        assert!(!send(&writer, a, b, "fenced before writing").await);
        assert_eq!(
            stored_by_n1().await,
            ["before", "rejoined", "after a lost answer"]
        );
        let listed = other
            .list_messages(a, &MessagePage::default())
            .await
            .expect("list");
        assert_eq!(listed.len(), 3, "tokens are not messages");
        assert_eq!(
            other
                .conversations_of(a, None, 10)
                .await
                .expect("list")
                .len(),
            1
        );
        other.database().drop().await.expect("drop");
    }

    /// What the lost insert would have sent: its token, then `messages`, in order.
    async fn arrives(store: &MongoStore, at: Slot, messages: &[&NewMessage]) -> bool {
        let writer = store.writer.as_ref().expect("a cluster writer");
        let mut docs = vec![writer.token(at)];
        for new in messages {
            let doc = MessageDoc {
                origin: Some(writer.node.clone()),
                ..MessageDoc::from(*new)
            };
            docs.push(bson::to_document(&doc).expect("bson"));
        }
        store
            .raw_messages()
            .insert_many(docs)
            .ordered(true)
            .await
            .is_ok()
    }

    /// An insert whose answer was lost is settled exactly: what landed is reported stored,
    /// and what had not landed can never land afterwards, nor after a fence.
    #[tokio::test]
    async fn an_insert_whose_answer_was_lost_is_settled_for_good() {
        let Some((_, settings)) = crate::store::mongo::fresh_test_settings() else {
            return;
        };
        let store = MongoStore::connect(&settings)
            .await
            .expect("connect")
            .with_origin("n1".to_owned());
        let other = MongoStore::connect(&settings).await.expect("connect");
        let (a, b) = (UserId::new(), UserId::new());
        for (id, local) in [(a, "a"), (b, "b")] {
            let email = Email::parse(&format!("{local}@example.com")).expect("email");
            let user = NewUser {
                id,
                email,
                password_hash: "$argon2id$x".to_owned(),
            };
            other.create_user(user).await.expect("user");
        }
        let writer = store.writer.as_ref().expect("a cluster writer");
        let lose = |at: Slot, unsure: &[&NewMessage]| {
            writer.unanswered(Unanswered {
                at,
                stored: Vec::new(),
                unsure: unsure.iter().map(|new| new.message.clone()).collect(),
            });
        };
        assert_eq!(
            store.settle().await.expect("settle"),
            [],
            "nothing to settle"
        );

        // It landed: the token and the messages are there; the writer goes on after it.
        let (m1, m2) = (new_message(a, b, "landed 1"), new_message(a, b, "landed 2"));
        let at = writer.next();
        assert!(arrives(&store, at, &[&m1, &m2]).await);
        lose(at, &[&m1, &m2]);
        assert_eq!(
            store.settle().await.expect("settle"),
            [m1.message.id, m2.message.id]
        );
        assert_eq!(writer.next().slot, at.slot + 1);
        assert_eq!(
            store.conversations_of(a, None, 10).await.expect("list")[0]
                .last_message
                .as_ref()
                .map(|m| m.id),
            Some(m2.message.id),
            "the conversation shows what landed"
        );

        // It had not landed: settled as nothing stored, and it cannot land any more.
        let m3 = new_message(a, b, "late");
        let at = writer.next();
        lose(at, &[&m3]);
        assert_eq!(store.settle().await.expect("settle"), []);
        assert!(
            !arrives(&store, at, &[&m3]).await,
            "the late insert is refused"
        );
        assert!(send(&store, a, b, "next").await, "the writer carries on");

        // Fenced by another node before it landed: nothing stored, a new epoch.
        let m4 = new_message(a, b, "fenced");
        let at = writer.next();
        other.fence("n1", at.epoch).await.expect("fence");
        lose(at, &[&m4]);
        assert_eq!(store.settle().await.expect("settle"), []);
        assert!(!arrives(&store, at, &[&m4]).await);
        assert_ne!(writer.epoch(), at.epoch, "a new epoch");
        assert!(send(&store, a, b, "rejoined").await);

        let nil = MessageId::from(uuid::Uuid::nil());
        let stored: Vec<_> = other
            .stored_by("n1", nil, None)
            .await
            .expect("read")
            .into_iter()
            .map(|m| m.content)
            .collect();
        assert_eq!(stored, ["landed 1", "landed 2", "next", "rejoined"]);
        other.database().drop().await.expect("drop");
    }
}
