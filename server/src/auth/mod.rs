//! Credentials: argon2id password hashes and HS256 session tokens.

mod password;
mod secret;
mod sessions;
mod token;

pub use password::{HashError, PasswordHasher};
pub use secret::load_or_create_secret;
pub use sessions::{AuthError, CACHE_TTL, Caller, Sessions};
pub use token::{IssuedToken, TokenError, TokenService, VerifiedToken};
