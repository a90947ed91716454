//! The in-process fan-out: stored messages and status changes go straight to this node's hub.
//! A single node uses it alone; a cluster node hands it what the cluster releases, in id order.

use std::sync::Arc;
use std::time::Duration;

use chrono::SecondsFormat;
use serde_json::{Value, json};

use super::{Hub, Push};
use crate::domain::{Message, MessageId, Status, UserId};
use crate::messaging::{FanOut, Unavailable};

pub struct LocalFanOut {
    hub: Arc<Hub>,
}

impl LocalFanOut {
    pub fn new(hub: Arc<Hub>) -> Arc<Self> {
        Arc::new(Self { hub })
    }
}

/// A message as every transport shows it; the same fields as the API's `MessageView`.
pub fn message_payload(message: &Message) -> Value {
    json!({
        "id": message.id.to_string(),
        "sender": message.sender.to_string(),
        "recipient": message.recipient.to_string(),
        "content": message.content,
        "sent_at": message.sent_at.to_rfc3339_opts(SecondsFormat::Millis, true),
        "kind": message.kind.as_str(),
    })
}

impl FanOut for LocalFanOut {
    fn committed(&self, messages: Vec<Message>, _position: MessageId) {
        for message in &messages {
            self.hub.publish(
                &[message.recipient, message.sender],
                Push::message(message_payload(message)),
            );
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
