//! Password hashing (argon2id, off the async threads and bounded) and login tokens.

use std::sync::Arc;

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::config::Settings;
use crate::error::{Error, Result};

/// Random bytes in a login token (256 bits).
const TOKEN_BYTES: usize = 32;

/// Hashes and verifies passwords with argon2id.
///
/// Each hash costs `argon2_memory_kib` of memory and a core for tens of milliseconds, so at
/// most one per core runs at a time; the rest wait their turn instead of exhausting memory.
pub struct Passwords {
    params: Params,
    permits: Arc<Semaphore>,
}

impl Passwords {
    /// A hasher with the parameters from `settings`.
    pub fn new(settings: &Settings) -> Passwords {
        let params = Params::new(
            settings.argon2_memory_kib,
            settings.argon2_iterations,
            settings.argon2_parallelism,
            None,
        )
        .expect("validated argon2 parameters");
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Passwords {
            params,
            permits: Arc::new(Semaphore::new(cores)),
        }
    }

    fn argon(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    /// The PHC string of `password` with a fresh salt.
    pub async fn hash(&self, password: String) -> Result<String> {
        let _permit = self.permits.acquire().await.map_err(Error::internal)?;
        let argon = self.argon();
        tokio::task::spawn_blocking(move || {
            argon
                .hash_password(password.as_bytes())
                .map(|h| h.to_string())
                .map_err(Error::internal)
        })
        .await
        .map_err(Error::internal)?
    }

    /// Whether `password` matches the PHC string `hash` (its own parameters apply).
    pub async fn verify(&self, password: String, hash: String) -> Result<bool> {
        let _permit = self.permits.acquire().await.map_err(Error::internal)?;
        let argon = self.argon();
        tokio::task::spawn_blocking(move || {
            argon
                .verify_password(password.as_bytes(), hash.as_str())
                .is_ok()
        })
        .await
        .map_err(Error::internal)
    }
}

/// A new random login token (hex).
pub fn new_token() -> String {
    let bytes: [u8; TOKEN_BYTES] = rand::random();
    hex(&bytes)
}

/// What is stored for a token: its SHA-256, so a copy of Redis holds no usable token.
pub fn token_digest(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_then_verify() {
        let mut s = Settings::default();
        s.argon2_memory_kib = 64;
        s.argon2_iterations = 1;
        let p = Passwords::new(&s);
        let h = p.hash("correct horse".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(p.verify("correct horse".into(), h.clone()).await.unwrap());
        assert!(!p.verify("wrong horse!".into(), h).await.unwrap());
    }

    #[test]
    fn tokens_are_random_and_digested() {
        let a = new_token();
        assert_eq!(a.len(), 64);
        assert_ne!(a, new_token());
        assert_eq!(token_digest(&a), token_digest(&a));
        assert_ne!(token_digest(&a), a);
    }
}
