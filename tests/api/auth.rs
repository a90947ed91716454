use reqwest::StatusCode;

use crate::helpers::{PASSWORD, TestApp, unique_email};

#[tokio::test]
async fn register_answers_201_with_the_seed_text() {
    let app = TestApp::spawn().await;
    let answer = app.register(&unique_email("new"), PASSWORD).await;
    assert_eq!(answer.status, StatusCode::CREATED);
    assert_eq!(answer.message(), "User registered successfully");
    assert!(answer.body["id"].is_string());
}

#[tokio::test]
async fn email_is_taken_whatever_its_case() {
    let app = TestApp::spawn().await;
    let email = unique_email("taken");
    assert_eq!(
        app.register(&email, PASSWORD).await.status,
        StatusCode::CREATED
    );
    let again = app
        .register(&format!("  {}  ", email.to_uppercase()), "another password")
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(again.message(), "Email is already registered");
}

#[tokio::test]
async fn register_refuses_bad_email_and_password() {
    let app = TestApp::spawn().await;
    let cases = [
        (
            "not-an-email",
            PASSWORD,
            "Email must be a valid email address",
        ),
        ("", PASSWORD, "Email is required"),
        (
            "short@example.com",
            "1234567",
            "Password must be at least 8 characters",
        ),
        (
            "long@example.com",
            &"x".repeat(129),
            "Password must be at most 128 characters",
        ),
    ];
    for (email, password, message) in cases {
        let answer = app.register(email, password).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{email:?}");
        assert_eq!(answer.message(), message);
    }
}

#[tokio::test]
async fn login_gives_a_token_that_identifies_the_user() {
    let app = TestApp::spawn().await;
    let email = unique_email("login");
    let registered = app.register(&email, PASSWORD).await;
    let login = app.login(&email.to_uppercase(), PASSWORD).await;
    assert_eq!(login.status, StatusCode::OK);
    let token = login.body["token"].as_str().expect("token");
    assert_eq!(login.body["user_id"], registered.body["id"]);

    let me = app.get("/api/users/me", token).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.body["id"], registered.body["id"]);
    assert_eq!(me.body["email"], email.as_str());
    assert_eq!(me.body["status"], "AVAILABLE");
}

#[tokio::test]
async fn wrong_password_and_unknown_email_read_the_same() {
    let app = TestApp::spawn().await;
    let email = unique_email("victim");
    app.register(&email, PASSWORD).await;

    let wrong_password = app.login(&email, "not the password").await;
    let unknown_email = app.login(&unique_email("nobody"), PASSWORD).await;
    let malformed_email = app.login("nobody", PASSWORD).await;
    for answer in [&wrong_password, &unknown_email, &malformed_email] {
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            answer.body,
            serde_json::json!({"message": "Invalid email or password"})
        );
    }
}

#[tokio::test]
async fn the_password_hash_is_argon2id_with_owasp_parameters() {
    let app = TestApp::spawn().await;
    app.register(&unique_email("hash"), PASSWORD).await;
    let hashes = app.stored_password_hashes().await;
    assert_eq!(hashes.len(), 1, "one user");
    let hash = &hashes[0];
    assert!(
        hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{hash}"
    );
    assert!(!hash.contains(PASSWORD));
}
