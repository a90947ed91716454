use chrono::SecondsFormat;
use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};

use super::ApiTags;
use super::AppState;
use super::error::ApiError;
use super::models::{
    CredentialsBody, Done, LoginToken, PasswordChangeBody, PasswordChanged, Registered,
};
use super::security::AuthUser;
use crate::accounts::LoggedIn;

pub struct AuthApi;

#[derive(ApiResponse)]
enum RegisterResponse {
    /// The account exists; log in to get a token.
    #[oai(status = 201)]
    Created(Json<Registered>),
}

#[OpenApi(tag = "ApiTags::Auth")]
impl AuthApi {
    /// Create an account
    ///
    /// The email must not be registered yet (409 otherwise); the password is 8 to 128
    /// characters. Log in afterwards to get a token.
    #[oai(
        path = "/api/auth/register",
        method = "post",
        operation_id = "register"
    )]
    async fn register(
        &self,
        state: Data<&AppState>,
        body: Json<CredentialsBody>,
    ) -> Result<RegisterResponse, ApiError> {
        let Json(body) = body;
        let user = state
            .accounts
            .register(&body.email.0, body.password.0)
            .await?;
        Ok(RegisterResponse::Created(Json(Registered {
            message: "User registered successfully".to_owned(),
            id: user.id.to_string(),
        })))
    }

    /// Log in
    ///
    /// Exchanges email and password for a token. A wrong email and a wrong password get the
    /// same 401; repeated failures lock the account for a while (429 with `Retry-After`).
    #[oai(path = "/api/auth/login", method = "post", operation_id = "login")]
    async fn login(
        &self,
        state: Data<&AppState>,
        body: Json<CredentialsBody>,
    ) -> Result<Json<LoginToken>, ApiError> {
        let Json(body) = body;
        let LoggedIn { user, token } = state.accounts.login(&body.email.0, body.password.0).await?;
        Ok(Json(LoginToken {
            token: token.token,
            user_id: user.to_string(),
            expires_at: token.expires_at.to_rfc3339_opts(SecondsFormat::Secs, true),
        }))
    }

    /// Change the password
    ///
    /// Every token issued before stops working and the caller's live connections are closed;
    /// the answer carries a new token for this device.
    #[oai(
        path = "/api/auth/password",
        method = "post",
        operation_id = "changePassword"
    )]
    async fn change_password(
        &self,
        state: Data<&AppState>,
        AuthUser(user): AuthUser,
        body: Json<PasswordChangeBody>,
    ) -> Result<Json<PasswordChanged>, ApiError> {
        let Json(body) = body;
        let issued = state
            .accounts
            .change_password(user, &body.current_password, body.new_password.0)
            .await?;
        Ok(Json(PasswordChanged {
            message: "Password changed".to_owned(),
            token: issued.token,
            user_id: user.to_string(),
            expires_at: issued.expires_at.to_rfc3339_opts(SecondsFormat::Secs, true),
        }))
    }

    /// Log out everywhere
    ///
    /// Every token issued so far stops working (this one included) and the caller's live
    /// connections are closed.
    #[oai(
        path = "/api/auth/logout-all",
        method = "post",
        operation_id = "logOutEverywhere"
    )]
    async fn log_out_everywhere(
        &self,
        state: Data<&AppState>,
        AuthUser(user): AuthUser,
    ) -> Result<Json<Done>, ApiError> {
        state.accounts.log_out_everywhere(user).await?;
        Ok(Json(Done {
            message: "Logged out everywhere".to_owned(),
        }))
    }
}
