use poem::web::Data;
use poem_openapi::OpenApi;
use poem_openapi::payload::Json;

use super::ApiTags;
use super::error::ApiError;
use chrono::SecondsFormat;

use super::AppState;
use super::models::{PluginRole, PluginState, PluginView, UserSettingView};
use super::security::AuthUser;
use crate::responder::{Manifest, Responder};

pub struct PluginsApi;

#[OpenApi(tag = "ApiTags::Plugins")]
impl PluginsApi {
    /// List plugins
    ///
    /// The plugins loaded now or being compiled, responders and moderators (`roles`); `active` marks the default one (for
    /// users who chose none), `user_settings` what users may set, `state` whether it is still
    /// `loading` (its users get the fallback meanwhile), `ready`, or `benched` for failing.
    /// Limits, allowed hosts and errors are the operator's: `GET /plugins` on `METRICS_ADDR`.
    #[oai(path = "/api/plugins", method = "get", operation_id = "listPlugins")]
    async fn list(
        &self,
        state: Data<&AppState>,
        _caller: AuthUser,
    ) -> Result<Json<Vec<PluginView>>, ApiError> {
        Ok(Json(
            reports(&state.responder)
                .into_iter()
                .map(PluginView::from)
                .collect(),
        ))
    }
}

/// Everything known about a plugin, for the operator (`GET /plugins` on `METRICS_ADDR`): the
/// limits and hosts its manifest asks for and why its last call failed. Users see
/// [`PluginView`], which leaves those out: a host and port, a fuel budget or an error text
/// tells them nothing they need and an attacker something.
#[derive(serde::Serialize)]
pub struct PluginReport {
    pub name: String,
    pub version: String,
    pub description: String,
    /// Hosts the manifest asks to call (the operator's list narrows this further).
    pub allowed_hosts: Vec<String>,
    pub memory_mb: u64,
    pub fuel: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    pub roles: Vec<PluginRole>,
    pub active: bool,
    pub user_settings: Vec<UserSettingView>,
    pub state: PluginState,
    pub consecutive_failures: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub benched_until: Option<String>,
}

/// Every plugin, loaded or loading, by name.
pub fn reports(responder: &Responder) -> Vec<PluginReport> {
    let active = responder.active_plugin().map(|p| p.manifest.name.clone());
    let is_active = |name: &str| active.as_deref() == Some(name);
    let mut reports: Vec<PluginReport> = responder
        .plugins()
        .list()
        .iter()
        .map(|p| {
            let health = responder.health(p);
            let status = if health.benched_until.is_some() {
                PluginState::Benched
            } else {
                PluginState::Ready
            };
            let roles = [
                (p.is_responder(), PluginRole::Responder),
                (p.is_moderator(), PluginRole::Moderator),
            ];
            PluginReport {
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
                ..PluginReport::of(&p.manifest)
            }
        })
        .collect();
    // Still compiling: listed with what its manifest says, answering nobody yet.
    reports.extend(responder.plugins().loading().iter().map(PluginReport::of));
    reports.sort_by(|a, b| a.name.cmp(&b.name));
    reports
}

impl PluginReport {
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

impl From<PluginReport> for PluginView {
    fn from(report: PluginReport) -> Self {
        Self {
            name: report.name,
            version: report.version,
            description: report.description,
            roles: report.roles,
            active: report.active,
            user_settings: report.user_settings,
            state: report.state,
            benched_until: report.benched_until,
        }
    }
}
