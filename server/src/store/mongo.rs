//! The production option: MongoDB (6+, Atlas, or a MongoDB-wire server such as FerretDB),
//! used when `MONGODB_URI` is set.
//!
//! It keeps to what every MongoDB-wire server offers: no multi-document transactions and no
//! change streams. The [`super::Store`] contract still holds because the one message writer
//! (`messaging::Messenger`) already serialises inserts, and a status change is a single
//! `findAndModify`.

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

use super::{Credentials, NewUser, Store, StoreError, User, conversation_key};
use crate::config::MongoSettings;
use crate::domain::{Email, Message, MessageId, MessageKind, MessagePage, Status, UserId};

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
        }
    }

    /// The database this store writes to (tests drop it afterwards).
    pub fn database(&self) -> &Database {
        &self.database
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
    if unreachable {
        StoreError::Unavailable(describe(&err))
    } else {
        StoreError::Internal(err.into())
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
    StoreError::Internal(anyhow!("stored {what} {id} is corrupt: {problem}"))
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
                Ok(Credentials {
                    user: User::try_from(doc)?,
                    password_hash,
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

    /// One ordered `insertMany`. Without transactions a batch is not all-or-nothing: if the
    /// database fails half-way, the senders get an error although the first messages were
    /// stored (they show in history; the writer never reuses their ids).
    async fn insert_messages(&self, messages: &[Message]) -> Result<(), StoreError> {
        if messages.is_empty() {
            return Ok(());
        }
        self.messages
            .insert_many(messages.iter().map(MessageDoc::from))
            .ordered(true)
            .await
            .map_err(classify)?;
        Ok(())
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
        let mut id_range = Document::new();
        if let Some(before) = page.before {
            id_range.insert("$lt", before.to_string());
        }
        if let Some(after) = page.after {
            id_range.insert("$gt", after.to_string());
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
