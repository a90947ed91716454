//! The one place where failures become HTTP answers. Every error body is
//! `{"message": "..."}`, written for a person; details of real faults go to the log only.

use poem::http::StatusCode;
use poem::{IntoResponse, Response};
use poem_openapi::error::{
    AuthorizationError, ContentTypeError, ParseParamError, ParseRequestPayloadError,
};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object};

use crate::accounts::AccountError;
use crate::auth::{AuthError, HashError};
use crate::conversations::ConversationError;
use crate::domain::ValidationError;
use crate::failure::{Failure, RetryAfter, capitalize};
use crate::messaging::SendError;
use crate::responder::ChoiceError;
use crate::store::StoreError;

/// The body of every error answer.
#[derive(Debug, Clone, Object)]
#[oai(example)]
pub struct ErrorBody {
    /// What went wrong, for a person to read.
    pub message: String,
}

#[derive(Debug, ApiResponse)]
#[oai(bad_request_handler = "bad_request_from_poem")]
pub enum ApiError {
    /// The request is malformed or a value is invalid.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// No token, or the token is invalid or expired; or wrong login credentials.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// The token is valid but does not allow this.
    #[oai(status = 403)]
    Forbidden(Json<ErrorBody>),
    /// The user or recipient does not exist.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// The email is already registered.
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
    /// The request body took too long to arrive.
    #[oai(status = 408)]
    RequestTimeout(Json<ErrorBody>),
    /// The request body is larger than the limit.
    #[oai(status = 413)]
    PayloadTooLarge(Json<ErrorBody>),
    /// The body was not sent as `application/json`.
    #[oai(status = 415)]
    UnsupportedMediaType(Json<ErrorBody>),
    /// A moderation plugin refused the message; `message` says why.
    #[oai(status = 422)]
    Unprocessable(Json<ErrorBody>),
    /// A rate limit or cap was reached; `Retry-After` says when to try again (seconds).
    #[oai(status = 429)]
    TooManyRequests(Json<ErrorBody>, #[oai(header = "Retry-After")] u64),
    /// A fault on our side; the details are in the server log.
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
    /// The database cannot be reached, or the server is too busy, right now; `Retry-After`
    /// says when to try again (seconds).
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>, #[oai(header = "Retry-After")] u64),
}

impl poem_openapi::types::Example for ErrorBody {
    fn example() -> Self {
        Self {
            message: "Recipient not found".to_owned(),
        }
    }
}

fn body(message: impl Into<String>) -> Json<ErrorBody> {
    Json(ErrorBody {
        message: message.into(),
    })
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::BadRequest(body(message))
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::Unauthorized(body(message))
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::Forbidden(body(message))
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::NotFound(body(message))
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::Conflict(body(message))
    }
    pub fn payload_too_large() -> Self {
        Self::PayloadTooLarge(body(payload_too_large_message()))
    }
    pub fn request_timeout() -> Self {
        Self::RequestTimeout(body("The request body took too long to arrive"))
    }
    pub fn too_many_requests(message: impl Into<String>, retry_after: RetryAfter) -> Self {
        Self::TooManyRequests(body(message), retry_after.seconds())
    }
    pub fn unavailable(message: impl Into<String>, retry_after: RetryAfter) -> Self {
        Self::Unavailable(body(message), retry_after.seconds())
    }
    /// Logs the cause; the client only learns that something failed on our side.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        Failure::internal(cause).into()
    }
}

impl From<Failure> for ApiError {
    fn from(failure: Failure) -> Self {
        let Failure {
            status,
            message,
            retry_after,
        } = failure;
        let retry = retry_after.map_or(1, RetryAfter::seconds);
        let message = body(message);
        match status {
            400 => Self::BadRequest(message),
            401 => Self::Unauthorized(message),
            403 => Self::Forbidden(message),
            404 => Self::NotFound(message),
            408 => Self::RequestTimeout(message),
            409 => Self::Conflict(message),
            413 => Self::PayloadTooLarge(message),
            415 => Self::UnsupportedMediaType(message),
            422 => Self::Unprocessable(message),
            429 => Self::TooManyRequests(message, retry),
            503 => Self::Unavailable(message, retry),
            _ => Self::Internal(message),
        }
    }
}

/// A [`Failure`] raised outside an API operation (the `/ws` handshake refuses with one before
/// it upgrades) leaves in the same JSON shape, rendered here.
impl poem::error::ResponseError for Failure {
    fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn as_response(&self) -> Response {
        ApiError::from(self.clone()).into_response()
    }
}

/// Each service's errors answer through their [`Failure`], which holds their texts.
macro_rules! answered_as_failure {
    ($($error:ty),* $(,)?) => {$(
        impl From<$error> for ApiError {
            fn from(err: $error) -> Self {
                Failure::from(err).into()
            }
        }
    )*};
}

answered_as_failure!(
    ValidationError,
    StoreError,
    SendError,
    AuthError,
    HashError,
    AccountError,
    ChoiceError,
    ConversationError,
);

/// poem-openapi calls this when it cannot parse a request for an operation.
fn bad_request_from_poem(err: poem::Error) -> ApiError {
    let status = err.status();
    let message = describe(&err);
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::payload_too_large(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType(body(message)),
        StatusCode::UNAUTHORIZED => ApiError::unauthorized(message),
        _ => ApiError::bad_request(message),
    }
}

/// A sentence for any error poem or poem-openapi produces on its own.
fn describe(err: &poem::Error) -> String {
    if let Some(e) = err.downcast_ref::<ParseRequestPayloadError>() {
        return format!("Invalid request body: {}", e.reason);
    }
    if let Some(e) = err.downcast_ref::<ParseParamError>() {
        return format!("Invalid parameter `{}`: {}", e.name, e.reason);
    }
    if let Some(e) = err.downcast_ref::<ContentTypeError>() {
        return match e {
            ContentTypeError::ExpectContentType => {
                "Missing Content-Type: send the body as application/json".to_owned()
            }
            ContentTypeError::NotSupported { content_type } => format!(
                "Unsupported Content-Type {content_type:?}: send the body as application/json"
            ),
        };
    }
    if err.is::<AuthorizationError>() {
        return "Authentication required".to_owned();
    }
    match err.status() {
        StatusCode::NOT_FOUND => "Not found".to_owned(),
        StatusCode::METHOD_NOT_ALLOWED => "Method not allowed".to_owned(),
        StatusCode::PAYLOAD_TOO_LARGE => payload_too_large_message(),
        status if status.is_server_error() => crate::failure::INTERNAL.to_owned(),
        _ => capitalize(&err.to_string()),
    }
}

fn payload_too_large_message() -> String {
    format!(
        "Request body is too large (the limit is {} KiB)",
        crate::config::MAX_BODY_BYTES / 1024
    )
}

/// The last line of defence: whatever error reaches the edge of the app leaves as JSON.
pub async fn error_to_response(err: poem::Error) -> Response {
    if err.is_from_response() {
        return err.into_response();
    }
    let status = err.status();
    if status.is_server_error() {
        tracing::error!(error = %err, "unhandled error");
    }
    let mut response = Json(ErrorBody {
        message: describe(&err),
    })
    .into_response();
    response.set_status(status);
    response
}
