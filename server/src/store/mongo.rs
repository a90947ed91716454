//! The production option: MongoDB (6+, Atlas, or a MongoDB-wire server such as FerretDB),
//! used when `MONGODB_URI` is set.
//!
//! It keeps to what every MongoDB-wire server offers: no multi-document transactions and no
//! change streams. The [`super::Store`] contract still holds because the one message writer
//! (`messaging::Writer`) already serialises inserts, and a status change is a single
//! `findAndModify`.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::anyhow;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use mongodb::bson::{self, Bson, Document, doc};
use mongodb::error::{Error as MongoError, ErrorKind, WriteFailure};
use mongodb::options::{Acknowledgment, ClientOptions, IndexOptions, ReturnDocument, WriteConcern};
use mongodb::{Client, Collection, Database, IndexModel};
use serde::{Deserialize, Serialize};

use super::{
    ClusterLog, Credentials, Inserted, NewMessage, NewUser, Store, StoreError, User,
    conversation_key,
};
use crate::config::MongoSettings;
use crate::domain::{
    Email, IDEMPOTENCY_WINDOW, Message, MessageId, MessageKind, MessagePage, ResponderChoice,
    Status, UserId,
};

/// The database when neither the settings nor the URI's path name one.
const DEFAULT_DATABASE: &str = "palaver";

/// How long an operation waits for a reachable server before failing, unless the URI says
/// otherwise (`serverSelectionTimeoutMS`, `connectTimeoutMS`). The driver's 30 s default would
/// hold every request of an outage for half a minute; a prompt 503 is more useful.
const SELECTION_TIMEOUT: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Start-up gives up after this long even if, say, an SRV lookup hangs.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// MongoDB's "duplicate key" error code.
const DUPLICATE_KEY: i32 = 11000;

pub struct MongoStore {
    database: Database,
    users: Collection<UserDoc>,
    messages: Collection<MessageDoc>,
    /// This node's name in a cluster, kept on every message it stores.
    origin: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct UserDoc {
    #[serde(rename = "_id")]
    id: String,
    /// Normalised (trimmed, lower-case) by `Email::parse`, so a plain unique index suffices.
    email: String,
    password_hash: String,
    status: String,
    created_at: bson::DateTime,
    /// See `Store::revoke_tokens`; absent in documents from before it existed.
    #[serde(default)]
    token_version: i64,
    /// Absent until the user chooses a responder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    responder: Option<ResponderChoice>,
}

#[derive(Debug, Serialize, Deserialize)]
struct MessageDoc {
    /// The UUIDv7 text: it sorts in time order, so `_id` is also the paging cursor.
    #[serde(rename = "_id")]
    id: String,
    sender: String,
    recipient: String,
    /// `[sender, recipient]`: one multikey index serves "all of a user's messages".
    participants: [String; 2],
    /// Both directions of one conversation share this key (see `conversation_key`).
    conversation: String,
    content: String,
    sent_at: bson::DateTime,
    kind: String,
    /// `<sender>/<key>` when the send carried an idempotency key (see `IdempotencyKey`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    idempotency: Option<String>,
    /// The node whose writer stored it (cluster mode), so that other nodes can recover what a
    /// node committed but could not announce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    origin: Option<String>,
    /// The recipient was BUSY: an auto-reply is owed (see `NewMessage::awaits_reply`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    awaits_reply: bool,
}

impl MongoStore {
    /// Connects, checks the server answers and creates the indexes (idempotently). Fails within
    /// a few seconds with an error that names `MONGODB_URI` and never shows its password.
    pub async fn connect(settings: &MongoSettings) -> anyhow::Result<Self> {
        let uri = &settings.uri;
        let connecting = async {
            let mut options = ClientOptions::parse(uri.expose()).await?;
            options.server_selection_timeout = Some(
                options
                    .server_selection_timeout
                    .unwrap_or(SELECTION_TIMEOUT),
            );
            options.connect_timeout = Some(options.connect_timeout.unwrap_or(CONNECT_TIMEOUT));
            options.app_name.get_or_insert_with(|| "palaver".to_owned());
            // A send is answered once it is durable: journaled on a majority, unless the
            // operator chose another write concern in the URI.
            options.write_concern.get_or_insert_with(|| {
                WriteConcern::builder()
                    .w(Acknowledgment::Majority)
                    .journal(true)
                    .build()
            });
            let name = settings
                .database
                .clone()
                .or_else(|| options.default_database.clone())
                .unwrap_or_else(|| DEFAULT_DATABASE.to_owned());
            let client = Client::with_options(options)?;
            let store = Self::new(client.database(&name));
            store.database.run_command(doc! { "ping": 1 }).await?;
            store.create_indexes().await?;
            Ok::<_, MongoError>(store)
        };
        let outcome = tokio::time::timeout(STARTUP_TIMEOUT, connecting).await;
        let failure = match outcome {
            Ok(Ok(store)) => {
                tracing::info!(
                    uri = %uri.redacted(),
                    database = store.database.name(),
                    "storing in MongoDB"
                );
                return Ok(store);
            }
            Ok(Err(e)) => uri.scrub(&describe(&e)),
            Err(_) => format!("no answer within {}s", STARTUP_TIMEOUT.as_secs()),
        };
        Err(anyhow!(
            "MONGODB_URI {}: cannot use the database: {failure}",
            uri.redacted()
        ))
    }

    fn new(database: Database) -> Self {
        Self {
            users: database.collection("users"),
            messages: database.collection("messages"),
            database,
            origin: None,
        }
    }

    /// Marks every message this store writes from now on as stored by cluster node `node`.
    pub fn with_origin(mut self, node: String) -> Self {
        self.origin = Some(node);
        self
    }

    async fn find_messages(&self, filter: Document) -> Result<Vec<Message>, StoreError> {
        let docs: Vec<MessageDoc> = self
            .messages
            .find(filter)
            .sort(doc! { "_id": 1 })
            .await
            .map_err(classify)?
            .try_collect()
            .await
            .map_err(classify)?;
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
            .flat_map(|&i| [batch[i].message.sender, batch[i].message.recipient])
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

    async fn create_indexes(&self) -> Result<(), MongoError> {
        let named = |keys: Document, name: &str, unique: bool| {
            IndexModel::builder()
                .keys(keys)
                .options(
                    IndexOptions::builder()
                        .name(name.to_owned())
                        .unique(unique.then_some(true))
                        .build(),
                )
                .build()
        };
        // One index per `createIndexes` command: FerretDB 1.24 drops the connection when a
        // command lists several indexes that all exist already (every restart).
        let indexes = [
            ("users", named(doc! { "email": 1 }, "email_unique", true)),
            (
                "messages",
                named(
                    doc! { "conversation": 1, "_id": 1 },
                    "conversation_by_id",
                    false,
                ),
            ),
            (
                "messages",
                named(
                    doc! { "participants": 1, "_id": 1 },
                    "participant_by_id",
                    false,
                ),
            ),
            (
                "messages",
                named(doc! { "idempotency": 1 }, "idempotency_key", false),
            ),
            (
                "messages",
                named(doc! { "origin": 1, "_id": 1 }, "origin_by_id", false),
            ),
        ];
        for (collection, index) in indexes {
            self.database
                .collection::<Document>(collection)
                .create_index(index)
                .await?;
        }
        Ok(())
    }
}

/// The driver's message without its debugging tail (labels, source, raw server response), on
/// one line: server descriptions can span several.
fn describe(err: &MongoError) -> String {
    one_line(&err.kind.to_string())
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Unreachable (server selection timed out, connection lost, pool cleared): a 503 that heals by
/// itself once the database is back. Anything else is a bug or a data problem.
fn classify(err: MongoError) -> StoreError {
    let unreachable = matches!(
        err.kind.as_ref(),
        ErrorKind::ServerSelection { .. }
            | ErrorKind::Io(_)
            | ErrorKind::ConnectionPoolCleared { .. }
            | ErrorKind::DnsResolve { .. }
    ) || err.contains_label(mongodb::error::RETRYABLE_WRITE_ERROR);
    let error = if unreachable {
        StoreError::Unavailable(describe(&err))
    } else {
        StoreError::Internal(err.into())
    };
    error.counted()
}

/// The position and reason of the one document an ordered `insertMany` refused (the ones before
/// it are stored), unless the failure was the database's rather than the document's.
fn refused_one(err: &MongoError) -> Option<(usize, String)> {
    match err.kind.as_ref() {
        ErrorKind::InsertMany(e) if e.write_concern_error.is_none() => {
            let first = e.write_errors.as_ref()?.first()?;
            Some((first.index, first.message.clone()))
        }
        _ => None,
    }
}

fn is_duplicate_key(err: &MongoError) -> bool {
    match err.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(e)) => e.code == DUPLICATE_KEY,
        ErrorKind::InsertMany(e) => e
            .write_errors
            .iter()
            .flatten()
            .any(|e| e.code == DUPLICATE_KEY),
        ErrorKind::Command(e) => e.code == DUPLICATE_KEY,
        _ => false,
    }
}

/// Documents only this store writes; a field that does not parse means a corrupted document.
fn corrupt(what: &str, id: &str, problem: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(anyhow!("stored {what} {id} is corrupt: {problem}")).counted()
}

impl TryFrom<UserDoc> for User {
    type Error = StoreError;

    fn try_from(doc: UserDoc) -> Result<Self, StoreError> {
        let bad = |e| corrupt("user", &doc.id, e);
        Ok(User {
            id: UserId::parse(&doc.id).map_err(bad)?,
            email: Email::parse(&doc.email).map_err(bad)?,
            status: Status::parse(&doc.status).map_err(bad)?,
        })
    }
}

impl From<&NewMessage> for MessageDoc {
    fn from(new: &NewMessage) -> Self {
        let mut doc = MessageDoc::from(&new.message);
        doc.idempotency = new
            .idempotency_key
            .as_ref()
            .map(|key| key.scoped(new.message.sender));
        doc.awaits_reply = new.awaits_reply;
        doc
    }
}

impl From<&Message> for MessageDoc {
    fn from(message: &Message) -> Self {
        let (sender, recipient) = (message.sender.to_string(), message.recipient.to_string());
        Self {
            id: message.id.to_string(),
            participants: [sender.clone(), recipient.clone()],
            conversation: conversation_key(message.sender, message.recipient),
            sender,
            recipient,
            content: message.content.clone(),
            sent_at: bson::DateTime::from_millis(message.sent_at.timestamp_millis()),
            kind: message.kind.as_str().to_owned(),
            idempotency: None,
            origin: None,
            awaits_reply: false,
        }
    }
}

impl TryFrom<MessageDoc> for Message {
    type Error = StoreError;

    fn try_from(doc: MessageDoc) -> Result<Self, StoreError> {
        let bad = |e| corrupt("message", &doc.id, e);
        let sent_at = DateTime::<Utc>::from_timestamp_millis(doc.sent_at.timestamp_millis())
            .ok_or_else(|| corrupt("message", &doc.id, "timestamp out of range"))?;
        Ok(Message {
            id: MessageId::parse(&doc.id).map_err(bad)?,
            sender: UserId::parse(&doc.sender).map_err(bad)?,
            recipient: UserId::parse(&doc.recipient).map_err(bad)?,
            kind: MessageKind::parse(&doc.kind).map_err(bad)?,
            content: doc.content,
            sent_at,
        })
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
        let earlier = self.earlier_sends(scoped.iter().flatten()).await?;
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
        let existing = self.existing_users(&to_insert, batch).await?;
        to_insert.retain(|&index| {
            let message = &batch[index].message;
            let known = existing.contains(&message.sender.to_string())
                && existing.contains(&message.recipient.to_string());
            if !known {
                outcomes[index] = Some(Err(StoreError::UnknownUser));
            }
            known
        });

        let mut rest = &to_insert[..];
        while !rest.is_empty() {
            let docs = rest.iter().map(|&i| MessageDoc {
                origin: self.origin.clone(),
                ..MessageDoc::from(&batch[i])
            });
            let failure = match self.messages.insert_many(docs).ordered(true).await {
                Ok(_) => {
                    for &i in rest {
                        outcomes[i] = Some(Ok(Inserted::Stored));
                    }
                    break;
                }
                Err(e) => e,
            };
            match refused_one(&failure) {
                // The messages before the refused one are stored; go on after it.
                Some((position, reason)) if position < rest.len() => {
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
        for (index, first) in replays_in_batch {
            outcomes[index] = Some(match &outcomes[first] {
                Some(Ok(_)) => Ok(Inserted::Replayed(batch[first].message.clone())),
                Some(Err(e)) => Err(e.duplicate()),
                None => Err(StoreError::Internal(anyhow!("message outcome missing"))),
            });
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Err(StoreError::Internal(anyhow!("outcome missing")))))
            .collect())
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
            .delete_many(doc! { "participants": &id })
            .await
            .map_err(classify)?;
        Ok(deleted.deleted_count > 0)
    }

    async fn conversation_peers(&self, user: UserId) -> Result<Vec<UserId>, StoreError> {
        let me = user.to_string();
        let values = self
            .messages
            .distinct("participants", doc! { "participants": &me })
            .await
            .map_err(classify)?;
        values
            .into_iter()
            .filter_map(|value| match value {
                Bson::String(id) if id == me => None,
                Bson::String(id) => Some(UserId::parse(&id).map_err(|e| corrupt("peer", &id, e))),
                other => Some(Err(corrupt("peer", &other.to_string(), "not a string"))),
            })
            .collect()
    }

    async fn list_messages(
        &self,
        user: UserId,
        page: &MessagePage,
    ) -> Result<Vec<Message>, StoreError> {
        let mut filter = match page.with {
            Some(peer) => doc! { "conversation": conversation_key(user, peer) },
            None => doc! { "participants": user.to_string() },
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
        let docs: Vec<MessageDoc> = self
            .messages
            .find(filter)
            .sort(doc! { "_id": if newest_first { -1 } else { 1 } })
            .limit(i64::from(page.limit))
            .await
            .map_err(classify)?
            .try_collect()
            .await
            .map_err(classify)?;
        let mut messages = docs
            .into_iter()
            .map(Message::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        if newest_first {
            messages.reverse();
        }
        Ok(messages)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.database
            .run_command(doc! { "ping": 1 })
            .await
            .map(drop)
            .map_err(classify)
    }
}

/// `_id` in `(after, upto]`, either end open when `None` (ids sort as text).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_up_errors_are_one_line() {
        assert_eq!(one_line("a\n  b\tc "), "a b c");
    }

    #[test]
    fn message_documents_round_trip() {
        let message = Message {
            id: MessageId::new(),
            sender: UserId::new(),
            recipient: UserId::new(),
            content: "hello".into(),
            sent_at: DateTime::from_timestamp_millis(1_790_000_000_123).expect("valid"),
            kind: MessageKind::AutoReply,
        };
        let doc = MessageDoc::from(&message);
        assert_eq!(
            doc.participants,
            [message.sender.to_string(), message.recipient.to_string()]
        );
        assert_eq!(Message::try_from(doc).expect("valid"), message);
    }
}
