//! Live delivery: the hub of connections, and the WebSocket and Socket.IO transports.

mod hub;
pub mod socketio;
pub mod ws;

pub use hub::{Eviction, EvictionSignal, Hub, Push, Subscription};
