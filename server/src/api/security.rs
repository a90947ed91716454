//! Who is calling: a bearer token in `Authorization`, or in `x-auth-token` (which many existing
//! clients of this API send). Both are declared in the OpenAPI spec, so Swagger UI's
//! "Authorize" button works with either.

use poem::Request;
use poem::web::RequestBody;
use poem_openapi::registry::{MetaSecurityScheme, Registry};
use poem_openapi::{ApiExtractor, ApiExtractorType, ExtractParamOptions};

use super::AppState;
use super::error::ApiError;
use crate::auth::{AUTH_TOKEN_HEADER, token_from_headers};
use crate::domain::UserId;
use crate::failure::Failure;

const BEARER_SCHEME: &str = "BearerAuth";
const HEADER_SCHEME: &str = "AuthTokenHeader";

/// The authenticated caller of an operation.
pub struct AuthUser(pub UserId);

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
        let caller = state
            .sessions
            .authenticate(token_from_headers(req.headers()))
            .await
            .map_err(Failure::from)
            .map_err(ApiError::from)?;
        Ok(AuthUser(caller.user))
    }
}
