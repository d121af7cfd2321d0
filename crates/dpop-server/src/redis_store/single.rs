//! One Redis, through the redis crate's `ConnectionManager`: one multiplexed connection
//! (concurrent checks are pipelined on it), re-established after Redis restarts.

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{
    Record, RedisConnectError, RedisOptions, invalid, judge_policy, policy_command, policy_of,
    tcp_settings, timed_out, unavailable,
};
use crate::replay::ReplayError;

#[derive(Clone)]
pub(super) struct Single {
    connection: ConnectionManager,
}

impl Single {
    /// Connects to `url` and checks its eviction policy.
    pub(super) async fn connect(
        url: &str,
        options: &RedisOptions,
    ) -> Result<Single, RedisConnectError> {
        let client = redis::Client::open(url).map_err(|e| invalid("the Redis URL", e))?;
        let node = client.get_connection_info().addr.to_string();
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(options.timeout)
            .set_response_timeout(options.timeout)
            .set_tcp_settings(tcp_settings())
            // No retry loop: its backoff (with jitter of up to a second) would make every
            // request wait for the timeout while Redis is down. A check that finds the
            // connection gone starts one new attempt, which the next check uses.
            .set_number_of_retries(0);
        let connect = ConnectionManager::new_with_config(client, config);
        let mut connection = tokio::time::timeout(options.timeout, connect)
            .await
            .map_err(|_| RedisConnectError::Unavailable(timed_out(options.timeout)))?
            .map_err(|e| RedisConnectError::Unavailable(unavailable(e)))?;
        let command = policy_command();
        let policy = command.query_async(&mut connection);
        let policy = tokio::time::timeout(options.timeout, policy)
            .await
            .map_err(|_| RedisConnectError::Unavailable(timed_out(options.timeout)))?;
        let policy = policy_of(policy).map_err(RedisConnectError::Unavailable)?;
        judge_policy(&node, policy, options.accept_eviction)?;
        Ok(Single { connection })
    }

    /// One check: one round trip on the shared connection.
    pub(super) async fn record(&self, record: &Record) -> Result<bool, ReplayError> {
        record.run(&mut self.connection.clone()).await
    }
}
