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
//!
//! A lock ends what could still sign or add a key: signatures waiting for the user's
//! confirmation end with `locked` (their askpass is killed; see [`Lock::until_locked`]), and
//! key creation holds [`Lock::creating_key`] across the whole creation, so `lock` waits for a
//! key being made and then seals it with the others, and no key is added to a locked agent.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dpop_keys::{Keyring, SealingKey};
use dpop_protocol::{ErrorCode, WireError};
use zeroize::Zeroizing;

/// scrypt cost of the lock passphrase's hash: as the key store's.
const SCRYPT_LOG_N: u8 = 15;
/// Longest wait after a wrong passphrase.
const MAX_DELAY: Duration = Duration::from_secs(10);

/// The lock state of one agent.
pub struct Lock {
    locked: AtomicBool,
    hash: Mutex<Option<Hashed>>,
    failures: AtomicU32,
    /// One `unlock` at a time: the delay after a wrong guess also delays the next guess.
    gate: tokio::sync::Mutex<()>,
    /// How many times the agent was locked: a change ends every wait that watches it.
    locks: tokio::sync::watch::Sender<u64>,
    /// Held shared by each key creation, exclusively by `lock`.
    creating: tokio::sync::RwLock<()>,
}

impl Default for Lock {
    fn default() -> Lock {
        Lock {
            locked: AtomicBool::new(false),
            hash: Mutex::new(None),
            failures: AtomicU32::new(0),
            gate: tokio::sync::Mutex::new(()),
            locks: tokio::sync::watch::Sender::new(0),
            creating: tokio::sync::RwLock::new(()),
        }
    }
}

fn locked_error() -> WireError {
    WireError::new(
        ErrorCode::Locked,
        "the agent is locked; unlock it first (dpop unlock)",
    )
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
            return Err(locked_error());
        }
        Ok(())
    }

    /// Resolves when the agent is locked now or gets locked later: a wait that selects on it
    /// (a confirmation) ends there. Watching starts at this call, so no `lock` between the call
    /// and the first poll is missed.
    pub fn until_locked(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut locks = self.locks.subscribe();
        let locked_now = self.is_locked();
        async move {
            if !locked_now {
                // An error means the lock is gone with the agent: nothing left to wait for.
                let _ = locks.changed().await;
            }
        }
    }

    /// For a key creation (generate, import, adopt): fails with `locked` while locked, else
    /// a guard to hold until the key is in the keyring; `lock` waits for it.
    pub async fn creating_key(&self) -> Result<tokio::sync::RwLockReadGuard<'_, ()>, WireError> {
        let guard = self.creating.read().await;
        self.check()?;
        Ok(guard)
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
        // No key is being made from here on; those that were are in the keyring, to be sealed.
        let _no_creation = self.creating.write().await;
        // Refused from here on: no request signs with a key being sealed, and every wait for
        // a confirmation ends.
        self.locked.store(true, Ordering::Release);
        self.locks.send_modify(|n| *n = n.wrapping_add(1));
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

    fn empty_keyring() -> Arc<Keyring> {
        Arc::new(Keyring::new(Vec::new()))
    }

    #[tokio::test]
    async fn lock_waits_for_a_key_being_made_and_refuses_later_ones() {
        let lock = Arc::new(Lock::new());
        let keyring = empty_keyring();
        let creating = lock.creating_key().await.unwrap();
        let locking = tokio::spawn({
            let (lock, keyring) = (lock.clone(), keyring.clone());
            async move { lock.lock(Zeroizing::new("p".into()), &keyring).await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!lock.is_locked(), "lock waits until the key is made");
        drop(creating);
        locking.await.unwrap().unwrap();
        assert!(lock.is_locked());
        let refused = lock.creating_key().await.unwrap_err();
        assert_eq!(refused.code, ErrorCode::Locked);
    }

    #[tokio::test]
    async fn until_locked_ends_on_a_lock_after_the_call() {
        let lock = Lock::new();
        let keyring = empty_keyring();
        let waiting = lock.until_locked();
        lock.lock(Zeroizing::new("p".into()), &keyring)
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the wait ends with the lock");
        // Already locked: ends at once.
        tokio::time::timeout(Duration::from_secs(1), lock.until_locked())
            .await
            .expect("locked now");
    }
}
