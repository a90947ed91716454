//! Values that must never reach a log: [`Secret`] (any credential), [`JwtSecret`] (the token
//! key, with its minimum length) and [`MongoUri`] with [`MongoSettings`] (a connection string
//! whose password is redacted wherever it is shown). No `Debug` here shows a secret.

use super::MIN_JWT_SECRET_BYTES;

/// A credential from the environment; `Debug` never shows it.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Self(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Where the MongoDB store lives.
#[derive(Debug, Clone)]
pub struct MongoSettings {
    pub uri: MongoUri,
    /// Overrides the database named in the URI's path (tests use a fresh one each);
    /// `None`: the URI's database, else `palaver`.
    pub database: Option<String>,
}

/// A `mongodb://` or `mongodb+srv://` connection string. It may carry a password, so `Debug`
/// and [`MongoUri::redacted`] show it with the password replaced by `***`.
#[derive(Clone)]
pub struct MongoUri(Secret);

impl MongoUri {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let uri = Self(Secret::new(raw.trim().to_owned()));
        let scheme_ok = ["mongodb://", "mongodb+srv://"]
            .iter()
            .any(|scheme| uri.expose().starts_with(scheme));
        if !scheme_ok {
            return Err(format!(
                "must start with mongodb:// or mongodb+srv://, got {:?}",
                uri.redacted()
            ));
        }
        Ok(uri)
    }

    pub fn expose(&self) -> &str {
        self.0.expose()
    }

    /// The password, if the URI has one (used to scrub it from driver messages too).
    pub fn password(&self) -> Option<&str> {
        let (start, end) = self.password_span()?;
        Some(&self.expose()[start..end])
    }

    /// The URI with its password (if any) replaced by `***`: safe for logs and errors.
    pub fn redacted(&self) -> String {
        let raw = self.expose();
        match self.password_span() {
            Some((start, end)) => format!("{}***{}", &raw[..start], &raw[end..]),
            None => raw.to_owned(),
        }
    }

    /// Scrubs the password from any text, e.g. an error the driver built from the URI.
    pub fn scrub(&self, text: &str) -> String {
        match self.password() {
            Some(password) if !password.is_empty() => text.replace(password, "***"),
            _ => text.to_owned(),
        }
    }

    /// Byte range of the password: `scheme://user:PASSWORD@hosts/...`. The userinfo is taken to
    /// end at the *last* `@`, so a password with an unescaped `@`, `/` or `?` (a common mistake)
    /// is still hidden; at worst some harmless text after it is hidden too.
    fn password_span(&self) -> Option<(usize, usize)> {
        let raw = self.expose();
        let userinfo_start = raw.find("://")? + 3;
        let userinfo_end = raw.rfind('@').filter(|&at| at > userinfo_start)?;
        let colon = raw[userinfo_start..userinfo_end].find(':')?;
        Some((userinfo_start + colon + 1, userinfo_end))
    }
}

impl std::fmt::Debug for MongoUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MongoUri({})", self.redacted())
    }
}

/// The HMAC key for tokens. Its `Debug` is redacted so a logged `Config` never leaks it.
#[derive(Clone)]
pub struct JwtSecret(Vec<u8>);

impl JwtSecret {
    pub fn new(bytes: Vec<u8>) -> Result<Self, String> {
        if bytes.len() < MIN_JWT_SECRET_BYTES {
            return Err(format!(
                "must be at least {MIN_JWT_SECRET_BYTES} bytes long (got {})",
                bytes.len()
            ));
        }
        Ok(Self(bytes))
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for JwtSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtSecret(<redacted>)")
    }
}
