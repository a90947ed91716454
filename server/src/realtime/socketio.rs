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

use crate::api::security::authenticate;
use crate::config::RealtimeSettings;
use crate::domain::UserId;
use crate::messaging::{SendRequest, send_message};
use crate::realtime::Subscription;
use crate::state::AppState;

/// The tower layer to put in front of the HTTP app, and the handle to close sockets with.
pub fn layer(state: AppState, settings: &RealtimeSettings) -> (SocketIoLayer, SocketIo) {
    let (layer, io) = SocketIo::builder()
        .with_state(state)
        .max_buffer_size(settings.queue_capacity)
        .max_payload(crate::api::MAX_BODY_BYTES as u64)
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
    State(state): State<AppState>,
    TryData(handshake): TryData<Handshake>,
) -> Result<(), Refused> {
    let token = handshake.ok().and_then(|h| h.token);
    let user =
        authenticate(&state, token.as_deref()).map_err(|e| Refused(e.status_and_message().1))?;
    socket.extensions.insert(user);
    // Subscribed before socketioxide sends the CONNECT packet (the handler runs after it), so
    // a push sent as soon as the client sees `connect` is not missed.
    let subscription = PendingSubscription(Arc::new(Mutex::new(Some(state.hub.subscribe(user)))));
    socket.extensions.insert(subscription);
    Ok(())
}

/// Carries the subscription from the middleware to the connect handler (extensions are `Clone`).
#[derive(Clone)]
struct PendingSubscription(Arc<Mutex<Option<Subscription>>>);

async fn on_connect(
    socket: SocketRef,
    Extension(user): Extension<UserId>,
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

    // Forward hub pushes to this socket until it disconnects or is evicted.
    tokio::spawn(async move {
        loop {
            tokio::select! {
                biased;
                () = disconnected.notified() => break,
                _ = subscription.signal.evicted() => {
                    let _ = socket.disconnect();
                    break;
                }
                push = subscription.queue.recv() => match push {
                    // socketioxide's own per-socket buffer is bounded too: full means too slow.
                    Some(push) => if socket.emit(push.event, &push.data).is_err() {
                        tracing::warn!(%user, "socket.io buffer full; disconnecting");
                        let _ = socket.disconnect();
                        break;
                    },
                    None => break,
                },
            }
        }
    });
}

#[derive(Deserialize)]
struct SendEvent {
    recipient: String,
    content: String,
    #[serde(default)]
    sender: Option<String>,
}

async fn on_send(
    ack: AckSender,
    State(state): State<AppState>,
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
            };
            match send_message(&state, user, request).await {
                Ok(message) => json!({"id": message.id.to_string()}),
                Err(err) => {
                    let (code, message) =
                        crate::api::error::ApiError::from(err).status_and_message();
                    json!({"error": message, "code": code})
                }
            }
        }
    };
    // Without an ack callback there is nobody to answer; the message is stored and pushed anyway.
    let _ = ack.send(&reply);
}
