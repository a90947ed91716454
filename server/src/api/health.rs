use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};

use super::ApiTags;
use super::AppState;
use super::error::ErrorBody;
use super::models::HealthView;
use crate::store::{STORAGE_FULL, StoreError};

pub struct HealthApi;

#[derive(ApiResponse)]
enum ReadyResponse {
    /// The store answers.
    #[oai(status = 200)]
    Ready(Json<HealthView>),
    /// The store does not answer.
    #[oai(status = 503)]
    NotReady(Json<ErrorBody>),
}

#[OpenApi(tag = "ApiTags::Health")]
impl HealthApi {
    /// Check liveness
    ///
    /// 200 while the process serves requests.
    #[oai(path = "/healthz", method = "get", operation_id = "checkLiveness")]
    async fn healthz(&self) -> Json<HealthView> {
        Json(HealthView {
            status: "ok".to_owned(),
        })
    }

    /// Check readiness
    ///
    /// 200 when the store answers, 503 when it does not, or when the disk holding the database
    /// is full (writes would fail), naming the reason.
    #[oai(path = "/readyz", method = "get", operation_id = "checkReadiness")]
    async fn readyz(&self, state: Data<&AppState>) -> ReadyResponse {
        match state.store.ping().await {
            Ok(()) => {}
            // Logged once per episode by the store.
            Err(StoreError::Full) => {
                return ReadyResponse::NotReady(Json(ErrorBody {
                    message: STORAGE_FULL.to_owned(),
                }));
            }
            Err(e) => {
                tracing::warn!(error = %e, "readiness check failed");
                return ReadyResponse::NotReady(Json(ErrorBody {
                    message: "The database is unavailable".to_owned(),
                }));
            }
        }
        if let Err(e) = state.messaging.health() {
            tracing::warn!(error = %e, "readiness check failed");
            return ReadyResponse::NotReady(Json(ErrorBody {
                message: e.to_string(),
            }));
        }
        ReadyResponse::Ready(Json(HealthView {
            status: "ready".to_owned(),
        }))
    }
}
