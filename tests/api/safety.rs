//! Issue 9's guarantees, as an attacker or an unlucky user would meet them: ghost and revoked
//! tokens, sockets that outlive their token, idempotent retries, rate limits, connection caps
//! and look-alike identities. Runs on both stores.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::helpers::{Answer, PASSWORD, TEST_JWT_SECRET, TestApp, TestUser, unique_email};
use crate::tokens::{assert_refused, now, sign};
use crate::ws_client::{Received, refused};

const REVOKED: &str = "Token is no longer valid; please log in again";

/// A request with headers of our choosing; answers the parsed body and `Retry-After`.
async fn send_with(
    app: &TestApp,
    from: &TestUser,
    to: &TestUser,
    content: &str,
    key: Option<&str>,
) -> (Answer, Option<u64>) {
    let mut request = app
        .client
        .post(app.url("/api/chat/send"))
        .bearer_auth(&from.token)
        .json(&json!({"recipient": to.id, "content": content}));
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    answer_with_retry_after(request).await
}

async fn answer_with_retry_after(request: reqwest::RequestBuilder) -> (Answer, Option<u64>) {
    let response = request.send().await.expect("request");
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    (TestApp::answer(response).await, retry_after)
}

async fn assert_closed_with(ws: &mut crate::ws_client::WsClient, code: CloseCode, reason: &str) {
    loop {
        match ws.receive().await {
            Received::Json(_) => continue,
            Received::Closed(frame) => {
                let frame = frame.expect("a close frame, not a bare disconnect");
                assert_eq!(frame.code, code, "{frame:?}");
                assert!(frame.reason.contains(reason), "{frame:?}");
                return;
            }
        }
    }
}

/// A token signed with the server's secret for a user it does not know (a reset database, or
/// another server's user) is refused everywhere, and never fails anybody else's sends.
#[tokio::test]
async fn a_token_whose_user_does_not_exist_is_refused_everywhere() {
    let app = TestApp::spawn().await;
    let ghost_id = uuid::Uuid::now_v7().to_string();
    let ghost = sign(
        &json!({"sub": ghost_id, "iat": now(), "exp": now() + 3600}),
        TEST_JWT_SECRET.as_bytes(),
    );
    assert_refused(&app, Some(&ghost), REVOKED).await;
    let (status, body) = refused(
        app.ws_with(&app.ws_url(&format!("?token={ghost}")), &[])
            .await,
    );
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["message"], REVOKED);

    // The ghost floods while a real user sends: every real send is stored.
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let ghost_user = TestUser {
        id: ghost_id,
        email: "ghost@example.com".into(),
        token: ghost,
    };
    let sends = (0..20).flat_map(|i| {
        let (app, alice, bob, ghost) = (&app, &alice, &bob, &ghost_user);
        [
            Box::pin(async move { (true, app.send(alice, bob, &format!("real {i}")).await) })
                as std::pin::Pin<Box<dyn std::future::Future<Output = _>>>,
            Box::pin(async move { (false, app.send(ghost, bob, "boo").await) }),
        ]
    });
    for (real, answer) in futures_util::future::join_all(sends).await {
        let expected = if real {
            StatusCode::OK
        } else {
            StatusCode::UNAUTHORIZED
        };
        assert_eq!(answer.status, expected, "{}", answer.body);
    }
    let stored = app.messages(&bob, "?limit=200").await.body;
    assert_eq!(stored.as_array().map(Vec::len), Some(20));
}

#[tokio::test]
async fn changing_the_password_ends_every_other_session() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let mut live = app.ws(&alice).await;
    let path = "/api/auth/password";

    let wrong = app
        .post(
            path,
            Some(&alice.token),
            json!({"current_password": "not it at all", "new_password": "a new password"}),
        )
        .await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    assert_eq!(wrong.message(), "The password is incorrect");
    let short = app
        .post(
            path,
            Some(&alice.token),
            json!({"current_password": PASSWORD, "new_password": "short"}),
        )
        .await;
    assert_eq!(short.status, StatusCode::BAD_REQUEST);

    let changed = app
        .post(
            path,
            Some(&alice.token),
            json!({"current_password": PASSWORD, "new_password": "a new password"}),
        )
        .await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.body);
    assert_eq!(changed.body["message"], "Password changed");
    let fresh = changed.body["token"].as_str().expect("token").to_owned();

    assert_closed_with(&mut live, CloseCode::Policy, "log in again").await;
    assert_refused(&app, Some(&alice.token), REVOKED).await;
    assert_eq!(
        app.get("/api/users/me", &fresh).await.status,
        StatusCode::OK
    );
    assert_eq!(
        app.login(&alice.email, PASSWORD).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.login(&alice.email, "a new password").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn logging_out_everywhere_revokes_every_token() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let second = app.login(&alice.email, PASSWORD).await.body["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let mut live = app.ws(&alice).await;
    let out = app
        .post("/api/auth/logout-all", Some(&second), json!({}))
        .await;
    assert_eq!(out.status, StatusCode::OK, "{}", out.body);
    assert_eq!(out.message(), "Logged out everywhere");
    assert_closed_with(&mut live, CloseCode::Policy, "log in again").await;
    assert_refused(&app, Some(&alice.token), REVOKED).await;
    assert_refused(&app, Some(&second), REVOKED).await;
    let again = app.login(&alice.email, PASSWORD).await;
    let token = again.body["token"].as_str().expect("token");
    assert_eq!(app.get("/api/users/me", token).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_deleted_account_takes_its_messages_and_tokens_with_it() {
    let app = TestApp::spawn().await;
    let (alice, bob, carol) = (
        app.user("alice").await,
        app.user("bob").await,
        app.user("carol").await,
    );
    app.send_ok(&alice, &bob, "hi bob").await;
    app.send_ok(&bob, &alice, "hi alice").await;
    let kept = app.send_ok(&carol, &bob, "hi from carol").await;
    let mut live = app.ws(&alice).await;

    let delete = |password: &'static str| {
        app.request(
            Method::DELETE,
            "/api/users/me",
            Some(&alice.token),
            Some(json!({"password": password})),
        )
    };
    let wrong = delete("not the password").await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    let deleted = delete(PASSWORD).await;
    assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.body);
    assert_eq!(deleted.message(), "Account deleted");

    assert_closed_with(&mut live, CloseCode::Policy, "log in again").await;
    assert_refused(&app, Some(&alice.token), REVOKED).await;
    assert_eq!(
        app.login(&alice.email, PASSWORD).await.status,
        StatusCode::UNAUTHORIZED
    );
    let history = app.messages(&bob, "").await.body;
    let ids: Vec<&str> = history
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, [kept.as_str()]);
    let to_ghost = app.send(&bob, &alice, "are you there?").await;
    assert_eq!(to_ghost.status, StatusCode::NOT_FOUND);
    assert_eq!(to_ghost.message(), "Recipient not found");
    // The email is free again.
    assert_eq!(
        app.register(&alice.email, PASSWORD).await.status,
        StatusCode::CREATED
    );
}

/// `TOKEN_TTL` bounds live connections too: the socket is closed when its token expires.
#[tokio::test]
async fn a_websocket_is_closed_when_its_token_expires() {
    let app = TestApp::spawn_configured(|config| config.token_ttl = Duration::from_secs(2)).await;
    let alice = app.user("alice").await;
    let mut live = app.ws(&alice).await;
    assert_closed_with(&mut live, CloseCode::Policy, "token expired").await;
    assert_eq!(
        app.get("/api/users/me", &alice.token).await.message(),
        "Token has expired; please log in again"
    );
}

#[tokio::test]
async fn a_retried_send_is_stored_once_and_answers_the_same_id() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let (first, _) = send_with(&app, &alice, &bob, "only once", Some("retry-1")).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    let (again, _) = send_with(&app, &alice, &bob, "only once", Some("retry-1")).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body, first.body, "same answer, same id");

    let (reused, _) = send_with(&app, &alice, &bob, "something else", Some("retry-1")).await;
    assert_eq!(reused.status, StatusCode::CONFLICT);
    assert_eq!(
        reused.message(),
        "This idempotency key was already used for a different message"
    );
    // Keys are per sender.
    let (bobs, _) = send_with(&app, &bob, &alice, "only once", Some("retry-1")).await;
    assert_eq!(bobs.status, StatusCode::OK);
    assert_ne!(bobs.body["id"], first.body["id"]);

    // Over the WebSocket, `client_id` is the key.
    let mut ws = app.ws(&alice).await;
    let frame =
        json!({"type": "send", "recipient": bob.id, "content": "by socket", "client_id": "ws-1"});
    let mut sent_ids = Vec::new();
    for _ in 0..2 {
        ws.send_json(frame.clone()).await;
        let answer = loop {
            let answer = ws.next_json().await;
            if answer["type"] == "sent" {
                break answer;
            }
        };
        sent_ids.push(answer["id"].clone());
    }
    assert_eq!(sent_ids[0], sent_ids[1]);

    let history = app.messages(&bob, "").await.body;
    let contents: Vec<&str> = history
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|m| m["content"].as_str())
        .collect();
    assert_eq!(contents, ["only once", "only once", "by socket"]);

    // ... and across a restart.
    let config = app_config_for_restart(&app);
    let data_dir = app.stop().await;
    let app = TestApp::spawn_with(config, data_dir).await;
    let (after_restart, _) = send_with(&app, &alice, &bob, "only once", Some("retry-1")).await;
    assert_eq!(after_restart.body, first.body);
    assert_eq!(app.messages(&bob, "").await.body, history);
}

fn app_config_for_restart(app: &TestApp) -> palaver::config::Config {
    app.config.clone()
}

#[tokio::test]
async fn failed_logins_lock_the_account_even_for_the_right_password() {
    let app = TestApp::spawn_configured(|config| {
        config.limits.login_failures =
            Some(palaver::config::Rate::new(3, Duration::from_secs(600)));
    })
    .await;
    let alice = app.user("alice").await;
    for _ in 0..3 {
        assert_eq!(
            app.login(&alice.email, "wrong password").await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    let login = |password: &'static str| {
        app.client
            .post(app.url("/api/auth/login"))
            .json(&json!({"email": alice.email, "password": password}))
    };
    let (locked, retry_after) = answer_with_retry_after(login("wrong password")).await;
    assert_eq!(locked.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        locked
            .message()
            .starts_with("Too many failed logins for this account")
    );
    assert!(retry_after.is_some_and(|s| s > 60), "{retry_after:?}");
    let (right, retry_after) = answer_with_retry_after(login(PASSWORD)).await;
    assert_eq!(right.status, StatusCode::TOO_MANY_REQUESTS, "still locked");
    assert!(retry_after.is_some());
    // Other accounts are not affected.
    let bob = app.user("bob").await;
    assert_eq!(app.login(&bob.email, PASSWORD).await.status, StatusCode::OK);
}

#[tokio::test]
async fn one_address_cannot_hammer_register_and_login() {
    let app = TestApp::spawn_configured(|config| {
        config.limits.auth_per_address =
            Some(palaver::config::Rate::new(4, Duration::from_secs(600)));
    })
    .await;
    let email = unique_email("hammer");
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let request = app
            .client
            .post(app.url("/api/auth/register"))
            .json(&json!({"email": email, "password": PASSWORD}));
        let (answer, retry_after) = answer_with_retry_after(request).await;
        if answer.status == StatusCode::TOO_MANY_REQUESTS {
            assert!(
                answer
                    .message()
                    .starts_with("Too many requests from your address")
            );
            assert!(retry_after.is_some());
        }
        statuses.push(answer.status.as_u16());
    }
    assert_eq!(statuses, [201, 409, 409, 409, 429]);
}

#[tokio::test]
async fn sending_too_fast_is_refused_on_every_transport() {
    let app = TestApp::spawn_configured(|config| {
        config.limits.sends = Some(palaver::config::Rate::new(3, Duration::from_secs(600)));
    })
    .await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    for i in 0..3 {
        app.send_ok(&alice, &bob, &format!("{i}")).await;
    }
    let (refused, retry_after) = send_with(&app, &alice, &bob, "one more", None).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        refused
            .message()
            .starts_with("You are sending messages too fast")
    );
    assert!(retry_after.is_some_and(|s| s > 60), "{retry_after:?}");

    let mut ws = app.ws(&alice).await;
    ws.send_json(json!({"type": "send", "recipient": bob.id, "content": "x", "client_id": "c"}))
        .await;
    let error = loop {
        let frame: Value = ws.next_json().await;
        if frame["type"] == "error" {
            break frame;
        }
    };
    assert_eq!(error["code"], 429);
    assert_eq!(error["client_id"], "c");
    assert!(
        error["retry_after"].as_u64().is_some_and(|s| s > 60),
        "{error}"
    );
    // Bob has his own budget.
    app.send_ok(&bob, &alice, "fine").await;
}

#[tokio::test]
async fn connections_past_the_cap_are_refused_before_the_upgrade() {
    let app =
        TestApp::spawn_configured(|config| config.limits.connections_per_user = Some(2)).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let _one = app.ws(&alice).await;
    let _two = app.ws(&alice).await;
    let (status, body) = refused(
        app.ws_with(
            &app.ws_url(""),
            &[("authorization", format!("Bearer {}", alice.token))],
        )
        .await,
    );
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("limit is 2")),
        "{body}"
    );
    let _bob = app.ws(&bob).await;
}

#[tokio::test]
async fn look_alike_emails_and_invisible_messages_are_refused() {
    let app = TestApp::spawn().await;
    let alice = unique_email("alice");
    assert_eq!(
        app.register(&alice, PASSWORD).await.status,
        StatusCode::CREATED
    );
    let spoof = alice.replacen("alice", "a\u{200B}lice", 1);
    let answer = app.register(&spoof, PASSWORD).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        answer.message(),
        "Email must not contain invisible or formatting characters"
    );
    // One address however its accents are encoded.
    let composed = unique_email("jos\u{00E9}");
    let decomposed = composed.replacen("jos\u{00E9}", "jose\u{0301}", 1);
    assert_eq!(
        app.register(&composed, PASSWORD).await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        app.register(&decomposed, PASSWORD).await.status,
        StatusCode::CONFLICT
    );

    let (a, b) = (app.user("a").await, app.user("b").await);
    let blank = app.send(&a, &b, "\u{200B}\u{200E} \u{2060}").await;
    assert_eq!(blank.status, StatusCode::BAD_REQUEST);
    assert_eq!(blank.message(), "Content must not be empty");
}

/// A frame over 64 KiB is refused from its header with close code 1009; the server is fine.
#[tokio::test]
async fn an_oversized_frame_gets_close_code_1009() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let mut ws = app.ws(&alice).await;
    ws.send_text(&"x".repeat(100 * 1024)).await;
    assert_closed_with(&mut ws, CloseCode::Size, "too big").await;
    assert_eq!(app.readyz().await.status, StatusCode::OK);
}

/// Engine.IO sessions exist before anyone authenticates; past `MAX_CONNECTIONS` new ones are
/// refused with a JSON 503.
#[tokio::test]
async fn engine_io_sessions_past_the_cap_are_refused() {
    let app = TestApp::spawn_configured(|config| config.limits.connections_total = Some(2)).await;
    let handshake = || {
        app.client
            .get(app.url("/socket.io/?EIO=4&transport=polling"))
            .send()
    };
    for _ in 0..2 {
        let open = handshake().await.expect("handshake");
        assert_eq!(open.status(), StatusCode::OK);
    }
    let (refused, retry_after) = answer_with_retry_after(
        app.client
            .get(app.url("/socket.io/?EIO=4&transport=polling")),
    )
    .await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        refused.message(),
        "The server has too many live connections; try again later"
    );
    assert_eq!(retry_after, Some(30));
}
