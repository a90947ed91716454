//! Conversations, whatever transport asks: creating groups, reading and changing them, the
//! conversation list and read marks. Who may do what is decided here: a conversation the
//! caller is not in does not exist for them (the same "Conversation not found" as one that
//! does not exist at all), and only a group's owner renames it or changes its members
//! (anyone may leave).
//!
//! Every change is told to the members' live connections through the fan-out, after it is
//! stored: a `conversation` notice to everyone in it afterwards, `removed` to whoever left or
//! was removed, `read` when a read mark moves; typing is relayed, never stored.

mod view;

use std::sync::Arc;

pub use view::{ConversationView, MemberView};

use crate::domain::{
    Conversation, ConversationId, ConversationKind, ConversationSummary, Member, MessageId, Role,
    Title, UserId, ValidationError,
};
use crate::failure::{Failure, RetryAfter};
use crate::limits::Limits;
use crate::messaging::{FanOut, Notice};
use crate::store::{CONVERSATION_NOT_FOUND, Store, StoreError, USER_NOT_FOUND, User};

#[derive(Debug, thiserror::Error)]
pub enum ConversationError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// It does not exist, or the caller is not in it.
    #[error("no such conversation")]
    NotFound,
    #[error("no such user")]
    UserNotFound,
    #[error("no such message in the conversation")]
    MessageNotFound,
    #[error("only the owner may do this")]
    NotOwner,
    #[error("a direct conversation has no title or members to change")]
    Direct,
    #[error("the group is full")]
    Full(usize),
    #[error("creating groups too fast")]
    TooFast(RetryAfter),
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for ConversationError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::UnknownUser => Self::UserNotFound,
            other => Self::Store(other),
        }
    }
}

impl From<ConversationError> for Failure {
    fn from(err: ConversationError) -> Self {
        match err {
            ConversationError::Invalid(problem) => problem.into(),
            ConversationError::NotFound => Failure::not_found(CONVERSATION_NOT_FOUND),
            ConversationError::UserNotFound => Failure::not_found(USER_NOT_FOUND),
            ConversationError::MessageNotFound => Failure::not_found("Message not found"),
            ConversationError::NotOwner => Failure::forbidden("Only the group's owner can do this"),
            ConversationError::Direct => {
                Failure::bad_request("A direct conversation has no title or members to change")
            }
            ConversationError::Full(max) => {
                Failure::bad_request(format!("A group holds at most {max} members"))
            }
            ConversationError::TooFast(wait) => Failure::too_many_requests(
                format!(
                    "You are creating groups too fast; try again in {} s",
                    wait.seconds()
                ),
                wait,
            ),
            ConversationError::Store(err) => err.into(),
        }
    }
}

/// A conversation with its members' accounts, as clients are shown it.
pub struct Detailed {
    pub conversation: Conversation,
    /// In joining order, beside their roles; members whose account is gone are left out.
    pub members: Vec<(User, Role)>,
}

pub struct Conversations {
    store: Arc<dyn Store>,
    fanout: Arc<dyn FanOut>,
    limits: Arc<Limits>,
    max_members: usize,
}

fn parse_user(raw: &str) -> Result<UserId, ValidationError> {
    UserId::parse(raw).map_err(|problem| ValidationError::new(format!("member {problem}")))
}

impl Conversations {
    pub fn new(
        store: Arc<dyn Store>,
        fanout: Arc<dyn FanOut>,
        limits: Arc<Limits>,
        max_members: usize,
    ) -> Self {
        Self {
            store,
            fanout,
            limits,
            max_members,
        }
    }

    /// A new group owned by `creator`, with the users of `members` in it.
    pub async fn create_group(
        &self,
        creator: UserId,
        title: &str,
        members: &[String],
    ) -> Result<ConversationView, ConversationError> {
        let title = Title::parse(title)?;
        let others = members
            .iter()
            .map(|raw| parse_user(raw))
            .collect::<Result<Vec<_>, _>>()?;
        let group = Conversation::new_group(title, creator, &others);
        if group.members.len() > self.max_members {
            return Err(ConversationError::Full(self.max_members));
        }
        self.limits
            .create_group(creator)
            .map_err(ConversationError::TooFast)?;
        self.store.create_conversation(&group).await?;
        self.changed(group).await
    }

    /// The conversation, if `caller` is in it.
    pub async fn get(&self, caller: UserId, id: &str) -> Result<Conversation, ConversationError> {
        let id = ConversationId::parse(id).map_err(|_| ConversationError::NotFound)?;
        self.get_by_id(caller, id).await
    }

    async fn get_by_id(
        &self,
        caller: UserId,
        id: ConversationId,
    ) -> Result<Conversation, ConversationError> {
        match self.store.conversation(id).await? {
            Some(conversation) if conversation.member(caller).is_some() => Ok(conversation),
            _ => Err(ConversationError::NotFound),
        }
    }

    pub async fn get_detailed(
        &self,
        caller: UserId,
        id: &str,
    ) -> Result<ConversationView, ConversationError> {
        let conversation = self.get(caller, id).await?;
        Ok(self.detailed(conversation).await?.into())
    }

    /// A group the caller owns.
    async fn owned_group(
        &self,
        caller: UserId,
        id: &str,
    ) -> Result<Conversation, ConversationError> {
        let conversation = self.get(caller, id).await?;
        if conversation.kind == ConversationKind::Direct {
            return Err(ConversationError::Direct);
        }
        if !conversation.is_owner(caller) {
            return Err(ConversationError::NotOwner);
        }
        Ok(conversation)
    }

    pub async fn rename(
        &self,
        caller: UserId,
        id: &str,
        title: &str,
    ) -> Result<ConversationView, ConversationError> {
        let title = Title::parse(title)?;
        let conversation = self.owned_group(caller, id).await?;
        if !self.store.set_title(conversation.id, &title).await? {
            return Err(ConversationError::NotFound);
        }
        self.reread_and_tell(caller, conversation.id).await
    }

    pub async fn add_member(
        &self,
        caller: UserId,
        id: &str,
        user: &str,
    ) -> Result<ConversationView, ConversationError> {
        let user = UserId::parse(user).map_err(|p| ValidationError::new(format!("user {p}")))?;
        let conversation = self.owned_group(caller, id).await?;
        if conversation.member(user).is_none() && conversation.members.len() >= self.max_members {
            return Err(ConversationError::Full(self.max_members));
        }
        let member = Member {
            user,
            role: Role::Member,
        };
        if !self.store.add_member(conversation.id, &member).await? {
            // Already a member: nothing changed, nobody is told.
            return self.get_detailed(caller, id).await;
        }
        self.reread_and_tell(caller, conversation.id).await
    }

    /// The owner removes anyone; anyone removes themself (leaving). Returns the group as it is
    /// after (no members: the last one left and it is gone).
    pub async fn remove_member(
        &self,
        caller: UserId,
        id: &str,
        user: &str,
    ) -> Result<Conversation, ConversationError> {
        let user = UserId::parse(user).map_err(|_| ConversationError::UserNotFound)?;
        let conversation = if user == caller {
            let conversation = self.get(caller, id).await?;
            if conversation.kind == ConversationKind::Direct {
                return Err(ConversationError::Direct);
            }
            conversation
        } else {
            self.owned_group(caller, id).await?
        };
        if conversation.member(user).is_none() {
            return Err(ConversationError::UserNotFound);
        }
        let after = self
            .store
            .remove_member(conversation.id, user)
            .await?
            .ok_or(ConversationError::UserNotFound)?;
        // First the one who is out, so that nothing of the group reaches them after it.
        self.fanout
            .notify(vec![user], Notice::removed(conversation.id));
        if !after.members.is_empty() {
            self.changed(after.clone()).await?;
        }
        Ok(after)
    }

    /// Relays "`caller` is typing" to the conversation's other members: at most one per user
    /// per conversation within the typing limit, and only from a member (anything else goes
    /// nowhere, without an answer: typing is best effort).
    pub async fn typing(&self, caller: UserId, id: &str) -> Result<(), ConversationError> {
        let id = ConversationId::parse(id).map_err(|_| ConversationError::NotFound)?;
        // Checked before the lookup, so a flood of typing frames costs no database reads.
        if !self.limits.typing(caller, id) {
            return Ok(());
        }
        let conversation = self.get_by_id(caller, id).await?;
        let others: Vec<UserId> = conversation
            .members
            .iter()
            .map(|m| m.user)
            .filter(|u| *u != caller)
            .collect();
        if !others.is_empty() {
            self.fanout.notify(others, Notice::typing(id, caller));
        }
        Ok(())
    }

    pub async fn list(
        &self,
        caller: UserId,
        before: Option<MessageId>,
        limit: u32,
    ) -> Result<Vec<ConversationSummary>, ConversationError> {
        Ok(self.store.conversations_of(caller, before, limit).await?)
    }

    /// Moves the caller's read mark forward to `upto`, a message of the conversation; returns
    /// the mark after (an earlier `upto` leaves it where it was).
    pub async fn mark_read(
        &self,
        caller: UserId,
        id: &str,
        upto: &str,
    ) -> Result<(Conversation, MessageId), ConversationError> {
        let conversation = self.get(caller, id).await?;
        let upto = MessageId::parse(upto).map_err(|p| ValidationError::new(format!("upto {p}")))?;
        match self.store.message(upto).await? {
            Some(message) if message.conversation == conversation.id => {}
            _ => return Err(ConversationError::MessageNotFound),
        }
        let mark = self
            .store
            .mark_read(conversation.id, caller, upto)
            .await?
            .ok_or(ConversationError::NotFound)?;
        // Every member, the reader's other devices included (their badges clear).
        self.fanout.notify(
            audience(&conversation),
            Notice::read(conversation.id, caller, mark),
        );
        Ok((conversation, mark))
    }

    /// The conversation as it is now, told to its members.
    async fn reread_and_tell(
        &self,
        caller: UserId,
        id: ConversationId,
    ) -> Result<ConversationView, ConversationError> {
        let conversation = self.get_by_id(caller, id).await?;
        self.changed(conversation).await
    }

    /// Tells every member of `conversation` what it looks like now; returns that view.
    async fn changed(
        &self,
        conversation: Conversation,
    ) -> Result<ConversationView, ConversationError> {
        let members = audience(&conversation);
        let view = ConversationView::from(self.detailed(conversation).await?);
        if let Ok(rendered) = serde_json::to_value(&view) {
            self.fanout.notify(
                members,
                Notice::Conversation {
                    conversation: rendered,
                },
            );
        }
        Ok(view)
    }

    async fn detailed(&self, conversation: Conversation) -> Result<Detailed, ConversationError> {
        let ids: Vec<UserId> = conversation.members.iter().map(|m| m.user).collect();
        let mut users: std::collections::HashMap<UserId, User> = self
            .store
            .users_by_ids(&ids)
            .await?
            .into_iter()
            .map(|u| (u.id, u))
            .collect();
        let members = conversation
            .members
            .iter()
            .filter_map(|m| users.remove(&m.user).map(|u| (u, m.role)))
            .collect();
        Ok(Detailed {
            conversation,
            members,
        })
    }
}

fn audience(conversation: &Conversation) -> Vec<UserId> {
    conversation.members.iter().map(|m| m.user).collect()
}
