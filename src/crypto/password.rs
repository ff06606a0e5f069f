//! argon2id password hashing, run on the blocking pool so it never stalls the runtime.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::rngs::OsRng;

use crate::domain::user::Password;

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("password task failed")]
    Join,
}

fn hasher() -> Argon2<'static> {
    // OWASP's argon2id minimum: 19 MiB, 2 passes, 1 lane.
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

pub async fn hash_password(password: Password) -> Result<String, PasswordError> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        hasher()
            .hash_password(password.expose().as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| PasswordError::Hash(e.to_string()))
    })
    .await
    .map_err(|_| PasswordError::Join)?
}

/// A valid hash of a password nobody knows: verifying against it for an unknown user
/// costs the same time as a real check, so timing does not reveal which emails exist.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$3HsaGq3SIFprUOFpkiPQ3JdvDiQxiSpAKGZiI5Nbq7o";

/// `stored` is `None` for an unknown user or one without a password.
pub async fn verify_password(stored: Option<String>, candidate: String) -> bool {
    tokio::task::spawn_blocking(move || {
        let (hash, real) = match stored.as_deref() {
            Some(h) => (h.to_owned(), true),
            None => (DUMMY_HASH.to_owned(), false),
        };
        let ok = PasswordHash::new(&hash)
            .map(|parsed| {
                hasher()
                    .verify_password(candidate.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false);
        ok && real
    })
    .await
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_then_verify() {
        let h = hash_password(Password::parse("correct horse battery".into()).unwrap())
            .await
            .unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password(Some(h.clone()), "correct horse battery".into()).await);
        assert!(!verify_password(Some(h), "wrong horse battery".into()).await);
    }

    #[tokio::test]
    async fn unknown_user_never_verifies() {
        assert!(!verify_password(None, "anything at all".into()).await);
    }
}
