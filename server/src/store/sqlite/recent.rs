//! The newest history page of recently active readers, kept in memory until a write could
//! change it.
//!
//! Why: a client opening the app asks for its newest page, often and mostly unchanged, and
//! each such read cost two thread hops, a snapshot, a compound query and 50 rows parsed (about
//! 70% of the server's CPU in the history benchmark, docs/perf). A hit is one mutex and a clone.
//!
//! Correct by stamps, not by timing. A logical clock moves on every write that could change
//! someone's page, and records, per user and per group, the time of the last such write. A
//! reader takes the time *before* its snapshot begins, so its page holds at least everything
//! stamped up to then; the page serves later reads only while nothing it depends on (the user,
//! and each group it read) has a later stamp. Writers stamp *after* their commit and before
//! their caller hears back, so a sender who got "sent" (or a recipient who got the push) and
//! then reads never gets a page without that message. Only the embedded store caches: it has
//! the one writer, so every write is seen here; MongoDB may be shared by other servers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::domain::{ConversationId, Message, UserId};

/// What a page depends on: a user's direct messages and groups, or one group's messages.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(super) enum Key {
    User(UserId),
    Group(ConversationId),
}

/// Past this many remembered stamps, they are all dropped at once (and with them every page,
/// which can no longer be checked). About 40 bytes each.
const MAX_STAMPS: usize = 200_000;

/// A page read at `stamp`, with the groups it covered.
struct Page {
    stamp: u64,
    limit: u32,
    groups: Vec<ConversationId>,
    messages: Arc<[Message]>,
    bytes: usize,
}

#[derive(Default)]
struct State {
    clock: u64,
    /// The last write that touched each key. A key never written since `floor` is absent.
    stamps: HashMap<Key, u64>,
    /// No page read before this is trusted (stamps older than it were forgotten).
    floor: u64,
    pages: HashMap<UserId, Page>,
    bytes: usize,
}

impl State {
    fn changed_since(&self, key: Key, stamp: u64) -> bool {
        self.stamps.get(&key).is_some_and(|&at| at > stamp)
    }

    fn forget_everything(&mut self) {
        self.floor = self.clock;
        self.stamps.clear();
        self.pages.clear();
        self.bytes = 0;
    }
}

pub(super) struct RecentPages {
    state: Mutex<State>,
    /// Bound on the pages' estimated size; past it, arbitrary pages make room.
    capacity: usize,
}

impl RecentPages {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::default(),
            capacity,
        }
    }

    /// The time to give [`Self::put`]; take it before the read's snapshot begins.
    pub(super) fn now(&self) -> u64 {
        crate::sync::lock(&self.state).clock
    }

    /// `user`'s newest page of `limit` messages, if one is kept and nothing changed it since.
    pub(super) fn get(&self, user: UserId, limit: u32) -> Option<Arc<[Message]>> {
        let state = crate::sync::lock(&self.state);
        let page = state.pages.get(&user)?;
        let fresh = page.limit == limit
            && page.stamp >= state.floor
            && !state.changed_since(Key::User(user), page.stamp)
            && !page
                .groups
                .iter()
                .any(|group| state.changed_since(Key::Group(*group), page.stamp));
        fresh.then(|| page.messages.clone())
    }

    /// Keeps a page read at `stamp` (from [`Self::now`]) that covered `groups`.
    pub(super) fn put(
        &self,
        user: UserId,
        limit: u32,
        stamp: u64,
        groups: Vec<ConversationId>,
        messages: Arc<[Message]>,
    ) {
        let bytes = size_of::<Page>()
            + groups.len() * size_of::<ConversationId>()
            + messages
                .iter()
                .map(|m| size_of::<Message>() + m.content.len())
                .sum::<usize>();
        if bytes > self.capacity {
            return;
        }
        let mut state = crate::sync::lock(&self.state);
        // A page older than what is kept, or already outdated, is of no use.
        if stamp < state.floor || state.pages.get(&user).is_some_and(|p| p.stamp > stamp) {
            return;
        }
        if let Some(old) = state.pages.remove(&user) {
            state.bytes -= old.bytes;
        }
        while state.bytes + bytes > self.capacity {
            let Some(victim) = state.pages.keys().next().copied() else {
                break;
            };
            if let Some(old) = state.pages.remove(&victim) {
                state.bytes -= old.bytes;
            }
        }
        state.bytes += bytes;
        state.pages.insert(
            user,
            Page {
                stamp,
                limit,
                groups,
                messages,
                bytes,
            },
        );
    }

    /// Records a committed write that may change the pages of everyone `keys` names.
    pub(super) fn changed(&self, keys: impl IntoIterator<Item = Key>) {
        let mut state = crate::sync::lock(&self.state);
        state.clock += 1;
        let now = state.clock;
        for key in keys {
            state.stamps.insert(key, now);
        }
        if state.stamps.len() > MAX_STAMPS {
            state.forget_everything();
        }
    }

    /// Records a committed write whose reach is not worth working out (an account deletion).
    pub(super) fn changed_everything(&self) {
        let mut state = crate::sync::lock(&self.state);
        state.clock += 1;
        state.forget_everything();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Content, MessageKind};

    fn page(from: UserId, to: UserId) -> Arc<[Message]> {
        let content = Content::parse("hi".into()).expect("valid content");
        vec![Message::new(from, to, content, MessageKind::User)].into()
    }

    #[test]
    fn a_page_serves_until_a_write_it_depends_on() {
        let recent = RecentPages::new(1 << 20);
        let (alice, bob, carol) = (UserId::new(), UserId::new(), UserId::new());
        let group = ConversationId::new_group();
        let stamp = recent.now();
        recent.put(alice, 50, stamp, vec![group], page(bob, alice));
        assert!(recent.get(alice, 50).is_some());
        assert!(recent.get(alice, 20).is_none(), "another page size");

        recent.changed([Key::User(bob), Key::User(carol)]);
        recent.changed([Key::Group(ConversationId::new_group())]);
        assert!(recent.get(alice, 50).is_some(), "others' writes");

        recent.changed([Key::Group(group)]);
        assert!(recent.get(alice, 50).is_none(), "a message in her group");

        recent.put(alice, 50, recent.now(), vec![], page(bob, alice));
        recent.changed([Key::User(alice)]);
        assert!(recent.get(alice, 50).is_none(), "a message to her");
    }

    #[test]
    fn a_page_read_before_a_write_is_never_kept_past_it() {
        let recent = RecentPages::new(1 << 20);
        let alice = UserId::new();
        // The reader took the time, then a write committed and stamped, then the reader's
        // (possibly older) page arrives.
        let stamp = recent.now();
        recent.changed([Key::User(alice)]);
        recent.put(alice, 50, stamp, vec![], page(alice, alice));
        assert!(recent.get(alice, 50).is_none());
        // Nor does it replace a newer page.
        let newer = recent.now();
        recent.put(alice, 50, newer, vec![], page(alice, alice));
        recent.put(alice, 50, stamp, vec![], page(alice, alice));
        assert_eq!(recent.get(alice, 50).map(|p| p.len()), Some(1));
    }

    #[test]
    fn forgetting_stamps_drops_every_page() {
        let recent = RecentPages::new(1 << 20);
        let alice = UserId::new();
        let stamp = recent.now();
        recent.put(alice, 50, stamp, vec![], page(alice, alice));
        recent.changed_everything();
        assert!(recent.get(alice, 50).is_none());
        // A read that began before the forgetting cannot be checked: not kept.
        recent.put(alice, 50, stamp, vec![], page(alice, alice));
        assert!(recent.get(alice, 50).is_none());
    }

    #[test]
    fn pages_stay_within_the_capacity() {
        let one = RecentPages::new(1 << 20);
        one.put(
            UserId::new(),
            50,
            0,
            vec![],
            page(UserId::new(), UserId::new()),
        );
        let size = crate::sync::lock(&one.state).bytes;
        let recent = RecentPages::new(size * 3);
        let users: Vec<UserId> = (0..10).map(|_| UserId::new()).collect();
        for user in &users {
            recent.put(*user, 50, recent.now(), vec![], page(*user, *user));
        }
        let state = crate::sync::lock(&recent.state);
        assert_eq!(state.pages.len(), 3);
        assert_eq!(state.bytes, size * 3);
        assert!(state.pages.contains_key(&users[9]), "the newest is kept");
    }
}
