//! Several nodes, one MongoDB, fan-out through NATS (when `NATS_URL` is set).
//!
//! Every node's writer publishes what it commits, and its position, on `<prefix>.log`; every
//! node merges all writers' frames in id order ([`view`]) and pushes to its own connections
//! through the in-process fan-out. Status changes go on `<prefix>.status`, notices (read marks,
//! typing, membership changes) on `<prefix>.notice`. docs/cluster.md has the design and why
//! catch-up stays exact.
//!
//! A node may store messages only while it hears its own frames come back from NATS (its
//! *lease*) and every node it hears has heard it. A node cut off from NATS therefore stops
//! writing within [`LEASE`], well before the others give up on it ([`EVICT_AFTER`]) and read
//! what it stored last straight from the database.

mod merger;
mod view;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::config::ClusterSettings;
use crate::domain::{ConversationId, Message, MessageId, MessageKind, Status, UserId};
use crate::messaging::{Addressed, FanOut, Notice, Recipients, Sequencer, Unavailable};
use crate::store::{ClusterLog, Store};

/// How often an idle writer publishes its position. Pushes from other nodes wait up to about
/// this long for every writer to pass them.
pub const HEARTBEAT: Duration = Duration::from_millis(10);
/// A node that has not heard its own frames for this long stops storing messages.
pub const LEASE: Duration = Duration::from_millis(1500);
/// A node not heard from for this long is taken for dead: the others stop waiting for it, read
/// what it stored last from the database, and answer its BUSY recipients' senders.
pub const EVICT_AFTER: Duration = Duration::from_secs(3);
/// A starting (or reconnected) node listens this long before it stores anything, so that it has
/// heard every live node.
pub const JOIN_WAIT: Duration = Duration::from_millis(250);
/// Start-up gives up on NATS after this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

const BUS_LOST: &str = "This node has lost the cluster bus (NATS); try again shortly";
const JOINING: &str = "This node is joining the cluster; try again shortly";

/// The NATS fan-out; see the module docs.
pub struct Cluster {
    node: String,
    run: u64,
    /// Message frames published by this run.
    seq: AtomicU64,
    local: Arc<dyn FanOut>,
    /// Where this node's writer is fenced; its epoch goes in every frame.
    log: Arc<dyn ClusterLog>,
    shared: Arc<Shared>,
    outbox: mpsc::UnboundedSender<Outgoing>,
    own: mpsc::UnboundedSender<(Vec<Addressed>, MessageId)>,
}

/// Subjects under the configured prefix.
#[derive(Clone)]
struct Subjects {
    log: String,
    status: String,
    notice: String,
}

/// State the merger keeps current and the writer and readers consult.
struct Shared {
    visible: RwLock<MessageId>,
    /// When this node last heard its own frame come back.
    last_echo: Mutex<Option<Instant>>,
    /// When the current unbroken run of echoes began.
    lease_since: Mutex<Option<Instant>>,
    /// The epoch of this node's writer that every node it hears lists, if any: a node may
    /// write only under an epoch every other node waits for (and would fence).
    known_by_all: Mutex<Option<u64>>,
    /// The nodes this one waits for, with the epoch of each, as sent in its frames.
    writers: RwLock<Vec<(String, u64)>>,
}

impl Shared {
    fn echo(&self, now: Instant) {
        let mut last = crate::sync::lock(&self.last_echo);
        let lapsed = last.is_none_or(|at| now.saturating_duration_since(at) >= LEASE);
        if lapsed {
            *crate::sync::lock(&self.lease_since) = Some(now);
        }
        *last = Some(now);
    }

    fn holds_lease(&self, now: Instant) -> bool {
        crate::sync::lock(&self.last_echo)
            .is_some_and(|at| now.saturating_duration_since(at) < LEASE)
    }

    /// How long this node has heard itself without a break (zero while it does not).
    fn listening_for(&self, now: Instant) -> Duration {
        if !self.holds_lease(now) {
            return Duration::ZERO;
        }
        crate::sync::lock(&self.lease_since)
            .map_or(Duration::ZERO, |since| now.saturating_duration_since(since))
    }

    fn may_write(&self, now: Instant, epoch: u64) -> Result<(), Unavailable> {
        if !self.holds_lease(now) {
            return Err(Unavailable(BUS_LOST.to_owned()));
        }
        let settled = crate::sync::lock(&self.lease_since)
            .is_some_and(|since| now.saturating_duration_since(since) >= JOIN_WAIT);
        if settled && *crate::sync::lock(&self.known_by_all) == Some(epoch) {
            Ok(())
        } else {
            Err(Unavailable(JOINING.to_owned()))
        }
    }
}

enum Outgoing {
    Frame(Bytes),
    Heartbeat(Bytes),
    Status(Bytes),
    Notice(Bytes),
}

/// One writer frame on `<prefix>.log`.
#[derive(Serialize, Deserialize)]
struct Frame {
    node: String,
    run: u64,
    /// The writer's fencing epoch (see `store::ClusterLog::fence`).
    #[serde(default)]
    epoch: u64,
    seq: u64,
    committed: bool,
    position: String,
    writers: Vec<String>,
    /// The epoch of each of `writers`, in the same order.
    #[serde(default)]
    epochs: Vec<u64>,
    #[serde(default)]
    messages: Vec<WireMessage>,
}

#[derive(Serialize, Deserialize)]
struct WireMessage {
    id: String,
    sender: String,
    /// Direct messages only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    recipient: Option<String>,
    conversation: String,
    content: String,
    sent_at_ms: i64,
    kind: String,
    /// Group messages only: the members it goes to (a direct message goes to its two sides).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    audience: Vec<String>,
    /// Auto-replies only: the message answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reply_to: Option<String>,
}

impl From<&Addressed> for WireMessage {
    fn from(addressed: &Addressed) -> Self {
        let m = &addressed.message;
        Self {
            id: m.id.to_string(),
            sender: m.sender.to_string(),
            recipient: m.recipient.map(|r| r.to_string()),
            conversation: m.conversation.to_string(),
            content: m.content.clone(),
            sent_at_ms: m.sent_at.timestamp_millis(),
            kind: m.kind.as_str().to_owned(),
            reply_to: m.reply_to.map(|id| id.to_string()),
            audience: match m.recipient {
                Some(_) => Vec::new(),
                None => addressed.audience.iter().map(ToString::to_string).collect(),
            },
        }
    }
}

impl TryFrom<WireMessage> for Addressed {
    type Error = String;

    fn try_from(w: WireMessage) -> Result<Self, String> {
        let bad = |e: crate::domain::ValidationError| e.to_string();
        let audience = w
            .audience
            .iter()
            .map(|u| UserId::parse(u))
            .collect::<Result<Vec<_>, _>>()
            .map_err(bad)?;
        let message = Message {
            id: MessageId::parse(&w.id).map_err(bad)?,
            sender: UserId::parse(&w.sender).map_err(bad)?,
            recipient: w
                .recipient
                .as_deref()
                .map(UserId::parse)
                .transpose()
                .map_err(bad)?,
            conversation: ConversationId::parse(&w.conversation).map_err(bad)?,
            content: w.content,
            sent_at: chrono::DateTime::from_timestamp_millis(w.sent_at_ms)
                .ok_or("sent_at out of range")?,
            kind: MessageKind::parse(&w.kind).map_err(bad)?,
            reply_to: w
                .reply_to
                .as_deref()
                .map(MessageId::parse)
                .transpose()
                .map_err(bad)?,
        };
        Ok(match message.recipient {
            Some(recipient) => Addressed {
                audience: vec![message.sender, recipient],
                message,
            },
            None => Addressed { message, audience },
        })
    }
}

/// A notice on `<prefix>.notice`.
#[derive(Serialize, Deserialize)]
struct NoticeFrame {
    node: String,
    audience: Vec<String>,
    notice: Notice,
}

/// A status change on `<prefix>.status`.
#[derive(Serialize, Deserialize)]
struct StatusFrame {
    node: String,
    user: String,
    status: String,
    peers: Vec<String>,
}

/// What the cluster needs from the rest of the server.
pub struct Parts {
    pub store: Arc<dyn Store>,
    pub log: Arc<dyn ClusterLog>,
    pub local: Arc<dyn FanOut>,
    pub ids: Arc<Sequencer>,
    /// Where messages whose answering node died go (the responder sends the fallback).
    pub orphans: mpsc::UnboundedSender<Message>,
    /// The responder's deadline, to know how far back a dead node's owed answers can be.
    pub responder_timeout: Duration,
    /// What sends know of their recipients: other nodes' status changes update it.
    pub recipients: Arc<Recipients>,
}

impl Cluster {
    /// Connects to NATS (failing start-up with one line if it cannot) and starts the merger.
    pub async fn join(settings: &ClusterSettings, parts: Parts) -> anyhow::Result<Arc<Self>> {
        let url = settings.nats_url.redacted();
        let node = settings.node_id.clone();
        let options = async_nats::ConnectOptions::new()
            .name(format!("palaver {node}"))
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => tracing::info!("NATS connected"),
                    async_nats::Event::Disconnected => tracing::warn!("NATS disconnected"),
                    other => tracing::info!(event = %other, "NATS"),
                }
            });
        let client =
            tokio::time::timeout(CONNECT_TIMEOUT, options.connect(settings.nats_url.expose()))
                .await
                .map_err(|_| anyhow::anyhow!("no answer within {}s", CONNECT_TIMEOUT.as_secs()))
                .and_then(|connected| connected.map_err(|e| anyhow::anyhow!("{e}")))
                .with_context(|| format!("NATS_URL {url}: cannot connect"))?;
        let subjects = Subjects {
            log: format!("{}.log", settings.subject_prefix),
            status: format!("{}.status", settings.subject_prefix),
            notice: format!("{}.notice", settings.subject_prefix),
        };
        let log_frames = client
            .subscribe(subjects.log.clone())
            .await
            .context("subscribing to the cluster log")?;
        let status_frames = client
            .subscribe(subjects.status.clone())
            .await
            .context("subscribing to status changes")?;
        let notice_frames = client
            .subscribe(subjects.notice.clone())
            .await
            .context("subscribing to notices")?;
        let shared = Arc::new(Shared {
            visible: RwLock::new(MessageId::from(uuid::Uuid::nil())),
            last_echo: Mutex::new(None),
            lease_since: Mutex::new(None),
            known_by_all: Mutex::new(None),
            writers: RwLock::new(Vec::new()),
        });
        let (outbox, outgoing) = mpsc::unbounded_channel();
        tokio::spawn(publish(client, subjects.clone(), outgoing));
        let (own, own_frames) = mpsc::unbounded_channel();
        let run = crate::messaging::random_u64();
        let cluster = Arc::new(Self {
            node: node.clone(),
            run,
            seq: AtomicU64::new(0),
            local: parts.local.clone(),
            log: parts.log.clone(),
            shared: shared.clone(),
            outbox,
            own,
        });
        tokio::spawn(merger::run(merger::Merger {
            node: node.clone(),
            run,
            shared,
            parts,
            own_frames,
            log_frames,
            status_frames,
            notice_frames,
        }));
        tracing::info!(node = %node, nats = %url, "joining the cluster");
        Ok(cluster)
    }

    fn frame(&self, committed: bool, messages: &[Addressed], position: MessageId) -> Bytes {
        let seq = if committed {
            self.seq.fetch_add(1, Ordering::AcqRel) + 1
        } else {
            self.seq.load(Ordering::Acquire)
        };
        let (writers, epochs) = crate::sync::read(&self.shared.writers)
            .iter()
            .cloned()
            .unzip();
        let frame = Frame {
            node: self.node.clone(),
            run: self.run,
            epoch: self.log.epoch(),
            seq,
            committed,
            position: position.to_string(),
            writers,
            epochs,
            messages: messages.iter().map(WireMessage::from).collect(),
        };
        Bytes::from(serde_json::to_vec(&frame).unwrap_or_default())
    }
}

impl FanOut for Cluster {
    fn committed(&self, messages: Vec<Addressed>, position: MessageId) {
        let frame = self.frame(true, &messages, position);
        let _ = self.outbox.send(Outgoing::Frame(frame));
        let _ = self.own.send((messages, position));
    }

    fn notify(&self, audience: Vec<UserId>, notice: Notice) {
        let frame = NoticeFrame {
            node: self.node.clone(),
            audience: audience.iter().map(ToString::to_string).collect(),
            notice,
        };
        if let Ok(bytes) = serde_json::to_vec(&frame) {
            let _ = self.outbox.send(Outgoing::Notice(Bytes::from(bytes)));
        }
        self.local.notify(audience, frame.notice);
    }

    fn position(&self, position: MessageId) {
        let frame = self.frame(false, &[], position);
        let _ = self.outbox.send(Outgoing::Heartbeat(frame));
        let _ = self.own.send((Vec::new(), position));
    }

    fn heartbeat_every(&self) -> Option<Duration> {
        Some(HEARTBEAT)
    }

    fn status_changed(&self, user: UserId, status: Status, peers: Vec<UserId>) {
        let frame = StatusFrame {
            node: self.node.clone(),
            user: user.to_string(),
            status: status.as_str().to_owned(),
            peers: peers.iter().map(ToString::to_string).collect(),
        };
        if let Ok(bytes) = serde_json::to_vec(&frame) {
            let _ = self.outbox.send(Outgoing::Status(Bytes::from(bytes)));
        }
        self.local.status_changed(user, status, peers);
    }

    fn may_write(&self) -> Result<(), Unavailable> {
        self.shared.may_write(Instant::now(), self.log.epoch())
    }

    fn visible_upto(&self) -> Option<MessageId> {
        Some(*crate::sync::read(&self.shared.visible))
    }

    fn health(&self) -> Result<(), Unavailable> {
        self.may_write()
    }
}

/// Publishes in the order the writer produced frames. Heartbeats are dropped while NATS is
/// unreachable (the client would only queue them); message frames queue, and a node that
/// misses one reads it from the database.
async fn publish(
    client: async_nats::Client,
    subjects: Subjects,
    mut outgoing: mpsc::UnboundedReceiver<Outgoing>,
) {
    let mut failures = 0u64;
    while let Some(item) = outgoing.recv().await {
        let (subject, bytes) = match item {
            Outgoing::Heartbeat(_)
                if client.connection_state() != async_nats::connection::State::Connected =>
            {
                continue;
            }
            Outgoing::Frame(bytes) | Outgoing::Heartbeat(bytes) => (&subjects.log, bytes),
            Outgoing::Status(bytes) => (&subjects.status, bytes),
            Outgoing::Notice(bytes) => (&subjects.notice, bytes),
        };
        if let Err(e) = client.publish(subject.clone(), bytes).await {
            failures += 1;
            if failures.is_power_of_two() {
                tracing::warn!(error = %e, failures, "publishing to NATS failed");
            }
        }
    }
}
