//! Who is online: user id → that user's live connections, each with a bounded outbound queue.
//!
//! Publishing never waits: a push that does not fit in a connection's queue marks that
//! connection as overflowed and removes it; its transport then closes it. The client
//! reconnects and catches up over HTTP. Nothing stored is lost, and nobody else is slowed down.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};

use super::protocol::ServerFrame;
use crate::domain::{Status, UserId};
use crate::messaging::{MessageView, Notice};

/// One event for clients, serialized once however many connections receive it.
#[derive(Debug)]
pub struct Push {
    /// The Socket.IO event name: "message", "status", or a notice's type.
    pub event: &'static str,
    /// The Socket.IO payload, as JSON text: socketioxide copies it into each socket's packet
    /// instead of serializing a value again per socket (a group's push goes to every member).
    pub data: Box<RawValue>,
    /// The WebSocket text frame: `{"type": event, ...}`.
    pub frame: String,
}

impl Push {
    pub fn message(message: &MessageView) -> Self {
        Self {
            event: "message",
            data: raw(message),
            frame: ServerFrame::Message { message }.to_text(),
        }
    }

    /// A notice: on `/ws` the notice itself, on Socket.IO its fields under its type's name.
    pub fn notice(notice: &Notice) -> Self {
        let mut data = serde_json::to_value(notice).unwrap_or_default();
        let frame = data.to_string();
        if let Value::Object(fields) = &mut data {
            fields.remove("type");
        }
        Self {
            event: notice.kind(),
            data: raw(&data),
            frame,
        }
    }

    pub fn status(user: UserId, status: Status) -> Self {
        Self {
            event: "status",
            data: raw(&json!({"user": user.to_string(), "status": status.as_str()})),
            frame: ServerFrame::status(user, status).to_text(),
        }
    }
}

/// JSON text of what the server built itself: serializing it cannot fail (`null` if it ever did).
fn raw<T: serde::Serialize>(value: &T) -> Box<RawValue> {
    serde_json::value::to_raw_value(value).unwrap_or_default()
}

/// Why a connection must end, told to its transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    /// The client did not read fast enough and its queue filled up.
    Overflow,
    /// The server is shutting down.
    Shutdown,
    /// The user's tokens were revoked (password change, log out everywhere, account deleted).
    Revoked,
}

impl Eviction {
    /// The WebSocket close code (RFC 6455 7.4.1) a client sees.
    pub fn close_code(self) -> u16 {
        match self {
            Eviction::Overflow => 1013,
            Eviction::Shutdown => 1001,
            Eviction::Revoked => super::CLOSE_EXPIRED,
        }
    }

    /// The close reason, for a person and for the client's reconnect logic.
    pub fn explain(self) -> &'static str {
        match self {
            Eviction::Overflow => {
                "too slow: outbound queue full; reconnect and catch up with GET /api/chat/messages?after=<last id>"
            }
            Eviction::Shutdown => "server shutting down",
            Eviction::Revoked => "session ended: log in again",
        }
    }
}

struct Connection {
    id: u64,
    queue: mpsc::Sender<Arc<Push>>,
    signal: Arc<EvictionSignal>,
}

/// A one-shot "stop now" flag a transport can await.
#[derive(Default)]
pub struct EvictionSignal {
    reason: std::sync::Mutex<Option<Eviction>>,
    notify: Notify,
}

impl EvictionSignal {
    fn evict(&self, reason: Eviction) {
        crate::sync::lock(&self.reason).get_or_insert(reason);
        // notify_one keeps a permit when nobody waits yet, so the eviction is never missed.
        self.notify.notify_one();
    }

    /// Resolves once the connection has been evicted, with the reason.
    pub async fn evicted(&self) -> Eviction {
        loop {
            if let Some(reason) = *crate::sync::lock(&self.reason) {
                return reason;
            }
            self.notify.notified().await;
        }
    }
}

pub struct Hub {
    connections: RwLock<HashMap<UserId, Vec<Connection>>>,
    /// Live connections in `connections`, so the total cap is checked without a walk.
    total: AtomicU64,
    next_id: AtomicU64,
    queue_capacity: usize,
    caps: ConnectionCaps,
}

/// How many live connections one user, and everyone together, may hold (`None`: no cap).
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnectionCaps {
    pub per_user: Option<usize>,
    pub total: Option<usize>,
}

/// Why a new connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TooManyConnections {
    #[error("Too many live connections for this account (the limit is {0}); close one first")]
    User(usize),
    #[error("The server has too many live connections; try again later")]
    Server,
}

/// A live connection's end of the hub. Dropping it unregisters the connection.
pub struct Subscription {
    pub user: UserId,
    pub queue: mpsc::Receiver<Arc<Push>>,
    pub signal: Arc<EvictionSignal>,
    id: u64,
    hub: Arc<Hub>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.remove(self.user, self.id);
    }
}

impl Hub {
    pub fn new(queue_capacity: usize, caps: ConnectionCaps) -> Arc<Self> {
        Arc::new(Self {
            connections: RwLock::new(HashMap::new()),
            total: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            queue_capacity: queue_capacity.max(1),
            caps,
        })
    }

    /// Registers a new connection of `user`, unless a cap is reached. The check and the
    /// insert happen under one lock, so simultaneous handshakes cannot overshoot.
    pub fn subscribe(self: &Arc<Self>, user: UserId) -> Result<Subscription, TooManyConnections> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (queue, receiver) = mpsc::channel(self.queue_capacity);
        let signal = Arc::new(EvictionSignal::default());
        let connection = Connection {
            id,
            queue,
            signal: signal.clone(),
        };
        {
            let mut connections = self.write();
            if let Some(total) = self.caps.total
                && self.total.load(Ordering::Relaxed) >= total as u64
            {
                crate::metrics::rate_limited("connections_total");
                return Err(TooManyConnections::Server);
            }
            let mine = connections.entry(user).or_default();
            if let Some(per_user) = self.caps.per_user
                && mine.len() >= per_user
            {
                crate::metrics::rate_limited("connections_per_user");
                return Err(TooManyConnections::User(per_user));
            }
            mine.push(connection);
            self.total.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Subscription {
            user,
            queue: receiver,
            signal,
            id,
            hub: self.clone(),
        })
    }

    /// Queues `push` for every live connection of each of `users` (duplicates are ignored).
    pub fn publish(&self, users: &[UserId], push: Push) {
        let push = Arc::new(push);
        let mut overflowed = Vec::new();
        {
            let connections = self.read();
            for (index, user) in users.iter().enumerate() {
                if users[..index].contains(user) {
                    continue;
                }
                for connection in connections.get(user).into_iter().flatten() {
                    match connection.queue.try_send(push.clone()) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            crate::metrics::push_dropped();
                            connection.signal.evict(Eviction::Overflow);
                            overflowed.push((*user, connection.id));
                        }
                        // The transport is already gone; its Subscription drop cleans up.
                        Err(mpsc::error::TrySendError::Closed(_)) => {}
                    }
                }
            }
        }
        for (user, id) in overflowed {
            tracing::warn!(%user, connection = id, "outbound queue full; closing the connection");
            self.remove(user, id);
        }
    }

    pub fn is_online(&self, user: UserId) -> bool {
        self.read().contains_key(&user)
    }

    pub fn connection_count(&self) -> usize {
        self.total.load(Ordering::Relaxed) as usize
    }

    /// Tells every connection of `user` to close.
    pub fn evict_user(&self, user: UserId, reason: Eviction) {
        let evicted = self.write().remove(&user).unwrap_or_default();
        self.total
            .fetch_sub(evicted.len() as u64, Ordering::Relaxed);
        for connection in evicted {
            connection.signal.evict(reason);
        }
    }

    /// Tells every connection to close, e.g. on shutdown.
    pub fn evict_all(&self, reason: Eviction) {
        for connection in self.read().values().flatten() {
            connection.signal.evict(reason);
        }
    }

    fn remove(&self, user: UserId, id: u64) {
        let mut connections = self.write();
        if let Some(list) = connections.get_mut(&user) {
            let before = list.len();
            list.retain(|c| c.id != id);
            self.total
                .fetch_sub((before - list.len()) as u64, Ordering::Relaxed);
            if list.is_empty() {
                connections.remove(&user);
            }
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<UserId, Vec<Connection>>> {
        crate::sync::read(&self.connections)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<UserId, Vec<Connection>>> {
        crate::sync::write(&self.connections)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(n: u32) -> Push {
        Push {
            event: "message",
            data: raw(&json!({"n": n})),
            frame: json!({"n": n}).to_string(),
        }
    }

    #[tokio::test]
    async fn delivers_to_every_connection_of_each_user_once() {
        let hub = Hub::new(8, ConnectionCaps::default());
        let (alice, bob) = (UserId::new(), UserId::new());
        let mut phone = hub.subscribe(alice).expect("room");
        let mut laptop = hub.subscribe(alice).expect("room");
        let mut other = hub.subscribe(bob).expect("room");
        hub.publish(&[alice, alice], push(1));
        assert_eq!(
            phone.queue.try_recv().map(|p| p.data.get().to_owned()).ok(),
            Some(r#"{"n":1}"#.to_owned())
        );
        assert_eq!(
            laptop
                .queue
                .try_recv()
                .map(|p| p.data.get().to_owned())
                .ok(),
            Some(r#"{"n":1}"#.to_owned())
        );
        assert!(phone.queue.try_recv().is_err(), "delivered once");
        assert!(other.queue.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_full_queue_evicts_only_that_connection() {
        let hub = Hub::new(2, ConnectionCaps::default());
        let user = UserId::new();
        let slow = hub.subscribe(user).expect("room");
        let mut fast = hub.subscribe(user).expect("room");
        for n in 0..2 {
            hub.publish(&[user], push(n));
            assert!(fast.queue.try_recv().is_ok());
        }
        hub.publish(&[user], push(2));
        assert_eq!(slow.signal.evicted().await, Eviction::Overflow);
        assert_eq!(hub.connection_count(), 1);
        assert!(
            fast.queue.try_recv().is_ok(),
            "the fast connection still gets the push"
        );
    }

    #[tokio::test]
    async fn caps_refuse_the_excess_and_free_up_on_drop() {
        let hub = Hub::new(
            2,
            ConnectionCaps {
                per_user: Some(2),
                total: Some(3),
            },
        );
        let (alice, bob, carol) = (UserId::new(), UserId::new(), UserId::new());
        let first = hub.subscribe(alice).expect("room");
        let _second = hub.subscribe(alice).expect("room");
        assert_eq!(
            hub.subscribe(alice).err(),
            Some(TooManyConnections::User(2))
        );
        let _bob = hub.subscribe(bob).expect("room");
        assert_eq!(hub.subscribe(carol).err(), Some(TooManyConnections::Server));
        drop(first);
        assert!(hub.subscribe(carol).is_ok(), "a slot came free");
        hub.evict_user(alice, Eviction::Revoked);
        assert_eq!(hub.connection_count(), 1);
    }

    #[tokio::test]
    async fn dropping_a_subscription_unregisters_it() {
        let hub = Hub::new(2, ConnectionCaps::default());
        let user = UserId::new();
        let subscription = hub.subscribe(user).expect("room");
        assert!(hub.is_online(user));
        drop(subscription);
        assert!(!hub.is_online(user));
        assert_eq!(hub.connection_count(), 0);
    }
}
