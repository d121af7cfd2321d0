//! Replay state behind an async trait, so that a fleet can keep it in Redis; the in-memory
//! store of dpop-jose for a single instance.

use std::future::Future;
use std::num::NonZeroUsize;
use std::pin::Pin;

/// What [`ReplayStore::insert_if_new`] returns.
pub type ReplayFuture<'a> = Pin<Box<dyn Future<Output = Result<bool, ReplayError>> + Send + 'a>>;

/// Remembers `(jkt, jti)` pairs to refuse replayed proofs, possibly over the network.
///
/// The same promise as [`dpop_jose::ReplayStore`]: a pair is never forgotten before
/// `expires_at`, and an error means the pair was not recorded.
pub trait ReplayStore: Send + Sync {
    /// Records the pair until `expires_at` (seconds since the epoch): `Ok(true)` when it is
    /// new, `Ok(false)` when it was recorded before and has not expired.
    fn insert_if_new<'a>(
        &'a self,
        jkt: &'a str,
        jti: &'a str,
        expires_at: i64,
        now: i64,
    ) -> ReplayFuture<'a>;
}

/// Why a pair could not be recorded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// The store holds as many unexpired pairs as it may (the in-memory store never evicts
    /// one early). Answered with `use_dpop_nonce` when the server issues nonces.
    #[error("replay store is full of unexpired proofs")]
    Full,
    /// The store cannot be reached or did not answer in time.
    #[error("replay store unavailable: {reason}")]
    Unavailable {
        /// What went wrong (never a password).
        reason: String,
    },
}

/// The in-memory store of one instance: [`dpop_jose::LruReplayStore`], bounded, never
/// forgetting an unexpired pair.
#[derive(Debug)]
pub struct MemoryReplayStore(dpop_jose::LruReplayStore);

impl MemoryReplayStore {
    /// A store for at most `capacity` unexpired pairs.
    pub fn new(capacity: NonZeroUsize) -> MemoryReplayStore {
        MemoryReplayStore(dpop_jose::LruReplayStore::new(capacity))
    }
}

impl ReplayStore for MemoryReplayStore {
    fn insert_if_new<'a>(
        &'a self,
        jkt: &'a str,
        jti: &'a str,
        expires_at: i64,
        now: i64,
    ) -> ReplayFuture<'a> {
        use dpop_jose::ReplayStore as _;
        let result = match self.0.insert_if_new(jkt, jti, expires_at, now) {
            Ok(new) => Ok(new),
            Err(dpop_jose::Error::ReplayStoreFull) => Err(ReplayError::Full),
            Err(other) => Err(ReplayError::Unavailable {
                reason: other.to_string(),
            }),
        };
        Box::pin(std::future::ready(result))
    }
}

/// SHA-256 of `jkt`, a zero byte and `jti`, base64url: what a shared store keeps, fixed-size
/// whatever the proof carried ([`dpop_jose::pair_hash`]; dpop-jose's in-memory store keeps
/// its first 128 bits).
pub fn pair_key(jkt: &str, jti: &str) -> String {
    dpop_jose::b64url_encode(dpop_jose::pair_hash(jkt, jti))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_store_refuses_a_pair_twice_and_reports_full() {
        let store = MemoryReplayStore::new(NonZeroUsize::new(1).unwrap());
        assert!(store.insert_if_new("k", "a", 100, 10).await.unwrap());
        assert!(!store.insert_if_new("k", "a", 100, 11).await.unwrap());
        assert!(matches!(
            store.insert_if_new("k", "b", 100, 12).await,
            Err(ReplayError::Full)
        ));
    }

    #[test]
    fn pair_keys_separate_jkt_from_jti() {
        assert_ne!(pair_key("ab", "c"), pair_key("a", "bc"));
        assert_eq!(pair_key("a", "b").len(), 43);
    }
}
