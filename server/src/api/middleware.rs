//! The HTTP middlewares, in the order `server::routes` stacks them: the per-address limit on
//! auth requests, the body limit, panics as JSON 500s, `Allow` on 405s, and the per-request
//! metrics. The route table they share comes from poem-openapi's metadata of the API.

use std::time::Duration;

use poem::middleware::PanicHandler;
use poem::{Addr, Endpoint, IntoResponse, Request, Response};

use super::AppState;
use super::error::ApiError;
use crate::config::MAX_BODY_BYTES;

/// A request body (at most [`MAX_BODY_BYTES`]) must arrive within this time.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// RFC 9110 wants a 405 to say which methods the resource has: `Allow`, from the spec.
pub async fn add_allow_header<E: Endpoint>(next: E, req: Request) -> poem::Result<Response> {
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

/// The OpenAPI operations (from poem-openapi's own metadata of the API) plus the routes outside
/// the spec, built once.
fn known_routes() -> &'static [KnownRoute] {
    static ROUTES: std::sync::OnceLock<Vec<KnownRoute>> = std::sync::OnceLock::new();
    ROUTES.get_or_init(|| {
        let mut routes: Vec<KnownRoute> = Vec::new();
        let paths = <super::Api as poem_openapi::OpenApi>::meta()
            .into_iter()
            .flat_map(|api| api.paths);
        for path in paths {
            let methods = path.operations.iter().map(|op| op.method.as_str());
            match routes.iter_mut().find(|r| r.template == path.path) {
                Some(known) => {
                    for method in methods {
                        known.methods.push_str(", ");
                        known.methods.push_str(method);
                    }
                }
                None => routes.push(KnownRoute {
                    segments: segments(&path.path),
                    methods: methods.collect::<Vec<_>>().join(", "),
                    template: path.path,
                }),
            }
        }
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
pub async fn record_metrics<E: Endpoint>(next: E, req: Request) -> poem::Result<Response> {
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
pub async fn limit_auth_requests<E: Endpoint>(next: E, req: Request) -> poem::Result<Response> {
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
pub async fn limit_body<E: Endpoint>(next: E, mut req: Request) -> poem::Result<Response> {
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
pub struct JsonPanicHandler;

impl PanicHandler for JsonPanicHandler {
    type Response = Response;

    fn get_response(&self, _err: Box<dyn std::any::Any + Send + 'static>) -> Response {
        ApiError::internal("a request handler panicked").into_response()
    }
}
