//! `CORS_ALLOWED_ORIGINS`: which web origins may use the API and the sockets from a browser.
//! (The browser itself is exercised by tests/browser/test_cors.py; here, the headers.)

use palaver::config::AllowedOrigins;
use reqwest::{Method, StatusCode};

use crate::helpers::TestApp;
use crate::ws_client::refused;

const ALLOWED: &str = "http://app.example.test:8080";
const OTHER: &str = "http://evil.example.test";

async fn app_allowing(origins: &str) -> TestApp {
    let origins = AllowedOrigins::parse(origins).expect("origins");
    TestApp::spawn_configured(|config| config.cors = origins).await
}

async fn preflight(app: &TestApp, origin: &str) -> reqwest::Response {
    app.client
        .request(Method::OPTIONS, app.url("/api/chat/send"))
        .header("Origin", origin)
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "authorization,content-type,idempotency-key",
        )
        .send()
        .await
        .expect("preflight")
}

/// A new user's `GET /api/users/me`, as a page on `origin` sends it.
async fn me_from(app: &TestApp, origin: &str) -> reqwest::Response {
    let user = app.user("cors").await;
    app.client
        .get(app.url("/api/users/me"))
        .header("Origin", origin)
        .bearer_auth(&user.token)
        .send()
        .await
        .expect("request")
}

fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

#[tokio::test]
async fn an_allowed_origin_gets_preflights_and_readable_answers() {
    let app = app_allowing(&format!("{ALLOWED},https://other.example.test")).await;
    let response = preflight(&app, ALLOWED).await;
    assert!(response.status().is_success(), "{}", response.status());
    assert_eq!(
        header(&response, "access-control-allow-origin").as_deref(),
        Some(ALLOWED)
    );
    let methods = header(&response, "access-control-allow-methods").unwrap_or_default();
    assert!(
        methods.contains("POST") && methods.contains("PUT"),
        "{methods}"
    );
    let headers = header(&response, "access-control-allow-headers").unwrap_or_default();
    for wanted in [
        "authorization",
        "content-type",
        "idempotency-key",
        "x-auth-token",
    ] {
        assert!(headers.contains(wanted), "{wanted} in {headers}");
    }

    // The real request: the answer is readable by the page, Retry-After included.
    let response = me_from(&app, ALLOWED).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(&response, "access-control-allow-origin").as_deref(),
        Some(ALLOWED)
    );
    let exposed = header(&response, "access-control-expose-headers").unwrap_or_default();
    assert!(exposed.to_lowercase().contains("retry-after"), "{exposed}");

    // Another origin gets no permission to read anything.
    let response = preflight(&app, OTHER).await;
    assert_eq!(header(&response, "access-control-allow-origin"), None);
}

#[tokio::test]
async fn without_the_setting_no_other_origin_is_allowed() {
    let app = TestApp::spawn().await;
    let response = preflight(&app, ALLOWED).await;
    assert_eq!(header(&response, "access-control-allow-origin"), None);
    let response = me_from(&app, ALLOWED).await;
    assert_eq!(header(&response, "access-control-allow-origin"), None);
}

#[tokio::test]
async fn a_star_allows_every_origin() {
    let app = app_allowing("*").await;
    let response = preflight(&app, OTHER).await;
    assert_eq!(
        header(&response, "access-control-allow-origin").as_deref(),
        Some("*")
    );
}

#[tokio::test]
async fn sockets_from_a_foreign_origin_are_refused_with_403() {
    let app = app_allowing(ALLOWED).await;
    let user = app.user("sockets").await;
    let auth = ("authorization", format!("Bearer {}", user.token));

    let (status, body) = refused(
        app.ws_with(
            &app.ws_url(""),
            &[auth.clone(), ("origin", OTHER.to_owned())],
        )
        .await,
    );
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("CORS_ALLOWED_ORIGINS")
    );

    // The server's host with another scheme is another origin (the server speaks http).
    let other_scheme = app.address.replacen("http://", "https://", 1);
    let (status, _) = refused(
        app.ws_with(&app.ws_url(""), &[auth.clone(), ("origin", other_scheme)])
            .await,
    );
    assert_eq!(status, StatusCode::FORBIDDEN);

    // The allowed origin, the server's own origin, and clients that send none all get in.
    let own = app.address.clone();
    for origin in [Some(ALLOWED.to_owned()), Some(own), None] {
        let mut headers = vec![auth.clone()];
        headers.extend(origin.clone().map(|o| ("origin", o)));
        let socket = app.ws_with(&app.ws_url(""), &headers).await;
        assert!(socket.is_ok(), "origin {origin:?}");
    }

    // Socket.IO: its handshake request (long-polling) is refused the same way.
    let handshake = |origin: &'static str| {
        app.client
            .get(app.url("/socket.io/?EIO=4&transport=polling"))
            .header("Origin", origin)
            .send()
    };
    let foreign = handshake(OTHER).await.expect("handshake");
    assert_eq!(foreign.status(), StatusCode::FORBIDDEN);
    let allowed = handshake(ALLOWED).await.expect("handshake");
    assert_eq!(allowed.status(), StatusCode::OK);
    assert_eq!(
        header(&allowed, "access-control-allow-origin").as_deref(),
        Some(ALLOWED)
    );
}
