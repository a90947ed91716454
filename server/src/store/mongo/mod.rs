//! The production option: MongoDB (6+, Atlas, or a MongoDB-wire server such as FerretDB),
//! used when `MONGODB_URI` is set.
//!
//! It keeps to what every MongoDB-wire server offers: no multi-document transactions and no
//! change streams. The [`super::Store`] contract still holds because the one message writer
//! (`messaging::Writer`) already serialises inserts, and a status change is a single
//! `findAndModify`.

//!
//! This file is the store itself: [`MongoStore`], its queries and its [`Store`] and
//! [`ClusterLog`] implementations. Connecting and the indexes are in `connect.rs`, the documents
//! as stored in `documents.rs`, and what a driver error means for the caller in `errors.rs`.

mod connect;
mod conversations;
mod documents;
mod errors;
mod fencing;
mod touches;

use std::collections::HashMap;
use std::time::Duration;

use anyhow::anyhow;
use async_trait::async_trait;
use chrono::Utc;
use futures_util::TryStreamExt;
use mongodb::bson::{self, Bson, Document, doc};
use mongodb::options::ReturnDocument;
use mongodb::{Collection, Database};

use super::{ClusterLog, Credentials, Inserted, NewMessage, NewUser, Store, StoreError, User};
use crate::domain::{
    Conversation, ConversationId, ConversationSummary, Email, IDEMPOTENCY_WINDOW, Member, Message,
    MessageId, MessagePage, ResponderChoice, Status, Title, UserId,
};
use conversations::{ConversationDoc, MemberDoc};
use documents::{MessageDoc, UserDoc};
use errors::{
    all, classify, corrupt, describe, is_duplicate_key, is_out_of_space, is_unanswered, refused_one,
};

/// How long the writer waits for any answer (an insert, the reads before it) before it takes
/// the answer for lost: a stalled link would otherwise hold it for as long as the TCP
/// connection lives.
const WRITE_DEADLINE: Duration = Duration::from_secs(10);
/// How long `/readyz` waits for the database's answer: a load balancer's probe must not hang.
const PING_DEADLINE: Duration = Duration::from_secs(2);

/// `op`, or `Unavailable` once `deadline` has passed without an answer.
async fn within<T>(
    deadline: Duration,
    op: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(deadline, op)
        .await
        .unwrap_or_else(|_| {
            let detail = format!("no answer within {} s", deadline.as_secs());
            Err(StoreError::Unavailable(detail).counted())
        })
}

pub struct MongoStore {
    database: Database,
    users: Collection<UserDoc>,
    messages: Collection<MessageDoc>,
    conversations: Collection<ConversationDoc>,
    members: Collection<MemberDoc>,
    /// This node's writer in a cluster: its name, kept on every message it stores, and its
    /// fencing epoch (see `fencing.rs`).
    writer: Option<fencing::Writer>,
    /// Stored messages' conversations, brought up to date off the way to "sent".
    touches: touches::Touches,
}

impl MongoStore {
    /// Marks every message this store writes from now on as stored by cluster node `node`,
    /// and fences its writes (see `fencing.rs`).
    pub fn with_origin(mut self, node: String) -> Self {
        self.writer = Some(fencing::Writer::new(node));
        self
    }

    /// The messages collection untyped: a cluster writer's inserts mix messages and tokens.
    fn raw_messages(&self) -> Collection<Document> {
        self.messages.clone_with_type()
    }

    /// The writer's token in `at` is stored.
    async fn filled(&self, token: Option<(&fencing::Writer, fencing::Slot)>) {
        if let Some((writer, at)) = token {
            writer.filled(at);
            // A prune that cannot finish is retried by the next one.
            let _ = tokio::time::timeout(WRITE_DEADLINE, self.prune_tokens(&writer.node, at)).await;
        }
    }

    async fn find_messages(&self, filter: Document) -> Result<Vec<Message>, StoreError> {
        let docs: Vec<MessageDoc> =
            all(self.messages.find(filter).sort(doc! { "_id": 1 }).await).await?;
        docs.into_iter().map(Message::try_from).collect()
    }

    /// The database this store writes to (tests drop it afterwards).
    pub fn database(&self) -> &Database {
        &self.database
    }

    /// Which of the senders and recipients of these messages exist.
    async fn existing_users(
        &self,
        indexes: &[usize],
        batch: &[NewMessage],
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        let mut ids: Vec<String> = indexes
            .iter()
            .flat_map(|&i| [Some(batch[i].message.sender), batch[i].message.recipient])
            .flatten()
            .map(|id| id.to_string())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.is_empty() {
            return Ok(Default::default());
        }
        let found: Vec<Document> = self
            .database
            .collection::<Document>("users")
            .find(doc! { "_id": { "$in": ids } })
            .projection(doc! { "_id": 1 })
            .await
            .map_err(classify)?
            .try_collect()
            .await
            .map_err(classify)?;
        Ok(found
            .iter()
            .filter_map(|doc| doc.get_str("_id").ok().map(str::to_owned))
            .collect())
    }

    /// The messages sent within the idempotency window under any of these scoped keys.
    async fn earlier_sends<'a>(
        &self,
        keys: impl Iterator<Item = &'a String>,
    ) -> Result<HashMap<String, Message>, StoreError> {
        let keys: Vec<&String> = keys.collect();
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let cutoff = Utc::now() - IDEMPOTENCY_WINDOW;
        let docs: Vec<MessageDoc> = self
            .messages
            .find(doc! {
                "idempotency": { "$in": keys },
                "sent_at": { "$gte": bson::DateTime::from_millis(cutoff.timestamp_millis()) },
            })
            .sort(doc! { "_id": 1 })
            .await
            .map_err(classify)?
            .try_collect()
            .await
            .map_err(classify)?;
        let mut earlier = HashMap::new();
        for doc in docs {
            let Some(key) = doc.idempotency.clone() else {
                continue;
            };
            let message = Message::try_from(doc)?;
            earlier.entry(key).or_insert(message);
        }
        Ok(earlier)
    }
}

#[async_trait]
impl Store for MongoStore {
    async fn create_user(&self, user: NewUser) -> Result<User, StoreError> {
        let doc = UserDoc {
            id: user.id.to_string(),
            email: user.email.as_str().to_owned(),
            password_hash: user.password_hash,
            status: Status::default().as_str().to_owned(),
            created_at: bson::DateTime::now(),
            token_version: 0,
            responder: None,
        };
        match self.users.insert_one(&doc).await {
            Ok(_) => Ok(User {
                id: user.id,
                email: user.email,
                status: Status::default(),
            }),
            Err(e) if is_duplicate_key(&e) => Err(StoreError::EmailTaken),
            Err(e) => Err(classify(e)),
        }
    }

    async fn user_by_id(&self, id: UserId) -> Result<Option<User>, StoreError> {
        let found = self
            .users
            .find_one(doc! { "_id": id.to_string() })
            .await
            .map_err(classify)?;
        found.map(User::try_from).transpose()
    }

    async fn user_by_email(&self, email: &Email) -> Result<Option<User>, StoreError> {
        Ok(self
            .credentials_by_email(email)
            .await?
            .map(|credentials| credentials.user))
    }

    async fn users_by_ids(&self, ids: &[UserId]) -> Result<Vec<User>, StoreError> {
        let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
        let docs: Vec<UserDoc> = all(self.users.find(doc! { "_id": { "$in": ids } }).await).await?;
        docs.into_iter().map(User::try_from).collect()
    }

    async fn message(&self, id: MessageId) -> Result<Option<Message>, StoreError> {
        self.messages
            .find_one(doc! { "_id": id.to_string() })
            .await
            .map_err(classify)?
            .map(Message::try_from)
            .transpose()
    }

    async fn credentials_by_email(&self, email: &Email) -> Result<Option<Credentials>, StoreError> {
        let found = self
            .users
            .find_one(doc! { "email": email.as_str() })
            .await
            .map_err(classify)?;
        found
            .map(|doc| {
                let password_hash = doc.password_hash.clone();
                let token_version = doc.token_version.max(0) as u64;
                Ok(Credentials {
                    user: User::try_from(doc)?,
                    password_hash,
                    token_version,
                })
            })
            .transpose()
    }

    async fn set_status(&self, id: UserId, status: Status) -> Result<Option<Status>, StoreError> {
        let before = self
            .users
            .find_one_and_update(
                doc! { "_id": id.to_string() },
                doc! { "$set": { "status": status.as_str() } },
            )
            .return_document(ReturnDocument::Before)
            .await
            .map_err(classify)?;
        before
            .map(|doc| Status::parse(&doc.status).map_err(|e| corrupt("user", &doc.id, e)))
            .transpose()
    }

    /// Ordered `insertMany`s, so readers only ever see a prefix of the batch (cursors stay
    /// gapless). A message the server refuses is skipped and the rest goes on; a database failure
    /// fails what was not stored yet, although (no transactions) earlier ones stay stored. The
    /// idempotency keys are looked up before inserting: the one writer task per server makes
    /// that check-then-insert safe.
    async fn insert_messages(
        &self,
        batch: &[NewMessage],
    ) -> Result<Vec<Result<Inserted, StoreError>>, StoreError> {
        let mut outcomes: Vec<Option<Result<Inserted, StoreError>>> =
            (0..batch.len()).map(|_| None).collect();
        let scoped: Vec<Option<String>> = batch
            .iter()
            .map(|new| {
                new.idempotency_key
                    .as_ref()
                    .map(|k| k.scoped(new.message.sender))
            })
            .collect();
        let earlier = within(WRITE_DEADLINE, self.earlier_sends(scoped.iter().flatten())).await?;
        // A key seen twice in one batch: the later send answers with the earlier one's result.
        let mut first_in_batch: HashMap<&str, usize> = HashMap::new();
        let mut replays_in_batch = Vec::new();
        let mut to_insert = Vec::with_capacity(batch.len());
        for (index, key) in scoped.iter().enumerate() {
            if let Some(key) = key {
                if let Some(first) = earlier.get(key) {
                    outcomes[index] = Some(Ok(Inserted::Replayed(first.clone())));
                    continue;
                }
                if let Some(&first) = first_in_batch.get(key.as_str()) {
                    replays_in_batch.push((index, first));
                    continue;
                }
                first_in_batch.insert(key, index);
            }
            to_insert.push(index);
        }
        // No foreign keys here: a message whose sender or recipient is gone fails alone, as
        // it does on SQLite, for the price of one lookup per batch.
        let existing = within(WRITE_DEADLINE, self.existing_users(&to_insert, batch)).await?;
        // A group message is stored only while its sender is in the group.
        let in_groups = within(
            WRITE_DEADLINE,
            self.memberships_of_senders(&to_insert, batch),
        )
        .await?;
        to_insert.retain(|&index| {
            let message = &batch[index].message;
            let known = existing.contains(&message.sender.to_string())
                && message
                    .recipient
                    .is_none_or(|r| existing.contains(&r.to_string()));
            if !known {
                outcomes[index] = Some(Err(StoreError::UnknownUser));
                return false;
            }
            let member = message.recipient.is_some()
                || in_groups.contains(&format!("{}/{}", message.conversation, message.sender));
            if !member {
                outcomes[index] = Some(Err(StoreError::NotMember));
            }
            member
        });

        let mut rest = &to_insert[..];
        let mut refills = 0;
        while !rest.is_empty() {
            // A cluster writer's insert starts with its commit token (see `fencing.rs`).
            let token = self.writer.as_ref().map(|w| (w, w.next()));
            let mut docs = Vec::with_capacity(rest.len() + 1);
            docs.extend(token.map(|(w, at)| w.token(at)));
            for &i in rest {
                let doc = MessageDoc {
                    origin: self.writer.as_ref().map(|w| w.node.clone()),
                    ..MessageDoc::from(&batch[i])
                };
                docs.push(bson::to_document(&doc).map_err(|e| StoreError::Internal(e.into()))?);
            }
            let skip = usize::from(token.is_some());
            let messages = self.raw_messages();
            let inserting = messages.insert_many(docs).ordered(true);
            let failure = match tokio::time::timeout(WRITE_DEADLINE, inserting).await {
                Ok(Ok(_)) => {
                    self.filled(token).await;
                    for &i in rest {
                        outcomes[i] = Some(Ok(Inserted::Stored));
                    }
                    break;
                }
                Ok(Err(e)) => Some(e),
                // A stalled link: the driver would wait for as long as the TCP connection lives.
                Err(_) => None,
            };
            let unanswered = failure.as_ref().is_none_or(is_unanswered);
            if let (true, Some((writer, at))) = (unanswered, token) {
                let error = failure
                    .as_ref()
                    .map_or("no answer in time".to_owned(), describe);
                return Err(lost_answer(writer, at, batch, &outcomes, rest, &error));
            }
            let Some(failure) = failure else {
                let err = StoreError::Unavailable("the database did not answer in time".into());
                for &i in rest {
                    outcomes[i] = Some(Err(err.duplicate()));
                }
                break;
            };
            match (refused_one(&failure), token) {
                // Not this document's fault: nothing more can be stored now.
                _ if is_out_of_space(&failure) => {
                    let err = classify(failure);
                    for &i in rest {
                        outcomes[i] = Some(Err(err.duplicate()));
                    }
                    break;
                }
                // The token's slot is taken: nothing of this insert is stored.
                (Some((0, _)), Some((writer, at))) => {
                    let fenced = match self.is_fence(&writer.node, at).await {
                        Ok(fenced) => fenced,
                        // Earlier inserts of this batch may be stored: settle it.
                        Err(e) => {
                            let error = e.to_string();
                            return Err(lost_answer(writer, at, batch, &outcomes, rest, &error));
                        }
                    };
                    if fenced {
                        tracing::warn!(
                            "this node was taken for dead by the cluster; its writes are refused \
                             until it is heard again"
                        );
                        writer.refenced(at);
                        for &i in rest {
                            outcomes[i] = Some(Err(StoreError::Fenced));
                        }
                        break;
                    }
                    // Our own token, from an insert whose answer was lost: take the next slot.
                    writer.filled(at);
                    refills += 1;
                    if refills > 3 {
                        let err = StoreError::Internal(anyhow!("commit token slots keep clashing"));
                        for &i in rest {
                            outcomes[i] = Some(Err(err.duplicate()));
                        }
                        break;
                    }
                }
                // The messages before the refused one are stored; go on after it.
                (Some((position, reason)), _)
                    if position >= skip && position - skip < rest.len() =>
                {
                    self.filled(token).await;
                    let position = position - skip;
                    for &i in &rest[..position] {
                        outcomes[i] = Some(Ok(Inserted::Stored));
                    }
                    tracing::warn!(%reason, "a message was refused by the database");
                    outcomes[rest[position]] = Some(Err(StoreError::Internal(anyhow!(
                        "message refused: {reason}"
                    ))));
                    rest = &rest[position + 1..];
                }
                _ => {
                    let err = classify(failure);
                    for &i in rest {
                        outcomes[i] = Some(Err(err.duplicate()));
                    }
                    break;
                }
            }
        }
        if outcomes.iter().flatten().any(Result::is_ok) {
            super::full::cleared();
        }
        for (index, first) in replays_in_batch {
            outcomes[index] = Some(match &outcomes[first] {
                Some(Ok(_)) => Ok(Inserted::Replayed(batch[first].message.clone())),
                Some(Err(e)) => Err(e.duplicate()),
                None => Err(StoreError::Internal(anyhow!("message outcome missing"))),
            });
        }
        let stored = outcomes
            .iter()
            .zip(batch)
            .filter(|(outcome, _)| matches!(outcome, Some(Ok(Inserted::Stored))))
            .map(|(_, new)| &new.message);
        self.touches.add(stored);
        Ok(outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Err(StoreError::Internal(anyhow!("outcome missing")))))
            .collect())
    }

    async fn settle(&self) -> Result<Vec<MessageId>, StoreError> {
        self.settle_unanswered().await
    }

    async fn token_version(&self, id: UserId) -> Result<Option<u64>, StoreError> {
        let found = self
            .users
            .find_one(doc! { "_id": id.to_string() })
            .await
            .map_err(classify)?;
        Ok(found.map(|doc| doc.token_version.max(0) as u64))
    }

    async fn revoke_tokens(
        &self,
        id: UserId,
        new_password_hash: Option<String>,
    ) -> Result<Option<u64>, StoreError> {
        let mut update = doc! { "$inc": { "token_version": 1_i64 } };
        if let Some(hash) = new_password_hash {
            update.insert("$set", doc! { "password_hash": hash });
        }
        let after = self
            .users
            .find_one_and_update(doc! { "_id": id.to_string() }, update)
            .return_document(ReturnDocument::After)
            .await
            .map_err(classify)?;
        Ok(after.map(|doc| doc.token_version.max(0) as u64))
    }

    async fn password_hash(&self, id: UserId) -> Result<Option<String>, StoreError> {
        let found = self
            .users
            .find_one(doc! { "_id": id.to_string() })
            .await
            .map_err(classify)?;
        Ok(found.map(|doc| doc.password_hash))
    }

    async fn responder_choice(&self, id: UserId) -> Result<Option<ResponderChoice>, StoreError> {
        let found = self
            .users
            .find_one(doc! { "_id": id.to_string() })
            .await
            .map_err(classify)?;
        Ok(found.and_then(|doc| doc.responder))
    }

    async fn set_responder_choice(
        &self,
        id: UserId,
        choice: &ResponderChoice,
    ) -> Result<bool, StoreError> {
        let choice = bson::to_document(choice).map_err(|e| StoreError::Internal(e.into()))?;
        let updated = self
            .users
            .update_one(
                doc! { "_id": id.to_string() },
                doc! { "$set": { "responder": choice } },
            )
            .await
            .map_err(classify)?;
        Ok(updated.matched_count > 0)
    }

    /// The user first, so no new token works and no new send passes authentication while
    /// their messages are being removed.
    async fn delete_user(&self, id: UserId) -> Result<bool, StoreError> {
        let id = id.to_string();
        let deleted = self
            .users
            .delete_one(doc! { "_id": &id })
            .await
            .map_err(classify)?;
        self.messages
            .delete_many(doc! { "$or": [{ "participants": &id }, { "sender": &id }] })
            .await
            .map_err(classify)?;
        self.leave_all(&id).await?;
        Ok(deleted.deleted_count > 0)
    }

    async fn conversation_peers(&self, user: UserId) -> Result<Vec<UserId>, StoreError> {
        let me = user.to_string();
        let mut values = self
            .messages
            .distinct("participants", doc! { "participants": &me })
            .await
            .map_err(classify)?;
        let groups = self.groups_of(&me).await?;
        if !groups.is_empty() {
            let members = self
                .members
                .distinct("user", doc! { "conversation": { "$in": groups } })
                .await
                .map_err(classify)?;
            values.extend(members);
        }
        values
            .into_iter()
            .filter_map(|value| match value {
                Bson::String(id) if id == me => None,
                Bson::String(id) => Some(UserId::parse(&id).map_err(|e| corrupt("peer", &id, e))),
                other => Some(Err(corrupt("peer", &other.to_string(), "not a string"))),
            })
            .collect::<Result<std::collections::BTreeSet<_>, _>>()
            .map(|peers| peers.into_iter().collect())
    }

    async fn list_messages(
        &self,
        user: UserId,
        page: &MessagePage,
    ) -> Result<Vec<Message>, StoreError> {
        let mut filter = match page.conversation {
            Some(conversation) => doc! { "conversation": conversation.to_string() },
            None => {
                // Direct messages by the participants index; group messages of the groups the
                // user is in now (one who left sees nothing more of a group).
                let groups = self.groups_of(&user.to_string()).await?;
                if groups.is_empty() {
                    doc! { "participants": user.to_string() }
                } else {
                    doc! { "$or": [
                        { "participants": user.to_string() },
                        { "conversation": { "$in": groups } },
                    ] }
                }
            }
        };
        let mut id_range = id_range(page.after, page.upto);
        if let Some(before) = page.before {
            id_range.insert("$lt", before.to_string());
        }
        if !id_range.is_empty() {
            filter.insert("_id", id_range);
        }
        // Catch-up reads forward from the cursor; everything else reads back from the newest.
        let newest_first = page.after.is_none();
        let docs: Vec<MessageDoc> = all(self
            .messages
            .find(filter)
            .sort(doc! { "_id": if newest_first { -1 } else { 1 } })
            .limit(i64::from(page.limit))
            .await)
        .await?;
        let mut messages = docs
            .into_iter()
            .map(Message::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        if newest_first {
            messages.reverse();
        }
        Ok(messages)
    }

    async fn create_conversation(&self, conversation: &Conversation) -> Result<(), StoreError> {
        self.insert_conversation(conversation).await
    }

    async fn conversation(&self, id: ConversationId) -> Result<Option<Conversation>, StoreError> {
        self.load_conversation(&id.to_string()).await
    }

    async fn set_title(&self, id: ConversationId, title: &Title) -> Result<bool, StoreError> {
        self.rename(&id.to_string(), title).await
    }

    async fn add_member(&self, id: ConversationId, member: &Member) -> Result<bool, StoreError> {
        self.insert_member(&id.to_string(), member).await
    }

    async fn remove_member(
        &self,
        id: ConversationId,
        user: UserId,
    ) -> Result<Option<Conversation>, StoreError> {
        let id = id.to_string();
        let Some(before) = self.load_conversation(&id).await? else {
            return Ok(None);
        };
        if !self.leave(&id, &user.to_string()).await? {
            return Ok(None);
        }
        // The last member out deleted the group: to the caller it is left with nobody.
        Ok(Some(self.load_conversation(&id).await?.unwrap_or(
            Conversation {
                members: Vec::new(),
                ..before
            },
        )))
    }

    async fn conversations_of(
        &self,
        user: UserId,
        before: Option<MessageId>,
        limit: u32,
    ) -> Result<Vec<ConversationSummary>, StoreError> {
        self.summaries(user, before, limit).await
    }

    async fn mark_read(
        &self,
        id: ConversationId,
        user: UserId,
        upto: MessageId,
    ) -> Result<Option<MessageId>, StoreError> {
        self.move_read_mark(&id.to_string(), &user.to_string(), upto)
            .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        within(PING_DEADLINE, async {
            self.database
                .run_command(doc! { "ping": 1 })
                .await
                .map_err(classify)
        })
        .await?;
        if super::full::is_full() {
            // A small write, to learn whether the server has space again.
            self.database
                .collection::<Document>("probe")
                .update_one(
                    doc! { "_id": "readyz" },
                    doc! { "$set": { "at": bson::DateTime::now() } },
                )
                .upsert(true)
                .await
                .map_err(classify)?;
            super::full::cleared();
        }
        Ok(())
    }
}

/// `_id` in `(after, upto]`, either end open when `None` (ids sort as text).
/// Records a cluster writer's insert in slot `at` whose outcome is unknown, for
/// [`Store::settle`]: what earlier inserts of `batch` stored, and what `rest` may have.
fn lost_answer(
    writer: &fencing::Writer,
    at: fencing::Slot,
    batch: &[NewMessage],
    outcomes: &[Option<Result<Inserted, StoreError>>],
    rest: &[usize],
    error: &str,
) -> StoreError {
    writer.unanswered(fencing::Unanswered {
        at,
        stored: (0..batch.len())
            .filter(|&i| matches!(outcomes[i], Some(Ok(Inserted::Stored))))
            .map(|i| batch[i].message.clone())
            .collect(),
        unsure: rest.iter().map(|&i| batch[i].message.clone()).collect(),
    });
    tracing::warn!(
        error,
        "the database's answer to an insert was lost; this node shows nothing new until it \
         knows what was stored"
    );
    StoreError::Unanswered.counted()
}

fn id_range(after: Option<MessageId>, upto: Option<MessageId>) -> Document {
    let mut range = Document::new();
    if let Some(after) = after {
        range.insert("$gt", after.to_string());
    }
    if let Some(upto) = upto {
        range.insert("$lte", upto.to_string());
    }
    range
}

#[async_trait]
impl ClusterLog for MongoStore {
    fn epoch(&self) -> u64 {
        self.writer.as_ref().map_or(0, fencing::Writer::epoch)
    }

    async fn fence(&self, origin: &str, epoch: u64) -> Result<(), StoreError> {
        self.fence_writer(origin, epoch).await
    }

    async fn stored_by(
        &self,
        origin: &str,
        after: MessageId,
        upto: Option<MessageId>,
    ) -> Result<Vec<Message>, StoreError> {
        let range = id_range(Some(after), upto);
        self.find_messages(doc! { "origin": origin, "_id": range })
            .await
    }

    async fn awaiting_reply(
        &self,
        origin: &str,
        since: MessageId,
        upto: Option<MessageId>,
    ) -> Result<Vec<Message>, StoreError> {
        let range = id_range(Some(since), upto);
        self.find_messages(doc! { "origin": origin, "_id": range, "awaits_reply": true })
            .await
    }
}

/// `TEST_MONGODB_URI` and settings for a fresh database on it; `None` when it is unset (the
/// MongoDB tests then pass without running, as on a machine without one).
#[cfg(test)]
fn fresh_test_settings() -> Option<(String, crate::config::MongoSettings)> {
    let uri = palaver_test_support::test_mongodb_uri()?;
    let settings = crate::config::MongoSettings {
        uri: crate::config::MongoUri::parse(&uri).expect("TEST_MONGODB_URI is a MongoDB URI"),
        database: Some(palaver_test_support::fresh_database_name()),
    };
    Some((uri, settings))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use mongodb::event::EventHandler;
    use mongodb::event::command::CommandEvent;

    use super::*;
    use crate::domain::{Content, MessageKind};

    type Commands = Arc<Mutex<Vec<String>>>;

    /// `<command> <collection>` of each command the driver sends, in order.
    fn recorder() -> (Commands, EventHandler<CommandEvent>) {
        let seen: Commands = Arc::default();
        let sink = seen.clone();
        let handler = EventHandler::callback(move |event: CommandEvent| {
            if let CommandEvent::Started(started) = event {
                let target = started
                    .command
                    .get_str(&started.command_name)
                    .unwrap_or_default();
                crate::sync::lock(&sink).push(format!("{} {target}", started.command_name));
            }
        });
        (seen, handler)
    }

    fn taken(seen: &Commands) -> Vec<String> {
        std::mem::take(&mut *crate::sync::lock(seen))
    }

    /// The MongoDB perf guard (issue 21), a count like tests/api/metrics.rs's for the store:
    /// the commands one send costs on the way to "sent", and the one touch after it. A change
    /// that puts a database hop on the send path, or back in front of the answer, fails here
    /// and names it.
    #[tokio::test]
    async fn one_send_costs_two_commands_before_sent_and_one_touch_after() {
        let Some((_, settings)) = super::fresh_test_settings() else {
            return;
        };
        let (seen, handler) = recorder();
        let store = MongoStore::connect_observed(&settings, Some(handler))
            .await
            .expect("connect");
        let (ada, grace) = (UserId::new(), UserId::new());
        for (id, email) in [(ada, "ada@example.com"), (grace, "grace@example.com")] {
            let user = NewUser {
                id,
                email: Email::parse(email).expect("email"),
                password_hash: "$argon2id$x".into(),
            };
            store.create_user(user).await.expect("user");
        }
        let send = |text: &str| NewMessage {
            message: Message::new(
                ada,
                grace,
                Content::parse(text.to_owned()).expect("content"),
                MessageKind::User,
            ),
            idempotency_key: None,
            awaits_reply: false,
        };
        // The pair's first message creates their conversation and its members.
        let stored = |outcomes: Vec<Result<Inserted, StoreError>>| {
            let outcomes: Vec<_> = outcomes.into_iter().map(|o| o.expect("stored")).collect();
            assert_eq!(outcomes, vec![Inserted::Stored]);
        };
        stored(store.insert_messages(&[send("first")]).await.expect("send"));
        store.touches.settled().await;
        taken(&seen);

        stored(store.insert_messages(&[send("next")]).await.expect("send"));
        let before_sent = taken(&seen);
        store.touches.settled().await;
        let after_sent = taken(&seen);
        assert_eq!(
            (before_sent, after_sent),
            (
                vec!["find users".to_owned(), "insert messages".to_owned()],
                vec!["update conversations".to_owned()],
            ),
            "MongoDB commands for one send (left: now; right: the budget): before the answer, \
             the existence check and the insert; after it, one touch of an existing conversation"
        );
        store.database().drop().await.expect("drop");
    }
}
