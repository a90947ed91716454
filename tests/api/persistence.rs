use reqwest::StatusCode;

use crate::helpers::{PASSWORD, TestApp, test_config};

/// Users, passwords, statuses, messages and (with no JWT_SECRET set) the generated signing
/// secret all survive a restart on the same data directory.
#[tokio::test]
async fn everything_survives_a_restart() {
    let data_dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(data_dir.path());
    config.jwt_secret = None;
    let app = TestApp::spawn_with(config.clone(), data_dir).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let id = app.send_ok(&alice, &bob, "remember me").await;
    app.set_status(&bob, "BUSY").await;
    let before = app.messages(&bob, "").await.body;

    let data_dir = app.stop().await;
    let app = TestApp::spawn_with(config, data_dir).await;

    let me = app.get("/api/users/me", &bob.token).await;
    assert_eq!(me.status, StatusCode::OK, "old token still valid");
    assert_eq!(me.body["status"], "BUSY");
    let after = app.messages(&bob, "").await.body;
    assert_eq!(after, before);
    assert_eq!(after[0]["id"], id.as_str());
    assert_eq!(
        app.login(&alice.email, PASSWORD).await.status,
        StatusCode::OK
    );
    assert_eq!(
        app.register(&alice.email, PASSWORD).await.status,
        StatusCode::CONFLICT
    );
}
