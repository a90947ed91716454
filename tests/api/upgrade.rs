//! A data directory written by the release before conversations had ids opens with every
//! message, each now in its conversation. `fixtures/release-2026-12-data/palaver.db` was
//! written by that release (commit 994b853) through its HTTP API: alice, bob and carol
//! (password "correct horse battery"); alice → bob, bob → alice, alice → carol, alice → alice,
//! carol → bob (with an Idempotency-Key), then bob BUSY and alice → bob, answered by the
//! fallback auto-reply.

use std::collections::BTreeSet;
use std::path::Path;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{TestApp, test_config};

const FIXTURE: &str = "fixtures/release-2026-12-data";
const PASSWORD: &str = "correct horse battery";

async fn token(app: &TestApp, name: &str) -> (String, String) {
    let login = app.login(&format!("{name}@example.com"), PASSWORD).await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.body);
    (
        login.body["token"].as_str().expect("token").to_owned(),
        login.body["user_id"].as_str().expect("user id").to_owned(),
    )
}

fn contents(messages: &Value) -> Vec<&str> {
    messages
        .as_array()
        .expect("array")
        .iter()
        .map(|m| m["content"].as_str().expect("content"))
        .collect()
}

#[tokio::test]
async fn a_data_directory_from_the_previous_release_keeps_every_message() {
    let data_dir = tempfile::tempdir().expect("tempdir");
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/api")
        .join(FIXTURE);
    std::fs::copy(
        source.join("palaver.db"),
        data_dir.path().join("palaver.db"),
    )
    .expect("copy the fixture");
    let app = TestApp::spawn_with(test_config(data_dir.path()), data_dir).await;
    let (alice, alice_id) = token(&app, "alice").await;
    let (bob, bob_id) = token(&app, "bob").await;
    let (_, carol_id) = token(&app, "carol").await;

    let all = app.get("/api/chat/messages", &alice).await;
    assert_eq!(all.status, StatusCode::OK);
    assert_eq!(
        contents(&all.body),
        [
            "hi bob",
            "hi alice",
            "hi carol",
            "note to self",
            "are you there?",
            "This user is unavailable right now. Your message was delivered and they will see it later.",
        ]
    );
    let conversation_of = |m: &Value| m["conversation"].as_str().expect("conversation").to_owned();
    let by_pair: BTreeSet<(String, String, String)> = all
        .body
        .as_array()
        .expect("array")
        .iter()
        .map(|m| {
            let (s, r) = (
                m["sender"].as_str().expect("s"),
                m["recipient"].as_str().expect("r"),
            );
            let (low, high) = if s <= r { (s, r) } else { (r, s) };
            (low.to_owned(), high.to_owned(), conversation_of(m))
        })
        .collect();
    // One conversation per pair: alice–bob, alice–carol, alice–alice.
    assert_eq!(by_pair.len(), 3, "{by_pair:?}");
    let ids: BTreeSet<&String> = by_pair.iter().map(|(_, _, c)| c).collect();
    assert_eq!(ids.len(), 3);

    // `with=` finds each conversation by its new id.
    let with_bob = app
        .get(&format!("/api/chat/messages?with={bob_id}"), &alice)
        .await;
    assert_eq!(with_bob.body.as_array().map(Vec::len), Some(4));
    let for_bob = app.get("/api/chat/messages", &bob).await;
    assert_eq!(
        contents(&for_bob.body),
        [
            "hi bob",
            "hi alice",
            "from carol",
            "are you there?",
            "This user is unavailable right now. Your message was delivered and they will see it later.",
        ]
    );
    let with_carol = app
        .get(&format!("/api/chat/messages?with={carol_id}"), &bob)
        .await;
    assert_eq!(contents(&with_carol.body), ["from carol"]);
    assert_ne!(alice_id, bob_id);

    // New messages join the migrated conversations (bob is back, so no auto-reply joins in).
    let back = app
        .request(
            reqwest::Method::PUT,
            "/api/user/status",
            Some(&bob),
            Some(serde_json::json!({"status": "AVAILABLE"})),
        )
        .await;
    assert_eq!(back.status, StatusCode::OK);
    let sent = app
        .post(
            "/api/chat/send",
            Some(&alice),
            serde_json::json!({"recipient": bob_id, "content": "after the upgrade"}),
        )
        .await;
    assert_eq!(sent.status, StatusCode::OK, "{}", sent.body);
    let with_bob = app
        .get(&format!("/api/chat/messages?with={bob_id}"), &alice)
        .await;
    let messages = with_bob.body.as_array().expect("array");
    assert_eq!(messages.len(), 5);
    assert!(
        messages
            .iter()
            .all(|m| conversation_of(m) == conversation_of(&messages[0]))
    );
}
