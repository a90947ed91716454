//! Black-box tests: the real server on a free port, driven over HTTP like any client would.

mod auth;
mod binary;
mod chat;
mod errors;
mod health;
mod helpers;
mod persistence;
mod plugins;
mod realtime;
mod responder;
mod tokens;
mod users;
mod ws_client;
