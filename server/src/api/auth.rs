use chrono::SecondsFormat;
use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};

use super::ApiTags;
use super::error::ApiError;
use super::models::{CredentialsBody, LoginToken, Registered};
use crate::domain::{Email, Password, UserId};
use crate::state::AppState;
use crate::store::NewUser;

pub struct AuthApi;

#[derive(ApiResponse)]
enum RegisterResponse {
    /// The account exists; log in to get a token.
    #[oai(status = 201)]
    Created(Json<Registered>),
}

/// Wrong email and wrong password read exactly the same.
const BAD_CREDENTIALS: &str = "Invalid email or password";

#[OpenApi(tag = "ApiTags::Auth")]
impl AuthApi {
    /// Create an account.
    #[oai(path = "/api/auth/register", method = "post")]
    async fn register(
        &self,
        state: Data<&AppState>,
        body: Json<CredentialsBody>,
    ) -> Result<RegisterResponse, ApiError> {
        let Json(body) = body;
        let email = Email::parse(&body.email)?;
        let password = Password::parse(body.password)?;
        let password_hash = state
            .passwords
            .hash(password)
            .await
            .map_err(ApiError::internal)?;
        let user = state
            .store
            .create_user(NewUser {
                id: UserId::new(),
                email,
                password_hash,
            })
            .await?;
        tracing::info!(user = %user.id, "user registered");
        Ok(RegisterResponse::Created(Json(Registered {
            message: "User registered successfully".to_owned(),
            id: user.id.to_string(),
        })))
    }

    /// Exchange email and password for a token.
    #[oai(path = "/api/auth/login", method = "post")]
    async fn login(
        &self,
        state: Data<&AppState>,
        body: Json<CredentialsBody>,
    ) -> Result<Json<LoginToken>, ApiError> {
        let Json(body) = body;
        // Input that could never have been registered is simply wrong credentials.
        let (Ok(email), Ok(password)) = (Email::parse(&body.email), Password::parse(body.password))
        else {
            return Err(ApiError::unauthorized(BAD_CREDENTIALS));
        };
        let credentials = state.store.credentials_by_email(&email).await?;
        let (user, stored_hash) = match credentials {
            Some(c) => (Some(c.user), Some(c.password_hash)),
            None => (None, None),
        };
        let verified = state
            .passwords
            .verify(password, stored_hash)
            .await
            .map_err(ApiError::internal)?;
        let user = match user {
            Some(user) if verified => user,
            _ => return Err(ApiError::unauthorized(BAD_CREDENTIALS)),
        };
        let issued = state.tokens.issue(user.id).map_err(ApiError::internal)?;
        Ok(Json(LoginToken {
            token: issued.token,
            user_id: user.id.to_string(),
            expires_at: issued.expires_at.to_rfc3339_opts(SecondsFormat::Secs, true),
        }))
    }
}
