use poem::web::Data;
use poem_openapi::OpenApi;
use poem_openapi::payload::Json;

use super::ApiTags;
use super::error::ApiError;
use chrono::SecondsFormat;

use super::AppState;
use super::models::{PluginState, PluginView, UserSettingView};
use super::security::AuthUser;

pub struct PluginsApi;

#[OpenApi(tag = "ApiTags::Plugins")]
impl PluginsApi {
    /// List responder plugins
    ///
    /// The responder plugins loaded now; `active` marks the default one (for users who chose
    /// none), `user_settings` what users may set, `state` whether it is benched for failing.
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
                .map(|p| (p, state.responder.health(p)))
                .map(|(p, health)| PluginView {
                    name: p.manifest.name.clone(),
                    version: p.manifest.version.clone(),
                    description: p.manifest.description.clone(),
                    allowed_hosts: p
                        .manifest
                        .allowed_hosts
                        .iter()
                        .map(ToString::to_string)
                        .collect(),
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
                    state: if health.benched_until.is_some() {
                        PluginState::Benched
                    } else {
                        PluginState::Ready
                    },
                    consecutive_failures: health.consecutive_failures,
                    last_error: health.last_error,
                    benched_until: health
                        .benched_until
                        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true)),
                })
                .collect(),
        ))
    }
}
