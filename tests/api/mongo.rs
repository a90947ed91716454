//! The black-box API tests again, with every server on MongoDB (`TEST_MONGODB_URI`, a fresh
//! database per server), plus what only MongoDB has: outages of a database on the network.
//! Without `TEST_MONGODB_URI` this binary says loudly that it skipped, or fails under `CI`.

// Helpers that only the SQLite-only modules (responder, plugins, binary) use are unused here.
#![allow(dead_code)]

/// The store this test binary's servers use.
pub const STORE: helpers::StoreKind = helpers::StoreKind::Mongo;

mod auth;
mod chat;
mod conversations;
mod durability;
mod errors;
mod groups_live;
mod health;
mod helpers;
mod mongo_outage;
mod persistence;
mod personas;
mod process;
mod realtime;
mod safety;
mod tokens;
mod users;
mod ws_client;
