//! Owner passwords: argon2id hashes in PHC string form (salt and parameters inside), computed on the
//! blocking pool because one hash costs tens of milliseconds of CPU and ~19 MiB of memory.

use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::RngCore;

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
}

/// The argon2id PHC string of `password` with a fresh random salt (argon2 crate defaults: m = 19 MiB,
/// t = 2, p = 1, the OWASP minimum).
pub async fn hash(password: String) -> Result<String, PasswordError> {
    tokio::task::spawn_blocking(move || hash_now(&password)).await?
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
    tokio::task::spawn_blocking(move || {
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
}
