//! The moderation seam: what the send path asks before it stores anything, and the memory that
//! lets an idempotent retry get the first outcome without asking again.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Instant;

use crate::domain::{Content, ConversationId, IDEMPOTENCY_WINDOW, IdempotencyKey, UserId};
use crate::store::StoreError;

/// Where a message about to be sent goes, as its sender named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    User(UserId),
    Conversation(ConversationId),
}

/// A message about to be sent: nothing is stored or pushed yet.
#[derive(Debug, Clone)]
pub struct Draft {
    pub sender: UserId,
    pub to: Destination,
    pub content: Content,
}

/// What the moderators decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Review {
    /// Send this (the draft's content, or what a moderator replaced it with).
    Pass(Content),
    /// Refuse it, telling the sender why (already cut and cleaned for them).
    Reject(String),
}

/// Whatever moderates messages (`moderation::Moderation`, the plugins in `MODERATION_PLUGINS`).
#[async_trait::async_trait]
pub trait Moderator: Send + Sync + 'static {
    /// False when nothing is configured: the send path then skips moderation entirely.
    fn enabled(&self) -> bool;
    /// Runs the chain; never slower than the chain's deadlines together.
    async fn review(&self, draft: &Draft) -> Result<Review, StoreError>;
}

/// No moderation (tests and tools that build the send path by hand).
pub struct NoModeration;

#[async_trait::async_trait]
impl Moderator for NoModeration {
    fn enabled(&self) -> bool {
        false
    }

    async fn review(&self, draft: &Draft) -> Result<Review, StoreError> {
        Ok(Review::Pass(draft.content.clone()))
    }
}

/// Outcomes remembered per node.
const MEMO_CAPACITY: usize = 10_000;

/// Recent (sender, idempotency key) → (draft, outcome): a retry of the same draft within the
/// idempotency window gets the first outcome without the chain running again. Per node and in
/// memory: after a restart, or on another node, the chain runs again (the same content then
/// replays the stored message, if the moderators decide alike).
#[derive(Default)]
pub(super) struct OutcomeMemo {
    entries: Mutex<Memo>,
}

#[derive(Default)]
struct Memo {
    by_key: HashMap<(UserId, IdempotencyKey), (Instant, Destination, String, Review)>,
    order: VecDeque<(UserId, IdempotencyKey)>,
}

impl OutcomeMemo {
    /// The first outcome for this exact draft under this key, if remembered.
    pub(super) fn get(&self, key: &IdempotencyKey, draft: &Draft) -> Option<Review> {
        let memo = crate::sync::lock(&self.entries);
        let (at, to, content, review) = memo.by_key.get(&(draft.sender, key.clone()))?;
        let fresh = at.elapsed() < IDEMPOTENCY_WINDOW;
        (fresh && *to == draft.to && content == draft.content.as_str()).then(|| review.clone())
    }

    pub(super) fn put(&self, key: IdempotencyKey, draft: &Draft, review: Review) {
        let mut memo = crate::sync::lock(&self.entries);
        let id = (draft.sender, key);
        let entry = (
            Instant::now(),
            draft.to.clone(),
            draft.content.as_str().to_owned(),
            review,
        );
        if memo.by_key.insert(id.clone(), entry).is_none() {
            memo.order.push_back(id);
        }
        while memo.order.len() > MEMO_CAPACITY {
            if let Some(oldest) = memo.order.pop_front() {
                memo.by_key.remove(&oldest);
            }
        }
    }
}
