use poem::web::Data;
use poem_openapi::OpenApi;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;

use super::ApiTags;
use super::AppState;
use super::error::ApiError;
use super::models::{
    Done, PasswordBody, ResponderBody, ResponderView, StatusBody, StatusUpdated, UserView,
};
use super::schema::{EmailText, UuidText};
use super::security::AuthUser;
use crate::domain::{Email, ResponderChoice, UserId};

pub struct UsersApi;

use crate::store::USER_NOT_FOUND;

#[OpenApi(tag = "ApiTags::Users")]
impl UsersApi {
    /// Set your status
    ///
    /// AVAILABLE or BUSY. While BUSY, the responder answers messages for the caller.
    #[oai(path = "/api/user/status", method = "put", operation_id = "setStatus")]
    async fn set_status(
        &self,
        state: Data<&AppState>,
        AuthUser(user): AuthUser,
        body: Json<StatusBody>,
    ) -> Result<Json<StatusUpdated>, ApiError> {
        let status = body.0.status;
        if !state.messaging.set_status(user, status).await? {
            return Err(ApiError::not_found(USER_NOT_FOUND));
        }
        Ok(Json(StatusUpdated {
            message: "User status updated".to_owned(),
            status,
        }))
    }

    /// Get your profile
    ///
    /// The caller's own id, email and status.
    #[oai(path = "/api/users/me", method = "get", operation_id = "getMe")]
    async fn me(
        &self,
        state: Data<&AppState>,
        AuthUser(user): AuthUser,
    ) -> Result<Json<UserView>, ApiError> {
        let user = state.store.user_by_id(user).await?;
        user.map(|u| Json(u.into()))
            .ok_or_else(|| ApiError::not_found(USER_NOT_FOUND))
    }

    /// Delete your account
    ///
    /// Deletes the caller's account and every message they sent or received, after confirming
    /// the password. Their tokens stop working and their live connections are closed.
    #[oai(path = "/api/users/me", method = "delete", operation_id = "deleteMe")]
    async fn delete_me(
        &self,
        state: Data<&AppState>,
        AuthUser(user): AuthUser,
        body: Json<PasswordBody>,
    ) -> Result<Json<Done>, ApiError> {
        state.accounts.delete(user, &body.0.password).await?;
        Ok(Json(Done {
            message: "Account deleted".to_owned(),
        }))
    }

    /// Get your responder
    ///
    /// Which plugin answers for the caller while they are BUSY, and their settings for it.
    /// Until they choose: the server's default plugin and no settings.
    #[oai(
        path = "/api/users/me/responder",
        method = "get",
        operation_id = "getMyResponder"
    )]
    async fn my_responder(
        &self,
        state: Data<&AppState>,
        AuthUser(user): AuthUser,
    ) -> Result<Json<ResponderView>, ApiError> {
        let choice = state.responder.choice_of(user).await?;
        Ok(Json(choice.into()))
    }

    /// Choose your responder
    ///
    /// Picks the plugin that answers for the caller while they are BUSY, with their own settings
    /// (a persona, a language, an away message: whatever the plugin's `user_settings` offer).
    /// 404 for a plugin that is not loaded; 400 for a key the plugin does not let users set or a
    /// value over 4,000 characters.
    #[oai(
        path = "/api/users/me/responder",
        method = "put",
        operation_id = "setMyResponder"
    )]
    async fn set_my_responder(
        &self,
        state: Data<&AppState>,
        AuthUser(user): AuthUser,
        body: Json<ResponderBody>,
    ) -> Result<Json<ResponderView>, ApiError> {
        let Json(ResponderBody { plugin, config }) = body;
        let config = config
            .into_iter()
            .map(|(key, value)| (key, value.0))
            .collect();
        let choice = state
            .responder
            .choose(user, ResponderChoice { plugin, config })
            .await?;
        Ok(Json(choice.into()))
    }

    /// Find a user by email
    ///
    /// E.g. to get a recipient's id. 404 when nobody has that email.
    #[oai(path = "/api/users", method = "get", operation_id = "findUserByEmail")]
    async fn by_email(
        &self,
        state: Data<&AppState>,
        _caller: AuthUser,
        /// The email to look up (case-insensitive).
        email: Query<EmailText>,
    ) -> Result<Json<UserView>, ApiError> {
        let email = Email::parse(&email.0.0)?;
        let user = state.store.user_by_email(&email).await?;
        user.map(|u| Json(u.into()))
            .ok_or_else(|| ApiError::not_found(USER_NOT_FOUND))
    }

    /// Get a user
    ///
    /// A user's id, email and status.
    #[oai(path = "/api/users/:id", method = "get", operation_id = "getUser")]
    async fn by_id(
        &self,
        state: Data<&AppState>,
        _caller: AuthUser,
        /// The user's id.
        id: Path<UuidText>,
    ) -> Result<Json<UserView>, ApiError> {
        // An id that cannot exist is simply not found.
        let Ok(id) = UserId::parse(&id.0.0) else {
            return Err(ApiError::not_found(USER_NOT_FOUND));
        };
        let user = state.store.user_by_id(id).await?;
        user.map(|u| Json(u.into()))
            .ok_or_else(|| ApiError::not_found(USER_NOT_FOUND))
    }
}
