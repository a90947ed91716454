use std::sync::Arc;
use std::time::Duration;

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
///
/// A slot is held until its hash has finished, even when the client that asked has gone (the
/// blocking work cannot be cancelled), so disconnecting clients cannot run more hashes than
/// there are slots. A request waits at most `max_wait` for a slot, then gets [`HashError::Busy`].
pub struct PasswordHasher {
    permits: Arc<Semaphore>,
    max_wait: Duration,
    /// Verified against when the email is unknown, so both failures take the same time.
    dummy_hash: String,
}

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// Every slot stayed busy for the whole wait.
    #[error("too many password checks in progress")]
    Busy,
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

impl PasswordHasher {
    pub fn new(concurrency: usize, max_wait: Duration) -> anyhow::Result<Self> {
        let dummy_hash = argon2()
            .hash_password(b"palaver-dummy-password")
            .map_err(|e| anyhow!("hashing the dummy password: {e}"))?
            .to_string();
        Ok(Self {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            max_wait,
            dummy_hash,
        })
    }

    pub async fn hash(&self, password: Password) -> Result<String, HashError> {
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
    ) -> Result<bool, HashError> {
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
    ) -> Result<T, HashError> {
        let permit = tokio::time::timeout(self.max_wait, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| {
                crate::metrics::rate_limited("password_hashing");
                HashError::Busy
            })?
            .context("password hasher is shut down")?;
        // The permit moves into the blocking task: dropping this future (the client went away)
        // does not free the slot while the hash still runs.
        let hashed = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        })
        .await
        .context("password hashing task failed")??;
        Ok(hashed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_slot_is_held_until_the_hash_finishes_and_the_wait_is_bounded() {
        let hasher = Arc::new(PasswordHasher::new(1, Duration::from_millis(50)).expect("hasher"));
        // A hash that runs until released, for a caller that gives up at once.
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let abandoned = {
            let hasher = hasher.clone();
            tokio::spawn(async move {
                hasher
                    .run(move || {
                        let _ = hold.recv();
                        Ok(())
                    })
                    .await
            })
        };
        while hasher.permits.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        abandoned.abort();
        assert!(abandoned.await.is_err(), "the caller is gone");
        assert_eq!(
            hasher.permits.available_permits(),
            0,
            "its hash keeps the slot"
        );
        let busy = hasher.run(|| Ok(())).await;
        assert!(matches!(busy, Err(HashError::Busy)), "{busy:?}");
        release.send(()).expect("still hashing");
        // The slot comes back once the work is done.
        drop(hasher.permits.acquire().await.expect("slot"));
    }

    fn password(raw: &str) -> Password {
        Password::parse(raw.to_owned()).expect("valid password")
    }

    #[tokio::test]
    async fn hashes_with_argon2id_and_verifies() {
        let hasher = PasswordHasher::new(2, Duration::from_secs(5)).expect("hasher");
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
        let hasher = PasswordHasher::new(1, Duration::from_secs(5)).expect("hasher");
        assert!(
            !hasher
                .verify(password("palaver-dummy-password"), None)
                .await
                .expect("verify")
        );
    }
}
