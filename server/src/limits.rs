//! What one client may do: per-account failed logins, per-address auth requests, per-user
//! sends, auto-reply quotas and live-connection caps. Token buckets are `governor`'s (GCRA);
//! every limit is configurable and can be switched off (see `config::LimitSettings`).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::{LimitSettings, Rate};
use crate::domain::{ConversationId, Email, UserId};
use crate::failure::RetryAfter;

fn quota(rate: Rate) -> Quota {
    let period = rate.per / rate.count.get();
    Quota::with_period(period.max(Duration::from_nanos(1)))
        .unwrap_or_else(|| Quota::per_second(rate.count))
        .allow_burst(rate.count)
}

struct Keyed<K: Hash + Eq + Clone> {
    limiter: DefaultKeyedRateLimiter<K>,
    clock: DefaultClock,
}

impl<K: Hash + Eq + Clone> Keyed<K> {
    fn new(rate: Rate) -> Self {
        Self {
            limiter: RateLimiter::keyed(quota(rate)),
            clock: DefaultClock::default(),
        }
    }

    fn check(&self, key: &K) -> Result<(), RetryAfter> {
        self.limiter
            .check_key(key)
            .map_err(|not_until| RetryAfter(not_until.wait_time_from(self.clock.now())))
    }

    fn sweep(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

pub struct Limits {
    login_failures: Option<Keyed<Email>>,
    /// Accounts refused until the instant, after running out of failed logins.
    lockouts: Mutex<HashMap<Email, Instant>>,
    auth_per_address: Option<Keyed<IpAddr>>,
    sends: Option<Keyed<UserId>>,
    auto_replies_per_pair: Option<Keyed<(UserId, UserId)>>,
    auto_replies_total: Option<DefaultDirectRateLimiter>,
    groups_created: Option<Keyed<UserId>>,
    typing: Option<Keyed<(UserId, ConversationId)>>,
}

impl Limits {
    pub fn new(settings: &LimitSettings) -> Self {
        Self {
            login_failures: settings.login_failures.map(Keyed::new),
            lockouts: Mutex::new(HashMap::new()),
            auth_per_address: settings.auth_per_address.map(Keyed::new),
            sends: settings.sends.map(Keyed::new),
            auto_replies_per_pair: settings.auto_replies_per_pair.map(Keyed::new),
            auto_replies_total: settings
                .auto_replies_total
                .map(|rate| RateLimiter::direct(quota(rate))),
            groups_created: settings.groups_created.map(Keyed::new),
            typing: settings.typing.map(Keyed::new),
        }
    }

    /// One register/login/password request from `address` (IPv6 clients count per /64, which
    /// is what one subscriber usually gets).
    pub fn auth_request(&self, address: IpAddr) -> Result<(), RetryAfter> {
        check(
            "auth_per_address",
            &self.auth_per_address,
            &address_key(address),
        )
    }

    /// Whether `email` may try a password now (it may not while locked out).
    pub fn login_allowed(&self, email: &Email) -> Result<(), RetryAfter> {
        let mut lockouts = crate::sync::lock(&self.lockouts);
        match lockouts.get(email) {
            Some(until) if *until > Instant::now() => {
                crate::metrics::rate_limited("login_lockout");
                Err(RetryAfter(*until - Instant::now()))
            }
            Some(_) => {
                lockouts.remove(email);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Counts a wrong password for `email`; past the limit the account is locked out (this
    /// attempt included) until the bucket has room again.
    pub fn login_failed(&self, email: &Email) -> Result<(), RetryAfter> {
        check("login_failures", &self.login_failures, email).inspect_err(|wait| {
            let mut lockouts = crate::sync::lock(&self.lockouts);
            lockouts.insert(email.clone(), Instant::now() + wait.0);
        })
    }

    /// One new group by `user`.
    pub fn create_group(&self, user: UserId) -> Result<(), RetryAfter> {
        check("groups_created", &self.groups_created, &user)
    }

    /// Whether `user`'s typing notice in `conversation` is relayed.
    pub fn typing(&self, user: UserId, conversation: ConversationId) -> bool {
        check("typing", &self.typing, &(user, conversation)).is_ok()
    }

    pub fn send(&self, sender: UserId) -> Result<(), RetryAfter> {
        check("sends", &self.sends, &sender)
    }

    /// Whether the responder may run a plugin for `sender` writing to BUSY `recipient`.
    pub fn auto_reply(&self, sender: UserId, recipient: UserId) -> bool {
        check(
            "auto_replies_per_pair",
            &self.auto_replies_per_pair,
            &(sender, recipient),
        )
        .is_ok()
            && self.auto_replies_total.as_ref().is_none_or(|limiter| {
                let allowed = limiter.check().is_ok();
                if !allowed {
                    crate::metrics::rate_limited("auto_replies_total");
                }
                allowed
            })
    }

    /// Drops the state of keys that are back to a full bucket, so memory follows activity.
    pub fn sweep(&self) {
        if let Some(l) = &self.login_failures {
            l.sweep();
        }
        if let Some(l) = &self.auth_per_address {
            l.sweep();
        }
        if let Some(l) = &self.sends {
            l.sweep();
        }
        if let Some(l) = &self.auto_replies_per_pair {
            l.sweep();
        }
        if let Some(l) = &self.groups_created {
            l.sweep();
        }
        if let Some(l) = &self.typing {
            l.sweep();
        }
        let now = Instant::now();
        crate::sync::lock(&self.lockouts).retain(|_, until| *until > now);
    }
}

/// A limit that is switched off allows everything. `name` labels refusals in the metrics.
fn check<K: Hash + Eq + Clone>(
    name: &'static str,
    limiter: &Option<Keyed<K>>,
    key: &K,
) -> Result<(), RetryAfter> {
    limiter
        .as_ref()
        .map_or(Ok(()), |limiter| limiter.check(key))
        .inspect_err(|_| crate::metrics::rate_limited(name))
}

fn address_key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
        v4 => v4,
    }
}

/// Runs [`Limits::sweep`] every minute for as long as the limits exist.
pub fn sweep_periodically(limits: std::sync::Weak<Limits>) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs(60));
        loop {
            ticker.tick().await;
            match limits.upgrade() {
                Some(limits) => limits.sweep(),
                None => break,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn email(raw: &str) -> Email {
        Email::parse(raw).expect("valid")
    }

    fn limits(settings: LimitSettings) -> Limits {
        Limits::new(&settings)
    }

    #[test]
    fn failed_logins_lock_the_account_until_the_bucket_refills() {
        let limits = limits(LimitSettings {
            login_failures: Some(Rate::new(3, Duration::from_secs(600))),
            ..LimitSettings::default()
        });
        let alice = email("alice@example.com");
        for _ in 0..3 {
            assert!(limits.login_allowed(&alice).is_ok());
            assert!(limits.login_failed(&alice).is_ok());
        }
        let wait = limits.login_failed(&alice).expect_err("fourth failure");
        assert!(wait.0 > Duration::from_secs(100), "{wait:?}");
        assert!(limits.login_allowed(&alice).is_err(), "locked out");
        assert!(limits.login_allowed(&email("bob@example.com")).is_ok());
    }

    #[test]
    fn off_means_unlimited() {
        let limits = limits(LimitSettings {
            sends: None,
            ..LimitSettings::default()
        });
        let user = UserId::new();
        assert!((0..10_000).all(|_| limits.send(user).is_ok()));
    }

    #[test]
    fn ipv6_clients_share_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().expect("ip");
        assert_eq!(
            address_key(mapped),
            "10.0.0.1".parse::<IpAddr>().expect("ip")
        );
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(RetryAfter(Duration::from_millis(1)).seconds(), 1);
        assert_eq!(RetryAfter(Duration::from_secs(3)).seconds(), 3);
        assert_eq!(RetryAfter(Duration::from_millis(3001)).seconds(), 4);
        assert_eq!(RetryAfter(Duration::ZERO).seconds(), 1);
    }
}
