//! Palaver: a real-time chat backend. ARCHITECTURE.md at the repository root maps the modules,
//! what each may import, and the invariants.

pub mod accounts;
pub mod api;
pub mod app;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod conversations;
pub mod cors;
pub mod domain;
pub mod failure;
pub mod limits;
pub mod messaging;
pub mod metrics;
pub mod realtime;
pub mod responder;
pub mod server;
pub mod store;
pub mod sync;
pub mod telemetry;
pub mod wasm;
pub mod web;

#[cfg(test)]
mod layering;
