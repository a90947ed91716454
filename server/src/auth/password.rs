use std::sync::Arc;

use anyhow::{Context, anyhow};
use argon2::{
    Algorithm, Argon2, Params, PasswordHash, PasswordHasher as _, PasswordVerifier, Version,
};
use tokio::sync::Semaphore;

use crate::domain::Password;

/// argon2id with OWASP's parameters: 19 MiB of memory, 2 passes, 1 lane.
fn argon2() -> Argon2<'static> {
    // The parameters are constants known to be valid; `Params::DEFAULT` is the same set.
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or(Params::DEFAULT);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes and verifies passwords on the blocking pool, at most `concurrency` at a time, so a
/// flood of logins queues here instead of starving the async workers or exhausting memory.
pub struct PasswordHasher {
    permits: Arc<Semaphore>,
    /// Verified against when the email is unknown, so both failures take the same time.
    dummy_hash: String,
}

impl PasswordHasher {
    pub fn new(concurrency: usize) -> anyhow::Result<Self> {
        let dummy_hash = argon2()
            .hash_password(b"palaver-dummy-password")
            .map_err(|e| anyhow!("hashing the dummy password: {e}"))?
            .to_string();
        Ok(Self {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            dummy_hash,
        })
    }

    pub async fn hash(&self, password: Password) -> anyhow::Result<String> {
        self.run(move || {
            argon2()
                .hash_password(password.expose())
                .map(|hash| hash.to_string())
                .map_err(|e| anyhow!("hashing a password: {e}"))
        })
        .await
    }

    /// `stored_hash: None` means "no such user": we still do the work, then say no.
    pub async fn verify(
        &self,
        password: Password,
        stored_hash: Option<String>,
    ) -> anyhow::Result<bool> {
        let user_exists = stored_hash.is_some();
        let hash = stored_hash.unwrap_or_else(|| self.dummy_hash.clone());
        let matches = self
            .run(move || {
                let parsed = PasswordHash::new(&hash).map_err(|e| anyhow!("stored hash: {e}"))?;
                Ok(argon2().verify_password(password.expose(), &parsed).is_ok())
            })
            .await?;
        Ok(user_exists && matches)
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let _permit = self
            .permits
            .acquire()
            .await
            .context("password hasher is shut down")?;
        tokio::task::spawn_blocking(work)
            .await
            .context("password hashing task failed")?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn password(raw: &str) -> Password {
        Password::parse(raw.to_owned()).expect("valid password")
    }

    #[tokio::test]
    async fn hashes_with_argon2id_and_verifies() {
        let hasher = PasswordHasher::new(2).expect("hasher");
        let hash = hasher.hash(password("correct horse")).await.expect("hash");
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(!hash.contains("correct horse"));
        assert!(
            hasher
                .verify(password("correct horse"), Some(hash.clone()))
                .await
                .expect("verify")
        );
        assert!(
            !hasher
                .verify(password("wrong horse"), Some(hash))
                .await
                .expect("verify")
        );
    }

    #[tokio::test]
    async fn unknown_user_never_verifies() {
        let hasher = PasswordHasher::new(1).expect("hasher");
        assert!(
            !hasher
                .verify(password("palaver-dummy-password"), None)
                .await
                .expect("verify")
        );
    }
}
