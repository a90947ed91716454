//! Live delivery: the hub of connections, and the WebSocket and Socket.IO transports.

mod fanout;
mod hub;
pub mod protocol;
mod session;
pub mod socketio;
pub mod ws;

use std::sync::Arc;

use crate::accounts::EndSessions;
use crate::auth::Sessions;
use crate::conversations::Conversations;
use crate::domain::UserId;
use crate::messaging::Messaging;

pub use fanout::LocalFanOut;
pub use hub::{
    ConnectionCaps, Eviction, EvictionSignal, Hub, Push, Subscription, TooManyConnections,
};

/// What both socket framings reach: who is calling, where their pushes come from, the one
/// send path, and typing. Cheap to clone.
#[derive(Clone)]
pub struct Live {
    pub sessions: Arc<Sessions>,
    pub hub: Arc<Hub>,
    pub messaging: Arc<Messaging>,
    pub conversations: Arc<Conversations>,
}

impl EndSessions for Hub {
    fn end_sessions(&self, user: UserId) {
        self.evict_user(user, Eviction::Revoked);
    }
}

/// WebSocket close code when a connection's token expires or is revoked: 1008 (policy
/// violation); the client must log in again before reconnecting.
pub const CLOSE_EXPIRED: u16 = 1008;
/// WebSocket close code for a frame or message over the size limit: 1009 (message too big).
pub const CLOSE_TOO_BIG: u16 = 1009;
