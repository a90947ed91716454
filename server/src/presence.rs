//! Status changes: stored, then pushed to the user's own devices and to everyone who shares a
//! conversation with them and is online.

use crate::domain::{Status, UserId};
use crate::realtime::Push;
use crate::state::AppState;
use crate::store::StoreError;

/// Returns false when the user does not exist.
pub async fn update_status(
    state: &AppState,
    user: UserId,
    status: Status,
) -> Result<bool, StoreError> {
    let Some(previous) = state.store.set_status(user, status).await? else {
        return Ok(false);
    };
    if previous != status {
        let mut audience = state.store.conversation_peers(user).await?;
        audience.retain(|peer| state.hub.is_online(*peer));
        audience.push(user);
        state.hub.publish(&audience, Push::status(user, status));
    }
    Ok(true)
}
