//! Who is online: user id → that user's live connections, each with a bounded outbound queue.
//!
//! Publishing never waits: a push that does not fit in a connection's queue marks that
//! connection as overflowed and removes it; its transport then closes it. The client
//! reconnects and catches up over HTTP. Nothing stored is lost, and nobody else is slowed down.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};

use crate::domain::{Status, UserId};

/// One event for clients, serialized once however many connections receive it.
#[derive(Debug)]
pub struct Push {
    /// The Socket.IO event name: "message" or "status".
    pub event: &'static str,
    /// The Socket.IO payload.
    pub data: Value,
    /// The WebSocket text frame: `{"type": event, ...}`.
    pub frame: String,
}

impl Push {
    pub fn message(message: Value) -> Self {
        let frame = json!({"type": "message", "message": message}).to_string();
        Self {
            event: "message",
            data: message,
            frame,
        }
    }

    pub fn status(user: UserId, status: Status) -> Self {
        let data = json!({"user": user.to_string(), "status": status.as_str()});
        let frame = json!({"type": "status", "user": user.to_string(), "status": status.as_str()})
            .to_string();
        Self {
            event: "status",
            data,
            frame,
        }
    }
}

/// Why a connection must end, told to its transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    /// The client did not read fast enough and its queue filled up.
    Overflow,
    /// The server is shutting down.
    Shutdown,
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
        if let Ok(mut current) = self.reason.lock() {
            current.get_or_insert(reason);
        }
        // notify_one keeps a permit when nobody waits yet, so the eviction is never missed.
        self.notify.notify_one();
    }

    /// Resolves once the connection has been evicted, with the reason.
    pub async fn evicted(&self) -> Eviction {
        loop {
            if let Some(reason) = self.reason.lock().ok().and_then(|r| *r) {
                return reason;
            }
            self.notify.notified().await;
        }
    }
}

pub struct Hub {
    connections: RwLock<HashMap<UserId, Vec<Connection>>>,
    next_id: AtomicU64,
    queue_capacity: usize,
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
    pub fn new(queue_capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            connections: RwLock::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            queue_capacity: queue_capacity.max(1),
        })
    }

    pub fn subscribe(self: &Arc<Self>, user: UserId) -> Subscription {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (queue, receiver) = mpsc::channel(self.queue_capacity);
        let signal = Arc::new(EvictionSignal::default());
        let connection = Connection {
            id,
            queue,
            signal: signal.clone(),
        };
        self.write().entry(user).or_default().push(connection);
        Subscription {
            user,
            queue: receiver,
            signal,
            id,
            hub: self.clone(),
        }
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
        self.read().values().map(Vec::len).sum()
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
            list.retain(|c| c.id != id);
            if list.is_empty() {
                connections.remove(&user);
            }
        }
    }

    // A panic while holding the lock cannot leave the map inconsistent (every update is a
    // single push/retain/remove), so a poisoned lock is safe to keep using.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<UserId, Vec<Connection>>> {
        self.connections.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<UserId, Vec<Connection>>> {
        self.connections.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(n: u32) -> Push {
        Push::message(json!({"n": n}))
    }

    #[tokio::test]
    async fn delivers_to_every_connection_of_each_user_once() {
        let hub = Hub::new(8);
        let (alice, bob) = (UserId::new(), UserId::new());
        let mut phone = hub.subscribe(alice);
        let mut laptop = hub.subscribe(alice);
        let mut other = hub.subscribe(bob);
        hub.publish(&[alice, alice], push(1));
        assert_eq!(
            phone.queue.try_recv().map(|p| p.data.clone()).ok(),
            Some(json!({"n": 1}))
        );
        assert_eq!(
            laptop.queue.try_recv().map(|p| p.data.clone()).ok(),
            Some(json!({"n": 1}))
        );
        assert!(phone.queue.try_recv().is_err(), "delivered once");
        assert!(other.queue.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_full_queue_evicts_only_that_connection() {
        let hub = Hub::new(2);
        let user = UserId::new();
        let slow = hub.subscribe(user);
        let mut fast = hub.subscribe(user);
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
    async fn dropping_a_subscription_unregisters_it() {
        let hub = Hub::new(2);
        let user = UserId::new();
        let subscription = hub.subscribe(user);
        assert!(hub.is_online(user));
        drop(subscription);
        assert!(!hub.is_online(user));
        assert_eq!(hub.connection_count(), 0);
    }
}
