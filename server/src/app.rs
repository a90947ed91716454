//! Start-up: open the store, prepare credentials, assemble the routes, bind, serve, drain.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use poem::listener::{Acceptor, Listener, TcpAcceptor, TcpListener};
use poem::middleware::{CatchPanic, PanicHandler};
use poem::{Endpoint, EndpointExt, IntoResponse, Request, Response, Route, Server};

use crate::api::error::{ApiError, error_to_response, payload_too_large_message};
use crate::api::{self, MAX_BODY_BYTES};
use crate::auth::{PasswordHasher, TokenService, load_or_create_secret};
use crate::config::Config;
use crate::state::AppState;
use crate::store::SqliteStore;
use crate::telemetry;

/// In-flight requests get this long to finish after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Application {
    acceptor: TcpAcceptor,
    address: SocketAddr,
    state: AppState,
}

impl Application {
    /// Everything that can fail at start-up fails here, before the port is announced.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!("creating the data directory {}", config.data_dir.display())
        })?;
        let store = SqliteStore::open(&config.data_dir.join("palaver.db")).await?;
        let secret = load_or_create_secret(config.jwt_secret.clone(), &config.data_dir)?;
        let hashing_concurrency = std::thread::available_parallelism().map_or(2, |n| n.get());
        let state = AppState {
            store: Arc::new(store),
            passwords: Arc::new(PasswordHasher::new(hashing_concurrency)?),
            tokens: Arc::new(TokenService::new(&secret, config.token_ttl)),
        };

        let acceptor = TcpListener::bind(SocketAddr::new(config.host, config.port))
            .into_acceptor()
            .await
            .with_context(|| format!("binding {}:{}", config.host, config.port))?;
        let address = acceptor
            .local_addr()
            .first()
            .and_then(|addr| addr.as_socket_addr().copied())
            .context("the listener has no TCP address")?;
        Ok(Self {
            acceptor,
            address,
            state,
        })
    }

    /// The address actually bound (the port is the real one when 0 was asked for).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// Serves until `shutdown` completes, then lets in-flight requests finish.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
        tracing::info!(address = %self.address, "palaver is listening");
        Server::new_with_acceptor(self.acceptor)
            .run_with_graceful_shutdown(routes(self.state), shutdown, Some(DRAIN_TIMEOUT))
            .await
    }
}

/// All HTTP routes with their middleware, outermost last.
pub fn routes(state: AppState) -> impl Endpoint {
    let api = api::service();
    Route::new()
        .at("/openapi.json", api.spec_endpoint())
        .nest("/docs", api.swagger_ui())
        .nest("/", api)
        .around(limit_body)
        .with(CatchPanic::new().with_handler(JsonPanicHandler))
        .data(state)
        .catch_all_error(error_to_response)
        .around(telemetry::access_log)
}

/// Refuses bodies over [`MAX_BODY_BYTES`] with 413, whether or not they declare a length.
async fn limit_body<E: Endpoint>(next: E, mut req: Request) -> poem::Result<Response> {
    let too_large = || {
        poem::Error::from(ApiError::PayloadTooLarge(poem_openapi::payload::Json(
            api::error::ErrorBody {
                message: payload_too_large_message(),
            },
        )))
    };
    let declared = req
        .headers()
        .get(poem::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let body = req.take_body();
    let bytes = body
        .into_bytes_limit(MAX_BODY_BYTES)
        .await
        .map_err(|e| match e {
            poem::error::ReadBodyError::PayloadTooLarge => too_large(),
            other => poem::Error::from(ApiError::bad_request(format!(
                "Could not read the request body: {other}"
            ))),
        })?;
    req.set_body(bytes);
    next.call(req).await.map(IntoResponse::into_response)
}

#[derive(Clone)]
struct JsonPanicHandler;

impl PanicHandler for JsonPanicHandler {
    type Response = Response;

    fn get_response(&self, _err: Box<dyn std::any::Any + Send + 'static>) -> Response {
        ApiError::internal("a request handler panicked").into_response()
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received; draining");
}
