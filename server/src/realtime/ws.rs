//! `GET /ws`: the plain WebSocket transport. JSON text frames, see the README's protocol guide.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use poem::web::Data;
use poem::web::websocket::{
    CloseCode, Message as Frame, WebSocket, WebSocketConfig, WebSocketStream,
};
use poem::{IntoResponse, Request, handler};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::Live;
use super::hub::{Eviction, Subscription};
use super::{CLOSE_EXPIRED, CLOSE_TOO_BIG};
use crate::auth::{Caller, token_from_headers};
use crate::config::RealtimeSettings;
use crate::domain::UserId;
use crate::failure::{Failure, RetryAfter};
use crate::messaging::SendRequest;

/// The subprotocol a browser offers alongside its token: `new WebSocket(url, ["palaver", token])`.
pub const SUBPROTOCOL: &str = "palaver";
/// How long a client refused for too many connections is asked to wait.
const CONNECTION_RETRY: Duration = Duration::from_secs(30);
/// A client gets this long to read our close frame before the connection is dropped. A slow
/// consumer's close frame waits behind everything already in its socket buffers, so this is
/// generous: dropping earlier would leave the client a bare FIN instead of 1013.
const CLOSE_GRACE: Duration = Duration::from_secs(30);
/// Answers (`sent`/`error`) waiting to be written; a client that sends without reading
/// stops being read once this fills.
const REPLY_QUEUE: usize = 32;

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// The token from (in order) the `Authorization`/`x-auth-token` headers, `?token=`, or an
/// entry of `Sec-WebSocket-Protocol` other than [`SUBPROTOCOL`].
fn handshake_token(req: &Request) -> Option<String> {
    if let Some(token) = token_from_headers(req.headers()) {
        return Some(token.to_owned());
    }
    if let Ok(TokenQuery { token: Some(token) }) = req.params::<TokenQuery>()
        && !token.is_empty()
    {
        return Some(token);
    }
    req.headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .find(|entry| !entry.is_empty() && *entry != SUBPROTOCOL)
        .map(str::to_owned)
}

#[handler]
pub async fn websocket(
    req: &Request,
    ws: WebSocket,
    live: Data<&Live>,
    settings: Data<&RealtimeSettings>,
) -> poem::Result<impl IntoResponse> {
    // Refused with 401 before the upgrade: an unauthenticated socket never opens.
    let caller = live
        .sessions
        .authenticate(handshake_token(req).as_deref())
        .await
        .map_err(Failure::from)?;
    // Registered before the 101 goes out, so a push sent right after the handshake is not
    // missed. If the upgrade never happens, the closure (and the subscription) is dropped.
    let subscription = live.hub.subscribe(caller.user).map_err(|refused| {
        // Refused before the upgrade too; a client should retry later, not at once.
        Failure::too_many_requests(refused.to_string(), RetryAfter(CONNECTION_RETRY))
    })?;
    let live = live.0.clone();
    let settings = settings.0.clone();
    let config = WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(crate::config::MAX_BODY_BYTES))
        .max_frame_size(Some(crate::config::MAX_BODY_BYTES));
    Ok(ws
        .protocols([SUBPROTOCOL])
        .config(config)
        .on_upgrade(move |socket| session(socket, subscription, live, settings, caller)))
}

/// What the reader hands the writer: an answer, or a reason to close.
enum Reply {
    Text(String),
    Close(CloseCode, String),
}

/// One connection: a reader task handles client frames; this task writes pushes, answers and
/// pings, and closes the connection when the hub evicts it, its token expires or the client
/// goes quiet.
async fn session(
    socket: WebSocketStream,
    mut subscription: Subscription,
    live: Live,
    settings: RealtimeSettings,
    caller: Caller,
) {
    let user = subscription.user;
    let _live = crate::metrics::LiveConnection::open("websocket");
    let (mut sink, stream) = socket.split();
    let (replies, mut pending_replies) = mpsc::channel::<Reply>(REPLY_QUEUE);
    let expired = tokio::time::sleep(caller.time_left());
    tokio::pin!(expired);
    let last_heard = Arc::new(std::sync::Mutex::new(Instant::now()));
    let reader = tokio::spawn(read_frames(
        stream,
        live.clone(),
        user,
        replies,
        last_heard.clone(),
    ));

    let mut ping = tokio::time::interval(settings.ping_interval);
    ping.tick().await;
    let close = loop {
        let outgoing = tokio::select! {
            biased;
            reason = subscription.signal.evicted() => break Some(close_frame(reason)),
            () = &mut expired => break Some((
                CLOSE_EXPIRED.into(),
                "token expired: log in again and reconnect".to_owned(),
            )),
            push = subscription.queue.recv() => match push {
                Some(push) => Frame::Text(push.frame.clone()),
                None => break None,
            },
            reply = pending_replies.recv() => match reply {
                Some(Reply::Text(reply)) => Frame::Text(reply),
                Some(Reply::Close(code, reason)) => break Some((code, reason)),
                None => break None, // the reader ended: the client closed or vanished
            },
            _ = ping.tick() => {
                let quiet_for = last_heard.lock().map(|t| t.elapsed()).unwrap_or_default();
                if quiet_for > settings.idle_timeout {
                    break Some((CloseCode::Away, "idle timeout: no pong received".to_owned()));
                }
                Frame::Ping(Vec::new())
            }
        };
        // A client that stops reading blocks this write; eviction must still get through.
        tokio::select! {
            biased;
            reason = subscription.signal.evicted() => break Some(close_frame(reason)),
            sent = sink.send(outgoing) => if sent.is_err() { break None },
        }
    };
    if let Some(frame) = close {
        let _ = tokio::time::timeout(CLOSE_GRACE, sink.send(Frame::Close(Some(frame)))).await;
    }
    reader.abort();
}

fn close_frame(reason: Eviction) -> (CloseCode, String) {
    (reason.close_code().into(), reason.explain().to_owned())
}

async fn read_frames(
    mut stream: futures_util::stream::SplitStream<WebSocketStream>,
    live: Live,
    user: UserId,
    replies: mpsc::Sender<Reply>,
    last_heard: Arc<std::sync::Mutex<Instant>>,
) {
    while let Some(read) = stream.next().await {
        let frame = match read {
            Ok(frame) => frame,
            // tungstenite refuses an oversized frame from its header, before buffering it.
            Err(e) if e.to_string().starts_with("Space limit exceeded") => {
                let reason = format!(
                    "message too big: the limit is {} KiB",
                    crate::config::MAX_BODY_BYTES / 1024
                );
                let _ = replies
                    .send(Reply::Close(CLOSE_TOO_BIG.into(), reason))
                    .await;
                break;
            }
            Err(_) => break,
        };
        if let Ok(mut heard) = last_heard.lock() {
            *heard = Instant::now();
        }
        let reply = match frame {
            Frame::Text(text) => handle_text(&live, user, &text).await,
            Frame::Binary(_) => Some(error_frame(
                &Value::Null,
                400,
                "binary frames are not supported; send JSON text frames",
            )),
            Frame::Close(_) => break,
            Frame::Ping(_) | Frame::Pong(_) => None,
        };
        if let Some(reply) = reply
            && replies.send(Reply::Text(reply)).await.is_err()
        {
            break;
        }
    }
}

#[derive(Deserialize)]
struct SendFrame {
    recipient: String,
    content: String,
    #[serde(default)]
    sender: Option<String>,
    /// Echoed in the answer, and the send's idempotency key.
    #[serde(default)]
    client_id: Option<super::ClientId>,
}

async fn handle_text(live: &Live, user: UserId, text: &str) -> Option<String> {
    let Ok(Value::Object(frame)) = serde_json::from_str::<Value>(text) else {
        return Some(error_frame(
            &Value::Null,
            400,
            "frames must be JSON objects with a \"type\"",
        ));
    };
    let client_id = frame.get("client_id").cloned().unwrap_or(Value::Null);
    match frame.get("type").and_then(Value::as_str) {
        Some("send") => {
            let send: SendFrame = match serde_json::from_value(Value::Object(frame)) {
                Ok(send) => send,
                Err(e) => {
                    return Some(error_frame(
                        &client_id,
                        400,
                        &format!("invalid send frame: {e}"),
                    ));
                }
            };
            let request = SendRequest {
                claimed_sender: send.sender,
                recipient: send.recipient,
                content: send.content,
                idempotency_key: send.client_id.map(super::ClientId::into_key),
            };
            Some(match live.messaging.send(user, request).await {
                Ok(message) => {
                    json!({"type": "sent", "client_id": client_id, "id": message.id.to_string()})
                        .to_string()
                }
                Err(err) => {
                    let failure = Failure::from(err);
                    let mut frame = error_value(&client_id, failure.status, &failure.message);
                    if let Some(wait) = failure.retry_after {
                        frame["retry_after"] = wait.seconds().into();
                    }
                    frame.to_string()
                }
            })
        }
        Some("ping") => Some(json!({"type": "pong", "client_id": client_id}).to_string()),
        Some(other) => Some(error_frame(
            &client_id,
            400,
            &format!("unknown frame type {other:?}"),
        )),
        None => Some(error_frame(
            &client_id,
            400,
            "frames must be JSON objects with a \"type\"",
        )),
    }
}

fn error_frame(client_id: &Value, code: u16, message: &str) -> String {
    error_value(client_id, code, message).to_string()
}

fn error_value(client_id: &Value, code: u16, message: &str) -> Value {
    json!({"type": "error", "client_id": client_id, "code": code, "message": message})
}
