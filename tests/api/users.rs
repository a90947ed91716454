use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::TestApp;

#[tokio::test]
async fn status_updates_are_visible_to_others() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);

    let busy = app.set_status(&alice, "BUSY").await;
    assert_eq!(busy.status, StatusCode::OK);
    assert_eq!(busy.message(), "User status updated");

    let seen = app
        .get(&format!("/api/users/{}", alice.id), &bob.token)
        .await;
    assert_eq!(seen.status, StatusCode::OK);
    assert_eq!(
        seen.body,
        json!({"id": alice.id, "email": alice.email, "status": "BUSY"})
    );

    app.set_status(&alice, "AVAILABLE").await;
    let me = app.get("/api/users/me", &alice.token).await;
    assert_eq!(me.body["status"], "AVAILABLE");
}

#[tokio::test]
async fn invalid_statuses_are_refused() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    for body in [
        json!({"status": "AWAY"}),
        json!({"status": "busy"}),
        json!({"status": null}),
        json!({}),
        json!({"status": {"$ne": null}}),
    ] {
        let answer = app
            .request(
                Method::PUT,
                "/api/user/status",
                Some(&alice.token),
                Some(body.clone()),
            )
            .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{body}");
        assert!(
            answer.message().starts_with("Invalid request body"),
            "{}",
            answer.message()
        );
    }
    assert_eq!(
        app.get("/api/users/me", &alice.token).await.body["status"],
        "AVAILABLE"
    );
}

#[tokio::test]
async fn users_can_be_found_by_email_and_id() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);

    let found = app
        .get(
            &format!("/api/users?email={}", bob.email.to_uppercase()),
            &alice.token,
        )
        .await;
    assert_eq!(found.status, StatusCode::OK);
    assert_eq!(found.body["id"], bob.id.as_str());

    let missing = app
        .get("/api/users?email=nobody@example.com", &alice.token)
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.message(), "User not found");

    let invalid = app.get("/api/users?email=nobody", &alice.token).await;
    assert_eq!(invalid.status, StatusCode::BAD_REQUEST);
    assert_eq!(invalid.message(), "Email must be a valid email address");

    let no_query = app.get("/api/users", &alice.token).await;
    assert_eq!(no_query.status, StatusCode::BAD_REQUEST);

    for id in ["01a21ad6-1116-770e-912c-0b82997c7500", "not-an-id"] {
        let answer = app.get(&format!("/api/users/{id}"), &alice.token).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{id}");
        assert_eq!(answer.message(), "User not found");
    }
}
