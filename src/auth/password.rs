//! Owner passwords: argon2id hashes in PHC string form (salt and parameters inside), computed on the
//! blocking pool because one hash costs tens of milliseconds of CPU and ~19 MiB of memory. At most
//! [`slots`] hashes run at once, server-wide: a burst of registrations and logins (from many
//! addresses, so the per-address auth limit does not stop it) waits for a slot instead of holding
//! 19 MiB each, and is refused ([`PasswordError::Busy`]) when it would wait longer than [`SLOT_WAIT`].

use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::RngCore;
use tokio::sync::Semaphore;

/// Shortest password accepted at registration.
pub const PASSWORD_MIN_CHARS: usize = 8;
/// Longest password accepted: bounds the hashing work one request can ask for.
pub const PASSWORD_MAX_CHARS: usize = 256;

/// Hashing could not run.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// argon2 refused its input (never for passwords within the length limits).
    #[error("password hashing failed: {0}")]
    Hash(String),
    /// The blocking task panicked or was cancelled.
    #[error("password hashing task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// Every hashing slot stayed taken for [`SLOT_WAIT`].
    #[error("every password hashing slot is busy")]
    Busy,
}

/// How long a hash waits for a slot before the request is refused.
pub const SLOT_WAIT: Duration = Duration::from_secs(5);

/// Hashes that may run at once: one per two cores, at least one (each holds ~19 MiB while it runs).
pub fn slots() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

static SLOTS: LazyLock<Arc<Semaphore>> = LazyLock::new(|| Arc::new(Semaphore::new(slots())));

/// Runs `work` on the blocking pool in one of the hashing slots. The slot goes with the work, so a
/// request abandoned by its client still holds it until the hash is done.
async fn in_slot<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, PasswordError> {
    in_slot_of(&SLOTS, work).await
}

async fn in_slot_of<T: Send + 'static>(
    slots: &Arc<Semaphore>,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, PasswordError> {
    let permit = match tokio::time::timeout(SLOT_WAIT, slots.clone().acquire_owned()).await {
        Ok(Ok(permit)) => permit,
        _ => return Err(PasswordError::Busy),
    };
    Ok(tokio::task::spawn_blocking(move || {
        let _slot = permit;
        work()
    })
    .await?)
}

/// The argon2id PHC string of `password` with a fresh random salt (argon2 crate defaults: m = 19 MiB,
/// t = 2, p = 1, the OWASP minimum).
pub async fn hash(password: String) -> Result<String, PasswordError> {
    in_slot(move || hash_now(&password)).await?
}

fn hash_now(password: &str) -> Result<String, PasswordError> {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    let salt = SaltString::encode_b64(&bytes).map_err(|e| PasswordError::Hash(e.to_string()))?;
    let phc =
        Argon2::default().hash_password(password.as_bytes(), &salt).map_err(|e| PasswordError::Hash(e.to_string()))?;
    Ok(phc.to_string())
}

/// True when `password` matches `phc`. With `phc` absent (unknown email, or an owner without a
/// password) a dummy hash is verified anyway, so the answer takes as long as for a real owner and
/// timing does not tell which emails exist; the result is then always false.
pub async fn verify(password: String, phc: Option<String>) -> Result<bool, PasswordError> {
    in_slot(move || {
        let (phc, real) = match phc {
            Some(p) => (p, true),
            None => (dummy_hash().to_string(), false),
        };
        let Ok(parsed) = PasswordHash::new(&phc) else { return Ok(false) };
        let matches = Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok();
        Ok(real && matches)
    })
    .await?
}

/// A hash of a random password, made once per process with the same parameters as real ones.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash_now(&uuid::Uuid::new_v4().to_string()).expect("hashing a UUID cannot fail"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hash_verifies_its_password_and_no_other() {
        let phc = hash("correct horse".into()).await.unwrap();
        assert!(phc.starts_with("$argon2id$"), "{phc}");
        assert!(verify("correct horse".into(), Some(phc.clone())).await.unwrap());
        assert!(!verify("wrong horse".into(), Some(phc)).await.unwrap());
        assert!(!verify("anything".into(), None).await.unwrap());
    }

    /// While every slot is taken, a hash waits [`SLOT_WAIT`] and is refused; once one is free it runs.
    #[tokio::test(start_paused = true)]
    async fn hashes_beyond_the_slots_wait_then_are_refused() {
        // Its own slots: the process-wide ones are shared with the other tests.
        let slots = Arc::new(Semaphore::new(1));
        let held = slots.clone().acquire_owned().await.unwrap();
        let started = tokio::time::Instant::now();
        let refused = in_slot_of(&slots, || hash_now("correct horse")).await.unwrap_err();
        assert!(matches!(refused, PasswordError::Busy), "{refused}");
        assert_eq!(started.elapsed(), SLOT_WAIT);
        drop(held);
        let phc = in_slot_of(&slots, || hash_now("correct horse")).await.unwrap().unwrap();
        assert!(phc.starts_with("$argon2id$"), "{phc}");
        assert_eq!(slots.available_permits(), 1, "the slot is given back");
    }
}
