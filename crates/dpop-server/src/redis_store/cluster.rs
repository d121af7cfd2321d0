//! A Redis Cluster through the redis crate's async cluster connection: the slot map is read
//! from the seed nodes, each check goes to the primary that owns its key's slot (one
//! multiplexed connection per primary), and the map is read again when a node fails or
//! answers `MOVED`.
//!
//! While a slot has no primary (its primary is down and no replica has been promoted yet,
//! or the cluster is down), the checks for it fail: the proof is refused, never accepted
//! unrecorded. After the failover the slot map is refreshed and checks succeed again.

use std::time::Duration;

use redis::Value;
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};

use super::{
    Record, RedisConnectError, RedisOptions, invalid, judge_policy, policy_command, policy_of,
    tcp_settings, timed_out, unavailable,
};
use crate::replay::ReplayError;

#[derive(Clone)]
pub(super) struct Cluster {
    connection: ClusterConnection,
}

impl Cluster {
    /// Reads the cluster's topology from `seeds` and checks every primary's eviction policy.
    pub(super) async fn connect(
        seeds: &[String],
        options: &RedisOptions,
    ) -> Result<Cluster, RedisConnectError> {
        if seeds.is_empty() {
            return Err(RedisConnectError::InvalidTarget {
                reason: "a Redis Cluster needs at least one seed node URL".to_owned(),
            });
        }
        let client = ClusterClientBuilder::new(seeds.iter().map(String::as_str))
            .connection_timeout(options.timeout)
            .response_timeout(options.timeout)
            .tcp_settings(tcp_settings())
            // One quick retry: enough to follow a MOVED or ASK redirection (immediate) or to
            // try once more after a node failure (after 10-50 ms), within the check's
            // timeout; no long backoff while requests wait.
            .retries(1)
            .min_retry_wait(10)
            .max_retry_wait(50)
            .build()
            .map_err(|e| invalid("the Redis Cluster seed URLs", e))?;
        let connect = client.get_async_connection();
        let mut connection = tokio::time::timeout(options.timeout, connect)
            .await
            .map_err(|_| RedisConnectError::Unavailable(timed_out(options.timeout)))?
            .map_err(|e| RedisConnectError::Unavailable(unavailable(e)))?;
        let cluster = Cluster {
            connection: connection.clone(),
        };
        for (node, policy) in primaries_policies(&mut connection, options.timeout).await? {
            judge_policy(&node, policy, options.accept_eviction)?;
        }
        Ok(cluster)
    }

    /// One check: one round trip to the primary of the key's slot (the `WAIT` of
    /// [`Record::SetWait`] goes with it: the pipeline is routed by its one key).
    pub(super) async fn record(&self, record: &Record) -> Result<bool, ReplayError> {
        record.run(&mut self.connection.clone()).await
    }
}

/// Each primary's `host:port` and its `maxmemory-policy` (or why it would not say).
async fn primaries_policies(
    connection: &mut ClusterConnection,
    timeout: Duration,
) -> Result<Vec<(String, Result<String, String>)>, RedisConnectError> {
    let all_primaries = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
    let command = policy_command();
    let answer = connection.route_command(&command, all_primaries);
    let answer = tokio::time::timeout(timeout, answer)
        .await
        .map_err(|_| RedisConnectError::Unavailable(timed_out(timeout)))?;
    let by_node = match answer {
        // Without a response policy the cluster connection answers node -> answer.
        Ok(Value::Map(by_node)) => by_node,
        Ok(other) => {
            return Err(RedisConnectError::Unavailable(ReplayError::Unavailable {
                reason: format!("the cluster answered CONFIG GET with {other:?}"),
            }));
        }
        // One primary refused (renamed or forbidden CONFIG): which one is not reported by the
        // cluster connection, so none is named.
        Err(e) => {
            let policy = policy_of(Err(e)).map_err(RedisConnectError::Unavailable)?;
            return Ok(vec![("a cluster primary".to_owned(), policy)]);
        }
    };
    let mut policies = Vec::with_capacity(by_node.len());
    for (node, answer) in by_node {
        let node = match node {
            Value::BulkString(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            other => format!("{other:?}"),
        };
        let policy = policy_of(Ok(answer)).map_err(RedisConnectError::Unavailable)?;
        policies.push((node, policy));
    }
    policies.sort();
    Ok(policies)
}
