//! A primary found through Sentinel: the Sentinels are asked which server is the primary of
//! the master name (and that server is asked whether it is one), its eviction policy is
//! checked, and checks go to it over one multiplexed connection.
//!
//! Any failed check forgets that connection (a lost connection, a `READONLY` answer from a
//! demoted primary, no answer in time), and the next check asks the Sentinels again. So
//! during a failover checks fail (closed); once the Sentinels name the new primary, checks
//! go there.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::IntoConnectionInfo as _;
use redis::aio::MultiplexedConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use tokio::time::Instant;

use super::{
    Record, RedisConnectError, RedisOptions, invalid, judge_policy, policy_command, policy_of,
    tcp_settings, timed_out, unavailable,
};
use crate::replay::ReplayError;

#[derive(Clone)]
pub(super) struct Sentinel {
    shared: Arc<Shared>,
}

struct Shared {
    /// Asks the Sentinels; one search at a time.
    sentinels: tokio::sync::Mutex<SentinelClient>,
    /// The primary in use, until a check fails on it.
    primary: Mutex<Option<Primary>>,
    timeout: Duration,
    accept_eviction: bool,
}

#[derive(Clone)]
struct Primary {
    connection: MultiplexedConnection,
    /// Tells this connection from a later one to the same address.
    generation: u64,
}

impl Sentinel {
    /// Builds the Sentinel client and finds the primary now (checking its eviction policy).
    pub(super) async fn connect(
        sentinels: &[String],
        master_name: &str,
        primary_auth: Option<&str>,
        options: &RedisOptions,
    ) -> Result<Sentinel, RedisConnectError> {
        if sentinels.is_empty() || master_name.is_empty() {
            return Err(RedisConnectError::InvalidTarget {
                reason: "Sentinel needs at least one Sentinel URL and the master name".to_owned(),
            });
        }
        let primary_info = match primary_auth {
            Some(url) => Some(
                url.into_connection_info()
                    .map_err(|e| invalid("the primary's credentials URL", e))?
                    .redis,
            ),
            None => None,
        };
        let client = SentinelClient::build(
            sentinels.iter().map(String::as_str).collect(),
            master_name.to_owned(),
            Some(SentinelNodeConnectionInfo {
                tls_mode: None,
                redis_connection_info: primary_info,
            }),
            SentinelServerType::Master,
        )
        .map_err(|e| invalid("the Sentinel URLs", e))?;
        let sentinel = Sentinel {
            shared: Arc::new(Shared {
                sentinels: tokio::sync::Mutex::new(client),
                primary: Mutex::new(None),
                timeout: options.timeout,
                accept_eviction: options.accept_eviction,
            }),
        };
        let deadline = Instant::now() + options.timeout;
        sentinel.find_primary(deadline).await?;
        Ok(sentinel)
    }

    /// One check: one round trip to the primary, after asking the Sentinels for it when the
    /// last check failed; all within the timeout.
    pub(super) async fn record(&self, record: &Record) -> Result<bool, ReplayError> {
        let deadline = Instant::now() + self.shared.timeout;
        let current = self.shared.primary.lock().expect("not poisoned").clone();
        let primary = match current {
            Some(primary) => primary,
            None => self.find_primary(deadline).await.map_err(|e| match e {
                RedisConnectError::Unavailable(e) => e,
                refused => ReplayError::Unavailable {
                    reason: refused.to_string(),
                },
            })?,
        };
        let answer = tokio::time::timeout_at(deadline, record.run(&mut primary.connection.clone()))
            .await
            .unwrap_or_else(|_| Err(timed_out(self.shared.timeout)));
        if answer.is_err() {
            self.forget(primary.generation);
        }
        answer
    }

    /// Forgets the primary's connection if it is still the one of `generation`.
    fn forget(&self, generation: u64) {
        let mut primary = self.shared.primary.lock().expect("not poisoned");
        if primary.as_ref().is_some_and(|p| p.generation == generation) {
            *primary = None;
        }
    }

    /// Asks the Sentinels for the primary, connects to it and checks its eviction policy;
    /// when another check found one meanwhile, uses that.
    async fn find_primary(&self, deadline: Instant) -> Result<Primary, RedisConnectError> {
        let timeout = self.shared.timeout;
        let late = || RedisConnectError::Unavailable(timed_out(timeout));
        let mut sentinels = tokio::time::timeout_at(deadline, self.shared.sentinels.lock())
            .await
            .map_err(|_| late())?;
        if let Some(found) = self.shared.primary.lock().expect("not poisoned").clone() {
            return Ok(found);
        }
        let search = async {
            let client = sentinels.async_get_client().await?;
            let node = client.get_connection_info().addr.to_string();
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(timeout)
                .set_response_timeout(timeout)
                .set_tcp_settings(tcp_settings());
            let mut connection = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            let policy = policy_command().query_async(&mut connection).await;
            Ok::<_, redis::RedisError>((node, connection, policy))
        };
        let (node, connection, policy) = tokio::time::timeout_at(deadline, search)
            .await
            .map_err(|_| late())?
            .map_err(|e| RedisConnectError::Unavailable(unavailable(e)))?;
        let policy = policy_of(policy).map_err(RedisConnectError::Unavailable)?;
        judge_policy(&node, policy, self.shared.accept_eviction)?;
        let mut current = self.shared.primary.lock().expect("not poisoned");
        let generation = GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let primary = Primary {
            connection,
            generation,
        };
        *current = Some(primary.clone());
        tracing::info!("DPoP replay store: Sentinel names {node} as the Redis primary");
        Ok(primary)
    }
}

static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
