use poem::web::Data;
use poem_openapi::OpenApi;
use poem_openapi::payload::Json;

use super::ApiTags;
use super::error::ApiError;
use chrono::SecondsFormat;

use super::AppState;
use super::models::{PluginRole, PluginState, PluginView, UserSettingView};
use super::security::AuthUser;
use crate::responder::Manifest;

pub struct PluginsApi;

#[OpenApi(tag = "ApiTags::Plugins")]
impl PluginsApi {
    /// List plugins
    ///
    /// The plugins loaded now or being compiled, responders and moderators (`roles`); `active` marks the default one (for
    /// users who chose none), `user_settings` what users may set, `state` whether it is still
    /// `loading` (its users get the fallback meanwhile), `ready`, or `benched` for failing.
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
        let is_active = |name: &str| active.as_deref() == Some(name);
        let mut views: Vec<PluginView> = state
            .responder
            .plugins()
            .list()
            .iter()
            .map(|p| {
                let health = state.responder.health(p);
                let status = if health.benched_until.is_some() {
                    PluginState::Benched
                } else {
                    PluginState::Ready
                };
                let roles = [
                    (p.is_responder(), PluginRole::Responder),
                    (p.is_moderator(), PluginRole::Moderator),
                ];
                PluginView {
                    roles: roles
                        .into_iter()
                        .filter(|(has, _)| *has)
                        .map(|(_, r)| r)
                        .collect(),
                    active: is_active(&p.manifest.name),
                    state: status,
                    consecutive_failures: health.consecutive_failures,
                    last_error: health.last_error,
                    benched_until: health
                        .benched_until
                        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true)),
                    ..PluginView::of(&p.manifest)
                }
            })
            .collect();
        // Still compiling: listed with what its manifest says, answering nobody yet.
        views.extend(
            state
                .responder
                .plugins()
                .loading()
                .iter()
                .map(PluginView::of),
        );
        views.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Json(views))
    }
}

impl PluginView {
    /// What the manifest says, for a plugin that is loading (nothing has run yet).
    fn of(manifest: &Manifest) -> Self {
        Self {
            name: manifest.name.clone(),
            version: manifest.version.clone(),
            description: manifest.description.clone(),
            allowed_hosts: manifest
                .allowed_hosts
                .iter()
                .map(ToString::to_string)
                .collect(),
            memory_mb: manifest.memory_mb,
            fuel: manifest.fuel,
            timeout_ms: manifest.timeout_ms,
            roles: Vec::new(),
            active: false,
            user_settings: manifest
                .user_config
                .iter()
                .map(|(key, description)| UserSettingView {
                    key: key.clone(),
                    description: description.clone(),
                })
                .collect(),
            state: PluginState::Loading,
            consecutive_failures: 0,
            last_error: None,
            benched_until: None,
        }
    }
}
