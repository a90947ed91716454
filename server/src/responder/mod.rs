//! When a message reaches a BUSY user: run their responder plugin in the background and send
//! its answer as their auto-reply, or the standard fallback message if it cannot answer by the
//! deadline (receipt + `RESPONDER_TIMEOUT_MS`). Exactly one of the two, never later.
//!
//! At most one run is in flight per (sender, recipient) pair: a message that arrives while one
//! is running gets no second auto-reply (the one on its way answers the conversation).

mod breaker;
mod moderation;
mod watcher;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::SecondsFormat;
use tokio::sync::Semaphore;

use crate::config::{BUILTIN_PLUGIN, ResponderSettings};
use crate::domain::{
    Content, MAX_SETTING_CHARS, Message, MessageKind, MessagePage, ResponderChoice, UserId,
};
use crate::failure::Failure;
use crate::messaging::{
    BusyRecipients, DeliverError, Delivered, FanOut, Notice, Outgoing, Target, Writer,
    auto_reply_key,
};
use crate::metrics;
use crate::store::{Store, StoreError, User};
use crate::wasm::{
    ChatMessage, ComponentCache, HostPattern, HostRules, LLM_RESPONDER_WASM, LlmEndpoint,
    LoadedPlugin, MAX_CONCURRENT_CALLS, NetworkPolicy, PluginHost, RespondRequest,
};

/// What a plugin says of itself, for the API to show.
pub use crate::wasm::Manifest;
pub use breaker::Health;
pub use moderation::{MODERATION_FAILED, Moderation};
pub use watcher::watch_plugins_dir;

use breaker::{Call, CircuitBreaker};

/// At most one `reply_progress` push per reply in this time: the latest text wins.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(100);
/// Messages of the conversation a plugin sees.
const HISTORY: u32 = 20;
/// How long an auto-reply waits for a node that may not write right now (see `reply_to`).
const REPLY_RETRY_FOR: Duration = Duration::from_secs(60);
const REPLY_RETRY_EVERY: Duration = Duration::from_millis(200);

pub struct Responder {
    host: Arc<PluginHost>,
    store: Arc<dyn Store>,
    writer: Arc<Writer>,
    /// Where a streaming reply's progress goes (both sides' live connections, on every node).
    fanout: Arc<dyn FanOut>,
    settings: ResponderSettings,
    fallback: Content,
    in_flight: Mutex<HashSet<(UserId, UserId)>>,
    permits: Semaphore,
    /// One health record per plugin, shared with the moderation chain: `GET /api/plugins` shows
    /// a plugin benched whichever of its roles failed.
    breaker: Arc<CircuitBreaker>,
    /// The embedded LLM responder (a `PLUGINS_DIR` plugin may replace it under the same name).
    builtin: Arc<LoadedPlugin>,
}

impl Responder {
    pub fn new(
        settings: ResponderSettings,
        store: Arc<dyn Store>,
        writer: Arc<Writer>,
        fanout: Arc<dyn FanOut>,
    ) -> anyhow::Result<Arc<Self>> {
        // LLM_API_URL's host, on its port, is always the operator's.
        let llm_host = settings.llm_api_url.as_ref().and_then(|url| {
            Some(HostPattern::exact(
                url.host_str()?,
                url.port_or_known_default()?,
            ))
        });
        let operator_hosts = settings
            .allowed_hosts
            .iter()
            .cloned()
            .chain(llm_host.clone());
        let network = NetworkPolicy::new(
            HostRules::new(operator_hosts),
            settings.llm_api_url.clone().map(|url| LlmEndpoint {
                url,
                api_key: settings.llm_api_key.as_ref().map(|k| k.expose().to_owned()),
            }),
        )?;
        // The cache only saves time: a directory that cannot be used means compiling each time.
        let cache = settings.plugin_cache_dir.as_deref().and_then(|dir| {
            ComponentCache::open(dir)
                .inspect_err(|e| {
                    tracing::warn!(dir = %dir.display(), error = %format!("{e:#}"),
                        "PLUGIN_CACHE_DIR unusable; plugins are compiled at every start")
                })
                .ok()
        });
        let host = PluginHost::new(network, cache)?;
        let builtin = host.load_builtin(Manifest::builtin(llm_host), LLM_RESPONDER_WASM)?;
        let fallback = Content::parse(settings.fallback_message.clone())
            .map_err(|e| anyhow::anyhow!("FALLBACK_MESSAGE: {e}"))?;
        Ok(Arc::new(Self {
            host,
            store,
            writer,
            fanout,
            fallback,
            in_flight: Mutex::new(HashSet::new()),
            permits: Semaphore::new(MAX_CONCURRENT_CALLS as usize),
            breaker: Arc::new(CircuitBreaker::new(
                settings.bench_after,
                settings.bench_for,
            )),
            builtin,
            settings,
        }))
    }

    pub fn plugins(&self) -> &Arc<PluginHost> {
        &self.host
    }

    /// How a plugin has fared lately (failures in a row, last error, benched until).
    pub fn health(&self, plugin: &Arc<LoadedPlugin>) -> Health {
        self.breaker.health(plugin)
    }

    /// The plugin that answers now: `RESPONDER_PLUGIN` if loaded, else the built-in one.
    pub fn active_plugin(&self) -> Option<Arc<LoadedPlugin>> {
        self.host
            .get(&self.settings.plugin)
            .or_else(|| self.host.get(BUILTIN_PLUGIN))
    }

    /// The user's responder: their choice, or the default plugin with no settings of theirs.
    pub async fn choice_of(&self, user: UserId) -> Result<ResponderChoice, StoreError> {
        Ok(match self.store.responder_choice(user).await? {
            Some(choice) => choice,
            None => ResponderChoice {
                plugin: self.default_plugin_name(),
                config: BTreeMap::new(),
            },
        })
    }

    /// Checks `choice` against the loaded plugin's manifest, then stores it.
    pub async fn choose(
        &self,
        user: UserId,
        choice: ResponderChoice,
    ) -> Result<ResponderChoice, ChoiceError> {
        // A plugin still loading may be chosen already: its manifest says what users may set.
        let manifest = self
            .host
            .manifest_of(&choice.plugin)
            .ok_or_else(|| ChoiceError::UnknownPlugin(choice.plugin.clone()))?;
        if self
            .host
            .get(&choice.plugin)
            .is_some_and(|p| !p.is_responder())
        {
            return Err(ChoiceError::NotAResponder(choice.plugin.clone()));
        }
        let settable = &manifest.user_config;
        for (key, value) in &choice.config {
            if !settable.contains_key(key) {
                return Err(ChoiceError::NotSettable {
                    key: key.clone(),
                    plugin: choice.plugin.clone(),
                    settable: settable.keys().cloned().collect(),
                });
            }
            // Settings go into the plugin's request as they are (the LLM responder puts them in
            // the model's instructions): they follow the content rules, and nothing in them may
            // hide or reorder text.
            if value.chars().count() > MAX_SETTING_CHARS {
                return Err(ChoiceError::TooLong(key.clone()));
            }
            if value.chars().all(crate::domain::is_invisible) {
                return Err(ChoiceError::Blank(key.clone()));
            }
            if value.chars().any(crate::domain::is_deceptive) {
                return Err(ChoiceError::Deceptive(key.clone()));
            }
        }
        if !self.store.set_responder_choice(user, &choice).await? {
            return Err(ChoiceError::NoSuchUser);
        }
        Ok(choice)
    }

    fn default_plugin_name(&self) -> String {
        self.active_plugin()
            .map_or_else(|| BUILTIN_PLUGIN.to_owned(), |p| p.manifest.name.clone())
    }

    /// Stores `reply` as `message`'s auto-reply, unless one is stored already (by this node or,
    /// in a cluster, by another that took over from a node that died).
    async fn reply_to(&self, message: &Message, reply: Content) {
        // Only direct messages are answered (a BUSY member does not answer for a group).
        let Some(recipient) = message.recipient else {
            return;
        };
        let outgoing = Outgoing {
            sender: recipient,
            to: Target::User(message.sender),
            content: reply,
            kind: MessageKind::AutoReply,
            idempotency_key: Some(auto_reply_key(message.id)),
            awaits_reply: false,
        };
        // A cluster node cut off from NATS may not write for a while: keep the answer until it
        // can (or until another node, having taken it for dead, answered: then this is a no-op).
        let give_up = Instant::now() + REPLY_RETRY_FOR;
        loop {
            match self.writer.deliver(outgoing.clone()).await {
                Ok(Delivered::Stored(_)) => {}
                Ok(Delivered::Replayed(_)) => {
                    tracing::info!(message = %message.id, "this message was answered already");
                }
                Err(DeliverError::Unavailable(_)) if Instant::now() < give_up => {
                    tokio::time::sleep(REPLY_RETRY_EVERY).await;
                    continue;
                }
                Err(e) => tracing::error!(error = %e, "storing the auto-reply failed"),
            }
            return;
        }
    }
}

impl BusyRecipients for Responder {
    fn message_for_busy(
        self: Arc<Self>,
        message: Message,
        recipient: User,
        received: Instant,
        run_plugin: bool,
    ) {
        if message.kind != MessageKind::User {
            return; // never answer an auto-reply: two BUSY users would talk forever
        }
        let pair = (message.sender, recipient.id);
        let Some(guard) = InFlight::claim(self.clone(), pair) else {
            tracing::debug!(sender = %message.sender, recipient = %recipient.id,
                "an auto-reply is already on its way; not starting another");
            return;
        };
        let this = self;
        tokio::spawn(async move {
            let _guard = guard;
            let deadline = received + this.settings.timeout;
            let sender = message.sender;
            let answer = if run_plugin {
                tokio::time::timeout_at(
                    deadline.into(),
                    this.ask_plugin(&message, &recipient, deadline),
                )
                .await
                .unwrap_or_else(|_| {
                    tracing::info!(recipient = %recipient.id, "responder missed the deadline; sending the fallback");
                    Err(Fallback::Deadline)
                })
            } else {
                tracing::info!(sender = %sender, recipient = %recipient.id,
                    "auto-reply quota used up; sending the fallback without the plugin");
                Err(Fallback::Quota)
            };
            let reply = match answer {
                Ok(reply) => {
                    metrics::responder_outcome("reply", "", received.elapsed());
                    reply
                }
                Err(reason) => {
                    metrics::responder_outcome("fallback", reason.label(), received.elapsed());
                    this.fallback.clone()
                }
            };
            this.reply_to(&message, reply).await;
        });
    }

    fn orphaned(self: Arc<Self>, message: Message) {
        tokio::spawn(async move {
            metrics::responder_outcome("fallback", Fallback::NodeLost.label(), Duration::ZERO);
            self.reply_to(&message, self.fallback.clone()).await;
        });
    }
}

impl Responder {
    /// The plugin's answer, or why the fallback goes instead (logged here).
    async fn ask_plugin(
        &self,
        message: &Message,
        recipient: &User,
        deadline: Instant,
    ) -> Result<Content, Fallback> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| Fallback::NoPlugin)?;
        let choice = match self.store.responder_choice(recipient.id).await {
            Ok(choice) => choice,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the user's responder; using the default");
                None
            }
        };
        // A plugin still being compiled cannot answer yet, and another must not answer in its
        // place: its users get the fallback until it is ready.
        let wanted = choice.as_ref().map_or(&self.settings.plugin, |c| &c.plugin);
        if self.host.is_loading(wanted) {
            return Err(Fallback::Loading);
        }
        // The user's plugin when it is loaded; else the default, without the user's settings
        // (they were checked against the other plugin's keys).
        let chosen = choice.and_then(|c| Some((self.host.get(&c.plugin)?, c.config)));
        let (plugin, user_config) = match chosen {
            Some((plugin, config)) => (plugin, config),
            None => (
                self.active_plugin().ok_or(Fallback::NoPlugin)?,
                BTreeMap::new(),
            ),
        };
        if Arc::ptr_eq(&plugin, &self.builtin) && self.settings.llm_api_url.is_none() {
            return Err(Fallback::NoLlm);
        }
        if !plugin.is_responder() {
            return Err(Fallback::NoPlugin);
        }
        if self.breaker.is_benched(&plugin) {
            tracing::debug!(plugin = %plugin.manifest.name, "plugin benched; sending the fallback without it");
            return Err(Fallback::Benched);
        }
        let deadline = match plugin.manifest.timeout_ms {
            Some(ms) => deadline.min(Instant::now() + Duration::from_millis(ms)),
            None => deadline,
        };
        let page = MessagePage {
            conversation: Some(message.conversation),
            limit: HISTORY,
            ..MessagePage::default()
        };
        let history = match self.store.list_messages(recipient.id, &page).await {
            Ok(history) => history,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the conversation for the responder");
                vec![message.clone()]
            }
        };
        // The manifest's defaults, then the operator's settings, then the user's own (only the
        // keys the manifest lets users set, should it have changed since they chose).
        let mut config = plugin.manifest.config.clone();
        if plugin.manifest.name == BUILTIN_PLUGIN {
            if let Some(url) = &self.settings.llm_api_url {
                config.insert("llm_api_url".into(), url.to_string());
            }
            config.insert("llm_model".into(), self.settings.llm_model.clone());
        }
        config.extend(
            user_config
                .into_iter()
                .filter(|(key, _)| plugin.manifest.user_config.contains_key(key)),
        );
        let request = RespondRequest {
            message: chat_message(message),
            history: history.iter().map(chat_message).collect(),
            recipient_id: recipient.id.to_string(),
            recipient_email: recipient.email.to_string(),
            config: config.into_iter().collect(),
            time_left_ms: deadline
                .saturating_duration_since(Instant::now())
                .as_millis() as u64,
        };
        let started = Instant::now();
        let call = Call::start(&self.breaker, plugin.clone());
        let (progress, reported) = tokio::sync::watch::channel(None);
        // Stopped (and awaited) before the caller stores the answer, so no progress push
        // follows it from this node; dropped (aborted) if the deadline cuts the call off.
        let forwarder = ProgressForwarder::start(
            self.fanout.clone(),
            vec![message.sender, recipient.id],
            message.id.to_string(),
            reported,
        );
        let outcome = self
            .host
            .respond(plugin.clone(), request, deadline, Some(progress))
            .await;
        forwarder.stop().await;
        let plugin_name = &plugin.manifest.name;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        let answer = match outcome {
            Ok(Some(text)) => match Content::parse(text) {
                Ok(reply) => {
                    tracing::info!(plugin = %plugin_name, elapsed_ms, "plugin answered");
                    call.finish(Ok(()));
                    Ok(reply)
                }
                Err(e) => {
                    tracing::info!(plugin = %plugin_name, reason = %e, "plugin reply refused; sending the fallback");
                    call.finish(Err(&format!("the reply was refused: {e}")));
                    Err(Fallback::InvalidReply)
                }
            },
            Ok(None) => {
                tracing::info!(plugin = %plugin_name, "plugin declined; sending the fallback");
                call.finish(Ok(()));
                Err(Fallback::Declined)
            }
            Err(e) => {
                tracing::info!(plugin = %plugin_name, elapsed_ms, error = %e, "plugin failed; sending the fallback");
                call.finish(Err(&e.to_string()));
                Err(Fallback::PluginFailed)
            }
        };
        metrics::plugin_call(
            plugin_name,
            answer
                .as_ref()
                .map_or_else(|reason| reason.label(), |_| "answered"),
        );
        answer
    }
}

/// Why a responder choice was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChoiceError {
    #[error("No plugin named {0:?} is loaded")]
    UnknownPlugin(String),
    #[error("{}", not_settable(key, plugin, settable))]
    NotSettable {
        key: String,
        plugin: String,
        settable: Vec<String>,
    },
    #[error("The plugin {0:?} is a moderator, not a responder")]
    NotAResponder(String),
    #[error("The setting {0:?} is longer than {MAX_SETTING_CHARS} characters")]
    TooLong(String),
    #[error("The setting {0:?} is blank: leave it out to use the plugin's default")]
    Blank(String),
    #[error(
        "The setting {0:?} contains a control or bidirectional-override character (newlines and tabs are fine)"
    )]
    Deceptive(String),
    #[error("User not found")]
    NoSuchUser,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<ChoiceError> for Failure {
    fn from(err: ChoiceError) -> Self {
        match err {
            ChoiceError::Store(err) => err.into(),
            ChoiceError::UnknownPlugin(_) | ChoiceError::NoSuchUser => {
                Failure::not_found(err.to_string())
            }
            ChoiceError::NotSettable { .. }
            | ChoiceError::TooLong(_)
            | ChoiceError::Blank(_)
            | ChoiceError::Deceptive(_)
            | ChoiceError::NotAResponder(_) => Failure::bad_request(err.to_string()),
        }
    }
}

fn not_settable(key: &str, plugin: &str, settable: &[String]) -> String {
    if settable.is_empty() {
        format!("The plugin {plugin:?} has no settings users can change (got {key:?})")
    } else {
        format!(
            "{key:?} is not a setting of the plugin {plugin:?}; it takes: {}",
            settable.join(", ")
        )
    }
}

/// Why the standard unavailable message goes instead of a plugin's reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fallback {
    /// The auto-reply quota for this pair (or in total) is used up: no plugin ran.
    Quota,
    /// The cluster node that was answering died; another node sent the fallback.
    NodeLost,
    /// The deadline passed before the plugin answered.
    Deadline,
    /// No plugin is loaded (or the responder is shutting down).
    NoPlugin,
    /// The plugin that would answer is still being compiled.
    Loading,
    /// The built-in LLM responder would answer, but no `LLM_API_URL` is configured.
    NoLlm,
    /// The plugin failed too often lately and sits out its cool-down.
    Benched,
    /// The plugin chose not to answer.
    Declined,
    /// The plugin trapped, ran out of fuel or memory, hit its own deadline, or returned an error.
    PluginFailed,
    /// The plugin's answer is not valid message content (blank or too long).
    InvalidReply,
}

impl Fallback {
    /// The metrics label.
    fn label(self) -> &'static str {
        match self {
            Fallback::Quota => "quota",
            Fallback::NodeLost => "node_lost",
            Fallback::Deadline => "deadline",
            Fallback::NoPlugin => "no_plugin",
            Fallback::Loading => "loading",
            Fallback::NoLlm => "no_llm",
            Fallback::Benched => "benched",
            Fallback::Declined => "declined",
            Fallback::PluginFailed => "plugin_failed",
            Fallback::InvalidReply => "invalid_reply",
        }
    }
}

fn chat_message(message: &Message) -> ChatMessage {
    ChatMessage {
        id: message.id.to_string(),
        sender: message.sender.to_string(),
        // The responder only ever sees direct messages, which have a recipient.
        recipient: message.recipient.map(|r| r.to_string()).unwrap_or_default(),
        content: message.content.clone(),
        sent_at: message.sent_at.to_rfc3339_opts(SecondsFormat::Millis, true),
        auto_reply: message.kind == MessageKind::AutoReply,
    }
}

/// Pushes a responder's text so far as `reply_progress` notices, at most one per
/// [`PROGRESS_EVERY`], the latest text each time.
struct ProgressForwarder {
    task: tokio::task::JoinHandle<()>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl ProgressForwarder {
    fn start(
        fanout: Arc<dyn FanOut>,
        audience: Vec<UserId>,
        reply_to: String,
        mut reported: tokio::sync::watch::Receiver<Option<String>>,
    ) -> Self {
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut seq = 0;
            loop {
                // A text reported before the stop is still pushed (ahead of the final reply);
                // the wait between pushes ends at the stop.
                tokio::select! {
                    biased;
                    changed = reported.changed() => if changed.is_err() { return },
                    _ = &mut stopped => return,
                }
                let Some(text) = reported.borrow_and_update().clone() else {
                    continue;
                };
                seq += 1;
                let notice = Notice::ReplyProgress {
                    reply_to: reply_to.clone(),
                    text,
                    seq,
                };
                fanout.notify(audience.clone(), notice);
                tokio::select! {
                    _ = &mut stopped => return,
                    () = tokio::time::sleep(PROGRESS_EVERY) => {}
                }
            }
        });
        Self {
            task,
            stop: Some(stop),
        }
    }

    /// Stops it and waits until it can push no more.
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for ProgressForwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Marks a (sender, recipient) pair as being answered; released when dropped.
struct InFlight {
    responder: Arc<Responder>,
    pair: (UserId, UserId),
}

impl InFlight {
    fn claim(responder: Arc<Responder>, pair: (UserId, UserId)) -> Option<Self> {
        let claimed = crate::sync::lock(&responder.in_flight).insert(pair);
        claimed.then_some(Self { responder, pair })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        crate::sync::lock(&self.responder.in_flight).remove(&self.pair);
    }
}
