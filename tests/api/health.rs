use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::TestApp;

#[tokio::test]
async fn liveness_and_readiness_answer() {
    let app = TestApp::spawn().await;
    let health = TestApp::answer(
        app.client
            .get(app.url("/healthz"))
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.body["status"], "ok");
    let ready = TestApp::answer(
        app.client
            .get(app.url("/readyz"))
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.body["status"], "ready");
}

fn committed_spec() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi/openapi.json");
    std::fs::read_to_string(path).expect("openapi/openapi.json is committed")
}

#[tokio::test]
async fn the_served_spec_is_the_committed_one() {
    let app = TestApp::spawn().await;
    let served = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .expect("request")
        .text()
        .await
        .expect("spec text");
    // A line diff of the pretty-printed JSON shows exactly what changed.
    similar_asserts::assert_eq!(
        committed: committed_spec().trim_end(),
        served: served.trim_end(),
        "openapi/openapi.json is out of date: regenerate it with \
         `cargo run --quiet -- openapi > openapi/openapi.json`"
    );
    let served: Value = serde_json::from_str(&served).expect("JSON spec");

    for path in [
        "/api/auth/register",
        "/api/auth/login",
        "/api/chat/messages",
        "/api/chat/send",
        "/api/user/status",
    ] {
        assert!(served["paths"][path].is_object(), "{path} is documented");
    }
    let schemes = &served["components"]["securitySchemes"];
    assert_eq!(schemes["BearerAuth"]["scheme"], "bearer");
    assert_eq!(schemes["AuthTokenHeader"]["name"], "x-auth-token");
}

/// Generators name SDK calls after `operationId`s and document them with the summaries and
/// examples: every operation has all of them, under one naming rule (lowerCamelCase verb first).
#[test]
fn every_operation_is_ready_for_generators() {
    let spec: Value = serde_json::from_str(&committed_spec()).expect("committed spec is JSON");
    let schema_of = |content: &Value| -> Value {
        let reference = content["application/json"]["schema"]["$ref"]
            .as_str()
            .or_else(|| content["application/json"]["schema"]["items"]["$ref"].as_str())
            .unwrap_or_else(|| panic!("a JSON schema reference in {content}"));
        let name = reference.trim_start_matches("#/components/schemas/");
        spec["components"]["schemas"][name].clone()
    };
    let mut ids = std::collections::BTreeMap::new();
    for (path, operations) in spec["paths"].as_object().expect("paths") {
        for (method, operation) in operations.as_object().expect("operations") {
            let at = format!("{} {path}", method.to_uppercase());
            let id = operation["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{at}: operationId"));
            assert!(
                id.chars().next().is_some_and(|c| c.is_ascii_lowercase())
                    && id.chars().all(|c| c.is_ascii_alphanumeric()),
                "{at}: {id} is lowerCamelCase"
            );
            assert!(
                ids.insert(id.to_owned(), at.clone()).is_none(),
                "{id} is unique"
            );
            let summary = operation["summary"].as_str().unwrap_or_default();
            assert!(
                !summary.is_empty() && summary.len() <= 40 && !summary.ends_with('.'),
                "{at}: a short summary, got {summary:?}"
            );
            assert!(
                operation["tags"].as_array().is_some_and(|t| !t.is_empty()),
                "{at}: tags"
            );
            if let Some(body) = operation.get("requestBody") {
                assert!(
                    schema_of(&body["content"])["example"].is_object(),
                    "{at}: request example"
                );
            }
            for (status, response) in operation["responses"].as_object().expect("responses") {
                if let Some(content) = response.get("content") {
                    let example = &schema_of(content)["example"];
                    assert!(example.is_object(), "{at} {status}: response example");
                }
            }
        }
    }
    for (id, route) in [
        ("register", "POST /api/auth/register"),
        ("login", "POST /api/auth/login"),
        ("listMessages", "GET /api/chat/messages"),
        ("sendMessage", "POST /api/chat/send"),
        ("setStatus", "PUT /api/user/status"),
        ("getMe", "GET /api/users/me"),
        ("findUserByEmail", "GET /api/users"),
        ("getUser", "GET /api/users/{id}"),
        ("listPlugins", "GET /api/plugins"),
    ] {
        assert_eq!(ids.get(id).map(String::as_str), Some(route), "{id}");
    }
}

#[tokio::test]
async fn swagger_ui_is_served() {
    let app = TestApp::spawn().await;
    let response = app
        .client
        .get(app.url("/docs"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::OK);
    // As strict as the chat page: only its own inline scripts (by hash), only this server, no
    // framing, no sniffing.
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let policy = header("content-security-policy");
    for directive in [
        "default-src 'none'",
        "script-src 'sha256-",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(policy.contains(directive), "{directive:?} in {policy:?}");
    }
    assert!(!policy.contains("unsafe-eval") && !policy.contains("script-src 'unsafe-inline'"));
    assert_eq!(header("x-content-type-options"), "nosniff");
    let html = response.text().await.expect("html");
    assert!(html.contains("swagger-ui"), "Swagger UI page");
    // With a trailing slash too, under the same policy.
    let slash = app
        .client
        .get(app.url("/docs/"))
        .send()
        .await
        .expect("request");
    assert_eq!(slash.status(), StatusCode::OK);
    assert_eq!(
        slash.headers().get("content-security-policy"),
        Some(&reqwest::header::HeaderValue::from_str(&policy).expect("policy"))
    );
}
