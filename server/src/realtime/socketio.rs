//! `/socket.io/`: the Socket.IO transport (socketioxide), same hub and same send path as
//! `/ws`. Auth is the handshake's `auth: {token}`; events `message` and `status` go out, `send`
//! comes in with an acknowledgement `{id}` or `{error, code}`.

use std::sync::{Arc, Mutex};

use serde::Deserialize;
use serde_json::json;
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, Extension, SocketRef, State, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::layer::SocketIoLayer;
use tokio::sync::Notify;

use crate::auth::Caller;
use crate::config::RealtimeSettings;
use crate::domain::UserId;
use crate::failure::Failure;
use crate::messaging::SendRequest;
use crate::realtime::{ClientId, Eviction, Live, Subscription};

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
    let Some(mut subscription) = pending.0.lock().ok().and_then(|mut s| s.take()) else {
        tracing::error!(%user, "socket.io connection without a subscription");
        let _ = socket.disconnect();
        return;
    };
    socket.extensions.remove::<PendingSubscription>();
    let disconnected = Arc::new(Notify::new());
    socket.extensions.insert(disconnected.clone());
    socket.on("send", on_send);
    socket.on_disconnect(async |Extension(disconnected): Extension<Arc<Notify>>| {
        disconnected.notify_one();
    });

    // Forward hub pushes to this socket until it disconnects, is evicted or its token expires.
    let expiry = caller.time_left();
    tokio::spawn(async move {
        let _live = crate::metrics::LiveConnection::open("socketio");
        let expired = tokio::time::sleep(expiry);
        tokio::pin!(expired);
        loop {
            tokio::select! {
                biased;
                () = disconnected.notified() => break,
                reason = subscription.signal.evicted() => {
                    if reason == Eviction::Revoked {
                        end_session(&socket, reason.explain());
                    } else {
                        let _ = socket.disconnect();
                    }
                    break;
                }
                () = &mut expired => {
                    end_session(&socket, "token expired: log in again and reconnect");
                    break;
                }
                push = subscription.queue.recv() => match push {
                    // socketioxide's own per-socket buffer is bounded too: full means too slow.
                    Some(push) => if socket.emit(push.event, &push.data).is_err() {
                        tracing::warn!(%user, "socket.io buffer full; disconnecting");
                        crate::metrics::push_dropped();
                        let _ = socket.disconnect();
                        break;
                    },
                    None => break,
                },
            }
        }
    });
}

/// Tells the client why before disconnecting it (an event queued before the disconnect
/// reaches it first). A server-side disconnect stops socket.io-client from reconnecting by
/// itself, which is right: it needs a new token.
fn end_session(socket: &SocketRef, reason: &str) {
    let _ = socket.emit("session_ended", &json!({ "reason": reason }));
    let _ = socket.clone().disconnect();
}

#[derive(Deserialize)]
struct SendEvent {
    recipient: String,
    content: String,
    #[serde(default)]
    sender: Option<String>,
    /// Makes the send idempotent, as `Idempotency-Key` does over HTTP.
    #[serde(default)]
    client_id: Option<ClientId>,
}

async fn on_send(
    ack: AckSender,
    State(live): State<Live>,
    Extension(user): Extension<UserId>,
    TryData(event): TryData<SendEvent>,
) {
    let reply = match event {
        Err(e) => json!({"error": format!("invalid send payload: {e}"), "code": 400}),
        Ok(event) => {
            let request = SendRequest {
                claimed_sender: event.sender,
                recipient: event.recipient,
                content: event.content,
                idempotency_key: event.client_id.map(ClientId::into_key),
            };
            match live.messaging.send(user, request).await {
                Ok(message) => json!({"id": message.id.to_string()}),
                Err(err) => {
                    let failure = Failure::from(err);
                    let mut reply = json!({"error": failure.message, "code": failure.status});
                    if let Some(wait) = failure.retry_after {
                        reply["retry_after"] = wait.seconds().into();
                    }
                    reply
                }
            }
        }
    };
    // Without an ack callback there is nobody to answer; the message is stored and pushed anyway.
    let _ = ack.send(&reply);
}
