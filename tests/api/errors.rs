//! Bad input of every kind gets a JSON `{"message"}` with the right status, never a 500.

use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;

use crate::helpers::{PASSWORD, TestApp, unique_email};

async fn raw_post(
    app: &TestApp,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> crate::helpers::Answer {
    let mut request = app.client.post(app.url(path)).body(body);
    if let Some(content_type) = content_type {
        request = request.header(CONTENT_TYPE, content_type);
    }
    TestApp::answer(request.send().await.expect("request")).await
}

#[tokio::test]
async fn malformed_bodies_get_400_with_a_json_message() {
    let app = TestApp::spawn().await;
    let email = unique_email("x");
    let bodies = [
        "{not json".to_owned(),
        "[]".to_owned(),
        "null".to_owned(),
        "".to_owned(),
        format!(r#"{{"email": "{email}"}}"#),
        r#"{"password": "long enough"}"#.to_owned(),
        format!(r#"{{"email": {{"$ne": null}}, "password": "{PASSWORD}"}}"#),
        format!(r#"{{"email": "{email}", "password": {{"$gt": ""}}}}"#),
    ];
    for path in ["/api/auth/register", "/api/auth/login"] {
        for body in &bodies {
            let answer = raw_post(
                &app,
                path,
                Some("application/json"),
                body.clone().into_bytes(),
            )
            .await;
            assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{path} {body}");
            assert!(
                answer.message().starts_with("Invalid request body"),
                "{body}: {}",
                answer.message()
            );
        }
    }
    // A number where the email belongs is the wrong type, as the spec says.
    let numeric = raw_post(
        &app,
        "/api/auth/register",
        Some("application/json"),
        br#"{"email": 42, "password": "long enough"}"#.to_vec(),
    )
    .await;
    assert_eq!(numeric.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        numeric.message(),
        "Invalid request body: failed to parse \"email\": expected a string, found 42 \
         (occurred while parsing \"CredentialsBody\")"
    );
    // None of it created an account.
    assert_eq!(
        app.login(&email, "long enough").await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a_body_that_is_not_json_gets_415() {
    let app = TestApp::spawn().await;
    let body = format!(
        r#"{{"email":"{}","password":"{PASSWORD}"}}"#,
        unique_email("form")
    );
    let form = raw_post(
        &app,
        "/api/auth/register",
        Some("application/x-www-form-urlencoded"),
        body.clone().into_bytes(),
    )
    .await;
    assert_eq!(form.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(form.message().contains("application/json"));
    let missing = raw_post(&app, "/api/auth/register", None, body.into_bytes()).await;
    assert_eq!(missing.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(missing.message().contains("application/json"));
}

#[tokio::test]
async fn oversized_bodies_get_413_declared_or_streamed() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let huge = format!(
        r#"{{"recipient":"{}","content":"{}"}}"#,
        alice.id,
        "x".repeat(70_000)
    );

    let declared = app
        .client
        .post(app.url("/api/chat/send"))
        .bearer_auth(&alice.token)
        .header(CONTENT_TYPE, "application/json")
        .body(huge.clone())
        .send()
        .await
        .expect("request");
    let declared = TestApp::answer(declared).await;
    assert_eq!(declared.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        declared.message(),
        "Request body is too large (the limit is 64 KiB)"
    );

    // No Content-Length: the body arrives chunked and is cut off while reading.
    let status_line = post_chunked(&app, "/api/chat/send", &alice.token, huge.as_bytes()).await;
    assert!(status_line.starts_with("HTTP/1.1 413"), "{status_line}");
    assert_eq!(app.messages(&alice, "").await.body, serde_json::json!([]));
}

/// A raw HTTP/1.1 request with `Transfer-Encoding: chunked`; returns the status line.
async fn post_chunked(app: &TestApp, path: &str, token: &str, body: &[u8]) -> String {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let address = app.address.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("write head");
    for chunk in body.chunks(8 * 1024) {
        let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), chunk, b"\r\n"].concat();
        // The server may answer and close before reading everything; that is the point.
        if stream.write_all(&framed).await.is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut status_line = String::new();
    BufReader::new(stream)
        .read_line(&mut status_line)
        .await
        .expect("read status line");
    status_line
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_in_json() {
    let app = TestApp::spawn().await;
    let missing = TestApp::answer(
        app.client
            .get(app.url("/api/nothing-here"))
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.message(), "Not found");
    let response = app
        .client
        .delete(app.url("/api/auth/login"))
        .send()
        .await
        .expect("request");
    assert_eq!(
        response
            .headers()
            .get("allow")
            .and_then(|v| v.to_str().ok()),
        Some("POST")
    );
    let wrong_method = TestApp::answer(response).await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong_method.message(), "Method not allowed");
    let on_me = app
        .client
        .post(app.url("/api/users/me"))
        .send()
        .await
        .expect("request");
    assert_eq!(on_me.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        on_me.headers().get("allow").and_then(|v| v.to_str().ok()),
        Some("GET, DELETE")
    );
}
