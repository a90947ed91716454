use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::TestApp;

fn ids(answer: &Value) -> Vec<String> {
    answer
        .as_array()
        .expect("an array of messages")
        .iter()
        .map(|m| m["id"].as_str().expect("id").to_owned())
        .collect()
}

#[tokio::test]
async fn a_sent_message_is_listed_for_both_sides() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);

    let sent = app.send(&alice, &bob, "hello bob").await;
    assert_eq!(sent.status, StatusCode::OK);
    assert_eq!(sent.message(), "Message sent successfully");
    let id = sent.body["id"].as_str().expect("id");

    for user in [&alice, &bob] {
        let listed = app.messages(user, "").await;
        assert_eq!(listed.status, StatusCode::OK);
        let messages = listed.body.as_array().expect("array");
        assert_eq!(messages.len(), 1);
        let message = &messages[0];
        assert_eq!(message["id"], id);
        assert_eq!(message["sender"], alice.id.as_str());
        assert_eq!(message["recipient"], bob.id.as_str());
        assert_eq!(message["content"], "hello bob");
        assert_eq!(message["kind"], "user");
        let sent_at = message["sent_at"].as_str().expect("sent_at");
        chrono::DateTime::parse_from_rfc3339(sent_at).expect("RFC 3339");
    }
}

#[tokio::test]
async fn others_never_see_a_conversation() {
    let app = TestApp::spawn().await;
    let (alice, bob, eve) = (
        app.user("alice").await,
        app.user("bob").await,
        app.user("eve").await,
    );
    app.send_ok(&alice, &bob, "private").await;
    assert_eq!(app.messages(&eve, "").await.body, json!([]));
    let with_alice = app.messages(&eve, &format!("?with={}", alice.id)).await;
    assert_eq!(with_alice.body, json!([]));
}

#[tokio::test]
async fn the_sender_is_whoever_the_token_says() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);

    let as_self = app
        .post(
            "/api/chat/send",
            Some(&alice.token),
            json!({"sender": alice.id, "recipient": bob.id, "content": "it's me"}),
        )
        .await;
    assert_eq!(as_self.status, StatusCode::OK);

    for claimed in [json!(bob.id), json!("someone"), json!("")] {
        let spoofed = app
            .post(
                "/api/chat/send",
                Some(&alice.token),
                json!({"sender": claimed, "recipient": bob.id, "content": "spoof"}),
            )
            .await;
        assert_eq!(spoofed.status, StatusCode::FORBIDDEN, "{claimed}");
        assert_eq!(spoofed.message(), "You can only send messages as yourself");
    }
    assert_eq!(ids(&app.messages(&bob, "").await.body).len(), 1);
}

#[tokio::test]
async fn bad_recipients_and_contents_are_refused() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let send = |recipient: Value, content: Value| {
        app.post(
            "/api/chat/send",
            Some(&alice.token),
            json!({"recipient": recipient, "content": content}),
        )
    };

    let unknown = send(json!("01a21ad6-1116-770e-912c-0b82997c7500"), json!("hi")).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.message(), "Recipient not found");

    let malformed = send(json!("bob"), json!("hi")).await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    assert_eq!(malformed.message(), "Recipient must be a valid user id");

    for blank in ["", "   ", "\n\t"] {
        let answer = send(json!(bob.id), json!(blank)).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST);
        assert_eq!(answer.message(), "Content must not be empty");
    }
    let too_long = send(json!(bob.id), json!("x".repeat(4001))).await;
    assert_eq!(too_long.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        too_long.message(),
        "Content must be at most 4000 characters"
    );
    let at_limit = send(json!(bob.id), json!("ü".repeat(4000))).await;
    assert_eq!(at_limit.status, StatusCode::OK);

    assert_eq!(ids(&app.messages(&bob, "").await.body).len(), 1);
}

#[tokio::test]
async fn pages_scroll_back_and_catch_up_in_order() {
    let app = TestApp::spawn().await;
    let (alice, bob, carol) = (
        app.user("alice").await,
        app.user("bob").await,
        app.user("carol").await,
    );
    let mut sent = Vec::new();
    for i in 0..7 {
        let (from, to) = if i % 2 == 0 {
            (&alice, &bob)
        } else {
            (&bob, &alice)
        };
        sent.push(app.send_ok(from, to, &format!("m{i}")).await);
    }
    let to_carol = app.send_ok(&alice, &carol, "for carol").await;

    // Default: everything, oldest first.
    let all = ids(&app.messages(&alice, "").await.body);
    let mut expected = sent.clone();
    expected.push(to_carol.clone());
    assert_eq!(all, expected);

    // Newest page, then scroll back with `before`.
    let newest = ids(&app
        .messages(&alice, &format!("?with={}&limit=3", bob.id))
        .await
        .body);
    assert_eq!(newest, sent[4..7]);
    let older = ids(&app
        .messages(
            &alice,
            &format!("?with={}&limit=3&before={}", bob.id, newest[0]),
        )
        .await
        .body);
    assert_eq!(older, sent[1..4]);
    let oldest = ids(&app
        .messages(
            &alice,
            &format!("?with={}&limit=3&before={}", bob.id, older[0]),
        )
        .await
        .body);
    assert_eq!(oldest, sent[0..1]);

    // Catch up with `after`: the oldest `limit` newer than the cursor.
    let caught_up = ids(&app
        .messages(&bob, &format!("?after={}&limit=2", sent[2]))
        .await
        .body);
    assert_eq!(caught_up, sent[3..5]);
    let rest = ids(&app
        .messages(&bob, &format!("?after={}", caught_up[1]))
        .await
        .body);
    assert_eq!(rest, sent[5..7]);

    // Both cursors: strictly between them.
    let between = ids(&app
        .messages(&alice, &format!("?after={}&before={}", sent[1], sent[5]))
        .await
        .body);
    assert_eq!(between, sent[2..5]);
}

#[tokio::test]
async fn bad_paging_parameters_are_refused() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    for (query, status, message) in [
        (
            "?limit=0",
            StatusCode::BAD_REQUEST,
            "Limit must be between 1 and 200",
        ),
        (
            "?limit=201",
            StatusCode::BAD_REQUEST,
            "Limit must be between 1 and 200",
        ),
        (
            "?before=yesterday",
            StatusCode::BAD_REQUEST,
            "Before must be a valid message id",
        ),
        (
            "?after=1",
            StatusCode::BAD_REQUEST,
            "After must be a valid message id",
        ),
        (
            "?with=bob",
            StatusCode::BAD_REQUEST,
            "With must be a valid user id",
        ),
        (
            "?with=01a21ad6-1116-770e-912c-0b82997c7500",
            StatusCode::NOT_FOUND,
            "User not found",
        ),
    ] {
        let answer = app.messages(&alice, query).await;
        assert_eq!(answer.status, status, "{query}");
        assert_eq!(answer.message(), message, "{query}");
    }
    let non_numeric = app.messages(&alice, "?limit=ten").await;
    assert_eq!(non_numeric.status, StatusCode::BAD_REQUEST);
    assert!(
        non_numeric.message().contains("limit"),
        "{}",
        non_numeric.message()
    );
    assert_eq!(
        app.messages(&alice, "?limit=200").await.status,
        StatusCode::OK
    );
}

/// One user's account change never fails another user's send: a password change, "log out
/// everywhere", a status change and an account deletion each write to the database while four
/// bystanders keep sending (two of them with idempotency keys, whose first statement reads).
#[tokio::test]
async fn bystanders_sends_never_fail_while_someone_changes_their_account() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let app = Arc::new(
        TestApp::spawn_configured(|config| {
            config.limits.sends = None;
            config.limits.auth_per_address = None;
        })
        .await,
    );
    let (carol, dave) = (app.user("carol").await, app.user("dave").await);
    let alice = app.user("alice").await;
    // Deleting alice then has messages to delete, in the same transaction as her account.
    for n in 0..40 {
        app.send_ok(&alice, &dave, &format!("from alice {n}")).await;
    }

    let done = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..4)
        .map(|sender| {
            let (app, done) = (app.clone(), done.clone());
            let (token, recipient) = (carol.token.clone(), dave.id.clone());
            tokio::spawn(async move {
                let mut answers = Vec::new();
                let mut n = 0;
                // At least a few sends each, and on until alice is done.
                while n < 5 || !done.load(Ordering::Acquire) {
                    let mut request = app
                        .client
                        .post(app.url("/api/chat/send"))
                        .bearer_auth(&token)
                        .json(&json!({"recipient": recipient, "content": format!("{sender}/{n}")}));
                    if sender % 2 == 0 {
                        request = request.header("Idempotency-Key", format!("k-{sender}-{n}"));
                    }
                    let answer = TestApp::answer(request.send().await.expect("send")).await;
                    answers.push((answer.status, answer.body));
                    n += 1;
                }
                answers
            })
        })
        .collect();

    let mut password = crate::helpers::PASSWORD.to_owned();
    let mut token = alice.token.clone();
    for round in 0..3 {
        let new_password = format!("another horse battery {round}");
        let changed = app
            .post(
                "/api/auth/password",
                Some(&token),
                json!({"current_password": password, "new_password": new_password}),
            )
            .await;
        assert_eq!(changed.status, StatusCode::OK, "{}", changed.body);
        token = changed.body["token"].as_str().expect("token").to_owned();
        password = new_password;
        let alice = crate::helpers::TestUser {
            id: alice.id.clone(),
            email: alice.email.clone(),
            token: token.clone(),
        };
        let busy = app
            .set_status(&alice, if round % 2 == 0 { "BUSY" } else { "AVAILABLE" })
            .await;
        assert_eq!(busy.status, StatusCode::OK, "{}", busy.body);
    }
    let deleted = app
        .request(
            reqwest::Method::DELETE,
            "/api/users/me",
            Some(&token),
            Some(json!({"password": password})),
        )
        .await;
    assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.body);
    done.store(true, Ordering::Release);

    let mut sent = Vec::new();
    for sender in senders {
        for (status, body) in sender.await.expect("sender task") {
            assert_eq!(status, StatusCode::OK, "a bystander's send failed: {body}");
            sent.push(body["id"].as_str().expect("id").to_owned());
        }
    }
    let mut stored = Vec::new();
    loop {
        // Catching up from the very start, oldest first.
        let after = stored
            .last()
            .cloned()
            .unwrap_or_else(|| "00000000-0000-0000-0000-000000000000".to_owned());
        let page = app
            .messages(
                &dave,
                &format!("?with={}&limit=200&after={after}", carol.id),
            )
            .await;
        assert_eq!(page.status, StatusCode::OK);
        let page = ids(&page.body);
        if page.is_empty() {
            break;
        }
        stored.extend(page);
    }
    sent.sort();
    assert_eq!(stored, sent, "every acknowledged send is stored, once");
}
