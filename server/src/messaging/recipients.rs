//! What a send needs to know of its recipient (that they exist, and whether they are BUSY),
//! from memory instead of a store round trip per send (issue 21).
//!
//! Bound on staleness: on one server, none. Every status change goes through
//! `Messaging::set_status`, which updates this cache after the store. In a cluster, another
//! node's change arrives in its status frame (milliseconds); a frame NATS dropped is covered by
//! [`STALE_AFTER`], after which an entry is read from the store again. A deleted recipient
//! still cached is refused by the store at insert with the same 404 as a lookup would give
//! (ids are never reused), so deletions need no invalidation.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use crate::domain::{Status, UserId};
use crate::store::User;

/// The longest a status changed on another cluster node can go unseen here.
pub const STALE_AFTER: Duration = Duration::from_secs(5);
/// Past this many entries, stale ones are swept on the next insert.
const SWEEP_AT: usize = 10_000;

/// A user as last known (`None`: only that their status changed at `at`, so a lookup that
/// began before then is out of date).
struct Entry {
    user: Option<User>,
    at: Instant,
}

#[derive(Default)]
pub struct Recipients {
    entries: RwLock<HashMap<UserId, Entry>>,
}

impl Recipients {
    /// The recipient as last known, if known recently enough.
    pub fn get(&self, id: UserId) -> Option<User> {
        crate::sync::read(&self.entries)
            .get(&id)
            .filter(|entry| entry.at.elapsed() < STALE_AFTER)
            .and_then(|entry| entry.user.clone())
    }

    /// `user` as the store answered a lookup that began at `asked`. A change recorded since
    /// (a status set while the lookup was on its way) is newer and wins.
    pub fn remember(&self, user: User, asked: Instant) {
        let mut entries = crate::sync::write(&self.entries);
        if entries.get(&user.id).is_some_and(|entry| entry.at >= asked) {
            return;
        }
        if entries.len() >= SWEEP_AT {
            entries.retain(|_, entry| entry.at.elapsed() < STALE_AFTER);
        }
        let id = user.id;
        entries.insert(
            id,
            Entry {
                user: Some(user),
                at: asked,
            },
        );
    }

    /// `user`'s status is now `status` (set here, or heard from another node).
    pub fn status_changed(&self, user: UserId, status: Status) {
        let mut entries = crate::sync::write(&self.entries);
        let now = Instant::now();
        match entries.get_mut(&user) {
            Some(entry) => {
                if let Some(cached) = entry.user.as_mut() {
                    cached.status = status;
                }
                entry.at = now;
            }
            None => {
                entries.insert(
                    user,
                    Entry {
                        user: None,
                        at: now,
                    },
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Email;

    fn user(status: Status) -> User {
        User {
            id: UserId::new(),
            email: Email::parse("a@example.com").expect("email"),
            status,
        }
    }

    #[test]
    fn a_status_set_while_a_lookup_was_on_its_way_is_not_overwritten() {
        let recipients = Recipients::default();
        let ada = user(Status::Available);
        recipients.remember(ada.clone(), Instant::now());
        let asked = Instant::now();
        recipients.status_changed(ada.id, Status::Busy);
        // The lookup that began before the change answers the old status.
        recipients.remember(ada.clone(), asked);
        assert_eq!(recipients.get(ada.id).map(|u| u.status), Some(Status::Busy));
    }

    #[test]
    fn a_status_set_before_the_first_lookup_came_back_is_not_overwritten_either() {
        let recipients = Recipients::default();
        let ada = user(Status::Available);
        let asked = Instant::now();
        recipients.status_changed(ada.id, Status::Busy);
        assert!(
            recipients.get(ada.id).is_none(),
            "only a marker: look it up"
        );
        recipients.remember(ada.clone(), asked);
        assert!(
            recipients.get(ada.id).is_none(),
            "the stale answer is dropped"
        );
        let mut busy = ada.clone();
        busy.status = Status::Busy;
        recipients.remember(busy, Instant::now());
        assert_eq!(recipients.get(ada.id).map(|u| u.status), Some(Status::Busy));
    }
}
