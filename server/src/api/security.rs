//! Who is calling: a bearer token in `Authorization`, or in `x-auth-token` (which many existing
//! clients of this API send). Both are declared in the OpenAPI spec, so Swagger UI's
//! "Authorize" button works with either.

use poem::Request;
use poem::http::HeaderMap;
use poem::web::RequestBody;
use poem_openapi::registry::{MetaSecurityScheme, Registry};
use poem_openapi::{ApiExtractor, ApiExtractorType, ExtractParamOptions};

use super::error::ApiError;
use crate::auth::{AuthError, Caller, TokenError};
use crate::domain::UserId;
use crate::state::AppState;

const BEARER_SCHEME: &str = "BearerAuth";
const HEADER_SCHEME: &str = "AuthTokenHeader";
pub const AUTH_TOKEN_HEADER: &str = "x-auth-token";

/// The authenticated caller of an operation.
pub struct AuthUser(pub UserId);

pub const TOKEN_REQUIRED: &str = "Authentication required: send Authorization: Bearer <token>";
pub const TOKEN_EXPIRED: &str = "Token has expired; please log in again";
pub const TOKEN_INVALID: &str = "Invalid token";
pub const TOKEN_REVOKED: &str = "Token is no longer valid; please log in again";

/// The token a request carries, if any: `Authorization: Bearer` first, then `x-auth-token`.
pub fn token_from_headers(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(poem::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            let (scheme, token) = value.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    bearer
        .or_else(|| {
            headers
                .get(AUTH_TOKEN_HEADER)
                .and_then(|value| value.to_str().ok())
                .map(str::trim)
        })
        .filter(|token| !token.is_empty())
}

/// Checks a token and names its user, with the answer a client should see when it fails.
pub async fn authenticate(state: &AppState, token: Option<&str>) -> Result<Caller, ApiError> {
    state
        .sessions
        .authenticate(token)
        .await
        .map_err(|e| match e {
            AuthError::Missing => ApiError::unauthorized(TOKEN_REQUIRED),
            AuthError::Token(TokenError::Expired) => ApiError::unauthorized(TOKEN_EXPIRED),
            AuthError::Token(TokenError::Invalid) => ApiError::unauthorized(TOKEN_INVALID),
            AuthError::Revoked => ApiError::unauthorized(TOKEN_REVOKED),
            AuthError::Store(e) => e.into(),
        })
}

impl<'a> ApiExtractor<'a> for AuthUser {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::SecurityScheme];
    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        registry.create_security_scheme(
            BEARER_SCHEME,
            MetaSecurityScheme {
                ty: "http",
                description: Some(
                    "The token from POST /api/auth/login, as `Authorization: Bearer <token>`.",
                ),
                name: None,
                key_in: None,
                scheme: Some("bearer"),
                bearer_format: Some("JWT"),
                flows: None,
                openid_connect_url: None,
            },
        );
        registry.create_security_scheme(
            HEADER_SCHEME,
            MetaSecurityScheme {
                ty: "apiKey",
                description: Some("The same token in an `x-auth-token` header, for older clients."),
                name: Some(AUTH_TOKEN_HEADER),
                key_in: Some("header"),
                scheme: None,
                bearer_format: None,
                flows: None,
                openid_connect_url: None,
            },
        );
    }

    fn security_schemes() -> Vec<&'static str> {
        vec![BEARER_SCHEME, HEADER_SCHEME]
    }

    async fn from_request(
        req: &'a Request,
        _body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        let state = req
            .data::<AppState>()
            .ok_or_else(|| ApiError::internal("AppState is missing from the request"))?;
        let caller = authenticate(state, token_from_headers(req.headers())).await?;
        Ok(AuthUser(caller.user))
    }
}
