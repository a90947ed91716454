//! Logging: `tracing` filtered by `RUST_LOG` (default `info`), one line per HTTP request.

use std::io::IsTerminal;
use std::time::Instant;

use poem::{Endpoint, IntoResponse, Request, Response};
use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // A second init (tests start many servers in one process) is harmless: keep the first.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stdout().is_terminal())
        .try_init();
}

/// Logs method, path, status and latency. Only the path: query strings can carry tokens
/// (`/ws?token=`), and headers and bodies are never logged.
pub async fn access_log<E: Endpoint>(next: E, req: Request) -> poem::Result<Response> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let response = next.call(req).await.map(IntoResponse::into_response);
    let status = match &response {
        Ok(resp) => resp.status(),
        Err(err) => err.status(),
    };
    tracing::info!(
        %method,
        %path,
        status = status.as_u16(),
        latency_ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    response
}
