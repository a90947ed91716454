//! The merger task: the one owner of this node's [`View`]. It takes this node's own frames, the
//! other nodes' frames from NATS and a periodic tick; reads from the database what a missed
//! frame or a dead node leaves out; and pushes what the view releases, in id order.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::view::{Heard, View};
use super::{EVICT_AFTER, Frame, JOIN_WAIT, NoticeFrame, Parts, Shared, StatusFrame};
use crate::domain::{ConversationId, Message, MessageId, MessageKind, MessagePage, Status, UserId};
use crate::messaging::Addressed;
use crate::store::{Store, StoreError};

/// How often silent nodes are looked for.
const TICK: Duration = Duration::from_millis(100);

pub(super) struct Merger {
    pub node: String,
    pub run: u64,
    pub shared: Arc<Shared>,
    pub parts: Parts,
    pub own_frames: mpsc::UnboundedReceiver<(Vec<Addressed>, MessageId)>,
    pub log_frames: async_nats::Subscriber,
    pub status_frames: async_nats::Subscriber,
    pub notice_frames: async_nats::Subscriber,
}

pub(super) async fn run(mut m: Merger) {
    let mut view = View::new(m.parts.ids.next(), Instant::now(), JOIN_WAIT);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            own = m.own_frames.recv() => match own {
                Some((messages, position)) => view.own(messages, position),
                None => break,
            },
            frame = m.log_frames.next() => match frame {
                Some(frame) => m.heard(&mut view, &frame.payload).await,
                None => break,
            },
            status = m.status_frames.next() => match status {
                Some(status) => m.status(&status.payload),
                None => break,
            },
            notice = m.notice_frames.next() => match notice {
                Some(notice) => m.notice(&notice.payload),
                None => break,
            },
            _ = tick.tick() => m.evict_silent(&mut view).await,
        }
        if let Some((batch, upto)) = view.release(Instant::now()) {
            m.parts.local.committed(batch, upto);
            *crate::sync::write(&m.shared.visible) = upto;
        }
        let epoch = m.parts.log.epoch();
        *crate::sync::lock(&m.shared.known_by_all) = view.known_by_all(epoch).then_some(epoch);
        let writers = view.writers();
        if *crate::sync::read(&m.shared.writers) != writers {
            crate::metrics::cluster_nodes(writers.len());
            *crate::sync::write(&m.shared.writers) = writers;
        }
    }
    tracing::warn!("the cluster merger stopped");
}

impl Merger {
    async fn heard(&self, view: &mut View, payload: &[u8]) {
        let now = Instant::now();
        let frame: Frame = match serde_json::from_slice(payload) {
            Ok(frame) => frame,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring an unreadable cluster frame");
                return;
            }
        };
        if frame.node == self.node {
            if frame.run == self.run {
                self.shared.echo(now);
            } else {
                tracing::error!(node = %self.node,
                    "another running node has this NODE_ID; every node needs its own");
            }
            return;
        }
        let Ok(position) = MessageId::parse(&frame.position) else {
            tracing::warn!(node = %frame.node, "ignoring a cluster frame without a position");
            return;
        };
        let mut messages = Vec::with_capacity(frame.messages.len());
        for wire in frame.messages {
            match Addressed::try_from(wire) {
                Ok(message) => messages.push(message),
                // Read back from the database below, like a frame that never came.
                Err(e) => {
                    tracing::warn!(node = %frame.node, error = %e, "unreadable message in a cluster frame")
                }
            }
        }
        self.parts.ids.observe(position);
        let is_new = !view.knows(&frame.node);
        let knows_me = match frame.writers.iter().position(|w| *w == self.node) {
            None => None,
            Some(at) => frame.epochs.get(at).copied(),
        };
        let heard = Heard {
            knows_me,
            node: frame.node,
            run: frame.run,
            epoch: frame.epoch,
            seq: frame.seq,
            committed: frame.committed,
            position,
            messages,
        };
        if let Some(missed) = view.heard(heard, now) {
            tracing::info!(node = %missed.node, "frames were missed; reading them from the database");
            // Restarted before anyone took it for dead: what the old run owed is owed still.
            // The new run's own messages come after its first position, so they are left alone.
            // The old run may still be alive, paused (a node restarted while the old process
            // hung): fence it before reading, so the read is complete.
            if missed.restarted
                && let Err(e) = self
                    .parts
                    .log
                    .fence(&missed.node, missed.epoch_before)
                    .await
            {
                tracing::warn!(error = %e, "cannot fence a restarted node's old run; reading later");
                return;
            }
            if missed.restarted && view.leads(&self.node, &missed.node) {
                tokio::spawn(answer_orphans(
                    missed.node.clone(),
                    Some(missed.upto),
                    self.parts.log.clone(),
                    self.parts.store.clone(),
                    self.parts.orphans.clone(),
                    self.parts.responder_timeout,
                ));
            }
            let found = self
                .parts
                .log
                .stored_by(&missed.node, missed.after, Some(missed.upto))
                .await;
            match address(self.parts.store.as_ref(), found).await {
                Ok(found) => {
                    crate::metrics::cluster_recovered("missed_frames", found.len());
                    view.caught_up(missed, found);
                }
                // The writer's position stays put (holding later pushes back) and the next
                // frame tries again.
                Err(e) => tracing::warn!(error = %e, "reading missed messages failed"),
            }
        }
        if is_new {
            tracing::info!("a node joined");
        }
    }

    fn status(&self, payload: &[u8]) {
        let Ok(frame) = serde_json::from_slice::<StatusFrame>(payload) else {
            tracing::warn!("ignoring an unreadable status frame");
            return;
        };
        if frame.node == self.node {
            return;
        }
        let (Ok(user), Ok(status)) = (UserId::parse(&frame.user), Status::parse(&frame.status))
        else {
            return;
        };
        let peers = frame
            .peers
            .iter()
            .filter_map(|p| UserId::parse(p).ok())
            .collect();
        self.parts.recipients.status_changed(user, status);
        self.parts.local.status_changed(user, status, peers);
    }

    fn notice(&self, payload: &[u8]) {
        let Ok(frame) = serde_json::from_slice::<NoticeFrame>(payload) else {
            tracing::warn!("ignoring an unreadable notice frame");
            return;
        };
        if frame.node == self.node {
            return;
        }
        let audience = frame
            .audience
            .iter()
            .filter_map(|u| UserId::parse(u).ok())
            .collect();
        self.parts.local.notify(audience, frame.notice);
    }

    /// Takes silent nodes for dead. Only once this node has heard itself for as long as it
    /// takes others for dead: a silence that began while it was not listening (paused, or cut
    /// off from NATS) is its own, and the others are fine.
    async fn evict_silent(&self, view: &mut View) {
        let now = Instant::now();
        if self.shared.listening_for(now) < EVICT_AFTER {
            return;
        }
        for node in view.silent(now, EVICT_AFTER) {
            let Some((position, epoch)) = view.position_of(&node) else {
                continue;
            };
            // Fenced first, it can store nothing more: then what it stored but never announced
            // is all there is, and only then is it safe to stop waiting for it.
            if let Err(e) = self.parts.log.fence(&node, epoch).await {
                tracing::warn!(node = %node, error = %e, "cannot fence a silent node; still waiting for it");
                continue;
            }
            let found = self.parts.log.stored_by(&node, position, None).await;
            match address(self.parts.store.as_ref(), found).await {
                Ok(found) => {
                    tracing::warn!(node = %node, recovered = found.len(),
                        "a node has been silent for {}s: taken for dead", EVICT_AFTER.as_secs());
                    crate::metrics::cluster_recovered("node_lost", found.len());
                    view.evict(&node, epoch);
                    view.add(found);
                }
                Err(e) => {
                    tracing::warn!(node = %node, error = %e, "cannot read what a silent node stored; still waiting for it");
                    continue;
                }
            }
            if view.leads(&self.node, &node) {
                tokio::spawn(answer_orphans(
                    node,
                    None,
                    self.parts.log.clone(),
                    self.parts.store.clone(),
                    self.parts.orphans.clone(),
                    self.parts.responder_timeout,
                ));
            }
        }
    }
}

/// Who messages read back from the database go to: the two sides of a direct message; a
/// group's members as they are now (the ones at sending time are not stored; this is the
/// recovery path, and anyone removed since was told so and is held back by the fan-out).
async fn address(
    store: &dyn Store,
    found: Result<Vec<Message>, StoreError>,
) -> Result<Vec<Addressed>, StoreError> {
    let mut members: HashMap<ConversationId, Vec<UserId>> = HashMap::new();
    let mut addressed = Vec::new();
    for message in found? {
        let audience = match message.recipient {
            Some(recipient) => vec![message.sender, recipient],
            None => match members.get(&message.conversation) {
                Some(known) => known.clone(),
                None => {
                    let now: Vec<UserId> = store
                        .conversation(message.conversation)
                        .await?
                        .map(|c| c.members.iter().map(|m| m.user).collect())
                        .unwrap_or_default();
                    members.insert(message.conversation, now.clone());
                    now
                }
            },
        };
        addressed.push(Addressed { message, audience });
    }
    Ok(addressed)
}

/// The senders a dead node owed an auto-reply (its BUSY recipients' messages, within the
/// responder's deadline) get the fallback, unless an answer is stored already. One per
/// conversation, as on a live node: the newest unanswered message gets it.
async fn answer_orphans(
    node: String,
    upto: Option<MessageId>,
    log: Arc<dyn crate::store::ClusterLog>,
    store: Arc<dyn crate::store::Store>,
    orphans: mpsc::UnboundedSender<Message>,
    timeout: Duration,
) {
    let window = timeout + EVICT_AFTER + Duration::from_secs(2);
    let since = crate::messaging::first_id_since(window);
    let awaiting = match log.awaiting_reply(&node, since, upto).await {
        Ok(awaiting) => awaiting,
        Err(e) => {
            tracing::error!(error = %e, node = %node, "cannot read what a dead node owed");
            return;
        }
    };
    let mut newest: HashMap<(UserId, UserId), (UserId, Message)> = HashMap::new();
    for message in awaiting {
        // Only direct messages await an auto-reply.
        if let Some(recipient) = message.recipient {
            newest.insert((message.sender, recipient), (recipient, message));
        }
    }
    for (recipient, message) in newest.into_values() {
        let page = MessagePage {
            conversation: Some(message.conversation),
            after: Some(message.id),
            limit: crate::domain::MAX_PAGE_LIMIT,
            ..MessagePage::default()
        };
        let answered = match store.list_messages(recipient, &page).await {
            Ok(later) => later
                .iter()
                .any(|m| m.kind == MessageKind::AutoReply && m.sender == recipient),
            Err(e) => {
                tracing::warn!(error = %e, "cannot check for an answer; sending the fallback");
                false
            }
        };
        if !answered {
            tracing::info!(node = %node, message = %message.id, "answering for a dead node");
            let _ = orphans.send(message);
        }
    }
}
