//! The embedded default: one SQLite file in WAL mode, reached through a small connection pool
//! whose calls run on tokio's blocking threads, never on the async workers.

use std::path::Path;

use anyhow::{Context, anyhow};
use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use deadpool_sqlite::rusqlite::{
    self, Connection, ErrorCode, OptionalExtension, Transaction, TransactionBehavior,
    params_from_iter,
};
use deadpool_sqlite::{Config, Hook, HookError, Pool, Runtime};

use super::{
    Credentials, Inserted, NewMessage, NewUser, Store, StoreError, User, conversation_key,
};
use crate::config::SqliteSynchronous;
use crate::domain::{
    Email, IDEMPOTENCY_WINDOW, Message, MessageId, MessageKind, MessagePage, ResponderChoice,
    Status, UserId,
};

/// Applied in order; `PRAGMA user_version` records how many have run.
const MIGRATIONS: &[&str] = &[
    r#"
    CREATE TABLE users (
        id            TEXT PRIMARY KEY,
        email         TEXT NOT NULL UNIQUE COLLATE NOCASE,
        password_hash TEXT NOT NULL,
        status        TEXT NOT NULL DEFAULT 'AVAILABLE' CHECK (status IN ('AVAILABLE', 'BUSY')),
        created_at    TEXT NOT NULL
    );
    CREATE TABLE messages (
        id           TEXT PRIMARY KEY,
        sender       TEXT NOT NULL REFERENCES users(id),
        recipient    TEXT NOT NULL REFERENCES users(id),
        conversation TEXT NOT NULL,
        content      TEXT NOT NULL,
        sent_at      TEXT NOT NULL,
        kind         TEXT NOT NULL
    );
    CREATE INDEX messages_by_sender ON messages (sender, id);
    CREATE INDEX messages_by_recipient ON messages (recipient, id);
    CREATE INDEX messages_by_conversation ON messages (conversation, id);
"#,
    r#"
    ALTER TABLE users ADD COLUMN token_version INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE messages ADD COLUMN idempotency TEXT;
    CREATE INDEX messages_by_idempotency ON messages (idempotency)
        WHERE idempotency IS NOT NULL;
"#,
    // The user's responder choice, as JSON ({"plugin", "config"}); NULL until they choose.
    r#"
    ALTER TABLE users ADD COLUMN responder TEXT;
"#,
];

/// `synchronous` comes from the configuration (FULL by default: a message is on disk before the
/// API says it was sent). `wal_autocheckpoint = 0`: the commit that crosses the threshold would
/// otherwise pay for the checkpoint (tens of ms of fsync); a background task checkpoints instead.
fn connection_pragmas(synchronous: SqliteSynchronous) -> String {
    format!(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = {};
         PRAGMA foreign_keys = ON;
         PRAGMA busy_timeout = 5000;
         PRAGMA wal_autocheckpoint = 0;",
        synchronous.as_pragma()
    )
}

/// How often the background task copies the WAL back into the database file.
const CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

pub struct SqliteStore {
    pool: Pool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and brings its schema up to date.
    pub async fn open(path: &Path, synchronous: SqliteSynchronous) -> anyhow::Result<Self> {
        make_private(path).with_context(|| format!("securing {}", path.display()))?;
        let pragmas = connection_pragmas(synchronous);
        let pool_size = std::thread::available_parallelism().map_or(4, |n| n.get() * 2);
        let pool = Config::new(path)
            .builder(Runtime::Tokio1)
            .context("configuring the SQLite pool")?
            .max_size(pool_size)
            .post_create(Hook::async_fn(move |conn, _| {
                let pragmas = pragmas.clone();
                Box::pin(async move {
                    conn.interact(move |conn| conn.execute_batch(&pragmas))
                        .await
                        .map_err(|e| HookError::message(e.to_string()))?
                        .map_err(HookError::Backend)
                })
            }))
            .build()
            .context("creating the SQLite pool")?;
        let store = Self { pool };
        store
            .with_conn(migrate)
            .await
            .with_context(|| format!("opening the database {}", path.display()))?;
        tokio::spawn(checkpoint_periodically(store.pool.clone()));
        tracing::info!(path = %path.display(), "storing in SQLite");
        Ok(store)
    }

    async fn with_conn<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let conn = self
            .pool
            .get()
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()).counted())?;
        conn.interact(f)
            .await
            .map_err(|e| StoreError::Internal(anyhow!("SQLite task failed: {e}")))
            .and_then(|result| result)
            .map_err(StoreError::counted)
    }
}

/// Messages and password hashes are nobody else's business: the database file is created
/// readable by the server's user only (SQLite gives its -wal and -shm files the database file's
/// mode), and an existing one made so.
fn make_private(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let file = std::path::PathBuf::from(format!("{}{suffix}", path.display()));
            match std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// PASSIVE checkpoints never block writers or readers; they run until the store is dropped.
async fn checkpoint_periodically(pool: Pool) {
    let mut ticker = tokio::time::interval(CHECKPOINT_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if pool.is_closed() {
            break;
        }
        let Ok(conn) = pool.get().await else { continue };
        let checkpoint = conn
            .interact(|conn| conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())))
            .await;
        if let Ok(Err(e)) = checkpoint {
            tracing::warn!(error = %e, "WAL checkpoint failed");
        }
    }
}

impl Drop for SqliteStore {
    /// Closes the pool for every clone, which also ends the checkpoint task.
    fn drop(&mut self) {
        self.pool.close();
    }
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let applied: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(internal)?;
    if applied < 0 || applied as usize > MIGRATIONS.len() {
        return Err(StoreError::Internal(anyhow!(
            "the database schema (version {applied}) is newer than this server understands"
        )));
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(applied as usize) {
        let tx = write_transaction(conn)?;
        tx.execute_batch(sql).map_err(internal)?;
        tx.pragma_update(None, "user_version", (index + 1) as i64)
            .map_err(internal)?;
        tx.commit().map_err(internal)?;
    }
    Ok(())
}

/// Every transaction that writes takes the write lock when it begins (`BEGIN IMMEDIATE`), so a
/// busy database makes it wait (`busy_timeout`). A deferred one that reads first would take its
/// snapshot then, and when another connection (an account change, a status change) commits
/// before its first write, SQLite fails that write at once with "database is locked"
/// (`SQLITE_BUSY_SNAPSHOT`): no wait can help a stale snapshot. That failed whole writer
/// batches of other people's messages.
fn write_transaction(conn: &mut Connection) -> Result<Transaction<'_>, StoreError> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(internal)
}

fn internal(err: rusqlite::Error) -> StoreError {
    StoreError::Internal(err.into())
}

fn is_unique_violation(err: &rusqlite::Error) -> bool {
    matches!(err, rusqlite::Error::SqliteFailure(e, _) if e.code == ErrorCode::ConstraintViolation)
}

fn is_foreign_key_violation(err: &rusqlite::Error) -> bool {
    matches!(err, rusqlite::Error::SqliteFailure(e, _)
        if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY)
}

/// Converts a column that only this store writes; a bad value means a corrupted row.
fn decode<T, E: std::fmt::Display>(
    index: usize,
    parsed: Result<T, E>,
) -> Result<T, rusqlite::Error> {
    parsed.map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(
            index,
            rusqlite::types::Type::Text,
            anyhow!("{e}").into(),
        )
    })
}

fn user_from_row(row: &rusqlite::Row<'_>) -> Result<User, rusqlite::Error> {
    Ok(User {
        id: decode(0, UserId::parse(&row.get::<_, String>(0)?))?,
        email: decode(1, Email::parse(&row.get::<_, String>(1)?))?,
        status: decode(2, Status::parse(&row.get::<_, String>(2)?))?,
    })
}

fn message_from_row(row: &rusqlite::Row<'_>) -> Result<Message, rusqlite::Error> {
    Ok(Message {
        id: decode(0, MessageId::parse(&row.get::<_, String>(0)?))?,
        sender: decode(1, UserId::parse(&row.get::<_, String>(1)?))?,
        recipient: decode(2, UserId::parse(&row.get::<_, String>(2)?))?,
        content: row.get(3)?,
        sent_at: decode(
            4,
            DateTime::parse_from_rfc3339(&row.get::<_, String>(4)?).map(|t| t.with_timezone(&Utc)),
        )?,
        kind: decode(5, MessageKind::parse(&row.get::<_, String>(5)?))?,
    })
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_user(&self, user: NewUser) -> Result<User, StoreError> {
        self.with_conn(move |conn| {
            let inserted = conn.execute(
                "INSERT INTO users (id, email, password_hash, status, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                (
                    user.id.to_string(),
                    user.email.as_str(),
                    &user.password_hash,
                    Status::default().as_str(),
                    rfc3339(Utc::now()),
                ),
            );
            match inserted {
                Ok(_) => Ok(User {
                    id: user.id,
                    email: user.email,
                    status: Status::default(),
                }),
                Err(e) if is_unique_violation(&e) => Err(StoreError::EmailTaken),
                Err(e) => Err(internal(e)),
            }
        })
        .await
    }

    async fn user_by_id(&self, id: UserId) -> Result<Option<User>, StoreError> {
        self.with_conn(move |conn| {
            conn.query_row(
                "SELECT id, email, status FROM users WHERE id = ?1",
                [id.to_string()],
                user_from_row,
            )
            .optional()
            .map_err(internal)
        })
        .await
    }

    async fn user_by_email(&self, email: &Email) -> Result<Option<User>, StoreError> {
        let email = email.clone();
        self.with_conn(move |conn| {
            conn.query_row(
                "SELECT id, email, status FROM users WHERE email = ?1",
                [email.as_str()],
                user_from_row,
            )
            .optional()
            .map_err(internal)
        })
        .await
    }

    async fn credentials_by_email(&self, email: &Email) -> Result<Option<Credentials>, StoreError> {
        let email = email.clone();
        self.with_conn(move |conn| {
            conn.query_row(
                "SELECT id, email, status, password_hash, token_version FROM users
                 WHERE email = ?1",
                [email.as_str()],
                |row| {
                    Ok(Credentials {
                        user: user_from_row(row)?,
                        password_hash: row.get(3)?,
                        token_version: row.get::<_, i64>(4)?.max(0) as u64,
                    })
                },
            )
            .optional()
            .map_err(internal)
        })
        .await
    }

    async fn set_status(&self, id: UserId, status: Status) -> Result<Option<Status>, StoreError> {
        self.with_conn(move |conn| {
            let tx = write_transaction(conn)?;
            let previous = tx
                .query_row(
                    "SELECT status FROM users WHERE id = ?1",
                    [id.to_string()],
                    |row| decode(0, Status::parse(&row.get::<_, String>(0)?)),
                )
                .optional()
                .map_err(internal)?;
            if previous.is_some() {
                tx.execute(
                    "UPDATE users SET status = ?1 WHERE id = ?2",
                    (status.as_str(), id.to_string()),
                )
                .map_err(internal)?;
            }
            tx.commit().map_err(internal)?;
            Ok(previous)
        })
        .await
    }

    async fn insert_messages(
        &self,
        batch: &[NewMessage],
    ) -> Result<Vec<Result<Inserted, StoreError>>, StoreError> {
        let batch = batch.to_vec();
        self.with_conn(move |conn| {
            let cutoff = rfc3339(Utc::now() - IDEMPOTENCY_WINDOW);
            // One transaction, so a batch costs one fsync however many messages it holds. A
            // failed INSERT undoes only itself (SQLite's statements are atomic and foreign keys
            // are checked immediately), so one bad message leaves the others in the batch.
            let tx = write_transaction(conn)?;
            let mut outcomes = Vec::with_capacity(batch.len());
            {
                let mut earlier = tx
                    .prepare_cached(
                        "SELECT id, sender, recipient, content, sent_at, kind FROM messages
                         WHERE idempotency = ?1 AND sent_at >= ?2 ORDER BY id LIMIT 1",
                    )
                    .map_err(internal)?;
                let mut insert = tx
                    .prepare_cached(
                        "INSERT INTO messages
                           (id, sender, recipient, conversation, content, sent_at, kind,
                            idempotency)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    )
                    .map_err(internal)?;
                for new in &batch {
                    let message = &new.message;
                    let scoped = new
                        .idempotency_key
                        .as_ref()
                        .map(|k| k.scoped(message.sender));
                    if let Some(scoped) = &scoped {
                        let replay = earlier
                            .query_row((scoped, &cutoff), message_from_row)
                            .optional()
                            .map_err(internal)?;
                        if let Some(first) = replay {
                            outcomes.push(Ok(Inserted::Replayed(first)));
                            continue;
                        }
                    }
                    let inserted = insert.execute((
                        message.id.to_string(),
                        message.sender.to_string(),
                        message.recipient.to_string(),
                        conversation_key(message.sender, message.recipient),
                        &message.content,
                        rfc3339(message.sent_at),
                        message.kind.as_str(),
                        scoped,
                    ));
                    outcomes.push(match inserted {
                        Ok(_) => Ok(Inserted::Stored),
                        Err(e) if is_foreign_key_violation(&e) => Err(StoreError::UnknownUser),
                        Err(e) if is_unique_violation(&e) => Err(internal(e)),
                        Err(e) => return Err(internal(e)),
                    });
                }
            }
            tx.commit().map_err(internal)?;
            Ok(outcomes)
        })
        .await
    }

    async fn token_version(&self, id: UserId) -> Result<Option<u64>, StoreError> {
        self.with_conn(move |conn| {
            conn.query_row(
                "SELECT token_version FROM users WHERE id = ?1",
                [id.to_string()],
                |row| row.get::<_, i64>(0),
            )
            .optional()
            .map(|version| version.map(|v| v.max(0) as u64))
            .map_err(internal)
        })
        .await
    }

    async fn revoke_tokens(
        &self,
        id: UserId,
        new_password_hash: Option<String>,
    ) -> Result<Option<u64>, StoreError> {
        self.with_conn(move |conn| {
            conn.query_row(
                "UPDATE users SET token_version = token_version + 1,
                                  password_hash = coalesce(?2, password_hash)
                 WHERE id = ?1 RETURNING token_version",
                (id.to_string(), new_password_hash),
                |row| row.get::<_, i64>(0),
            )
            .optional()
            .map(|version| version.map(|v| v.max(0) as u64))
            .map_err(internal)
        })
        .await
    }

    async fn password_hash(&self, id: UserId) -> Result<Option<String>, StoreError> {
        self.with_conn(move |conn| {
            conn.query_row(
                "SELECT password_hash FROM users WHERE id = ?1",
                [id.to_string()],
                |row| row.get(0),
            )
            .optional()
            .map_err(internal)
        })
        .await
    }

    async fn responder_choice(&self, id: UserId) -> Result<Option<ResponderChoice>, StoreError> {
        self.with_conn(move |conn| {
            let stored: Option<Option<String>> = conn
                .query_row(
                    "SELECT responder FROM users WHERE id = ?1",
                    [id.to_string()],
                    |row| row.get(0),
                )
                .optional()
                .map_err(internal)?;
            stored
                .flatten()
                .map(|json| {
                    serde_json::from_str(&json).map_err(|e| {
                        StoreError::Internal(anyhow!("stored responder of {id} is corrupt: {e}"))
                    })
                })
                .transpose()
        })
        .await
    }

    async fn set_responder_choice(
        &self,
        id: UserId,
        choice: &ResponderChoice,
    ) -> Result<bool, StoreError> {
        let json = serde_json::to_string(choice).map_err(|e| StoreError::Internal(e.into()))?;
        self.with_conn(move |conn| {
            let updated = conn
                .execute(
                    "UPDATE users SET responder = ?1 WHERE id = ?2",
                    (json, id.to_string()),
                )
                .map_err(internal)?;
            Ok(updated > 0)
        })
        .await
    }

    async fn delete_user(&self, id: UserId) -> Result<bool, StoreError> {
        self.with_conn(move |conn| {
            let id = id.to_string();
            let tx = write_transaction(conn)?;
            tx.execute(
                "DELETE FROM messages WHERE sender = ?1 OR recipient = ?1",
                [&id],
            )
            .map_err(internal)?;
            let deleted = tx
                .execute("DELETE FROM users WHERE id = ?1", [&id])
                .map_err(internal)?;
            tx.commit().map_err(internal)?;
            Ok(deleted > 0)
        })
        .await
    }

    async fn conversation_peers(&self, user: UserId) -> Result<Vec<UserId>, StoreError> {
        self.with_conn(move |conn| {
            let mut query = conn
                .prepare_cached(
                    "SELECT recipient FROM messages WHERE sender = ?1 AND recipient != ?1
                     UNION
                     SELECT sender FROM messages WHERE recipient = ?1 AND sender != ?1",
                )
                .map_err(internal)?;
            query
                .query_map([user.to_string()], |row| {
                    decode(0, UserId::parse(&row.get::<_, String>(0)?))
                })
                .map_err(internal)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(internal)
        })
        .await
    }

    async fn list_messages(
        &self,
        user: UserId,
        page: &MessagePage,
    ) -> Result<Vec<Message>, StoreError> {
        let page = page.clone();
        self.with_conn(move |conn| {
            let mut sql = String::from(
                "SELECT id, sender, recipient, content, sent_at, kind FROM messages WHERE ",
            );
            let mut args: Vec<String> = Vec::new();
            match page.with {
                Some(peer) => {
                    sql.push_str("conversation = ?");
                    args.push(conversation_key(user, peer));
                }
                None => {
                    sql.push_str("(sender = ? OR recipient = ?)");
                    args.push(user.to_string());
                    args.push(user.to_string());
                }
            }
            if let Some(before) = page.before {
                sql.push_str(" AND id < ?");
                args.push(before.to_string());
            }
            if let Some(after) = page.after {
                sql.push_str(" AND id > ?");
                args.push(after.to_string());
            }
            if let Some(upto) = page.upto {
                sql.push_str(" AND id <= ?");
                args.push(upto.to_string());
            }
            // Catch-up reads forward from the cursor; everything else reads back from the newest.
            let newest_first = page.after.is_none();
            sql.push_str(if newest_first {
                " ORDER BY id DESC"
            } else {
                " ORDER BY id ASC"
            });
            sql.push_str(&format!(" LIMIT {}", page.limit));

            let mut statement = conn.prepare_cached(&sql).map_err(internal)?;
            let mut messages = statement
                .query_map(params_from_iter(args), message_from_row)
                .map_err(internal)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(internal)?;
            if newest_first {
                messages.reverse();
            }
            Ok(messages)
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.with_conn(|conn| conn.query_row("SELECT 1", [], |_| Ok(())).map_err(internal))
            .await
    }
}
