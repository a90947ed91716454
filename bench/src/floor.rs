//! The floor under a durable send on this machine: what its parts cost in CPU with no server
//! around them. The server's CPU per message (the latency runs) can be no lower than its
//! store's commit, and the commit no lower than the thread wake-ups it takes plus writing its
//! pages and waiting for the disk; this prints each, so a CPU target can be checked against the
//! machine before the code is blamed.
//!
//! Each row is paced (an event every 1/rate s, as sends arriving at that rate are) and reports
//! this process's CPU time (user + system, every thread, from getrusage) divided by events.
//! Nothing else runs in the process meanwhile. Files go to the temporary directory (`TMPDIR`),
//! which should be on the disk the database lives on.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use palaver::config::SqliteSynchronous;
use palaver::domain::{Content, Email, Message, MessageKind, UserId};
use palaver::store::{NewMessage, NewUser, SqliteStore, Store};

use crate::{Args, own_cpu_time};

/// SQLite's page and WAL frame header sizes (the store's defaults).
const PAGE: usize = 4096;
const FRAME_HEADER: usize = 24;
/// The WAL starts over past this many bytes (about the store's restart point, 4,096 frames),
/// so the raw rows write over space already allocated, as a long-running server's WAL does.
const WAL_SPAN: u64 = 16 << 20;
/// Pages one direct message dirties when it is alone in its commit: the table, its id index,
/// the by-conversation, by-recipient and direct-by-sender indexes, and the conversation's row.
const PAGES_PER_MESSAGE: usize = 6;
/// Users the store rows' messages go between (as many as the latency runs use by default).
const USERS: usize = 100;

pub async fn commit_floor(args: &Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    println!(
        "\nDurable-commit floor, no server ({}): CPU µs of this process per event, paced",
        dir.path().display()
    );
    println!(
        "{:<52} {:>9} {:>10} {:>10}",
        "what", "per s", "µs each", "µs/msg"
    );
    let seconds = args.floor_seconds;
    for (label, hop) in [
        ("a paced wake-up, nothing done", false),
        ("the same + a round trip to another thread", true),
    ] {
        let per_wake = tokio::task::spawn_blocking(move || wake_ups(hop, 500, seconds)).await??;
        row(label, 500, per_wake, 1);
    }
    let wal = dir.path().join("raw-wal");
    for (label, pages) in [
        ("fdatasync, nothing written", 0),
        (
            "6 WAL frames (24 B + 4 KiB each) + fdatasync",
            PAGES_PER_MESSAGE,
        ),
    ] {
        let path = wal.clone();
        let per_commit =
            tokio::task::spawn_blocking(move || raw_commits(&path, pages, 500, seconds)).await??;
        row(label, 500, per_commit, 1);
    }

    // 500 msg/s is one commit per message; at 4,000 msg/s the server commits about 2.7
    // messages at a time, and about 20 at its most (docs/perf/README.md). NORMAL (no fsync per
    // commit) shows what the fsync costs.
    let full = [(1, 500), (3, 1333), (20, 500)];
    store_rows(dir.path(), SqliteSynchronous::Full, &full, seconds).await?;
    store_rows(dir.path(), SqliteSynchronous::Normal, &full[..1], seconds).await?;
    Ok(())
}

/// Paced `insert_messages` calls on a fresh store: `rows` are (messages per commit, commits/s).
async fn store_rows(
    dir: &Path,
    synchronous: SqliteSynchronous,
    rows: &[(usize, u64)],
    seconds: u64,
) -> anyhow::Result<()> {
    let path = dir.join(format!("{}.db", synchronous.as_pragma()));
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path, synchronous).await?);
    let users = users(&store).await?;
    // Past the store's first WAL cycle, so the paced rows see the steady state.
    let mut next = 0usize;
    for _ in 0..100 {
        store
            .insert_messages(&messages(&users, &mut next, 60)?)
            .await?;
    }
    for &(batch, commits_per_s) in rows {
        let count = commits_per_s * seconds;
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / commits_per_s as f64));
        let before = own_cpu_time();
        for _ in 0..count {
            tick.tick().await;
            let batch = messages(&users, &mut next, batch)?;
            for outcome in store.insert_messages(&batch).await? {
                outcome?;
            }
        }
        let per_commit = (own_cpu_time() - before) / count as u32;
        let label = format!(
            "store insert_messages, {batch} per commit ({})",
            synchronous.as_pragma()
        );
        row(&label, commits_per_s, per_commit, batch);
    }
    Ok(())
}

fn row(label: &str, commits_per_s: u64, per_commit: Duration, messages: usize) {
    let us = per_commit.as_secs_f64() * 1e6;
    println!(
        "{label:<52} {commits_per_s:>9} {us:>10.0} {:>10.0}",
        us / messages as f64
    );
}

/// What waking a thread costs here: a sleep until the next tick (as a request arriving wakes a
/// server thread), and with `hop`, a message to a thread blocked on a channel and its answer
/// back (as the store's writer thread is fed and answers).
fn wake_ups(hop: bool, rate: u64, seconds: u64) -> anyhow::Result<Duration> {
    let (to_peer, from_main) = std::sync::mpsc::channel::<u64>();
    let (to_main, from_peer) = std::sync::mpsc::channel::<u64>();
    let peer = std::thread::spawn(move || {
        for i in from_main {
            if to_main.send(i).is_err() {
                break;
            }
        }
    });
    let count = rate * seconds;
    let started = Instant::now();
    let before = own_cpu_time();
    for i in 0..count {
        pace(started, i, rate);
        if hop {
            to_peer.send(i)?;
            from_peer.recv()?;
        }
    }
    let per_wake = (own_cpu_time() - before) / count as u32;
    drop(to_peer);
    peer.join()
        .map_err(|_| anyhow::anyhow!("the peer thread panicked"))?;
    Ok(per_wake)
}

/// Sleeps until the `i`th tick of `rate` per second from `started`.
fn pace(started: Instant, i: u64, rate: u64) {
    let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
    if let Some(wait) = due.checked_duration_since(Instant::now()) {
        std::thread::sleep(wait);
    }
}

/// SQLite's WAL commit without SQLite: each frame is two writes (header, page) at the end of
/// the log, then one fdatasync; past `WAL_SPAN` the log starts over at the beginning.
fn raw_commits(path: &Path, pages: usize, rate: u64, seconds: u64) -> anyhow::Result<Duration> {
    let file = File::options()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)?;
    let page = vec![7u8; PAGE];
    let header = [1u8; FRAME_HEADER];
    let frame = (PAGE + FRAME_HEADER) as u64;
    // Allocated and on disk first, like a WAL that has been round once already.
    let mut offset = 0;
    while offset < WAL_SPAN + frame * pages as u64 {
        file.write_all_at(&page, offset)?;
        offset += PAGE as u64;
    }
    file.sync_all()?;

    let count = rate * seconds;
    let started = Instant::now();
    let before = own_cpu_time();
    let mut offset = 0;
    for i in 0..count {
        pace(started, i, rate);
        for _ in 0..pages {
            file.write_all_at(&header, offset)?;
            file.write_all_at(&page, offset + FRAME_HEADER as u64)?;
            offset += frame;
        }
        file.sync_data()?;
        if offset > WAL_SPAN {
            offset = 0;
        }
    }
    Ok((own_cpu_time() - before) / count as u32)
}

async fn users(store: &Arc<dyn Store>) -> anyhow::Result<Vec<UserId>> {
    let mut users = Vec::with_capacity(USERS);
    for i in 0..USERS {
        let user = store
            .create_user(NewUser {
                id: UserId::new(),
                email: Email::parse(&format!("floor-{i}@example.com"))?,
                // Never checked: nobody logs in here.
                password_hash: "$argon2id$floor".to_owned(),
            })
            .await?;
        users.push(user.id);
    }
    Ok(users)
}

/// The next `count` messages, each from one user to the next (so they spread over the
/// indexes as the latency runs' do).
fn messages(users: &[UserId], next: &mut usize, count: usize) -> anyhow::Result<Vec<NewMessage>> {
    (0..count)
        .map(|_| {
            let (from, to) = (users[*next % users.len()], users[(*next + 1) % users.len()]);
            *next += 1;
            let content = Content::parse(format!("floor message {next}"))?;
            Ok(NewMessage {
                message: Message::new(from, to, content, MessageKind::User),
                idempotency_key: None,
                awaits_reply: false,
            })
        })
        .collect()
}
