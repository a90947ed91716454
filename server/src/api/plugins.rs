use poem::web::Data;
use poem_openapi::OpenApi;
use poem_openapi::payload::Json;

use super::ApiTags;
use super::error::ApiError;
use super::models::{PluginView, UserSettingView};
use super::security::AuthUser;
use crate::state::AppState;

pub struct PluginsApi;

#[OpenApi(tag = "ApiTags::Plugins")]
impl PluginsApi {
    /// List responder plugins
    ///
    /// The responder plugins loaded now; `active` marks the one that answers for BUSY users.
    #[oai(path = "/api/plugins", method = "get", operation_id = "listPlugins")]
    async fn list(
        &self,
        state: Data<&AppState>,
        _caller: AuthUser,
    ) -> Result<Json<Vec<PluginView>>, ApiError> {
        let active = state
            .responder
            .active_plugin()
            .map(|p| p.manifest.name.clone());
        let plugins = state.responder.plugins().list();
        Ok(Json(
            plugins
                .iter()
                .map(|p| PluginView {
                    name: p.manifest.name.clone(),
                    version: p.manifest.version.clone(),
                    description: p.manifest.description.clone(),
                    allowed_hosts: p.manifest.allowed_hosts.clone(),
                    memory_mb: p.manifest.memory_mb,
                    fuel: p.manifest.fuel,
                    timeout_ms: p.manifest.timeout_ms,
                    active: active.as_deref() == Some(p.manifest.name.as_str()),
                    user_settings: p
                        .manifest
                        .user_config
                        .iter()
                        .map(|(key, description)| UserSettingView {
                            key: key.clone(),
                            description: description.clone(),
                        })
                        .collect(),
                })
                .collect(),
        ))
    }
}
