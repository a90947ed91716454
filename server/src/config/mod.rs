//! Every setting, read once at start-up from the environment (and an optional `.env` file).
//! A bad value stops the server with one line that names the variable.
//!
//! This file holds [`Config`] itself, the settings that belong to no group, and the order they
//! are read in; each group (limits, the responder, the cluster, secrets, host patterns, CORS
//! origins) lives in its own file with its parsing, and every variable is read through
//! `env.rs`, one line each.

mod cluster;
mod env;
mod hosts;
mod limits;
mod origins;
mod responder;
mod secrets;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

pub use cluster::{ClusterSettings, NatsUrl};
pub use hosts::HostPattern;
pub use limits::{LimitSettings, Rate};
pub use origins::AllowedOrigins;
pub use responder::{BUILTIN_PLUGIN, DEFAULT_FALLBACK_MESSAGE, OnFailure, ResponderSettings};
pub use secrets::{JwtSecret, MongoSettings, MongoUri, Secret};

use env::Env;

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
        let env = Env::new(&lookup);

        let host = env.var("HOST", IpAddr::from([0, 0, 0, 0]), parse_host)?;
        let port = env.var("PORT", 3000, parse_port)?;
        let jwt_secret =
            env.optional("JWT_SECRET", |raw| JwtSecret::new(raw.as_bytes().to_vec()))?;
        let token_ttl = env.var(
            "TOKEN_TTL",
            Duration::from_secs(24 * 60 * 60),
            parse_token_ttl,
        )?;
        let data_dir = env.var("DATA_DIR", PathBuf::from("./data"), parse_path)?;
        let sqlite_synchronous = env.var(
            "SQLITE_SYNCHRONOUS",
            SqliteSynchronous::default(),
            parse_sqlite_synchronous,
        )?;

        let mongodb = env
            .optional("MONGODB_URI", MongoUri::parse)?
            .map(|uri| MongoSettings {
                uri,
                database: None,
            });

        let responder = ResponderSettings::read(&env, &data_dir)?;
        let limits = LimitSettings::read(&env)?;
        let cors = env.var(
            "CORS_ALLOWED_ORIGINS",
            AllowedOrigins::default(),
            AllowedOrigins::parse,
        )?;
        let metrics_addr = env.optional("METRICS_ADDR", parse_socket_addr)?;

        let cluster = match env.optional("NATS_URL", NatsUrl::parse)? {
            None => None,
            Some(nats_url) => {
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
                Some(ClusterSettings::read(&env, nats_url)?)
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

/// `HOST`: an IP address to listen on.
fn parse_host(raw: &str) -> Result<IpAddr, String> {
    raw.trim()
        .parse()
        .map_err(|_| format!("must be an IP address such as 0.0.0.0 or 127.0.0.1, got {raw:?}"))
}

/// `PORT`: 0 to 65535.
fn parse_port(raw: &str) -> Result<u16, String> {
    raw.trim()
        .parse()
        .map_err(|_| format!("must be a port number between 0 and 65535, got {raw:?}"))
}

/// `TOKEN_TTL`: see [`parse_ttl`].
fn parse_token_ttl(raw: &str) -> Result<Duration, String> {
    parse_ttl(raw).ok_or_else(|| {
        format!(
            "must be a duration from 1 second to 365 days, such as 3600, 90m, 24h or \
             7d, got {raw:?}"
        )
    })
}

/// `SQLITE_SYNCHRONOUS`: `full` or `normal`, in any case.
fn parse_sqlite_synchronous(raw: &str) -> Result<SqliteSynchronous, String> {
    match raw.trim().to_lowercase() {
        v if v == "full" => Ok(SqliteSynchronous::Full),
        v if v == "normal" => Ok(SqliteSynchronous::Normal),
        other => Err(format!("must be \"full\" or \"normal\", got {other:?}")),
    }
}

/// `METRICS_ADDR`: an address and a port.
fn parse_socket_addr(raw: &str) -> Result<SocketAddr, String> {
    raw.trim()
        .parse::<SocketAddr>()
        .map_err(|_| format!("must be an address and port such as 127.0.0.1:9100, got {raw:?}"))
}

/// A directory, taken as given.
fn parse_path(raw: &str) -> Result<PathBuf, String> {
    Ok(PathBuf::from(raw))
}

/// Any text, trimmed.
fn parse_trimmed(raw: &str) -> Result<String, String> {
    Ok(raw.trim().to_owned())
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
    use crate::config::cluster::parse_node_id;
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
}
