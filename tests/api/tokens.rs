//! Forged, expired and missing tokens are all refused with 401, on every protected route.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TEST_JWT_SECRET, TestApp, TestUser};

const PROTECTED: &[(&str, &str)] = &[
    ("GET", "/api/chat/messages"),
    ("POST", "/api/chat/send"),
    ("PUT", "/api/user/status"),
    ("GET", "/api/users/me"),
    ("GET", "/api/users?email=a@example.com"),
    ("GET", "/api/users/01a21ad6-1116-770e-912c-0b82997c7500"),
    ("GET", "/api/plugins"),
    ("POST", "/api/auth/password"),
    ("POST", "/api/auth/logout-all"),
    ("DELETE", "/api/users/me"),
];

pub(crate) fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

pub(crate) fn sign(claims: &Value, secret: &[u8]) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("sign")
}

pub(crate) async fn assert_refused(app: &TestApp, token: Option<&str>, message: &str) {
    for (method, path) in PROTECTED {
        let method = Method::from_bytes(method.as_bytes()).expect("method");
        let body = (method != Method::GET).then(|| json!({}));
        let answer = app.request(method.clone(), path, token, body).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{method} {path}");
        assert_eq!(answer.message(), message, "{method} {path}");
    }
}

#[tokio::test]
async fn no_token_is_refused_everywhere() {
    let app = TestApp::spawn().await;
    assert_refused(
        &app,
        None,
        "Authentication required: send Authorization: Bearer <token>",
    )
    .await;
}

#[tokio::test]
async fn expired_token_is_refused() {
    let app = TestApp::spawn().await;
    let user = app.user("expired").await;
    let expired = sign(
        &json!({"sub": user.id, "iat": now() - 7200, "exp": now() - 3600}),
        TEST_JWT_SECRET.as_bytes(),
    );
    assert_refused(
        &app,
        Some(&expired),
        "Token has expired; please log in again",
    )
    .await;
}

#[tokio::test]
async fn forged_tokens_are_refused() {
    let app = TestApp::spawn().await;
    let user = app.user("forged").await;
    let claims = json!({"sub": user.id, "iat": now(), "exp": now() + 3600});

    let wrong_secret = sign(&claims, b"some-other-secret-of-at-least-32-bytes!");
    let alg_none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let tampered = {
        let (head, rest) = user.token.split_once('.').expect("jwt");
        let (_payload, signature) = rest.split_once('.').expect("jwt");
        let other = json!({"sub": uuid_of_someone_else(), "iat": now(), "exp": now() + 3600});
        format!(
            "{head}.{}.{signature}",
            URL_SAFE_NO_PAD.encode(other.to_string())
        )
    };
    let mut bad_signature = user.token.clone();
    let last = bad_signature.pop().expect("non-empty");
    bad_signature.push(if last == 'A' { 'B' } else { 'A' });
    let no_expiry = sign(
        &json!({"sub": user.id, "iat": now()}),
        TEST_JWT_SECRET.as_bytes(),
    );
    let not_a_user_id = sign(
        &json!({"sub": "admin", "iat": now(), "exp": now() + 3600}),
        TEST_JWT_SECRET.as_bytes(),
    );

    for token in [
        wrong_secret,
        alg_none,
        tampered,
        bad_signature,
        no_expiry,
        not_a_user_id,
        "garbage".into(),
    ] {
        assert_refused(&app, Some(&token), "Invalid token").await;
    }
}

fn uuid_of_someone_else() -> String {
    "01a21ad6-1116-770e-912c-0b82997c7500".into()
}

#[tokio::test]
async fn x_auth_token_header_is_accepted_like_bearer() {
    let app = TestApp::spawn().await;
    let user: TestUser = app.user("legacy").await;
    let response = app
        .client
        .get(app.url("/api/users/me"))
        .header("x-auth-token", &user.token)
        .send()
        .await
        .expect("request");
    let answer = TestApp::answer(response).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body["id"], user.id.as_str());

    let bad = app
        .client
        .get(app.url("/api/users/me"))
        .header("x-auth-token", "nonsense")
        .send()
        .await
        .expect("request");
    assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
}
