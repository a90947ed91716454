//! The in-process fan-out: stored messages, status changes and notices go straight to this
//! node's hub. A single node uses it alone; a cluster node hands it what the cluster releases,
//! in id order, and the notices other nodes publish.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Hub, Push};
use crate::domain::{ConversationId, MessageId, Status, UserId};
use crate::messaging::{Addressed, FanOut, MessageView, Notice, Unavailable};

/// How long a removal keeps holding back the group's messages from the one removed: longer
/// than any send takes from reading the members to its push (in a cluster, including the
/// merger's wait for every writer).
const REMOVAL_HOLDS: Duration = Duration::from_secs(60);

pub struct LocalFanOut {
    hub: Arc<Hub>,
    /// Who was just removed from which group. A message sent while they were still a member
    /// carries them in its audience, and may be pushed after their `removed` notice: it is
    /// held back, so that nothing of a group reaches someone after they were told they are out.
    removed: Mutex<HashMap<(UserId, ConversationId), Instant>>,
}

impl LocalFanOut {
    pub fn new(hub: Arc<Hub>) -> Arc<Self> {
        Arc::new(Self {
            hub,
            removed: Mutex::new(HashMap::new()),
        })
    }

    fn remember_removal(&self, audience: &[UserId], conversation: ConversationId) {
        let now = Instant::now();
        let mut removed = crate::sync::lock(&self.removed);
        removed.retain(|_, at| now.saturating_duration_since(*at) < REMOVAL_HOLDS);
        for user in audience {
            removed.insert((*user, conversation), now);
        }
    }

    fn forget_removal(&self, audience: &[UserId], conversation: ConversationId) {
        let mut removed = crate::sync::lock(&self.removed);
        if !removed.is_empty() {
            for user in audience {
                removed.remove(&(*user, conversation));
            }
        }
    }

    /// `audience` without those just removed from the message's group.
    fn still_in(&self, addressed: &Addressed) -> Option<Vec<UserId>> {
        if addressed.message.recipient.is_some() {
            return None;
        }
        let removed = crate::sync::lock(&self.removed);
        if removed.is_empty() {
            return None;
        }
        let conversation = addressed.message.conversation;
        Some(
            addressed
                .audience
                .iter()
                .copied()
                .filter(|user| !removed.contains_key(&(*user, conversation)))
                .collect(),
        )
    }
}

impl FanOut for LocalFanOut {
    fn committed(&self, messages: Vec<Addressed>, _position: MessageId) {
        for addressed in &messages {
            let push = Push::message(&MessageView::from(&addressed.message));
            match self.still_in(addressed) {
                Some(audience) => self.hub.publish(&audience, push),
                None => self.hub.publish(&addressed.audience, push),
            }
        }
    }

    fn notify(&self, audience: Vec<UserId>, notice: Notice) {
        if let Some(conversation) = notice.conversation() {
            match &notice {
                Notice::Removed { .. } => self.remember_removal(&audience, conversation),
                // They are (back) in it.
                Notice::Conversation { .. } => self.forget_removal(&audience, conversation),
                Notice::Read { .. } | Notice::Typing { .. } | Notice::ReplyProgress { .. } => {}
            }
        }
        self.hub.publish(&audience, Push::notice(&notice));
    }

    fn position(&self, _position: MessageId) {}

    fn heartbeat_every(&self) -> Option<Duration> {
        None
    }

    fn status_changed(&self, user: UserId, status: Status, mut peers: Vec<UserId>) {
        peers.retain(|peer| self.hub.is_online(*peer));
        peers.push(user);
        self.hub.publish(&peers, Push::status(user, status));
    }

    fn may_write(&self) -> Result<(), Unavailable> {
        Ok(())
    }

    fn visible_upto(&self) -> Option<MessageId> {
        None
    }

    fn health(&self) -> Result<(), Unavailable> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Content, Message};
    use crate::realtime::ConnectionCaps;

    #[tokio::test]
    async fn nothing_of_a_group_reaches_someone_after_their_removal() {
        let hub = Hub::new(8, ConnectionCaps::default());
        let fanout = LocalFanOut::new(hub.clone());
        let (ada, bob) = (UserId::new(), UserId::new());
        let group = ConversationId::new_group();
        let mut bobs = hub.subscribe(bob).expect("room");
        let mut adas = hub.subscribe(ada).expect("room");
        // Sent while Bob was a member, pushed after he was told he is out.
        let late = Addressed {
            message: Message::to_group(ada, group, Content::parse("hi".into()).expect("ok")),
            audience: vec![ada, bob],
        };
        fanout.notify(vec![bob], Notice::removed(group));
        fanout.committed(vec![late.clone()], late.message.id);
        assert_eq!(bobs.queue.try_recv().map(|p| p.event).ok(), Some("removed"));
        assert!(bobs.queue.try_recv().is_err(), "nothing after `removed`");
        assert_eq!(adas.queue.try_recv().map(|p| p.event).ok(), Some("message"));
        // Added back: he hears the group again.
        fanout.notify(
            vec![ada, bob],
            Notice::Conversation {
                conversation: serde_json::json!({"id": group.to_string()}),
            },
        );
        fanout.committed(vec![late.clone()], late.message.id);
        assert_eq!(
            bobs.queue.try_recv().map(|p| p.event).ok(),
            Some("conversation")
        );
        assert_eq!(bobs.queue.try_recv().map(|p| p.event).ok(), Some("message"));
    }
}
