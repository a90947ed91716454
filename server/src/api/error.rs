//! The one place where failures become HTTP answers. Every error body is
//! `{"message": "..."}`, written for a person; details of real faults go to the log only.

use poem::http::StatusCode;
use poem::{IntoResponse, Response};
use poem_openapi::error::{
    AuthorizationError, ContentTypeError, ParseParamError, ParseRequestPayloadError,
};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object};

use crate::account::AccountError;
use crate::auth::HashError;
use crate::domain::ValidationError;
use crate::limits::RetryAfter;
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

/// How long clients are asked to wait when the database is unavailable.
const UNAVAILABLE_RETRY_SECS: u64 = 5;

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
    pub fn unavailable(message: impl Into<String>, retry_after_secs: u64) -> Self {
        Self::Unavailable(body(message), retry_after_secs)
    }
    /// Logs the cause; the client only learns that something failed on our side.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::Internal(body("Internal server error"))
    }
}

impl ApiError {
    /// The status code and message, for transports that are not HTTP responses.
    pub fn status_and_message(&self) -> (u16, String) {
        let (status, Json(body)) = match self {
            Self::BadRequest(b) => (400, b),
            Self::Unauthorized(b) => (401, b),
            Self::Forbidden(b) => (403, b),
            Self::NotFound(b) => (404, b),
            Self::Conflict(b) => (409, b),
            Self::RequestTimeout(b) => (408, b),
            Self::PayloadTooLarge(b) => (413, b),
            Self::UnsupportedMediaType(b) => (415, b),
            Self::TooManyRequests(b, _) => (429, b),
            Self::Internal(b) => (500, b),
            Self::Unavailable(b, _) => (503, b),
        };
        (status, body.message.clone())
    }

    /// Seconds until a retry may succeed, for 429 and 503 answers.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Self::TooManyRequests(_, secs) | Self::Unavailable(_, secs) => Some(*secs),
            _ => None,
        }
    }
}

impl From<ValidationError> for ApiError {
    fn from(err: ValidationError) -> Self {
        Self::bad_request(capitalize(&err.0))
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::EmailTaken => Self::conflict("Email is already registered"),
            StoreError::UnknownUser => Self::not_found("User not found"),
            StoreError::Unavailable(detail) => {
                tracing::warn!(%detail, "database unavailable");
                Self::unavailable(
                    "The database is unavailable; please try again shortly",
                    UNAVAILABLE_RETRY_SECS,
                )
            }
            StoreError::Internal(cause) => Self::internal(format!("{cause:#}")),
        }
    }
}

impl From<ChoiceError> for ApiError {
    fn from(err: ChoiceError) -> Self {
        match err {
            ChoiceError::Store(err) => err.into(),
            ChoiceError::UnknownPlugin(_) | ChoiceError::NoSuchUser => {
                Self::not_found(err.to_string())
            }
            ChoiceError::NotSettable { .. } | ChoiceError::TooLong(_) => {
                Self::bad_request(err.to_string())
            }
        }
    }
}

impl From<SendError> for ApiError {
    fn from(err: SendError) -> Self {
        match err {
            SendError::SenderMismatch => Self::forbidden("You can only send messages as yourself"),
            SendError::Invalid(problem) => problem.into(),
            SendError::RecipientNotFound => Self::not_found("Recipient not found"),
            SendError::KeyReused => {
                Self::conflict("This idempotency key was already used for a different message")
            }
            SendError::Store(err) => err.into(),
            SendError::Unavailable(down) => Self::unavailable(down.0, UNAVAILABLE_RETRY_SECS),
            SendError::TooFast(wait) => Self::too_many_requests(
                format!(
                    "You are sending messages too fast; try again in {} s",
                    wait.seconds()
                ),
                wait,
            ),
        }
    }
}

impl From<AccountError> for ApiError {
    fn from(err: AccountError) -> Self {
        match err {
            AccountError::WrongPassword => Self::forbidden("The password is incorrect"),
            AccountError::UserGone => Self::unauthorized(super::security::TOKEN_REVOKED),
            AccountError::Store(err) => err.into(),
            AccountError::Hashing(err) => err.into(),
            AccountError::Internal(cause) => Self::internal(format!("{cause:#}")),
        }
    }
}

impl From<HashError> for ApiError {
    fn from(err: HashError) -> Self {
        match err {
            HashError::Busy => Self::unavailable(
                "Too many logins in progress; please try again shortly",
                HASHING_RETRY_SECS,
            ),
            HashError::Failed(cause) => Self::internal(format!("{cause:#}")),
        }
    }
}

/// When every hashing slot stayed busy for the whole wait.
const HASHING_RETRY_SECS: u64 = 2;

fn capitalize(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map(|first| first.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

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
        status if status.is_server_error() => "Internal server error".to_owned(),
        _ => capitalize(&err.to_string()),
    }
}

fn payload_too_large_message() -> String {
    format!(
        "Request body is too large (the limit is {} KiB)",
        super::MAX_BODY_BYTES / 1024
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
