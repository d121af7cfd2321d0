//! Replay state for a fleet in Redis: `SET <prefix><pair> 1 NX EX <ttl>`.

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
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            key_prefix: "dpop:jti:".to_owned(),
            timeout: Duration::from_millis(500),
        }
    }
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
    /// Connects to `url` (`redis://host:port/db`, `rediss://` for TLS is not built in).
    /// Fails when Redis cannot be reached within the timeout.
    pub async fn connect(
        url: &str,
        options: RedisOptions,
    ) -> Result<RedisReplayStore, ReplayError> {
        let client = redis::Client::open(url).map_err(unavailable)?;
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
            .map_err(|_| timed_out(options.timeout))?
            .map_err(unavailable)?;
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
