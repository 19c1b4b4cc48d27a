//! Password hashing (argon2id in a fixed number of slots with reused memory) and login tokens.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use crate::config::Settings;
use crate::error::{Error, Result};

/// Random bytes in a login token (256 bits).
const TOKEN_BYTES: usize = 32;
/// Salt bytes of a new hash: the PHC recommendation, as `PasswordHasher::hash_password` used.
const SALT_BYTES: usize = 16;

/// A unit of work for a hashing slot; it sends its own answer.
type Job = Box<dyn FnOnce(&mut Slot) + Send>;

/// Hashes and verifies passwords with argon2id, in `argon2_slots` hashing slots.
///
/// Each slot is a dedicated thread that owns one argon2 block memory of `argon2_memory_kib`,
/// allocated on its first hash and reused for every later one, so hashing memory is at most
/// slots × `argon2_memory_kib` however many hashes arrive and however many cores the host
/// has. Dedicated threads rather than `spawn_blocking`: the memory never moves between
/// threads or allocator arenas (freed argon2 blocks scattered over tokio's up to 512 blocking
/// threads were kept by glibc, issue 14), hashing never competes for the blocking pool, and it
/// never runs on the async workers. Callers beyond the slots wait in a bounded queue holding
/// only their password and a reply channel, never hashing memory.
pub struct Passwords {
    params: Params,
    jobs: mpsc::Sender<Job>,
}

/// One slot's block memory (empty until its first hash).
struct Slot {
    blocks: Vec<Block>,
    /// Blocks for the configured parameters.
    size: usize,
}

impl Slot {
    /// Memory for `need` blocks: this slot's own, or, for a stored hash made with more memory
    /// than the current settings give a slot, a temporary allocation freed after the hash.
    fn with_memory<T>(&mut self, need: usize, f: impl FnOnce(&mut [Block]) -> T) -> Result<T> {
        if need > self.size {
            return Ok(f(&mut allocate(need)?));
        }
        if self.blocks.is_empty() {
            self.blocks = allocate(self.size)?;
        }
        Ok(f(&mut self.blocks[..need]))
    }
}

/// `n` zeroed blocks, or an error (not an abort) when the memory is not there.
fn allocate(n: usize) -> Result<Vec<Block>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|_| Error::internal(format!("no memory for {n} argon2 blocks")))?;
    v.resize(n, Block::new());
    Ok(v)
}

impl Passwords {
    /// A hasher with the parameters and slots from `settings`; starts the slot threads.
    pub fn new(settings: &Settings) -> Passwords {
        let params = Params::new(
            settings.argon2_memory_kib,
            settings.argon2_iterations,
            settings.argon2_parallelism,
            None,
        )
        .expect("validated argon2 parameters");
        let slots = settings.argon2_slots.max(1) as usize;
        // Queue depth = slots: a slot that finishes finds its next job waiting.
        let (jobs, rx) = mpsc::channel::<Job>(slots);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..slots {
            let rx = rx.clone();
            let mut slot = Slot {
                blocks: Vec::new(),
                size: params.block_count(),
            };
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    loop {
                        // The lock is held only while waiting for a job, not while hashing.
                        let job = match rx.lock() {
                            Ok(mut rx) => rx.blocking_recv(),
                            Err(_) => None,
                        };
                        let Some(job) = job else { return };
                        // A panic drops the job's reply (the caller gets `internal`); the slot lives on.
                        let _ = std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut slot)));
                    }
                })
                .expect("starting a password hashing thread");
        }
        Passwords { params, jobs }
    }

    /// Runs `f` in the next free slot and returns its answer.
    async fn in_slot<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Slot) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |slot| {
            // The caller went away (its connection closed) while queued: skip the work.
            if !tx.is_closed() {
                let _ = tx.send(f(slot));
            }
        });
        self.jobs
            .send(job)
            .await
            .map_err(|_| Error::internal("password hashing stopped"))?;
        rx.await
            .map_err(|_| Error::internal("password hashing failed"))?
    }

    /// The PHC string of `password` with a fresh salt.
    pub async fn hash(&self, password: String) -> Result<String> {
        let params = self.params.clone();
        self.in_slot(move |slot| hash_in(slot, params, password.as_bytes()))
            .await
    }

    /// Whether `password` matches the PHC string `hash` (its own parameters apply).
    pub async fn verify(&self, password: String, hash: String) -> Result<bool> {
        self.in_slot(move |slot| verify_in(slot, password.as_bytes(), &hash))
            .await
    }
}

/// Hashes with the configured parameters into the slot's memory. The PHC string is built
/// field by field exactly as `PasswordHasher::hash_password` built it (argon2id, v=19,
/// m/t/p, 16-byte salt, 32-byte output), so stored hashes of both ages verify alike.
fn hash_in(slot: &mut Slot, params: Params, password: &[u8]) -> Result<String> {
    let salt: [u8; SALT_BYTES] = rand::random();
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    let phc_params = ParamsString::try_from(&params).map_err(Error::internal)?;
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    slot.with_memory(argon.params().block_count(), |mem| {
        argon.hash_password_into_with_memory(password, &salt, &mut out, mem)
    })?
    .map_err(Error::internal)?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: phc_params,
        salt: Some(Salt::new(&salt).map_err(Error::internal)?),
        hash: Some(Output::new(&out).map_err(Error::internal)?),
    };
    Ok(phc.to_string())
}

/// Recomputes the hash with the parameters stored in `phc` and compares in constant time.
/// A string that does not parse as an argon2 PHC string matches no password.
fn verify_in(slot: &mut Slot, password: &[u8], phc: &str) -> Result<bool> {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return Ok(false);
    };
    let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else {
        return Ok(false);
    };
    let Ok(algorithm) = Algorithm::try_from(parsed.algorithm.as_str()) else {
        return Ok(false);
    };
    let version = match parsed.version.map(Version::try_from).transpose() {
        Ok(v) => v.unwrap_or_default(),
        Err(_) => return Ok(false),
    };
    let Ok(params) = Params::try_from(&parsed) else {
        return Ok(false);
    };
    let argon = Argon2::new(algorithm, version, params);
    let mut out = vec![0u8; expected.len()];
    let hashed = slot.with_memory(argon.params().block_count(), |mem| {
        argon.hash_password_into_with_memory(password, salt, &mut out, mem)
    })?;
    if hashed.is_err() {
        return Ok(false);
    }
    // `Output`'s equality is constant-time.
    Ok(Output::new(&out).is_ok_and(|computed| computed == *expected))
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
        let p = cheap(64);
        let h = p.hash("correct horse".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(p.verify("correct horse".into(), h.clone()).await.unwrap());
        assert!(!p.verify("wrong horse!".into(), h).await.unwrap());
    }

    fn cheap(memory_kib: u32) -> Passwords {
        Passwords::new(&Settings {
            argon2_memory_kib: memory_kib,
            argon2_iterations: 1,
            ..Settings::default()
        })
    }

    #[tokio::test]
    async fn hashes_of_the_old_password_hasher_path_still_verify_both_ways() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let params = Params::new(64, 1, 1, None).unwrap();
        let old = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let stored = old.hash_password(b"correct horse").unwrap().to_string();
        let p = cheap(64);
        assert!(
            p.verify("correct horse".into(), stored.clone())
                .await
                .unwrap()
        );
        assert!(
            !p.verify("wrong horse!".into(), stored.clone())
                .await
                .unwrap()
        );
        // And the other way: the old verifier accepts what the slots write, and the string
        // has the same shape (fields, parameter order, salt and output lengths).
        let new = p.hash("correct horse".into()).await.unwrap();
        let parsed = PasswordHash::new(&new).unwrap();
        assert!(old.verify_password(b"correct horse", &parsed).is_ok());
        let shape = |s: &str| {
            let f: Vec<&str> = s.split('$').collect();
            (
                f[1].to_string(),
                f[2].to_string(),
                f[3].to_string(),
                f[4].len(),
                f[5].len(),
            )
        };
        assert_eq!(shape(&new), shape(&stored));
        assert_eq!(
            shape(&new),
            (
                "argon2id".into(),
                "v=19".into(),
                "m=64,t=1,p=1".into(),
                22,
                43
            )
        );
    }

    #[tokio::test]
    async fn a_hash_that_needs_more_memory_than_a_slot_still_verifies() {
        let stored = cheap(512).hash("correct horse".into()).await.unwrap();
        let lowered = cheap(64);
        assert!(
            lowered
                .verify("correct horse".into(), stored.clone())
                .await
                .unwrap()
        );
        assert!(!lowered.verify("wrong horse!".into(), stored).await.unwrap());
    }

    #[test]
    fn a_slot_allocates_once_and_lends_larger_memory_only_temporarily() {
        let params = Params::new(64, 1, 1, None).unwrap();
        let mut slot = Slot {
            blocks: Vec::new(),
            size: params.block_count(),
        };
        let first = hash_in(&mut slot, params.clone(), b"correct horse").unwrap();
        let (ptr, len) = (slot.blocks.as_ptr(), slot.blocks.len());
        assert_eq!(len, 64);
        let second = hash_in(&mut slot, params, b"correct horse").unwrap();
        assert_ne!(first, second, "fresh salt per hash");
        assert!(verify_in(&mut slot, b"correct horse", &first).unwrap());
        let big = hash_in(
            &mut Slot {
                blocks: Vec::new(),
                size: 256,
            },
            Params::new(256, 1, 1, None).unwrap(),
            b"correct horse",
        )
        .unwrap();
        assert!(verify_in(&mut slot, b"correct horse", &big).unwrap());
        assert_eq!((slot.blocks.as_ptr(), slot.blocks.len()), (ptr, len));
    }

    #[tokio::test]
    async fn strings_that_are_no_argon2_hash_match_nothing() {
        let p = cheap(64);
        for bad in [
            "",
            "plain",
            "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ",
            "$scrypt$ln=1$abc$def",
        ] {
            assert!(
                !p.verify("correct horse".into(), bad.into()).await.unwrap(),
                "{bad}"
            );
        }
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
