//! What one client or account may do: [`Rate`] (`N/period`, or `off`), the caps, and the
//! password-hashing budget, with their defaults and how each `*_LIMIT`, `MAX_CONNECTIONS*` and
//! `PASSWORD_HASH_*` variable is read. The top-level `limits` module enforces them.

use std::time::Duration;

use super::ConfigError;
use super::env::Env;
use super::parse_ttl;

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
    /// Groups one user may create (`GROUP_CREATE_LIMIT`).
    pub groups_created: Option<Rate>,
    /// Members a group may hold, its owner included (`MAX_GROUP_MEMBERS`).
    pub max_group_members: usize,
    /// Typing notices relayed per user per conversation (`TYPING_LIMIT`); the excess is
    /// dropped.
    pub typing: Option<Rate>,
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
            groups_created: Some(Rate::new(20, Duration::from_secs(3600))),
            max_group_members: crate::domain::DEFAULT_MAX_GROUP_MEMBERS,
            typing: Some(Rate::new(1, Duration::from_secs(2))),
            // Half the CPUs: logins queue for their slot while sends keep the other half.
            hash_concurrency: (cpus / 2).max(1),
            hash_wait: Duration::from_secs(5),
        }
    }
}

impl LimitSettings {
    pub(super) fn read(env: &Env<'_>) -> Result<Self, ConfigError> {
        let defaults = Self::default();
        let hash_concurrency = env.var(
            "PASSWORD_HASH_CONCURRENCY",
            defaults.hash_concurrency,
            parse_hash_concurrency,
        )?;
        let hash_wait = env.var("PASSWORD_HASH_WAIT", defaults.hash_wait, parse_hash_wait)?;
        Ok(Self {
            login_failures: env.var("LOGIN_FAILURE_LIMIT", defaults.login_failures, Rate::parse)?,
            auth_per_address: env.var("AUTH_RATE_LIMIT", defaults.auth_per_address, Rate::parse)?,
            sends: env.var("SEND_RATE_LIMIT", defaults.sends, Rate::parse)?,
            auto_replies_per_pair: env.var(
                "AUTO_REPLY_LIMIT",
                defaults.auto_replies_per_pair,
                Rate::parse,
            )?,
            auto_replies_total: env.var(
                "AUTO_REPLY_TOTAL_LIMIT",
                defaults.auto_replies_total,
                Rate::parse,
            )?,
            connections_per_user: env.var(
                "MAX_CONNECTIONS_PER_USER",
                defaults.connections_per_user,
                parse_cap,
            )?,
            connections_total: env.var("MAX_CONNECTIONS", defaults.connections_total, parse_cap)?,
            groups_created: env.var("GROUP_CREATE_LIMIT", defaults.groups_created, Rate::parse)?,
            max_group_members: env.var(
                "MAX_GROUP_MEMBERS",
                defaults.max_group_members,
                parse_group_size,
            )?,
            typing: env.var("TYPING_LIMIT", defaults.typing, Rate::parse)?,
            hash_concurrency,
            hash_wait,
        })
    }
}

/// A connection cap: a whole number, 0 for none.
fn parse_cap(raw: &str) -> Result<Option<usize>, String> {
    raw.trim()
        .parse::<usize>()
        .map(|n| (n > 0).then_some(n))
        .map_err(|_| format!("must be a whole number (0: no limit), got {raw:?}"))
}

/// `MAX_GROUP_MEMBERS`: 2 to 100,000 (a group's pushes fan out to every member's devices).
fn parse_group_size(raw: &str) -> Result<usize, String> {
    raw.trim()
        .parse::<usize>()
        .ok()
        .filter(|n| (2..=100_000).contains(n))
        .ok_or_else(|| format!("must be between 2 and 100000, got {raw:?}"))
}

/// `PASSWORD_HASH_CONCURRENCY`: 1 to 256.
fn parse_hash_concurrency(raw: &str) -> Result<usize, String> {
    raw.trim()
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=256).contains(n))
        .ok_or_else(|| format!("must be between 1 and 256, got {raw:?}"))
}

/// `PASSWORD_HASH_WAIT`: 1s to 60s.
fn parse_hash_wait(raw: &str) -> Result<Duration, String> {
    parse_ttl(raw)
        .filter(|wait| *wait <= Duration::from_secs(60))
        .ok_or_else(|| format!("must be a duration from 1s to 60s, got {raw:?}"))
}
