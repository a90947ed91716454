//! Prometheus metrics (`METRICS_ADDR`): every metric name and label lives here, so the table in
//! docs/operations.md and the code cannot disagree. The `metrics` facade costs nothing when no
//! recorder is installed (the default), so call sites record unconditionally.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context;
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

pub const HTTP_REQUESTS: &str = "palaver_http_requests_total";
pub const HTTP_DURATION: &str = "palaver_http_request_duration_seconds";
pub const MESSAGES_STORED: &str = "palaver_messages_stored_total";
pub const CONNECTIONS: &str = "palaver_connections";
pub const PUSHES_DROPPED: &str = "palaver_pushes_dropped_total";
pub const RESPONDER_OUTCOMES: &str = "palaver_responder_outcomes_total";
pub const RESPONDER_DURATION: &str = "palaver_responder_duration_seconds";
pub const PLUGIN_CALLS: &str = "palaver_plugin_calls_total";
pub const MODERATION_VERDICTS: &str = "palaver_moderation_verdicts_total";
pub const MODERATION_DURATION: &str = "palaver_moderation_duration_seconds";
pub const RATE_LIMITED: &str = "palaver_rate_limited_total";
pub const STORE_ERRORS: &str = "palaver_store_errors_total";
pub const STORE_ROUND_TRIPS: &str = "palaver_store_round_trips_total";
pub const CLUSTER_NODES: &str = "palaver_cluster_nodes";
pub const STORAGE_FULL: &str = "palaver_storage_full";
pub const CLUSTER_RECOVERED: &str = "palaver_cluster_recovered_messages_total";

/// HTTP latency buckets: sub-millisecond reads up to slow argon2 logins.
const HTTP_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Responder latency buckets: from a canned plugin (~ms) to the 10 s deadline.
const RESPONDER_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.5, 10.0, 15.0,
];
/// Moderator latency buckets: from a string search (~10 µs) to the 1 s ceiling.
const MODERATION_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];
/// Histograms are folded into their buckets this often (and at every scrape).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The process-wide recorder. Installed once: test binaries start many servers in one process.
fn recorder() -> anyhow::Result<PrometheusHandle> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(HTTP_DURATION.to_owned()), HTTP_BUCKETS)?
        .set_buckets_for_metric(
            Matcher::Full(RESPONDER_DURATION.to_owned()),
            RESPONDER_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full(MODERATION_DURATION.to_owned()),
            MODERATION_BUCKETS,
        )?
        .install_recorder()
        .context("installing the metrics recorder")?;
    describe();
    Ok(HANDLE.get_or_init(|| handle).clone())
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by method, route and status."
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "HTTP request latency, by method and route."
    );
    describe_counter!(
        MESSAGES_STORED,
        "Messages stored, by kind (user, auto_reply)."
    );
    describe_gauge!(
        CONNECTIONS,
        "Live real-time connections, by transport (websocket, socketio)."
    );
    describe_counter!(
        PUSHES_DROPPED,
        "Connections closed because their outbound queue overflowed (slow consumers)."
    );
    describe_counter!(
        RESPONDER_OUTCOMES,
        "Auto-replies sent for BUSY users, by outcome (reply, fallback) and fallback reason."
    );
    describe_histogram!(
        RESPONDER_DURATION,
        Unit::Seconds,
        "From a message's arrival to its auto-reply being decided, by outcome."
    );
    describe_counter!(
        PLUGIN_CALLS,
        "Responder plugin calls, by plugin and result."
    );
    describe_counter!(
        MODERATION_VERDICTS,
        "Moderation plugin calls, by plugin and verdict (allow, reject, replace, failed)."
    );
    describe_histogram!(
        MODERATION_DURATION,
        Unit::Seconds,
        "How long each moderator took per message, by plugin."
    );
    describe_counter!(
        RATE_LIMITED,
        "Requests refused by a rate limit or cap, by limit."
    );
    describe_counter!(
        STORE_ERRORS,
        "Database operations that failed (unavailable or internal), by kind."
    );
    describe_counter!(
        STORE_ROUND_TRIPS,
        "Round trips to SQLite's connection pool (embedded store), by store operation."
    );
    describe_gauge!(
        CLUSTER_NODES,
        "Other cluster nodes this node hears and waits for (cluster mode)."
    );
    describe_gauge!(
        STORAGE_FULL,
        "1 while the disk holding the database is full (writes answer 503), else 0."
    );
    describe_counter!(
        CLUSTER_RECOVERED,
        "Messages read back from the database instead of NATS: frames this node missed, or what a dead node stored last."
    );
}

/// The `/metrics` listener, bound at start-up so a bad address fails there.
pub struct MetricsServer {
    listener: TcpListener,
    handle: PrometheusHandle,
}

impl MetricsServer {
    pub async fn bind(address: SocketAddr) -> anyhow::Result<Self> {
        let handle = recorder()?;
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("binding METRICS_ADDR {address}"))?;
        Ok(Self { listener, handle })
    }

    pub fn address(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves `GET /metrics`, and the operator's other routes (`operator`, given by the
    /// wiring above), until the task is dropped.
    pub async fn run(self, operator: poem::Route) {
        let Self { listener, handle } = self;
        let upkeep = handle.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(UPKEEP_INTERVAL);
            loop {
                every.tick().await;
                upkeep.run_upkeep();
            }
        });
        let route = operator.at(
            "/metrics",
            poem::get(poem::endpoint::make_sync(move |_| {
                poem::Response::builder()
                    .content_type("text/plain; version=0.0.4; charset=utf-8")
                    .body(handle.render())
            })),
        );
        let served = match poem::listener::TcpAcceptor::from_tokio(listener) {
            Ok(acceptor) => poem::Server::new_with_acceptor(acceptor).run(route).await,
            Err(e) => Err(e),
        };
        if let Err(e) = served {
            tracing::error!(error = %e, "the metrics listener stopped");
        }
    }
}

pub fn http_request(method: &http::Method, route: &'static str, status: u16, elapsed: Duration) {
    let method = method_label(method);
    counter!(HTTP_REQUESTS, "method" => method, "route" => route, "status" => status.to_string())
        .increment(1);
    histogram!(HTTP_DURATION, "method" => method, "route" => route).record(elapsed.as_secs_f64());
}

/// A method as a label: the nine of RFC 9110 and PATCH, and `other` for whatever else a client
/// makes up (HTTP allows any token as a method, and each would otherwise be a series of its
/// own, kept for the life of the process).
fn method_label(method: &http::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "CONNECT" => "CONNECT",
        "OPTIONS" => "OPTIONS",
        "TRACE" => "TRACE",
        "PATCH" => "PATCH",
        _ => "other",
    }
}

pub fn message_stored(kind: &'static str) {
    counter!(MESSAGES_STORED, "kind" => kind).increment(1);
}

/// Counts one live connection of `transport` for as long as it is held.
pub struct LiveConnection(&'static str);

impl LiveConnection {
    pub fn open(transport: &'static str) -> Self {
        gauge!(CONNECTIONS, "transport" => transport).increment(1.0);
        Self(transport)
    }
}

impl Drop for LiveConnection {
    fn drop(&mut self) {
        gauge!(CONNECTIONS, "transport" => self.0).decrement(1.0);
    }
}

pub fn push_dropped() {
    counter!(PUSHES_DROPPED).increment(1);
}

/// `reason` is empty for a plugin's reply.
pub fn responder_outcome(outcome: &'static str, reason: &'static str, elapsed: Duration) {
    counter!(RESPONDER_OUTCOMES, "outcome" => outcome, "reason" => reason).increment(1);
    histogram!(RESPONDER_DURATION, "outcome" => outcome).record(elapsed.as_secs_f64());
}

pub fn plugin_call(plugin: &str, result: &'static str) {
    counter!(PLUGIN_CALLS, "plugin" => plugin.to_owned(), "result" => result).increment(1);
}

/// One moderator's call: `verdict` is allow, reject, replace or failed. `plugin` comes from
/// `MODERATION_PLUGINS`, so the label set is the operator's list.
pub fn moderation(plugin: &str, verdict: &'static str, elapsed: Duration) {
    counter!(MODERATION_VERDICTS, "plugin" => plugin.to_owned(), "verdict" => verdict).increment(1);
    histogram!(MODERATION_DURATION, "plugin" => plugin.to_owned()).record(elapsed.as_secs_f64());
}

pub fn rate_limited(limit: &'static str) {
    counter!(RATE_LIMITED, "limit" => limit).increment(1);
}

pub fn store_error(kind: &'static str) {
    counter!(STORE_ERRORS, "kind" => kind).increment(1);
}

/// One round trip to the embedded store's pool; `operation` is a store method's name.
pub fn store_round_trip(operation: &'static str) {
    counter!(STORE_ROUND_TRIPS, "operation" => operation).increment(1);
}

/// `count` other nodes are heard now.
pub fn storage_full(full: bool) {
    gauge!(STORAGE_FULL).set(if full { 1.0 } else { 0.0 });
}

pub fn cluster_nodes(count: usize) {
    gauge!(CLUSTER_NODES).set(count as f64);
}

/// `reason`: `missed_frames` or `node_lost`.
pub fn cluster_recovered(reason: &'static str, count: usize) {
    counter!(CLUSTER_RECOVERED, "reason" => reason).increment(count as u64);
}
