//! The HTTP API: poem-openapi handlers, one file per tag, and the HTTP middlewares. Handlers
//! stay thin: parse → a service → answer; failures are rendered as HTTP in `error`.

mod auth;
mod chat;
mod conversations;
pub mod error;
mod health;
pub mod middleware;
pub(crate) mod models;
mod payload;
pub mod plugins;
mod schema;
pub mod security;
mod state;
mod users;

use poem_openapi::{OpenApiService, Tags};

pub use state::AppState;

#[derive(Tags)]
enum ApiTags {
    /// Registration and login.
    Auth,
    /// Sending and reading messages.
    Chat,
    /// Groups, the conversation list and read marks.
    Conversations,
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
    conversations::ConversationsApi,
    users::UsersApi,
    plugins::PluginsApi,
    health::HealthApi,
);

pub fn service() -> OpenApiService<Api, ()> {
    OpenApiService::new(
        (
            auth::AuthApi,
            chat::ChatApi,
            conversations::ConversationsApi,
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
    static SPEC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SPEC.get_or_init(|| {
        let generated = service().spec();
        let Ok(mut spec) = serde_json::from_str::<serde_json::Value>(&generated) else {
            return generated;
        };
        tidy_for_generators(&mut spec);
        serde_json::to_string_pretty(&spec).unwrap_or(generated)
    })
    .clone()
}

/// poem-openapi names the media type `application/json; charset=utf-8` and upper-cases
/// response header names. Generators look for `application/json` (openapi-fetch's JSON helper
/// types come out as `never` otherwise) and show header names as written, so the spec says
/// what clients expect. The answers themselves are unchanged (JSON is UTF-8 by definition).
fn tidy_for_generators(value: &mut serde_json::Value) {
    const RENAMES: [(&str, &str, &str); 2] = [
        (
            "content",
            "application/json; charset=utf-8",
            "application/json",
        ),
        ("headers", "RETRY-AFTER", "Retry-After"),
    ];
    let serde_json::Value::Object(map) = value else {
        if let serde_json::Value::Array(items) = value {
            items.iter_mut().for_each(tidy_for_generators);
        }
        return;
    };
    for (parent, from, to) in RENAMES {
        if let Some(serde_json::Value::Object(inner)) = map.get_mut(parent)
            && let Some(moved) = inner.shift_remove(from)
        {
            inner.insert(to.to_owned(), moved);
        }
    }
    map.values_mut().for_each(tidy_for_generators);
}

/// `GET /openapi.json`.
pub fn spec_endpoint() -> impl poem::Endpoint {
    poem::endpoint::make_sync(|_| {
        poem::Response::builder()
            .content_type("application/json")
            .body(spec_json())
    })
}
