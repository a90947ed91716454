//! `GET /ws`: the plain WebSocket framing of the socket protocol (`protocol.rs`): JSON text
//! frames with a `"type"`. See docs/realtime.md.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use poem::web::Data;
use poem::web::websocket::{
    CloseCode, Message as Frame, WebSocket, WebSocketConfig, WebSocketStream,
};
use poem::{IntoResponse, Request, handler};
use serde::Deserialize;
use serde_json::Value;

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
/// See the WebSocket config in [`websocket`].
const READ_BUFFER: usize = 1024;
/// How long a client refused for too many connections is asked to wait.
const CONNECTION_RETRY: Duration = Duration::from_secs(30);
/// A client gets this long to read our close frame before the connection is dropped. A slow
/// consumer's close frame waits behind everything already in its socket buffers, so this is
/// generous: dropping earlier would leave the client a bare FIN instead of 1013.
const CLOSE_GRACE: Duration = Duration::from_secs(30);

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
        // Every connection keeps this much zeroed and resident while it waits for a frame.
        // Client frames are a few hundred bytes; a bigger one grows the buffer for itself.
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(crate::config::MAX_BODY_BYTES))
        .max_frame_size(Some(crate::config::MAX_BODY_BYTES));
    Ok(ws
        .protocols([SUBPROTOCOL])
        .config(config)
        .on_upgrade(move |socket| session(socket, subscription, live, settings, caller)))
}

/// What the connection must write on its own account.
enum Duty {
    Write(String),
    Ping,
}

/// An answer being worked out for the client's last frame. Boxed, so an idle connection holds
/// a pointer and not the whole send path's state.
type Answering = Pin<Box<dyn Future<Output = Option<String>> + Send>>;

/// One `/ws` connection, read and written by one task: client frames are read and answered
/// one at a time (pushes keep flowing while an answer is worked out), pushes and replies go
/// out as JSON text frames, pings on a timer, and the close frame at the end.
///
/// Why one task and not a reader task beside a writer: the second task, its reply queue and
/// the lock between the socket's halves cost about 3.5 KiB per idle connection, and every
/// frame a client sent took a wake-up more to be answered.
struct WsSink {
    socket: WebSocketStream,
    live: Live,
    user: UserId,
    /// At most one: frames are answered in the order they came, as the client sent them.
    answering: Option<Answering>,
    ping: tokio::time::Interval,
    last_heard: Instant,
    idle_timeout: Duration,
}

impl WsSink {
    /// What a frame from the client asks of us, if anything.
    fn take(&mut self, frame: Frame) -> Result<Option<Duty>, Ending> {
        self.last_heard = Instant::now();
        match frame {
            Frame::Text(text) => {
                self.answering = Some(Box::pin(answer(self.live.clone(), self.user, text)));
                Ok(None)
            }
            Frame::Binary(_) => Ok(Some(Duty::Write(
                ServerFrame::reply(
                    &Value::Null,
                    &Reply::Refused(Failure::bad_request(
                        "binary frames are not supported; send JSON text frames",
                    )),
                )
                .to_text(),
            ))),
            Frame::Close(_) => Err(Ending::Gone),
            Frame::Ping(_) | Frame::Pong(_) => Ok(None),
        }
    }
}

impl Sink for WsSink {
    type Duty = Duty;

    // Cancel-safe: it is dropped whenever a push comes first, so everything it waits on lives
    // in `self` (the answer in flight, the socket's read half, the ping timer).
    async fn next_duty(&mut self) -> Result<Duty, Ending> {
        loop {
            let duty = tokio::select! {
                answered = async {
                    match self.answering.as_mut() {
                        Some(answering) => answering.await,
                        None => std::future::pending().await,
                    }
                } => {
                    self.answering = None;
                    answered.map(Duty::Write)
                }
                read = self.socket.next(), if self.answering.is_none() => match read {
                    Some(Ok(frame)) => self.take(frame)?,
                    // tungstenite refuses an oversized frame from its header, before
                    // buffering it.
                    Some(Err(e)) if is_over_the_size_limit(&e) => return Err(Ending::TooBig),
                    // The client closed or vanished.
                    Some(Err(_)) | None => return Err(Ending::Gone),
                },
                _ = self.ping.tick() => {
                    if self.last_heard.elapsed() > self.idle_timeout {
                        return Err(Ending::Idle);
                    }
                    Some(Duty::Ping)
                }
            };
            if let Some(duty) = duty {
                return Ok(duty);
            }
        }
    }

    async fn perform(&mut self, duty: Duty) -> Result<(), Ending> {
        let frame = match duty {
            Duty::Write(text) => Frame::Text(text),
            Duty::Ping => Frame::Ping(Vec::new()),
        };
        self.socket.send(frame).await.map_err(|_| Ending::Gone)
    }

    async fn push(&mut self, push: &Push) -> Result<(), Ending> {
        self.socket
            .send(Frame::Text(push.frame.clone()))
            .await
            .map_err(|_| Ending::Gone)
    }

    async fn close(&mut self, ending: Ending) {
        let (code, reason): (CloseCode, String) = match ending {
            Ending::Gone => return,
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
        let close = self.socket.send(Frame::Close(Some((code, reason))));
        let _ = tokio::time::timeout(CLOSE_GRACE, close).await;
    }
}

/// One connection, one task: see [`WsSink`]. Not an `async fn`: its arguments would stay in
/// the task's state beside the sink built from them, for the connection's whole life.
fn session(
    socket: WebSocketStream,
    subscription: Subscription,
    live: Live,
    settings: RealtimeSettings,
    caller: Caller,
) -> impl Future<Output = ()> + Send {
    let period = settings.ping_interval;
    let ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let sink = WsSink {
        socket,
        live,
        user: subscription.user,
        answering: None,
        ping,
        last_heard: Instant::now(),
        idle_timeout: settings.idle_timeout,
    };
    super::session::run("websocket", sink, subscription, caller)
}

/// A text frame in, its answer out (none for typing). Owns what it uses: it is boxed and kept
/// in the connection while pushes are written.
async fn answer(live: Live, user: UserId, text: String) -> Option<String> {
    let frame = serde_json::from_str::<Value>(&text).unwrap_or(Value::Null);
    let client_id = frame.get("client_id").cloned().unwrap_or(Value::Null);
    let reply = match protocol::parse(frame, "frame") {
        Ok(frame) => protocol::handle(&live, user, frame).await,
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
