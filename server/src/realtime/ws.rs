//! `GET /ws`: the plain WebSocket framing of the socket protocol (`protocol.rs`): JSON text
//! frames with a `"type"`. See docs/realtime.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use poem::web::Data;
use poem::web::websocket::{
    CloseCode, Message as Frame, WebSocket, WebSocketConfig, WebSocketStream,
};
use poem::{IntoResponse, Request, handler};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::mpsc;

use super::hub::{Push, Subscription};
use super::protocol::{self, Reply, ServerFrame};
use super::session::{Ending, Sink};
use super::{CLOSE_EXPIRED, CLOSE_TOO_BIG, Live};
use crate::auth::{Caller, token_from_headers};
use crate::config::RealtimeSettings;
use crate::domain::UserId;
use crate::failure::{Failure, RetryAfter};

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

/// What the reader hands the writer: an answer to write, or a reason to close.
enum Duty {
    Write(String),
    Ping,
}

/// `/ws`'s write side: pushes and replies as JSON text frames, pings on a timer, and the close
/// frame. The reader task answers client frames through `replies`.
struct WsSink {
    sink: futures_util::stream::SplitSink<WebSocketStream, Frame>,
    replies: mpsc::Receiver<Result<String, Ending>>,
    reader: tokio::task::JoinHandle<()>,
    ping: tokio::time::Interval,
    last_heard: Arc<std::sync::Mutex<Instant>>,
    idle_timeout: Duration,
}

impl Sink for WsSink {
    type Duty = Duty;

    async fn next_duty(&mut self) -> Result<Duty, Ending> {
        tokio::select! {
            reply = self.replies.recv() => match reply {
                Some(Ok(text)) => Ok(Duty::Write(text)),
                Some(Err(ending)) => Err(ending),
                None => Err(Ending::Gone), // the reader ended: the client closed or vanished
            },
            _ = self.ping.tick() => {
                let quiet_for = crate::sync::lock(&self.last_heard).elapsed();
                if quiet_for > self.idle_timeout {
                    Err(Ending::Idle)
                } else {
                    Ok(Duty::Ping)
                }
            }
        }
    }

    async fn perform(&mut self, duty: Duty) -> Result<(), Ending> {
        let frame = match duty {
            Duty::Write(text) => Frame::Text(text),
            Duty::Ping => Frame::Ping(Vec::new()),
        };
        self.sink.send(frame).await.map_err(|_| Ending::Gone)
    }

    async fn push(&mut self, push: &Push) -> Result<(), Ending> {
        self.sink
            .send(Frame::Text(push.frame.clone()))
            .await
            .map_err(|_| Ending::Gone)
    }

    async fn close(mut self, ending: Ending) {
        let (code, reason): (CloseCode, String) = match ending {
            Ending::Gone => {
                self.reader.abort();
                return;
            }
            Ending::Evicted(reason) => (reason.close_code().into(), reason.explain().to_owned()),
            Ending::Expired => (
                CLOSE_EXPIRED.into(),
                "token expired: log in again and reconnect".to_owned(),
            ),
            Ending::Idle => (CloseCode::Away, "idle timeout: no pong received".to_owned()),
            Ending::TooBig => (
                CLOSE_TOO_BIG.into(),
                format!(
                    "message too big: the limit is {} KiB",
                    crate::config::MAX_BODY_BYTES / 1024
                ),
            ),
        };
        let close = self.sink.send(Frame::Close(Some((code, reason))));
        let _ = tokio::time::timeout(CLOSE_GRACE, close).await;
        self.reader.abort();
    }
}

/// One connection: a reader task answers client frames; the session loop writes pushes,
/// answers and pings, and closes the connection when it ends.
async fn session(
    socket: WebSocketStream,
    subscription: Subscription,
    live: Live,
    settings: RealtimeSettings,
    caller: Caller,
) {
    let (sink, stream) = socket.split();
    let (replies, pending_replies) = mpsc::channel(REPLY_QUEUE);
    let last_heard = Arc::new(std::sync::Mutex::new(Instant::now()));
    let reader = tokio::spawn(read_frames(
        stream,
        live,
        subscription.user,
        replies,
        last_heard.clone(),
    ));
    let mut ping = tokio::time::interval(settings.ping_interval);
    ping.tick().await;
    let sink = WsSink {
        sink,
        replies: pending_replies,
        reader,
        ping,
        last_heard,
        idle_timeout: settings.idle_timeout,
    };
    super::session::run("websocket", sink, subscription, caller).await;
}

async fn read_frames(
    mut stream: futures_util::stream::SplitStream<WebSocketStream>,
    live: Live,
    user: UserId,
    replies: mpsc::Sender<Result<String, Ending>>,
    last_heard: Arc<std::sync::Mutex<Instant>>,
) {
    while let Some(read) = stream.next().await {
        let frame = match read {
            Ok(frame) => frame,
            // tungstenite refuses an oversized frame from its header, before buffering it.
            Err(e) if is_over_the_size_limit(&e) => {
                let _ = replies.send(Err(Ending::TooBig)).await;
                break;
            }
            Err(_) => break,
        };
        *crate::sync::lock(&last_heard) = Instant::now();
        let reply = match frame {
            Frame::Text(text) => answer(&live, user, &text).await,
            Frame::Binary(_) => Some(
                ServerFrame::reply(
                    &Value::Null,
                    &Reply::Refused(Failure::bad_request(
                        "binary frames are not supported; send JSON text frames",
                    )),
                )
                .to_text(),
            ),
            Frame::Close(_) => break,
            Frame::Ping(_) | Frame::Pong(_) => None,
        };
        if let Some(reply) = reply
            && replies.send(Ok(reply)).await.is_err()
        {
            break;
        }
    }
}

/// A text frame in, its answer out (none for typing).
async fn answer(live: &Live, user: UserId, text: &str) -> Option<String> {
    let frame = serde_json::from_str::<Value>(text).unwrap_or(Value::Null);
    let client_id = frame.get("client_id").cloned().unwrap_or(Value::Null);
    let reply = match protocol::parse(frame, "frame") {
        Ok(frame) => protocol::handle(live, user, frame).await,
        Err(refused) => Reply::Refused(refused),
    };
    (!matches!(reply, Reply::Quiet)).then(|| ServerFrame::reply(&client_id, &reply).to_text())
}

/// tungstenite refuses a frame over the limit from its header (its `Error::Capacity`), but poem
/// hands its errors on as `io::Error::other(error.to_string())`: the text is all that is left of
/// the kind, so this reads tungstenite's own wording for it.
fn is_over_the_size_limit(err: &std::io::Error) -> bool {
    err.kind() == std::io::ErrorKind::Other && err.to_string().starts_with("Space limit exceeded")
}
