//! `lock` and `unlock`, like `ssh-add -x` / `-X`: while locked, the agent refuses every signing
//! and key-changing request with `locked`, until `unlock` with the same passphrase.
//!
//! The passphrase is kept only as a salted scrypt hash and compared in constant time. Each
//! wrong `unlock` makes the next answer wait longer (0.1 s doubling to 10 s), and attempts queue
//! behind each other, so guessing over the socket is slow even for a same-user process.
//!
//! Locking also seals what would let a memory dump sign: every software key and the software
//! store's key-encryption key are sealed (AES-256-GCM) under a second key from the same scrypt
//! derivation, which is not kept; `unlock` derives it again from the passphrase.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use std::sync::Arc;

use dpop_keys::{Keyring, SealingKey};
use dpop_protocol::{ErrorCode, WireError};
use zeroize::Zeroizing;

/// scrypt cost of the lock passphrase's hash: as the key store's.
const SCRYPT_LOG_N: u8 = 15;
/// Longest wait after a wrong passphrase.
const MAX_DELAY: Duration = Duration::from_secs(10);

/// The lock state of one agent.
#[derive(Default)]
pub struct Lock {
    locked: AtomicBool,
    hash: Mutex<Option<Hashed>>,
    failures: AtomicU32,
    /// One `unlock` at a time: the delay after a wrong guess also delays the next guess.
    gate: tokio::sync::Mutex<()>,
}

struct Hashed {
    salt: [u8; 16],
    hash: Zeroizing<[u8; 32]>,
}

/// The passphrase's check hash and its sealing key: the two halves of one scrypt output.
fn derive(passphrase: &[u8], salt: &[u8]) -> Result<(Zeroizing<[u8; 32]>, SealingKey), WireError> {
    let params = scrypt::Params::new(SCRYPT_LOG_N, 8, 1)
        .map_err(|_| WireError::new(ErrorCode::Internal, "scrypt parameters"))?;
    let mut out = Zeroizing::new([0u8; 64]);
    scrypt::scrypt(passphrase, salt, &params, &mut out[..])
        .map_err(|_| WireError::new(ErrorCode::Internal, "scrypt"))?;
    let mut hash = Zeroizing::new([0u8; 32]);
    hash.copy_from_slice(&out[..32]);
    let mut sealing = Zeroizing::new([0u8; 32]);
    sealing.copy_from_slice(&out[32..]);
    let sealing = SealingKey::new(&sealing)
        .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))?;
    Ok((hash, sealing))
}

fn task_failed<E>(_: E) -> WireError {
    WireError::new(ErrorCode::Internal, "lock task failed")
}

/// The wait before answering after `failures` wrong passphrases in a row.
fn delay_after(failures: u32) -> Duration {
    let ms = 100u64.saturating_mul(1 << failures.saturating_sub(1).min(16));
    Duration::from_millis(ms).min(MAX_DELAY)
}

impl Lock {
    /// Unlocked.
    pub fn new() -> Lock {
        Lock::default()
    }

    /// Whether signing and key changes are refused now (cheap: the hot path asks).
    pub fn is_locked(&self) -> bool {
        self.locked.load(Ordering::Acquire)
    }

    /// Fails with `locked` while locked.
    pub fn check(&self) -> Result<(), WireError> {
        if self.is_locked() {
            return Err(WireError::new(
                ErrorCode::Locked,
                "the agent is locked; unlock it first (dpop unlock)",
            ));
        }
        Ok(())
    }

    /// Locks with `passphrase` (its scrypt hash is kept, not the passphrase) and seals
    /// `keyring`'s in-memory keys.
    pub async fn lock(
        &self,
        passphrase: Zeroizing<String>,
        keyring: &Arc<Keyring>,
    ) -> Result<(), WireError> {
        if passphrase.is_empty() {
            return Err(WireError::new(
                ErrorCode::BadRequest,
                "an empty passphrase cannot lock the agent",
            ));
        }
        let _gate = self.gate.lock().await;
        self.check()?;
        let mut salt = [0u8; 16];
        aws_lc_rs::rand::fill(&mut salt)
            .map_err(|_| WireError::new(ErrorCode::Internal, "random salt"))?;
        // Refused from here on: no request signs with a key being sealed.
        self.locked.store(true, Ordering::Release);
        let keyring = keyring.clone();
        let sealed = tokio::task::spawn_blocking(move || {
            let (hash, sealing) = derive(passphrase.as_bytes(), &salt)?;
            keyring
                .seal(&sealing)
                .map_err(|e| WireError::new(ErrorCode::Internal, format!("sealing keys: {e}")))?;
            Ok::<_, WireError>(hash)
        })
        .await
        .map_err(task_failed)
        .and_then(|r| r);
        let hash = match sealed {
            Ok(hash) => hash,
            Err(e) => {
                self.locked.store(false, Ordering::Release);
                return Err(e);
            }
        };
        *self.hash.lock().unwrap_or_else(|p| p.into_inner()) = Some(Hashed { salt, hash });
        self.failures.store(0, Ordering::Relaxed);
        Ok(())
    }

    /// Unlocks when `passphrase` is the one `lock` was given, and unseals `keyring`'s keys; a
    /// wrong one is answered late.
    pub async fn unlock(
        &self,
        passphrase: Zeroizing<String>,
        keyring: &Arc<Keyring>,
    ) -> Result<(), WireError> {
        let _gate = self.gate.lock().await;
        let salt = match &*self.hash.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(hashed) if self.is_locked() => hashed.salt,
            _ => {
                return Err(WireError::new(
                    ErrorCode::NotLocked,
                    "the agent is not locked",
                ));
            }
        };
        let (candidate, sealing) =
            tokio::task::spawn_blocking(move || derive(passphrase.as_bytes(), &salt))
                .await
                .map_err(task_failed)??;
        let matches = {
            let hashed = self.hash.lock().unwrap_or_else(|p| p.into_inner());
            let hashed = hashed.as_ref().expect("locked: a hash is set");
            aws_lc_rs::constant_time::verify_slices_are_equal(&candidate[..], &hashed.hash[..])
                .is_ok()
        };
        if !matches {
            let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(failures, "unlock with a wrong passphrase");
            // Still holding the gate: the next attempt waits too.
            tokio::time::sleep(delay_after(failures)).await;
            return Err(WireError::new(
                ErrorCode::WrongPassphrase,
                "that passphrase does not unlock the agent",
            ));
        }
        let keyring = keyring.clone();
        tokio::task::spawn_blocking(move || keyring.unseal(&sealing))
            .await
            .map_err(task_failed)?
            .map_err(|e| WireError::new(ErrorCode::Internal, format!("unsealing keys: {e}")))?;
        *self.hash.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.failures.store(0, Ordering::Relaxed);
        self.locked.store(false, Ordering::Release);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap() {
        assert_eq!(delay_after(1), Duration::from_millis(100));
        assert_eq!(delay_after(2), Duration::from_millis(200));
        assert_eq!(delay_after(5), Duration::from_millis(1600));
        assert_eq!(delay_after(8), MAX_DELAY);
        assert_eq!(delay_after(u32::MAX), MAX_DELAY);
    }
}
