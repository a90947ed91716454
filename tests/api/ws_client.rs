//! A real WebSocket client (tokio-tungstenite) for the black-box tests.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::helpers::{TestApp, TestUser};

/// How long a test waits for a frame it expects before failing.
pub const FRAME_DEADLINE: Duration = Duration::from_secs(15);

pub struct WsClient {
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// What a frame read ended with.
#[derive(Debug)]
pub enum Received {
    Json(Value),
    Closed(Option<CloseFrame>),
}

impl TestApp {
    /// Connects with `Authorization: Bearer <token>`.
    pub async fn ws(&self, user: &TestUser) -> WsClient {
        self.ws_with(
            &self.ws_url(""),
            &[("authorization", format!("Bearer {}", user.token))],
        )
        .await
        .expect("websocket handshake")
    }

    pub async fn ws_with(&self, url: &str, headers: &[(&str, String)]) -> Result<WsClient, Error> {
        let mut request = url.into_client_request()?;
        for (name, value) in headers {
            request.headers_mut().insert(
                HeaderName::from_bytes(name.as_bytes()).expect("header name"),
                HeaderValue::from_str(value).expect("header value"),
            );
        }
        let (stream, _response) = tokio_tungstenite::connect_async(request).await?;
        Ok(WsClient { stream })
    }
}

/// The status a refused handshake answered with, and its JSON body.
pub fn refused(result: Result<WsClient, Error>) -> (StatusCode, Value) {
    match result {
        Err(Error::Http(response)) => {
            let body = response
                .body()
                .as_ref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            (response.status(), body)
        }
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("expected the handshake to be refused"),
    }
}

impl WsClient {
    pub async fn send_json(&mut self, value: Value) {
        self.send_text(&value.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.stream
            .send(Message::text(text))
            .await
            .expect("send frame");
    }

    /// The next JSON frame or the close, skipping pings and pongs.
    pub async fn receive(&mut self) -> Received {
        let deadline = tokio::time::Instant::now() + FRAME_DEADLINE;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .expect("a frame arrives before the deadline");
            match frame {
                Some(Ok(Message::Text(text))) => {
                    return Received::Json(serde_json::from_str(&text).expect("JSON frame"));
                }
                Some(Ok(Message::Close(frame))) => return Received::Closed(frame),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(other)) => panic!("unexpected frame {other:?}"),
                Some(Err(_)) | None => return Received::Closed(None),
            }
        }
    }

    /// The next JSON frame; fails on a close.
    pub async fn next_json(&mut self) -> Value {
        match self.receive().await {
            Received::Json(value) => value,
            Received::Closed(frame) => panic!("connection closed: {frame:?}"),
        }
    }

    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
    }
}
