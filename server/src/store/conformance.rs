//! One behaviour suite for every `Store` implementation: each check runs against a fresh,
//! empty store. `suite!` instantiates it per backend: SQLite always, MongoDB when
//! `TEST_MONGODB_URI` is set (each check in a database of its own, dropped when it passes).

use std::sync::Arc;

use chrono::{Duration as ChronoDuration, SubsecRound, Utc};

use super::testing::{fresh_database_name, test_mongodb_uri};
use super::{MongoStore, NewUser, SqliteStore, Store, StoreError};
use crate::config::{MongoSettings, MongoUri, SqliteSynchronous};
use crate::domain::{Email, Message, MessageId, MessageKind, MessagePage, Status, UserId};

fn email(local: &str) -> Email {
    Email::parse(&format!("{local}@example.com")).expect("valid email")
}

async fn user(store: &Arc<dyn Store>, local: &str) -> UserId {
    store
        .create_user(NewUser {
            id: UserId::new(),
            email: email(local),
            password_hash: format!("$argon2id$hash-of-{local}"),
        })
        .await
        .expect("create user")
        .id
}

/// Messages with increasing ids and timestamps, as the writer task makes them.
fn messages(pairs: &[(UserId, UserId)]) -> Vec<Message> {
    let start = Utc::now().trunc_subsecs(3);
    pairs
        .iter()
        .enumerate()
        .map(|(i, (from, to))| Message {
            id: MessageId::new(),
            sender: *from,
            recipient: *to,
            content: format!("message {i}"),
            sent_at: start + ChronoDuration::milliseconds(i as i64),
            kind: if i % 3 == 2 {
                MessageKind::AutoReply
            } else {
                MessageKind::User
            },
        })
        .collect()
}

fn ids(messages: &[Message]) -> Vec<MessageId> {
    messages.iter().map(|m| m.id).collect()
}

async fn page(store: &Arc<dyn Store>, user: UserId, page: MessagePage) -> Vec<MessageId> {
    ids(&store.list_messages(user, &page).await.expect("list"))
}

async fn users_round_trip(store: Arc<dyn Store>) {
    let id = user(&store, "alice").await;
    let found = store.user_by_id(id).await.expect("by id").expect("exists");
    assert_eq!(found.email, email("alice"));
    assert_eq!(found.status, Status::Available);
    assert_eq!(
        store
            .user_by_email(&email("alice"))
            .await
            .expect("by email"),
        Some(found.clone())
    );
    let credentials = store
        .credentials_by_email(&email("alice"))
        .await
        .expect("creds")
        .expect("exists");
    assert_eq!(credentials.user, found);
    assert_eq!(credentials.password_hash, "$argon2id$hash-of-alice");
    assert_eq!(store.user_by_id(UserId::new()).await.expect("by id"), None);
    assert_eq!(
        store
            .user_by_email(&email("nobody"))
            .await
            .expect("by email"),
        None
    );
    assert!(
        store
            .credentials_by_email(&email("nobody"))
            .await
            .expect("creds")
            .is_none()
    );
}

async fn emails_are_unique(store: Arc<dyn Store>) {
    user(&store, "taken").await;
    let again = store
        .create_user(NewUser {
            id: UserId::new(),
            email: Email::parse("TAKEN@Example.com").expect("valid"),
            password_hash: "x".into(),
        })
        .await;
    assert!(matches!(again, Err(StoreError::EmailTaken)), "{again:?}");
}

/// The unique index, not a check-then-insert, decides: of simultaneous registrations of one
/// email exactly one wins.
async fn one_of_simultaneous_registrations_wins(store: Arc<dyn Store>) {
    let attempts = (0..8).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .create_user(NewUser {
                    id: UserId::new(),
                    email: email("race"),
                    password_hash: format!("hash {i}"),
                })
                .await
        })
    });
    let mut won = 0;
    for attempt in attempts.collect::<Vec<_>>() {
        match attempt.await.expect("task") {
            Ok(_) => won += 1,
            Err(StoreError::EmailTaken) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(won, 1);
}

async fn status_changes_report_the_previous_status(store: Arc<dyn Store>) {
    let id = user(&store, "bob").await;
    assert_eq!(
        store.set_status(id, Status::Busy).await.expect("set"),
        Some(Status::Available)
    );
    assert_eq!(
        store.set_status(id, Status::Busy).await.expect("set"),
        Some(Status::Busy)
    );
    assert_eq!(
        store.user_by_id(id).await.expect("get").map(|u| u.status),
        Some(Status::Busy)
    );
    assert_eq!(
        store
            .set_status(UserId::new(), Status::Busy)
            .await
            .expect("set"),
        None
    );
}

async fn messages_keep_every_field(store: Arc<dyn Store>) {
    let (a, b) = (user(&store, "a").await, user(&store, "b").await);
    let batch = messages(&[(a, b), (b, a), (a, b)]);
    store.insert_messages(&batch).await.expect("insert");
    let listed = store
        .list_messages(a, &MessagePage::default())
        .await
        .expect("list");
    assert_eq!(
        listed, batch,
        "same ids, senders, contents, timestamps and kinds, oldest first"
    );
}

async fn pages_scroll_back_and_catch_up(store: Arc<dyn Store>) {
    let (a, b, c) = (
        user(&store, "a").await,
        user(&store, "b").await,
        user(&store, "c").await,
    );
    let batch = messages(&[(a, b), (b, a), (a, c), (a, b), (c, a), (b, a), (a, b)]);
    store.insert_messages(&batch).await.expect("insert");
    let all = ids(&batch);
    let with_b: Vec<MessageId> = batch
        .iter()
        .filter(|m| m.sender == b || m.recipient == b)
        .map(|m| m.id)
        .collect();
    let limit = |n| MessagePage {
        limit: n,
        ..MessagePage::default()
    };

    assert_eq!(page(&store, a, MessagePage::default()).await, all);
    assert_eq!(page(&store, a, limit(3)).await, all[4..]);
    assert_eq!(
        page(
            &store,
            a,
            MessagePage {
                before: Some(all[4]),
                ..limit(3)
            }
        )
        .await,
        all[1..4]
    );
    assert_eq!(
        page(
            &store,
            a,
            MessagePage {
                after: Some(all[1]),
                ..limit(2)
            }
        )
        .await,
        all[2..4]
    );
    assert_eq!(
        page(
            &store,
            a,
            MessagePage {
                after: Some(all[0]),
                before: Some(all[4]),
                ..limit(50)
            }
        )
        .await,
        all[1..4]
    );
    assert_eq!(
        page(
            &store,
            a,
            MessagePage {
                with: Some(b),
                ..limit(50)
            }
        )
        .await,
        with_b
    );
    assert_eq!(
        page(
            &store,
            b,
            MessagePage {
                with: Some(a),
                ..limit(50)
            }
        )
        .await,
        with_b
    );
    assert_eq!(
        page(
            &store,
            b,
            MessagePage {
                with: Some(c),
                ..limit(50)
            }
        )
        .await,
        Vec::<MessageId>::new()
    );
    let c_sees: Vec<MessageId> = batch
        .iter()
        .filter(|m| m.sender == c || m.recipient == c)
        .map(|m| m.id)
        .collect();
    assert_eq!(page(&store, c, MessagePage::default()).await, c_sees);
}

async fn conversation_peers_are_distinct_and_exclude_oneself(store: Arc<dyn Store>) {
    let (a, b, c, d) = (
        user(&store, "a").await,
        user(&store, "b").await,
        user(&store, "c").await,
        user(&store, "d").await,
    );
    store
        .insert_messages(&messages(&[(a, b), (b, a), (c, a), (a, a)]))
        .await
        .expect("insert");
    let mut peers = store.conversation_peers(a).await.expect("peers");
    peers.sort();
    let mut expected = vec![b, c];
    expected.sort();
    assert_eq!(peers, expected);
    assert_eq!(
        store.conversation_peers(d).await.expect("peers"),
        Vec::<UserId>::new()
    );
}

async fn answers_pings(store: Arc<dyn Store>) {
    store.ping().await.expect("ping");
}

/// What a check's store needs kept alive, and cleaned up once the check passes.
enum Scratch {
    Dir(#[allow(dead_code)] tempfile::TempDir),
    Database(mongodb::Database),
}

impl Scratch {
    async fn finish(self) {
        if let Scratch::Database(database) = self {
            database.drop().await.expect("drop the test database");
        }
    }
}

async fn sqlite_store() -> Option<(Arc<dyn Store>, Scratch)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("palaver.db"), SqliteSynchronous::Normal)
        .await
        .expect("open");
    Some((Arc::new(store), Scratch::Dir(dir)))
}

async fn mongo_store() -> Option<(Arc<dyn Store>, Scratch)> {
    let settings = MongoSettings {
        uri: MongoUri::parse(&test_mongodb_uri()?).expect("TEST_MONGODB_URI is a MongoDB URI"),
        database: Some(fresh_database_name()),
    };
    let store = MongoStore::connect(&settings).await.expect("connect");
    let database = store.database().clone();
    Some((Arc::new(store), Scratch::Database(database)))
}

macro_rules! suite {
    ($backend:ident, $make:path: $($check:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let Some((store, scratch)) = $make().await else { return };
                    super::$check(store).await;
                    scratch.finish().await;
                }
            )*
        }
    };
}

macro_rules! every_check {
    ($($backend:ident => $make:path),* $(,)?) => {
        $(
            suite!($backend, $make:
                users_round_trip,
                emails_are_unique,
                one_of_simultaneous_registrations_wins,
                status_changes_report_the_previous_status,
                messages_keep_every_field,
                pages_scroll_back_and_catch_up,
                conversation_peers_are_distinct_and_exclude_oneself,
                answers_pings,
            );
        )*
    };
}

every_check!(sqlite => super::sqlite_store, mongo => super::mongo_store);
