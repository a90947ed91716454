//! Conversations and members on MongoDB: one document per conversation and one per membership
//! (`_id` `<conversation>/<user>`), so a read mark or a role is a single-document update and a
//! user's conversations are one indexed query. There are no transactions: each step below is
//! one atomic write, ordered so that a crash between two leaves nothing a reader could trip on
//! (a membership is removed before the handover; a group is deleted after its last member).

use chrono::{DateTime, Utc};
use mongodb::Collection;
use mongodb::bson::{self, Bson, doc};
use mongodb::options::ReturnDocument;
use serde::{Deserialize, Serialize};

use super::MongoStore;
use super::documents::MessageDoc;
use super::errors::{all, classify, corrupt};
use super::touches::Touch;
use crate::domain::{
    Conversation, ConversationId, ConversationKind, ConversationSummary, Member, Message,
    MessageId, Role, Title, UserId,
};
use crate::store::StoreError;

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct ConversationDoc {
    #[serde(rename = "_id")]
    pub(super) id: String,
    pub(super) kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) title: Option<String>,
    pub(super) created_at: bson::DateTime,
    /// The id of the last message, or one drawn at creation: the list's order and cursor.
    pub(super) activity: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct MemberDoc {
    /// `<conversation>/<user>`.
    #[serde(rename = "_id")]
    pub(super) id: String,
    pub(super) conversation: String,
    pub(super) user: String,
    pub(super) role: String,
    /// A time-ordered id drawn when they joined: members are listed in joining order.
    pub(super) joined: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) read_upto: Option<String>,
}

pub(super) fn member_doc(conversation: &str, member: &Member) -> MemberDoc {
    MemberDoc {
        id: format!("{conversation}/{}", member.user),
        conversation: conversation.to_owned(),
        user: member.user.to_string(),
        role: member.role.as_str().to_owned(),
        joined: MessageId::new().to_string(),
        read_upto: None,
    }
}

fn millis(at: DateTime<Utc>) -> bson::DateTime {
    bson::DateTime::from_millis(at.timestamp_millis())
}

impl MongoStore {
    /// The ids of the groups `user` is in.
    pub(super) async fn groups_of(&self, user: &str) -> Result<Vec<String>, StoreError> {
        let memberships: Vec<MemberDoc> =
            all(self.members.find(doc! { "user": user }).await).await?;
        let ids: Vec<String> = memberships.into_iter().map(|m| m.conversation).collect();
        if ids.is_empty() {
            return Ok(ids);
        }
        let groups: Vec<ConversationDoc> = all(self
            .conversations
            .find(doc! { "_id": { "$in": ids }, "kind": ConversationKind::Group.as_str() })
            .await)
        .await?;
        Ok(groups.into_iter().map(|g| g.id).collect())
    }

    /// Which `<conversation>/<sender>` memberships of the batch's group messages exist.
    pub(super) async fn memberships_of_senders(
        &self,
        indexes: &[usize],
        batch: &[crate::store::NewMessage],
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        let ids: Vec<String> = indexes
            .iter()
            .map(|&i| &batch[i].message)
            .filter(|m| m.recipient.is_none())
            .map(|m| format!("{}/{}", m.conversation, m.sender))
            .collect();
        if ids.is_empty() {
            return Ok(Default::default());
        }
        let found: Vec<MemberDoc> =
            all(self.members.find(doc! { "_id": { "$in": ids } }).await).await?;
        Ok(found.into_iter().map(|m| m.id).collect())
    }

    pub(super) async fn insert_conversation(
        &self,
        conversation: &Conversation,
    ) -> Result<(), StoreError> {
        let id = conversation.id.to_string();
        let users: Vec<String> = conversation
            .members
            .iter()
            .map(|m| m.user.to_string())
            .collect();
        let known = self
            .users
            .count_documents(doc! { "_id": { "$in": &users } })
            .await
            .map_err(classify)?;
        if known != users.len() as u64 {
            return Err(StoreError::UnknownUser);
        }
        self.conversations
            .insert_one(ConversationDoc {
                id: id.clone(),
                kind: conversation.kind.as_str().to_owned(),
                title: conversation.title.as_ref().map(|t| t.as_str().to_owned()),
                created_at: millis(conversation.created_at),
                activity: MessageId::new().to_string(),
            })
            .await
            .map_err(classify)?;
        self.members
            .insert_many(conversation.members.iter().map(|m| member_doc(&id, m)))
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn head(&self, id: &str) -> Result<Option<ConversationDoc>, StoreError> {
        self.conversations
            .find_one(doc! { "_id": id })
            .await
            .map_err(classify)
    }

    /// A direct conversation exists from its first message, but another cluster node (or a
    /// failing database) may not have touched it yet: touch it from its newest message now
    /// (true: there was one). Costs one indexed read for an id that names nothing.
    async fn touch_from_messages(&self, id: &str) -> Result<bool, StoreError> {
        let newest = self
            .messages
            .find_one(doc! { "conversation": id })
            .sort(doc! { "_id": -1 })
            .await
            .map_err(classify)?;
        let Some(newest) = newest else {
            return Ok(false);
        };
        let newest = Touch::of(&Message::try_from(newest)?).retried();
        if newest.direct.is_none() {
            // A group is created whole, before its first message: it was deleted.
            return Ok(false);
        }
        touch(&self.conversations, &self.members, &newest).await?;
        Ok(true)
    }

    pub(super) async fn load_conversation(
        &self,
        id: &str,
    ) -> Result<Option<Conversation>, StoreError> {
        // Only a direct conversation's head and members come from touches: a group send (or
        // the cluster's recovery of one) does not queue behind them.
        if ConversationId::parse(id).is_ok_and(|c| c.is_direct()) {
            self.touches.settled().await;
        }
        let mut head = self.head(id).await?;
        if head.is_none() && self.touch_from_messages(id).await? {
            head = self.head(id).await?;
        }
        let Some(head) = head else {
            return Ok(None);
        };
        let members: Vec<MemberDoc> = all(self
            .members
            .find(doc! { "conversation": id })
            .sort(doc! { "joined": 1 })
            .await)
        .await?;
        let bad = |e| corrupt("conversation", id, e);
        Ok(Some(Conversation {
            id: ConversationId::parse(&head.id).map_err(bad)?,
            kind: ConversationKind::parse(&head.kind).map_err(bad)?,
            title: head
                .title
                .as_deref()
                .map(Title::parse)
                .transpose()
                .map_err(bad)?,
            members: members
                .into_iter()
                .map(|m| {
                    Ok(Member {
                        user: UserId::parse(&m.user).map_err(bad)?,
                        role: Role::parse(&m.role).map_err(bad)?,
                    })
                })
                .collect::<Result<_, StoreError>>()?,
            created_at: DateTime::<Utc>::from_timestamp_millis(head.created_at.timestamp_millis())
                .ok_or_else(|| corrupt("conversation", id, "timestamp out of range"))?,
        }))
    }

    pub(super) async fn rename(&self, id: &str, title: &Title) -> Result<bool, StoreError> {
        let updated = self
            .conversations
            .update_one(
                doc! { "_id": id, "kind": ConversationKind::Group.as_str() },
                doc! { "$set": { "title": title.as_str() } },
            )
            .await
            .map_err(classify)?;
        Ok(updated.matched_count > 0)
    }

    pub(super) async fn insert_member(
        &self,
        id: &str,
        member: &Member,
    ) -> Result<bool, StoreError> {
        let user = member.user.to_string();
        if self
            .users
            .count_documents(doc! { "_id": &user })
            .await
            .map_err(classify)?
            == 0
        {
            return Err(StoreError::UnknownUser);
        }
        join(&self.members, id, member).await
    }

    /// See `Store::remove_member`; false when `user` was not a member.
    pub(super) async fn leave(&self, id: &str, user: &str) -> Result<bool, StoreError> {
        let Some(gone) = self
            .members
            .find_one_and_delete(doc! { "_id": format!("{id}/{user}") })
            .await
            .map_err(classify)?
        else {
            return Ok(false);
        };
        let first = self
            .members
            .find_one(doc! { "conversation": id })
            .sort(doc! { "joined": 1 })
            .await
            .map_err(classify)?;
        match first {
            None => {
                self.messages
                    .delete_many(doc! { "conversation": id })
                    .await
                    .map_err(classify)?;
                self.conversations
                    .delete_one(doc! { "_id": id })
                    .await
                    .map_err(classify)?;
            }
            Some(first) if gone.role == Role::Owner.as_str() => {
                self.members
                    .update_one(
                        doc! { "_id": &first.id },
                        doc! { "$set": { "role": Role::Owner.as_str() } },
                    )
                    .await
                    .map_err(classify)?;
            }
            Some(_) => {}
        }
        Ok(true)
    }

    /// Every conversation `user` is in: their direct ones go, the groups lose them.
    pub(super) async fn leave_all(&self, user: &str) -> Result<(), StoreError> {
        self.touches.settled().await;
        let memberships: Vec<MemberDoc> =
            all(self.members.find(doc! { "user": user }).await).await?;
        for membership in memberships {
            let direct = self
                .conversations
                .find_one_and_delete(doc! {
                    "_id": &membership.conversation,
                    "kind": ConversationKind::Direct.as_str(),
                })
                .await
                .map_err(classify)?;
            if direct.is_some() {
                self.members
                    .delete_many(doc! { "conversation": &membership.conversation })
                    .await
                    .map_err(classify)?;
            } else {
                self.leave(&membership.conversation, user).await?;
            }
        }
        Ok(())
    }

    pub(super) async fn summaries(
        &self,
        user: UserId,
        before: Option<MessageId>,
        limit: u32,
    ) -> Result<Vec<ConversationSummary>, StoreError> {
        self.touches.settled().await;
        let me = user.to_string();
        let memberships: Vec<MemberDoc> =
            all(self.members.find(doc! { "user": &me }).await).await?;
        let ids: Vec<&str> = memberships
            .iter()
            .map(|m| m.conversation.as_str())
            .collect();
        let mut filter = doc! { "_id": { "$in": &ids } };
        if let Some(before) = before {
            filter.insert("activity", doc! { "$lt": before.to_string() });
        }
        let heads: Vec<ConversationDoc> = all(self
            .conversations
            .find(filter)
            .sort(doc! { "activity": -1 })
            .limit(i64::from(limit))
            .await)
        .await?;
        let mut summaries = Vec::with_capacity(heads.len());
        for head in heads {
            let Some(conversation) = self.load_conversation(&head.id).await? else {
                continue;
            };
            let read_upto = memberships
                .iter()
                .find(|m| m.conversation == head.id)
                .and_then(|m| m.read_upto.clone());
            let last_message = self
                .messages
                .find_one(doc! { "conversation": &head.id })
                .sort(doc! { "_id": -1 })
                .await
                .map_err(classify)?
                .map(Message::try_from)
                .transpose()?;
            let unread = self
                .messages
                .count_documents(doc! {
                    "conversation": &head.id,
                    "_id": { "$gt": read_upto.as_deref().unwrap_or("") },
                    "sender": { "$ne": &me },
                })
                .await
                .map_err(classify)?;
            let bad = |e| corrupt("conversation", &head.id, e);
            summaries.push(ConversationSummary {
                conversation,
                activity: MessageId::parse(&head.activity).map_err(bad)?,
                last_message,
                unread,
                read_upto: read_upto
                    .as_deref()
                    .map(MessageId::parse)
                    .transpose()
                    .map_err(bad)?,
            });
        }
        Ok(summaries)
    }

    pub(super) async fn move_read_mark(
        &self,
        id: &str,
        user: &str,
        upto: MessageId,
    ) -> Result<Option<MessageId>, StoreError> {
        self.touches.settled().await;
        let upto = upto.to_string();
        let after = self
            .members
            .find_one_and_update(
                doc! { "_id": format!("{id}/{user}") },
                doc! { "$max": { "read_upto": &upto } },
            )
            .return_document(ReturnDocument::After)
            .await
            .map_err(classify)?;
        after
            .and_then(|m| m.read_upto)
            .map(|mark| MessageId::parse(&mark).map_err(|e| corrupt("member", id, e)))
            .transpose()
    }

    /// Messages written before conversations had ids carry the pair's key ("low:high"): each
    /// pair becomes a direct conversation and its messages take its id. Runs at every start;
    /// after the first it finds nothing to do.
    pub(super) async fn give_direct_conversations_ids(&self) -> Result<(), StoreError> {
        let keys = self
            .messages
            .distinct("conversation", doc! { "conversation": { "$regex": ":" } })
            .await
            .map_err(classify)?;
        for key in keys {
            let Bson::String(key) = key else { continue };
            let users = key
                .split_once(':')
                .and_then(|(a, b)| Some((UserId::parse(a).ok()?, UserId::parse(b).ok()?)));
            let Some((a, b)) = users else {
                return Err(corrupt("message conversation", &key, "not two user ids"));
            };
            let last: Option<MessageDoc> = self
                .messages
                .find_one(doc! { "conversation": &key })
                .sort(doc! { "_id": -1 })
                .await
                .map_err(classify)?;
            let Some(last) = last else { continue };
            // The conversation and its members first: a crash part-way leaves messages that the
            // next start still finds by their old key.
            let last = Touch::of(&Message::try_from(last)?).retried();
            touch(&self.conversations, &self.members, &last).await?;
            let id = ConversationId::direct(a, b).to_string();
            self.messages
                .update_many(
                    doc! { "conversation": &key },
                    doc! { "$set": { "conversation": &id } },
                )
                .await
                .map_err(classify)?;
        }
        Ok(())
    }
}

/// A stored message's conversation shows it as its latest activity; a direct one is created
/// with both people in it if it did not exist. Its members are added when this creates it, or
/// when `touch.join` says an earlier try may have created it and failed after: every later
/// message costs one round trip, not three.
pub(super) async fn touch(
    conversations: &Collection<ConversationDoc>,
    members: &Collection<MemberDoc>,
    touch: &Touch,
) -> Result<(), StoreError> {
    let id = touch.conversation.to_string();
    let Some(pair) = touch.direct else {
        conversations
            .update_one(
                doc! { "_id": &id },
                doc! { "$max": { "activity": touch.id.to_string() } },
            )
            .await
            .map_err(classify)?;
        return Ok(());
    };
    let touched = conversations
        .update_one(
            doc! { "_id": &id },
            doc! {
                "$setOnInsert": {
                    "kind": ConversationKind::Direct.as_str(),
                    "created_at": millis(touch.sent_at),
                },
                "$max": { "activity": touch.id.to_string() },
            },
        )
        .upsert(true)
        .await
        .map_err(classify)?;
    if touched.upserted_id.is_none() && !touch.join {
        return Ok(());
    }
    for user in pair {
        let member = Member {
            user,
            role: Role::Member,
        };
        join(members, &id, &member).await?;
    }
    Ok(())
}

/// Makes `member` a member unless they are one already (true: they were not).
async fn join(
    members: &Collection<MemberDoc>,
    conversation: &str,
    member: &Member,
) -> Result<bool, StoreError> {
    let doc = member_doc(conversation, member);
    let upserted = members
        .update_one(
            doc! { "_id": &doc.id },
            doc! { "$setOnInsert": {
                "conversation": &doc.conversation,
                "user": &doc.user,
                "role": &doc.role,
                "joined": &doc.joined,
            } },
        )
        .upsert(true)
        .await
        .map_err(classify)?;
    Ok(upserted.upserted_id.is_some())
}

#[cfg(test)]
mod tests {
    use mongodb::bson::Document;

    use super::*;
    use crate::domain::MessagePage;
    use crate::store::Store;

    /// Another node stored a pair's first message and has not touched its conversation yet:
    /// reading the conversation here finds it anyway, with both members, so a read mark works.
    #[tokio::test]
    async fn a_direct_conversation_not_yet_touched_is_found_from_its_messages() {
        let Some((_, settings)) = crate::store::mongo::fresh_test_settings() else {
            return;
        };
        let store = MongoStore::connect(&settings).await.expect("connect");
        let (a, b) = (UserId::new(), UserId::new());
        for (id, email) in [(a, "a@example.com"), (b, "b@example.com")] {
            store
                .create_user(crate::store::NewUser {
                    id,
                    email: crate::domain::Email::parse(email).expect("email"),
                    password_hash: "$argon2id$x".into(),
                })
                .await
                .expect("user");
        }
        let conversation = ConversationId::direct(a, b);
        assert!(
            store
                .conversation(conversation)
                .await
                .expect("read")
                .is_none()
        );
        let id = MessageId::new();
        store
            .database()
            .collection::<Document>("messages")
            .insert_one(doc! {
                "_id": id.to_string(), "sender": a.to_string(), "recipient": b.to_string(),
                "participants": [a.to_string(), b.to_string()],
                "conversation": conversation.to_string(), "content": "from another node",
                "sent_at": bson::DateTime::now(), "kind": "user",
            })
            .await
            .expect("message");

        let found = store
            .conversation(conversation)
            .await
            .expect("read")
            .expect("the pair's conversation exists from its first message");
        assert_eq!(found.members.len(), 2);
        let mark = store.mark_read(conversation, b, id).await.expect("mark");
        assert_eq!(mark, Some(id));
        store.database().drop().await.expect("drop");
    }

    /// Documents as the release before conversation ids wrote them: the messages' conversation
    /// is the pair's key, and there are no conversation or member documents.
    #[tokio::test]
    async fn messages_from_before_conversation_ids_get_them_on_connect() {
        let Some((uri, settings)) = crate::store::mongo::fresh_test_settings() else {
            return;
        };
        let client = mongodb::Client::with_uri_str(&uri).await.expect("client");
        let database = client.database(settings.database.as_deref().expect("name"));
        let (a, b) = (UserId::new(), UserId::new());
        let (low, high) = if a <= b { (a, b) } else { (b, a) };
        for (id, email) in [(a, "a@example.com"), (b, "b@example.com")] {
            database
                .collection::<Document>("users")
                .insert_one(doc! {
                    "_id": id.to_string(), "email": email, "password_hash": "$argon2id$x",
                    "status": "AVAILABLE", "created_at": bson::DateTime::now(),
                })
                .await
                .expect("user");
        }
        let ids: Vec<MessageId> = (0..3).map(|_| MessageId::new()).collect();
        for (n, id) in ids.iter().enumerate() {
            let (from, to) = if n % 2 == 0 { (a, b) } else { (b, a) };
            database
                .collection::<Document>("messages")
                .insert_one(doc! {
                    "_id": id.to_string(), "sender": from.to_string(),
                    "recipient": to.to_string(),
                    "participants": [from.to_string(), to.to_string()],
                    "conversation": format!("{low}:{high}"), "content": format!("old {n}"),
                    "sent_at": bson::DateTime::now(), "kind": "user",
                })
                .await
                .expect("message");
        }

        let store = MongoStore::connect(&settings).await.expect("connect");
        let page = MessagePage {
            conversation: Some(ConversationId::direct(a, b)),
            ..MessagePage::default()
        };
        let listed = store.list_messages(a, &page).await.expect("list");
        assert_eq!(listed.iter().map(|m| m.id).collect::<Vec<_>>(), ids);
        let direct = store
            .conversation(ConversationId::direct(a, b))
            .await
            .expect("read")
            .expect("the pair's conversation exists");
        assert_eq!(direct.members.len(), 2);
        let list = store.conversations_of(b, None, 10).await.expect("list");
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].unread, 2);
        assert_eq!(
            list[0].last_message.as_ref().map(|m| m.id),
            ids.last().copied()
        );
        // A second start finds nothing left to do.
        drop(store);
        MongoStore::connect(&settings).await.expect("connect again");
        database.drop().await.expect("drop");
    }
}
