//! The BUSY auto-responder, end to end: a stub LLM (wiremock) or a plugin from the build, the
//! real server, and the sender's WebSocket.

use std::time::{Duration, Instant};

use palaver::config::{Config, SqliteSynchronous};
use reqwest::StatusCode;
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{TestApp, TestUser};
use crate::ws_client::WsClient;

use palaver::config::DEFAULT_FALLBACK_MESSAGE as FALLBACK;
const COMPLETIONS: &str = "/v1/chat/completions";

fn completion(text: &str) -> Value {
    json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]})
}

async fn llm_stub(response: ResponseTemplate) -> MockServer {
    let stub = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(COMPLETIONS))
        .respond_with(response)
        .mount(&stub)
        .await;
    stub
}

/// A server whose responder asks `stub` and gives up after `timeout`.
async fn app_with_llm(stub: Option<&MockServer>, timeout: Duration) -> TestApp {
    let url = stub.map(|s| format!("{}{COMPLETIONS}", s.uri()));
    TestApp::spawn_configured(move |config: &mut Config| {
        config.responder.llm_api_url = url.map(|u| u.parse().expect("stub url"));
        config.responder.llm_api_key = Some(palaver::config::Secret::new("sk-test-key".into()));
        config.responder.timeout = timeout;
        // These tests time deliveries to the millisecond; fsync tails on a shared CI disk
        // are not what they are about.
        config.sqlite_synchronous = SqliteSynchronous::Normal;
    })
    .await
}

struct Scene {
    alice: TestUser,
    bob: TestUser,
    alice_ws: WsClient,
}

/// Alice online over WebSocket, Bob BUSY.
async fn scene(app: &TestApp) -> Scene {
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let busy = app.set_status(&bob, "BUSY").await;
    assert_eq!(busy.status, StatusCode::OK);
    let alice_ws = app.ws(&alice).await;
    Scene {
        alice,
        bob,
        alice_ws,
    }
}

/// Alice sends to Bob; returns the auto-reply frame Alice's socket gets and when it came.
async fn send_and_await_reply(
    app: &TestApp,
    scene: &mut Scene,
    content: &str,
) -> (Value, Duration) {
    let started = Instant::now();
    let sent_id = app.send_ok(&scene.alice, &scene.bob, content).await;
    loop {
        let frame = scene.alice_ws.next_json().await;
        if frame["type"] == "message" && frame["message"]["id"] != sent_id.as_str() {
            return (frame["message"].clone(), started.elapsed());
        }
    }
}

fn assert_auto_reply(message: &Value, scene: &Scene, content: &str) {
    assert_eq!(message["kind"], "auto_reply", "{message}");
    assert_eq!(message["sender"], scene.bob.id.as_str());
    assert_eq!(message["recipient"], scene.alice.id.as_str());
    assert_eq!(message["content"], content);
}

#[tokio::test]
async fn a_fast_llm_answers_for_the_busy_user() {
    let stub = llm_stub(
        ResponseTemplate::new(200).set_body_json(completion("Bob is in a meeting until 3.")),
    )
    .await;
    let app = app_with_llm(Some(&stub), Duration::from_secs(5)).await;
    let mut scene = scene(&app).await;

    let (reply, _) = send_and_await_reply(&app, &mut scene, "Are you free for lunch?").await;
    assert_auto_reply(&reply, &scene, "Bob is in a meeting until 3.");

    // Stored like any message: both histories show it.
    let history = app.messages(&scene.bob, "").await.body;
    assert_eq!(history.as_array().map(Vec::len), Some(2));
    assert_eq!(history[1]["id"], reply["id"]);

    // The plugin asked the LLM with the conversation, the model, and the host-added key.
    let requests = stub.received_requests().await.expect("recorded");
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.headers["authorization"], "Bearer sk-test-key");
    let body: Value = serde_json::from_slice(&request.body).expect("JSON body");
    assert_eq!(body["model"], "gpt-4o-mini");
    let messages = body["messages"].as_array().expect("messages");
    assert_eq!(messages[0]["role"], "system");
    assert!(
        messages[0]["content"]
            .as_str()
            .expect("prompt")
            .contains(&scene.bob.email)
    );
    assert_eq!(messages.last().expect("turn")["role"], "user");
    assert_eq!(
        messages.last().expect("turn")["content"],
        "Are you free for lunch?"
    );
}

#[tokio::test]
async fn a_slow_llm_gets_the_fallback_at_the_deadline_and_its_late_answer_is_dropped() {
    let timeout = Duration::from_millis(1500);
    let late = Duration::from_millis(2500);
    let stub = llm_stub(
        ResponseTemplate::new(200)
            .set_body_json(completion("too late"))
            .set_delay(late),
    )
    .await;
    let app = app_with_llm(Some(&stub), timeout).await;
    let mut scene = scene(&app).await;

    let (reply, elapsed) = send_and_await_reply(&app, &mut scene, "hello?").await;
    assert_auto_reply(&reply, &scene, FALLBACK);
    assert!(elapsed >= timeout, "not before the deadline: {elapsed:?}");
    assert!(
        elapsed <= timeout + Duration::from_millis(100),
        "at most 100 ms after it: {elapsed:?}"
    );

    // Wait past the moment the stub would have answered: nothing else ever arrives.
    tokio::time::sleep(late + Duration::from_millis(300) - elapsed.min(late)).await;
    let history = app.messages(&scene.alice, "").await.body;
    let kinds: Vec<&str> = history
        .as_array()
        .expect("array")
        .iter()
        .map(|m| m["content"].as_str().expect("c"))
        .collect();
    assert_eq!(kinds, ["hello?", FALLBACK]);
}

#[tokio::test]
async fn llm_failures_get_the_fallback_promptly() {
    let failures = [
        ResponseTemplate::new(500).set_body_string("upstream exploded"),
        ResponseTemplate::new(429).set_body_json(json!({"error": {"message": "rate limited"}})),
        ResponseTemplate::new(200).set_body_string("{not json"),
        ResponseTemplate::new(200).set_body_json(completion("   ")),
        ResponseTemplate::new(200).set_body_json(json!({"choices": []})),
    ];
    let timeout = Duration::from_secs(5);
    for failure in failures {
        let stub = llm_stub(failure).await;
        let app = app_with_llm(Some(&stub), timeout).await;
        let mut scene = scene(&app).await;
        let (reply, elapsed) = send_and_await_reply(&app, &mut scene, "ping").await;
        assert_auto_reply(&reply, &scene, FALLBACK);
        assert!(
            elapsed < Duration::from_secs(2),
            "promptly, not at the deadline: {elapsed:?}"
        );
        assert_eq!(stub.received_requests().await.map(|r| r.len()), Some(1));
    }
}

#[tokio::test]
async fn without_an_llm_configured_the_fallback_comes_at_once() {
    let app = app_with_llm(None, Duration::from_secs(5)).await;
    let mut scene = scene(&app).await;
    let (reply, elapsed) = send_and_await_reply(&app, &mut scene, "anyone?").await;
    assert_auto_reply(&reply, &scene, FALLBACK);
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
}

#[tokio::test]
async fn an_available_user_gets_no_auto_reply_and_the_llm_is_not_called() {
    let stub =
        llm_stub(ResponseTemplate::new(200).set_body_json(completion("should not happen"))).await;
    let app = app_with_llm(Some(&stub), Duration::from_secs(5)).await;
    let mut scene = scene(&app).await;
    app.set_status(&scene.bob, "AVAILABLE").await;

    let first = app.send_ok(&scene.alice, &scene.bob, "you there?").await;
    let answer = app
        .send_ok(&scene.bob, &scene.alice, "yes, in person")
        .await;
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let frame = scene.alice_ws.next_json().await;
        if frame["type"] == "message" {
            seen.push(frame["message"]["id"].as_str().expect("id").to_owned());
        }
    }
    assert_eq!(seen, [first, answer]);
    assert_eq!(stub.received_requests().await.map(|r| r.len()), Some(0));
    let history = app.messages(&scene.alice, "").await.body;
    assert!(
        history
            .as_array()
            .expect("array")
            .iter()
            .all(|m| m["kind"] == "user")
    );
}

#[tokio::test]
async fn one_reply_per_conversation_while_a_run_is_in_flight() {
    let timeout = Duration::from_millis(1500);
    let stub = llm_stub(
        ResponseTemplate::new(200)
            .set_body_json(completion("later"))
            .set_delay(Duration::from_millis(400)),
    )
    .await;
    let app = app_with_llm(Some(&stub), timeout).await;
    let mut scene = scene(&app).await;
    app.send_ok(&scene.alice, &scene.bob, "one").await;
    app.send_ok(&scene.alice, &scene.bob, "two").await;
    let mut replies = Vec::new();
    while replies.is_empty() {
        let frame = scene.alice_ws.next_json().await;
        if frame["message"]["kind"] == "auto_reply" {
            replies.push(frame);
        }
    }
    // A third message after the first run ended gets its own reply, and no other came between.
    let (reply, _) = send_and_await_reply(&app, &mut scene, "three").await;
    assert_auto_reply(&reply, &scene, "later");
    let history = app.messages(&scene.alice, "").await.body;
    let auto_replies = history
        .as_array()
        .expect("array")
        .iter()
        .filter(|m| m["kind"] == "auto_reply")
        .count();
    assert_eq!(auto_replies, 2);
}

/// The figure from the users' own words: 10 seconds.
#[tokio::test]
async fn the_real_ten_second_deadline() {
    let stub = llm_stub(
        ResponseTemplate::new(200)
            .set_body_json(completion("never"))
            .set_delay(Duration::from_secs(30)),
    )
    .await;
    let app = app_with_llm(Some(&stub), Duration::from_secs(10)).await;
    let mut scene = scene(&app).await;
    let (reply, elapsed) = send_and_await_reply(&app, &mut scene, "urgent").await;
    assert_auto_reply(&reply, &scene, FALLBACK);
    assert!(elapsed >= Duration::from_secs(10), "{elapsed:?}");
    assert!(elapsed <= Duration::from_millis(10_100), "{elapsed:?}");
}

/// An LLM that streams (server-sent events): its text so far reaches both sides as
/// `reply_progress` before the stored auto-reply, which names the message it answers.
#[tokio::test]
async fn a_streaming_llm_shows_its_answer_as_it_is_written() {
    let events = [
        json!({"choices": [{"index": 0, "delta": {"role": "assistant"}}]}),
        json!({"choices": [{"index": 0, "delta": {"content": "Bob is "}}]}),
        json!({"choices": [{"index": 0, "delta": {"content": "out today."}}]}),
    ];
    let body: String = events
        .iter()
        .map(|e| format!("data: {e}\n\n"))
        .chain(["data: [DONE]\n\n".to_owned()])
        .collect();
    let stub = llm_stub(ResponseTemplate::new(200).set_body_raw(body, "text/event-stream")).await;
    let app = app_with_llm(Some(&stub), Duration::from_secs(5)).await;
    let mut scene = scene(&app).await;
    let mut bob_ws = app.ws(&scene.bob).await;

    let sent = app.send_ok(&scene.alice, &scene.bob, "Lunch?").await;
    for ws in [&mut scene.alice_ws, &mut bob_ws] {
        let mut progress = Vec::new();
        let reply = loop {
            let frame = ws.next_json().await;
            match frame["type"].as_str() {
                Some("reply_progress") => progress.push(frame),
                Some("message") if frame["message"]["id"] != sent.as_str() => {
                    break frame["message"].clone();
                }
                _ => {}
            }
        };
        assert!(!progress.is_empty(), "no progress before the reply");
        for (n, frame) in progress.iter().enumerate() {
            assert_eq!(frame["reply_to"], sent.as_str());
            assert_eq!(frame["seq"], n as u64 + 1);
        }
        assert_eq!(
            progress.last().expect("progress")["text"],
            "Bob is out today."
        );
        assert_eq!(reply["kind"], "auto_reply");
        assert_eq!(reply["content"], "Bob is out today.");
        assert_eq!(reply["reply_to"], sent.as_str());
    }
    // The request asked for a stream; history keeps only the final text, with its reply_to.
    let requests = stub.received_requests().await.expect("recorded");
    let asked: Value = serde_json::from_slice(&requests[0].body).expect("JSON body");
    assert_eq!(asked["stream"], true);
    let history = app.messages(&scene.alice, "").await.body;
    assert_eq!(history[1]["content"], "Bob is out today.");
    assert_eq!(history[1]["reply_to"], sent.as_str());
}

/// A model that writes faster than anyone reads: its chunks are coalesced to at most one push
/// per `PROGRESS_EVERY`, each carrying the whole text so far, numbered from 1 without gaps.
#[tokio::test]
async fn fast_streams_are_coalesced_to_one_push_per_interval() {
    let words: Vec<String> = (0..300).map(|n| format!("w{n} ")).collect();
    let body: String = words
        .iter()
        .map(|w| {
            let event = json!({"choices": [{"index": 0, "delta": {"content": w}}]});
            format!("data: {event}\n\n")
        })
        .chain(["data: [DONE]\n\n".to_owned()])
        .collect();
    let stub = llm_stub(ResponseTemplate::new(200).set_body_raw(body, "text/event-stream")).await;
    let app = app_with_llm(Some(&stub), Duration::from_secs(5)).await;
    let mut scene = scene(&app).await;

    let started = Instant::now();
    let sent = app.send_ok(&scene.alice, &scene.bob, "Lunch?").await;
    let mut progress = Vec::new();
    let reply = loop {
        let frame = scene.alice_ws.next_json().await;
        match frame["type"].as_str() {
            Some("reply_progress") => progress.push(frame),
            Some("message") if frame["message"]["id"] != sent.as_str() => {
                break frame["message"].clone();
            }
            _ => {}
        }
    };
    let elapsed = started.elapsed();
    let final_text = words.concat().trim().to_owned();
    assert_eq!(reply["content"], final_text.as_str());
    let most = 1 + elapsed.as_millis() / palaver::responder::PROGRESS_EVERY.as_millis();
    assert!(
        !progress.is_empty() && progress.len() as u128 <= most,
        "{} pushes in {elapsed:?}: at most {most}",
        progress.len()
    );
    for (n, frame) in progress.iter().enumerate() {
        assert_eq!(frame["seq"], n as u64 + 1);
        let text = frame["text"].as_str().expect("text");
        assert!(final_text.starts_with(text), "{text:?} is not a prefix");
    }
}
