//! Credentials: argon2id password hashes and HS256 session tokens.

mod bearer;
mod password;
mod secret;
mod sessions;
mod token;

pub use bearer::{AUTH_TOKEN_HEADER, TOKEN_REVOKED, token_from_headers};
pub use password::{HashError, PasswordHasher};
pub use secret::load_or_create_secret;
pub use sessions::{AuthError, CACHE_TTL, Caller, Sessions};
pub use token::{IssuedToken, TokenError, TokenService, VerifiedToken};
