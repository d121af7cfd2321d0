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
