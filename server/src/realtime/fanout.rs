//! The in-process fan-out: stored messages and status changes go straight to this node's hub.
//! A single node uses it alone; a cluster node hands it what the cluster releases, in id order.

use std::sync::Arc;
use std::time::Duration;

use super::{Hub, Push};
use crate::domain::{Message, MessageId, Status, UserId};
use crate::messaging::{FanOut, MessageView, Unavailable};

pub struct LocalFanOut {
    hub: Arc<Hub>,
}

impl LocalFanOut {
    pub fn new(hub: Arc<Hub>) -> Arc<Self> {
        Arc::new(Self { hub })
    }
}

impl FanOut for LocalFanOut {
    fn committed(&self, messages: Vec<Message>, _position: MessageId) {
        for message in &messages {
            // Group messages cannot be sent yet: their pushes come with group sends.
            if let Some(recipient) = message.recipient {
                self.hub.publish(
                    &[recipient, message.sender],
                    Push::message(&MessageView::from(message)),
                );
            }
        }
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
