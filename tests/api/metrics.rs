//! `METRICS_ADDR`: Prometheus metrics on a listener of their own, counting what happened.
//! The real binary, so the counts are this server's alone (the recorder is process-wide).

use std::collections::BTreeMap;

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::unique_email;
use crate::process::{Server, Storage};

/// The samples of one scrape: `name` plus its sorted labels → value.
struct Scrape(Vec<(String, BTreeMap<String, String>, f64)>);

impl Scrape {
    fn parse(text: &str) -> Self {
        let mut samples = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        {
            let (series, value) = line.rsplit_once(' ').expect("sample line");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (k, v) = pair.split_once('=').expect("label");
                    (k.to_owned(), v.trim_matches('"').to_owned())
                })
                .collect();
            samples.push((name.to_owned(), labels, value.parse().expect("value")));
        }
        Self(samples)
    }

    /// The sum over the series of `name` whose labels include all of `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }
}

async fn scrape(client: &reqwest::Client, server: &Server) -> (Scrape, String) {
    let url = format!(
        "{}/metrics",
        server.metrics.as_deref().expect("METRICS_ADDR")
    );
    let response = client.get(url).send().await.expect("scrape");
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.text().await.expect("body");
    (Scrape::parse(&text), text)
}

async fn call(
    client: &reqwest::Client,
    server: &Server,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = client.request(method, server.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn metrics_count_requests_messages_connections_auto_replies_and_refusals() {
    let storage = Storage::new();
    let server = Server::start(
        &storage,
        &[
            ("METRICS_ADDR", "127.0.0.1:0"),
            ("LOGIN_FAILURE_LIMIT", "1/h"),
        ],
    );
    let client = reqwest::Client::new();
    use reqwest::Method;

    // Two registrations (201) and two logins (200), counted below.
    let ada = server.account(&client, "ada").await.token;
    let grace = server.account(&client, "grace").await;
    let (grace_id, grace) = (grace.id, grace.token);

    // Both online over WebSocket: the gauge counts them.
    let connect = |token: &str| {
        let url = format!(
            "{}/ws?token={token}",
            server.base.replace("http://", "ws://")
        );
        tokio_tungstenite::connect_async(url)
    };
    let (mut ada_socket, _) = connect(&ada).await.expect("ada's socket");
    let (_grace_socket, _) = connect(&grace).await.expect("grace's socket");

    for n in 0..3 {
        let body = json!({"recipient": grace_id, "content": format!("hello {n}")});
        let (status, _) = call(
            &client,
            &server,
            Method::POST,
            "/api/chat/send",
            Some(&ada),
            Some(body),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
    // Grace goes BUSY; Ada's next message gets an auto-reply, which Ada's socket receives.
    let busy = json!({"status": "BUSY"});
    let (status, _) = call(
        &client,
        &server,
        Method::PUT,
        "/api/user/status",
        Some(&grace),
        Some(busy),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let body = json!({"recipient": grace_id, "content": "are you there?"});
    let (status, _) = call(
        &client,
        &server,
        Method::POST,
        "/api/chat/send",
        Some(&ada),
        Some(body),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    loop {
        let frame = ada_socket
            .next()
            .await
            .expect("socket open")
            .expect("frame");
        let Ok(text) = frame.into_text() else {
            continue;
        };
        let event: Value = serde_json::from_str(&text).unwrap_or_default();
        if event["message"]["kind"] == "auto_reply" {
            break;
        }
    }

    // Refusals: an unknown user (404), a wrong password (401), then the account's lockout (429).
    let unknown = format!("/api/users/{}", uuid_like());
    let (status, _) = call(&client, &server, Method::GET, &unknown, Some(&ada), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let wrong = json!({"email": unique_email("nobody"), "password": "wrong password"});
    for expected in [StatusCode::UNAUTHORIZED, StatusCode::TOO_MANY_REQUESTS] {
        let (status, _) = call(
            &client,
            &server,
            Method::POST,
            "/api/auth/login",
            None,
            Some(wrong.clone()),
        )
        .await;
        assert_eq!(status, expected);
    }
    let (status, _) = call(&client, &server, Method::GET, "/no/such/route", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (metrics, text) = scrape(&client, &server).await;
    let expect = |name: &str, labels: &[(&str, &str)], want: f64| {
        let got = metrics.value(name, labels);
        assert_eq!(got, want, "{name} {labels:?}\n{text}");
    };
    let send = [
        ("method", "POST"),
        ("route", "/api/chat/send"),
        ("status", "200"),
    ];
    expect("palaver_http_requests_total", &send, 4.0);
    expect(
        "palaver_http_requests_total",
        &[("route", "/api/auth/register"), ("status", "201")],
        2.0,
    );
    expect(
        "palaver_http_requests_total",
        &[("route", "/api/auth/login"), ("status", "200")],
        2.0,
    );
    expect(
        "palaver_http_requests_total",
        &[("route", "/api/auth/login"), ("status", "401")],
        1.0,
    );
    expect(
        "palaver_http_requests_total",
        &[("route", "/api/auth/login"), ("status", "429")],
        1.0,
    );
    expect(
        "palaver_http_requests_total",
        &[("route", "/api/users/{id}"), ("status", "404")],
        1.0,
    );
    expect(
        "palaver_http_requests_total",
        &[("route", "unmatched"), ("status", "404")],
        1.0,
    );
    let latency = [("method", "POST"), ("route", "/api/chat/send")];
    expect("palaver_http_request_duration_seconds_count", &latency, 4.0);
    expect("palaver_messages_stored_total", &[("kind", "user")], 4.0);
    expect(
        "palaver_messages_stored_total",
        &[("kind", "auto_reply")],
        1.0,
    );
    expect("palaver_connections", &[("transport", "websocket")], 2.0);
    expect(
        "palaver_responder_outcomes_total",
        &[("outcome", "fallback")],
        1.0,
    );
    expect(
        "palaver_responder_outcomes_total",
        &[("outcome", "reply")],
        0.0,
    );
    expect(
        "palaver_responder_duration_seconds_count",
        &[("outcome", "fallback")],
        1.0,
    );
    // No LLM_API_URL: the built-in responder is not even run.
    expect(
        "palaver_responder_outcomes_total",
        &[("outcome", "fallback"), ("reason", "no_llm")],
        1.0,
    );
    expect(
        "palaver_plugin_calls_total",
        &[("plugin", "llm-responder")],
        0.0,
    );
    expect(
        "palaver_rate_limited_total",
        &[("limit", "login_failures")],
        1.0,
    );
    expect("palaver_store_errors_total", &[], 0.0);

    // A closed socket leaves the gauge.
    ada_socket.close(None).await.expect("close");
    drop(ada_socket);
    let mut gone = false;
    for _ in 0..100 {
        let (metrics, _) = scrape(&client, &server).await;
        if metrics.value("palaver_connections", &[("transport", "websocket")]) == 1.0 {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(gone, "the closed socket is no longer counted");
}

/// Labels come from fixed sets: made-up methods (HTTP allows any token) and paths fold into
/// `other` and `unmatched`, so no client can grow the scrape (or the server's memory).
#[tokio::test]
async fn made_up_methods_and_paths_do_not_become_label_values() {
    let storage = Storage::new();
    let server = Server::start(&storage, &[("METRICS_ADDR", "127.0.0.1:0")]);
    let client = reqwest::Client::new();
    let (_, before) = scrape(&client, &server).await;

    const MADE_UP: usize = 60;
    for n in 0..MADE_UP {
        let method = format!("X{n}{}", "Y".repeat(500));
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a method token");
        let path = format!("/made/up/{n}/{}", "z".repeat(200));
        let response = client
            .request(method, server.url(&path))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }
    // And one made-up method on a real route.
    let response = client
        .request(
            reqwest::Method::from_bytes(b"BREW").expect("method"),
            server.url("/api/chat/send"),
        )
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);

    let (metrics, after) = scrape(&client, &server).await;
    for (name, labels, _) in &metrics.0 {
        if let Some(method) = labels.get("method") {
            assert!(
                [
                    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
                    "other"
                ]
                .contains(&method.as_str()),
                "{name} has method label {method:.40}"
            );
        }
    }
    assert_eq!(
        metrics.value(
            "palaver_http_requests_total",
            &[
                ("method", "other"),
                ("route", "unmatched"),
                ("status", "404")
            ]
        ),
        MADE_UP as f64,
        "{after}"
    );
    assert_eq!(
        metrics.value(
            "palaver_http_requests_total",
            &[
                ("method", "other"),
                ("route", "/api/chat/send"),
                ("status", "405")
            ]
        ),
        1.0,
        "{after}"
    );
    // A handful of new series, not one per request: a few KB, not 60 × 700 bytes per metric.
    assert!(
        after.len() < before.len() + 8_000,
        "the scrape grew from {} to {} bytes",
        before.len(),
        after.len()
    );
}

#[tokio::test]
async fn without_metrics_addr_nothing_listens_and_the_api_has_no_metrics_route() {
    let storage = Storage::new();
    let server = Server::start(&storage, &[]);
    assert!(server.metrics.is_none());
    let response = reqwest::get(server.url("/metrics")).await.expect("request");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

fn uuid_like() -> &'static str {
    "0193a5f2-0000-7000-8000-000000000000"
}

/// The perf guard (issue 21): not a timing test but a count. One HTTP send and its push cost
/// a fixed number of round trips to the store, by operation; a change that adds a database hop
/// to the send path fails here and names it.
#[tokio::test]
async fn one_send_and_its_push_cost_a_fixed_number_of_store_round_trips() {
    let storage = Storage::new();
    let server = Server::start(&storage, &[("METRICS_ADDR", "127.0.0.1:0")]);
    let client = reqwest::Client::new();
    let ada = server.account(&client, "ada").await.token;
    let grace = server.account(&client, "grace").await;
    let url = format!(
        "{}/ws?token={}",
        server.base.replace("http://", "ws://"),
        grace.token
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("grace's socket");
    let send = |content: &'static str| {
        let body = json!({"recipient": grace.id, "content": content});
        call(
            &client,
            &server,
            reqwest::Method::POST,
            "/api/chat/send",
            Some(&ada),
            Some(body),
        )
    };
    async fn push_of(
        socket: &mut tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
        content: &str,
    ) {
        while let Some(frame) = socket.next().await {
            let frame = frame.expect("frame");
            let Ok(text) = frame.to_text() else { continue };
            let Ok(value) = serde_json::from_str::<Value>(text) else {
                continue;
            };
            if value["type"] == "message" && value["message"]["content"] == content {
                return;
            }
        }
        panic!("the socket closed before {content} arrived");
    }
    let round_trips = |scrape: &Scrape| -> BTreeMap<String, f64> {
        scrape
            .0
            .iter()
            .filter(|(name, _, _)| name == "palaver_store_round_trips_total")
            .map(|(_, labels, value)| (labels["operation"].clone(), *value))
            .collect()
    };

    // The first send warms what is cached (the sender's token version).
    assert_eq!(send("warm-up").await.0, StatusCode::OK);
    push_of(&mut socket, "warm-up").await;
    let (before, _) = scrape(&client, &server).await;
    assert_eq!(send("counted").await.0, StatusCode::OK);
    push_of(&mut socket, "counted").await;
    let (after, _) = scrape(&client, &server).await;

    let (before, after) = (round_trips(&before), round_trips(&after));
    let mut spent: BTreeMap<&str, f64> = BTreeMap::new();
    for (operation, count) in &after {
        let delta = count - before.get(operation).copied().unwrap_or(0.0);
        // The sender's token version is cached for 5 s (auth::sessions::CACHE_TTL): a slow
        // machine may look it up again, which is not the send path's cost.
        if delta > 0.0 && operation != "token_version" {
            spent.insert(operation, delta);
        }
    }
    // The recipient comes from memory (messaging::Recipients): one hop, the insert.
    let expected = BTreeMap::from([("insert_messages", 1.0)]);
    assert_eq!(
        spent, expected,
        "store round trips for one HTTP send and its push, by operation (left: now; right: \
         the budget): a new hop on the send path shows up here"
    );
}

/// The store round trips `run` causes, by operation (the token-version lookup aside: it is
/// cached for 5 s, and a slow machine may look it up again).
async fn round_trips_of<F: std::future::Future<Output = ()>>(
    client: &reqwest::Client,
    server: &Server,
    run: F,
) -> BTreeMap<String, f64> {
    let count = |scrape: Scrape| -> BTreeMap<String, f64> {
        scrape
            .0
            .into_iter()
            .filter(|(name, _, _)| name == "palaver_store_round_trips_total")
            .map(|(_, labels, value)| (labels["operation"].clone(), value))
            .collect()
    };
    let before = count(scrape(client, server).await.0);
    run.await;
    let after = count(scrape(client, server).await.0);
    after
        .into_iter()
        .map(|(operation, n)| {
            let spent = n - before.get(&operation).copied().unwrap_or(0.0);
            (operation, spent)
        })
        .filter(|(operation, spent)| *spent > 0.0 && operation != "token_version")
        .collect()
}

/// The perf guard for history (issue 21): the newest page, asked again with nothing new, is
/// answered from memory; after a message arrives, it is read from the store once, and then
/// from memory again.
#[tokio::test]
async fn the_newest_page_again_costs_no_store_round_trip() {
    let storage = Storage::new();
    let server = Server::start(&storage, &[("METRICS_ADDR", "127.0.0.1:0")]);
    let client = reqwest::Client::new();
    let ada = server.account(&client, "ada").await;
    let grace = server.account(&client, "grace").await;
    let newest = || async {
        let (status, page) = call(
            &client,
            &server,
            reqwest::Method::GET,
            "/api/chat/messages?limit=50",
            Some(&grace.token),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        page.as_array().expect("a page").len()
    };
    assert_eq!(newest().await, 0);
    let again = round_trips_of(&client, &server, async {
        assert_eq!(newest().await, 0);
    })
    .await;
    assert_eq!(again, BTreeMap::new(), "the same newest page again");

    let body = json!({"recipient": grace.id, "content": "news"});
    let (status, _) = call(
        &client,
        &server,
        reqwest::Method::POST,
        "/api/chat/send",
        Some(&ada.token),
        Some(body),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let after_news = round_trips_of(&client, &server, async {
        assert_eq!(newest().await, 1, "the new message is on the page");
        assert_eq!(newest().await, 1);
    })
    .await;
    assert_eq!(
        after_news,
        BTreeMap::from([("list_messages".to_owned(), 1.0)]),
        "one read after the news, then memory"
    );
}
