//! `/socket.io/`: the Socket.IO transport (socketioxide), same hub and same send path as
//! `/ws`. Auth is the handshake's `auth: {token}`; events `message`, `status`, `read`, `typing`,
//! `conversation` and `removed` go out; `send` comes in with an acknowledgement `{id}` or
//! `{error, code}`, and `typing` (acked `{}`).

use std::sync::{Arc, Mutex};

use serde::Deserialize;
use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, Event, Extension, SocketRef, State, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::layer::SocketIoLayer;
use tokio::sync::Notify;

use super::Live;
use super::hub::{Eviction, Push, Subscription};
use super::protocol::{self, Reply};
use super::session::{Ending, Sink};
use crate::auth::Caller;
use crate::config::RealtimeSettings;
use crate::domain::UserId;
use crate::failure::Failure;

/// How long an Engine.IO session may live without joining the namespace with a valid token
/// (socketioxide's default is 45 s).
pub const UNAUTHENTICATED_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

/// Where Socket.IO is served (socketioxide's default path).
pub const PATH: &str = "/socket.io";

/// Whether a request starts a new Engine.IO session: the handshake, which has no `sid` yet.
pub fn opens_session<B>(req: &http::Request<B>) -> bool {
    let query = req.uri().query().unwrap_or_default();
    req.uri().path().starts_with(PATH)
        && query.split('&').any(|pair| pair.starts_with("EIO="))
        && !query.split('&').any(|pair| pair.starts_with("sid="))
}

/// Open Engine.IO sessions, authenticated or not, against `MAX_CONNECTIONS`.
#[derive(Clone)]
pub struct SessionCounter {
    open: Arc<std::sync::atomic::AtomicUsize>,
    cap: Option<usize>,
}

/// One open session. socketioxide keeps the handshake request (and so this, in its extensions)
/// for the session's whole life; the last clone dropped frees the place.
#[derive(Clone)]
pub struct SessionSlot(#[allow(dead_code, reason = "held for its Drop")] Arc<SlotRelease>);

pub struct SlotRelease(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for SlotRelease {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl SessionCounter {
    pub fn new(cap: Option<usize>) -> Self {
        Self {
            open: Arc::default(),
            cap,
        }
    }

    pub fn try_open(&self) -> Option<SessionSlot> {
        use std::sync::atomic::Ordering;
        let cap = self.cap.unwrap_or(usize::MAX);
        self.open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |open| {
                (open < cap).then_some(open + 1)
            })
            .ok()?;
        Some(SessionSlot(Arc::new(SlotRelease(self.open.clone()))))
    }

    pub fn open(&self) -> usize {
        self.open.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str) -> http::Request<()> {
        http::Request::get(uri).body(()).expect("request")
    }

    #[test]
    fn only_handshakes_open_sessions() {
        assert!(opens_session(&request(
            "/socket.io/?EIO=4&transport=polling"
        )));
        assert!(opens_session(&request(
            "/socket.io/?EIO=4&transport=websocket"
        )));
        assert!(!opens_session(&request(
            "/socket.io/?EIO=4&transport=polling&sid=abc"
        )));
        assert!(!opens_session(&request("/api/chat/messages?EIO=4")));
    }

    #[test]
    fn the_cap_counts_live_slots() {
        let counter = SessionCounter::new(Some(2));
        let first = counter.try_open().expect("room");
        let second = counter.try_open().expect("room");
        let kept = second.clone();
        assert!(counter.try_open().is_none());
        drop(first);
        drop(second);
        assert_eq!(counter.open(), 1, "a clone still holds its place");
        drop(kept);
        assert_eq!(counter.open(), 0);
        assert!(SessionCounter::new(None).try_open().is_some());
    }
}

/// The tower layer to put in front of the HTTP app, and the handle to close sockets with.
pub fn layer(live: Live, settings: &RealtimeSettings) -> (SocketIoLayer, SocketIo) {
    let (layer, io) = SocketIo::builder()
        .with_state(live)
        .max_buffer_size(settings.queue_capacity)
        .max_payload(crate::config::MAX_BODY_BYTES as u64)
        // tungstenite's defaults (16 MiB frames, 64 MiB messages) would let a client that never
        // authenticates make the server buffer megabytes; the frame limit is checked from the
        // header, before anything is buffered.
        .ws_max_frame_size(crate::config::MAX_BODY_BYTES)
        .ws_max_message_size(crate::config::MAX_BODY_BYTES)
        .connect_timeout(UNAUTHENTICATED_WINDOW)
        .ping_interval(settings.ping_interval)
        .ping_timeout(
            settings
                .idle_timeout
                .saturating_sub(settings.ping_interval)
                .max(settings.ping_interval),
        )
        .build_layer();
    io.ns("/", on_connect.with(authenticate_handshake));
    (layer, io)
}

#[derive(Deserialize)]
struct Handshake {
    token: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refused(String);

/// Runs before the socket joins: no valid token, no connection (`connect_error` with a message).
async fn authenticate_handshake(
    socket: SocketRef,
    State(live): State<Live>,
    TryData(handshake): TryData<Handshake>,
) -> Result<(), Refused> {
    let token = handshake.ok().and_then(|h| h.token);
    let caller = live
        .sessions
        .authenticate(token.as_deref())
        .await
        .map_err(|e| Refused(Failure::from(e).message))?;
    let user = caller.user;
    socket.extensions.insert(user);
    socket.extensions.insert(caller);
    // Subscribed before socketioxide sends the CONNECT packet (the handler runs after it), so
    // a push sent as soon as the client sees `connect` is not missed.
    let subscription = live
        .hub
        .subscribe(user)
        .map_err(|refused| Refused(refused.to_string()))?;
    let subscription = PendingSubscription(Arc::new(Mutex::new(Some(subscription))));
    socket.extensions.insert(subscription);
    Ok(())
}

/// Carries the subscription from the middleware to the connect handler (extensions are `Clone`).
#[derive(Clone)]
struct PendingSubscription(Arc<Mutex<Option<Subscription>>>);

async fn on_connect(
    socket: SocketRef,
    Extension(user): Extension<UserId>,
    Extension(caller): Extension<Caller>,
    Extension(pending): Extension<PendingSubscription>,
) {
    let Some(subscription) = crate::sync::lock(&pending.0).take() else {
        tracing::error!(%user, "socket.io connection without a subscription");
        let _ = socket.disconnect();
        return;
    };
    socket.extensions.remove::<PendingSubscription>();
    let disconnected = Arc::new(Notify::new());
    socket.extensions.insert(disconnected.clone());
    for event in CLIENT_EVENTS {
        socket.on(*event, on_client_event);
    }
    socket.on_disconnect(async |Extension(disconnected): Extension<Arc<Notify>>| {
        disconnected.notify_one();
    });
    let sink = SocketIoSink {
        socket,
        disconnected,
    };
    tokio::spawn(super::session::run("socketio", sink, subscription, caller));
}

/// The client frames Socket.IO carries, as events of the same name. Not `ping`: Engine.IO has
/// its own heartbeat.
const CLIENT_EVENTS: &[&str] = &["send", "typing"];

/// Socket.IO's write side: pushes as events; replies go out as acks, not through here.
struct SocketIoSink {
    socket: SocketRef,
    disconnected: Arc<Notify>,
}

impl Sink for SocketIoSink {
    type Duty = std::convert::Infallible;

    async fn next_duty(&mut self) -> Result<Self::Duty, Ending> {
        self.disconnected.notified().await;
        Err(Ending::Gone)
    }

    async fn perform(&mut self, duty: Self::Duty) -> Result<(), Ending> {
        match duty {}
    }

    async fn push(&mut self, push: &Push) -> Result<(), Ending> {
        // socketioxide's own per-socket buffer is bounded too: full means too slow.
        self.socket.emit(push.event, &*push.data).map_err(|_| {
            tracing::warn!(user = ?self.socket.extensions.get::<UserId>(), "socket.io buffer full; disconnecting");
            crate::metrics::push_dropped();
            Ending::Evicted(Eviction::Overflow)
        })
    }

    async fn close(&mut self, ending: Ending) {
        match ending {
            Ending::Gone => {}
            Ending::Evicted(Eviction::Revoked) => {
                end_session(&self.socket, Eviction::Revoked.explain());
            }
            Ending::Expired => {
                end_session(&self.socket, "token expired: log in again and reconnect");
            }
            Ending::Evicted(_) | Ending::Idle | Ending::TooBig => {
                let _ = self.socket.clone().disconnect();
            }
        }
    }
}

/// Tells the client why before disconnecting it (an event queued before the disconnect
/// reaches it first). A server-side disconnect stops socket.io-client from reconnecting by
/// itself, which is right: it needs a new token.
fn end_session(socket: &SocketRef, reason: &str) {
    let _ = socket.emit("session_ended", &json!({ "reason": reason }));
    let _ = socket.clone().disconnect();
}

/// A client event: the same frame as on `/ws`, with the event name as its type; the answer is
/// the ack (without an ack callback nobody hears it, but the send happens all the same).
async fn on_client_event(
    ack: AckSender,
    Event(event): Event,
    State(live): State<Live>,
    Extension(user): Extension<UserId>,
    TryData(payload): TryData<Value>,
) {
    let reply = match payload {
        Err(e) => Reply::Refused(Failure::bad_request(format!(
            "invalid {event} payload: {e}"
        ))),
        Ok(Value::Object(mut fields)) => {
            fields.insert("type".to_owned(), Value::String(event.to_string()));
            match protocol::parse(Value::Object(fields), "payload") {
                Ok(frame) => protocol::handle(&live, user, frame).await,
                Err(refused) => Reply::Refused(refused),
            }
        }
        Ok(other) => Reply::Refused(Failure::bad_request(format!(
            "invalid {event} payload: expected a JSON object, got {}",
            json_type(&other)
        ))),
    };
    let _ = ack.send(&ack_body(&reply));
}

fn ack_body(reply: &Reply) -> Value {
    match reply {
        Reply::Sent { id } => json!({"id": id.to_string()}),
        Reply::Pong | Reply::Quiet => json!({}),
        Reply::Refused(failure) => {
            let mut body = json!({"error": failure.message, "code": failure.status});
            if let Some(wait) = failure.retry_after {
                body["retry_after"] = wait.seconds().into();
            }
            body
        }
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
