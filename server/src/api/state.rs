use std::sync::Arc;

use crate::accounts::Accounts;
use crate::auth::Sessions;
use crate::conversations::Conversations;
use crate::limits::Limits;
use crate::messaging::Messaging;
use crate::responder::Responder;
use crate::store::Store;

/// What the HTTP handlers can reach: the services, and the store for plain reads. Cheap to
/// clone.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub accounts: Arc<Accounts>,
    pub conversations: Arc<Conversations>,
    pub sessions: Arc<Sessions>,
    pub messaging: Arc<Messaging>,
    pub responder: Arc<Responder>,
    pub limits: Arc<Limits>,
}
