//! Opening a [`MongoStore`]: the client options (timeouts short enough for a prompt 503, a
//! durable write concern unless the URI sets one), which database to use, the start-up check
//! and its one-line error that never shows the password, and the indexes, created idempotently
//! on every start.

use std::time::Duration;

use anyhow::anyhow;
use mongodb::bson::{Document, doc};
use mongodb::error::Error as MongoError;
use mongodb::event::EventHandler;
use mongodb::event::command::CommandEvent;
use mongodb::options::{Acknowledgment, ClientOptions, IndexOptions, WriteConcern};
use mongodb::{Client, Database, IndexModel};

use super::MongoStore;
use super::errors::describe;
use crate::config::MongoSettings;

/// The database when neither the settings nor the URI's path name one.
const DEFAULT_DATABASE: &str = "palaver";

/// How long an operation waits for a reachable server before failing, unless the URI says
/// otherwise (`serverSelectionTimeoutMS`, `connectTimeoutMS`). The driver's 30 s default would
/// hold every request of an outage for half a minute; a prompt 503 is more useful.
const SELECTION_TIMEOUT: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Start-up gives up after this long even if, say, an SRV lookup hangs.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

impl MongoStore {
    /// Connects, checks the server answers and creates the indexes (idempotently). Fails within
    /// a few seconds with an error that names `MONGODB_URI` and never shows its password.
    pub async fn connect(settings: &MongoSettings) -> anyhow::Result<Self> {
        Self::connect_observed(settings, None).await
    }

    /// `connect`, with `commands` told of every command the driver sends (tests count them).
    pub(super) async fn connect_observed(
        settings: &MongoSettings,
        commands: Option<EventHandler<CommandEvent>>,
    ) -> anyhow::Result<Self> {
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
            options.command_event_handler = commands;
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
        let connecting = async {
            let store = connecting.await.map_err(|e| describe(&e))?;
            store
                .give_direct_conversations_ids()
                .await
                .map_err(|e| format!("giving conversations their ids: {e}"))?;
            Ok::<_, String>(store)
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
            Ok(Err(e)) => uri.scrub(&e),
            Err(_) => format!("no answer within {}s", STARTUP_TIMEOUT.as_secs()),
        };
        Err(anyhow!(
            "MONGODB_URI {}: cannot use the database: {failure}",
            uri.redacted()
        ))
    }

    fn new(database: Database) -> Self {
        let conversations = database.collection("conversations");
        let members = database.collection("members");
        let messages = database.collection("messages");
        Self {
            users: database.collection("users"),
            touches: super::touches::Touches::start(
                conversations.clone(),
                members.clone(),
                messages.clone(),
            ),
            messages,
            conversations,
            members,
            database,
            writer: None,
        }
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
            (
                "members",
                named(doc! { "user": 1 }, "member_by_user", false),
            ),
            (
                "members",
                named(
                    doc! { "conversation": 1, "joined": 1 },
                    "member_by_conversation",
                    false,
                ),
            ),
            (
                "conversations",
                named(doc! { "activity": -1 }, "conversation_by_activity", false),
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
