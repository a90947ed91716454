//! Credentials: argon2id password hashes and HS256 session tokens.

mod password;
mod secret;
mod token;

pub use password::PasswordHasher;
pub use secret::load_or_create_secret;
pub use token::{IssuedToken, TokenError, TokenService};
