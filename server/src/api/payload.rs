//! `SerdeJson<T>`: a JSON answer written straight from `T`'s serde `Serialize`, documented with
//! `T`'s OpenAPI schema. poem-openapi's `Json` builds a `serde_json::Value` tree (an ordered map
//! per object) and then serializes that: for a page of 50 messages the tree cost more CPU than
//! the database read (issue 21). Used for the big, hot answers only; a unit test keeps each
//! type's two serializations identical.

use poem::{IntoResponse, Response};
use poem_openapi::ApiResponse;
use poem_openapi::payload::Payload;
use poem_openapi::registry::{MetaMediaType, MetaResponse, MetaResponses, MetaSchemaRef, Registry};
use poem_openapi::types::{ToJSON, Type};
use serde::Serialize;

pub struct SerdeJson<T>(pub T);

impl<T: Type> Payload for SerdeJson<T> {
    const CONTENT_TYPE: &'static str = "application/json; charset=utf-8";

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: Type + Serialize + Send> IntoResponse for SerdeJson<T> {
    fn into_response(self) -> Response {
        match serde_json::to_vec(&self.0) {
            Ok(body) => Response::builder()
                .content_type(<Self as Payload>::CONTENT_TYPE)
                .body(body),
            // Our own types always serialize; were one not to, this is a fault of ours.
            Err(e) => {
                tracing::error!(error = %e, "an answer did not serialize");
                poem::http::StatusCode::INTERNAL_SERVER_ERROR.into_response()
            }
        }
    }
}

impl<T: Type + ToJSON + Serialize + Send> ApiResponse for SerdeJson<T> {
    fn meta() -> MetaResponses {
        MetaResponses {
            responses: vec![MetaResponse {
                description: "",
                status: Some(200),
                status_range: None,
                content: vec![MetaMediaType {
                    content_type: <Self as Payload>::CONTENT_TYPE,
                    schema: T::schema_ref(),
                }],
                headers: vec![],
            }],
        }
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

#[cfg(test)]
mod tests {
    use poem_openapi::types::ToJSON;

    use crate::domain::{Content, ConversationId, Message, MessageKind, UserId};
    use crate::messaging::MessageView;

    /// What a client reads must not depend on which payload type a route answers with.
    #[test]
    fn message_views_serialize_as_poem_openapi_would() {
        let (a, b) = (UserId::new(), UserId::new());
        let content = |text: &str| Content::parse(text.to_owned()).expect("content");
        let direct = Message::new(a, b, content("hi \"there\" ✓"), MessageKind::User);
        let mut reply = Message::new(b, a, content("away"), MessageKind::AutoReply);
        reply.reply_to = Some(direct.id);
        let group = Message::to_group(a, ConversationId::new_group(), content("all"));
        let views: Vec<MessageView> = [direct, reply, group]
            .into_iter()
            .map(MessageView::from)
            .collect();
        assert_eq!(
            serde_json::to_value(&views).expect("serialize"),
            views.to_json().expect("to_json")
        );
    }
}
