//! Each user picks the plugin that answers for them while BUSY, and their own settings for it
//! (a persona and language for the LLM responder, a message for `away-message`).

use std::path::Path;
use std::time::Duration;

use palaver::config::SqliteSynchronous;
use palaver::wasm::PLUGIN_BUILD_DIR;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tempfile::TempDir;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{TestApp, TestUser};

const COMPLETIONS: &str = "/v1/chat/completions";
const AWAY_MANIFEST: &str = include_str!("../../plugins/examples/away-message/away_message.toml");

/// `away-message` (built from source, with its committed manifest) in a plugins folder, and an
/// LLM stub behind the built-in responder, which stays the default.
async fn app() -> (TestApp, MockServer, TempDir) {
    let stub = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(COMPLETIONS))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Bonjour !"}}]
        })))
        .mount(&stub)
        .await;
    let plugins = tempfile::tempdir().expect("plugins dir");
    std::fs::copy(
        Path::new(PLUGIN_BUILD_DIR).join("away_message.wasm"),
        plugins.path().join("away_message.wasm"),
    )
    .expect("copy the built plugin");
    std::fs::write(plugins.path().join("away_message.toml"), AWAY_MANIFEST).expect("manifest");
    let (dir, url) = (
        plugins.path().to_path_buf(),
        format!("{}{COMPLETIONS}", stub.uri()),
    );
    let app = TestApp::spawn_configured(move |config| {
        config.responder.plugins_dir = Some(dir);
        config.responder.llm_api_url = Some(url.parse().expect("stub url"));
        config.responder.timeout = Duration::from_secs(5);
        config.sqlite_synchronous = SqliteSynchronous::Normal;
    })
    .await;
    (app, stub, plugins)
}

async fn put_responder(app: &TestApp, user: &TestUser, body: Value) -> (StatusCode, Value) {
    let answer = app
        .request(
            Method::PUT,
            "/api/users/me/responder",
            Some(&user.token),
            Some(body),
        )
        .await;
    (answer.status, answer.body)
}

/// Alice writes to BUSY Bob and waits for his auto-reply on her socket.
async fn auto_reply(app: &TestApp, alice: &TestUser, bob: &TestUser, text: &str) -> String {
    let mut socket = app.ws(alice).await;
    let sent = app.send_ok(alice, bob, text).await;
    loop {
        let frame = socket.next_json().await;
        if frame["type"] == "message" && frame["message"]["id"] != sent.as_str() {
            assert_eq!(frame["message"]["kind"], "auto_reply", "{frame}");
            return frame["message"]["content"]
                .as_str()
                .expect("content")
                .to_owned();
        }
    }
}

/// The system instructions of the last request the LLM stub received.
async fn last_instructions(stub: &MockServer) -> String {
    let requests = stub.received_requests().await.expect("recorded");
    let body: Value =
        serde_json::from_slice(&requests.last().expect("a request").body).expect("JSON");
    body["messages"][0]["content"]
        .as_str()
        .expect("system message")
        .to_owned()
}

#[tokio::test]
async fn each_user_picks_a_responder_and_persona_and_it_answers_for_them() {
    let (app, stub, _plugins) = app().await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);

    // Until Bob chooses: the operator's default plugin and no settings of his.
    let current = app.get("/api/users/me/responder", &bob.token).await;
    assert_eq!(current.status, StatusCode::OK);
    assert_eq!(
        current.body,
        json!({"plugin": "llm-responder", "config": {}})
    );

    let persona = "Warm and brief. I'm at the dentist until 4 pm.";
    let choice =
        json!({"plugin": "llm-responder", "config": {"persona": persona, "language": "French"}});
    let (status, body) = put_responder(&app, &bob, choice.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, choice);
    assert_eq!(
        app.get("/api/users/me/responder", &bob.token).await.body,
        choice
    );

    app.set_status(&bob, "BUSY").await;
    assert_eq!(auto_reply(&app, &alice, &bob, "Lunch?").await, "Bonjour !");
    let instructions = last_instructions(&stub).await;
    assert!(instructions.contains(persona), "{instructions}");
    assert!(
        instructions.contains("Always answer in French."),
        "{instructions}"
    );

    // Another BUSY user who chose nothing gets the operator's instructions alone.
    let carol = app.user("carol").await;
    app.set_status(&carol, "BUSY").await;
    auto_reply(&app, &alice, &carol, "Lunch?").await;
    let instructions = last_instructions(&stub).await;
    assert!(
        !instructions.contains(persona) && !instructions.contains("French"),
        "{instructions}"
    );

    // Bob switches to the away message, with his own text.
    let away =
        json!({"plugin": "away-message", "config": {"message": "Back on Monday. ({email})"}});
    let (status, body) = put_responder(&app, &bob, away.clone()).await;
    assert_eq!((status, body), (StatusCode::OK, away));
    let reply = auto_reply(&app, &alice, &bob, "Still there?").await;
    assert_eq!(reply, format!("Back on Monday. ({})", bob.email));
}

#[tokio::test]
async fn choices_a_plugin_does_not_offer_are_refused() {
    let (app, _stub, _plugins) = app().await;
    let bob = app.user("bob").await;
    let cases = [
        (
            json!({"plugin": "nope", "config": {}}),
            StatusCode::NOT_FOUND,
            "No plugin named \"nope\" is loaded",
        ),
        (
            json!({"plugin": "llm-responder", "config": {"system_prompt": "Obey me"}}),
            StatusCode::BAD_REQUEST,
            "\"system_prompt\" is not a setting of the plugin \"llm-responder\"; it takes: \
             language, persona",
        ),
        (
            // The operator's keys are out of users' reach.
            json!({"plugin": "llm-responder", "config": {"llm_api_url": "http://evil.test/"}}),
            StatusCode::BAD_REQUEST,
            "\"llm_api_url\" is not a setting of the plugin \"llm-responder\"; it takes: \
             language, persona",
        ),
        (
            json!({"plugin": "away-message", "config": {"message": "x".repeat(4_001)}}),
            StatusCode::BAD_REQUEST,
            "The setting \"message\" is longer than 4000 characters",
        ),
        (
            json!({"plugin": "llm-responder", "config": {"persona": " \n\u{200B} "}}),
            StatusCode::BAD_REQUEST,
            "The setting \"persona\" is blank: leave it out to use the plugin's default",
        ),
        (
            // A right-to-left override would show the model (and anyone reading the settings)
            // other text than what is there; a bell or escape is nobody's persona.
            json!({"plugin": "llm-responder", "config": {"persona": "nice \u{202E}evil"}}),
            StatusCode::BAD_REQUEST,
            "The setting \"persona\" contains a control or bidirectional-override character \
             (newlines and tabs are fine)",
        ),
        (
            json!({"plugin": "llm-responder", "config": {"language": "French\u{1b}[2J"}}),
            StatusCode::BAD_REQUEST,
            "The setting \"language\" contains a control or bidirectional-override character \
             (newlines and tabs are fine)",
        ),
    ];
    for (body, status, message) in cases {
        let (got, answer) = put_responder(&app, &bob, body.clone()).await;
        assert_eq!(got, status, "{body}: {answer}");
        assert_eq!(answer["message"], message, "{body}");
    }
    // Values are strings: a number or a boolean is refused, not turned into one.
    for value in [json!(5), json!(true), json!(null), json!(["a"])] {
        let body = json!({"plugin": "llm-responder", "config": {"persona": value}});
        let (got, answer) = put_responder(&app, &bob, body.clone()).await;
        assert_eq!(got, StatusCode::BAD_REQUEST, "{body}: {answer}");
        let message = answer["message"].as_str().unwrap_or_default();
        assert!(message.contains("expected a string"), "{body}: {message}");
    }
    // Nothing was stored; a value of exactly 4,000 characters is fine, and so are lines and tabs.
    let current = app.get("/api/users/me/responder", &bob.token).await;
    assert_eq!(current.body["plugin"], "llm-responder");
    let longest = json!({"plugin": "away-message", "config": {"message": "x".repeat(4_000)}});
    assert_eq!(put_responder(&app, &bob, longest).await.0, StatusCode::OK);
    let lines = json!({"plugin": "llm-responder", "config": {"persona": "Short.\n\tNo jokes."}});
    assert_eq!(put_responder(&app, &bob, lines).await.0, StatusCode::OK);

    let anonymous = app
        .request(Method::GET, "/api/users/me/responder", None, None)
        .await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn plugins_list_what_users_may_set() {
    let (app, _stub, _plugins) = app().await;
    let user = app.user("viewer").await;
    let listed = app.get("/api/plugins", &user.token).await;
    assert_eq!(listed.status, StatusCode::OK);
    let settings = |name: &str| -> Vec<String> {
        let plugin = listed
            .body
            .as_array()
            .expect("array")
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name} is listed"));
        plugin["user_settings"]
            .as_array()
            .expect("user_settings")
            .iter()
            .map(|s| {
                assert!(
                    !s["description"].as_str().unwrap_or_default().is_empty(),
                    "{s}"
                );
                s["key"].as_str().expect("key").to_owned()
            })
            .collect()
    };
    assert_eq!(settings("llm-responder"), ["language", "persona"]);
    assert_eq!(settings("away-message"), ["message"]);
}
