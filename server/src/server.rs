//! Serving: the route tree, the accept loop and the drain.
//!
//! We own the accept loop (hyper-util) instead of using poem's server: socketioxide has to sit
//! as a tower layer *in front of* the poem app to keep its WebSocket transport working
//! (mounted inside a poem `Route`, its upgrade is lost). poem's own `/ws` upgrade survives the
//! conversion from the hyper request.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use poem::endpoint::BoxEndpoint;
use poem::middleware::CatchPanic;
use poem::web::{LocalAddr, RemoteAddr};
use poem::{Addr, Endpoint, EndpointExt, IntoResponse, Request, Response, Route, get};
use tokio::net::TcpListener;
use tower::{Layer, ServiceExt};

use crate::api::error::{ApiError, error_to_response};
use crate::api::{self, AppState, middleware};
use crate::config::{AllowedOrigins, RealtimeSettings};
use crate::failure::RetryAfter;
use crate::metrics::MetricsServer;
use crate::realtime::{Eviction, Live, TooManyConnections, socketio, ws};
use crate::{telemetry, web};

/// The client's address, carried from the accept loop to the shared service.
#[derive(Clone, Copy)]
struct PeerAddress(SocketAddr);

/// How long a client refused a new Engine.IO session is asked to wait.
const SESSION_RETRY: RetryAfter = RetryAfter::from_secs(30);
/// In-flight requests get this long to finish after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// A client must send its request headers within this time (slowloris protection).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests one HTTP/2 connection may have in flight at once.
const HTTP2_MAX_STREAMS: u32 = 64;
/// Request headers larger than this are refused (HTTP/1 uses hyper's own ~100-header cap).
const MAX_HEADER_BYTES: u32 = 16 * 1024;

/// A bound listener and everything the routes serve, as `app` built them.
pub struct Server {
    pub listener: TcpListener,
    pub address: SocketAddr,
    pub state: AppState,
    pub live: Live,
    pub realtime: RealtimeSettings,
    /// Engine.IO sessions, capped by `MAX_CONNECTIONS` like the hub's connections.
    pub sessions: socketio::SessionCounter,
    pub origins: AllowedOrigins,
    pub metrics: Option<MetricsServer>,
}

impl Server {
    /// Serves until `shutdown` completes, then closes live connections and lets in-flight
    /// requests finish (up to [`DRAIN_TIMEOUT`]).
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
        let Self {
            listener,
            address,
            state,
            live,
            realtime,
            sessions,
            origins,
            metrics,
        } = self;
        if let Some(metrics) = &metrics
            && let Ok(at) = metrics.address()
        {
            tracing::info!(address = %at, "metrics at /metrics");
        }
        let metrics = metrics.map(|m| tokio::spawn(m.run(operator_routes(&state))));
        let ping_interval = realtime.ping_interval;
        let (socketio_layer, socketio) = socketio::layer(live.clone(), &realtime);
        let endpoint: Arc<BoxEndpoint<'static, Response>> =
            Arc::new(routes(state, live.clone(), realtime).boxed());
        // One service for all connections: socketioxide keeps its sessions in it, so a
        // long-polling client's requests on different connections find each other.
        let app = socketio_layer.layer(tower::service_fn(move |req: http::Request<Incoming>| {
            let endpoint = endpoint.clone();
            async move {
                let remote = req
                    .extensions()
                    .get::<PeerAddress>()
                    .map_or(address, |peer| peer.0);
                let req = Request::from((
                    req,
                    LocalAddr(Addr::SocketAddr(address)),
                    RemoteAddr(Addr::SocketAddr(remote)),
                    http::uri::Scheme::HTTP,
                ));
                let response = endpoint.get_response(req).await;
                Ok::<_, Infallible>(
                    http::Response::<BoxBody<bytes::Bytes, std::io::Error>>::from(response),
                )
            }
        }));
        // CORS in front of everything, Socket.IO's long-polling included.
        let app = tower::ServiceBuilder::new()
            .option_layer(origins.layer())
            .service(app);
        let origins = Arc::new(origins);
        let mut connections = auto::Builder::new(TokioExecutor::new());
        connections
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT);
        connections
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(HTTP2_MAX_STREAMS)
            .max_header_list_size(MAX_HEADER_BYTES)
            // Pings find dead peers; an HTTP/2 client that stops answering is dropped.
            .keep_alive_interval(ping_interval)
            .keep_alive_timeout(HEADER_READ_TIMEOUT);
        let graceful = GracefulShutdown::new();
        tracing::info!(%address, "palaver is listening");

        tokio::pin!(shutdown);
        loop {
            let (stream, remote) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            let (app, sessions, origins) = (app.clone(), sessions.clone(), origins.clone());
            let service = tower::service_fn(move |mut req: http::Request<Incoming>| {
                req.extensions_mut().insert(PeerAddress(remote));
                let (app, sessions) = (app.clone(), sessions.clone());
                let origin_refused =
                    opens_socket(&req) && !origins.permits_handshake(req.headers());
                async move {
                    // Browsers do not apply CORS to WebSocket handshakes: check the origin here.
                    if origin_refused {
                        return Ok(refusal(ApiError::forbidden(ORIGIN_REFUSED)));
                    }
                    // Engine.IO sessions exist before anyone authenticates: count them here,
                    // in front of socketioxide, and refuse past the cap.
                    if socketio::opens_session(&req) {
                        match sessions.try_open() {
                            Some(slot) => {
                                req.extensions_mut().insert(slot);
                            }
                            None => {
                                crate::metrics::rate_limited("connections_total");
                                return Ok(refusal(ApiError::unavailable(
                                    TooManyConnections::Server.to_string(),
                                    SESSION_RETRY,
                                )));
                            }
                        }
                    }
                    let response = app.oneshot(req).await?;
                    Ok::<_, Infallible>(response.map(http_body_util::Either::Left))
                }
            });
            let service = TowerToHyperService::new(service);
            let connection =
                connections.serve_connection_with_upgrades(TokioIo::new(stream), service);
            let connection = graceful.watch(connection.into_owned());
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            });
        }

        drop(listener);
        if let Some(metrics) = metrics {
            metrics.abort();
        }
        tracing::info!("draining connections");
        live.hub.evict_all(Eviction::Shutdown);
        socketio.close().await;
        if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("some connections did not finish in time");
        }
        // Upgraded connections are no longer hyper's: give their close frames a moment.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while live.hub.connection_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }
}

const ORIGIN_REFUSED: &str =
    "This origin may not open sockets here; the server's CORS_ALLOWED_ORIGINS does not list it";

/// A refusal in front of socketioxide and poem, in the API's own JSON shape.
fn refusal<L>(
    error: ApiError,
) -> http::Response<http_body_util::Either<L, BoxBody<bytes::Bytes, std::io::Error>>> {
    http::Response::<BoxBody<bytes::Bytes, std::io::Error>>::from(error.into_response())
        .map(http_body_util::Either::Right)
}

/// WebSocket and Socket.IO requests: what a page on another origin could open behind CORS's
/// back.
fn opens_socket<B>(req: &http::Request<B>) -> bool {
    let path = req.uri().path();
    path == "/ws" || path.starts_with(socketio::PATH)
}

/// All HTTP routes with their middleware, outermost last.
/// What the operator sees beside `/metrics` on `METRICS_ADDR` (a listener only they reach):
/// `GET /plugins`, every plugin with its limits, hosts and last error.
fn operator_routes(state: &AppState) -> Route {
    let responder = state.responder.clone();
    Route::new().at(
        "/plugins",
        get(poem::endpoint::make_sync(move |_| {
            poem::web::Json(api::plugins::reports(&responder))
        })),
    )
}

pub fn routes(
    state: AppState,
    live: Live,
    realtime: RealtimeSettings,
) -> impl Endpoint<Output = Response> {
    let api = api::service();
    // `/docs/` too: it answered before the page got its own policy, and people type it.
    let docs = Arc::new(web::docs(api.swagger_ui_html()));
    Route::new()
        .at("/ws", get(ws::websocket))
        .at("/openapi.json", api::spec_endpoint())
        .at("/docs", docs.clone())
        .at("/docs/", docs)
        .nest("/web", web::assets())
        .nest("/", api)
        .around(web::page_at_root)
        .around(middleware::limit_auth_requests)
        .around(middleware::limit_body)
        .with(CatchPanic::new().with_handler(middleware::JsonPanicHandler))
        .data(state)
        .data(live)
        .data(realtime)
        .catch_all_error(error_to_response)
        .around(middleware::add_allow_header)
        .around(middleware::record_metrics)
        .around(telemetry::access_log)
        .map_to_response()
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

/// The async runtime the server runs on.
///
/// With the embedded store, one worker fewer than the machine has cores (at least one): the
/// SQLite writer is a thread of its own that takes most of a core under load, and a worker per
/// core beside it competes with it, and is woken to steal tasks the other worker would have run
/// a moment later. On the 2-core development machine: a third fewer context switches and about
/// 10% less CPU per message, at a fifth fewer cached history reads per second
/// (docs/decisions.md). One worker per core with MongoDB (no such thread), and with moderators
/// (they compute on the workers, up to 10 ms at a time: one worker alone would hold every
/// connection behind them). `TOKIO_WORKER_THREADS` overrides either.
pub fn runtime(config: &crate::config::Config) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    let spare_a_core = config.mongodb.is_none() && config.responder.moderators.is_empty();
    let overridden = std::env::var_os("TOKIO_WORKER_THREADS").is_some();
    if spare_a_core && !overridden {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        builder.worker_threads(cores.saturating_sub(1).max(1));
    }
    builder.build()
}

#[cfg(test)]
mod tests {
    use super::runtime;
    use crate::config::Config;

    fn workers(vars: &[(&str, &str)]) -> usize {
        let config = Config::from_lookup(|name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        })
        .expect("a valid configuration");
        runtime(&config).expect("a runtime").metrics().num_workers()
    }

    #[test]
    fn the_sqlite_writer_gets_a_core_of_its_own_unless_moderators_need_it() {
        if std::env::var_os("TOKIO_WORKER_THREADS").is_some() {
            return;
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(workers(&[]), (cores - 1).max(1), "SQLite");
        assert_eq!(
            workers(&[("MONGODB_URI", "mongodb://127.0.0.1:27017/chat")]),
            cores,
            "MongoDB"
        );
        assert_eq!(
            workers(&[("MODERATION_PLUGINS", "word-filter")]),
            cores,
            "moderated"
        );
    }
}
