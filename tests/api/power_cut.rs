//! A power cut under load (issue 20, item 2), on `palaver-lazyfs`: a FUSE file system that keeps
//! whatever was not fsynced in memory and drops it when the power goes. Senders run; the server
//! is killed (`kill -9`), the unsynced data dropped, the file system mounted again and the server
//! restarted.
//!
//! - `SQLITE_SYNCHRONOUS=full`: every acknowledged send is there with its id, the JWT secret the
//!   server generated and kept survives (tokens from before the cut still work), and the database
//!   is intact.
//! - `normal`: what survives is a prefix of the history in commit (id) order; every send answered
//!   before the write-ahead log was last fsynced (by the checkpoint that runs every second)
//!   survives; sends answered after it are lost, and the test makes sure some were.
//!
//! Mounting needs root and `/dev/fuse`. Where it is not allowed the tests say so loudly and
//! pass, except under `CI=true`, where they fail.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use palaver_lazyfs::{Dropped, Mount, mount_or_skip};
use serde_json::Value;

use crate::process::{Account, Server, Storage, send};

const SENDERS: usize = 8;
/// Acknowledged sends before the cut, at least.
const ENOUGH: usize = 120;
const WAL: &str = "palaver.db-wal";
const WHAT: &str = "the power-cut test";

struct Acked {
    content: String,
    id: String,
    /// When the answer had arrived.
    at: Instant,
}

struct Cut {
    acked: Vec<Acked>,
    /// When the server was dead.
    at: Instant,
    /// When the last fsync of the WAL before the cut began.
    last_wal_sync: Option<Instant>,
    /// No WAL fsync came between the cut and the moment the last `quiet` answers were waited
    /// for, so at least one answered send is not on disk.
    quiet: bool,
    dropped: Dropped,
}

/// A server on a lazy file system, its backing directory, and two accounts.
struct Setup {
    backing: tempfile::TempDir,
    storage: Storage,
    mount: Mount,
    server: Server,
    alice: Arc<Account>,
    bob: Account,
}

async fn setup(client: &reqwest::Client, env: &[(&str, &str)]) -> Option<Setup> {
    let backing = tempfile::tempdir().expect("tempdir");
    let storage = Storage::new();
    let mount = mount_or_skip(backing.path(), storage.dir.path(), WHAT)?;
    // No JWT_SECRET: the server generates one and keeps it on the lazy file system too.
    let server = Server::start_without_secret(&storage, env);
    let alice = Arc::new(server.account(client, "alice").await);
    let bob = server.account(client, "bob").await;
    Some(Setup {
        backing,
        storage,
        mount,
        server,
        alice,
        bob,
    })
}

/// Alice sends to Bob from `SENDERS` tasks until at least `ENOUGH` sends are answered, the WAL
/// has been fsynced since the load began, and `quiet` answers came after its last fsync was
/// seen; then `kill -9` and the power cut.
async fn load_and_cut(
    client: &reqwest::Client,
    server: Server,
    mount: Mount,
    alice: &Arc<Account>,
    bob: &Account,
    quiet: usize,
) -> Cut {
    let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
    let progress = Arc::new(tokio::sync::Notify::new());
    let senders: Vec<_> = (0..SENDERS)
        .map(|s| {
            let (client, base, alice, bob_id, acked, progress) = (
                client.clone(),
                server.base.clone(),
                alice.clone(),
                bob.id.clone(),
                acked.clone(),
                progress.clone(),
            );
            tokio::spawn(async move {
                for i in 0.. {
                    let content = format!("k-{s}-{i}");
                    let Some(id) = send(&client, &base, &alice, &bob_id, &content).await else {
                        return;
                    };
                    let at = Instant::now();
                    acked.lock().expect("lock").push(Acked { content, id, at });
                    progress.notify_one();
                }
            })
        })
        .collect();

    let (first_syncs, _) = mount.syncs(WAL);
    let mut syncs = first_syncs;
    let mut answered_before_sync_seen = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        tokio::time::timeout_at(deadline, progress.notified())
            .await
            .expect("the load reaches the cut within a minute");
        let answered = acked.lock().expect("lock").len();
        let (now, _) = mount.syncs(WAL);
        if now != syncs {
            syncs = now;
            answered_before_sync_seen = answered;
        }
        if answered >= ENOUGH
            && syncs > first_syncs
            && answered - answered_before_sync_seen >= quiet
        {
            break;
        }
    }
    server.kill9();
    let at = Instant::now();
    // A killed process's requests already in the daemon are answered before it is reaped, so
    // this is the last WAL fsync there will be.
    let (syncs_at_cut, last_wal_sync) = mount.syncs(WAL);
    let dropped = mount.power_cut();
    for sender in senders {
        sender.await.expect("sender");
    }
    let acked = std::mem::take(&mut *acked.lock().expect("lock"));
    Cut {
        acked,
        at,
        last_wal_sync,
        quiet: syncs_at_cut == syncs,
        dropped,
    }
}

/// `PRAGMA integrity_check` and the number of messages of the database as the cut left it, on
/// a copy (opening it runs SQLite's recovery, which must not happen before the server's own).
fn integrity(backing: &Path) -> (String, i64) {
    use rusqlite::Connection;
    let copy = tempfile::tempdir().expect("tempdir");
    for name in ["palaver.db", WAL] {
        if backing.join(name).exists() {
            std::fs::copy(backing.join(name), copy.path().join(name)).expect("copy");
        }
    }
    let db = Connection::open(copy.path().join("palaver.db")).expect("the database opens");
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .expect("integrity_check");
    let messages: i64 = db
        .query_row("SELECT count(*) FROM messages", [], |row| row.get(0))
        .expect("count");
    (check, messages)
}

/// After the cut: mounts the same backing directory again and restarts the server (with the
/// secret it kept); returns the mount, the server and what Bob's token from before the cut reads.
async fn restart(
    client: &reqwest::Client,
    setup_backing: &Path,
    storage: &Storage,
    env: &[(&str, &str)],
    bob: &Account,
) -> (Mount, Server, Vec<Value>) {
    let mount = mount_or_skip(setup_backing, storage.dir.path(), WHAT).expect("mounted again");
    let server = Server::start_without_secret(storage, env);
    let stored = server.everything(client, bob).await;
    (mount, server, stored)
}

fn by_content(stored: &[Value]) -> HashMap<&str, &str> {
    let map: HashMap<&str, &str> = stored
        .iter()
        .map(|m| {
            (
                m["content"].as_str().expect("content"),
                m["id"].as_str().expect("id"),
            )
        })
        .collect();
    assert_eq!(map.len(), stored.len(), "no content stored twice");
    map
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_synchronous_full_every_acknowledged_send_survives_a_power_cut() {
    let started = Instant::now();
    let env = [("SEND_RATE_LIMIT", "off"), ("SQLITE_SYNCHRONOUS", "full")];
    let client = reqwest::Client::new();
    let Some(Setup {
        backing,
        storage,
        mount,
        server,
        alice,
        bob,
    }) = setup(&client, &env).await
    else {
        return;
    };
    let cut = load_and_cut(&client, server, mount, &alice, &bob, 0).await;
    // The -shm file is never fsynced (SQLite rebuilds it), so there is always something to drop.
    assert!(cut.dropped.total() > 0, "{:?}", cut.dropped);

    let (check, on_disk) = integrity(backing.path());
    assert_eq!(check, "ok");
    let (mount, server, stored) = restart(&client, backing.path(), &storage, &env, &bob).await;
    let stored_ids = by_content(&stored);
    for acked in &cut.acked {
        assert_eq!(
            stored_ids.get(acked.content.as_str()),
            Some(&acked.id.as_str()),
            "acknowledged {} survived the power cut with its id",
            acked.content
        );
    }
    assert_eq!(on_disk as usize, stored.len());
    eprintln!(
        "power cut, SQLITE_SYNCHRONOUS=full: {} sends acknowledged, {} found after the cut \
         (the rest were in flight), {} unsynced bytes dropped ({} of the WAL; {:?}), in {:.1?}",
        cut.acked.len(),
        stored.len(),
        cut.dropped.total(),
        cut.dropped.of(WAL),
        cut.dropped.files,
        started.elapsed()
    );
    server.kill9();
    mount.unmount().expect("unmount");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_synchronous_normal_a_power_cut_loses_only_what_came_after_the_last_wal_sync() {
    let started = Instant::now();
    let env = [("SEND_RATE_LIMIT", "off"), ("SQLITE_SYNCHRONOUS", "normal")];
    let client = reqwest::Client::new();
    // A cut that a checkpoint happened to precede by a hair loses nothing; then once more (each
    // attempt checks everything else all the same).
    for attempt in 1..=3 {
        let Some(Setup {
            backing,
            storage,
            mount,
            server,
            alice,
            bob,
        }) = setup(&client, &env).await
        else {
            return;
        };
        // One more answer than there are senders: at least one of them was sent after the
        // WAL's last fsync had been seen.
        let cut = load_and_cut(&client, server, mount, &alice, &bob, SENDERS + 1).await;
        let last_sync = cut
            .last_wal_sync
            .expect("the WAL was fsynced during the load");

        let (check, on_disk) = integrity(backing.path());
        assert_eq!(check, "ok");
        let (mount, server, stored) = restart(&client, backing.path(), &storage, &env, &bob).await;
        let stored_ids = by_content(&stored);
        assert_eq!(on_disk as usize, stored.len());

        let mut acked = cut.acked;
        acked.sort_by(|a, b| a.id.cmp(&b.id));
        let survived: Vec<bool> = acked
            .iter()
            .map(|a| match stored_ids.get(a.content.as_str()) {
                Some(id) => {
                    assert_eq!(*id, a.id, "{} kept its id", a.content);
                    true
                }
                None => false,
            })
            .collect();
        let kept = survived.iter().take_while(|s| **s).count();
        assert!(
            survived[kept..].iter().all(|s| !s),
            "what survives is a prefix of the acknowledged sends in commit order"
        );
        if let Some(first_lost) = acked.get(kept) {
            assert!(
                stored
                    .iter()
                    .all(|m| m["id"].as_str() < Some(&first_lost.id)),
                "nothing committed after a lost send survived"
            );
        }
        for a in &acked {
            if a.at <= last_sync {
                assert!(
                    stored_ids.contains_key(a.content.as_str()),
                    "{} was answered before the WAL's last fsync, and is lost",
                    a.content
                );
            }
        }
        let lost = acked.len() - kept;
        let window = cut.at.duration_since(last_sync);
        eprintln!(
            "power cut, SQLITE_SYNCHRONOUS=normal (attempt {attempt}): {} sends acknowledged, \
             {kept} survived, {lost} lost, all answered in the {window:.1?} since the WAL's \
             last fsync; {} unsynced bytes dropped ({} of the WAL), in {:.1?}",
            acked.len(),
            cut.dropped.total(),
            cut.dropped.of(WAL),
            started.elapsed()
        );
        // How long that window was is the checkpoint's period (a second) plus scheduling: a
        // number for the log, not a test of the machine's speed.
        server.kill9();
        mount.unmount().expect("unmount");
        if cut.quiet {
            assert!(
                lost > 0,
                "sends answered after the WAL's last fsync were lost"
            );
            assert!(cut.dropped.of(WAL) > 0, "{:?}", cut.dropped);
            return;
        }
    }
    panic!("every cut came right after a checkpoint; nothing shows the loss");
}
