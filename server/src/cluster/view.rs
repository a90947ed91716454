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

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use crate::domain::MessageId;
use crate::messaging::Addressed;

/// A frame from another node's writer, decoded.
#[derive(Debug, Clone)]
pub struct Heard {
    pub node: String,
    /// Random per process start: a new run of the same node starts counting again.
    pub run: u64,
    /// The writer's fencing epoch: it changes when the node finds itself fenced.
    pub epoch: u64,
    /// How many message frames this run has sent, this one included.
    pub seq: u64,
    /// True for a frame of committed messages (which counts in `seq`), false for a heartbeat.
    pub committed: bool,
    pub position: MessageId,
    /// The epoch of this node's writer that the frame's sender waits for, if it waits for
    /// this node at all.
    pub knows_me: Option<u64>,
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
    /// The epoch the node wrote under before the gap (to fence, when it restarted).
    pub epoch_before: u64,
    run: u64,
    epoch: u64,
    seq: u64,
}

struct WriterState {
    run: u64,
    epoch: u64,
    seq: u64,
    position: MessageId,
    heard: Instant,
    knows_me: Option<u64>,
}

/// How many released ids are remembered, to recognise a message that comes again (from a
/// fenced writer's late frame, or a database read overlapping one) and not push it twice.
const REMEMBERED: usize = 8192;

pub struct View {
    writers: HashMap<String, WriterState>,
    /// Writers' epochs this node fenced: everything they stored was read from the database
    /// then, so their frames' messages are old news.
    fenced: HashSet<(String, u64)>,
    mine: MessageId,
    pending: BTreeMap<MessageId, Addressed>,
    released: MessageId,
    recent: HashSet<MessageId>,
    recent_order: VecDeque<MessageId>,
    started: Instant,
    warm_up: Duration,
}

impl View {
    /// `position`: this node's writer's position now. Nothing is released before `warm_up` has
    /// passed, so that every live writer has been heard from first.
    pub fn new(position: MessageId, now: Instant, warm_up: Duration) -> Self {
        Self {
            writers: HashMap::new(),
            fenced: HashSet::new(),
            mine: position,
            pending: BTreeMap::new(),
            released: MessageId::from(uuid::Uuid::nil()),
            recent: HashSet::new(),
            recent_order: VecDeque::new(),
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
            epoch,
            seq,
            committed,
            position,
            knows_me,
            messages,
        } = frame;
        // A fenced epoch's positions still hold (it can commit nothing more), so the node is
        // waited for again; its messages were all read when it was fenced.
        if !self.fenced.contains(&(node.clone(), epoch)) {
            self.add(messages);
        }
        let Some(writer) = self.writers.get_mut(&node) else {
            self.writers.insert(
                node,
                WriterState {
                    run,
                    epoch,
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
        let epoch_before = writer.epoch;
        writer.epoch = epoch;
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
            epoch_before,
            after: writer.position,
            upto: position.max(writer.position),
            node,
            run,
            epoch,
            seq,
        })
    }

    /// The messages of `missed`, read from the database: the writer moves on.
    pub fn caught_up(&mut self, missed: Missed, messages: Vec<Addressed>) {
        self.add(messages);
        if let Some(writer) = self.writers.get_mut(&missed.node) {
            writer.run = missed.run;
            writer.epoch = missed.epoch;
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

    /// What `node` has been heard to have committed up to, and the epoch it writes under.
    pub fn position_of(&self, node: &str) -> Option<(MessageId, u64)> {
        self.writers.get(node).map(|w| (w.position, w.epoch))
    }

    /// Stops waiting for `node` (gone), whose writer's `epoch` is fenced. What it stored after
    /// its last position must be read from the database and [`View::add`]ed.
    pub fn evict(&mut self, node: &str, epoch: u64) {
        self.writers.remove(node);
        self.fenced.insert((node.to_owned(), epoch));
    }

    /// Messages known to be committed, from a frame or the database.
    pub fn add(&mut self, messages: Vec<Addressed>) {
        for addressed in messages {
            let id = addressed.message.id;
            if self.recent.contains(&id) {
                continue;
            }
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
        for addressed in &batch {
            self.remember(addressed.message.id);
        }
        if upto <= self.released && batch.is_empty() {
            return None;
        }
        self.released = self.released.max(upto);
        Some((batch, self.released))
    }

    fn remember(&mut self, id: MessageId) {
        if self.recent.insert(id) {
            self.recent_order.push_back(id);
        }
        if self.recent_order.len() > REMEMBERED
            && let Some(oldest) = self.recent_order.pop_front()
        {
            self.recent.remove(&oldest);
        }
    }

    pub fn knows(&self, node: &str) -> bool {
        self.writers.contains_key(node)
    }

    /// The nodes this one waits for, with their epochs (sent in its frames, so each node
    /// learns who waits for it, under which epoch), sorted by name.
    pub fn writers(&self) -> Vec<(String, u64)> {
        let mut writers: Vec<_> = self
            .writers
            .iter()
            .map(|(node, w)| (node.clone(), w.epoch))
            .collect();
        writers.sort_unstable();
        writers
    }

    /// Every writer this node hears waits for this one's writer under `epoch` (see
    /// `super::Shared::may_write`).
    pub fn known_by_all(&self, epoch: u64) -> bool {
        self.writers.values().all(|w| w.knows_me == Some(epoch))
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
            epoch: 1,
            seq,
            committed,
            position,
            knows_me: Some(1),
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
        view.evict("dead", 1);
        assert_eq!(ids(view.release(later)), vec![theirs]);
    }

    /// The pause the fencing is for: node a stores a message, freezes before announcing it,
    /// is taken for dead (fenced, and its message read from the database), and wakes up to
    /// send its old frame. Nothing is pushed twice, and a is waited for again.
    #[test]
    fn a_fenced_writers_late_frame_pushes_nothing_twice() {
        let clock = Sequencer::new();
        let t = Instant::now();
        let mut view = View::new(clock.next(), t, Duration::ZERO);
        let start = clock.next();
        view.heard(frame("a", 0, false, start, &[]), t);
        let stored = clock.next();
        let later = t + Duration::from_secs(3);
        view.own(vec![], clock.next());
        view.evict("a", 1);
        view.add(vec![message(stored)]);
        assert_eq!(ids(view.release(later)), vec![stored]);
        // The frame it had prepared, and a repeat of it from a database read.
        assert_eq!(
            view.heard(frame("a", 1, true, stored, &[stored]), later),
            None
        );
        view.add(vec![message(stored)]);
        let next = clock.next();
        view.own(vec![message(next)], next);
        assert_eq!(
            ids(view.release(later)),
            Vec::<MessageId>::new(),
            "a is waited for"
        );
        view.heard(frame("a", 1, false, clock.next(), &[]), later);
        assert_eq!(ids(view.release(later)), vec![next]);
    }

    #[test]
    fn a_node_may_write_only_under_an_epoch_every_other_node_waits_for() {
        let clock = Sequencer::new();
        let t = Instant::now();
        let mut view = View::new(clock.next(), t, Duration::ZERO);
        assert!(view.known_by_all(7), "alone, nobody needs to know");
        view.heard(frame("a", 0, false, clock.next(), &[]), t);
        let mut other = frame("b", 0, false, clock.next(), &[]);
        other.knows_me = Some(7);
        view.heard(other, t);
        assert!(!view.known_by_all(7), "a waits for epoch 1 of this node");
        assert!(!view.known_by_all(1), "b waits for epoch 7");
        let mut again = frame("a", 0, false, clock.next(), &[]);
        again.knows_me = Some(7);
        view.heard(again, t);
        assert!(view.known_by_all(7));
        assert_eq!(view.writers(), [("a".to_owned(), 1), ("b".to_owned(), 1)]);
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
