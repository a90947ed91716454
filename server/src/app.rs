//! Start-up: open the store, prepare credentials, assemble the routes, bind, serve, drain.
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

use anyhow::Context;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use poem::endpoint::BoxEndpoint;
use poem::middleware::{CatchPanic, PanicHandler};
use poem::web::{LocalAddr, RemoteAddr};
use poem::{Addr, Endpoint, EndpointExt, IntoResponse, Request, Response, Route, get};
use tokio::net::TcpListener;
use tower::{Layer, ServiceExt};

use crate::accounts::Accounts;
use crate::api;
use crate::api::error::{ApiError, error_to_response};
use crate::auth::{PasswordHasher, Sessions, TokenService, load_or_create_secret};
use crate::cluster::{Cluster, Parts as ClusterParts};
use crate::config::{AllowedOrigins, Config, MAX_BODY_BYTES, RealtimeSettings};
use crate::failure::RetryAfter;
use crate::limits::Limits;
use crate::messaging::{BusyRecipients, FanOut, Messaging, Sequencer, Writer};
use crate::metrics::MetricsServer;
use crate::realtime::{
    ConnectionCaps, Eviction, Hub, Live, LocalFanOut, TooManyConnections, socketio, ws,
};
use crate::responder::{Responder, watch_plugins_dir};
use crate::state::AppState;
use crate::store::{ClusterLog, MongoStore, SqliteStore, Store};
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
/// ... and its body (at most 64 KiB) within this time.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Requests one HTTP/2 connection may have in flight at once.
const HTTP2_MAX_STREAMS: u32 = 64;
/// Request headers larger than this are refused (HTTP/1 uses hyper's own ~100-header cap).
const MAX_HEADER_BYTES: u32 = 16 * 1024;

pub struct Application {
    listener: TcpListener,
    address: SocketAddr,
    state: AppState,
    live: Live,
    realtime: RealtimeSettings,
    /// Engine.IO sessions, capped by `MAX_CONNECTIONS` like the hub's connections.
    sessions: socketio::SessionCounter,
    origins: AllowedOrigins,
    metrics: Option<MetricsServer>,
}

impl Application {
    /// Everything that can fail at start-up fails here, before the port is announced.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        // First: the recorder must exist before anything (the cluster merger) records.
        let metrics = match config.metrics_addr {
            Some(address) => Some(MetricsServer::bind(address).await?),
            None => None,
        };
        create_private_dir(&config.data_dir).with_context(|| {
            format!("creating the data directory {}", config.data_dir.display())
        })?;
        let (store, cluster_log): (Arc<dyn Store>, Option<Arc<dyn ClusterLog>>) =
            match &config.mongodb {
                Some(mongo) => {
                    let mut mongo = MongoStore::connect(mongo).await?;
                    if let Some(cluster) = &config.cluster {
                        mongo = mongo.with_origin(cluster.node_id.clone());
                    }
                    let mongo = Arc::new(mongo);
                    (mongo.clone(), Some(mongo))
                }
                None => (
                    Arc::new(
                        SqliteStore::open(
                            &config.data_dir.join("palaver.db"),
                            config.sqlite_synchronous,
                        )
                        .await?,
                    ),
                    None,
                ),
            };
        let secret = load_or_create_secret(config.jwt_secret.clone(), &config.data_dir)?;
        let hub = Hub::new(
            config.realtime.queue_capacity,
            ConnectionCaps {
                per_user: config.limits.connections_per_user,
                total: config.limits.connections_total,
            },
        );
        let limits = Arc::new(Limits::new(&config.limits));
        let ids = Arc::new(Sequencer::new());
        let local: Arc<dyn FanOut> = LocalFanOut::new(hub.clone());
        let (fanout, orphans): (Arc<dyn FanOut>, _) = match (&config.cluster, cluster_log) {
            (None, _) => (local, None),
            (Some(settings), Some(log)) => {
                let (orphans, orphaned) = tokio::sync::mpsc::unbounded_channel();
                let parts = ClusterParts {
                    store: store.clone(),
                    log,
                    local,
                    ids: ids.clone(),
                    orphans,
                    responder_timeout: config.responder.timeout,
                };
                (Cluster::join(settings, parts).await?, Some(orphaned))
            }
            (Some(_), None) => anyhow::bail!("MONGODB_URI: a cluster needs MongoDB"),
        };
        let writer = Arc::new(Writer::start(store.clone(), fanout.clone(), ids));
        let responder = Responder::new(config.responder.clone(), store.clone(), writer.clone())
            .context("starting the responder")?;
        if let Some(mut orphaned) = orphans {
            let responder = responder.clone();
            tokio::spawn(async move {
                while let Some(message) = orphaned.recv().await {
                    responder.clone().orphaned(message);
                }
            });
        }
        let messaging = Arc::new(Messaging::new(
            store.clone(),
            writer,
            fanout,
            responder.clone(),
            limits.clone(),
        ));
        if let Some(dir) = &config.responder.plugins_dir {
            watch_plugins_dir(responder.plugins(), dir.clone()).await;
        }
        let sessions = Arc::new(Sessions::new(
            TokenService::new(&secret, config.token_ttl),
            store.clone(),
        ));
        let accounts = Arc::new(Accounts::new(
            store.clone(),
            Arc::new(PasswordHasher::new(
                config.limits.hash_concurrency,
                config.limits.hash_wait,
            )?),
            sessions.clone(),
            limits.clone(),
            hub.clone(),
        ));
        let live = Live {
            sessions: sessions.clone(),
            hub,
            messaging: messaging.clone(),
        };
        let state = AppState {
            messaging,
            responder,
            store: store.clone(),
            accounts,
            sessions,
            limits: limits.clone(),
        };
        crate::limits::sweep_periodically(Arc::downgrade(&limits));

        let address = SocketAddr::new(config.host, config.port);
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("binding {address}"))?;
        let address = listener.local_addr().context("reading the bound address")?;
        Ok(Self {
            listener,
            address,
            state,
            live,
            realtime: config.realtime,
            sessions: socketio::SessionCounter::new(config.limits.connections_total),
            origins: config.cors,
            metrics,
        })
    }

    /// The address actually bound (the port is the real one when 0 was asked for).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Where `/metrics` is served, when `METRICS_ADDR` is set.
    pub fn metrics_address(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|m| m.address().ok())
    }

    /// Serves until `shutdown` completes, then closes live connections and lets in-flight
    /// requests finish (up to [`DRAIN_TIMEOUT`]).
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
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
        let metrics = metrics.map(|m| tokio::spawn(m.run()));
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

/// The data directory holds the database and possibly the generated JWT secret: only the
/// server's user may enter it (0700), whether we create it or it exists already.
fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// All HTTP routes with their middleware, outermost last.
pub fn routes(
    state: AppState,
    live: Live,
    realtime: RealtimeSettings,
) -> impl Endpoint<Output = Response> {
    let api = api::service();
    Route::new()
        .at("/ws", get(ws::websocket))
        .at("/openapi.json", api::spec_endpoint())
        .nest("/docs", api.swagger_ui())
        .nest("/web", web::assets())
        .nest("/", api)
        .around(web::page_at_root)
        .around(limit_auth_requests)
        .around(limit_body)
        .with(CatchPanic::new().with_handler(JsonPanicHandler))
        .data(state)
        .data(live)
        .data(realtime)
        .catch_all_error(error_to_response)
        .around(add_allow_header)
        .around(record_metrics)
        .around(telemetry::access_log)
        .map_to_response()
}

/// RFC 9110 wants a 405 to say which methods the resource has: `Allow`, from the spec.
async fn add_allow_header<E: Endpoint>(next: E, req: Request) -> poem::Result<Response> {
    let path = req.uri().path().to_owned();
    let mut response = next.call(req).await?.into_response();
    if response.status() == poem::http::StatusCode::METHOD_NOT_ALLOWED
        && let Some(methods) = allowed_methods(&path)
        && let Ok(value) = poem::http::HeaderValue::from_str(&methods)
    {
        response
            .headers_mut()
            .insert(poem::http::header::ALLOW, value);
    }
    Ok(response)
}

/// A route of the server: its template (`/api/users/{id}`) and the methods it answers.
struct KnownRoute {
    template: String,
    segments: Vec<String>,
    methods: String,
}

/// The OpenAPI operations plus the routes outside the spec, read once from the spec itself.
fn known_routes() -> &'static [KnownRoute] {
    static ROUTES: std::sync::OnceLock<Vec<KnownRoute>> = std::sync::OnceLock::new();
    ROUTES.get_or_init(|| {
        let spec: serde_json::Value = serde_json::from_str(&api::spec_json()).unwrap_or_default();
        let mut routes: Vec<KnownRoute> = spec["paths"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(template, operations)| {
                let methods: Vec<String> = operations
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(method, _)| method.to_uppercase())
                    .collect();
                KnownRoute {
                    template: template.clone(),
                    segments: segments(template),
                    methods: methods.join(", "),
                }
            })
            .collect();
        for fixed in ["/", "/ws", "/openapi.json", "/healthz", "/readyz"] {
            if !routes.iter().any(|r| r.segments == segments(fixed)) {
                routes.push(KnownRoute {
                    template: fixed.to_owned(),
                    segments: segments(fixed),
                    methods: "GET".to_owned(),
                });
            }
        }
        routes
    })
}

/// Runs for every request (the metrics' route label): compares segment by segment, no
/// allocation.
fn find_route(path: &str) -> Option<&'static KnownRoute> {
    known_routes().iter().find(|route| {
        let mut wanted = path.trim_end_matches('/').split('/');
        route
            .segments
            .iter()
            .all(|t| wanted.next().is_some_and(|w| t == w || t.starts_with('{')))
            && wanted.next().is_none()
    })
}

/// The methods a route answers, for `Allow`.
fn allowed_methods(path: &str) -> Option<String> {
    find_route(path).map(|route| route.methods.clone())
}

/// The route a path belongs to, as a metrics label: a fixed set, whatever clients send.
fn route_label(path: &str) -> &'static str {
    if let Some(route) = find_route(path) {
        return route.template.as_str();
    }
    for prefix in ["/docs", "/web"] {
        if path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        {
            return prefix;
        }
    }
    "unmatched"
}

fn segments(path: &str) -> Vec<String> {
    path.trim_end_matches('/')
        .split('/')
        .map(str::to_owned)
        .collect()
}

/// Counts every answer by route and status, with its latency.
async fn record_metrics<E: Endpoint>(next: E, req: Request) -> poem::Result<Response> {
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let route = route_label(req.uri().path());
    let response = next.call(req).await.map(IntoResponse::into_response);
    let status = match &response {
        Ok(response) => response.status(),
        Err(err) => err.status(),
    };
    crate::metrics::http_request(&method, route, status.as_u16(), started.elapsed());
    response
}

/// Registration, login and password changes, per client address: each costs an argon2 hash.
async fn limit_auth_requests<E: Endpoint>(next: E, req: Request) -> poem::Result<Response> {
    if req.method() == poem::http::Method::POST && req.uri().path().starts_with("/api/auth/") {
        let address = match req.remote_addr().0 {
            Addr::SocketAddr(address) => Some(address.ip()),
            _ => None,
        };
        if let (Some(address), Some(state)) = (address, req.data::<AppState>())
            && let Err(wait) = state.limits.auth_request(address)
        {
            return Err(ApiError::too_many_requests(
                format!(
                    "Too many requests from your address; try again in {} s",
                    wait.seconds()
                ),
                wait,
            )
            .into());
        }
    }
    next.call(req).await.map(IntoResponse::into_response)
}

/// Refuses bodies over [`MAX_BODY_BYTES`] with 413, whether or not they declare a length.
async fn limit_body<E: Endpoint>(next: E, mut req: Request) -> poem::Result<Response> {
    let too_large = || poem::Error::from(ApiError::payload_too_large());
    let declared = req
        .headers()
        .get(poem::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let body = req.take_body();
    let bytes = tokio::time::timeout(BODY_READ_TIMEOUT, body.into_bytes_limit(MAX_BODY_BYTES))
        .await
        .map_err(|_| poem::Error::from(ApiError::request_timeout()))?
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
