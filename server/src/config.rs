//! Every setting, read once at start-up from the environment (and an optional `.env` file).
//! A bad value stops the server with one line that names the variable.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

pub use crate::cors::AllowedOrigins;
pub use crate::wasm::HostPattern;

/// Tokens live between one second and a year: longer is a token nobody can take back in
/// practice, and far longer overflows date arithmetic (and RFC 3339's four-digit years).
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// Larger request bodies (HTTP) and messages (either socket framing) are refused before
/// anything parses them.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The smallest HS256 secret we accept: 256 bits, as RFC 7518 asks.
pub const MIN_JWT_SECRET_BYTES: usize = 32;

#[derive(Debug, Clone)]
pub struct Config {
    pub host: IpAddr,
    pub port: u16,
    /// `None`: generate one and keep it in `data_dir` (see `auth::secret`).
    pub jwt_secret: Option<JwtSecret>,
    pub token_ttl: Duration,
    pub data_dir: PathBuf,
    /// How hard SQLite works to keep a commit through a power cut.
    pub sqlite_synchronous: SqliteSynchronous,
    /// `Some`: store everything in MongoDB instead of the embedded SQLite file.
    pub mongodb: Option<MongoSettings>,
    pub realtime: RealtimeSettings,
    pub responder: ResponderSettings,
    pub limits: LimitSettings,
    /// Which other web origins may use the API and the sockets from a browser.
    pub cors: AllowedOrigins,
    /// `Some`: serve Prometheus metrics at `/metrics` on this address (its own listener).
    pub metrics_addr: Option<SocketAddr>,
    /// `Some`: this node is one of a cluster that fans out through NATS (`NATS_URL`).
    pub cluster: Option<ClusterSettings>,
}

/// How a node joins a cluster: see docs/cluster.md.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub nats_url: NatsUrl,
    /// This node's name (`NODE_ID`), unique in the cluster; kept on every message it stores.
    pub node_id: String,
    /// The first token(s) of every NATS subject the cluster uses (`NATS_SUBJECT_PREFIX`), so
    /// that several clusters can share one NATS.
    pub subject_prefix: String,
}

/// One or more NATS server URLs, comma-separated (`nats://`, `tls://`, `ws://`, `wss://`). They
/// may carry credentials (`nats://user:password@host`, `nats://token@host`), so `Debug` and
/// [`NatsUrl::redacted`] replace any user part with `***`.
#[derive(Clone)]
pub struct NatsUrl(Secret);

impl NatsUrl {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let url = Self(Secret::new(raw.trim().to_owned()));
        for server in url.expose().split(',') {
            let server = server.trim();
            let ok = ["nats://", "tls://", "ws://", "wss://"]
                .iter()
                .any(|scheme| server.starts_with(scheme) && server.len() > scheme.len());
            if !ok {
                return Err(format!(
                    "must be nats://host:port (or tls://, ws://, wss://; several separated by \
                     commas), got {:?}",
                    Self::redact(server)
                ));
            }
        }
        Ok(url)
    }

    pub fn expose(&self) -> &str {
        self.0.expose()
    }

    /// The servers with any user, password or token replaced by `***`.
    pub fn redacted(&self) -> String {
        self.expose()
            .split(',')
            .map(|server| Self::redact(server.trim()))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn redact(server: &str) -> String {
        let Some(start) = server.find("://").map(|i| i + 3) else {
            return server.to_owned();
        };
        match server.rfind('@').filter(|&at| at >= start) {
            Some(at) => format!("{}***{}", &server[..start], &server[at..]),
            None => server.to_owned(),
        }
    }
}

impl std::fmt::Debug for NatsUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// `NODE_ID`: 1 to 64 of `A-Z a-z 0-9 - _` (it is a NATS-safe token and a stored field).
fn parse_node_id(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    let ok = (1..=64).contains(&raw.len())
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(raw.to_owned())
    } else {
        Err(format!(
            "must be 1 to 64 letters, digits, '-' or '_', got {raw:?}"
        ))
    }
}

/// `NATS_SUBJECT_PREFIX`: dot-separated tokens of `A-Z a-z 0-9 - _`.
fn parse_subject_prefix(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    let ok = raw.len() <= 128
        && raw.split('.').all(|token| {
            !token.is_empty()
                && token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(raw.to_owned())
    } else {
        Err(format!(
            "must be dot-separated tokens of letters, digits, '-' or '_' (such as \
             palaver or acme.chat), got {raw:?}"
        ))
    }
}

/// A node name nobody else has: the host's name (when the environment tells it) and randomness.
fn generated_node_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .and_then(|h| parse_node_id(&h).ok())
        .map(|h| h.chars().take(40).collect::<String>())
        .unwrap_or_else(|| "node".to_owned());
    let mut random = [0u8; 4];
    let _ = getrandom::fill(&mut random);
    let suffix: String = random.iter().map(|b| format!("{b:02x}")).collect();
    format!("{host}-{suffix}")
}

/// "At most `count` per `per`", with bursts of up to `count`: a token bucket refilled evenly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: std::num::NonZeroU32,
    pub per: Duration,
}

impl Rate {
    pub const fn new(count: u32, per: Duration) -> Self {
        let count = match std::num::NonZeroU32::new(count) {
            Some(count) => count,
            None => std::num::NonZeroU32::MIN,
        };
        Self { count, per }
    }

    /// `off` (no limit), or `N/period`: `10/s`, `30/10s`, `5/15m`, `1000/h`.
    pub fn parse(raw: &str) -> Result<Option<Self>, String> {
        let raw = raw.trim();
        if raw.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        let bad = || {
            format!("must be off or N/period such as 10/s, 30/10s, 5/15m or 1000/h, got {raw:?}")
        };
        let (count, period) = raw.split_once('/').ok_or_else(bad)?;
        let count = count
            .trim()
            .parse::<std::num::NonZeroU32>()
            .map_err(|_| bad())?;
        let period = period.trim();
        // `s`, `m`, `h` alone mean one of them.
        let period = if matches!(period, "s" | "m" | "h" | "d") {
            format!("1{period}")
        } else {
            period.to_owned()
        };
        let per = humantime::parse_duration(&period).map_err(|_| bad())?;
        if per.is_zero() || per > Duration::from_secs(7 * 24 * 3600) {
            return Err(bad());
        }
        Ok(Some(Self { count, per }))
    }
}

/// What one client or account may do. Every limit can be switched off (`off`, or 0 for the
/// connection caps), which the benchmark does; the defaults suit a public server.
#[derive(Debug, Clone)]
pub struct LimitSettings {
    /// Failed logins per account (`LOGIN_FAILURE_LIMIT`); past it, even the right password is
    /// refused until the bucket refills.
    pub login_failures: Option<Rate>,
    /// Register, login and password requests per client address (`AUTH_RATE_LIMIT`).
    pub auth_per_address: Option<Rate>,
    /// Messages a user may send, over every transport together (`SEND_RATE_LIMIT`).
    pub sends: Option<Rate>,
    /// Plugin runs for one sender writing to one BUSY user (`AUTO_REPLY_LIMIT`); past it the
    /// sender gets the fallback without the plugin (or the LLM) running.
    pub auto_replies_per_pair: Option<Rate>,
    /// Plugin runs for the whole server (`AUTO_REPLY_TOTAL_LIMIT`).
    pub auto_replies_total: Option<Rate>,
    /// Live WebSocket + Socket.IO connections per user (`MAX_CONNECTIONS_PER_USER`).
    pub connections_per_user: Option<usize>,
    /// Live connections in total, and Engine.IO sessions in total (`MAX_CONNECTIONS`).
    pub connections_total: Option<usize>,
    /// Password hashes computed at once (`PASSWORD_HASH_CONCURRENCY`).
    pub hash_concurrency: usize,
    /// How long a login or registration waits for a hashing slot before a 503
    /// (`PASSWORD_HASH_WAIT`).
    pub hash_wait: Duration,
}

impl Default for LimitSettings {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            login_failures: Some(Rate::new(5, Duration::from_secs(15 * 60))),
            auth_per_address: Some(Rate::new(60, Duration::from_secs(60))),
            sends: Some(Rate::new(30, Duration::from_secs(10))),
            auto_replies_per_pair: Some(Rate::new(10, Duration::from_secs(3600))),
            auto_replies_total: Some(Rate::new(1000, Duration::from_secs(3600))),
            connections_per_user: Some(20),
            connections_total: Some(10_000),
            // Half the CPUs: logins queue for their slot while sends keep the other half.
            hash_concurrency: (cpus / 2).max(1),
            hash_wait: Duration::from_secs(5),
        }
    }
}

/// The auto-responder for BUSY users.
#[derive(Debug, Clone)]
pub struct ResponderSettings {
    /// An OpenAI-compatible chat-completions endpoint; `None`: every auto-reply is the fallback.
    pub llm_api_url: Option<reqwest::Url>,
    pub llm_api_key: Option<Secret>,
    pub llm_model: String,
    /// From receipt of the message to the auto-reply, whatever happens.
    pub timeout: Duration,
    /// Sent when the plugin cannot answer in time.
    pub fallback_message: String,
    /// Where operator plugins live (`<name>.wasm` + `<name>.toml`), watched for changes.
    pub plugins_dir: Option<PathBuf>,
    /// The plugin that answers; the built-in `llm-responder` unless set.
    pub plugin: String,
    /// Hosts plugins may call (exact names or `*.example.com`, with optional ports), besides
    /// the LLM's.
    pub allowed_hosts: Vec<HostPattern>,
    /// A plugin that fails this many calls in a row is benched (`None`: never).
    pub bench_after: Option<u32>,
    /// ... for this long; then it gets one call to prove itself.
    pub bench_for: Duration,
}

pub const DEFAULT_FALLBACK_MESSAGE: &str =
    "This user is unavailable right now. Your message was delivered and they will see it later.";
pub const BUILTIN_PLUGIN: &str = "llm-responder";

impl Default for ResponderSettings {
    fn default() -> Self {
        Self {
            llm_api_url: None,
            llm_api_key: None,
            llm_model: "gpt-4o-mini".into(),
            timeout: Duration::from_secs(10),
            fallback_message: DEFAULT_FALLBACK_MESSAGE.into(),
            plugins_dir: None,
            plugin: BUILTIN_PLUGIN.into(),
            allowed_hosts: Vec::new(),
            bench_after: Some(5),
            bench_for: Duration::from_secs(60),
        }
    }
}

/// A credential from the environment; `Debug` never shows it.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Self(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Where the MongoDB store lives.
#[derive(Debug, Clone)]
pub struct MongoSettings {
    pub uri: MongoUri,
    /// Overrides the database named in the URI's path (tests use a fresh one each);
    /// `None`: the URI's database, else `palaver`.
    pub database: Option<String>,
}

/// A `mongodb://` or `mongodb+srv://` connection string. It may carry a password, so `Debug`
/// and [`MongoUri::redacted`] show it with the password replaced by `***`.
#[derive(Clone)]
pub struct MongoUri(Secret);

impl MongoUri {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let uri = Self(Secret::new(raw.trim().to_owned()));
        let scheme_ok = ["mongodb://", "mongodb+srv://"]
            .iter()
            .any(|scheme| uri.expose().starts_with(scheme));
        if !scheme_ok {
            return Err(format!(
                "must start with mongodb:// or mongodb+srv://, got {:?}",
                uri.redacted()
            ));
        }
        Ok(uri)
    }

    pub fn expose(&self) -> &str {
        self.0.expose()
    }

    /// The password, if the URI has one (used to scrub it from driver messages too).
    pub fn password(&self) -> Option<&str> {
        let (start, end) = self.password_span()?;
        Some(&self.expose()[start..end])
    }

    /// The URI with its password (if any) replaced by `***`: safe for logs and errors.
    pub fn redacted(&self) -> String {
        let raw = self.expose();
        match self.password_span() {
            Some((start, end)) => format!("{}***{}", &raw[..start], &raw[end..]),
            None => raw.to_owned(),
        }
    }

    /// Scrubs the password from any text, e.g. an error the driver built from the URI.
    pub fn scrub(&self, text: &str) -> String {
        match self.password() {
            Some(password) if !password.is_empty() => text.replace(password, "***"),
            _ => text.to_owned(),
        }
    }

    /// Byte range of the password: `scheme://user:PASSWORD@hosts/...`. The userinfo is taken to
    /// end at the *last* `@`, so a password with an unescaped `@`, `/` or `?` (a common mistake)
    /// is still hidden; at worst some harmless text after it is hidden too.
    fn password_span(&self) -> Option<(usize, usize)> {
        let raw = self.expose();
        let userinfo_start = raw.find("://")? + 3;
        let userinfo_end = raw.rfind('@').filter(|&at| at > userinfo_start)?;
        let colon = raw[userinfo_start..userinfo_end].find(':')?;
        Some((userinfo_start + colon + 1, userinfo_end))
    }
}

impl std::fmt::Debug for MongoUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MongoUri({})", self.redacted())
    }
}

/// SQLite's `synchronous` setting in WAL mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SqliteSynchronous {
    /// fsync on every commit: an answered send survives a power cut. The default.
    #[default]
    Full,
    /// fsync only at checkpoints: an answered send survives a crash of the server, but the
    /// last moment of writes may be lost if the machine loses power. Much lower latency.
    Normal,
}

impl SqliteSynchronous {
    pub fn as_pragma(self) -> &'static str {
        match self {
            Self::Full => "FULL",
            Self::Normal => "NORMAL",
        }
    }
}

/// Live-connection limits. Not read from the environment: the defaults suit production, and
/// tests shorten them.
#[derive(Debug, Clone)]
pub struct RealtimeSettings {
    /// Pushes waiting for one connection; when full, that connection is closed.
    pub queue_capacity: usize,
    /// How often the server pings each connection.
    pub ping_interval: Duration,
    /// A connection that has sent nothing (not even a pong) for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for RealtimeSettings {
    fn default() -> Self {
        Self {
            queue_capacity: 256,
            ping_interval: Duration::from_secs(25),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// The HMAC key for tokens. Its `Debug` is redacted so a logged `Config` never leaks it.
#[derive(Clone)]
pub struct JwtSecret(Vec<u8>);

impl JwtSecret {
    pub fn new(bytes: Vec<u8>) -> Result<Self, String> {
        if bytes.len() < MIN_JWT_SECRET_BYTES {
            return Err(format!(
                "must be at least {MIN_JWT_SECRET_BYTES} bytes long (got {})",
                bytes.len()
            ));
        }
        Ok(Self(bytes))
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for JwtSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtSecret(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid configuration: {variable} {problem}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub problem: String,
}

impl Config {
    /// Reads `.env` (if present; real environment variables win) and then the environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        // A missing .env is normal; a malformed one is worth saying but not fatal.
        if let Err(e) = dotenvy::dotenv()
            && !e.not_found()
        {
            eprintln!("palaver: ignoring unreadable .env file: {e}");
        }
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Builds the configuration from any key/value source, so tests need not touch the
    /// process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());

        let host = match get("HOST") {
            None => IpAddr::from([0, 0, 0, 0]),
            Some(raw) => raw.trim().parse().map_err(|_| ConfigError {
                variable: "HOST",
                problem: format!("must be an IP address such as 0.0.0.0 or 127.0.0.1, got {raw:?}"),
            })?,
        };
        let port = match get("PORT") {
            None => 3000,
            Some(raw) => raw.trim().parse().map_err(|_| ConfigError {
                variable: "PORT",
                problem: format!("must be a port number between 0 and 65535, got {raw:?}"),
            })?,
        };
        let jwt_secret = get("JWT_SECRET")
            .map(|raw| JwtSecret::new(raw.into_bytes()))
            .transpose()
            .map_err(|problem| ConfigError {
                variable: "JWT_SECRET",
                problem,
            })?;
        let token_ttl = match get("TOKEN_TTL") {
            None => Duration::from_secs(24 * 60 * 60),
            Some(raw) => parse_ttl(&raw).ok_or_else(|| ConfigError {
                variable: "TOKEN_TTL",
                problem: format!(
                    "must be a duration from 1 second to 365 days, such as 3600, 90m, 24h or \
                     7d, got {raw:?}"
                ),
            })?,
        };
        let data_dir = get("DATA_DIR").map_or_else(|| PathBuf::from("./data"), PathBuf::from);
        let sqlite_synchronous = match get("SQLITE_SYNCHRONOUS").map(|v| v.trim().to_lowercase()) {
            None => SqliteSynchronous::default(),
            Some(v) if v == "full" => SqliteSynchronous::Full,
            Some(v) if v == "normal" => SqliteSynchronous::Normal,
            Some(other) => {
                return Err(ConfigError {
                    variable: "SQLITE_SYNCHRONOUS",
                    problem: format!("must be \"full\" or \"normal\", got {other:?}"),
                });
            }
        };

        let mongodb = get("MONGODB_URI")
            .map(|raw| MongoUri::parse(&raw))
            .transpose()
            .map_err(|problem| ConfigError {
                variable: "MONGODB_URI",
                problem,
            })?
            .map(|uri| MongoSettings {
                uri,
                database: None,
            });

        let responder = responder_settings(&get)?;
        let limits = limit_settings(&get)?;
        let cors = match get("CORS_ALLOWED_ORIGINS") {
            None => AllowedOrigins::default(),
            Some(raw) => AllowedOrigins::parse(&raw).map_err(|problem| ConfigError {
                variable: "CORS_ALLOWED_ORIGINS",
                problem,
            })?,
        };
        let metrics_addr = get("METRICS_ADDR")
            .map(|raw| {
                raw.trim().parse::<SocketAddr>().map_err(|_| ConfigError {
                    variable: "METRICS_ADDR",
                    problem: format!(
                        "must be an address and port such as 127.0.0.1:9100, got {raw:?}"
                    ),
                })
            })
            .transpose()?;

        let cluster = match get("NATS_URL") {
            None => None,
            Some(raw) => {
                let nats_url = NatsUrl::parse(&raw).map_err(|problem| ConfigError {
                    variable: "NATS_URL",
                    problem,
                })?;
                // A generated secret or an embedded file would differ on every node.
                if mongodb.is_none() {
                    return Err(ConfigError {
                        variable: "MONGODB_URI",
                        problem: "must be set when NATS_URL is: the nodes of a cluster share \
                                  one MongoDB database"
                            .to_owned(),
                    });
                }
                if jwt_secret.is_none() {
                    return Err(ConfigError {
                        variable: "JWT_SECRET",
                        problem: "must be set when NATS_URL is: every node must sign and check \
                                  tokens with the same secret"
                            .to_owned(),
                    });
                }
                let node_id = match get("NODE_ID") {
                    None => generated_node_id(),
                    Some(raw) => parse_node_id(&raw).map_err(|problem| ConfigError {
                        variable: "NODE_ID",
                        problem,
                    })?,
                };
                let subject_prefix = match get("NATS_SUBJECT_PREFIX") {
                    None => "palaver".to_owned(),
                    Some(raw) => parse_subject_prefix(&raw).map_err(|problem| ConfigError {
                        variable: "NATS_SUBJECT_PREFIX",
                        problem,
                    })?,
                };
                Some(ClusterSettings {
                    nats_url,
                    node_id,
                    subject_prefix,
                })
            }
        };

        Ok(Self {
            host,
            port,
            jwt_secret,
            token_ttl,
            data_dir,
            sqlite_synchronous,
            mongodb,
            realtime: RealtimeSettings::default(),
            responder,
            limits,
            cors,
            metrics_addr,
            cluster,
        })
    }
}

fn limit_settings(get: &impl Fn(&str) -> Option<String>) -> Result<LimitSettings, ConfigError> {
    let defaults = LimitSettings::default();
    let rate = |variable: &'static str, default: Option<Rate>| match get(variable) {
        None => Ok(default),
        Some(raw) => Rate::parse(&raw).map_err(|problem| ConfigError { variable, problem }),
    };
    let cap = |variable: &'static str, default: Option<usize>| match get(variable) {
        None => Ok(default),
        Some(raw) => raw
            .trim()
            .parse::<usize>()
            .map(|n| (n > 0).then_some(n))
            .map_err(|_| ConfigError {
                variable,
                problem: format!("must be a whole number (0: no limit), got {raw:?}"),
            }),
    };
    let hash_concurrency = match get("PASSWORD_HASH_CONCURRENCY") {
        None => defaults.hash_concurrency,
        Some(raw) => raw
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=256).contains(n))
            .ok_or_else(|| ConfigError {
                variable: "PASSWORD_HASH_CONCURRENCY",
                problem: format!("must be between 1 and 256, got {raw:?}"),
            })?,
    };
    let hash_wait = match get("PASSWORD_HASH_WAIT") {
        None => defaults.hash_wait,
        Some(raw) => parse_ttl(&raw)
            .filter(|wait| *wait <= Duration::from_secs(60))
            .ok_or_else(|| ConfigError {
                variable: "PASSWORD_HASH_WAIT",
                problem: format!("must be a duration from 1s to 60s, got {raw:?}"),
            })?,
    };
    Ok(LimitSettings {
        login_failures: rate("LOGIN_FAILURE_LIMIT", defaults.login_failures)?,
        auth_per_address: rate("AUTH_RATE_LIMIT", defaults.auth_per_address)?,
        sends: rate("SEND_RATE_LIMIT", defaults.sends)?,
        auto_replies_per_pair: rate("AUTO_REPLY_LIMIT", defaults.auto_replies_per_pair)?,
        auto_replies_total: rate("AUTO_REPLY_TOTAL_LIMIT", defaults.auto_replies_total)?,
        connections_per_user: cap("MAX_CONNECTIONS_PER_USER", defaults.connections_per_user)?,
        connections_total: cap("MAX_CONNECTIONS", defaults.connections_total)?,
        hash_concurrency,
        hash_wait,
    })
}

fn responder_settings(
    get: &impl Fn(&str) -> Option<String>,
) -> Result<ResponderSettings, ConfigError> {
    let defaults = ResponderSettings::default();
    let llm_api_url = match get("LLM_API_URL") {
        None => None,
        Some(raw) => {
            let url = reqwest::Url::parse(raw.trim())
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
                .ok_or_else(|| ConfigError {
                    variable: "LLM_API_URL",
                    problem:
                        "must be an http(s) URL such as https://api.openai.com/v1/chat/completions"
                            .into(),
                })?;
            Some(url)
        }
    };
    let timeout = match get("RESPONDER_TIMEOUT_MS") {
        None => defaults.timeout,
        Some(raw) => raw
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|ms| (100..=120_000).contains(ms))
            .map(Duration::from_millis)
            .ok_or_else(|| ConfigError {
                variable: "RESPONDER_TIMEOUT_MS",
                problem: format!("must be milliseconds between 100 and 120000, got {raw:?}"),
            })?,
    };
    let fallback_message = match get("FALLBACK_MESSAGE") {
        None => defaults.fallback_message,
        Some(text) => crate::domain::Content::parse(text)
            .map_err(|e| ConfigError {
                variable: "FALLBACK_MESSAGE",
                problem: e.to_string(),
            })?
            .into_string(),
    };
    let plugin = get("RESPONDER_PLUGIN").map_or(defaults.plugin, |p| p.trim().to_owned());
    let bench_after = match get("PLUGIN_BENCH_AFTER") {
        None => defaults.bench_after,
        Some(raw) => raw
            .trim()
            .parse::<u32>()
            .map(|n| (n > 0).then_some(n))
            .map_err(|_| ConfigError {
                variable: "PLUGIN_BENCH_AFTER",
                problem: format!("must be a whole number of failures (0: never), got {raw:?}"),
            })?,
    };
    let bench_for = match get("PLUGIN_BENCH_FOR") {
        None => defaults.bench_for,
        Some(raw) => parse_ttl(&raw)
            .filter(|d| *d <= Duration::from_secs(24 * 60 * 60))
            .ok_or_else(|| ConfigError {
                variable: "PLUGIN_BENCH_FOR",
                problem: format!(
                    "must be a duration from 1s to 24h, such as 60s or 5m, got {raw:?}"
                ),
            })?,
    };
    Ok(ResponderSettings {
        bench_after,
        bench_for,
        llm_api_url,
        llm_api_key: get("LLM_API_KEY").map(|k| Secret::new(k.trim().to_owned())),
        llm_model: get("LLM_MODEL").map_or(defaults.llm_model, |m| m.trim().to_owned()),
        timeout,
        fallback_message,
        plugins_dir: get("PLUGINS_DIR").map(PathBuf::from),
        plugin,
        allowed_hosts: get("PLUGIN_ALLOWED_HOSTS")
            .map(|list| {
                list.split(',')
                    .map(str::trim)
                    .filter(|h| !h.is_empty())
                    .map(HostPattern::parse)
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()
            .map_err(|problem| ConfigError {
                variable: "PLUGIN_ALLOWED_HOSTS",
                problem,
            })?
            .unwrap_or_default(),
    })
}

/// Plain seconds (`3600`) or a humantime duration (`90m`, `24h`, `7d`).
fn parse_ttl(raw: &str) -> Option<Duration> {
    let raw = raw.trim();
    let ttl = match raw.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => humantime::parse_duration(raw).ok()?,
    };
    (Duration::from_secs(1)..=MAX_TOKEN_TTL)
        .contains(&ttl)
        .then_some(ttl)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|name| vars.get(name).cloned())
    }

    #[test]
    fn defaults_need_no_setup() {
        let config = config(&[]).expect("defaults are valid");
        assert_eq!(config.port, 3000);
        assert_eq!(config.host, IpAddr::from([0, 0, 0, 0]));
        assert!(config.jwt_secret.is_none());
        assert_eq!(config.token_ttl, Duration::from_secs(86_400));
        assert_eq!(config.data_dir, PathBuf::from("./data"));
    }

    #[test]
    fn each_bad_value_names_its_variable() {
        for (name, value) in [
            ("PORT", "eighty"),
            ("PORT", "70000"),
            ("HOST", "localhost:3000"),
            ("JWT_SECRET", "too-short"),
            ("TOKEN_TTL", "soon"),
            ("TOKEN_TTL", "0"),
            ("TOKEN_TTL", "300000y"),
            ("TOKEN_TTL", "8000y"),
            ("TOKEN_TTL", "366d"),
            ("TOKEN_TTL", "99999999999999999999"),
            ("SQLITE_SYNCHRONOUS", "off"),
            ("MONGODB_URI", "localhost:27017"),
            ("MONGODB_URI", "postgres://db/palaver"),
            ("LLM_API_URL", "not a url"),
            ("LLM_API_URL", "ftp://example.com/x"),
            ("RESPONDER_TIMEOUT_MS", "ten seconds"),
            ("RESPONDER_TIMEOUT_MS", "5"),
            ("SEND_RATE_LIMIT", "lots"),
            ("SEND_RATE_LIMIT", "0/s"),
            ("LOGIN_FAILURE_LIMIT", "5/0s"),
            ("AUTH_RATE_LIMIT", "10/forever"),
            ("MAX_CONNECTIONS", "-1"),
            ("PASSWORD_HASH_CONCURRENCY", "0"),
            ("PASSWORD_HASH_WAIT", "5m"),
        ] {
            let err = config(&[(name, value)]).expect_err(name);
            assert_eq!(err.variable, name);
            assert!(err.to_string().contains(name), "{err}");
        }
    }

    #[test]
    fn limits_parse_and_switch_off() {
        let limits = config(&[
            ("SEND_RATE_LIMIT", "off"),
            ("AUTH_RATE_LIMIT", "10/s"),
            ("LOGIN_FAILURE_LIMIT", "3/15m"),
            ("MAX_CONNECTIONS_PER_USER", "0"),
        ])
        .expect("valid")
        .limits;
        assert_eq!(limits.sends, None);
        assert_eq!(
            limits.auth_per_address,
            Some(Rate::new(10, Duration::from_secs(1)))
        );
        assert_eq!(
            limits.login_failures,
            Some(Rate::new(3, Duration::from_secs(900)))
        );
        assert_eq!(limits.connections_per_user, None);
        assert_eq!(limits.connections_total, Some(10_000));
    }

    #[test]
    fn a_rejected_secret_is_not_echoed() {
        let err = config(&[("JWT_SECRET", "hunter2")]).expect_err("short");
        assert!(!err.to_string().contains("hunter2"));
    }

    #[test]
    fn accepts_durations_in_several_forms() {
        for (raw, secs) in [
            ("3600", 3600),
            ("90m", 5400),
            ("24h", 86_400),
            ("7d", 604_800),
            ("365d", 31_536_000),
        ] {
            let config = config(&[("TOKEN_TTL", raw)]).expect(raw);
            assert_eq!(config.token_ttl, Duration::from_secs(secs));
        }
    }

    #[test]
    fn responder_defaults_and_settings() {
        let defaults = config(&[]).expect("defaults").responder;
        assert_eq!(defaults.timeout, Duration::from_secs(10));
        assert!(defaults.llm_api_url.is_none());
        assert_eq!(defaults.plugin, BUILTIN_PLUGIN);
        let set = config(&[
            ("LLM_API_URL", "http://127.0.0.1:9/v1/chat/completions"),
            ("LLM_API_KEY", "sk-test"),
            ("PLUGIN_ALLOWED_HOSTS", "api.example.com, *.models.dev"),
            ("RESPONDER_TIMEOUT_MS", "2500"),
        ])
        .expect("valid")
        .responder;
        assert_eq!(set.timeout, Duration::from_millis(2500));
        let hosts: Vec<String> = set.allowed_hosts.iter().map(|h| h.to_string()).collect();
        assert_eq!(hosts, ["api.example.com", "*.models.dev"]);
        let bad = config(&[("PLUGIN_ALLOWED_HOSTS", "api.example.com, https://x.com/")]);
        assert_eq!(bad.err().map(|e| e.variable), Some("PLUGIN_ALLOWED_HOSTS"));
        assert!(!format!("{set:?}").contains("sk-test"));
    }

    #[test]
    fn mongodb_uris_never_show_their_password() {
        for (raw, redacted) in [
            (
                "mongodb://palaver:s3cret@db.example.com:27017/chat?authSource=admin",
                "mongodb://palaver:***@db.example.com:27017/chat?authSource=admin",
            ),
            (
                "mongodb+srv://app:p@ss:w0rd@cluster0.example.net/?retryWrites=true",
                "mongodb+srv://app:***@cluster0.example.net/?retryWrites=true",
            ),
            ("mongodb://127.0.0.1:27017", "mongodb://127.0.0.1:27017"),
            ("mongodb://justauser@host/db", "mongodb://justauser@host/db"),
            ("mongodb://u:pa/ss?x@host/db", "mongodb://u:***@host/db"),
        ] {
            let uri = MongoUri::parse(raw).expect(raw);
            assert_eq!(uri.redacted(), redacted);
            assert_eq!(format!("{uri:?}"), format!("MongoUri({redacted})"));
        }
        let uri = MongoUri::parse("mongodb://u:hunter22@h/").expect("valid");
        assert_eq!(
            uri.scrub("auth failed for u:hunter22"),
            "auth failed for u:***"
        );
        let err = config(&[("MONGODB_URI", "mongo://u:hunter22@h/")]).expect_err("bad scheme");
        assert_eq!(err.variable, "MONGODB_URI");
        assert!(!err.to_string().contains("hunter22"), "{err}");
        let set = config(&[("MONGODB_URI", "mongodb://u:hunter22@h/")]).expect("valid");
        assert!(!format!("{set:?}").contains("hunter22"));
        assert!(config(&[]).expect("defaults").mongodb.is_none());
    }

    #[test]
    fn debug_output_redacts_the_secret() {
        let secret = "s".repeat(40);
        let config = config(&[("JWT_SECRET", &secret)]).expect("valid");
        assert!(!format!("{config:?}").contains(&secret));
    }

    #[test]
    fn a_cluster_node_needs_a_shared_database_and_secret() {
        let nats = ("NATS_URL", "nats://127.0.0.1:4222");
        let mongo = ("MONGODB_URI", "mongodb://127.0.0.1:27017/chat");
        let secret = ("JWT_SECRET", "0123456789abcdef0123456789abcdef");
        assert!(config(&[]).expect("single node").cluster.is_none());
        assert_eq!(
            config(&[nats, secret]).err().map(|e| e.variable),
            Some("MONGODB_URI")
        );
        assert_eq!(
            config(&[nats, mongo]).err().map(|e| e.variable),
            Some("JWT_SECRET")
        );
        let cluster = config(&[nats, mongo, secret, ("NODE_ID", "eu-1")])
            .expect("cluster")
            .cluster
            .expect("cluster settings");
        assert_eq!(cluster.node_id, "eu-1");
        assert_eq!(cluster.subject_prefix, "palaver");
        let generated = config(&[nats, mongo, secret]).expect("cluster").cluster;
        assert!(generated.is_some_and(|c| parse_node_id(&c.node_id).is_ok()));
        for (variable, bad) in [
            ("NATS_URL", "http://127.0.0.1:4222"),
            ("NATS_URL", "nats://a:4222,"),
            ("NODE_ID", "eu 1"),
            ("NATS_SUBJECT_PREFIX", "chat.>"),
            ("NATS_SUBJECT_PREFIX", "chat..x"),
        ] {
            let mut vars = vec![nats, mongo, secret];
            vars.retain(|(name, _)| *name != variable);
            vars.push((variable, bad));
            assert_eq!(
                config(&vars).err().map(|e| e.variable),
                Some(variable),
                "{bad}"
            );
        }
    }

    #[test]
    fn nats_credentials_never_show() {
        let url = NatsUrl::parse("nats://user:s3cret@a:4222, tls://tok3n@b:4222").expect("url");
        assert_eq!(url.redacted(), "nats://***@a:4222,tls://***@b:4222");
        assert!(!format!("{url:?}").contains("s3cret"));
        let refused = NatsUrl::parse("http://user:s3cret@a")
            .err()
            .unwrap_or_default();
        assert!(!refused.contains("s3cret"), "{refused}");
    }
}
