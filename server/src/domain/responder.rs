//! A user's own pick of responder plugin, and their settings for it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The longest value a user may give one setting (a persona is a paragraph, not a book).
pub const MAX_SETTING_CHARS: usize = 4_000;

/// Which plugin answers for a user while they are BUSY, and the settings they gave it. Which
/// keys a plugin accepts is its manifest's business: the responder checks them against the
/// loaded plugin before anything is stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponderChoice {
    pub plugin: String,
    pub config: BTreeMap<String, String>,
}
