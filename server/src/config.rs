//! Every setting, read once at start-up from the environment (and an optional `.env` file).
//! A bad value stops the server with one line that names the variable.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

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
    pub realtime: RealtimeSettings,
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
                    "must be a positive duration such as 3600, 90m, 24h or 7d, got {raw:?}"
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

        Ok(Self {
            host,
            port,
            jwt_secret,
            token_ttl,
            data_dir,
            sqlite_synchronous,
            realtime: RealtimeSettings::default(),
        })
    }
}

/// Plain seconds (`3600`) or a humantime duration (`90m`, `24h`, `7d`).
fn parse_ttl(raw: &str) -> Option<Duration> {
    let raw = raw.trim();
    let ttl = match raw.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => humantime::parse_duration(raw).ok()?,
    };
    (ttl >= Duration::from_secs(1)).then_some(ttl)
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
            ("SQLITE_SYNCHRONOUS", "off"),
        ] {
            let err = config(&[(name, value)]).expect_err(name);
            assert_eq!(err.variable, name);
            assert!(err.to_string().contains(name), "{err}");
        }
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
        ] {
            let config = config(&[("TOKEN_TTL", raw)]).expect(raw);
            assert_eq!(config.token_ttl, Duration::from_secs(secs));
        }
    }

    #[test]
    fn debug_output_redacts_the_secret() {
        let secret = "s".repeat(40);
        let config = config(&[("JWT_SECRET", &secret)]).expect("valid");
        assert!(!format!("{config:?}").contains(&secret));
    }
}
