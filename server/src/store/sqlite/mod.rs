//! The embedded default: one SQLite file in WAL mode, reached through connections that each
//! live on a thread of their own (one writer, a few readers: `threads`), never on the async
//! workers.

mod recent;
mod threads;

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, anyhow};
use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use recent::{Key, RecentPages};
use rusqlite::{
    self, Connection, ErrorCode, OptionalExtension, Transaction, TransactionBehavior,
    params_from_iter,
};
use threads::{Access, Chores, Threads};

use super::{Credentials, Inserted, NewMessage, NewUser, Store, StoreError, User};
use crate::config::SqliteSynchronous;
use crate::domain::{
    Conversation, ConversationId, ConversationKind, ConversationSummary, Email, IDEMPOTENCY_WINDOW,
    Member, Message, MessageId, MessageKind, MessagePage, ResponderChoice, Role, Status, Title,
    UserId,
};

/// One step of the schema's history.
enum Migration {
    Sql(&'static str),
    /// A step SQL alone cannot take (it needs ids computed in Rust).
    Rust(fn(&Transaction<'_>) -> rusqlite::Result<()>),
}

/// Applied in order; `PRAGMA user_version` records how many have run.
const MIGRATIONS: &[Migration] = &[
    Migration::Sql(
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
    ),
    Migration::Sql(
        r#"
    ALTER TABLE users ADD COLUMN token_version INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE messages ADD COLUMN idempotency TEXT;
    CREATE INDEX messages_by_idempotency ON messages (idempotency)
        WHERE idempotency IS NOT NULL;
"#,
    ),
    // The user's responder choice, as JSON ({"plugin", "config"}); NULL until they choose.
    Migration::Sql(
        r#"
    ALTER TABLE users ADD COLUMN responder TEXT;
"#,
    ),
    // Conversations with ids and members (with their read marks). `activity` is the id of the
    // last message, or one drawn at creation: the conversation list's order and cursor.
    // Members keep the order they joined in by rowid.
    Migration::Sql(
        r#"
    CREATE TABLE conversations (
        id         TEXT PRIMARY KEY,
        kind       TEXT NOT NULL CHECK (kind IN ('direct', 'group')),
        title      TEXT,
        created_at TEXT NOT NULL,
        activity   TEXT NOT NULL
    );
    CREATE TABLE members (
        conversation TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
        member       TEXT NOT NULL REFERENCES users(id),
        role         TEXT NOT NULL CHECK (role IN ('owner', 'member')),
        read_upto    TEXT,
        PRIMARY KEY (conversation, member)
    );
    CREATE INDEX members_by_member ON members (member);
"#,
    ),
    // Messages written before conversations had ids carry the pair's key ("low:high"): each
    // pair becomes a direct conversation and its messages take its id.
    Migration::Rust(give_direct_conversations_ids),
    // Group messages have no recipient: the column becomes optional (SQLite rebuilds the table
    // to change a column's constraints).
    Migration::Sql(
        r#"
    CREATE TABLE messages_with_groups (
        id           TEXT PRIMARY KEY,
        sender       TEXT NOT NULL REFERENCES users(id),
        recipient    TEXT REFERENCES users(id),
        conversation TEXT NOT NULL,
        content      TEXT NOT NULL,
        sent_at      TEXT NOT NULL,
        kind         TEXT NOT NULL,
        idempotency  TEXT
    );
    INSERT INTO messages_with_groups
        SELECT id, sender, recipient, conversation, content, sent_at, kind, idempotency
        FROM messages;
    DROP TABLE messages;
    ALTER TABLE messages_with_groups RENAME TO messages;
    CREATE INDEX messages_by_sender ON messages (sender, id);
    CREATE INDEX messages_by_recipient ON messages (recipient, id);
    CREATE INDEX messages_by_conversation ON messages (conversation, id);
    CREATE INDEX messages_by_idempotency ON messages (idempotency)
        WHERE idempotency IS NOT NULL;
"#,
    ),
    // History's "direct messages I sent" branch, answered from the index alone.
    Migration::Sql(
        r#"
    CREATE INDEX messages_direct_by_sender ON messages (sender, id)
        WHERE recipient IS NOT NULL;
"#,
    ),
    // The same with the recipient in each entry. Without it, SQLite read every entry's row to
    // test `recipient IS NOT NULL` (a page's worth of rows more per history request, on top of
    // the page's own), and `conversation_peers` read every sent message's row for its recipient.
    Migration::Sql(
        r#"
    DROP INDEX messages_direct_by_sender;
    CREATE INDEX messages_direct_by_sender ON messages (sender, id, recipient)
        WHERE recipient IS NOT NULL;
"#,
    ),
    // The full by-sender index held every direct message a second time (it is in
    // `messages_direct_by_sender`): one index page more to write per send. Only group messages
    // need an index of their own by sender (to delete an account's messages).
    Migration::Sql(
        r#"
    DROP INDEX messages_by_sender;
    CREATE INDEX messages_group_by_sender ON messages (sender, id) WHERE recipient IS NULL;
"#,
    ),
];

/// An account's messages, each branch by an index of its own (`(a OR b)` alone would scan the
/// table: no one index holds every message by sender).
const DELETE_USER_MESSAGES: &str = "DELETE FROM messages WHERE rowid IN (
       SELECT rowid FROM messages WHERE sender = ?1 AND recipient IS NOT NULL
       UNION SELECT rowid FROM messages WHERE sender = ?1 AND recipient IS NULL
       UNION SELECT rowid FROM messages WHERE recipient = ?1)";

fn give_direct_conversations_ids(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    let pairs: Vec<(String, String, String)> = tx
        .prepare(
            "SELECT conversation, min(sent_at), max(id) FROM messages
             WHERE conversation LIKE '%:%' GROUP BY conversation",
        )?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
        .collect::<Result<_, _>>()?;
    for (key, created_at, last) in pairs {
        let users = key
            .split_once(':')
            .and_then(|(a, b)| Some((UserId::parse(a).ok()?, UserId::parse(b).ok()?)));
        let Some((a, b)) = users else {
            return Err(rusqlite::Error::ToSqlConversionFailure(
                anyhow!("message conversation key {key:?} is not two user ids").into(),
            ));
        };
        let id = ConversationId::direct(a, b).to_string();
        tx.execute(
            "INSERT INTO conversations (id, kind, title, created_at, activity)
             VALUES (?1, 'direct', NULL, ?2, ?3)",
            (&id, &created_at, &last),
        )?;
        for user in [a, b] {
            tx.execute(
                "INSERT OR IGNORE INTO members (conversation, member, role)
                 VALUES (?1, ?2, 'member')",
                (&id, user.to_string()),
            )?;
        }
        tx.execute(
            "UPDATE messages SET conversation = ?1 WHERE conversation = ?2",
            (&id, &key),
        )?;
    }
    Ok(())
}

/// `synchronous` comes from the configuration (FULL by default: a message is on disk before the
/// API says it was sent). `wal_autocheckpoint = 0`: the commit that crosses the threshold would
/// otherwise pay for the checkpoint (tens of ms of fsync); a background task checkpoints instead.
fn connection_pragmas(synchronous: SqliteSynchronous) -> String {
    format!(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = {};
         PRAGMA foreign_keys = ON;
         PRAGMA busy_timeout = 5000;
         PRAGMA wal_autocheckpoint = 0;
         PRAGMA journal_size_limit = {};",
        synchronous.as_pragma(),
        WAL_SIZE_LIMIT
    )
}

/// What a WAL file is cut back to when it starts over: one burst of writes does not keep its
/// disk space for good. Not lower: a WAL that grows back past the limit every cycle pays for a
/// truncate and for allocating the space again, and at 64 MiB that took p99 at 4,000 msg/s
/// from about 7 to 40 ms. Under steady writes the WAL holds about one second of them
/// (about 130 MiB at 4,000 msg/s).
const WAL_SIZE_LIMIT: u64 = 256 << 20;

/// The writer's page cache, in KiB: most of the index leaves sends write stay cached (see
/// `open`; 0.6 pages read back per message at 4,000 msg/s, 0.03 at 32 MiB), and no more, because
/// SQLite scans the whole cache at every commit that split a page (a split renumbers a page
/// through a placeholder number past the file's end, and the commit then looks for pages past
/// the end in every hash slot). At 32 MiB that scan was 6% of the server's CPU at 4,000 msg/s,
/// more than the reads it saved.
const WRITER_CACHE_KIB: i64 = 8 << 10;

/// How often the background task copies the WAL back into the database file.
const CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Memory for the newest history pages of recently active readers (`recent`): about 1,500
/// pages of 50 short messages.
const RECENT_PAGES_BYTES: usize = 16 << 20;

pub struct SqliteStore {
    threads: Threads,
    /// Stamped by every write that can change someone's newest page, after its commit.
    recent: Arc<RecentPages>,
    /// The database's directory, whose file system `refine` asks for free space.
    dir: std::path::PathBuf,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and brings its schema up to date.
    pub async fn open(path: &Path, synchronous: SqliteSynchronous) -> anyhow::Result<Self> {
        make_private(path).with_context(|| format!("securing {}", path.display()))?;
        let owned = path.to_path_buf();
        let (writer, readers, chores) = tokio::task::spawn_blocking(move || {
            let pragmas = connection_pragmas(synchronous);
            let open = || -> anyhow::Result<Connection> {
                let conn = Connection::open(&owned)?;
                conn.execute_batch(&pragmas)?;
                Ok(conn)
            };
            // The schema first, so readers never see a half-migrated one.
            let mut writer = open()?;
            migrate(&mut writer)?;
            let readers = (0..reader_count())
                .map(|_| {
                    let reader = open()?;
                    reader.pragma_update(None, "query_only", true)?;
                    Ok(reader)
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            anyhow::Ok((writer, readers, open()?))
        })
        .await
        .context("opening SQLite")?
        .with_context(|| format!("opening the database {}", path.display()))?;
        // Statements the writer prepares stay cached for its whole life; the default (16) is
        // fewer than a send and the account calls use between them.
        writer.set_prepared_statement_cache_capacity(64);
        // Every send writes a leaf of each index by user and conversation; with SQLite's
        // default 2 MiB, those leaves did not stay cached between sends and were read back
        // (about 7 reads per message at 4,000 msg/s). Only the writer: the readers' pages
        // come and go with what is read.
        writer
            .pragma_update(None, "cache_size", -WRITER_CACHE_KIB)
            .context("sizing the writer's page cache")?;
        let chores = Chores {
            conn: chores,
            every: CHECKPOINT_INTERVAL,
            run: checkpoint,
            then_on_writer: finish_checkpoint,
        };
        let threads = Threads::start(writer, readers, chores).context("starting SQLite threads")?;
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        tracing::info!(path = %path.display(), "storing in SQLite");
        Ok(Self {
            threads,
            recent: Arc::new(RecentPages::new(RECENT_PAGES_BYTES)),
            dir,
        })
    }

    /// Ends a full-disk episode once the file system has room again, and says whether it has.
    /// Not on a write's success alone: a write can fit in WAL space that a failed one left
    /// allocated while the disk is still full, and the episode would flap.
    fn space_back(&self) -> bool {
        if !super::full::is_full() {
            return true;
        }
        let room = !no_room_left(&self.dir);
        if room {
            super::full::cleared();
        }
        room
    }

    /// One round trip to the writer thread, counted under `operation` (the store method: the
    /// perf guard in tests/api/metrics.rs counts them per send).
    async fn write<T, F>(&self, operation: &'static str, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        self.round_trip(Access::Write, operation, f).await
    }

    /// One round trip to a reader thread, counted like [`Self::write`].
    async fn read<T, F>(&self, operation: &'static str, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        self.round_trip(Access::Read, operation, f).await
    }

    async fn round_trip<T, F>(
        &self,
        access: Access,
        operation: &'static str,
        f: F,
    ) -> Result<T, StoreError>
    where
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        crate::metrics::store_round_trip(operation);
        self.threads
            .run(access, f)
            .await
            .map_err(|e| refine(e, &self.dir).counted())
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

/// Reader connections: enough for history requests to overlap on every core, and at least two
/// so one slow read never queues the others behind it.
fn reader_count() -> usize {
    std::thread::available_parallelism().map_or(4, |n| n.get().clamp(2, 8))
}

/// A PASSIVE checkpoint never blocks writers or readers, but under a steady stream of commits
/// it never catches up either: SQLite starts the WAL over only when a write begins with every
/// frame copied back, so the WAL grew without bound (3.5 GB after palaver-bench's runs, and
/// every read slowed down with it). So once the WAL is past `WAL_RESTART_FRAMES`, passes repeat
/// (each copies what was written during the one before) until little is left, and the writer
/// copies that little between two of its transactions; its next write starts the WAL over.
/// True when the writer should take its turn.
fn checkpoint(conn: &mut Connection) -> bool {
    // What the previous pass copied: a pass reports the WAL as it was when it began, so the
    // frames written while it ran show up only in the next one's count.
    let mut copied_before: Option<i64> = None;
    for _ in 0..CHECKPOINT_PASSES {
        let pass = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
            Ok((row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
        });
        match pass {
            Ok((frames, _)) if frames < WAL_RESTART_FRAMES => return false,
            Ok((frames, copied)) => {
                if copied_before.is_some_and(|before| frames - before <= WRITER_FRAMES) {
                    return true;
                }
                copied_before = Some(copied);
            }
            Err(e) => {
                match internal(e) {
                    // The WAL keeps everything meanwhile. Client writes decide the episode
                    // (the WAL may still have room when the database file cannot grow).
                    StoreError::Full => tracing::debug!("WAL checkpoint failed: the disk is full"),
                    e => tracing::warn!(error = %e, "WAL checkpoint failed"),
                }
                return false;
            }
        }
    }
    // Writes outpace the copying: the writer pays for the rest rather than the WAL growing.
    true
}

/// The writer's part of [`checkpoint`]: it holds the writes back for as long as it takes.
fn finish_checkpoint(conn: &mut Connection) {
    let started = std::time::Instant::now();
    match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
        Ok(()) => {
            tracing::debug!(elapsed = ?started.elapsed(), "the writer finished a WAL checkpoint")
        }
        Err(e) => tracing::debug!(error = %e, "the writer's WAL checkpoint failed"),
    }
}

/// Background passes before the writer takes its turn.
const CHECKPOINT_PASSES: usize = 8;
/// Few enough frames for the writer to copy without a noticeable pause.
const WRITER_FRAMES: i64 = 64;
/// 4,096 frames: 16 MiB of 4 KiB pages.
const WAL_RESTART_FRAMES: i64 = 4096;

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let applied: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(internal)?;
    if applied < 0 || applied as usize > MIGRATIONS.len() {
        return Err(StoreError::Internal(anyhow!(
            "the database schema (version {applied}) is newer than this server understands"
        )));
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(applied as usize) {
        let tx = write_transaction(conn)?;
        match migration {
            Migration::Sql(sql) => tx.execute_batch(sql),
            Migration::Rust(step) => step(&tx),
        }
        .map_err(internal)?;
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

/// A failed SQLite call: a full disk (`SQLITE_FULL`, which SQLite also reports for `ENOSPC` on
/// the database, its WAL or its shared-memory file) is [`StoreError::Full`], a 503; anything else
/// is a fault of ours.
fn internal(err: rusqlite::Error) -> StoreError {
    match &err {
        rusqlite::Error::SqliteFailure(e, _) if e.code == ErrorCode::DiskFull => StoreError::Full,
        _ => StoreError::Internal(err.into()),
    }
}

/// SQLite reports `ENOSPC` as `SQLITE_FULL` on most writes, but as a plain I/O error where it
/// grows a file by other means (the WAL's size hint, the shared-memory file). Such an error
/// while the database's file system has no room left is the same full disk.
fn refine(err: StoreError, dir: &Path) -> StoreError {
    let io_error = match &err {
        StoreError::Internal(cause) => cause.downcast_ref::<rusqlite::Error>().is_some_and(
            |e| matches!(e, rusqlite::Error::SqliteFailure(e, _) if e.code == ErrorCode::SystemIoFailure),
        ),
        _ => false,
    };
    if io_error && no_room_left(dir) {
        return StoreError::Full;
    }
    err
}

/// Less than a megabyte free for unprivileged writers.
#[cfg(unix)]
fn no_room_left(dir: &Path) -> bool {
    rustix::fs::statvfs(dir).is_ok_and(|fs| fs.f_bavail.saturating_mul(fs.f_frsize) < 1 << 20)
}

#[cfg(not(unix))]
fn no_room_left(_dir: &Path) -> bool {
    false
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
        recipient: row
            .get::<_, Option<String>>(2)?
            .map(|r| decode(2, UserId::parse(&r)))
            .transpose()?,
        content: row.get(3)?,
        sent_at: decode(
            4,
            DateTime::parse_from_rfc3339(&row.get::<_, String>(4)?).map(|t| t.with_timezone(&Utc)),
        )?,
        kind: decode(5, MessageKind::parse(&row.get::<_, String>(5)?))?,
        conversation: decode(6, ConversationId::parse(&row.get::<_, String>(6)?))?,
        // Auto-replies are stored under a key that names the message they answer.
        reply_to: row
            .get::<_, Option<String>>(7)?
            .and_then(|key| crate::domain::IdempotencyKey::answered(&key)),
    })
}

/// Adds a member unless they are one; true when added.
fn insert_member(conn: &Connection, conversation: &str, member: &Member) -> rusqlite::Result<bool> {
    conn.execute(
        "INSERT OR IGNORE INTO members (conversation, member, role) VALUES (?1, ?2, ?3)",
        (conversation, member.user.to_string(), member.role.as_str()),
    )
    .map(|added| added > 0)
}

/// Takes `user` out of the conversation (false: not a member). An owner who leaves hands the
/// group to the member who joined earliest; the last member out deletes it and its messages.
fn leave(tx: &Transaction<'_>, conversation: &str, user: &str) -> rusqlite::Result<bool> {
    let role: Option<String> = tx
        .query_row(
            "DELETE FROM members WHERE conversation = ?1 AND member = ?2 RETURNING role",
            (conversation, user),
            |row| row.get(0),
        )
        .optional()?;
    let Some(role) = role else {
        return Ok(false);
    };
    let remaining: i64 = tx.query_row(
        "SELECT count(*) FROM members WHERE conversation = ?1",
        [conversation],
        |row| row.get(0),
    )?;
    if remaining == 0 {
        tx.execute(
            "DELETE FROM messages WHERE conversation = ?1",
            [conversation],
        )?;
        tx.execute("DELETE FROM conversations WHERE id = ?1", [conversation])?;
    } else if role == Role::Owner.as_str() {
        tx.execute(
            "UPDATE members SET role = 'owner' WHERE rowid =
               (SELECT min(rowid) FROM members WHERE conversation = ?1)",
            [conversation],
        )?;
    }
    Ok(true)
}

fn load_conversation(conn: &Connection, id: &str) -> rusqlite::Result<Option<Conversation>> {
    let head = conn
        .query_row(
            "SELECT id, kind, title, created_at FROM conversations WHERE id = ?1",
            [id],
            |row| {
                let title: Option<String> = row.get(2)?;
                Ok(Conversation {
                    id: decode(0, ConversationId::parse(&row.get::<_, String>(0)?))?,
                    kind: decode(1, ConversationKind::parse(&row.get::<_, String>(1)?))?,
                    title: title.map(|t| decode(2, Title::parse(&t))).transpose()?,
                    members: Vec::new(),
                    created_at: decode(
                        3,
                        DateTime::parse_from_rfc3339(&row.get::<_, String>(3)?)
                            .map(|t| t.with_timezone(&Utc)),
                    )?,
                })
            },
        )
        .optional()?;
    let Some(mut conversation) = head else {
        return Ok(None);
    };
    conversation.members = conn
        .prepare_cached("SELECT member, role FROM members WHERE conversation = ?1 ORDER BY rowid")?
        .query_map([id], |row| {
            Ok(Member {
                user: decode(0, UserId::parse(&row.get::<_, String>(0)?))?,
                role: decode(1, Role::parse(&row.get::<_, String>(1)?))?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(Some(conversation))
}

/// A page of history as one query: each filter is a branch that reads at most `limit` entries
/// from its own index in id order, and only then are the page's rows read. An OR of the filters
/// made SQLite collect every one of the user's messages and sort them (6 ms a page at 4,000
/// messages); reading whole rows in every branch read three times the rows a page shows.
/// `args` are the filters' `?N` parameters; the cursor's come after them.
fn history_query(
    page: &MessagePage,
    filters: Vec<String>,
    mut args: Vec<String>,
) -> (String, Vec<String>) {
    let mut bounds = String::new();
    for (op, id) in [("<", page.before), (">", page.after), ("<=", page.upto)] {
        if let Some(id) = id {
            args.push(id.to_string());
            bounds.push_str(&format!(" AND id {op} ?{}", args.len()));
        }
    }
    // Catch-up reads forward from the cursor; everything else reads back from the newest.
    let order = if page.after.is_none() { "DESC" } else { "ASC" };
    let limit = page.limit;
    // Each branch is answered by its index alone (`rowid` and `id` are in every index entry).
    let branches: Vec<String> = filters
        .iter()
        .map(|filter| {
            format!(
                "SELECT * FROM (SELECT rowid AS r, id FROM messages
                 WHERE {filter}{bounds} ORDER BY id {order} LIMIT {limit})"
            )
        })
        .collect();
    // UNION, not UNION ALL: a note to oneself is in two branches.
    let sql = format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE rowid IN
           (SELECT r FROM ({} ORDER BY id {order} LIMIT {limit}))
         ORDER BY id {order}",
        branches.join(" UNION ")
    );
    (sql, args)
}

/// A page of everything `user` may read: the direct messages they received and sent, each
/// by its own index, and the messages of `groups` (those they are in now: one who left sees
/// nothing more of a group, not even their own).
fn user_history_query(
    page: &MessagePage,
    user: UserId,
    groups: Vec<String>,
) -> Result<(String, Vec<String>), StoreError> {
    // `recipient IS NOT NULL` picks the partial index that holds only direct messages (and
    // their recipient, so the branch never reads a row). A group's messages are all group
    // messages: its branch needs no such test, which would read each row.
    let mut filters = vec![
        "recipient = ?1".to_owned(),
        "sender = ?1 AND recipient IS NOT NULL".to_owned(),
    ];
    let mut args = vec![user.to_string()];
    if groups.len() <= GROUP_BRANCHES {
        for group in groups {
            args.push(group);
            filters.push(format!("conversation = ?{}", args.len()));
        }
    } else {
        args.push(serde_json::to_string(&groups).map_err(|e| StoreError::Internal(e.into()))?);
        filters.push(format!(
            "conversation IN (SELECT value FROM json_each(?{}))",
            args.len()
        ));
    }
    Ok(history_query(page, filters, args))
}

/// Up to this many groups, each is a branch of its own (bounded by the page); past it, one
/// branch reads all their messages (SQLite caps a compound query at 500 branches).
const GROUP_BRANCHES: usize = 64;

/// The columns `message_from_row` reads, in its order.
const MESSAGE_COLUMNS: &str =
    "id, sender, recipient, content, sent_at, kind, conversation, idempotency";

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_user(&self, user: NewUser) -> Result<User, StoreError> {
        self.write("create_user", move |conn| {
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
        self.read("user_by_id", move |conn| {
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
        self.read("user_by_email", move |conn| {
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

    async fn users_by_ids(&self, ids: &[UserId]) -> Result<Vec<User>, StoreError> {
        let ids = serde_json::to_string(&ids.iter().map(ToString::to_string).collect::<Vec<_>>())
            .map_err(|e| StoreError::Internal(e.into()))?;
        self.read("users_by_ids", move |conn| {
            conn.prepare_cached(
                "SELECT id, email, status FROM users WHERE id IN (SELECT value FROM json_each(?1))",
            )
            .and_then(|mut query| query.query_map([ids], user_from_row)?.collect())
            .map_err(internal)
        })
        .await
    }

    async fn message(&self, id: MessageId) -> Result<Option<Message>, StoreError> {
        self.read("message", move |conn| {
            conn.query_row(
                "SELECT id, sender, recipient, content, sent_at, kind, conversation, idempotency FROM messages WHERE id = ?1",
                [id.to_string()],
                message_from_row,
            )
            .optional()
            .map_err(internal)
        })
        .await
    }

    async fn credentials_by_email(&self, email: &Email) -> Result<Option<Credentials>, StoreError> {
        let email = email.clone();
        self.read("credentials_by_email", move |conn| {
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
        self.write("set_status", move |conn| {
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
        let recent = self.recent.clone();
        let outcomes = self.write("insert_messages", move |conn| {
            let cutoff = rfc3339(Utc::now() - IDEMPOTENCY_WINDOW);
            // One transaction, so a batch costs one fsync however many messages it holds. A
            // failed INSERT undoes only itself (SQLite's statements are atomic and foreign keys
            // are checked immediately), so one bad message leaves the others in the batch.
            let tx = write_transaction(conn)?;
            let mut outcomes = Vec::with_capacity(batch.len());
            {
                let mut earlier = tx
                    .prepare_cached(
                        "SELECT id, sender, recipient, content, sent_at, kind, conversation, idempotency FROM messages
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
                let mut direct = tx
                    .prepare_cached(
                        "INSERT INTO conversations (id, kind, title, created_at, activity)
                         VALUES (?1, 'direct', NULL, ?2, ?3)
                         ON CONFLICT (id) DO UPDATE SET activity = max(activity, excluded.activity)",
                    )
                    .map_err(internal)?;
                let mut member = tx
                    .prepare_cached(
                        "INSERT OR IGNORE INTO members (conversation, member, role)
                         VALUES (?1, ?2, 'member')",
                    )
                    .map_err(internal)?;
                let mut in_group = tx
                    .prepare_cached(
                        "SELECT 1 FROM members WHERE conversation = ?1 AND member = ?2",
                    )
                    .map_err(internal)?;
                let mut group_activity = tx
                    .prepare_cached(
                        "UPDATE conversations SET activity = max(activity, ?2) WHERE id = ?1",
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
                    // A group message is stored only while its sender is in the group (they
                    // may have left, or been removed, since the send was checked).
                    if message.recipient.is_none() {
                        let member_now = in_group
                            .exists((message.conversation.to_string(), message.sender.to_string()))
                            .map_err(internal)?;
                        if !member_now {
                            outcomes.push(Err(StoreError::NotMember));
                            continue;
                        }
                    }
                    let inserted = insert.execute((
                        message.id.to_string(),
                        message.sender.to_string(),
                        message.recipient.map(|r| r.to_string()),
                        message.conversation.to_string(),
                        &message.content,
                        rfc3339(message.sent_at),
                        message.kind.as_str(),
                        scoped,
                    ));
                    if inserted.is_ok() {
                        let conversation = message.conversation.to_string();
                        let id = message.id.to_string();
                        match message.recipient {
                            Some(recipient) => {
                                direct
                                    .execute((&conversation, rfc3339(message.sent_at), &id))
                                    .map_err(internal)?;
                                for user in [message.sender, recipient] {
                                    member
                                        .execute((&conversation, user.to_string()))
                                        .map_err(internal)?;
                                }
                            }
                            None => {
                                group_activity
                                    .execute((&conversation, &id))
                                    .map_err(internal)?;
                            }
                        }
                    }
                    outcomes.push(match inserted {
                        Ok(_) => Ok(Inserted::Stored),
                        Err(e) if is_foreign_key_violation(&e) => Err(StoreError::UnknownUser),
                        Err(e) if is_unique_violation(&e) => Err(internal(e)),
                        Err(e) => return Err(internal(e)),
                    });
                }
            }
            tx.commit().map_err(internal)?;
            let mut touched = Vec::with_capacity(2 * batch.len());
            for (new, outcome) in batch.iter().zip(&outcomes) {
                let message = &new.message;
                match (outcome, message.recipient) {
                    (Ok(Inserted::Stored), Some(recipient)) => {
                        touched.extend([Key::User(message.sender), Key::User(recipient)]);
                    }
                    (Ok(Inserted::Stored), None) => touched.push(Key::Group(message.conversation)),
                    _ => {}
                }
            }
            recent.changed(touched);
            Ok(outcomes)
        })
        .await?;
        self.space_back();
        Ok(outcomes)
    }

    async fn token_version(&self, id: UserId) -> Result<Option<u64>, StoreError> {
        self.read("token_version", move |conn| {
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
        self.write("revoke_tokens", move |conn| {
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
        self.read("password_hash", move |conn| {
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
        self.read("responder_choice", move |conn| {
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
        self.write("set_responder_choice", move |conn| {
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
        let recent = self.recent.clone();
        self.write("delete_user", move |conn| {
            let id = id.to_string();
            let tx = write_transaction(conn)?;
            tx.execute(DELETE_USER_MESSAGES, [&id]).map_err(internal)?;
            tx.execute(
                "DELETE FROM conversations WHERE kind = 'direct'
                   AND id IN (SELECT conversation FROM members WHERE member = ?1)",
                [&id],
            )
            .map_err(internal)?;
            let groups: Vec<String> = tx
                .prepare("SELECT conversation FROM members WHERE member = ?1")
                .and_then(|mut q| q.query_map([&id], |row| row.get(0))?.collect())
                .map_err(internal)?;
            for group in groups {
                leave(&tx, &group, &id).map_err(internal)?;
            }
            let deleted = tx
                .execute("DELETE FROM users WHERE id = ?1", [&id])
                .map_err(internal)?;
            tx.commit().map_err(internal)?;
            // Their messages left every page they were in.
            recent.changed_everything();
            Ok(deleted > 0)
        })
        .await
    }

    async fn conversation_peers(&self, user: UserId) -> Result<Vec<UserId>, StoreError> {
        self.read("conversation_peers", move |conn| {
            let mut query = conn
                .prepare_cached(
                    "SELECT recipient FROM messages WHERE sender = ?1 AND recipient != ?1
                     UNION
                     SELECT sender FROM messages WHERE recipient = ?1 AND sender != ?1
                     UNION
                     SELECT other.member FROM members mine
                         JOIN members other ON other.conversation = mine.conversation
                         WHERE mine.member = ?1 AND other.member != ?1",
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
        // Only the newest page of everything is kept: what a client asks for on opening.
        let newest = page.conversation.is_none()
            && page.before.is_none()
            && page.after.is_none()
            && page.upto.is_none();
        if newest && let Some(kept) = self.recent.get(user, page.limit) {
            return Ok(kept.to_vec());
        }
        let page = page.clone();
        let recent = self.recent.clone();
        self.read("list_messages", move |conn| {
            // Before the snapshot begins (at the first read, not at BEGIN).
            let stamp = recent.now();
            // One snapshot for the user's groups and the messages.
            let tx = conn.transaction().map_err(internal)?;
            let mut read_groups = None;
            let (sql, args) = match page.conversation {
                Some(conversation) => history_query(
                    &page,
                    vec!["conversation = ?1".to_owned()],
                    vec![conversation.to_string()],
                ),
                None => {
                    let groups: Vec<String> = tx
                        .prepare_cached(
                            "SELECT m.conversation FROM members m
                             JOIN conversations c ON c.id = m.conversation
                             WHERE m.member = ?1 AND c.kind = 'group'",
                        )
                        .and_then(|mut query| {
                            query
                                .query_map([user.to_string()], |row| row.get(0))?
                                .collect()
                        })
                        .map_err(internal)?;
                    // A page is kept only with the groups it read (all parse: the server wrote them).
                    read_groups = groups
                        .iter()
                        .map(|g| ConversationId::parse(g))
                        .collect::<Result<Vec<_>, _>>()
                        .ok();
                    user_history_query(&page, user, groups)?
                }
            };
            let mut messages = tx
                .prepare_cached(&sql)
                .and_then(|mut statement| {
                    statement
                        .query_map(params_from_iter(args), message_from_row)?
                        .collect::<Result<Vec<_>, _>>()
                })
                .map_err(internal)?;
            if page.after.is_none() {
                messages.reverse();
            }
            if newest && let Some(groups) = read_groups {
                recent.put(user, page.limit, stamp, groups, messages.as_slice().into());
            }
            Ok(messages)
        })
        .await
    }

    async fn create_conversation(&self, conversation: &Conversation) -> Result<(), StoreError> {
        let conversation = conversation.clone();
        let recent = self.recent.clone();
        self.write("create_conversation", move |conn| {
            let tx = write_transaction(conn)?;
            let id = conversation.id.to_string();
            tx.execute(
                "INSERT INTO conversations (id, kind, title, created_at, activity)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                (
                    &id,
                    conversation.kind.as_str(),
                    conversation.title.as_ref().map(Title::as_str),
                    rfc3339(conversation.created_at),
                    MessageId::new().to_string(),
                ),
            )
            .map_err(internal)?;
            for member in &conversation.members {
                match insert_member(&tx, &id, member) {
                    Err(e) if is_foreign_key_violation(&e) => return Err(StoreError::UnknownUser),
                    other => other.map_err(internal)?,
                };
            }
            tx.commit().map_err(internal)?;
            // Each member's pages now read one group more.
            let members = conversation.members.iter().map(|m| Key::User(m.user));
            recent.changed(members.chain([Key::Group(conversation.id)]));
            Ok(())
        })
        .await
    }

    async fn conversation(&self, id: ConversationId) -> Result<Option<Conversation>, StoreError> {
        self.read("conversation", move |conn| {
            load_conversation(conn, &id.to_string()).map_err(internal)
        })
        .await
    }

    async fn set_title(&self, id: ConversationId, title: &Title) -> Result<bool, StoreError> {
        let title = title.clone();
        self.write("set_title", move |conn| {
            conn.execute(
                "UPDATE conversations SET title = ?1 WHERE id = ?2 AND kind = 'group'",
                (title.as_str(), id.to_string()),
            )
            .map(|updated| updated > 0)
            .map_err(internal)
        })
        .await
    }

    async fn add_member(&self, id: ConversationId, member: &Member) -> Result<bool, StoreError> {
        let member = member.clone();
        let recent = self.recent.clone();
        self.write("add_member", move |conn| {
            match insert_member(conn, &id.to_string(), &member) {
                Ok(added) => {
                    // The group's history is theirs to read now.
                    recent.changed([Key::User(member.user)]);
                    Ok(added)
                }
                Err(e) if is_foreign_key_violation(&e) => Err(StoreError::UnknownUser),
                Err(e) => Err(internal(e)),
            }
        })
        .await
    }

    async fn remove_member(
        &self,
        id: ConversationId,
        user: UserId,
    ) -> Result<Option<Conversation>, StoreError> {
        let recent = self.recent.clone();
        self.write("remove_member", move |conn| {
            let tx = write_transaction(conn)?;
            let group = id;
            let id = id.to_string();
            let Some(before) = load_conversation(&tx, &id).map_err(internal)? else {
                return Ok(None);
            };
            if !leave(&tx, &id, &user.to_string()).map_err(internal)? {
                return Ok(None);
            }
            let after = load_conversation(&tx, &id).map_err(internal)?;
            tx.commit().map_err(internal)?;
            // Their pages lose the group; a group its last member left is gone with its
            // messages.
            recent.changed([Key::User(user), Key::Group(group)]);
            // The last member out deleted the group: to the caller it is left with nobody.
            Ok(Some(after.unwrap_or(Conversation {
                members: Vec::new(),
                ..before
            })))
        })
        .await
    }

    async fn conversations_of(
        &self,
        user: UserId,
        before: Option<MessageId>,
        limit: u32,
    ) -> Result<Vec<ConversationSummary>, StoreError> {
        self.read("conversations_of", move |conn| {
            let user = user.to_string();
            let rows: Vec<(String, String, Option<String>)> = conn
                .prepare_cached(
                    "SELECT c.id, c.activity, m.read_upto FROM members m
                     JOIN conversations c ON c.id = m.conversation
                     WHERE m.member = ?1 AND (?2 IS NULL OR c.activity < ?2)
                     ORDER BY c.activity DESC LIMIT ?3",
                )
                .and_then(|mut q| {
                    q.query_map(
                        (
                            &user,
                            before.map(|b| b.to_string()),
                            limit,
                        ),
                        |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                    )?
                    .collect()
                })
                .map_err(internal)?;
            let mut summaries = Vec::with_capacity(rows.len());
            for (id, activity, read_upto) in rows {
                let Some(conversation) = load_conversation(conn, &id).map_err(internal)? else {
                    continue;
                };
                let last_message = conn
                    .query_row(
                        "SELECT id, sender, recipient, content, sent_at, kind, conversation, idempotency FROM messages
                         WHERE conversation = ?1 ORDER BY id DESC LIMIT 1",
                        [&id],
                        message_from_row,
                    )
                    .optional()
                    .map_err(internal)?;
                let unread: i64 = conn
                    .query_row(
                        "SELECT count(*) FROM messages
                         WHERE conversation = ?1 AND id > ?2 AND sender != ?3",
                        (&id, read_upto.as_deref().unwrap_or(""), &user),
                        |row| row.get(0),
                    )
                    .map_err(internal)?;
                summaries.push(ConversationSummary {
                    conversation,
                    activity: MessageId::parse(&activity).map_err(|e| {
                        StoreError::Internal(anyhow!("conversation {id}: activity {e}"))
                    })?,
                    last_message,
                    unread: unread.max(0) as u64,
                    read_upto: read_upto.and_then(|r| MessageId::parse(&r).ok()),
                });
            }
            Ok(summaries)
        })
        .await
    }

    async fn mark_read(
        &self,
        id: ConversationId,
        user: UserId,
        upto: MessageId,
    ) -> Result<Option<MessageId>, StoreError> {
        self.write("mark_read", move |conn| {
            let mark: Option<String> = conn
                .query_row(
                    "UPDATE members SET read_upto = max(coalesce(read_upto, ''), ?3)
                     WHERE conversation = ?1 AND member = ?2 RETURNING read_upto",
                    (id.to_string(), user.to_string(), upto.to_string()),
                    |row| row.get(0),
                )
                .optional()
                .map_err(internal)?;
            mark.map(|m| {
                MessageId::parse(&m)
                    .map_err(|e| StoreError::Internal(anyhow!("read mark of {user} in {id}: {e}")))
            })
            .transpose()
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        if super::full::is_full() && !self.space_back() {
            return Err(StoreError::Full);
        }
        self.read("ping", |conn| {
            conn.query_row("SELECT 1", [], |_| Ok(())).map_err(internal)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::domain::Content;
    use crate::store::NewUser;

    /// The WAL header's first salt, which SQLite changes each time the WAL starts over.
    fn wal_salt(db: &Path) -> Option<[u8; 4]> {
        use std::io::Read;
        let mut header = [0u8; 20];
        std::fs::File::open(format!("{}-wal", db.display()))
            .and_then(|mut wal| wal.read_exact(&mut header))
            .ok()?;
        header[16..20].try_into().ok()
    }

    /// New accounts named `<name>@example.com`, their ids in order.
    async fn users(store: &SqliteStore, names: &[&str]) -> Vec<UserId> {
        let mut ids = Vec::new();
        for name in names {
            let user = store
                .create_user(NewUser {
                    id: UserId::new(),
                    email: Email::parse(&format!("{name}@example.com")).expect("email"),
                    password_hash: "not a real hash".into(),
                })
                .await
                .expect("user");
            ids.push(user.id);
        }
        ids
    }

    /// Readers filling kept pages while sends commit never leave a page behind: right after
    /// each send, both ends' newest pages end with it, however the readers' page fills
    /// interleaved with the commit. Two pairs, so each user has exactly one writer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kept_pages_never_fall_behind_concurrent_sends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(
            SqliteStore::open(&dir.path().join("palaver.db"), SqliteSynchronous::Normal)
                .await
                .expect("open"),
        );
        let users = users(&store, &["a", "b", "c", "d"]).await;
        let page = MessagePage {
            limit: 5,
            ..MessagePage::default()
        };
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..4)
            .map(|reader| {
                let (store, users, page, done) =
                    (store.clone(), users.clone(), page.clone(), done.clone());
                tokio::spawn(async move {
                    while !done.load(std::sync::atomic::Ordering::Relaxed) {
                        store
                            .list_messages(users[reader], &page)
                            .await
                            .expect("read");
                        // A kept page answers without awaiting anything.
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        let senders: Vec<_> = [(0, 1), (2, 3)]
            .into_iter()
            .map(|(from, to)| {
                let (store, users, page) = (store.clone(), users.clone(), page.clone());
                tokio::spawn(async move {
                    for i in 0..200 {
                        let message = Message::new(
                            users[from],
                            users[to],
                            Content::parse(format!("{from}.{i}")).expect("content"),
                            MessageKind::User,
                        );
                        let id = message.id;
                        let batch = [NewMessage {
                            message,
                            idempotency_key: None,
                            awaits_reply: false,
                        }];
                        store.insert_messages(&batch).await.expect("insert");
                        for user in [users[from], users[to]] {
                            let newest = store.list_messages(user, &page).await.expect("read");
                            assert_eq!(newest.last().map(|m| m.id), Some(id), "send {i}");
                        }
                    }
                })
            })
            .collect();
        for sender in senders {
            sender.await.expect("sender");
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        for reader in readers {
            reader.await.expect("reader");
        }
    }

    /// Under writes that never pause (senders always waiting on the writer), the WAL still
    /// starts over. With only a background PASSIVE checkpoint it never did, and grew without
    /// bound: 3.5 GB after one benchmark.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_starts_over_while_writes_never_pause() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("palaver.db");
        let store = std::sync::Arc::new(
            SqliteStore::open(&db, SqliteSynchronous::Normal)
                .await
                .expect("open"),
        );
        let users = users(&store, &["a", "b"]).await;
        let first = wal_salt(&db).expect("a WAL once something is written");
        // Generous: the chores thread looks every second and restarts past 16 MiB of WAL.
        let deadline = Instant::now() + Duration::from_secs(60);
        let senders: Vec<_> = (0..8)
            .map(|sender| {
                let (store, db, users) = (store.clone(), db.clone(), users.clone());
                tokio::spawn(async move {
                    let mut written = 0u64;
                    while wal_salt(&db) == Some(first) {
                        assert!(
                            Instant::now() < deadline,
                            "the WAL never started over in {written} back-to-back batches"
                        );
                        let batch: Vec<NewMessage> = (0..16)
                            .map(|i| NewMessage {
                                message: Message::new(
                                    users[i % 2],
                                    users[(i + 1) % 2],
                                    Content::parse(format!("{sender}: {written}.{i}"))
                                        .expect("content"),
                                    MessageKind::User,
                                ),
                                idempotency_key: None,
                                awaits_reply: false,
                            })
                            .collect();
                        store.insert_messages(&batch).await.expect("insert");
                        written += 1;
                    }
                })
            })
            .collect();
        for sender in senders {
            sender.await.expect("sender");
        }
    }

    /// A database with the whole schema, and a connection of its own to it.
    async fn migrated() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("palaver.db");
        SqliteStore::open(&db, SqliteSynchronous::Normal)
            .await
            .expect("open");
        let conn = Connection::open(&db).expect("open");
        (dir, conn)
    }

    /// SQLite's plan for `sql`, one step per line.
    fn plan(conn: &Connection, sql: &str, args: impl IntoIterator<Item = String>) -> Vec<String> {
        conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .and_then(|mut q| {
                q.query_map(params_from_iter(args), |row| row.get(3))?
                    .collect()
            })
            .expect("plan")
    }

    /// Deleting an account reads its messages by index, never by scanning every message.
    #[tokio::test]
    async fn deleting_an_account_scans_no_table() {
        let (_dir, conn) = migrated().await;
        let plan = plan(&conn, DELETE_USER_MESSAGES, ["someone".to_owned()]);
        assert!(!plan.iter().any(|s| s.starts_with("SCAN")), "{plan:#?}");
        for index in [
            "messages_direct_by_sender (sender=?)",
            "messages_group_by_sender (sender=?)",
            "messages_by_recipient (recipient=?)",
        ] {
            assert!(
                plan.iter().any(|s| s.ends_with(index)),
                "{index}: {plan:#?}"
            );
        }
    }

    /// A perf guard that cannot flake: the plan of a history page, not its time. Each branch
    /// must be answered from its index alone, so a page costs about `limit` index entries per
    /// branch and `limit` rows, however many messages the user has. A branch that reads rows
    /// (an index that lost a column it tests) costs a row per entry, up to twice the rows a
    /// page needs.
    #[tokio::test]
    async fn a_history_page_reads_rows_only_for_the_page() {
        let (_dir, conn) = migrated().await;
        let newest = MessageId::new();
        let pages = [
            MessagePage::new(None, None, None, None).expect("page"),
            MessagePage::new(None, Some(newest), None, None).expect("page"),
            MessagePage::new(None, None, Some(newest), Some(200)).expect("page"),
        ];
        for count in [0, 2, GROUP_BRANCHES + 1] {
            for page in &pages {
                let page = MessagePage {
                    upto: Some(newest),
                    ..page.clone()
                };
                let groups = (0..count)
                    .map(|_| ConversationId::new_group().to_string())
                    .collect();
                let (sql, args) = user_history_query(&page, UserId::new(), groups).expect("query");
                let plan = plan(&conn, &sql, args);
                let reads: Vec<&String> = plan
                    .iter()
                    .filter(|step| {
                        step.starts_with("SEARCH messages") || step.starts_with("SCAN messages")
                    })
                    .collect();
                let bad: Vec<&&String> = reads
                    .iter()
                    .filter(|step| {
                        !step.contains("USING COVERING INDEX")
                            && !step.contains("USING INTEGER PRIMARY KEY (rowid=?)")
                    })
                    .collect();
                assert!(
                    bad.is_empty(),
                    "history ({count} groups) reads rows outside the page: {bad:?}\nplan: {plan:#?}"
                );
                assert_eq!(
                    reads
                        .iter()
                        .filter(|s| s.contains("INTEGER PRIMARY KEY"))
                        .count(),
                    1,
                    "the page's rows are read once, by rowid: {plan:#?}"
                );
            }
        }
    }
}
