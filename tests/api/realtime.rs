//! Live delivery over `/ws` with a real WebSocket client.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::helpers::{TEST_JWT_SECRET, TestApp};
use crate::ws_client::{FRAME_DEADLINE, Received, WsClient, refused};

fn assert_message(frame: &Value, id: &str, sender: &str, recipient: &str, content: &str) {
    assert_eq!(frame["type"], "message", "{frame}");
    let message = &frame["message"];
    assert_eq!(message["id"], id, "{frame}");
    assert_eq!(message["sender"], sender);
    assert_eq!(message["recipient"], recipient);
    assert_eq!(message["content"], content);
    assert_eq!(message["kind"], "user");
    assert!(message["sent_at"].is_string());
}

#[tokio::test]
async fn handshakes_without_a_valid_token_are_refused_with_401() {
    let app = TestApp::spawn().await;
    let user = app.user("alice").await;
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": user.id, "iat": 1, "exp": 2}),
        &jsonwebtoken::EncodingKey::from_secret(TEST_JWT_SECRET.as_bytes()),
    )
    .expect("sign");

    let (status, body) = refused(app.ws_with(&app.ws_url(""), &[]).await);
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        body["message"],
        "Authentication required: send Authorization: Bearer <token>"
    );

    let (status, body) = refused(
        app.ws_with(&app.ws_url("?token=forged.token.here"), &[])
            .await,
    );
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["message"], "Invalid token");

    let bearer = [("authorization", format!("Bearer {expired}"))];
    let (status, body) = refused(app.ws_with(&app.ws_url(""), &bearer).await);
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["message"], "Token has expired; please log in again");
}

#[tokio::test]
async fn the_token_may_come_by_header_query_or_subprotocol() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let mut by_query = app
        .ws_with(&app.ws_url(&format!("?token={}", bob.token)), &[])
        .await
        .expect("query token");
    let mut by_protocol = app
        .ws_with(
            &app.ws_url(""),
            &[("sec-websocket-protocol", format!("palaver, {}", bob.token))],
        )
        .await
        .expect("subprotocol token");
    let mut by_legacy_header = app
        .ws_with(&app.ws_url(""), &[("x-auth-token", bob.token.clone())])
        .await
        .expect("x-auth-token");

    let id = app.send_ok(&alice, &bob, "three ways").await;
    for client in [&mut by_query, &mut by_protocol, &mut by_legacy_header] {
        assert_message(
            &client.next_json().await,
            &id,
            &alice.id,
            &bob.id,
            "three ways",
        );
    }
}

#[tokio::test]
async fn every_device_of_both_sides_gets_the_message() {
    let app = TestApp::spawn().await;
    let (alice, bob, carol) = (
        app.user("alice").await,
        app.user("bob").await,
        app.user("carol").await,
    );
    let mut bob_phone = app.ws(&bob).await;
    let mut bob_laptop = app.ws(&bob).await;
    let mut alice_laptop = app.ws(&alice).await;
    let mut carol_phone = app.ws(&carol).await;

    let id = app.send_ok(&alice, &bob, "hi bob").await;
    for device in [&mut bob_phone, &mut bob_laptop, &mut alice_laptop] {
        assert_message(&device.next_json().await, &id, &alice.id, &bob.id, "hi bob");
    }
    // Carol is not part of it: the first thing she gets is her own message.
    let to_carol = app.send_ok(&bob, &carol, "hi carol").await;
    assert_message(
        &carol_phone.next_json().await,
        &to_carol,
        &bob.id,
        &carol.id,
        "hi carol",
    );
}

#[tokio::test]
async fn a_send_frame_is_acknowledged_stored_and_delivered() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let mut alice_phone = app.ws(&alice).await;
    let mut alice_laptop = app.ws(&alice).await;
    let mut bob_phone = app.ws(&bob).await;

    alice_phone
        .send_json(
            json!({"type": "send", "recipient": bob.id, "content": "over ws", "client_id": "c-1"}),
        )
        .await;
    // The sending connection gets the ack and, like every device of both sides, the message.
    let mut ack = None;
    let mut echoed = None;
    for _ in 0..2 {
        let frame = alice_phone.next_json().await;
        match frame["type"].as_str() {
            Some("sent") => ack = Some(frame),
            Some("message") => echoed = Some(frame),
            _ => panic!("unexpected frame {frame}"),
        }
    }
    let ack = ack.expect("sent ack");
    assert_eq!(ack["client_id"], "c-1");
    let id = ack["id"].as_str().expect("id").to_owned();
    assert_message(&echoed.expect("echo"), &id, &alice.id, &bob.id, "over ws");
    assert_message(
        &bob_phone.next_json().await,
        &id,
        &alice.id,
        &bob.id,
        "over ws",
    );
    assert_message(
        &alice_laptop.next_json().await,
        &id,
        &alice.id,
        &bob.id,
        "over ws",
    );

    let stored = app.messages(&bob, "").await.body;
    assert_eq!(stored[0]["id"], id.as_str());
}

#[tokio::test]
async fn bad_frames_get_error_frames_and_the_connection_stays_open() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let mut ws = app.ws(&alice).await;

    let cases: Vec<(String, Value, u16, &str)> = vec![
        ("not json".into(), Value::Null, 400, "frames must be JSON objects with a \"type\""),
        ("[1, 2]".into(), Value::Null, 400, "frames must be JSON objects with a \"type\""),
        (json!({"client_id": 7}).to_string(), json!(7), 400, "frames must be JSON objects with a \"type\""),
        (json!({"type": "dance", "client_id": "d"}).to_string(), json!("d"), 400, "unknown frame type \"dance\""),
        (json!({"type": "send", "recipient": bob.id, "content": "  ", "client_id": "blank"}).to_string(), json!("blank"), 400, "Content must not be empty"),
        (json!({"type": "send", "recipient": "01a21ad6-1116-770e-912c-0b82997c7500", "content": "x", "client_id": "who"}).to_string(), json!("who"), 404, "Recipient not found"),
        (json!({"type": "send", "sender": bob.id, "recipient": bob.id, "content": "x", "client_id": "spoof"}).to_string(), json!("spoof"), 403, "You can only send messages as yourself"),
    ];
    for (text, client_id, code, message) in &cases {
        ws.send_text(text).await;
        let frame = ws.next_json().await;
        assert_eq!(frame["type"], "error", "{text}: {frame}");
        assert_eq!(&frame["client_id"], client_id, "{text}");
        assert_eq!(frame["code"], *code, "{text}");
        assert_eq!(frame["message"], *message, "{text}");
    }

    ws.send_json(json!({"type": "send", "recipient": bob.id, "client_id": "half"}))
        .await;
    let frame = ws.next_json().await;
    assert_eq!(frame["type"], "error");
    assert_eq!(frame["client_id"], "half");
    assert!(
        frame["message"]
            .as_str()
            .expect("message")
            .contains("content"),
        "{frame}"
    );

    // Still open: an application ping gets its pong.
    ws.send_json(json!({"type": "ping", "client_id": "p"}))
        .await;
    assert_eq!(
        ws.next_json().await,
        json!({"type": "pong", "client_id": "p"})
    );
    assert_eq!(app.messages(&bob, "").await.body, json!([]));
}

#[tokio::test]
async fn status_changes_reach_conversation_partners_only() {
    let app = TestApp::spawn().await;
    let (alice, bob, carol) = (
        app.user("alice").await,
        app.user("bob").await,
        app.user("carol").await,
    );
    app.send_ok(&bob, &alice, "hello").await;
    let mut bob_ws = app.ws(&bob).await;
    let mut carol_ws = app.ws(&carol).await;
    let mut alice_other_device = app.ws(&alice).await;

    let busy = app.set_status(&alice, "BUSY").await;
    assert_eq!(busy.status, StatusCode::OK);
    let expected = json!({"type": "status", "user": alice.id, "status": "BUSY"});
    assert_eq!(bob_ws.next_json().await, expected);
    assert_eq!(alice_other_device.next_json().await, expected);

    // Setting the same status again is not a change: nothing is pushed.
    app.set_status(&alice, "BUSY").await;
    // Carol shares no conversation with Alice: her first frame is her own message.
    let id = app.send_ok(&bob, &carol, "ping").await;
    assert_eq!(carol_ws.next_json().await["message"]["id"], id.as_str());
    assert_eq!(bob_ws.next_json().await["message"]["id"], id.as_str());
}

/// A client with a tiny receive buffer that never reads is cut off with 1013 once its queue
/// fills; the senders and another user's live delivery carry on meanwhile.
#[tokio::test]
async fn a_client_that_never_reads_is_cut_off_and_others_carry_on() {
    let app = TestApp::spawn_configured(|config| {
        config.realtime.queue_capacity = 16;
        // One sender floods 800 messages: the point here is the reader, not the send limit.
        config.limits.sends = None;
    })
    .await;
    let (alice, slow, carol, dave) = (
        app.user("alice").await,
        app.user("slow").await,
        app.user("carol").await,
        app.user("dave").await,
    );
    let mut slow_ws = connect_with_small_receive_buffer(&app, &slow.token).await;
    let mut dave_ws = app.ws(&dave).await;

    // ~8 KB per push; 800 of them are far more than the queue plus the socket buffers hold.
    let content = "é".repeat(4000);
    let senders: Vec<_> = (0..8)
        .map(|_| {
            let client = app.client.clone();
            let url = app.url("/api/chat/send");
            let (token, recipient, content) =
                (alice.token.clone(), slow.id.clone(), content.clone());
            tokio::spawn(async move {
                for _ in 0..100 {
                    let response = client
                        .post(&url)
                        .bearer_auth(&token)
                        .json(&json!({"recipient": recipient, "content": content}))
                        .send()
                        .await
                        .expect("send");
                    assert_eq!(response.status(), StatusCode::OK);
                }
            })
        })
        .collect();

    // Live delivery to someone else is unaffected while the flood runs.
    let id = app.send_ok(&carol, &dave, "still here").await;
    assert_eq!(dave_ws.next_json().await["message"]["id"], id.as_str());
    for sender in senders {
        sender.await.expect("sender task");
    }

    // Now the slow client reads what it was given: some messages, then the close.
    let mut delivered = 0;
    let close = loop {
        match slow_ws.receive().await {
            Received::Json(frame) => {
                assert_eq!(frame["type"], "message");
                delivered += 1;
            }
            Received::Closed(frame) => break frame,
        }
    };
    let close = close.expect("a close frame with a reason");
    assert_eq!(close.code, CloseCode::Again, "{close:?}");
    assert!(close.reason.contains("reconnect"), "{close:?}");
    assert!(
        delivered < 800,
        "the slow client was cut off (got {delivered})"
    );
    // Nothing stored was lost.
    let stored = app.messages(&slow, "?limit=200").await.body;
    assert_eq!(stored.as_array().map(Vec::len), Some(200));
}

async fn connect_with_small_receive_buffer(app: &TestApp, token: &str) -> WsClient {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let address: std::net::SocketAddr = app
        .address
        .trim_start_matches("http://")
        .parse()
        .expect("address");
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .set_recv_buffer_size(4096)
        .expect("small receive buffer");
    let stream = socket.connect(address).await.expect("connect");
    let mut request = app
        .ws_url(&format!("?token={token}"))
        .into_client_request()
        .expect("request");
    request.headers_mut().remove("authorization");
    let (stream, _) =
        tokio_tungstenite::client_async(request, tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await
            .expect("handshake");
    WsClient { stream }
}

#[tokio::test]
async fn reconnecting_clients_catch_up_exactly_what_they_missed() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let mut bob_ws = app.ws(&bob).await;
    let first = app.send_ok(&alice, &bob, "before the tunnel").await;
    let last_seen = bob_ws.next_json().await["message"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    assert_eq!(last_seen, first);
    bob_ws.close().await;

    let mut missed = Vec::new();
    for i in 0..20 {
        missed.push(app.send_ok(&alice, &bob, &format!("missed {i}")).await);
    }
    let mut bob_ws = app.ws(&bob).await;
    let caught_up = app
        .messages(&bob, &format!("?after={last_seen}"))
        .await
        .body;
    let ids: Vec<&str> = caught_up
        .as_array()
        .expect("array")
        .iter()
        .map(|m| m["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, missed);
    // And live delivery resumes on the new connection.
    let live = app.send_ok(&alice, &bob, "back online").await;
    assert_eq!(bob_ws.next_json().await["message"]["id"], live.as_str());
}

/// A peer that stops answering pings is closed after the idle timeout.
#[tokio::test]
async fn dead_connections_are_closed_after_the_idle_timeout() {
    let app = TestApp::spawn_configured(|config| {
        config.realtime.ping_interval = Duration::from_millis(100);
        config.realtime.idle_timeout = Duration::from_millis(300);
    })
    .await;
    let user = app.user("quiet").await;
    // A raw upgrade: this client never writes again, so it never answers a ping.
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    let handshake = format!(
        "GET /ws?token={} HTTP/1.1\r\nHost: {address}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        user.token
    );
    stream
        .write_all(handshake.as_bytes())
        .await
        .expect("handshake");
    let mut received = Vec::new();
    let read_all = tokio::time::timeout(FRAME_DEADLINE, stream.read_to_end(&mut received)).await;
    assert!(read_all.is_ok(), "the server closes the connection");
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    // A close frame (0x88) with code 1001 (0x03E9) came before the end.
    let close = received
        .windows(4)
        .any(|w| w[0] == 0x88 && w[2] == 0x03 && w[3] == 0xE9);
    assert!(close, "close frame 1001 present");
}
