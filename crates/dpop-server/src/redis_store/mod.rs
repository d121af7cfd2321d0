//! Replay state for a fleet in Redis: `SET <prefix><pair> 1 NX EX <ttl>` in one round trip,
//! on Redis servers that do not evict keys (checked at connect), failing closed whenever the
//! record cannot be made.
//!
//! - [`single`]: one Redis through a reconnecting multiplexed connection;
//! - [`cluster`]: a Redis Cluster (seed nodes, the redis crate's async cluster connection),
//!   each check sent to the primary of its key's slot;
//! - [`sentinel`]: the primary that Sentinel names, found again after a failover.
//!
//! This file holds what the three share: the options, the connect errors, the command of a
//! check (with `WAIT` when replicas must acknowledge it) and the eviction check.

mod cluster;
mod sentinel;
mod single;

use std::collections::HashMap;
use std::time::Duration;

use redis::{Cmd, Pipeline, Value};

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
    /// Default `false`: connecting refuses such a Redis, because an evicted replay record
    /// lets a captured proof be accepted again within its `iat` window.
    pub accept_eviction: bool,
    /// How many replicas of the primary must acknowledge a new record before the check
    /// succeeds: `WAIT n <timeout/2>` pipelined with the `SET`, still one round trip (longer
    /// by the replication acknowledgement). Default `0`: Redis replicates asynchronously, so
    /// a failover can lose a record the primary acknowledged (the promoted replica had not
    /// received it, or the old primary took it after the promotion, before it was demoted)
    /// and its proof is then accepted once more. Set it to the number of replicas each
    /// primary has: every accepted record is then on whichever replica is promoted, and an
    /// old primary cut off from its replicas refuses new records. A record fewer replicas
    /// confirmed fails the check (closed; the primary keeps it, so the same proof sent again
    /// is a replay), so while a replica is down, or after a failover until the old primary
    /// has rejoined as a replica, every new proof is refused: availability traded for the
    /// guarantee. Fewer than all replicas narrows the window without closing it.
    pub replica_acks: u32,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            key_prefix: "dpop:jti:".to_owned(),
            timeout: Duration::from_millis(500),
            accept_eviction: false,
            replica_acks: 0,
        }
    }
}

/// Where the replay records live.
#[derive(Clone)]
#[non_exhaustive]
pub enum RedisTarget {
    /// One Redis: `redis://[user:password@]host:port[/db]`.
    Single {
        /// Its URL.
        url: String,
    },
    /// A Redis Cluster, found from one or more of its nodes (`redis://[user:password@]host:port`;
    /// the others are discovered). Every primary is checked at connect.
    Cluster {
        /// The seed nodes' URLs.
        seeds: Vec<String>,
    },
    /// The primary that Sentinel names for `master_name`, asked again after a failure.
    Sentinel {
        /// The Sentinels' URLs (`redis://[user:password@]host:port`), tried in order.
        sentinels: Vec<String>,
        /// The monitored master's name (`sentinel monitor <name> ...`).
        master_name: String,
        /// The primary's credentials and database as a URL whose host and port are ignored
        /// (`redis://user:password@primary/2`); `None`: no credentials, database 0.
        primary_auth: Option<String>,
    },
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // URLs may hold passwords: only the shape is shown.
        match self {
            RedisTarget::Single { .. } => f.write_str("Single"),
            RedisTarget::Cluster { seeds } => write!(f, "Cluster({} seeds)", seeds.len()),
            RedisTarget::Sentinel {
                sentinels,
                master_name,
                ..
            } => write!(f, "Sentinel({master_name}, {} sentinels)", sentinels.len()),
        }
    }
}

/// Why connecting a [`RedisReplayStore`] was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisConnectError {
    /// Redis cannot be reached, or did not answer within the timeout.
    #[error(transparent)]
    Unavailable(ReplayError),
    /// A Redis (for a cluster: one of its primaries) may evict replay records before they
    /// expire.
    #[error(
        "Redis at {node} evicts keys when its memory is full (maxmemory-policy is {policy}): replay records could be dropped early and captured proofs accepted again. Set maxmemory-policy noeviction (a full Redis then refuses new records and proofs are refused, failing closed), or accept the risk explicitly with the accept_eviction setting"
    )]
    Evicting {
        /// The server (`host:port`).
        node: String,
        /// The `maxmemory-policy` it reported.
        policy: String,
    },
    /// A Redis did not say what its `maxmemory-policy` is.
    #[error(
        "cannot check that Redis at {node} does not evict replay records: {reason}. Make sure its maxmemory-policy is noeviction, then set accept_eviction to run without the check"
    )]
    PolicyUnreadable {
        /// The server (`host:port`).
        node: String,
        /// Why (with what Redis answered).
        reason: String,
    },
    /// The target's URLs or names are not usable.
    #[error("invalid Redis target: {reason}")]
    InvalidTarget {
        /// What is wrong (never a password).
        reason: String,
    },
}

/// A [`ReplayStore`] in Redis, shared by every instance that uses the same Redis and prefix:
/// one Redis, a Redis Cluster or a Sentinel-managed primary ([`RedisTarget`]).
///
/// Each pair is stored once with `SET key 1 NX EX ttl`, `ttl` running until the end of the
/// proof's `iat` window: Redis answers `OK` for a new pair and nothing for a replay, in one
/// atomic round trip to the one primary that owns the key (with
/// [`RedisOptions::replica_acks`], `WAIT` follows in the same round trip). Keys hold a
/// SHA-256 of the pair, never the proof. Connections are re-established after failures;
/// while no primary answers for a key, its checks fail: at once when connections are
/// refused, after [`RedisOptions::timeout`] when nothing answers.
#[derive(Clone)]
pub struct RedisReplayStore {
    backend: Backend,
    options: RedisOptions,
}

#[derive(Clone)]
enum Backend {
    Single(single::Single),
    Cluster(cluster::Cluster),
    Sentinel(sentinel::Sentinel),
}

impl std::fmt::Debug for RedisReplayStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // URLs may hold passwords; only the kind and the options are shown.
        let kind = match self.backend {
            Backend::Single(_) => "single",
            Backend::Cluster(_) => "cluster",
            Backend::Sentinel(_) => "sentinel",
        };
        f.debug_struct("RedisReplayStore")
            .field("kind", &kind)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl RedisReplayStore {
    /// Connects to one Redis at `url` (`redis://host:port/db`, `rediss://` for TLS is not
    /// built in): [`connect_to`](Self::connect_to) with [`RedisTarget::Single`].
    pub async fn connect(
        url: &str,
        options: RedisOptions,
    ) -> Result<RedisReplayStore, RedisConnectError> {
        let target = RedisTarget::Single {
            url: url.to_owned(),
        };
        RedisReplayStore::connect_to(&target, options).await
    }

    /// Connects to `target` and reads `CONFIG GET maxmemory-policy` of each primary. Fails
    /// when Redis cannot be reached within the timeout, and, unless
    /// [`RedisOptions::accept_eviction`] is set, when a primary's policy is not `noeviction`
    /// or `CONFIG` is not allowed. The policy is read at connect (for Sentinel: again on
    /// each newly found primary): a policy changed later, or a cluster node added later, is
    /// not checked.
    pub async fn connect_to(
        target: &RedisTarget,
        options: RedisOptions,
    ) -> Result<RedisReplayStore, RedisConnectError> {
        let backend = match target {
            RedisTarget::Single { url } => {
                Backend::Single(single::Single::connect(url, &options).await?)
            }
            RedisTarget::Cluster { seeds } => {
                Backend::Cluster(cluster::Cluster::connect(seeds, &options).await?)
            }
            RedisTarget::Sentinel {
                sentinels,
                master_name,
                primary_auth,
            } => Backend::Sentinel(
                sentinel::Sentinel::connect(
                    sentinels,
                    master_name,
                    primary_auth.as_deref(),
                    &options,
                )
                .await?,
            ),
        };
        Ok(RedisReplayStore { backend, options })
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
            let record = Record::new(&self.options, jkt, jti, expires_at, now);
            let timeout = self.options.timeout;
            match &self.backend {
                Backend::Single(single) => within(timeout, single.record(&record)).await,
                Backend::Cluster(cluster) => within(timeout, cluster.record(&record)).await,
                // It keeps its own deadline, to forget a primary that did not answer.
                Backend::Sentinel(sentinel) => sentinel.record(&record).await,
            }
        })
    }
}

/// `check`, failing after `timeout`.
async fn within(
    timeout: Duration,
    check: impl Future<Output = Result<bool, ReplayError>>,
) -> Result<bool, ReplayError> {
    tokio::time::timeout(timeout, check)
        .await
        .map_err(|_| timed_out(timeout))?
}

/// One check's command: `SET key 1 NX EX ttl`, or the pipeline `SET ...; WAIT n ms` when
/// replicas must acknowledge it. Both are one round trip.
enum Record {
    Set(Cmd),
    SetWait { pipeline: Pipeline, replicas: u32 },
}

impl Record {
    fn new(options: &RedisOptions, jkt: &str, jti: &str, expires_at: i64, now: i64) -> Record {
        let key = format!("{}{}", options.key_prefix, pair_key(jkt, jti));
        // Redis refuses EX 0; a pair that expires now is kept for one second.
        let ttl = (expires_at - now).max(1);
        let mut set = redis::cmd("SET");
        set.arg(key).arg(1).arg("NX").arg("EX").arg(ttl);
        if options.replica_acks == 0 {
            return Record::Set(set);
        }
        // Redis's own wait ends well before the check's timeout (half of it), so a replica
        // that does not acknowledge is reported as such rather than as a timeout.
        let wait_ms = (options.timeout.as_millis() / 2).max(1) as u64;
        let mut pipeline = redis::pipe();
        pipeline
            .add_command(set)
            .cmd("WAIT")
            .arg(options.replica_acks)
            .arg(wait_ms);
        Record::SetWait {
            pipeline,
            replicas: options.replica_acks,
        }
    }

    /// Sends the check on `connection`: one round trip.
    async fn run(
        &self,
        connection: &mut impl redis::aio::ConnectionLike,
    ) -> Result<bool, ReplayError> {
        let answer = match self {
            Record::Set(set) => set.query_async::<Value>(connection).await,
            Record::SetWait { pipeline, .. } => pipeline.query_async::<Value>(connection).await,
        };
        self.outcome(answer.map_err(unavailable)?)
    }

    /// What the answer means: `Ok(true)` new, `Ok(false)` a replay, `Err` when the record
    /// was not made, or made on the primary but not acknowledged by enough replicas (then
    /// the proof is refused like on any failure: it may not survive a failover).
    fn outcome(&self, answer: Value) -> Result<bool, ReplayError> {
        let bad = |what: &str| ReplayError::Unavailable {
            reason: format!("Redis answered {what} to SET NX"),
        };
        let set_answer = |value: &Value| match value {
            Value::Okay => Ok(true),
            Value::SimpleString(s) if s == "OK" => Ok(true),
            Value::Nil => Ok(false),
            Value::ServerError(e) => Err(ReplayError::Unavailable {
                reason: format!("Redis: {}", e.details().unwrap_or(e.code())),
            }),
            other => Err(bad(&format!("{other:?}"))),
        };
        match self {
            Record::Set(_) => set_answer(&answer),
            Record::SetWait { replicas, .. } => {
                let Value::Array(values) = answer else {
                    return Err(bad("something other than two answers"));
                };
                let [set, wait] = values.as_slice() else {
                    return Err(bad("something other than two answers"));
                };
                // A replay is a replay whatever the replicas say: the record exists.
                if !set_answer(set)? {
                    return Ok(false);
                }
                match wait {
                    Value::Int(acks) if *acks >= i64::from(*replicas) => Ok(true),
                    Value::Int(acks) => Err(ReplayError::Unavailable {
                        reason: format!(
                            "the record was acknowledged by {acks} of the {replicas} replicas required (WAIT), so a failover could lose it"
                        ),
                    }),
                    other => Err(bad(&format!("{other:?} to WAIT"))),
                }
            }
        }
    }
}

/// Reads `maxmemory-policy` out of a `CONFIG GET` answer: `Ok(policy)`, or `Err(reason)`
/// when Redis refused (the command is renamed, disabled or not permitted) or left it out.
fn policy_of(
    answer: Result<Value, redis::RedisError>,
) -> Result<Result<String, String>, ReplayError> {
    use redis::FromRedisValue as _;
    let refused = |e: &dyn std::fmt::Display| {
        format!(
            "Redis does not allow CONFIG GET (the command is renamed or disabled, or this user may not run it); it answered: {e}"
        )
    };
    let value = match answer {
        Ok(Value::ServerError(e)) => return Ok(Err(refused(&e.details().unwrap_or(e.code())))),
        Ok(value) => value,
        // An error answer (not a lost connection): the command is unknown or not permitted.
        Err(e) if matches!(e.code(), Some("ERR" | "NOPERM")) => return Ok(Err(refused(&e))),
        Err(e) => return Err(unavailable(e)),
    };
    // RESP2 answers a flat list of name, value; RESP3 a map: both read as a map.
    let mut config = HashMap::<String, String>::from_redis_value(&value).map_err(unavailable)?;
    Ok(config
        .remove("maxmemory-policy")
        .map(|p| p.to_ascii_lowercase())
        .ok_or_else(|| "CONFIG GET maxmemory-policy answered without it".to_owned()))
}

/// `CONFIG GET maxmemory-policy`.
fn policy_command() -> Cmd {
    let mut get = redis::cmd("CONFIG");
    get.arg("GET").arg("maxmemory-policy");
    get
}

/// Refuses `node` unless its policy is `noeviction` or eviction is accepted (then warns).
fn judge_policy(
    node: &str,
    policy: Result<String, String>,
    accept_eviction: bool,
) -> Result<(), RedisConnectError> {
    let refusal = match policy {
        Ok(policy) if policy == "noeviction" => return Ok(()),
        Ok(policy) => RedisConnectError::Evicting {
            node: node.to_owned(),
            policy,
        },
        Err(reason) => RedisConnectError::PolicyUnreadable {
            node: node.to_owned(),
            reason,
        },
    };
    if !accept_eviction {
        return Err(refusal);
    }
    match refusal {
        RedisConnectError::Evicting { node, policy } => tracing::warn!(
            "Redis's maxmemory-policy is {policy} (at {node}): it may evict DPoP replay records early, and captured proofs would then be accepted again; running anyway because accept_eviction is set"
        ),
        RedisConnectError::PolicyUnreadable { node, reason } => tracing::warn!(
            "cannot check Redis's maxmemory-policy (at {node}): {reason}; running anyway because accept_eviction is set, without knowing whether Redis evicts DPoP replay records"
        ),
        other => return Err(other),
    }
    Ok(())
}

/// TCP settings of every connection: `TCP_NODELAY`, so that a check's request is never held
/// back by Nagle's algorithm behind an unacknowledged earlier one on the multiplexed
/// connection.
fn tcp_settings() -> redis::io::tcp::TcpSettings {
    redis::io::tcp::TcpSettings::default().set_nodelay(true)
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

fn invalid(what: &str, e: redis::RedisError) -> RedisConnectError {
    RedisConnectError::InvalidTarget {
        reason: format!("{what}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(replica_acks: u32) -> Record {
        let options = RedisOptions {
            replica_acks,
            ..RedisOptions::default()
        };
        Record::new(&options, "jkt", "jti", 160, 100)
    }

    #[test]
    fn a_set_answers_new_or_replay() {
        let set = record(0);
        assert!(matches!(&set, Record::Set(_)));
        assert!(set.outcome(Value::Okay).unwrap());
        assert!(!set.outcome(Value::Nil).unwrap());
        assert!(set.outcome(Value::Int(1)).is_err());
    }

    #[test]
    fn with_replica_acks_a_record_too_few_replicas_confirmed_fails() {
        let wait = record(2);
        let Record::SetWait { pipeline, replicas } = &wait else {
            panic!("a pipeline with WAIT");
        };
        assert_eq!(*replicas, 2);
        // SET key 1 NX EX 60, then WAIT 2 250 (half the 500 ms timeout).
        let packed = String::from_utf8_lossy(&pipeline.get_packed_pipeline()).into_owned();
        assert!(
            packed.contains("NX\r\n$2\r\nEX\r\n$2\r\n60\r\n"),
            "{packed:?}"
        );
        assert!(
            packed.ends_with("$4\r\nWAIT\r\n$1\r\n2\r\n$3\r\n250\r\n"),
            "{packed:?}"
        );

        let answer = |set, acks| Value::Array(vec![set, Value::Int(acks)]);
        assert!(wait.outcome(answer(Value::Okay, 2)).unwrap());
        let refused = wait.outcome(answer(Value::Okay, 1)).unwrap_err();
        assert!(refused.to_string().contains("1 of the 2"), "{refused}");
        // A replay is a replay whatever the replicas say.
        assert!(!wait.outcome(answer(Value::Nil, 0)).unwrap());
    }
}
