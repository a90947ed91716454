//! The HTTP API: poem-openapi handlers, one file per tag. Handlers stay thin:
//! parse → domain → store; errors map to HTTP in `error`.

mod auth;
mod chat;
pub mod error;
mod health;
pub(crate) mod models;
mod plugins;
mod schema;
pub mod security;
mod users;

use poem_openapi::{OpenApiService, Tags};

/// Larger request bodies are refused with 413 before anything parses them.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(Tags)]
enum ApiTags {
    /// Registration and login.
    Auth,
    /// Sending and reading messages.
    Chat,
    /// Profiles and status.
    Users,
    /// Liveness and readiness probes.
    Health,
    /// The responder plugins that answer for BUSY users.
    Plugins,
}

pub type Api = (
    auth::AuthApi,
    chat::ChatApi,
    users::UsersApi,
    plugins::PluginsApi,
    health::HealthApi,
);

pub fn service() -> OpenApiService<Api, ()> {
    OpenApiService::new(
        (
            auth::AuthApi,
            chat::ChatApi,
            users::UsersApi,
            plugins::PluginsApi,
            health::HealthApi,
        ),
        "Palaver",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "Real-time chat backend. Log in with POST /api/auth/login and send the token as \
         `Authorization: Bearer <token>` (or `x-auth-token`). Every error is JSON \
         `{\"message\": \"...\"}`.",
    )
}

/// The spec the server serves at `/openapi.json`, pretty-printed as committed in the repo.
pub fn spec_json() -> String {
    service().spec()
}
