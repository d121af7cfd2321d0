//! A real `redis-server` per test on a free loopback port, with its own temporary directory,
//! no persistence, killed on drop; stoppable and restartable on the same port; optionally
//! with more settings, as one that evicts keys or one without `CONFIG`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::{KillOnDrop, PROCESS_TIMEOUT, new_temp_dir, require_tool, wait_timeout, wait_until};

/// A free TCP port on 127.0.0.1 (bound and released; another process could take it in
/// between, which on a test machine does not happen in practice).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding an ephemeral port")
        .port()
}

/// A running `redis-server --port P --bind 127.0.0.1 --save '' --appendonly no`.
/// Fails (panics) when `redis-server` is not installed.
pub struct RedisServer {
    port: u16,
    dir: TempDir,
    args: Vec<String>,
    child: Option<(Child, KillOnDrop)>,
}

impl RedisServer {
    /// Starts one on a free port (with Redis's default `maxmemory-policy noeviction`) and
    /// waits until it answers `PING`.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// One that evicts any key when full: `--maxmemory-policy allkeys-lru`.
    pub fn evicting() -> RedisServer {
        RedisServer::start_with(&["--maxmemory-policy", "allkeys-lru"])
    }

    /// One without the `CONFIG` command, as managed offerings rename or disable it:
    /// `--rename-command CONFIG ""`.
    pub fn without_config() -> RedisServer {
        RedisServer::start_with(&["--rename-command", "CONFIG", ""])
    }

    /// Starts one with these arguments after the usual ones (they are kept for
    /// [`restart`](Self::restart)).
    pub fn start_with(args: &[&str]) -> RedisServer {
        require_tool("redis-server", &["--version"], "redis-server");
        let mut server = RedisServer {
            port: free_port(),
            dir: new_temp_dir(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            child: None,
        };
        server.spawn();
        server
    }

    /// `redis://127.0.0.1:P`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Runs `redis-cli -p <port> args...` and returns its standard output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = crate::run_ok(
            Command::new("redis-cli")
                .args(["-p", &self.port.to_string()])
                .args(args),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// What the server logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Kills it (SIGKILL, like a crash) and waits until it is gone.
    pub fn stop(&mut self) {
        let (mut child, _guard) = self.child.take().expect("redis-server is running");
        let _ = child.kill();
        wait_timeout(&mut child, PROCESS_TIMEOUT).expect("redis-server exits after SIGKILL");
    }

    /// Starts it again on the same port (empty: nothing was persisted).
    pub fn restart(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
        self.spawn();
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.log_path())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning redis-server");
        let guard = KillOnDrop(child.id());
        self.child = Some((child, guard));
        let port = self.port;
        wait_until(
            format_args!("redis-server answers PING on port {port}"),
            PROCESS_TIMEOUT,
            || ping(port),
        );
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some((mut child, _guard)) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether a Redis on `port` answers `PING` with `+PONG`.
fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut reply).is_ok()
        && &reply == b"+PONG\r\n"
}

impl RedisServer {
    /// A replica of `primary` (`--replicaof`), once its replication link is up.
    pub fn replica_of(primary: &RedisServer) -> RedisServer {
        let port = primary.port.to_string();
        let replica = RedisServer::start_with(&[
            "--replicaof",
            "127.0.0.1",
            &port,
            "--repl-diskless-sync-delay",
            "0",
        ]);
        replica.wait_for_replication_link();
        primary.wait_for_replicas_online();
        replica
    }

    /// Waits until each of this primary's replicas acknowledges writes (`WAIT` counts it):
    /// after a full sync the primary streams to a replica only from its first
    /// acknowledgement, up to a second later, although it lists it `online` at once.
    pub fn wait_for_replicas_online(&self) {
        wait_until(
            format_args!(
                "the replicas of the primary on port {} acknowledge writes",
                self.port
            ),
            PROCESS_TIMEOUT,
            || self.replicas_acknowledge(),
        );
    }

    /// Whether this is a primary with replicas that all acknowledge a write (a `PUBLISH`,
    /// which is replicated but stores nothing) within 100 ms.
    fn replicas_acknowledge(&self) -> bool {
        let Some(info) = self.try_cli(&["INFO", "replication"]) else {
            return false;
        };
        let replicas = info.lines().filter(|l| l.starts_with("slave")).count();
        if !info.contains("role:master") || replicas == 0 {
            return false;
        }
        // One connection: WAIT counts the acknowledgements of this client's last write.
        let probe = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .and_then(|mut cli| {
                let mut stdin = cli.stdin.take().expect("piped");
                stdin
                    .write_all(format!("PUBLISH dpop-probe x\nWAIT {replicas} 100\n").as_bytes())?;
                drop(stdin);
                cli.wait_with_output()
            });
        probe.is_ok_and(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .nth(1)
                .map(str::trim)
                == Some(replicas.to_string().as_str())
        })
    }

    /// Waits until this replica's link to its primary is up (`master_link_status:up`).
    pub fn wait_for_replication_link(&self) {
        wait_until(
            format_args!("the replica on port {} syncs with its primary", self.port),
            PROCESS_TIMEOUT,
            || {
                self.try_cli(&["INFO", "replication"])
                    .is_some_and(|info| info.contains("master_link_status:up"))
            },
        );
    }

    /// Whether it is running (not stopped).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// `redis-cli -p <port> args...`, or `None` when it fails or Redis answers an error.
    pub fn try_cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success() && !text.starts_with("ERR") && !text.starts_with("Could not"))
            .then_some(text)
    }
}

/// The hash slot of a Redis Cluster key: CRC16 (XMODEM) of the key, or of its `{hash tag}`,
/// modulo 16384.
pub fn key_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let hashed = match bytes.iter().position(|&b| b == b'{') {
        Some(open) => match bytes[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &bytes[open + 1..open + 1 + len],
            _ => bytes,
        },
        None => bytes,
    };
    let mut crc: u16 = 0;
    for &byte in hashed {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

/// A local Redis Cluster: three primaries (and a replica of each, optionally) on free
/// loopback ports, `cluster-node-timeout 1000` so that a failover takes seconds, and
/// `cluster-require-full-coverage no` so that a failed primary stops only its own slots.
/// Fails (panics) when `redis-server` or `redis-cli` is missing.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts the nodes, joins them with `redis-cli --cluster create` and waits until every
    /// node sees every slot served (and every replica in sync).
    pub fn start(with_replicas: bool) -> RedisCluster {
        require_tool("redis-cli", &["--version"], "redis-server");
        let count = if with_replicas { 6 } else { 3 };
        let nodes: Vec<RedisServer> = (0..count)
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "1000",
                    "--cluster-require-full-coverage",
                    "no",
                    // A replica takes over however long it was disconnected.
                    "--cluster-replica-validity-factor",
                    "0",
                    // A (re)joining replica syncs at once, not after 5 s.
                    "--repl-diskless-sync-delay",
                    "0",
                ])
            })
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let mut create = Command::new("redis-cli");
        create
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", if with_replicas { "1" } else { "0" }])
            .arg("--cluster-yes")
            .stdin(Stdio::null());
        crate::run_ok(&mut create);
        let cluster = RedisCluster { nodes };
        cluster.wait_until_healthy();
        cluster
    }

    /// Every node's URL, as seeds.
    pub fn seeds(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The node at `index` (in start order).
    pub fn node(&self, index: usize) -> &RedisServer {
        &self.nodes[index]
    }

    /// The node at `index`, to stop or restart.
    pub fn node_mut(&mut self, index: usize) -> &mut RedisServer {
        &mut self.nodes[index]
    }

    /// The number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there are none (never: a cluster has three primaries at least).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The indices of the nodes that a running node sees as healthy primaries, with the slot
    /// ranges they serve.
    pub fn primaries(&self) -> Vec<(usize, Vec<(u16, u16)>)> {
        let nodes = self
            .nodes
            .iter()
            .filter(|n| n.is_running())
            .find_map(|n| n.try_cli(&["CLUSTER", "NODES"]))
            .expect("a running cluster node answers CLUSTER NODES");
        let mut primaries = Vec::new();
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let port: u16 = fields[1]
                .split(['@', ','])
                .next()
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.parse().ok())
                .expect("a node address host:port@cport");
            let Some(index) = self.nodes.iter().position(|n| n.port() == port) else {
                continue;
            };
            let ranges = fields[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .map(|s| match s.split_once('-') {
                    Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
                    None => (s.parse().unwrap(), s.parse().unwrap()),
                })
                .collect();
            primaries.push((index, ranges));
        }
        primaries
    }

    /// The index of the primary serving `slot`, if a running node sees one.
    pub fn primary_of_slot(&self, slot: u16) -> Option<usize> {
        self.primaries()
            .into_iter()
            .find(|(_, ranges)| ranges.iter().any(|&(a, b)| (a..=b).contains(&slot)))
            .map(|(index, _)| index)
    }

    /// Waits until every running node says `cluster_state:ok` with all 16384 slots served,
    /// and every running replica's link is up.
    pub fn wait_until_healthy(&self) {
        wait_until(
            "every cluster node sees all slots served",
            PROCESS_TIMEOUT,
            || {
                self.nodes.iter().filter(|n| n.is_running()).all(|n| {
                    n.try_cli(&["CLUSTER", "INFO"]).is_some_and(|info| {
                        info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384")
                    }) && n.try_cli(&["INFO", "replication"]).is_some_and(|info| {
                        // A primary's replicas acknowledge writes (for WAIT).
                        (info.contains("role:master")
                            && (!info.contains("slave0:") || n.replicas_acknowledge()))
                            || info.contains("master_link_status:up")
                    })
                })
            },
        );
    }
}

/// The master name [`RedisSentinel`] monitors.
pub const SENTINEL_MASTER: &str = "dpop-replay";

/// A primary, its replica and one Sentinel monitoring them as [`SENTINEL_MASTER`]
/// (`down-after-milliseconds 500`, `failover-timeout 2000`), each on a free loopback port.
/// After a failover the old primary, when it still runs, becomes the new primary's replica
/// only when the Sentinel next looks at it (every 10 s). Fails (panics) when `redis-server`
/// or `redis-cli` is missing.
pub struct RedisSentinel {
    /// The servers: first the primary, then the replica (their roles swap on failover).
    pub servers: Vec<RedisServer>,
    port: u16,
    dir: TempDir,
    _child: (Child, KillOnDrop),
}

impl RedisSentinel {
    /// Starts the primary, the replica and the Sentinel, and waits until the Sentinel knows
    /// the replica (so that it can fail over to it).
    pub fn start() -> RedisSentinel {
        require_tool("redis-cli", &["--version"], "redis-server");
        // After a failover the old primary syncs from the replica at once, not after 5 s.
        let primary = RedisServer::start_with(&["--repl-diskless-sync-delay", "0"]);
        let replica = RedisServer::replica_of(&primary);
        let port = free_port();
        let dir = new_temp_dir();
        let conf = dir.path().join("sentinel.conf");
        let text = format!(
            "port {port}\nbind 127.0.0.1\ndir {dir}\nlogfile {dir}/sentinel.log\n\
             sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {primary} 1\n\
             sentinel down-after-milliseconds {SENTINEL_MASTER} 500\n\
             sentinel failover-timeout {SENTINEL_MASTER} 2000\n",
            dir = dir.path().display(),
            primary = primary.port(),
        );
        std::fs::write(&conf, text).expect("writing sentinel.conf");
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning redis-server --sentinel");
        let guard = KillOnDrop(child.id());
        let sentinel = RedisSentinel {
            servers: vec![primary, replica],
            port,
            dir,
            _child: (child, guard),
        };
        wait_until(
            format_args!("redis-sentinel answers PING on port {port}"),
            PROCESS_TIMEOUT,
            || ping(port),
        );
        sentinel.wait_until_replica_known();
        sentinel
    }

    /// `redis://127.0.0.1:P` of the Sentinel.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// What the Sentinel logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sentinel.log")).unwrap_or_default()
    }

    /// `redis-cli -p <sentinel port> args...`.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = crate::run_ok(
            Command::new("redis-cli")
                .args(["-p", &self.port.to_string()])
                .args(args),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The index in [`servers`](Self::servers) of the one the Sentinel names primary.
    pub fn primary(&self) -> usize {
        let answer = self.cli(&["SENTINEL", "get-master-addr-by-name", SENTINEL_MASTER]);
        let port: u16 = answer
            .lines()
            .nth(1)
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("the Sentinel names a primary: {answer:?}"));
        self.servers
            .iter()
            .position(|s| s.port() == port)
            .expect("the Sentinel names one of the servers")
    }

    /// `SENTINEL FAILOVER`; returns once the Sentinel names the other server and the old
    /// primary replicates from it (about 11 s: see the type's documentation).
    pub fn failover(&self) {
        let before = self.primary();
        let answer = self.cli(&["SENTINEL", "FAILOVER", SENTINEL_MASTER]);
        assert!(answer.starts_with("OK"), "SENTINEL FAILOVER: {answer}");
        wait_until(
            "the Sentinel names a replica primary",
            PROCESS_TIMEOUT,
            || self.primary() != before,
        );
        self.servers[self.primary()].wait_for_replicas_online();
    }

    fn wait_until_replica_known(&self) {
        let ports: Vec<String> = self.servers[1..]
            .iter()
            .map(|s| format!("\n{}\n", s.port()))
            .collect();
        wait_until("the Sentinel knows the replica", PROCESS_TIMEOUT, || {
            let replicas = self.cli(&["SENTINEL", "REPLICAS", SENTINEL_MASTER]);
            ports.iter().all(|p| replicas.contains(p.as_str()))
                && !replicas.contains("disconnected")
                && !replicas.contains("s_down")
        });
    }
}
