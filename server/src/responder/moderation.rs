//! The moderation chain (`MODERATION_PLUGINS`): every message, on every transport, goes through
//! the named moderators in order before anything is stored. Each runs under its own deadline
//! (manifest `timeout_ms`, default 100 ms, at most 1 s); a failure (trap, error, deadline,
//! benched, an invalid replacement, not loaded) means what its `on_failure` says, the operator's
//! `MODERATION_ON_FAILURE` first. So a send waits at most the sum of the chain's deadlines.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::config::{OnFailure, ResponderSettings};
use crate::domain::{Content, UserId};
use crate::messaging::{Destination, Draft, Moderator, Review};
use crate::metrics;
use crate::store::{Store, StoreError};
use crate::wasm::{self, LoadedPlugin, ModerateRequest, PluginHost, Verdict};

use super::breaker::{Call, CircuitBreaker};

/// A rejection's reason, as the sender sees it, is cut to this many characters.
pub const MAX_REASON_CHARS: usize = 200;
/// Said to the sender when a failing moderator's `on_failure` is `reject`.
pub const MODERATION_FAILED: &str = "This message could not be checked right now; try again later";
/// Said when a moderator rejects without a reason that survives cleaning.
pub const REJECTED_WITHOUT_REASON: &str = "This message was not accepted";
/// Senders' emails kept per node; past this many the memory starts afresh.
const EMAILS_KEPT: usize = 100_000;

pub struct Moderation {
    host: Arc<PluginHost>,
    store: Arc<dyn Store>,
    chain: Vec<String>,
    overrides: BTreeMap<String, OnFailure>,
    breaker: Arc<CircuitBreaker>,
    /// Senders' emails, for the moderators' requests. An email never changes (no route changes
    /// one, and ids are never reused), so a node reads each sender's once, not per message:
    /// that read was most of what the chain added to a send.
    emails: Mutex<HashMap<UserId, Arc<str>>>,
}

impl Moderation {
    /// On `responder`'s plugins, sharing its health records (one per plugin, whatever failed).
    pub fn new(
        responder: &super::Responder,
        store: Arc<dyn Store>,
        settings: &ResponderSettings,
    ) -> Self {
        Self {
            host: responder.plugins().clone(),
            store,
            chain: settings.moderators.clone(),
            overrides: settings.moderation_on_failure.clone(),
            breaker: responder.breaker.clone(),
            emails: Mutex::new(HashMap::new()),
        }
    }

    /// The sender's email ("" for an account deleted meanwhile).
    async fn email_of(&self, sender: UserId) -> Result<Arc<str>, StoreError> {
        if let Some(email) = crate::sync::lock(&self.emails).get(&sender) {
            return Ok(email.clone());
        }
        let Some(user) = self.store.user_by_id(sender).await? else {
            return Ok(Arc::from(""));
        };
        let email: Arc<str> = Arc::from(user.email.to_string());
        let mut emails = crate::sync::lock(&self.emails);
        if emails.len() >= EMAILS_KEPT {
            emails.clear();
        }
        emails.insert(sender, email.clone());
        Ok(email)
    }

    /// Whether `plugin` is named in `MODERATION_PLUGINS`.
    pub fn runs(&self, plugin: &str) -> bool {
        self.chain.iter().any(|name| name == plugin)
    }

    /// What a failure of `name` means: the operator's override, its manifest's, else allow.
    fn on_failure(&self, name: &str, plugin: Option<&LoadedPlugin>) -> OnFailure {
        self.overrides
            .get(name)
            .copied()
            .or_else(|| plugin.and_then(|p| p.manifest.on_failure))
            .unwrap_or(OnFailure::Allow)
    }

    /// One moderator's verdict on `content`, or why it failed.
    async fn ask(
        &self,
        plugin: &Arc<LoadedPlugin>,
        draft: &Draft,
        sender_email: &str,
        content: &Content,
    ) -> Result<Decision, Fault> {
        if !plugin.is_moderator() {
            return Err(Fault::Failed("it does not export `moderate`".into()));
        }
        if self.breaker.is_benched(plugin) {
            return Err(Fault::Skipped("benched after failing too often"));
        }
        let timeout = plugin.manifest.moderator_timeout();
        let deadline = Instant::now() + timeout;
        let request = ModerateRequest {
            sender_id: draft.sender.to_string(),
            sender_email: sender_email.to_owned(),
            destination: match &draft.to {
                Destination::User(user) => wasm::Destination::Recipient(user.to_string()),
                Destination::Conversation(id) => wasm::Destination::Conversation(id.to_string()),
            },
            content: content.as_str().to_owned(),
            config: plugin.manifest.config.clone().into_iter().collect(),
            time_left_ms: timeout.as_millis() as u64,
        };
        let call = Call::start(&self.breaker, plugin.clone());
        // A replacement is a message like any other: one that is not fails the moderator (and
        // counts towards benching it, like any failure).
        let outcome = match self.host.moderate(plugin, request, deadline).await {
            Ok(Verdict::Replace(text)) => Content::parse(text)
                .map(Decision::Replace)
                .map_err(|e| format!("its replacement was refused: {e}")),
            Ok(Verdict::Allow) => Ok(Decision::Allow),
            Ok(Verdict::Reject(reason)) => Ok(Decision::Reject(reason)),
            Err(e) => Err(e.to_string()),
        };
        call.finish(outcome.as_ref().map(|_| ()).map_err(String::as_str));
        outcome.map_err(Fault::Failed)
    }
}

#[async_trait::async_trait]
impl Moderator for Moderation {
    fn enabled(&self) -> bool {
        !self.chain.is_empty()
    }

    async fn review(&self, draft: &Draft) -> Result<Review, StoreError> {
        let sender_email = self.email_of(draft.sender).await?;
        let mut content = draft.content.clone();
        for name in &self.chain {
            let started = Instant::now();
            let plugin = self.host.get(name);
            let outcome = match &plugin {
                Some(plugin) => self.ask(plugin, draft, &sender_email, &content).await,
                None if self.host.is_loading(name) => Err(Fault::Skipped("still loading")),
                None => Err(Fault::Failed("not loaded".into())),
            };
            let label = match &outcome {
                Ok(Decision::Allow) => "allow",
                Ok(Decision::Reject(_)) => "reject",
                Ok(Decision::Replace(_)) => "replace",
                Err(_) => "failed",
            };
            metrics::moderation(name, label, started.elapsed());
            match outcome {
                Ok(Decision::Allow) => {}
                Ok(Decision::Replace(text)) => content = text,
                Ok(Decision::Reject(reason)) => {
                    tracing::info!(moderator = %name, sender = %draft.sender, "message rejected");
                    return Ok(Review::Reject(clean_reason(&reason)));
                }
                Err(fault) => {
                    let on_failure = self.on_failure(name, plugin.as_deref());
                    match fault {
                        // Logged once when it became so, not again for every message meanwhile.
                        Fault::Skipped(why) => tracing::debug!(moderator = %name, why,
                            on_failure = on_failure.as_str(), "moderator skipped"),
                        Fault::Failed(error) => tracing::warn!(moderator = %name, %error,
                            on_failure = on_failure.as_str(), "moderator failed"),
                    }
                    if on_failure == OnFailure::Reject {
                        return Ok(Review::Reject(MODERATION_FAILED.to_owned()));
                    }
                }
            }
        }
        Ok(Review::Pass(content))
    }
}

/// Why a moderator gave no decision; either way its `on_failure` applies.
enum Fault {
    /// It did not run: benched, or still loading.
    Skipped(&'static str),
    /// It ran and failed, or cannot run at all.
    Failed(String),
}

/// A verdict whose replacement passed the content rules.
enum Decision {
    Allow,
    Reject(String),
    Replace(Content),
}

/// What the sender is told: control characters removed, at most [`MAX_REASON_CHARS`].
fn clean_reason(reason: &str) -> String {
    let cleaned: String = reason
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_REASON_CHARS)
        .collect();
    let cleaned = cleaned.trim();
    if cleaned.is_empty() {
        REJECTED_WITHOUT_REASON.to_owned()
    } else {
        cleaned.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_lose_control_characters_and_are_cut() {
        assert_eq!(clean_reason("no\u{1b}[31m\nway\u{7}"), "no[31mway");
        assert_eq!(
            clean_reason(&"é".repeat(500)).chars().count(),
            MAX_REASON_CHARS
        );
        assert_eq!(clean_reason(" \n\t"), REJECTED_WITHOUT_REASON);
    }
}
