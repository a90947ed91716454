use std::sync::Arc;

use crate::auth::{PasswordHasher, Sessions};
use crate::limits::Limits;
use crate::messaging::Messaging;
use crate::realtime::Hub;
use crate::responder::Responder;
use crate::store::Store;

/// What every request handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub passwords: Arc<PasswordHasher>,
    pub sessions: Arc<Sessions>,
    pub hub: Arc<Hub>,
    pub messaging: Arc<Messaging>,
    pub responder: Arc<Responder>,
    pub limits: Arc<Limits>,
}
