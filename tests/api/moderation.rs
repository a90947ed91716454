//! The moderation chain (`MODERATION_PLUGINS`), with moderators built from source: the
//! word-filter example and the hostile moderator. A refused send is 422 on HTTP and an `error`
//! frame with code 422 on the WebSocket, and nothing is stored or pushed; a replaced text is what
//! is stored and pushed; a moderator that fails never holds a send past its deadline.

use std::path::Path;
use std::time::{Duration, Instant};

use palaver::config::{OnFailure, SqliteSynchronous};
use palaver::responder::MODERATION_FAILED;
use palaver::wasm::PLUGIN_BUILD_DIR;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::helpers::{TestApp, TestUser, operator_listener};
use crate::ws_client::WsClient;

/// A plugins folder with each `(name, built wasm, manifest)`.
fn plugins(entries: &[(&str, &str, String)]) -> TempDir {
    let dir = tempfile::tempdir().expect("plugins dir");
    for (name, built, manifest) in entries {
        let source = Path::new(PLUGIN_BUILD_DIR).join(built);
        std::fs::copy(&source, dir.path().join(format!("{name}.wasm")))
            .unwrap_or_else(|e| panic!("copy {}: {e}", source.display()));
        std::fs::write(dir.path().join(format!("{name}.toml")), manifest).expect("manifest");
    }
    dir
}

fn word_filter(mode: &str) -> String {
    format!(
        "name = \"words\"\nversion = \"1\"\n[config]\nwords = \"darn, Heck\"\nmode = \"{mode}\"\n"
    )
}

fn hostile(name: &str, mode: &str, extra: &str) -> String {
    format!("name = \"{name}\"\nversion = \"1\"\n{extra}\n[config]\nmode = \"{mode}\"\n")
}

async fn app(
    dir: &TempDir,
    chain: &[&str],
    adjust: impl FnOnce(&mut palaver::config::Config),
) -> TestApp {
    let path = dir.path().to_path_buf();
    let chain: Vec<String> = chain.iter().map(|s| (*s).to_owned()).collect();
    TestApp::spawn_configured(move |config| {
        config.responder.plugins_dir = Some(path);
        config.responder.moderators = chain;
        config.sqlite_synchronous = SqliteSynchronous::Normal;
        adjust(config);
    })
    .await
}

async fn expect(ws: &mut WsClient, kind: &str) -> Value {
    let frame = ws.next_json().await;
    assert_eq!(frame["type"], kind, "{frame}");
    frame
}

async fn contents(app: &TestApp, user: &TestUser) -> Vec<String> {
    let page = app.messages(user, "").await;
    assert_eq!(page.status, StatusCode::OK);
    page.body
        .as_array()
        .expect("array")
        .iter()
        .map(|m| m["content"].as_str().expect("content").to_owned())
        .collect()
}

#[tokio::test]
async fn a_chain_rejects_and_rewrites_on_http_and_websocket_before_anything_is_stored() {
    // The word filter first (reject mode), then a moderator that appends a mark.
    let dir = plugins(&[
        ("words", "word_filter.wasm", word_filter("reject")),
        (
            "marker",
            "hostile_moderator.wasm",
            "name = \"marker\"\nversion = \"1\"\n[config]\nmode = \"replace\"\nreplacement = \"{content} [checked]\"\n".to_owned(),
        ),
    ]);
    let app = app(&dir, &["words", "marker"], |_| {}).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let mut bob_ws = app.ws(&bob).await;

    let refused = app.send(&alice, &bob, "what the DARN thing").await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        refused.body,
        json!({"message": "Your message contains the word \"darn\""})
    );

    let mut alice_ws = app.ws(&alice).await;
    alice_ws
        .send_json(
            json!({"type": "send", "recipient": bob.id, "content": "oh heck", "client_id": "c1"}),
        )
        .await;
    let error = expect(&mut alice_ws, "error").await;
    assert_eq!(error["code"], 422);
    assert_eq!(error["client_id"], "c1");
    assert_eq!(error["message"], "Your message contains the word \"Heck\"");

    // What passes is stored and pushed as the last moderator left it; the refused ones never
    // reached Bob (this is his first frame).
    let id = app.send_ok(&alice, &bob, "hello").await;
    let pushed = expect(&mut bob_ws, "message").await;
    assert_eq!(pushed["message"]["id"], id.as_str());
    assert_eq!(pushed["message"]["content"], "hello [checked]");
    assert_eq!(contents(&app, &bob).await, ["hello [checked]"]);

    // Listed as moderators; not something a user can pick to answer for them.
    let listed = app.get("/api/plugins", &alice.token).await;
    let roles: Vec<(&str, &Value)> = listed
        .body
        .as_array()
        .expect("array")
        .iter()
        .map(|p| (p["name"].as_str().expect("name"), &p["roles"]))
        .collect();
    assert_eq!(
        roles,
        [
            ("llm-responder", &json!(["responder"])),
            ("marker", &json!(["moderator"])),
            ("words", &json!(["moderator"])),
        ]
    );
    let chosen = app
        .request(
            reqwest::Method::PUT,
            "/api/users/me/responder",
            Some(&alice.token),
            Some(json!({"plugin": "words", "config": {}})),
        )
        .await;
    assert_eq!(chosen.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        chosen.body["message"],
        "The plugin \"words\" is a moderator, not a responder"
    );
}

#[tokio::test]
async fn masking_replaces_each_letter_of_the_word() {
    let dir = plugins(&[("words", "word_filter.wasm", word_filter("mask"))]);
    let app = app(&dir, &["words"], |_| {}).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    app.send_ok(&alice, &bob, "Darn it, darn it all, HECK!")
        .await;
    assert_eq!(contents(&app, &bob).await, ["**** it, **** it all, ****!"]);
}

#[tokio::test]
async fn a_retry_gets_the_first_outcome_without_moderating_again() {
    // A moderator that stamps each text differently: moderated again, the retry would differ
    // from the stored message and be refused as a reused key.
    let dir = plugins(&[(
        "stamp",
        "hostile_moderator.wasm",
        hostile("stamp", "stamp", ""),
    )]);
    let app = app(&dir, &["stamp"], |_| {}).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let mut ids = Vec::new();
    for _ in 0..2 {
        let response = reqwest::Client::new()
            .post(app.url("/api/chat/send"))
            .bearer_auth(&alice.token)
            .header("Idempotency-Key", "k-1")
            .json(&json!({"recipient": bob.id, "content": "hi"}))
            .send()
            .await
            .expect("request");
        let answer = TestApp::answer(response).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        ids.push(answer.body["id"].clone());
    }
    assert_eq!(ids[0], ids[1]);
    let stored = contents(&app, &bob).await;
    assert_eq!(stored.len(), 1);
    assert!(stored[0].starts_with("hi #"), "{stored:?}");
}

#[tokio::test]
async fn a_hanging_moderator_lets_the_send_through_or_refuses_it_by_its_on_failure() {
    let dir = plugins(&[(
        "stuck",
        "hostile_moderator.wasm",
        hostile("stuck", "loop", "timeout_ms = 200\non_failure = \"allow\""),
    )]);
    let app_open = app(&dir, &["stuck"], |_| {}).await;
    let (alice, bob) = (app_open.user("alice").await, app_open.user("bob").await);
    let started = Instant::now();
    app_open.send_ok(&alice, &bob, "through").await;
    // The deadline is the feature: 200 ms, with a wide margin for a loaded machine.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(contents(&app_open, &bob).await, ["through"]);
    app_open.stop().await;

    // The operator says a failure of this one refuses the message.
    let app_closed = app(&dir, &["stuck"], |config| {
        config
            .responder
            .moderation_on_failure
            .insert("stuck".into(), OnFailure::Reject);
    })
    .await;
    let (alice, bob) = (app_closed.user("alice").await, app_closed.user("bob").await);
    let refused = app_closed.send(&alice, &bob, "blocked").await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(refused.body["message"], MODERATION_FAILED);
    assert!(contents(&app_closed, &bob).await.is_empty());
}

#[tokio::test]
async fn misbehaving_moderators_fail_by_their_on_failure_and_get_benched() {
    for mode in ["panic", "error", "memory", "huge"] {
        let dir = plugins(&[(
            "bad",
            "hostile_moderator.wasm",
            hostile("bad", mode, "memory_mb = 16\non_failure = \"reject\""),
        )]);
        let app = app(&dir, &["bad"], |config| {
            config.responder.bench_after = Some(2);
            config.metrics_addr = operator_listener();
        })
        .await;
        let (alice, bob) = (app.user("alice").await, app.user("bob").await);
        // Failing, then benched: refused every time, as its manifest says.
        for n in 0..4 {
            let refused = app.send(&alice, &bob, &format!("try {n}")).await;
            assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY, "{mode}");
            assert_eq!(refused.body["message"], MODERATION_FAILED, "{mode}");
        }
        assert!(contents(&app, &bob).await.is_empty(), "{mode}");
        // The operator's plugin list tells the truth: benched, with what went wrong.
        let listed = app.operator_get("/plugins").await;
        let bad = listed
            .as_array()
            .and_then(|plugins| plugins.iter().find(|p| p["name"] == "bad"))
            .expect("listed")
            .clone();
        assert_eq!(bad["state"], "benched", "{mode}: {bad}");
        assert_eq!(bad["consecutive_failures"], 2, "{mode}: {bad}");
        assert!(bad["last_error"].is_string(), "{mode}: {bad}");
    }
}

#[tokio::test]
async fn a_rejection_reason_is_cleaned_and_cut() {
    let reason = format!("bad\u{1b}[31m\nnews {}", "x".repeat(300));
    let manifest = format!(
        "name = \"strict\"\nversion = \"1\"\n[config]\nmode = \"reject\"\nreason = {}\n",
        toml_string(&reason)
    );
    let dir = plugins(&[("strict", "hostile_moderator.wasm", manifest)]);
    let app = app(&dir, &["strict"], |_| {}).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let refused = app.send(&alice, &bob, "anything").await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    let message = refused.body["message"].as_str().expect("message");
    assert!(message.starts_with("bad[31mnews xxx"), "{message}");
    assert_eq!(message.chars().count(), 200);
}

fn toml_string(text: &str) -> String {
    serde_json::to_string(text).expect("a JSON string is a TOML basic string")
}

#[tokio::test]
async fn a_plugin_built_against_the_first_interface_still_answers() {
    let dir = plugins(&[(
        "old",
        "away_0_1.wasm",
        "name = \"old\"\nversion = \"0.1.0\"\n[config]\nmessage = \"{email} is away (0.1.0)\"\n"
            .to_owned(),
    )]);
    let path = dir.path().to_path_buf();
    let app = TestApp::spawn_configured(move |config| {
        config.responder.plugins_dir = Some(path);
        config.responder.plugin = "old".into();
        config.sqlite_synchronous = SqliteSynchronous::Normal;
    })
    .await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    app.set_status(&bob, "BUSY").await;
    let mut alice_ws = app.ws(&alice).await;
    app.send_ok(&alice, &bob, "are you there?").await;
    expect(&mut alice_ws, "message").await;
    let reply = expect(&mut alice_ws, "message").await;
    assert_eq!(reply["message"]["kind"], "auto_reply", "{reply}");
    assert_eq!(
        reply["message"]["content"],
        format!("{} is away (0.1.0)", bob.email)
    );
}
