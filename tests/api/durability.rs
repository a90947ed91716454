//! `kill -9` in the middle of a send storm: every acknowledged send survives, and retrying every
//! send with its idempotency key (acknowledged or not) stores nothing twice.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use crate::process::{Server, Storage, send};

const SENDERS: usize = 8;
const PER_SENDER: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_sends_survive_kill_9_and_retries_store_nothing_twice() {
    let storage = Storage::new();
    let env = [("SEND_RATE_LIMIT", "off"), ("SQLITE_SYNCHRONOUS", "full")];
    let server = Server::start(&storage, &env);
    let client = reqwest::Client::new();
    let (alice, bob) = (
        server.account(&client, "alice").await,
        server.account(&client, "bob").await,
    );
    let alice = Arc::new(alice);
    let acked: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let progress = Arc::new(tokio::sync::Notify::new());

    // Senders run until the server dies under them; kill it once a third has been answered.
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
                for i in 0..PER_SENDER {
                    let content = format!("k-{s}-{i}");
                    match send(&client, &base, &alice, &bob_id, &content).await {
                        Some(id) => {
                            acked.lock().expect("lock").insert(content, id);
                            progress.notify_one();
                        }
                        None => return,
                    }
                }
            })
        })
        .collect();
    let enough = SENDERS * PER_SENDER / 3;
    while acked.lock().expect("lock").len() < enough {
        progress.notified().await;
    }
    server.kill9();
    for sender in senders {
        sender.await.expect("sender");
    }
    let acked = acked.lock().expect("lock").clone();
    assert!(
        acked.len() >= enough && acked.len() < SENDERS * PER_SENDER,
        "{}",
        acked.len()
    );

    let server = Server::start(&storage, &env);
    let stored = server.everything(&client, &bob).await;
    let stored_ids: HashMap<&str, &str> = stored
        .iter()
        .map(|m| {
            (
                m["content"].as_str().expect("content"),
                m["id"].as_str().expect("id"),
            )
        })
        .collect();
    assert_eq!(stored_ids.len(), stored.len(), "no content stored twice");
    for (content, id) in &acked {
        assert_eq!(
            stored_ids.get(content.as_str()),
            Some(&id.as_str()),
            "acknowledged {content} survived"
        );
    }

    // Every client now retries every send it is unsure of, and the ones it is sure of too.
    let base = server.base.clone();
    for s in 0..SENDERS {
        for i in 0..PER_SENDER {
            let content = format!("k-{s}-{i}");
            let id = send(&client, &base, &alice, &bob.id, &content)
                .await
                .expect("the retry is answered");
            if let Some(first) = acked.get(&content) {
                assert_eq!(&id, first, "a retry answers the first id");
            }
        }
    }
    let after = server.everything(&client, &bob).await;
    let contents: HashSet<&str> = after.iter().filter_map(|m| m["content"].as_str()).collect();
    assert_eq!(
        after.len(),
        SENDERS * PER_SENDER,
        "each send stored exactly once"
    );
    assert_eq!(contents.len(), SENDERS * PER_SENDER);
}
