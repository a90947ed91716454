//! A circuit breaker per plugin ("benching" to operators and in the API): a plugin that fails
//! `bench_after` calls in a row is benched (the circuit opens) for `bench_for`, and the users it
//! answers for get the fallback at once, without it running. When the time is up it gets one
//! call (half-open); a success puts it back, a failure benches it again. A plugin loaded anew (a
//! new file) starts with a clean record.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::wasm::LoadedPlugin;

/// Plugin errors can be long (a trap's backtrace) and are written by the plugin: keep a line.
const MAX_ERROR_CHARS: usize = 300;

#[derive(Default)]
struct Record {
    /// Which load of the plugin this record is about ([`LoadedPlugin::load_id`]).
    load: u64,
    consecutive_failures: u32,
    benched_until: Option<Instant>,
    last_error: Option<String>,
}

/// What `GET /api/plugins` shows about a plugin's health.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
    /// Set while the plugin sits out.
    pub benched_until: Option<DateTime<Utc>>,
}

pub struct CircuitBreaker {
    after: Option<u32>,
    cool_down: Duration,
    records: Mutex<HashMap<String, Record>>,
}

impl CircuitBreaker {
    pub fn new(after: Option<u32>, cool_down: Duration) -> Self {
        Self {
            after,
            cool_down,
            records: Mutex::new(HashMap::new()),
        }
    }

    fn with_record<T>(&self, plugin: &Arc<LoadedPlugin>, f: impl FnOnce(&mut Record) -> T) -> T {
        let mut records = crate::sync::lock(&self.records);
        let load = plugin.load_id();
        let record = records.entry(plugin.manifest.name.clone()).or_default();
        if record.load != load {
            *record = Record {
                load,
                ..Record::default()
            };
        }
        f(record)
    }

    /// Whether the plugin sits out now.
    pub fn is_benched(&self, plugin: &Arc<LoadedPlugin>) -> bool {
        self.with_record(plugin, |r| {
            r.benched_until.is_some_and(|t| t > Instant::now())
        })
    }

    pub fn succeeded(&self, plugin: &Arc<LoadedPlugin>) {
        self.with_record(plugin, |r| {
            r.consecutive_failures = 0;
            r.benched_until = None;
        });
    }

    pub fn failed(&self, plugin: &Arc<LoadedPlugin>, error: &str) {
        let benched = self.with_record(plugin, |r| {
            r.consecutive_failures = r.consecutive_failures.saturating_add(1);
            r.last_error = Some(error.chars().take(MAX_ERROR_CHARS).collect());
            let limit = self.after?;
            (r.consecutive_failures >= limit).then(|| {
                r.benched_until = Some(Instant::now() + self.cool_down);
                r.consecutive_failures
            })
        });
        if let Some(failures) = benched {
            tracing::warn!(
                plugin = %plugin.manifest.name,
                failures,
                cool_down_s = self.cool_down.as_secs_f64(),
                "plugin benched after failing repeatedly: as a responder its users get the fallback, as a moderator its on_failure applies, until the cool-down ends"
            );
        }
    }

    pub fn health(&self, plugin: &Arc<LoadedPlugin>) -> Health {
        self.with_record(plugin, |r| {
            let now = Instant::now();
            Health {
                consecutive_failures: r.consecutive_failures,
                last_error: r.last_error.clone(),
                benched_until: r
                    .benched_until
                    .filter(|until| *until > now)
                    .and_then(|until| chrono::Duration::from_std(until - now).ok())
                    .map(|left| Utc::now() + left),
            }
        })
    }
}

/// Records a failure if dropped before [`Call::finish`]: the outer deadline cancelled the call.
pub struct Call<'a> {
    breaker: &'a CircuitBreaker,
    plugin: Arc<LoadedPlugin>,
    finished: bool,
}

impl<'a> Call<'a> {
    pub fn start(breaker: &'a CircuitBreaker, plugin: Arc<LoadedPlugin>) -> Self {
        Self {
            breaker,
            plugin,
            finished: false,
        }
    }

    /// `Err(reason)` counts as a failure; `Ok` (an answer, or declining) clears the record.
    pub fn finish(mut self, outcome: Result<(), &str>) {
        self.finished = true;
        match outcome {
            Ok(()) => self.breaker.succeeded(&self.plugin),
            Err(error) => self.breaker.failed(&self.plugin, error),
        }
    }
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.breaker.failed(
                &self.plugin,
                "the plugin was cut off at the responder's deadline",
            );
        }
    }
}
