//! Replay state for a fleet in Redis: `SET <prefix><pair> 1 NX EX <ttl>`, on a Redis that
//! does not evict keys (checked at connect).

use std::collections::HashMap;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::replay::{ReplayError, ReplayFuture, ReplayStore, pair_key};

/// How [`RedisReplayStore`] talks to Redis.
#[derive(Clone, Debug)]
pub struct RedisOptions {
    /// Prepended to every key, so several services can share one Redis.
    pub key_prefix: String,
    /// The longest one check may take, connecting included; after it the check fails (and
    /// the proof is refused unless the verifier fails open). Keep it short: while Redis is
    /// down every request waits this long.
    pub timeout: Duration,
    /// Run on a Redis whose `maxmemory-policy` is not `noeviction`, or whose policy cannot be
    /// read (`CONFIG` renamed, disabled or not permitted), with one warning at connect.
    /// Default `false`: [`RedisReplayStore::connect`] refuses such a Redis, because an
    /// evicted replay record lets a captured proof be accepted again within its `iat` window.
    pub accept_eviction: bool,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            key_prefix: "dpop:jti:".to_owned(),
            timeout: Duration::from_millis(500),
            accept_eviction: false,
        }
    }
}

/// Why [`RedisReplayStore::connect`] refused to start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisConnectError {
    /// Redis cannot be reached, or did not answer within the timeout.
    #[error(transparent)]
    Unavailable(ReplayError),
    /// Redis may evict replay records before they expire.
    #[error(
        "Redis evicts keys when its memory is full (maxmemory-policy is {policy}): replay records could be dropped early and captured proofs accepted again. Set maxmemory-policy noeviction (a full Redis then refuses new records and proofs are refused, failing closed), or accept the risk explicitly with the accept_eviction setting"
    )]
    Evicting {
        /// The `maxmemory-policy` Redis reported.
        policy: String,
    },
    /// Redis did not say what its `maxmemory-policy` is.
    #[error(
        "cannot check that Redis does not evict replay records: {reason}. Make sure its maxmemory-policy is noeviction, then set accept_eviction to run without the check"
    )]
    PolicyUnreadable {
        /// Why (with what Redis answered).
        reason: String,
    },
}

/// A [`ReplayStore`] in Redis, shared by every instance that uses the same Redis and prefix.
///
/// Each pair is stored once with `SET key 1 NX EX ttl`, `ttl` running until the end of the
/// proof's `iat` window: Redis answers `OK` for a new pair and nothing for a replay, in one
/// atomic round trip. Keys hold a SHA-256 of the pair, never the proof. The connection is
/// re-established after Redis restarts; while it is down every check fails, at once when
/// Redis refuses connections and after [`RedisOptions::timeout`] when it does not answer.
#[derive(Clone)]
pub struct RedisReplayStore {
    connection: ConnectionManager,
    options: RedisOptions,
}

impl std::fmt::Debug for RedisReplayStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password; only the options are shown.
        f.debug_struct("RedisReplayStore")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl RedisReplayStore {
    /// Connects to `url` (`redis://host:port/db`, `rediss://` for TLS is not built in) and
    /// reads `CONFIG GET maxmemory-policy`. Fails when Redis cannot be reached within the
    /// timeout, and, unless [`RedisOptions::accept_eviction`] is set, when the policy is not
    /// `noeviction` or `CONFIG` is not allowed. The policy is read once, here: a Redis whose
    /// policy is changed later, or a different server behind the same address after a
    /// reconnect, is not checked again.
    pub async fn connect(
        url: &str,
        options: RedisOptions,
    ) -> Result<RedisReplayStore, RedisConnectError> {
        let unreachable = |e| RedisConnectError::Unavailable(unavailable(e));
        let client = redis::Client::open(url).map_err(unreachable)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(options.timeout)
            .set_response_timeout(options.timeout)
            // No retry loop: its backoff (with jitter of up to a second) would make every
            // request wait for the timeout while Redis is down. A check that finds the
            // connection gone starts one new attempt, which the next check uses.
            .set_number_of_retries(0);
        let connect = ConnectionManager::new_with_config(client, config);
        let connection = tokio::time::timeout(options.timeout, connect)
            .await
            .map_err(|_| RedisConnectError::Unavailable(timed_out(options.timeout)))?
            .map_err(unreachable)?;
        let refusal = match eviction_policy(&connection, options.timeout).await? {
            Ok(policy) if policy == "noeviction" => None,
            Ok(policy) => Some(RedisConnectError::Evicting { policy }),
            Err(reason) => Some(RedisConnectError::PolicyUnreadable { reason }),
        };
        match refusal {
            None => {}
            Some(refusal) if !options.accept_eviction => return Err(refusal),
            Some(RedisConnectError::Evicting { policy }) => tracing::warn!(
                "Redis's maxmemory-policy is {policy}: it may evict DPoP replay records early, and captured proofs would then be accepted again; running anyway because accept_eviction is set"
            ),
            Some(RedisConnectError::PolicyUnreadable { reason }) => tracing::warn!(
                "cannot check Redis's maxmemory-policy: {reason}; running anyway because accept_eviction is set, without knowing whether Redis evicts DPoP replay records"
            ),
            Some(unavailable @ RedisConnectError::Unavailable(_)) => return Err(unavailable),
        }
        Ok(RedisReplayStore {
            connection,
            options,
        })
    }
}

impl ReplayStore for RedisReplayStore {
    fn insert_if_new<'a>(
        &'a self,
        jkt: &'a str,
        jti: &'a str,
        expires_at: i64,
        now: i64,
    ) -> ReplayFuture<'a> {
        Box::pin(async move {
            let key = format!("{}{}", self.options.key_prefix, pair_key(jkt, jti));
            // Redis refuses EX 0; a pair that expires now is kept for one second.
            let ttl = (expires_at - now).max(1);
            let mut connection = self.connection.clone();
            let mut set = redis::cmd("SET");
            set.arg(key).arg(1).arg("NX").arg("EX").arg(ttl);
            let set = set.query_async::<Option<String>>(&mut connection);
            let reply = tokio::time::timeout(self.options.timeout, set)
                .await
                .map_err(|_| timed_out(self.options.timeout))?
                .map_err(unavailable)?;
            Ok(reply.is_some())
        })
    }
}

/// Redis's `maxmemory-policy`, or (inner `Err`) why Redis would not say: `CONFIG` renamed or
/// disabled (`unknown command`), or not permitted by an ACL (`NOPERM`), or an answer without it.
async fn eviction_policy(
    connection: &ConnectionManager,
    timeout: Duration,
) -> Result<Result<String, String>, RedisConnectError> {
    let mut connection = connection.clone();
    let mut get = redis::cmd("CONFIG");
    get.arg("GET").arg("maxmemory-policy");
    // RESP2 answers a flat list of name, value; RESP3 a map: both read as a map.
    let get = get.query_async::<HashMap<String, String>>(&mut connection);
    let reply = tokio::time::timeout(timeout, get)
        .await
        .map_err(|_| RedisConnectError::Unavailable(timed_out(timeout)))?;
    match reply {
        Ok(mut config) => Ok(config
            .remove("maxmemory-policy")
            .map(|p| p.to_ascii_lowercase())
            .ok_or_else(|| "CONFIG GET maxmemory-policy answered without it".to_owned())),
        // An error answer (not a lost connection): the command is unknown or not permitted.
        Err(e) if matches!(e.code(), Some("ERR" | "NOPERM")) => Ok(Err(format!(
            "Redis does not allow CONFIG GET (the command is renamed or disabled, or this user may not run it); it answered: {e}"
        ))),
        Err(e) => Err(RedisConnectError::Unavailable(unavailable(e))),
    }
}

fn unavailable(e: redis::RedisError) -> ReplayError {
    ReplayError::Unavailable {
        reason: format!("Redis: {e}"),
    }
}

fn timed_out(after: Duration) -> ReplayError {
    ReplayError::Unavailable {
        reason: format!("Redis did not answer within {after:?}"),
    }
}
