//! What one node knows of every writer in the cluster, and the rule that orders pushes: a
//! message is released (pushed to this node's connections, and shown to readers) only once
//! every live writer's position has passed its id. A writer's position is its promise that it
//! will never commit an id at or below it again (see `messaging::FanOut`), so once the minimum
//! of all positions passes an id, no message below that id can appear any more: releasing in id
//! order up to that minimum never skips and never reorders. This is Synapse's "persisted up to"
//! rule for multi-writer streams.
//!
//! Pure state, no I/O: the merger task (`super::merger`) feeds it frames and does the database
//! reads it asks for.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::domain::MessageId;
use crate::messaging::Addressed;

/// A frame from another node's writer, decoded.
#[derive(Debug, Clone)]
pub struct Heard {
    pub node: String,
    /// Random per process start: a new run of the same node starts counting again.
    pub run: u64,
    /// How many message frames this run has sent, this one included.
    pub seq: u64,
    /// True for a frame of committed messages (which counts in `seq`), false for a heartbeat.
    pub committed: bool,
    pub position: MessageId,
    pub knows_me: bool,
    pub messages: Vec<Addressed>,
}

/// The messages a node committed that this node must read from the database, because some of
/// its frames never arrived: ids in `(after, upto]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missed {
    pub node: String,
    pub after: MessageId,
    pub upto: MessageId,
    /// The node restarted: the previous run is gone, with whatever it still owed.
    pub restarted: bool,
    run: u64,
    seq: u64,
}

struct WriterState {
    run: u64,
    seq: u64,
    position: MessageId,
    heard: Instant,
    knows_me: bool,
}

pub struct View {
    writers: HashMap<String, WriterState>,
    mine: MessageId,
    pending: BTreeMap<MessageId, Addressed>,
    released: MessageId,
    started: Instant,
    warm_up: Duration,
}

impl View {
    /// `position`: this node's writer's position now. Nothing is released before `warm_up` has
    /// passed, so that every live writer has been heard from first.
    pub fn new(position: MessageId, now: Instant, warm_up: Duration) -> Self {
        Self {
            writers: HashMap::new(),
            mine: position,
            pending: BTreeMap::new(),
            released: MessageId::from(uuid::Uuid::nil()),
            started: now,
            warm_up,
        }
    }

    /// This node's writer committed `messages` (in id order) and moved to `position`.
    pub fn own(&mut self, messages: Vec<Addressed>, position: MessageId) {
        self.mine = self.mine.max(position);
        self.add(messages);
    }

    /// A frame from another node. `Some` when frames were missed: read those messages and call
    /// [`View::caught_up`]; until then that writer's position stays where it was.
    pub fn heard(&mut self, frame: Heard, now: Instant) -> Option<Missed> {
        let Heard {
            node,
            run,
            seq,
            committed,
            position,
            knows_me,
            messages,
        } = frame;
        self.add(messages);
        let Some(writer) = self.writers.get_mut(&node) else {
            self.writers.insert(
                node,
                WriterState {
                    run,
                    seq,
                    position,
                    heard: now,
                    knows_me,
                },
            );
            return None;
        };
        writer.heard = now;
        writer.knows_me = knows_me;
        let expected = if committed {
            writer.seq + 1
        } else {
            writer.seq
        };
        if writer.run == run && seq == expected {
            writer.position = writer.position.max(position);
            writer.seq = seq;
            return None;
        }
        Some(Missed {
            restarted: writer.run != run,
            after: writer.position,
            upto: position.max(writer.position),
            node,
            run,
            seq,
        })
    }

    /// The messages of `missed`, read from the database: the writer moves on.
    pub fn caught_up(&mut self, missed: Missed, messages: Vec<Addressed>) {
        self.add(messages);
        if let Some(writer) = self.writers.get_mut(&missed.node) {
            writer.run = missed.run;
            writer.seq = missed.seq;
            writer.position = writer.position.max(missed.upto);
        }
    }

    /// Writers not heard from for `silence`.
    pub fn silent(&self, now: Instant, silence: Duration) -> Vec<String> {
        self.writers
            .iter()
            .filter(|(_, w)| now.saturating_duration_since(w.heard) >= silence)
            .map(|(node, _)| node.clone())
            .collect()
    }

    /// What `node` has been heard to have committed up to.
    pub fn position_of(&self, node: &str) -> Option<MessageId> {
        self.writers.get(node).map(|w| w.position)
    }

    /// Stops waiting for `node` (gone). What it stored after its last position must be read
    /// from the database and [`View::add`]ed.
    pub fn evict(&mut self, node: &str) {
        self.writers.remove(node);
    }

    /// Messages known to be committed, from a frame or the database.
    pub fn add(&mut self, messages: Vec<Addressed>) {
        for addressed in messages {
            let id = addressed.message.id;
            if id <= self.released {
                // Only a writer that broke the join protocol gets here; pushing it late beats
                // losing it, and the log says why a client may see it out of order.
                tracing::error!(%id, "a message arrived after later ones were pushed");
            }
            self.pending.insert(id, addressed);
        }
    }

    /// Everything that may be pushed now, in id order, and the new visible position.
    pub fn release(&mut self, now: Instant) -> Option<(Vec<Addressed>, MessageId)> {
        if now.saturating_duration_since(self.started) < self.warm_up {
            return None;
        }
        let upto = self
            .writers
            .values()
            .map(|w| w.position)
            .fold(self.mine, MessageId::min);
        let mut batch = Vec::new();
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() > upto && *entry.key() > self.released {
                break;
            }
            batch.push(entry.remove());
        }
        if upto <= self.released && batch.is_empty() {
            return None;
        }
        self.released = self.released.max(upto);
        Some((batch, self.released))
    }

    pub fn knows(&self, node: &str) -> bool {
        self.writers.contains_key(node)
    }

    /// The nodes this one waits for (sent in its frames, so each node learns who knows it).
    pub fn writers(&self) -> Vec<String> {
        self.writers.keys().cloned().collect()
    }

    /// Every writer this node hears has heard this one (see `super::Shared::may_write`).
    pub fn known_by_all(&self) -> bool {
        self.writers.values().all(|w| w.knows_me)
    }

    /// Whether `node` is the first by name among the live nodes other than `gone` (it does the
    /// chores `gone` left).
    pub fn leads(&self, node: &str, gone: &str) -> bool {
        self.writers
            .keys()
            .all(|other| other == gone || node < other.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Content, Message, MessageKind, UserId};
    use crate::messaging::Sequencer;

    fn message(id: MessageId) -> Addressed {
        let (sender, recipient) = (UserId::new(), UserId::new());
        Addressed {
            message: Message {
                id,
                ..Message::new(
                    sender,
                    recipient,
                    Content::parse("hi".to_owned()).expect("content"),
                    MessageKind::User,
                )
            },
            audience: vec![sender, recipient],
        }
    }

    fn frame(
        node: &str,
        seq: u64,
        committed: bool,
        position: MessageId,
        ids: &[MessageId],
    ) -> Heard {
        Heard {
            node: node.to_owned(),
            run: 1,
            seq,
            committed,
            position,
            knows_me: true,
            messages: ids.iter().copied().map(message).collect(),
        }
    }

    fn ids(released: Option<(Vec<Addressed>, MessageId)>) -> Vec<MessageId> {
        released
            .map(|(batch, _)| batch.iter().map(|m| m.message.id).collect())
            .unwrap_or_default()
    }

    #[test]
    fn releases_in_id_order_only_what_every_writer_has_passed() {
        let clock = Sequencer::new();
        let t = Instant::now();
        let ours = clock.next();
        let mut view = View::new(ours, t, Duration::ZERO);
        let (a1, b1, a2, b2) = (clock.next(), clock.next(), clock.next(), clock.next());
        // Node b's frame arrives first, but a is still at a position below b1.
        assert_eq!(view.heard(frame("a", 0, false, ours, &[]), t), None);
        assert_eq!(view.heard(frame("b", 1, true, b2, &[b1, b2]), t), None);
        view.own(vec![], clock.next());
        assert_eq!(ids(view.release(t)), Vec::<MessageId>::new());
        // a commits a1 and a2, between and around b's: everything goes out in id order.
        assert_eq!(view.heard(frame("a", 1, true, a2, &[a1, a2]), t), None);
        assert_eq!(ids(view.release(t)), vec![a1, b1, a2]);
        assert_eq!(view.heard(frame("a", 1, false, clock.next(), &[]), t), None);
        assert_eq!(ids(view.release(t)), vec![b2]);
    }

    #[test]
    fn a_missed_frame_is_read_back_before_anything_after_it_goes_out() {
        let clock = Sequencer::new();
        let t = Instant::now();
        let mut view = View::new(clock.next(), t, Duration::ZERO);
        let start = clock.next();
        view.heard(frame("a", 0, false, start, &[]), t);
        let (lost, later) = (clock.next(), clock.next());
        // Frame 1 (with `lost`) never arrived; frame 2 did.
        let missed = view
            .heard(frame("a", 2, true, later, &[later]), t)
            .expect("a gap");
        assert_eq!((missed.after, missed.upto), (start, later));
        view.own(vec![], clock.next());
        assert_eq!(
            ids(view.release(t)),
            Vec::<MessageId>::new(),
            "held until caught up"
        );
        view.caught_up(missed, vec![message(lost), message(later)]);
        assert_eq!(ids(view.release(t)), vec![lost, later]);
    }

    #[test]
    fn a_silent_writer_is_evicted_and_stops_holding_others_back() {
        let clock = Sequencer::new();
        let t = Instant::now();
        let mut view = View::new(clock.next(), t, Duration::ZERO);
        view.heard(frame("dead", 0, false, clock.next(), &[]), t);
        let theirs = clock.next();
        view.heard(frame("alive", 1, true, theirs, &[theirs]), t);
        let later = t + Duration::from_secs(3);
        view.heard(frame("alive", 1, false, clock.next(), &[]), later);
        view.own(vec![], clock.next());
        assert_eq!(
            view.silent(later, Duration::from_secs(3)),
            vec!["dead".to_owned()]
        );
        assert!(view.leads("aaa", "dead") && !view.leads("zulu", "dead"));
        assert!(
            view.leads("beta", "alive"),
            "the node that left does not count"
        );
        view.evict("dead");
        assert_eq!(ids(view.release(later)), vec![theirs]);
    }

    #[test]
    fn nothing_is_released_while_warming_up() {
        let clock = Sequencer::new();
        let t = Instant::now();
        let mut view = View::new(clock.next(), t, Duration::from_millis(200));
        let id = clock.next();
        view.own(vec![message(id)], id);
        assert!(view.release(t).is_none());
        assert_eq!(ids(view.release(t + Duration::from_millis(200))), vec![id]);
    }
}
