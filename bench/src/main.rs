//! palaver-bench: measures a Palaver server and prints tables. It asserts nothing.
//!
//! 1. Send → push latency (p50/p95/p99/max) with N users each holding a WebSocket, at a fixed
//!    offered rate and then at the most the server sustains, sending over HTTP and over WebSocket.
//!    Latency runs from the moment a send was *scheduled* to the moment the recipient's socket
//!    got the push, so a stalled server cannot hide its queueing (no coordinated omission).
//! 2. Idle connections: the server's RSS with 0 / 1k / 5k / 10k open authenticated WebSockets.
//! 3. Group fan-out: send → last member's push in a group of 1,000 all online, and what a
//!    50-member group where everyone sends sustains (`groups.rs`).
//! 4. The durable-commit floor: what the store's commit, and the disk writes under it, cost in
//!    CPU on this machine with no server around them (`floor.rs`). It runs first.
//!
//! By default it starts `palaver` (next to this binary, so `cargo build --release` first) on a
//! free port with a temporary data directory, and a fresh one for the idle phase. `--url`
//! targets a running server instead (`--pid` adds its RSS).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser, Clone)]
#[command(about = "Latency, throughput and connection-memory benchmark for Palaver")]
struct Args {
    /// Target a running server (e.g. http://127.0.0.1:3000) instead of starting one.
    #[arg(long)]
    url: Option<String>,
    /// Target a running cluster: its nodes' URLs, comma-separated. User i registers, holds
    /// its WebSocket and sends over HTTP on node i mod N, so most pushes cross nodes.
    #[arg(long, value_delimiter = ',', conflicts_with = "url")]
    urls: Vec<String>,
    /// PID of the targeted server, to report its memory.
    #[arg(long)]
    pid: Option<u32>,
    /// The server binary to start (default: `palaver` next to this binary).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Users, each holding one WebSocket, for the latency runs.
    #[arg(long, default_value_t = 100)]
    users: usize,
    /// Offered rate for the fixed-rate runs, messages per second.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Length of each latency run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent senders in the maximum-throughput runs.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Open-connection counts at which to read the server's memory.
    #[arg(long, value_delimiter = ',', default_value = "0,1000,5000,10000")]
    idle: Vec<usize>,
    #[arg(long)]
    skip_latency: bool,
    #[arg(long)]
    skip_idle: bool,
    #[arg(long)]
    skip_responder: bool,
    #[arg(long)]
    skip_groups: bool,
    /// Skip the durable-commit floor (`floor.rs`): what a commit costs with no server.
    #[arg(long)]
    skip_floor: bool,
    /// Length of each durable-commit floor row.
    #[arg(long, default_value_t = 3)]
    floor_seconds: u64,
    /// Also run the fixed-rate runs on a server whose every send goes through the word-filter
    /// example moderator (MODERATION_PLUGINS), to show what moderation adds to a send.
    #[arg(long)]
    moderated: bool,
    /// Members of the big group (all online), for the fan-out run.
    #[arg(long, default_value_t = 1000)]
    group_size: usize,
    /// Messages sent one at a time to the big group.
    #[arg(long, default_value_t = 100)]
    group_messages: usize,
    /// Members of the group where everyone sends.
    #[arg(long, default_value_t = 50)]
    busy_group_size: usize,
    /// Calls per language in the plugin per-call run (more for a profiler to sample).
    #[arg(long, default_value_t = 300)]
    plugin_calls: u64,
    /// Keep compiled plugins in this folder between bench runs (the server's PLUGIN_CACHE_DIR
    /// cache); without it every run compiles them, and prints how long that takes.
    #[arg(long)]
    plugin_cache: Option<PathBuf>,
    /// RESPONDER_TIMEOUT_MS for the fallback-lateness run.
    #[arg(long, default_value_t = 10_000)]
    responder_timeout_ms: u64,
}

/// See `Server::start`.
const LIFTED_LIMITS: &[(&str, &str)] = &[
    ("LOGIN_FAILURE_LIMIT", "1000000/s"),
    ("AUTH_RATE_LIMIT", "1000000/s"),
    ("SEND_RATE_LIMIT", "1000000/s"),
    ("AUTO_REPLY_LIMIT", "1000000/s"),
    ("AUTO_REPLY_TOTAL_LIMIT", "1000000/s"),
    ("MAX_CONNECTIONS_PER_USER", "1000000"),
    ("MAX_CONNECTIONS", "1000000"),
    ("GROUP_CREATE_LIMIT", "1000000/s"),
    ("PASSWORD_HASH_WAIT", "60s"),
];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0);
    println!("palaver-bench: open-file limit {limit}");

    if !args.skip_floor {
        floor::commit_floor(&args).await?;
    }
    if !args.skip_latency {
        let server = Server::start_or_target(&args).await?;
        latency_runs(&args, &server, false).await?;
        server.stop().await;
    }
    if args.moderated {
        let plugins = tempfile::tempdir()?;
        let built = Path::new(palaver::wasm::PLUGIN_BUILD_DIR).join("word_filter.wasm");
        std::fs::copy(built, plugins.path().join("word_filter.wasm"))?;
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../plugins/examples/word-filter/word_filter.toml"),
            plugins.path().join("word_filter.toml"),
        )?;
        let server = Server::start_with(
            &args,
            &[
                ("PLUGINS_DIR", plugins.path().display().to_string()),
                ("MODERATION_PLUGINS", "word-filter".to_owned()),
            ],
        )
        .await?;
        latency_runs(&args, &server, true).await?;
        server.stop().await;
    }
    if !args.skip_idle {
        let server = Server::start_or_target(&args).await?;
        idle_runs(&args, &server).await?;
        server.stop().await;
    }
    if !args.skip_groups {
        groups::fan_out(&args).await?;
    }
    if !args.skip_responder {
        responder::overhead(&args).await?;
        if args.url.is_some() || !args.urls.is_empty() {
            println!(
                "(fallback lateness needs a server the bench starts itself; skipped with --url)"
            );
        } else {
            responder::fallback_lateness(&args).await?;
        }
    }
    Ok(())
}

mod floor;
mod groups;
mod responder;

// ---------------------------------------------------------------------------------------------
// The server under test

pub(crate) struct Server {
    url: String,
    /// Every node of a cluster (just `url` for one server).
    urls: Vec<String>,
    pid: Option<u32>,
    child: Option<tokio::process::Child>,
    data_dir: Option<tempfile::TempDir>,
}

impl Server {
    async fn start_or_target(args: &Args) -> anyhow::Result<Self> {
        Self::start_with(args, &[]).await
    }

    async fn start_with(args: &Args, env: &[(&str, String)]) -> anyhow::Result<Self> {
        let targets: Vec<String> = args
            .url
            .iter()
            .chain(&args.urls)
            .map(|url| url.trim_end_matches('/').to_owned())
            .collect();
        if let Some(url) = targets.first() {
            return Ok(Self {
                url: url.clone(),
                urls: targets,
                pid: args.pid,
                child: None,
                data_dir: None,
            });
        }
        let binary = match &args.server_bin {
            Some(path) => path.clone(),
            None => std::env::current_exe()?.with_file_name("palaver"),
        };
        if !binary.exists() {
            bail!(
                "{} not found: run `cargo build --release` first or pass --server-bin",
                binary.display()
            );
        }
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
            probe.local_addr()?.port()
        };
        let data_dir = tempfile::tempdir()?;
        // The abuse limits stay switched on (their checks are part of the hot path being
        // measured) but so high that the benchmark's load never reaches them. A limit set in
        // the bench's own environment wins.
        let lifted_limits = LIFTED_LIMITS
            .iter()
            .filter(|(name, _)| std::env::var_os(name).is_none());
        let child = tokio::process::Command::new(&binary)
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("DATA_DIR", data_dir.path())
            .env("RUST_LOG", "warn")
            .envs(lifted_limits.copied())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let url = format!("http://127.0.0.1:{port}");
        let server = Self {
            urls: vec![url.clone()],
            url,
            pid: child.id(),
            child: Some(child),
            data_dir: Some(data_dir),
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = client.get(format!("{}/readyz", server.url)).send().await
                && r.status().is_success()
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("the server did not become ready");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!(
            "palaver-bench: started {} (pid {:?})",
            binary.display(),
            server.pid
        );
        Ok(server)
    }

    /// The server's CPU time so far (user + system, all threads), from `/proc/<pid>/stat`.
    fn cpu_time(&self) -> Option<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid?)).ok()?;
        // Fields after the command name (which may hold spaces, so split after its ')'):
        // utime and stime are the 14th and 15th fields of the line, 12th and 13th here.
        let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
        let utime: u64 = fields.next()?.parse().ok()?;
        let stime: u64 = fields.next()?.parse().ok()?;
        // SAFETY: sysconf only reads a configuration value.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        (ticks > 0).then(|| Duration::from_secs_f64((utime + stime) as f64 / ticks as f64))
    }

    /// The SQLite WAL's size on disk, for a server the bench started.
    fn wal_bytes(&self) -> Option<u64> {
        let wal = self.data_dir.as_ref()?.path().join("palaver.db-wal");
        Some(std::fs::metadata(wal).ok()?.len())
    }

    fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid?)).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    fn ws_url(&self, token: &str) -> String {
        self.node_ws_url(0, token)
    }

    fn node_ws_url(&self, i: usize, token: &str) -> String {
        format!(
            "{}/ws?token={token}",
            self.node(i).replacen("http", "ws", 1)
        )
    }

    /// The node user `i` talks to.
    fn node(&self, i: usize) -> &str {
        &self.urls[i % self.urls.len()]
    }

    async fn stop(mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill().await;
        }
    }
}

#[derive(Clone)]
pub(crate) struct User {
    id: String,
    token: String,
}

pub(crate) async fn create_users(server: &Server, count: usize) -> anyhow::Result<Vec<User>> {
    let client = reqwest::Client::new();
    let tag = std::process::id();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let mut users = Vec::with_capacity(count);
    // Password hashing is deliberately slow; a few at a time is what the server allows anyway.
    for chunk in (0..count).collect::<Vec<_>>().chunks(8) {
        let batch = chunk.iter().map(|i| {
            let client = client.clone();
            let base = server.node(*i).to_owned();
            let email = format!("bench-{tag}-{stamp}-{i}@example.com");
            async move {
                let credentials = json!({"email": email, "password": "bench password"});
                let registered: Value = client
                    .post(format!("{base}/api/auth/register"))
                    .json(&credentials)
                    .send()
                    .await?
                    .json()
                    .await?;
                let login: Value = client
                    .post(format!("{base}/api/auth/login"))
                    .json(&credentials)
                    .send()
                    .await?
                    .json()
                    .await?;
                anyhow::Ok(User {
                    id: registered["id"]
                        .as_str()
                        .context("register answered no id")?
                        .to_owned(),
                    token: login["token"]
                        .as_str()
                        .context("login answered no token")?
                        .to_owned(),
                })
            }
        });
        for user in futures_util::future::join_all(batch).await {
            users.push(user?);
        }
    }
    Ok(users)
}

// ---------------------------------------------------------------------------------------------
// Latency and throughput

/// Shared by every connection's reader: when sends started, and what arrived when.
struct Recorder {
    epoch: Instant,
    latencies: Mutex<Histogram<u64>>,
    delivered: AtomicU64,
    last_delivery_us: AtomicU64,
}

impl Recorder {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            epoch: Instant::now(),
            latencies: Mutex::new(
                Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
            ),
            delivered: AtomicU64::new(0),
            last_delivery_us: AtomicU64::new(0),
        })
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    fn reset(&self) {
        if let Ok(mut h) = self.latencies.lock() {
            h.reset();
        }
        self.delivered.store(0, Ordering::SeqCst);
    }

    /// A push arrived whose content says when its send was scheduled.
    fn record(&self, content: &str) {
        let Some(sent_us) = content
            .strip_prefix("bench ")
            .and_then(|t| t.parse::<u64>().ok())
        else {
            return;
        };
        let now = self.now_us();
        if let Ok(mut h) = self.latencies.lock() {
            let _ = h.record(now.saturating_sub(sent_us).max(1));
        }
        self.delivered.fetch_add(1, Ordering::SeqCst);
        self.last_delivery_us.fetch_max(now, Ordering::SeqCst);
    }
}

/// One user's WebSocket: frames to send go through `outgoing`; `sent` acks come out of `acks`.
struct Connection {
    outgoing: mpsc::UnboundedSender<Message>,
    acks: tokio::sync::Mutex<mpsc::UnboundedReceiver<()>>,
}

async fn connect(
    server: &Server,
    index: usize,
    user: &User,
    recorder: Arc<Recorder>,
) -> anyhow::Result<Connection> {
    let (ack_tx, acks) = mpsc::unbounded_channel();
    let me = user.id.clone();
    let outgoing =
        open_socket(
            server.node_ws_url(index, &user.token),
            move |frame| match frame["type"].as_str() {
                Some("message")
                    if frame["message"]["recipient"] == me.as_str()
                        && frame["message"]["sender"] != me.as_str() =>
                {
                    recorder.record(frame["message"]["content"].as_str().unwrap_or_default());
                }
                Some("sent") => {
                    let _ = ack_tx.send(());
                }
                _ => {}
            },
        )
        .await?;
    Ok(Connection {
        outgoing,
        acks: tokio::sync::Mutex::new(acks),
    })
}

/// Opens a WebSocket (Nagle off, like the server: small frames must not wait for the previous
/// one's ACK). Frames sent into the returned channel go out in order; every JSON text frame
/// that arrives goes to `on_frame`.
pub(crate) async fn open_socket(
    url: String,
    mut on_frame: impl FnMut(Value) + Send + 'static,
) -> anyhow::Result<mpsc::UnboundedSender<Message>> {
    let (stream, _) = tokio_tungstenite::connect_async_with_config(url, None, true).await?;
    let (mut sink, mut stream) = stream.split();
    let (outgoing, mut to_send) = mpsc::unbounded_channel::<Message>();
    tokio::spawn(async move {
        while let Some(frame) = to_send.recv().await {
            if sink.send(frame).await.is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move {
        while let Some(Ok(frame)) = stream.next().await {
            let Message::Text(text) = frame else { continue };
            if let Ok(frame) = serde_json::from_str::<Value>(&text) {
                on_frame(frame);
            }
        }
    });
    Ok(outgoing)
}

#[derive(Clone, Copy, PartialEq)]
enum Transport {
    Http,
    WebSocket,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Http => "HTTP",
            Transport::WebSocket => "WebSocket",
        }
    }
}

struct Run {
    label: String,
    sent: u64,
    delivered: u64,
    failed: u64,
    throughput: f64,
    p50: f64,
    p95: f64,
    p99: f64,
    max: f64,
    /// Server CPU time over the run per delivered message, in µs.
    cpu_per_message: Option<f64>,
    /// The same for this process: what generating the load took from the machine's cores.
    generator_cpu_per_message: Option<f64>,
}

/// Who sends to whom for the k-th message: spread over all pairs, never to oneself.
fn pair(k: u64, users: usize) -> (usize, usize) {
    let from = (k as usize) % users;
    let step = 1 + (k as usize / users) % (users - 1);
    (from, (from + step) % users)
}

struct Bench<'a> {
    server: &'a Server,
    users: Vec<User>,
    connections: Vec<Arc<Connection>>,
    recorder: Arc<Recorder>,
    http: reqwest::Client,
}

impl Bench<'_> {
    fn send(
        &self,
        k: u64,
        transport: Transport,
        failed: &Arc<AtomicU64>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let (from, to) = pair(k, self.users.len());
        let content = format!("bench {}", self.recorder.now_us());
        match transport {
            Transport::WebSocket => {
                let frame =
                    json!({"type": "send", "recipient": self.users[to].id, "content": content});
                if self.connections[from]
                    .outgoing
                    .send(Message::text(frame.to_string()))
                    .is_err()
                {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                None
            }
            Transport::Http => {
                let request = self
                    .http
                    .post(format!("{}/api/chat/send", self.server.node(from)))
                    .bearer_auth(&self.users[from].token)
                    .json(&json!({"recipient": self.users[to].id, "content": content}));
                let failed = failed.clone();
                Some(tokio::spawn(async move {
                    match request.send().await {
                        Ok(r) if r.status().is_success() => {}
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }))
            }
        }
    }

    /// Open loop: one send every 1/rate s, whatever the server does.
    async fn fixed_rate(&self, transport: Transport, rate: u64, seconds: u64) -> Run {
        self.recorder.reset();
        let failed = Arc::new(AtomicU64::new(0));
        let total = rate * seconds;
        let interval = Duration::from_secs_f64(1.0 / rate as f64);
        let start = tokio::time::Instant::now();
        let start_us = self.recorder.now_us();
        let cpu_before = (self.server.cpu_time(), own_cpu_time());
        let mut in_flight = Vec::new();
        for k in 0..total {
            tokio::time::sleep_until(start + interval * k as u32).await;
            in_flight.extend(self.send(k, transport, &failed));
        }
        for task in in_flight {
            let _ = task.await;
        }
        self.finish(
            format!("{} at {rate}/s", transport.name()),
            total,
            &failed,
            (start_us, cpu_before),
        )
        .await
    }

    /// Closed loop: `concurrency` senders, each sending again as soon as its last send is acknowledged.
    async fn max_rate(&self, transport: Transport, concurrency: usize, seconds: u64) -> Run {
        self.recorder.reset();
        let failed = Arc::new(AtomicU64::new(0));
        let sent = Arc::new(AtomicU64::new(0));
        let start_us = self.recorder.now_us();
        let cpu_before = (self.server.cpu_time(), own_cpu_time());
        let stop = Instant::now() + Duration::from_secs(seconds);
        let workers = concurrency.min(self.users.len());
        // Acks left over from a fixed-rate run would let a worker run ahead of the server.
        for connection in &self.connections {
            let mut acks = connection.acks.lock().await;
            while acks.try_recv().is_ok() {}
        }
        let mut tasks = Vec::new();
        for worker in 0..workers {
            let (http, url, users, recorder, failed, sent) = (
                self.http.clone(),
                self.server.node(worker).to_owned(),
                self.users.clone(),
                self.recorder.clone(),
                failed.clone(),
                sent.clone(),
            );
            let connection = self.connections[worker].clone();
            tasks.push(tokio::spawn(async move {
                let mut k = worker as u64;
                while Instant::now() < stop {
                    let to = (worker + 1 + (k as usize % (users.len() - 1))) % users.len();
                    let content = format!("bench {}", recorder.now_us());
                    let ok = match transport {
                        Transport::Http => http
                            .post(format!("{url}/api/chat/send"))
                            .bearer_auth(&users[worker].token)
                            .json(&json!({"recipient": users[to].id, "content": content}))
                            .send()
                            .await
                            .is_ok_and(|r| r.status().is_success()),
                        Transport::WebSocket => {
                            let frame = json!({"type": "send", "recipient": users[to].id, "content": content});
                            let mut acks = connection.acks.lock().await;
                            connection.outgoing.send(Message::text(frame.to_string())).is_ok()
                                && tokio::time::timeout(Duration::from_secs(10), acks.recv()).await.is_ok()
                        }
                    };
                    sent.fetch_add(1, Ordering::Relaxed);
                    if !ok {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    k += workers as u64;
                }
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
        let total = sent.load(Ordering::Relaxed);
        self.finish(
            format!("{} max, {workers} senders", transport.name()),
            total,
            &failed,
            (start_us, cpu_before),
        )
        .await
    }

    /// Waits (bounded) for the last pushes, then summarises. `started`: when the run began, on
    /// the recorder's clock, and the server's and this process's CPU time then.
    async fn finish(
        &self,
        label: String,
        sent: u64,
        failed: &AtomicU64,
        (start_us, (cpu_before, own_before)): (u64, (Option<Duration>, Duration)),
    ) -> Run {
        let failed = failed.load(Ordering::Relaxed);
        let expected = sent.saturating_sub(failed);
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.recorder.delivered.load(Ordering::SeqCst) < expected && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let delivered = self.recorder.delivered.load(Ordering::SeqCst);
        let cpu_per_message = match (cpu_before, self.server.cpu_time()) {
            (Some(before), Some(after)) if delivered > 0 => {
                Some((after - before).as_secs_f64() * 1e6 / delivered as f64)
            }
            _ => None,
        };
        let generator_cpu_per_message = (delivered > 0)
            .then(|| (own_cpu_time() - own_before).as_secs_f64() * 1e6 / delivered as f64);
        let elapsed_s = (self
            .recorder
            .last_delivery_us
            .load(Ordering::SeqCst)
            .saturating_sub(start_us)) as f64
            / 1e6;
        let h = self
            .recorder
            .latencies
            .lock()
            .map(|h| h.clone())
            .unwrap_or_else(|e| e.into_inner().clone());
        let ms = |v: u64| v as f64 / 1000.0;
        Run {
            label,
            sent,
            delivered,
            failed,
            throughput: if elapsed_s > 0.0 {
                delivered as f64 / elapsed_s
            } else {
                0.0
            },
            p50: ms(h.value_at_quantile(0.50)),
            p95: ms(h.value_at_quantile(0.95)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
            cpu_per_message,
            generator_cpu_per_message,
        }
    }
}

/// Which pages a history run asks for.
#[derive(Clone, Copy)]
enum Pages {
    /// The newest page, again and again: what clients opening the app ask for (the embedded
    /// store keeps these pages in memory).
    Newest,
    /// Page after page back through the user's history, then from the newest again: reads
    /// that no kept page answers.
    ScrollBack,
}

/// Closed-loop history reads: what a client reading history costs.
struct HistoryRun {
    label: String,
    requests: u64,
    failed: u64,
    rate: f64,
    p50: f64,
    p95: f64,
    p99: f64,
    max: f64,
    cpu_per_request: Option<f64>,
}

impl Bench<'_> {
    /// `concurrency` readers, each asking for a page of 50 messages as soon as the last
    /// answer arrived (the users hold thousands after the send runs).
    async fn history(&self, concurrency: usize, seconds: u64, pages: Pages) -> HistoryRun {
        let workers = concurrency.min(self.users.len());
        let cpu_before = self.server.cpu_time();
        let started = Instant::now();
        let stop = started + Duration::from_secs(seconds);
        let mut tasks = Vec::new();
        for worker in 0..workers {
            let http = self.http.clone();
            let url = format!("{}/api/chat/messages?limit=50", self.server.node(worker));
            let token = self.users[worker].token.clone();
            tasks.push(tokio::spawn(async move {
                let mut latencies = Histogram::<u64>::new(3).expect("histogram bounds are valid");
                let mut failed = 0u64;
                let mut before: Option<String> = None;
                while Instant::now() < stop {
                    let asked = Instant::now();
                    let page = match &before {
                        Some(id) => format!("{url}&before={id}"),
                        None => url.clone(),
                    };
                    let ok = match http.get(&page).bearer_auth(&token).send().await {
                        Ok(r) if r.status().is_success() => match r.bytes().await {
                            Ok(body) => {
                                if let Pages::ScrollBack = pages {
                                    // The oldest message of this page, or from the top again.
                                    before =
                                        serde_json::from_slice::<Value>(&body).ok().and_then(|v| {
                                            v.get(0)?.get("id")?.as_str().map(str::to_owned)
                                        });
                                }
                                true
                            }
                            Err(_) => false,
                        },
                        _ => false,
                    };
                    let _ = latencies.record(asked.elapsed().as_micros() as u64);
                    failed += u64::from(!ok);
                }
                (latencies, failed)
            }));
        }
        let mut latencies = Histogram::<u64>::new(3).expect("histogram bounds are valid");
        let mut failed = 0;
        for task in tasks {
            if let Ok((h, f)) = task.await {
                let _ = latencies.add(h);
                failed += f;
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        let requests = latencies.len();
        let ms = |v: u64| v as f64 / 1000.0;
        HistoryRun {
            label: match pages {
                Pages::Newest => format!("newest page, {workers} readers"),
                Pages::ScrollBack => format!("scrolling back, {workers} rdrs"),
            },
            requests,
            failed,
            rate: requests as f64 / elapsed,
            p50: ms(latencies.value_at_quantile(0.50)),
            p95: ms(latencies.value_at_quantile(0.95)),
            p99: ms(latencies.value_at_quantile(0.99)),
            max: ms(latencies.max()),
            cpu_per_request: match (cpu_before, self.server.cpu_time()) {
                (Some(before), Some(after)) if requests > 0 => {
                    Some((after - before).as_secs_f64() * 1e6 / requests as f64)
                }
                _ => None,
            },
        }
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// When a run ran, on stderr: to cut a profile of the whole benchmark down to one run
/// (`perf record -k realtime`, then `perf report --time <from>,<to>`).
fn window(label: &str, started: f64) {
    eprintln!(
        "palaver-bench: {label}: {started:.3},{:.3} (unix s)",
        unix_now()
    );
}

/// With `moderated`, only the fixed-rate runs, once the server's moderator is loaded.
async fn latency_runs(args: &Args, server: &Server, moderated: bool) -> anyhow::Result<()> {
    if args.users < 2 {
        bail!("--users must be at least 2");
    }
    println!("palaver-bench: registering {} users", args.users);
    let users = create_users(server, args.users).await?;
    if moderated {
        let http = reqwest::Client::new();
        loop {
            let listed: Value = http
                .get(format!("{}/api/plugins", server.url))
                .bearer_auth(&users[0].token)
                .send()
                .await?
                .json()
                .await?;
            let ready = listed.as_array().is_some_and(|plugins| {
                plugins
                    .iter()
                    .any(|p| p["name"] == "word-filter" && p["state"] != "loading")
            });
            if ready {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let recorder = Recorder::new();
    let mut connections = Vec::new();
    for (index, user) in users.iter().enumerate() {
        connections.push(Arc::new(
            connect(server, index, user, recorder.clone()).await?,
        ));
    }
    let bench = Bench {
        server,
        users,
        connections,
        recorder,
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()?,
    };
    println!(
        "palaver-bench: {} users online; {} s per run; latency = scheduled send -> recipient's push",
        args.users, args.seconds
    );
    let mut runs = Vec::new();
    for transport in [Transport::Http, Transport::WebSocket] {
        let started = unix_now();
        runs.push(bench.fixed_rate(transport, args.rate, args.seconds).await);
        window(&runs[runs.len() - 1].label, started);
    }
    for run in &mut runs {
        if moderated {
            run.label = format!("{} + word-filter", run.label);
        }
    }
    if !moderated {
        for transport in [Transport::Http, Transport::WebSocket] {
            let started = unix_now();
            runs.push(
                bench
                    .max_rate(transport, args.concurrency, args.seconds)
                    .await,
            );
            window(&runs[runs.len() - 1].label, started);
        }
    }

    let mut history = Vec::new();
    if !moderated {
        for pages in [Pages::Newest, Pages::ScrollBack] {
            let started = unix_now();
            let run = bench.history(args.concurrency, args.seconds, pages).await;
            window(&run.label, started);
            history.push(run);
        }
    }

    println!();
    println!(
        "{:<28} {:>8} {:>9} {:>6} {:>10} {:>8} {:>8} {:>8} {:>8} {:>11} {:>11}",
        "run",
        "sent",
        "delivered",
        "failed",
        "msg/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
        "CPU µs/msg",
        "bench µs/msg"
    );
    let us = |v: Option<f64>| v.map_or("n/a".to_owned(), |us| format!("{us:.0}"));
    for r in &runs {
        println!(
            "{:<28} {:>8} {:>9} {:>6} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>11} {:>11}",
            r.label,
            r.sent,
            r.delivered,
            r.failed,
            r.throughput,
            r.p50,
            r.p95,
            r.p99,
            r.max,
            us(r.cpu_per_message),
            us(r.generator_cpu_per_message)
        );
    }
    println!(
        "(CPU µs/msg: the server's user + system CPU time over the run, from /proc/<pid>/stat, \
         per delivered message; one process's, so for a cluster only --pid's node. bench µs/msg: \
         the same for this load generator, which shares the machine's cores with the server)"
    );
    if !history.is_empty() {
        println!();
        println!(
            "{:<28} {:>8} {:>6} {:>10} {:>8} {:>8} {:>8} {:>8} {:>11}",
            "history run",
            "requests",
            "failed",
            "req/s",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "max ms",
            "CPU µs/req"
        );
        for h in &history {
            let cpu = h
                .cpu_per_request
                .map_or("n/a".to_owned(), |us| format!("{us:.0}"));
            println!(
                "{:<28} {:>8} {:>6} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>11}",
                h.label, h.requests, h.failed, h.rate, h.p50, h.p95, h.p99, h.max, cpu
            );
        }
        println!(
            "(each request: GET /api/chat/messages?limit=50, scrolling back with &before=, as one \
             of the senders above)"
        );
    }
    if let Some(rss) = server.rss_kib() {
        println!("server RSS after the runs: {:.1} MiB", rss as f64 / 1024.0);
    }
    if let Some(wal) = server.wal_bytes() {
        println!(
            "SQLite WAL after the runs: {:.1} MiB",
            wal as f64 / 1048576.0
        );
    }
    println!();
    Ok(())
}

/// This process's CPU time so far (user + system, every thread).
pub(crate) fn own_cpu_time() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}

// ---------------------------------------------------------------------------------------------
// Idle connections

async fn idle_runs(args: &Args, server: &Server) -> anyhow::Result<()> {
    let mut targets = args.idle.clone();
    targets.sort_unstable();
    let users = create_users(server, 10).await?;
    let mut open: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    let mut rows = Vec::new();
    tokio::time::sleep(Duration::from_secs(2)).await;
    rows.push((0, server.rss_kib()));
    for target in targets.into_iter().filter(|t| *t > 0) {
        while open.len() < target {
            let batch = (target - open.len()).min(250);
            let mut handshakes = Vec::new();
            for i in 0..batch {
                let url = server.ws_url(&users[(open.len() + i) % users.len()].token);
                handshakes.push(tokio::spawn(async move {
                    tokio_tungstenite::connect_async(url).await
                }));
            }
            for handshake in handshakes {
                let (stream, _) = handshake.await?.context("opening an idle connection")?;
                // Keep the connection open, answering pings, until the bench ends.
                open.push(tokio::spawn(async move {
                    let (_sink, mut stream) = stream.split();
                    while let Some(Ok(_)) = stream.next().await {}
                }));
            }
        }
        // Let the allocator and the kernel settle before reading.
        tokio::time::sleep(Duration::from_secs(2)).await;
        rows.push((target, server.rss_kib()));
    }

    println!();
    println!(
        "{:>12} {:>12} {:>20}",
        "open sockets", "server RSS", "marginal per socket"
    );
    let mut previous: Option<(usize, u64)> = None;
    for (count, rss) in &rows {
        let rss_text = rss.map_or("n/a".to_owned(), |r| {
            format!("{:.1} MiB", r as f64 / 1024.0)
        });
        let marginal = match (rss, previous) {
            (Some(r), Some((pc, pr))) if *count > pc => {
                format!("{:.1} KiB", (*r as f64 - pr as f64) / (*count - pc) as f64)
            }
            _ => "-".to_owned(),
        };
        println!("{count:>12} {rss_text:>12} {marginal:>20}");
        if let Some(r) = rss {
            previous = Some((*count, *r));
        }
    }
    println!(
        "(marginal = RSS growth since the previous row / sockets added. The 0-socket row still \
         holds memory the allocator has not yet reclaimed from password hashing, so the first \
         step can come out negative.)"
    );
    for task in open {
        task.abort();
    }
    Ok(())
}
