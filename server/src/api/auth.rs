use chrono::SecondsFormat;
use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};

use super::ApiTags;
use super::error::ApiError;
use super::models::{
    CredentialsBody, Done, LoginToken, PasswordChangeBody, PasswordChanged, Registered,
};
use super::security::AuthUser;
use crate::account;
use crate::domain::{Email, Password, UserId};
use crate::limits::RetryAfter;
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

fn locked_out(wait: RetryAfter) -> ApiError {
    ApiError::too_many_requests(
        format!(
            "Too many failed logins for this account; try again in {} s",
            wait.seconds()
        ),
        wait,
    )
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
        let email = Email::parse(&body.email.0)?;
        let password = Password::parse(body.password.0)?;
        let password_hash = state.passwords.hash(password).await?;
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
        // Input that could never have been registered is simply wrong credentials.
        let (Ok(email), Ok(password)) = (
            Email::parse(&body.email.0),
            Password::parse(body.password.0),
        ) else {
            return Err(ApiError::unauthorized(BAD_CREDENTIALS));
        };
        // Locked out: refused without looking at the password, right or wrong.
        state.limits.login_allowed(&email).map_err(locked_out)?;
        let credentials = state.store.credentials_by_email(&email).await?;
        let (user, stored_hash) = match credentials {
            Some(c) => (Some((c.user, c.token_version)), Some(c.password_hash)),
            None => (None, None),
        };
        let verified = state.passwords.verify(password, stored_hash).await?;
        let (user, version) = match user {
            Some(user) if verified => user,
            _ => {
                // Unknown emails count too, so the answers cannot tell accounts apart.
                state.limits.login_failed(&email).map_err(locked_out)?;
                return Err(ApiError::unauthorized(BAD_CREDENTIALS));
            }
        };
        let issued = state
            .sessions
            .issue(user.id, version)
            .map_err(ApiError::internal)?;
        Ok(Json(LoginToken {
            token: issued.token,
            user_id: user.id.to_string(),
            expires_at: issued.expires_at.to_rfc3339_opts(SecondsFormat::Secs, true),
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
        let new = Password::parse(body.new_password.0)?;
        let issued = account::change_password(&state, user, &body.current_password, new).await?;
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
        account::log_out_everywhere(&state, user).await?;
        Ok(Json(Done {
            message: "Logged out everywhere".to_owned(),
        }))
    }
}
