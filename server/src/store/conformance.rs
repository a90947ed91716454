//! One behaviour suite for every `Store` implementation: each check runs against a fresh,
//! empty store. `suite!` instantiates it per backend: SQLite always, MongoDB when
//! `TEST_MONGODB_URI` is set (each check in a database of its own, dropped when it passes).

use std::sync::Arc;

use chrono::{Duration as ChronoDuration, SubsecRound, Utc};

use super::{Inserted, MongoStore, NewMessage, NewUser, SqliteStore, Store, StoreError};
use crate::config::{MongoSettings, MongoUri, SqliteSynchronous};
use crate::domain::{
    Conversation, ConversationId, ConversationKind, Email, IdempotencyKey, Member, Message,
    MessageId, MessageKind, MessagePage, ResponderChoice, Role, Status, Title, UserId,
};
use palaver_test_support::{fresh_database_name, test_mongodb_uri};

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
            conversation: ConversationId::direct(*from, *to),
            sender: *from,
            recipient: Some(*to),
            content: format!("message {i}"),
            sent_at: start + ChronoDuration::milliseconds(i as i64),
            kind: if i % 3 == 2 {
                MessageKind::AutoReply
            } else {
                MessageKind::User
            },
            reply_to: None,
        })
        .collect()
}

/// Stores messages without idempotency keys, asserting each one is stored.
async fn insert(store: &Arc<dyn Store>, messages: &[Message]) {
    let batch: Vec<NewMessage> = messages
        .iter()
        .map(|message| NewMessage {
            message: message.clone(),
            idempotency_key: None,
            awaits_reply: false,
        })
        .collect();
    let outcomes = store.insert_messages(&batch).await.expect("insert");
    assert_eq!(outcomes.len(), batch.len());
    for outcome in outcomes {
        assert_eq!(outcome.expect("stored"), Inserted::Stored);
    }
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
    let other = user(&store, "bob").await;
    let mut found_ids: Vec<UserId> = store
        .users_by_ids(&[other, UserId::new(), id])
        .await
        .expect("by ids")
        .into_iter()
        .map(|u| u.id)
        .collect();
    found_ids.sort();
    let mut expected = vec![id, other];
    expected.sort();
    assert_eq!(found_ids, expected);
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
    insert(&store, &batch).await;
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
    insert(&store, &batch).await;
    let all = ids(&batch);
    let with_b: Vec<MessageId> = batch
        .iter()
        .filter(|m| m.sender == b || m.recipient == Some(b))
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
                conversation: Some(ConversationId::direct(a, b)),
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
                conversation: Some(ConversationId::direct(b, a)),
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
                conversation: Some(ConversationId::direct(b, c)),
                ..limit(50)
            }
        )
        .await,
        Vec::<MessageId>::new()
    );
    let c_sees: Vec<MessageId> = batch
        .iter()
        .filter(|m| m.sender == c || m.recipient == Some(c))
        .map(|m| m.id)
        .collect();
    assert_eq!(page(&store, c, MessagePage::default()).await, c_sees);
    // `upto` caps every kind of page, the newest one and catch-up alike.
    let upto = |page: MessagePage| MessagePage {
        upto: Some(all[4]),
        ..page
    };
    assert_eq!(
        page(&store, a, upto(MessagePage::default())).await,
        all[..5]
    );
    assert_eq!(
        page(
            &store,
            a,
            upto(MessagePage {
                after: Some(all[2]),
                ..limit(50)
            })
        )
        .await,
        all[3..5]
    );
}

async fn conversation_peers_are_distinct_and_exclude_oneself(store: Arc<dyn Store>) {
    let (a, b, c, d) = (
        user(&store, "a").await,
        user(&store, "b").await,
        user(&store, "c").await,
        user(&store, "d").await,
    );
    insert(&store, &messages(&[(a, b), (b, a), (c, a), (a, a)])).await;
    let mut peers = store.conversation_peers(a).await.expect("peers");
    peers.sort();
    let mut expected = vec![b, c];
    expected.sort();
    assert_eq!(peers, expected);
    assert_eq!(
        store.conversation_peers(d).await.expect("peers"),
        Vec::<UserId>::new()
    );
    // A group makes its members peers, though they never wrote to each other; leaving undoes it.
    let group = Conversation::new_group(title("Peers"), d, &[c, a]);
    store.create_conversation(&group).await.expect("create");
    let mut peers = store.conversation_peers(d).await.expect("peers");
    peers.sort();
    let mut expected = vec![a, c];
    expected.sort();
    assert_eq!(peers, expected);
    let mut peers = store.conversation_peers(a).await.expect("peers");
    peers.sort();
    let mut expected = vec![b, c, d];
    expected.sort();
    assert_eq!(peers, expected, "c once, though direct and in the group");
    store.remove_member(group.id, d).await.expect("leave");
    assert_eq!(
        store.conversation_peers(d).await.expect("peers"),
        Vec::<UserId>::new()
    );
}

/// A message to or from a user who does not exist fails alone; the rest of its batch is stored.
async fn one_bad_message_never_fails_its_batch(store: Arc<dyn Store>) {
    let (a, b, ghost) = (
        user(&store, "a").await,
        user(&store, "b").await,
        UserId::new(),
    );
    let batch = messages(&[(a, b), (ghost, b), (b, a), (a, ghost), (a, b)]);
    let keyed: Vec<NewMessage> = batch
        .iter()
        .map(|m| NewMessage {
            message: m.clone(),
            idempotency_key: None,
            awaits_reply: false,
        })
        .collect();
    let outcomes = store
        .insert_messages(&keyed)
        .await
        .expect("the batch goes through");
    let stored: Vec<bool> = outcomes
        .iter()
        .map(|o| matches!(o, Ok(Inserted::Stored)))
        .collect();
    assert_eq!(stored, [true, false, true, false, true]);
    assert!(
        matches!(outcomes[1], Err(StoreError::UnknownUser)),
        "{:?}",
        outcomes[1]
    );
    assert_eq!(
        page(&store, b, MessagePage::default()).await,
        [batch[0].id, batch[2].id, batch[4].id]
    );
}

/// An auto-reply, stored under the key made for it, names the message it answers when read back.
async fn auto_replies_name_the_message_they_answer(store: Arc<dyn Store>) {
    let (a, b) = (user(&store, "a").await, user(&store, "b").await);
    let pair = messages(&[(a, b), (b, a)]);
    let question = pair[0].clone();
    let answer = Message {
        kind: MessageKind::AutoReply,
        reply_to: Some(question.id),
        ..pair[1].clone()
    };
    let outcomes = store
        .insert_messages(&[
            NewMessage {
                message: question.clone(),
                idempotency_key: None,
                awaits_reply: true,
            },
            NewMessage {
                message: answer.clone(),
                idempotency_key: Some(IdempotencyKey::for_auto_reply(question.id)),
                awaits_reply: false,
            },
        ])
        .await
        .expect("insert");
    assert!(
        outcomes
            .iter()
            .all(|o| o.as_ref().is_ok_and(|o| *o == Inserted::Stored))
    );
    let page = MessagePage {
        conversation: Some(question.conversation),
        ..MessagePage::default()
    };
    let read = store.list_messages(a, &page).await.expect("list");
    assert_eq!(read, [question, answer]);
}

/// A retried send (same sender, same key) is answered with the first message; another sender
/// may use the same key; a key reused within one batch answers with the first of the batch.
async fn idempotency_keys_store_a_send_once(store: Arc<dyn Store>) {
    let (a, b) = (user(&store, "a").await, user(&store, "b").await);
    let key = IdempotencyKey::parse("send-1").expect("key");
    let keyed = |message: &Message| NewMessage {
        message: message.clone(),
        idempotency_key: Some(key.clone()),
        awaits_reply: false,
    };
    let first = messages(&[(a, b), (b, a)]);
    let outcomes = store
        .insert_messages(&[keyed(&first[0]), keyed(&first[1])])
        .await
        .expect("insert");
    assert_eq!(outcomes[0].as_ref().expect("a"), &Inserted::Stored);
    assert_eq!(
        outcomes[1].as_ref().expect("b"),
        &Inserted::Stored,
        "another sender's key"
    );

    let retry = messages(&[(a, b), (a, b)]);
    let outcomes = store
        .insert_messages(&[keyed(&retry[0]), keyed(&retry[1])])
        .await
        .expect("insert");
    for outcome in outcomes {
        assert_eq!(
            outcome.expect("replayed"),
            Inserted::Replayed(first[0].clone())
        );
    }
    let fresh = IdempotencyKey::parse("send-2").expect("key");
    let twice = messages(&[(a, b), (a, b)]);
    let outcomes = store
        .insert_messages(&[
            NewMessage {
                message: twice[0].clone(),
                idempotency_key: Some(fresh.clone()),
                awaits_reply: false,
            },
            NewMessage {
                message: twice[1].clone(),
                idempotency_key: Some(fresh),
                awaits_reply: false,
            },
        ])
        .await
        .expect("insert");
    assert_eq!(outcomes[0].as_ref().expect("first"), &Inserted::Stored);
    assert_eq!(
        outcomes[1].as_ref().expect("second"),
        &Inserted::Replayed(twice[0].clone())
    );
    assert_eq!(
        page(&store, a, MessagePage::default()).await,
        [first[0].id, first[1].id, twice[0].id]
    );
}

/// Revoking tokens moves the version on (and may set a new password); deleting a user takes
/// their messages with them.
async fn tokens_are_revoked_and_users_deleted(store: Arc<dyn Store>) {
    let (a, b) = (user(&store, "a").await, user(&store, "b").await);
    assert_eq!(store.token_version(a).await.expect("version"), Some(0));
    assert_eq!(store.revoke_tokens(a, None).await.expect("revoke"), Some(1));
    assert_eq!(
        store
            .revoke_tokens(a, Some("$argon2id$new".into()))
            .await
            .expect("revoke"),
        Some(2)
    );
    let credentials = store
        .credentials_by_email(&email("a"))
        .await
        .expect("creds")
        .expect("exists");
    assert_eq!(credentials.token_version, 2);
    assert_eq!(credentials.password_hash, "$argon2id$new");
    assert_eq!(
        store.password_hash(a).await.expect("hash").as_deref(),
        Some("$argon2id$new")
    );
    assert_eq!(
        store
            .revoke_tokens(UserId::new(), None)
            .await
            .expect("revoke"),
        None
    );

    insert(&store, &messages(&[(a, b), (b, a)])).await;
    let kept = messages(&[(b, b)]);
    insert(&store, &kept).await;
    assert!(store.delete_user(a).await.expect("delete"));
    assert!(!store.delete_user(a).await.expect("delete again"));
    assert_eq!(store.token_version(a).await.expect("version"), None);
    assert_eq!(store.user_by_id(a).await.expect("get"), None);
    assert_eq!(page(&store, b, MessagePage::default()).await, ids(&kept));
}

async fn responder_choices_are_kept_per_user(store: Arc<dyn Store>) {
    let (a, b) = (user(&store, "a").await, user(&store, "b").await);
    assert_eq!(store.responder_choice(a).await.expect("read"), None);
    let persona = ResponderChoice {
        plugin: "llm-responder".into(),
        config: [
            (
                "persona".to_owned(),
                "Short, warm; I'm back at 5 pm. \"Quotes\" and émoji 🎉".to_owned(),
            ),
            ("language".to_owned(), "French".to_owned()),
        ]
        .into(),
    };
    assert!(store.set_responder_choice(a, &persona).await.expect("set"));
    assert_eq!(
        store.responder_choice(a).await.expect("read"),
        Some(persona)
    );
    assert_eq!(
        store.responder_choice(b).await.expect("read"),
        None,
        "b is untouched"
    );
    let away = ResponderChoice {
        plugin: "away-message".into(),
        config: [("message".to_owned(), "Out until Monday".to_owned())].into(),
    };
    assert!(store.set_responder_choice(a, &away).await.expect("replace"));
    assert_eq!(
        store.responder_choice(a).await.expect("read"),
        Some(away.clone())
    );
    // Other changes to the user leave the choice alone.
    store.set_status(a, Status::Busy).await.expect("status");
    store.revoke_tokens(a, None).await.expect("revoke");
    assert_eq!(
        store.responder_choice(a).await.expect("read"),
        Some(away.clone())
    );

    let nobody = UserId::new();
    assert!(
        !store
            .set_responder_choice(nobody, &away)
            .await
            .expect("unknown user")
    );
    assert_eq!(store.responder_choice(nobody).await.expect("read"), None);
    assert!(store.delete_user(a).await.expect("delete"));
    assert_eq!(store.responder_choice(a).await.expect("read"), None);
}

fn title(text: &str) -> Title {
    Title::parse(text).expect("valid title")
}

fn members(conversation: &Conversation) -> Vec<(UserId, Role)> {
    conversation
        .members
        .iter()
        .map(|m| (m.user, m.role))
        .collect()
}

async fn groups_keep_their_members_in_joining_order(store: Arc<dyn Store>) {
    let (a, b, c) = (
        user(&store, "a").await,
        user(&store, "b").await,
        user(&store, "c").await,
    );
    let group = Conversation::new_group(title("Lunch"), a, &[b]);
    store.create_conversation(&group).await.expect("create");
    let stored = store.conversation(group.id).await.expect("read");
    assert_eq!(stored.as_ref(), Some(&group));

    assert!(
        store
            .set_title(group.id, &title("Dinner"))
            .await
            .expect("rename")
    );
    let member = Member {
        user: c,
        role: Role::Member,
    };
    assert!(store.add_member(group.id, &member).await.expect("add"));
    assert!(
        !store
            .add_member(group.id, &member)
            .await
            .expect("add again")
    );
    let stored = store
        .conversation(group.id)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(stored.title, Some(title("Dinner")));
    assert_eq!(
        members(&stored),
        vec![(a, Role::Owner), (b, Role::Member), (c, Role::Member)]
    );

    let nobody = Member {
        user: UserId::new(),
        role: Role::Member,
    };
    assert!(matches!(
        store.add_member(group.id, &nobody).await,
        Err(StoreError::UnknownUser)
    ));
    let with_a_stranger = Conversation::new_group(title("x"), a, &[UserId::new()]);
    assert!(matches!(
        store.create_conversation(&with_a_stranger).await,
        Err(StoreError::UnknownUser)
    ));
    assert_eq!(
        store.conversation(with_a_stranger.id).await.expect("read"),
        None
    );
    assert_eq!(
        store
            .conversation(ConversationId::new_group())
            .await
            .expect("read"),
        None
    );
}

async fn the_owner_leaving_hands_the_group_on_and_the_last_deletes_it(store: Arc<dyn Store>) {
    let (a, b, c) = (
        user(&store, "a").await,
        user(&store, "b").await,
        user(&store, "c").await,
    );
    let group = Conversation::new_group(title("Team"), a, &[b, c]);
    store.create_conversation(&group).await.expect("create");
    let after = store
        .remove_member(group.id, a)
        .await
        .expect("leave")
        .expect("was a member");
    assert_eq!(members(&after), vec![(b, Role::Owner), (c, Role::Member)]);
    assert_eq!(store.remove_member(group.id, a).await.expect("again"), None);
    let after = store
        .remove_member(group.id, c)
        .await
        .expect("remove")
        .expect("was a member");
    assert_eq!(members(&after), vec![(b, Role::Owner)]);
    let after = store
        .remove_member(group.id, b)
        .await
        .expect("last out")
        .expect("was a member");
    assert!(after.members.is_empty());
    assert_eq!(store.conversation(group.id).await.expect("read"), None);
}

async fn direct_conversations_exist_from_their_first_message(store: Arc<dyn Store>) {
    let (a, b) = (user(&store, "a").await, user(&store, "b").await);
    let id = ConversationId::direct(a, b);
    assert_eq!(store.conversation(id).await.expect("read"), None);
    insert(&store, &messages(&[(a, b), (b, a)])).await;
    let direct = store.conversation(id).await.expect("read").expect("exists");
    let first = store
        .list_messages(a, &MessagePage::default())
        .await
        .expect("list")[0]
        .clone();
    assert_eq!(store.message(first.id).await.expect("read"), Some(first));
    assert_eq!(store.message(MessageId::new()).await.expect("read"), None);
    assert_eq!(direct.kind, ConversationKind::Direct);
    assert_eq!(direct.title, None);
    let mut people: Vec<UserId> = direct.members.iter().map(|m| m.user).collect();
    people.sort();
    let mut expected = vec![a, b];
    expected.sort();
    assert_eq!(people, expected);
    assert!(direct.members.iter().all(|m| m.role == Role::Member));
}

async fn the_conversation_list_counts_unread_and_pages_by_activity(store: Arc<dyn Store>) {
    let (a, b, c) = (
        user(&store, "a").await,
        user(&store, "b").await,
        user(&store, "c").await,
    );
    let sent = messages(&[(b, a), (b, a), (a, b)]);
    insert(&store, &sent).await;
    let group = Conversation::new_group(title("Group"), a, &[b]);
    store.create_conversation(&group).await.expect("create");
    // Written after the group was created, so it is the newest activity.
    insert(&store, &messages(&[(c, a)])).await;

    let list = store.conversations_of(a, None, 10).await.expect("list");
    let order: Vec<ConversationId> = list.iter().map(|s| s.conversation.id).collect();
    assert_eq!(
        order,
        vec![
            ConversationId::direct(a, c),
            group.id,
            ConversationId::direct(a, b)
        ]
    );
    let with_b = &list[2];
    assert_eq!(with_b.last_message.as_ref().map(|m| m.id), Some(sent[2].id));
    // Two from b; a's own message does not count.
    assert_eq!((with_b.unread, with_b.read_upto), (2, None));
    assert_eq!((list[1].unread, list[1].last_message.as_ref()), (0, None));

    assert_eq!(
        store
            .mark_read(with_b.conversation.id, a, sent[0].id)
            .await
            .expect("mark"),
        Some(sent[0].id)
    );
    // Never back.
    assert_eq!(
        store
            .mark_read(
                with_b.conversation.id,
                a,
                MessageId::from(uuid::Uuid::nil())
            )
            .await
            .expect("mark"),
        Some(sent[0].id)
    );
    assert_eq!(
        store
            .mark_read(group.id, c, sent[0].id)
            .await
            .expect("mark"),
        None
    );

    let first = store.conversations_of(a, None, 2).await.expect("page 1");
    assert_eq!(first.len(), 2);
    let rest = store
        .conversations_of(a, Some(first[1].activity), 2)
        .await
        .expect("page 2");
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].conversation.id, ConversationId::direct(a, b));
    assert_eq!((rest[0].unread, rest[0].read_upto), (1, Some(sent[0].id)));
    assert!(store.conversations_of(c, None, 10).await.expect("c").len() == 1);
}

async fn group_messages_reach_members_only_while_they_are_members(store: Arc<dyn Store>) {
    let (a, b, c) = (
        user(&store, "a").await,
        user(&store, "b").await,
        user(&store, "c").await,
    );
    let group = Conversation::new_group(title("G"), a, &[b]);
    store.create_conversation(&group).await.expect("create");
    let content = |text: &str| crate::domain::Content::parse(text.to_owned()).expect("content");
    let first = Message::to_group(a, group.id, content("hello group"));
    let from_outside = Message::to_group(c, group.id, content("let me in"));
    let outcomes = store
        .insert_messages(&[
            NewMessage {
                message: first.clone(),
                idempotency_key: None,
                awaits_reply: false,
            },
            NewMessage {
                message: from_outside,
                idempotency_key: None,
                awaits_reply: false,
            },
        ])
        .await
        .expect("insert");
    assert_eq!(outcomes[0].as_ref().expect("stored"), &Inserted::Stored);
    assert!(matches!(outcomes[1], Err(StoreError::NotMember)));

    assert_eq!(
        store.message(first.id).await.expect("read"),
        Some(first.clone())
    );
    let everything = MessagePage::default();
    assert_eq!(page(&store, b, everything.clone()).await, vec![first.id]);
    assert_eq!(
        page(&store, c, everything.clone()).await,
        Vec::<MessageId>::new()
    );
    let in_group = MessagePage {
        conversation: Some(group.id),
        ..MessagePage::default()
    };
    assert_eq!(page(&store, b, in_group).await, vec![first.id]);
    let list = store.conversations_of(b, None, 10).await.expect("list");
    assert_eq!(list[0].conversation.id, group.id);
    assert_eq!(list[0].last_message.as_ref(), Some(&first));
    assert_eq!(list[0].unread, 1);

    store.remove_member(group.id, b).await.expect("remove");
    assert_eq!(page(&store, b, everything).await, Vec::<MessageId>::new());
}

/// History merges direct and group messages in id order, page by page both ways, for a user in
/// a few groups and one in more than the SQLite store reads one by one.
async fn history_merges_direct_and_group_messages_in_id_order(store: Arc<dyn Store>) {
    for group_count in [3, 70] {
        let (a, b, c) = (
            user(&store, &format!("a{group_count}")).await,
            user(&store, &format!("b{group_count}")).await,
            user(&store, &format!("c{group_count}")).await,
        );
        let mut groups = Vec::new();
        for i in 0..group_count {
            let group = Conversation::new_group(title(&format!("G{i}")), a, &[b]);
            store.create_conversation(&group).await.expect("create");
            groups.push(group.id);
        }
        let elsewhere = Conversation::new_group(title("without a"), b, &[c]);
        store.create_conversation(&elsewhere).await.expect("create");
        let content = |text: String| crate::domain::Content::parse(text).expect("content");
        let mut sent = Vec::new();
        for i in 0..(2 * group_count) {
            let message = match i % 4 {
                0 => messages(&[(a, b)]).remove(0),
                1 => messages(&[(c, a)]).remove(0),
                2 => Message::to_group(b, elsewhere.id, content(format!("not for a {i}"))),
                _ => Message::to_group(b, groups[i % group_count], content(format!("g {i}"))),
            };
            insert(&store, std::slice::from_ref(&message)).await;
            sent.push(message);
        }
        let seen: Vec<MessageId> = sent
            .iter()
            .filter(|m| m.conversation != elsewhere.id)
            .map(|m| m.id)
            .collect();

        let mut back = Vec::new();
        let mut before = None;
        loop {
            let got = page(
                &store,
                a,
                MessagePage {
                    before,
                    limit: 7,
                    ..MessagePage::default()
                },
            )
            .await;
            let Some(&oldest) = got.first() else { break };
            back.splice(0..0, got);
            before = Some(oldest);
        }
        assert_eq!(back, seen, "scrolling back in {group_count} groups");

        let mut forward = Vec::new();
        let mut after = Some(seen[0]);
        while let Some(cursor) = after {
            let got = page(
                &store,
                a,
                MessagePage {
                    after: Some(cursor),
                    limit: 7,
                    ..MessagePage::default()
                },
            )
            .await;
            after = got.last().copied();
            forward.extend(got);
        }
        assert_eq!(forward, seen[1..], "catching up in {group_count} groups");
    }
}

async fn deleting_a_user_takes_them_out_of_every_conversation(store: Arc<dyn Store>) {
    let (a, b) = (user(&store, "a").await, user(&store, "b").await);
    insert(&store, &messages(&[(a, b)])).await;
    let group = Conversation::new_group(title("G"), a, &[b]);
    store.create_conversation(&group).await.expect("create");
    assert!(store.delete_user(a).await.expect("delete"));
    assert_eq!(
        store
            .conversation(ConversationId::direct(a, b))
            .await
            .expect("read"),
        None
    );
    let left = store
        .conversation(group.id)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(members(&left), vec![(b, Role::Owner)]);
    assert_eq!(
        store
            .conversations_of(b, None, 10)
            .await
            .expect("list")
            .len(),
        1
    );
}

/// The newest page, read again after each kind of write that changes it, shows the change
/// (the SQLite store keeps newest pages in memory: each read here fills it first).
async fn the_newest_page_follows_every_write_that_changes_it(store: Arc<dyn Store>) {
    let (a, b, c) = (
        user(&store, "a").await,
        user(&store, "b").await,
        user(&store, "c").await,
    );
    let newest = MessagePage::default();
    let content = |text: &str| crate::domain::Content::parse(text.to_owned()).expect("content");
    let mut seen_by_b = Vec::new();
    assert_eq!(page(&store, b, newest.clone()).await, seen_by_b);
    assert_eq!(page(&store, a, newest.clone()).await, vec![]);

    let direct = messages(&[(a, b)]);
    insert(&store, &direct).await;
    seen_by_b.push(direct[0].id);
    assert_eq!(page(&store, b, newest.clone()).await, seen_by_b, "received");
    assert_eq!(page(&store, a, newest.clone()).await, seen_by_b, "sent");

    let mine = Conversation::new_group(title("with b"), c, &[b]);
    store.create_conversation(&mine).await.expect("create");
    let hello = Message::to_group(c, mine.id, content("hello b"));
    insert(&store, std::slice::from_ref(&hello)).await;
    seen_by_b.push(hello.id);
    assert_eq!(
        page(&store, b, newest.clone()).await,
        seen_by_b,
        "a group message"
    );

    let other = Conversation::new_group(title("before b"), c, &[]);
    store.create_conversation(&other).await.expect("create");
    let earlier = Message::to_group(c, other.id, content("said before b came"));
    insert(&store, std::slice::from_ref(&earlier)).await;
    assert_eq!(
        page(&store, b, newest.clone()).await,
        seen_by_b,
        "not b's group"
    );
    let joined = Member {
        user: b,
        role: Role::Member,
    };
    assert!(store.add_member(other.id, &joined).await.expect("add"));
    let mut with_other = seen_by_b.clone();
    with_other.push(earlier.id);
    assert_eq!(page(&store, b, newest.clone()).await, with_other, "joined");

    store.remove_member(other.id, b).await.expect("remove");
    assert_eq!(page(&store, b, newest.clone()).await, seen_by_b, "left");

    assert!(store.delete_user(a).await.expect("delete"));
    seen_by_b.remove(0);
    assert_eq!(
        page(&store, b, newest.clone()).await,
        seen_by_b,
        "sender deleted"
    );
    // Another page size is its own page.
    let one = MessagePage {
        limit: 1,
        ..MessagePage::default()
    };
    assert_eq!(page(&store, b, one).await, vec![hello.id]);
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
                one_bad_message_never_fails_its_batch,
                idempotency_keys_store_a_send_once,
                auto_replies_name_the_message_they_answer,
                tokens_are_revoked_and_users_deleted,
                responder_choices_are_kept_per_user,
                groups_keep_their_members_in_joining_order,
                the_owner_leaving_hands_the_group_on_and_the_last_deletes_it,
                direct_conversations_exist_from_their_first_message,
                the_conversation_list_counts_unread_and_pages_by_activity,
                deleting_a_user_takes_them_out_of_every_conversation,
                group_messages_reach_members_only_while_they_are_members,
                history_merges_direct_and_group_messages_in_id_order,
                the_newest_page_follows_every_write_that_changes_it,
                answers_pings,
            );
        )*
    };
}

every_check!(sqlite => super::sqlite_store, mongo => super::mongo_store);
