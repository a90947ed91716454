//! Black-box tests: the real server on a free port, driven over HTTP like any client would.
//! Here on the embedded SQLite store; `mongo.rs` runs the core API tests again on MongoDB.

/// The store this test binary's servers use.
pub const STORE: helpers::StoreKind = helpers::StoreKind::Sqlite;

mod attacks;
mod auth;
mod binary;
mod chat;
mod conversations;
mod cors;
mod disk_full;
mod durability;
mod errors;
mod groups_live;
mod health;
mod helpers;
mod metrics;
mod moderation;
mod persistence;
mod personas;
mod plugins;
mod power_cut;
mod process;
mod realtime;
mod responder;
mod safety;
mod tokens;
mod upgrade;
mod users;
mod web;
mod ws_client;
