//! The web chat page at `/`: served by the binary itself, locked down by its headers.

use reqwest::StatusCode;

use crate::helpers::TestApp;

#[tokio::test]
async fn the_chat_page_is_served_at_the_root_with_its_assets() {
    let app = TestApp::spawn().await;
    let page = app.client.get(app.url("/")).send().await.expect("GET /");
    assert_eq!(page.status(), StatusCode::OK);
    let header = |name: &str| {
        page.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert!(header("content-type").starts_with("text/html"));
    // The page holds a token: only its own scripts run, and no other site may frame it.
    let policy = header("content-security-policy");
    assert!(policy.contains("script-src 'self'"), "{policy}");
    assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
    let html = page.text().await.expect("page");
    for asset in ["/web/app.js", "/web/style.css"] {
        assert!(html.contains(asset), "the page links {asset}");
        let response = app.client.get(app.url(asset)).send().await.expect("asset");
        assert_eq!(response.status(), StatusCode::OK, "{asset}");
    }
}

#[tokio::test]
async fn a_missing_asset_is_a_json_404() {
    let app = TestApp::spawn().await;
    let response = app
        .client
        .get(app.url("/web/nothing-here.js"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let body: serde_json::Value = response.json().await.expect("JSON");
    assert_eq!(body["message"], "Not found");
}
