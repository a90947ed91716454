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
    let served: Value = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("JSON spec");
    let committed: Value = serde_json::from_str(&committed_spec()).expect("committed spec is JSON");
    assert!(
        served == committed,
        "openapi/openapi.json is out of date: regenerate it with \
         `cargo run --quiet -- openapi > openapi/openapi.json`"
    );

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
    let html = response.text().await.expect("html");
    assert!(html.contains("swagger-ui"), "Swagger UI page");
}
