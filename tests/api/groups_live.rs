//! Groups live (issue 18, items 4 to 6): group messages, membership changes, read marks, typing
//! and status changes on every member's connections, and nothing for anyone outside.
//!
//! "Nothing arrives" is shown without sleeping: after the action, a marker message is sent to
//! the watcher directly; the next frame they get must be that marker.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::conversations::group;
use crate::helpers::{Answer, TestApp, TestUser};
use crate::ws_client::WsClient;

async fn send_to(app: &TestApp, from: &TestUser, conversation: &str, content: &str) -> Answer {
    app.post(
        &format!("/api/conversations/{conversation}/messages"),
        Some(&from.token),
        json!({"content": content}),
    )
    .await
}

/// The next frame must be of `kind`.
async fn expect(ws: &mut WsClient, kind: &str) -> Value {
    let frame = ws.next_json().await;
    assert_eq!(frame["type"], kind, "{frame}");
    frame
}

/// Proves that nothing reached `watcher`'s socket before now: a direct message from `by` (who
/// has no socket open in the test, so the marker is seen once) must be the next frame.
async fn nothing_else(app: &TestApp, by: &TestUser, watcher: &TestUser, ws: &mut WsClient) {
    let marker = app.send_ok(by, watcher, "marker").await;
    let frame = expect(ws, "message").await;
    assert_eq!(frame["message"]["id"], marker.as_str(), "{frame}");
}

fn member_ids(conversation: &Value) -> Vec<&str> {
    conversation["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| m["id"].as_str().expect("id"))
        .collect()
}

#[tokio::test]
async fn group_messages_reach_every_member_and_no_one_else() {
    let app = TestApp::spawn().await;
    let (ada, grace, linus, eve, herald) = (
        app.user("ada").await,
        app.user("grace").await,
        app.user("linus").await,
        app.user("eve").await,
        app.user("herald").await,
    );
    let (mut ada_ws, mut grace_ws, mut linus_ws, mut eve_ws) = (
        app.ws(&ada).await,
        app.ws(&grace).await,
        app.ws(&linus).await,
        app.ws(&eve).await,
    );
    let id = group(&app, &ada, &[&grace, &linus]).await;
    for ws in [&mut ada_ws, &mut grace_ws, &mut linus_ws] {
        let told = expect(ws, "conversation").await;
        assert_eq!(told["conversation"]["id"], id.as_str());
        assert_eq!(told["conversation"]["title"], "Team");
    }

    // Over HTTP: every member's socket gets it, the sender's included; no recipient.
    let sent = send_to(&app, &ada, &id, "Lunch?").await;
    assert_eq!(sent.status, StatusCode::OK, "{}", sent.body);
    assert_eq!(sent.body["message"], "Message sent successfully");
    for ws in [&mut ada_ws, &mut grace_ws, &mut linus_ws] {
        let pushed = expect(ws, "message").await;
        assert_eq!(pushed["message"]["id"], sent.body["id"]);
        assert_eq!(pushed["message"]["conversation"], id.as_str());
        assert_eq!(pushed["message"]["content"], "Lunch?");
        assert!(pushed["message"].get("recipient").is_none(), "{pushed}");
    }

    // Over the socket: a send frame with `conversation`.
    grace_ws
        .send_json(
            json!({"type": "send", "conversation": id, "content": "Yes!", "client_id": "g1"}),
        )
        .await;
    let mut from_grace = None;
    for _ in 0..2 {
        let frame = grace_ws.next_json().await;
        match frame["type"].as_str() {
            Some("sent") => {
                assert_eq!(frame["client_id"], "g1");
                from_grace = Some(frame["id"].clone());
            }
            Some("message") => assert_eq!(frame["message"]["content"], "Yes!"),
            _ => panic!("unexpected {frame}"),
        }
    }
    for ws in [&mut ada_ws, &mut linus_ws] {
        let pushed = expect(ws, "message").await;
        assert_eq!(Some(&pushed["message"]["id"]), from_grace.as_ref());
    }

    // Outsiders: refused as if it did not exist, and told nothing.
    let refused = send_to(&app, &eve, &id, "let me in").await;
    assert_eq!(refused.status, StatusCode::NOT_FOUND);
    assert_eq!(refused.message(), "Conversation not found");
    eve_ws
        .send_json(json!({"type": "send", "conversation": id, "content": "hi", "client_id": 1}))
        .await;
    let answer = expect(&mut eve_ws, "error").await;
    assert_eq!(answer["code"], 404);
    assert_eq!(answer["message"], "Conversation not found");
    nothing_else(&app, &herald, &eve, &mut eve_ws).await;

    // Exactly one of `recipient` and `conversation`.
    ada_ws
        .send_json(
            json!({"type": "send", "recipient": grace.id, "conversation": id, "content": "x"}),
        )
        .await;
    let answer = expect(&mut ada_ws, "error").await;
    assert_eq!(answer["code"], 400);

    // A retry with the same key answers the first message; another content is a conflict.
    let path = format!("/api/conversations/{id}/messages");
    let mut first = None;
    for content in ["once", "once", "twice"] {
        let response = reqwest::Client::new()
            .post(app.url(&path))
            .bearer_auth(&linus.token)
            .header("Idempotency-Key", "k-1")
            .json(&json!({"content": content}))
            .send()
            .await
            .expect("request");
        let answer = TestApp::answer(response).await;
        match content {
            "twice" => assert_eq!(answer.status, StatusCode::CONFLICT),
            _ => {
                assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
                let id = answer.body["id"].clone();
                assert_eq!(*first.get_or_insert(id.clone()), id);
            }
        }
    }

    // One catch-up covers groups: ada's history after her first message has the rest.
    let history = app
        .messages(
            &ada,
            &format!("?after={}", sent.body["id"].as_str().expect("id")),
        )
        .await;
    let contents: Vec<&str> = history.body.as_array().expect("list")[..]
        .iter()
        .map(|m| m["content"].as_str().expect("content"))
        .collect();
    assert_eq!(contents, ["Yes!", "once"]);
}

#[tokio::test]
async fn a_removed_member_is_told_and_hears_nothing_more_of_the_group() {
    let app = TestApp::spawn().await;
    let (ada, grace, linus) = (
        app.user("ada").await,
        app.user("grace").await,
        app.user("linus").await,
    );
    let id = group(&app, &ada, &[&grace]).await;
    let (mut grace_ws, mut linus_ws) = (app.ws(&grace).await, app.ws(&linus).await);

    // Added: the newcomer and the others are told the new member list.
    let added = app
        .post(
            &format!("/api/conversations/{id}/members"),
            Some(&ada.token),
            json!({"user": linus.id}),
        )
        .await;
    assert_eq!(added.status, StatusCode::OK, "{}", added.body);
    for ws in [&mut grace_ws, &mut linus_ws] {
        let told = expect(ws, "conversation").await;
        assert_eq!(
            member_ids(&told["conversation"]),
            [ada.id.as_str(), grace.id.as_str(), linus.id.as_str()]
        );
    }

    let removed = app
        .request(
            Method::DELETE,
            &format!("/api/conversations/{id}/members/{}", linus.id),
            Some(&ada.token),
            None,
        )
        .await;
    assert_eq!(removed.status, StatusCode::NO_CONTENT);
    let told = expect(&mut linus_ws, "removed").await;
    assert_eq!(told, json!({"type": "removed", "conversation": id}));
    let told = expect(&mut grace_ws, "conversation").await;
    assert_eq!(
        member_ids(&told["conversation"]),
        [ada.id.as_str(), grace.id.as_str()]
    );

    let sent = send_to(&app, &ada, &id, "after you left").await;
    assert_eq!(sent.status, StatusCode::OK);
    assert_eq!(
        expect(&mut grace_ws, "message").await["message"]["id"],
        sent.body["id"]
    );
    // Typing and read marks of the group do not reach him either.
    grace_ws
        .send_json(json!({"type": "typing", "conversation": id}))
        .await;
    let read = app
        .post(
            &format!("/api/conversations/{id}/read"),
            Some(&grace.token),
            json!({"upto": sent.body["id"]}),
        )
        .await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.body);
    nothing_else(&app, &ada, &linus, &mut linus_ws).await;

    let refused = send_to(&app, &linus, &id, "can I come back?").await;
    assert_eq!(refused.status, StatusCode::NOT_FOUND);
    assert_eq!(refused.message(), "Conversation not found");
}

#[tokio::test]
async fn read_marks_reach_every_member_and_the_readers_other_devices() {
    let app = TestApp::spawn().await;
    let (ada, grace) = (app.user("ada").await, app.user("grace").await);
    let id = group(&app, &ada, &[&grace]).await;
    let sent = send_to(&app, &ada, &id, "read me").await;
    let upto = sent.body["id"].as_str().expect("id").to_owned();
    let (mut ada_ws, mut phone, mut laptop) = (
        app.ws(&ada).await,
        app.ws(&grace).await,
        app.ws(&grace).await,
    );

    let read = app
        .post(
            &format!("/api/conversations/{id}/read"),
            Some(&grace.token),
            json!({"upto": upto}),
        )
        .await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.body);
    let expected = json!({"type": "read", "conversation": id, "user": grace.id, "upto": upto});
    for ws in [&mut ada_ws, &mut phone, &mut laptop] {
        assert_eq!(expect(ws, "read").await, expected);
    }

    // Direct conversations too: the reader's other device clears its badge.
    let direct = app.send_ok(&ada, &grace, "psst").await;
    for ws in [&mut phone, &mut laptop] {
        expect(ws, "message").await;
    }
    let pushed = expect(&mut ada_ws, "message").await;
    let conversation = pushed["message"]["conversation"].as_str().expect("id");
    let read = app
        .post(
            &format!("/api/conversations/{conversation}/read"),
            Some(&grace.token),
            json!({"upto": direct}),
        )
        .await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.body);
    for ws in [&mut ada_ws, &mut phone, &mut laptop] {
        assert_eq!(expect(ws, "read").await["upto"], direct.as_str());
    }
}

#[tokio::test]
async fn typing_reaches_the_other_members_at_most_once_per_two_seconds() {
    let app = TestApp::spawn().await;
    let (ada, grace, eve, herald) = (
        app.user("ada").await,
        app.user("grace").await,
        app.user("eve").await,
        app.user("herald").await,
    );
    let id = group(&app, &ada, &[&grace]).await;
    let (mut ada_ws, mut grace_ws, mut eve_ws) =
        (app.ws(&ada).await, app.ws(&grace).await, app.ws(&eve).await);

    // The limit is per user and conversation: the second frame, right after, is dropped.
    for _ in 0..2 {
        grace_ws
            .send_json(json!({"type": "typing", "conversation": id}))
            .await;
    }
    let typing = expect(&mut ada_ws, "typing").await;
    assert_eq!(
        typing,
        json!({"type": "typing", "conversation": id, "user": grace.id})
    );
    nothing_else(&app, &herald, &ada, &mut ada_ws).await;
    // Not echoed to the typist, and never answered on /ws.
    nothing_else(&app, &herald, &grace, &mut grace_ws).await;

    // A non-member's typing goes nowhere, and never reaches them either.
    eve_ws
        .send_json(json!({"type": "typing", "conversation": id}))
        .await;
    eve_ws
        .send_json(json!({"type": "typing", "conversation": "not-an-id"}))
        .await;
    nothing_else(&app, &herald, &ada, &mut ada_ws).await;
    nothing_else(&app, &herald, &eve, &mut eve_ws).await;
}

#[tokio::test]
async fn status_changes_reach_everyone_sharing_a_group() {
    let app = TestApp::spawn().await;
    let (ada, grace) = (app.user("ada").await, app.user("grace").await);
    // They have never written to each other: the group is all they share.
    let _id = group(&app, &ada, &[&grace]).await;
    let mut ada_ws = app.ws(&ada).await;
    let busy = app.set_status(&grace, "BUSY").await;
    assert_eq!(busy.status, StatusCode::OK);
    let pushed = expect(&mut ada_ws, "status").await;
    assert_eq!(pushed["user"], grace.id.as_str());
    assert_eq!(pushed["status"], "BUSY");
}

#[tokio::test]
async fn a_busy_member_does_not_answer_for_a_group() {
    let app = TestApp::spawn().await;
    let (ada, grace) = (app.user("ada").await, app.user("grace").await);
    let id = group(&app, &ada, &[&grace]).await;
    assert_eq!(app.set_status(&grace, "BUSY").await.status, StatusCode::OK);
    let mut ada_ws = app.ws(&ada).await;

    let in_group = send_to(&app, &ada, &id, "anyone?").await;
    assert_eq!(in_group.status, StatusCode::OK);
    assert_eq!(
        expect(&mut ada_ws, "message").await["message"]["id"],
        in_group.body["id"]
    );
    // A direct message to her is answered (the fallback, with no LLM configured) ...
    let direct = app.send_ok(&ada, &grace, "and you?").await;
    assert_eq!(
        expect(&mut ada_ws, "message").await["message"]["id"],
        direct.as_str()
    );
    let answer = expect(&mut ada_ws, "message").await;
    assert_eq!(answer["message"]["kind"], "auto_reply", "{answer}");
    // ... and it was sent after the group message: the group got no answer.
    let group_history = app
        .get(&format!("/api/conversations/{id}/messages"), &ada.token)
        .await;
    let kinds: Vec<&str> = group_history.body.as_array().expect("list")[..]
        .iter()
        .map(|m| m["kind"].as_str().expect("kind"))
        .collect();
    assert_eq!(kinds, ["user"]);
}
