//! End-to-end test harness for dpop-agent: runs the real `dpop-agent` and `dpop` binaries of
//! this workspace against a real Unix socket, each agent in its own temporary directory, so
//! tests (and benchmarks) run in parallel without sharing state.
//!
//! - [`binaries`] builds `dpop-agent` and `dpop` once per test process (`cargo build -p
//!   dpop-agent -p dpop-cli`, in the profile the calling test or bench was built in) and
//!   returns their paths. Cargo only gives `CARGO_BIN_EXE_*` for binaries of the package under
//!   test, hence the explicit build. Set `DPOP_TEST_BIN_DIR` to use prebuilt binaries instead.
//! - [`TestAgent`] starts `dpop-agent -D` with a socket and data directory in a fresh
//!   [`tempfile::TempDir`], waits until the socket accepts, captures the agent's standard error
//!   in a file ([`TestAgent::stderr_log`]), and stops it with SIGTERM when dropped.
//! - [`TestAgent::client`], [`TestAgent::async_client`], [`TestAgent::dpop`] and
//!   [`TestAgent::raw`] talk to it through the client crate, the real CLI, or raw protocol
//!   lines.
//! - [`SoftHsmToken`] makes a throw-away SoftHSM2 token with its own `SOFTHSM2_CONF`, and
//!   [`AgentOptions::pkcs11`] starts an agent on it (see "PKCS#11 tokens" below).
//!
//! Requirements of the suite: `openssl`, `python3` with `jwcrypto` (`pip install jwcrypto`) for
//! the interop tests, root for the tests that act as another user (`useradd`, `setpriv`), and
//! SoftHSM2 and OpenSC's `pkcs11-tool` for the PKCS#11 tests (`apt-get install softhsm2
//! opensc`); tests fail with a message saying what is missing rather than skip.
//!
//! ```no_run
//! use dpop_tests::{AgentOptions, TestAgent};
//!
//! let agent = TestAgent::start(AgentOptions::new().passphrase_env("correct horse"));
//! let key = agent.client().generate_key("k", None, None).unwrap();
//! let proof = agent.dpop_ok(&["proof", "--key", "k", "-X", "GET", "--url", "https://rs.example/"]);
//! let verified = dpop_tests::verify_proof(proof.trim(), "GET", "https://rs.example/", None);
//! assert_eq!(verified.jkt, key.jkt);
//! ```

pub mod bench;

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tempfile::TempDir;

pub use dpop_client;
pub use dpop_jose;
pub use dpop_protocol;

/// How long an agent may take to start listening, or to exit after a signal.
pub const PROCESS_TIMEOUT: Duration = Duration::from_secs(20);

/// Read timeout on raw connections, so that a missing reply fails the test instead of hanging.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Paths of the workspace binaries under test.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// The `dpop-agent` daemon.
    pub agent: PathBuf,
    /// The `dpop` command line.
    pub dpop: PathBuf,
}

/// The workspace root (the directory that holds the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent directory")
        .to_owned()
}

/// The binaries under test, built on first use.
///
/// The first call runs `$CARGO build -p dpop-agent -p dpop-cli` in the workspace root, into the
/// target directory and profile of the running test or bench executable
/// (`target/<profile>/deps/<exe>`: `debug` builds the dev profile, `release` adds `--release`,
/// anything else is passed as `--profile`). Panics with cargo's output when the build fails.
/// With `DPOP_TEST_BIN_DIR` set (absolute, or relative to the workspace root), nothing is built
/// and the binaries are taken from there.
pub fn binaries() -> &'static Binaries {
    static BINARIES: OnceLock<Binaries> = OnceLock::new();
    BINARIES.get_or_init(build_binaries)
}

fn build_binaries() -> Binaries {
    let in_dir = |dir: &Path| {
        let bins = Binaries {
            agent: dir.join("dpop-agent"),
            dpop: dir.join("dpop"),
        };
        for path in [&bins.agent, &bins.dpop] {
            assert!(
                path.is_file(),
                "binary under test {} does not exist",
                path.display()
            );
        }
        bins
    };
    if let Some(dir) = std::env::var_os("DPOP_TEST_BIN_DIR").filter(|d| !d.is_empty()) {
        // Relative to the workspace root, not to the test's working directory (tests/).
        return in_dir(&workspace_root().join(dir));
    }
    let exe = std::env::current_exe().expect("path of the running test executable");
    // Test and bench executables live in target/<profile>/deps/.
    let mut profile_dir = exe.parent().expect("executable has a directory").to_owned();
    if profile_dir.file_name() == Some(OsStr::new("deps")) {
        profile_dir.pop();
    }
    let profile = profile_dir
        .file_name()
        .and_then(OsStr::to_str)
        .unwrap_or_else(|| panic!("cannot tell the profile from {}", exe.display()))
        .to_owned();
    let target_dir = profile_dir
        .parent()
        .unwrap_or_else(|| panic!("cannot tell the target directory from {}", exe.display()));

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let mut command = Command::new(&cargo);
    command
        .current_dir(workspace_root())
        .args(["build", "--quiet", "-p", "dpop-agent", "-p", "dpop-cli"])
        .arg("--target-dir")
        .arg(target_dir);
    match profile.as_str() {
        "debug" => {}
        "release" => {
            command.arg("--release");
        }
        other => {
            command.args(["--profile", other]);
        }
    }
    let output = command.output().unwrap_or_else(|e| {
        panic!(
            "cannot run {} to build the binaries under test: {e}",
            Path::new(&cargo).display()
        )
    });
    assert!(
        output.status.success(),
        "building dpop-agent and dpop failed ({:?}, {}):\n{}{}",
        command,
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    in_dir(&profile_dir)
}

/// How the agent gets its software-key passphrase.
#[derive(Clone, Debug)]
pub enum Passphrase {
    /// In `DPOP_AGENT_PASSPHRASE`.
    Env(String),
    /// In a file passed with `--passphrase-file` (written 0600 into the agent's directory).
    File(String),
}

/// How to start a [`TestAgent`]. Without a passphrase, software keys are memory-only.
#[derive(Clone, Debug, Default)]
pub struct AgentOptions {
    /// The software-key passphrase, if any.
    pub passphrase: Option<Passphrase>,
    /// Extra command-line arguments, after the harness's own.
    pub args: Vec<OsString>,
    /// Extra environment variables (for example `RUST_LOG`).
    pub env: Vec<(OsString, OsString)>,
    /// Leave out `-a` and set `XDG_RUNTIME_DIR` to `<dir>/run` (created 0700 when missing), so
    /// that the agent picks its default socket `<dir>/run/dpop-agent/agent.sock`.
    pub default_socket: bool,
}

impl AgentOptions {
    /// No passphrase, no extra arguments, `-a <dir>/agent.sock`.
    pub fn new() -> AgentOptions {
        AgentOptions::default()
    }

    /// Passphrase in `DPOP_AGENT_PASSPHRASE`.
    pub fn passphrase_env(mut self, passphrase: &str) -> AgentOptions {
        self.passphrase = Some(Passphrase::Env(passphrase.to_owned()));
        self
    }

    /// Passphrase in a file given with `--passphrase-file`.
    pub fn passphrase_file(mut self, passphrase: &str) -> AgentOptions {
        self.passphrase = Some(Passphrase::File(passphrase.to_owned()));
        self
    }

    /// One more command-line argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> AgentOptions {
        self.args.push(arg.into());
        self
    }

    /// One more environment variable.
    pub fn env(mut self, name: impl Into<OsString>, value: impl Into<OsString>) -> AgentOptions {
        self.env.push((name.into(), value.into()));
        self
    }

    /// Use the default socket location under `XDG_RUNTIME_DIR` (see [`Self::default_socket`]).
    pub fn default_socket_location(mut self) -> AgentOptions {
        self.default_socket = true;
        self
    }
}

/// An agent that could not start: it exited, or did not listen within [`PROCESS_TIMEOUT`].
#[derive(Debug)]
pub struct StartFailure {
    /// The agent's directory, still there for inspection.
    pub dir: TempDir,
    /// The exit status, when it exited (`None`: it was killed after the timeout).
    pub status: Option<ExitStatus>,
    /// Everything the agent wrote to standard error (and output).
    pub stderr: String,
}

/// A running `dpop-agent -D` in its own temporary directory:
///
/// - `<dir>/agent.sock`: the socket (or `<dir>/run/dpop-agent/agent.sock` with
///   [`AgentOptions::default_socket`]),
/// - `<dir>/data`: `--data-dir`,
/// - `<dir>/agent.log`: standard error and output, appended across restarts,
/// - `<dir>/config`: `XDG_CONFIG_HOME`, empty, so no user configuration leaks in.
///
/// Dropping it sends SIGTERM and waits (SIGKILL after [`PROCESS_TIMEOUT`]).
#[derive(Debug)]
pub struct TestAgent {
    dir: TempDir,
    options: AgentOptions,
    child: Option<Child>,
}

impl TestAgent {
    /// Starts an agent in a new temporary directory; panics (with the agent's log) when it
    /// does not come up.
    pub fn start(options: AgentOptions) -> TestAgent {
        match TestAgent::try_start(options) {
            Ok(agent) => agent,
            Err(failure) => panic!(
                "dpop-agent did not start ({}); its log:\n{}",
                describe_status(failure.status),
                failure.stderr
            ),
        }
    }

    /// Starts an agent in a new temporary directory.
    pub fn try_start(options: AgentOptions) -> Result<TestAgent, StartFailure> {
        TestAgent::try_start_in(new_temp_dir(), options)
    }

    /// Starts an agent in `dir`, which the caller may have prepared (a socket directory with
    /// the wrong mode, key files).
    pub fn try_start_in(dir: TempDir, options: AgentOptions) -> Result<TestAgent, StartFailure> {
        let mut agent = TestAgent {
            dir,
            options,
            child: None,
        };
        match agent.spawn_and_wait() {
            Ok(()) => Ok(agent),
            Err((status, stderr)) => Err(StartFailure {
                dir: std::mem::replace(&mut agent.dir, new_temp_dir()),
                status,
                stderr,
            }),
        }
    }

    /// The temporary directory that holds socket, data and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The socket path.
    pub fn socket(&self) -> PathBuf {
        socket_in(self.dir.path(), &self.options)
    }

    /// The `--data-dir`.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The options the agent was (last) started with.
    pub fn options(&self) -> &AgentOptions {
        &self.options
    }

    /// The agent's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the agent wrote to standard error (and output) so far, across restarts.
    pub fn stderr_log(&self) -> String {
        fs::read_to_string(log_path(self.dir.path())).unwrap_or_default()
    }

    /// Sends `signal` (e.g. `libc::SIGINT`) and waits for the agent to exit. Panics (with
    /// the log) when it does not exit within [`PROCESS_TIMEOUT`].
    pub fn stop_with(&mut self, signal: i32) -> ExitStatus {
        let mut child = self.child.take().expect("the agent is running");
        send_signal(child.id(), signal);
        match wait_timeout(&mut child, PROCESS_TIMEOUT) {
            Some(status) => status,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "dpop-agent did not exit within {PROCESS_TIMEOUT:?} of signal {signal}; log:\n{}",
                    self.stderr_log()
                )
            }
        }
    }

    /// SIGTERM, wait, and check the exit was clean (status 0, socket file removed).
    pub fn stop(&mut self) -> ExitStatus {
        let status = self.stop_with(libc::SIGTERM);
        assert!(
            status.success(),
            "dpop-agent exited with {status} on SIGTERM; log:\n{}",
            self.stderr_log()
        );
        assert!(
            !self.socket().exists(),
            "dpop-agent left its socket {} behind after SIGTERM",
            self.socket().display()
        );
        status
    }

    /// [`Self::stop`], then start again with the same directories and options.
    pub fn restart(&mut self) {
        let options = self.options.clone();
        self.restart_with(options);
    }

    /// [`Self::stop`] (when running), then start again in the same directory with other
    /// options (another passphrase, say); panics when the agent does not come up.
    pub fn restart_with(&mut self, options: AgentOptions) {
        if let Err((status, stderr)) = self.try_restart_with(options) {
            panic!(
                "dpop-agent did not restart ({}); its log:\n{stderr}",
                describe_status(status)
            );
        }
    }

    /// Like [`Self::restart_with`], but returns the exit status and log when the agent does
    /// not come up. The agent is then stopped; a later `try_restart_with` may start it again.
    pub fn try_restart_with(
        &mut self,
        options: AgentOptions,
    ) -> Result<(), (Option<ExitStatus>, String)> {
        if self.child.is_some() {
            self.stop();
        }
        self.options = options;
        self.spawn_and_wait()
    }

    /// A blocking client connected to the agent.
    pub fn client(&self) -> dpop_client::blocking::Client {
        dpop_client::blocking::Client::connect(self.socket())
            .unwrap_or_else(|e| panic!("connecting to the agent: {e}"))
    }

    /// An async client connected to the agent.
    pub async fn async_client(&self) -> dpop_client::Client {
        dpop_client::Client::connect(self.socket())
            .await
            .unwrap_or_else(|e| panic!("connecting to the agent: {e}"))
    }

    /// A `dpop` command with `DPOP_AUTH_SOCK` pointing at this agent, for callers that need
    /// standard input or another user.
    pub fn dpop_command(&self) -> Command {
        let mut command = Command::new(&binaries().dpop);
        command
            .env("DPOP_AUTH_SOCK", self.socket())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        command
    }

    /// Runs the real `dpop` with `args` against this agent and returns its output.
    pub fn dpop<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        self.dpop_command()
            .args(args)
            .output()
            .expect("running dpop")
    }

    /// Runs `dpop` and returns its standard output; panics (with both streams) unless it
    /// succeeds.
    pub fn dpop_ok<S: AsRef<OsStr>>(&self, args: &[S]) -> String {
        let output = self.dpop(args);
        assert!(
            output.status.success(),
            "dpop {:?} failed with {}:\nstdout: {}\nstderr: {}",
            args.iter().map(|a| a.as_ref()).collect::<Vec<_>>(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("dpop prints UTF-8")
    }

    /// A raw connection, for sending protocol lines by hand.
    pub fn raw(&self) -> RawConnection {
        RawConnection::connect(&self.socket())
    }

    /// Sends one raw request line (a newline is added when missing) on a new connection and
    /// returns the parsed reply.
    pub fn raw_request(&self, line: &[u8]) -> Value {
        let mut conn = self.raw();
        conn.send_line(line);
        conn.read_reply()
            .expect("the agent answers before closing the connection")
    }

    fn spawn_and_wait(&mut self) -> Result<(), (Option<ExitStatus>, String)> {
        let dir = self.dir.path().to_owned();
        let socket = socket_in(&dir, &self.options);
        let mut command = Command::new(&binaries().agent);
        command.arg("-D");
        if !self.options.default_socket {
            command.arg("-a").arg(&socket);
        }
        command
            .arg("--data-dir")
            .arg(dir.join("data"))
            .env_remove("DPOP_AGENT_PASSPHRASE")
            .env_remove("DPOP_AUTH_SOCK")
            .env_remove("DPOP_AGENT_PID")
            .env_remove("RUST_LOG")
            .env_remove("XDG_RUNTIME_DIR")
            .env("XDG_CONFIG_HOME", dir.join("config"));
        if self.options.default_socket {
            // The runtime directory itself exists (as logind makes it); the agent creates
            // `dpop-agent/` inside, unless the test prepared one.
            let run = dir.join("run");
            if !run.exists() {
                fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&run)
                    .expect("creating the runtime directory");
            }
            command.env("XDG_RUNTIME_DIR", run);
        }
        match &self.options.passphrase {
            None => {}
            Some(Passphrase::Env(passphrase)) => {
                command.env("DPOP_AGENT_PASSPHRASE", passphrase);
            }
            Some(Passphrase::File(passphrase)) => {
                let path = dir.join("passphrase");
                write_private_file(&path, passphrase.as_bytes());
                command.arg("--passphrase-file").arg(path);
            }
        }
        command.args(&self.options.args);
        command.envs(self.options.env.iter().map(|(k, v)| (k, v)));

        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path(&dir))
            .expect("opening the agent log file");
        let log_out = log.try_clone().expect("duplicating the log file handle");
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_out))
            .stderr(Stdio::from(log));
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", binaries().agent.display()));
        let deadline = Instant::now() + PROCESS_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("polling the agent") {
                return Err((Some(status), self.stderr_log()));
            }
            if UnixStream::connect(&socket).is_ok() {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err((None, self.stderr_log()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            send_signal(child.id(), libc::SIGTERM);
            if wait_timeout(&mut child, PROCESS_TIMEOUT).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn socket_in(dir: &Path, options: &AgentOptions) -> PathBuf {
    if options.default_socket {
        dir.join("run/dpop-agent/agent.sock")
    } else {
        dir.join("agent.sock")
    }
}

fn log_path(dir: &Path) -> PathBuf {
    dir.join("agent.log")
}

fn describe_status(status: Option<ExitStatus>) -> String {
    match status {
        Some(status) => format!("exited with {status}"),
        None => format!("not listening after {PROCESS_TIMEOUT:?}, killed"),
    }
}

/// A fresh temporary directory (0700, as tempfile makes them).
pub fn new_temp_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("dpop-e2e-")
        .tempdir()
        .expect("creating a temporary directory")
}

/// Writes a new file with mode 0600.
pub fn write_private_file(path: &Path, bytes: &[u8]) {
    let mut file =
        File::create(path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .expect("setting file mode");
    file.write_all(bytes).expect("writing file");
}

/// Sends a signal to a process.
pub fn send_signal(pid: u32, signal: i32) {
    let pid = i32::try_from(pid).expect("pid fits in pid_t");
    // SAFETY: kill(2) with a positive pid has no memory-safety preconditions.
    unsafe { libc::kill(pid, signal) };
}

/// Waits up to `timeout` for `child` to exit.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("polling a child process") {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether process `pid` is gone (or a zombie nobody has reaped yet, which no longer runs).
pub fn process_gone(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // Field 3, after the parenthesised command name, is the state.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

/// A raw protocol connection: write bytes, read reply lines.
#[derive(Debug)]
pub struct RawConnection {
    reader: BufReader<UnixStream>,
}

impl RawConnection {
    /// Connects to `socket`; reads time out after [`READ_TIMEOUT`].
    pub fn connect(socket: &Path) -> RawConnection {
        let stream = UnixStream::connect(socket)
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", socket.display()));
        stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .expect("setting a read timeout");
        RawConnection {
            reader: BufReader::new(stream),
        }
    }

    /// Writes `bytes` as they are, in one `write_all`.
    pub fn send(&mut self, bytes: &[u8]) {
        self.reader
            .get_mut()
            .write_all(bytes)
            .expect("writing to the agent");
    }

    /// Writes `line`, adding a newline when it has none.
    pub fn send_line(&mut self, line: &[u8]) {
        let mut bytes = line.to_vec();
        if bytes.last() != Some(&b'\n') {
            bytes.push(b'\n');
        }
        self.send(&bytes);
    }

    /// Reads one reply line (without the newline); `None` at end of stream. Panics on a read
    /// error or after [`READ_TIMEOUT`].
    pub fn read_line(&mut self) -> Option<String> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .expect("reading a reply line from the agent");
        if n == 0 {
            return None;
        }
        assert!(
            line.ends_with('\n'),
            "reply line is not newline-terminated: {line:?}"
        );
        line.pop();
        Some(line)
    }

    /// Reads one reply line and parses it as JSON; `None` at end of stream.
    pub fn read_reply(&mut self) -> Option<Value> {
        self.read_line().map(|line| {
            serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("reply is not JSON ({e}): {line:?}"))
        })
    }

    /// Sends `line` and reads its reply.
    pub fn request(&mut self, line: &[u8]) -> Value {
        self.send_line(line);
        self.read_reply()
            .expect("the agent answers before closing the connection")
    }

    /// The underlying socket.
    pub fn stream(&self) -> &UnixStream {
        self.reader.get_ref()
    }
}

/// The error code of a failed reply (`"key_not_found"`, ...); panics when the reply is not a
/// failure.
pub fn error_code(reply: &Value) -> &str {
    assert_eq!(
        reply["ok"],
        Value::Bool(false),
        "expected a failed reply, got {reply}"
    );
    reply["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("failed reply without error.code: {reply}"))
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// Decodes a compact JWS's header and payload (without checking anything).
pub fn decode_jws(jws: &str) -> (Value, Value) {
    let parts: Vec<&str> = jws.split('.').collect();
    assert_eq!(parts.len(), 3, "a compact JWS has three parts: {jws:?}");
    let decode = |part: &str, what: &str| -> Value {
        let bytes = dpop_jose::b64url_decode(part)
            .unwrap_or_else(|| panic!("JWS {what} is not base64url: {part:?}"));
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("JWS {what} is not JSON: {e}"))
    };
    (decode(parts[0], "header"), decode(parts[1], "payload"))
}

/// Verifies `proof` with [`dpop_jose::verify`] as a server would (no nonce required, fresh
/// replay store, now); panics with the reason when it is invalid.
pub fn verify_proof(
    proof: &str,
    method: &str,
    url: &str,
    access_token: Option<&str>,
) -> dpop_jose::VerifiedProof {
    try_verify_proof(proof, method, url, access_token, None)
        .unwrap_or_else(|e| panic!("proof does not verify for {method} {url}: {e}\n{proof}"))
}

/// [`dpop_jose::verify`] with a fresh replay store, no nonce policy, and the current time.
pub fn try_verify_proof(
    proof: &str,
    method: &str,
    url: &str,
    access_token: Option<&str>,
    jkt: Option<&str>,
) -> Result<dpop_jose::VerifiedProof, dpop_jose::Error> {
    let request = dpop_jose::ExpectedRequest {
        method,
        url,
        access_token,
        jkt,
    };
    let replay = dpop_jose::LruReplayStore::new(std::num::NonZeroUsize::new(16).expect("non-zero"));
    dpop_jose::verify(
        proof,
        &request,
        &dpop_jose::VerifyOptions::default(),
        &(),
        &replay,
        unix_now(),
    )
}

/// Runs `command` and returns its output; panics (with both streams) unless it succeeds.
pub fn run_ok(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed with {}:\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Name of the unprivileged user that peer-credential tests connect as.
pub const OTHER_USER: &str = "dpop-test-other";

/// The uid and gid of [`OTHER_USER`], created with `useradd --system` when missing. Panics
/// unless this process runs as root (the tests that need another user run as root in CI).
pub fn other_user() -> (u32, u32) {
    static USER: OnceLock<(u32, u32)> = OnceLock::new();
    *USER.get_or_init(|| {
        assert!(
            is_root(),
            "this test needs root, to create and act as the user {OTHER_USER} \
             (run the suite as root, as CI does)"
        );
        let id = |flag: &str| -> Option<u32> {
            let out = Command::new("id").args([flag, OTHER_USER]).output().ok()?;
            out.status.success().then_some(())?;
            String::from_utf8(out.stdout).ok()?.trim().parse().ok()
        };
        if id("-u").is_none() {
            let out = Command::new("useradd")
                .args([
                    "--system",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                ])
                .arg(OTHER_USER)
                .output()
                .expect("running useradd");
            // Another test process may have created it meanwhile; `id` decides below.
            if !out.status.success() && id("-u").is_none() {
                panic!(
                    "useradd {OTHER_USER} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let uid = id("-u").unwrap_or_else(|| panic!("no uid for {OTHER_USER}"));
        let gid = id("-g").unwrap_or_else(|| panic!("no gid for {OTHER_USER}"));
        assert_ne!(uid, 0, "{OTHER_USER} must not be root");
        (uid, gid)
    })
}

/// A command that runs `program` as [`OTHER_USER`] (through `setpriv`, with no
/// supplementary groups).
pub fn command_as_other_user(program: impl AsRef<OsStr>) -> Command {
    let (uid, gid) = other_user();
    let mut command = Command::new("setpriv");
    command
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg("--clear-groups")
        .arg("--")
        .arg(program);
    command
}

// ---------------------------------------------------------------------------------------------
// PKCS#11 tokens
// ---------------------------------------------------------------------------------------------

/// The user PIN variable that [`AgentOptions::pkcs11`] sets in the agent's environment (and
/// names with `--pkcs11-pin-env`).
pub const PKCS11_PIN_VAR: &str = "DPOP_TEST_PKCS11_PIN";

/// The PKCS#11 module under test: `DPOP_TEST_PKCS11_MODULE`, else SoftHSM2's
/// `/usr/lib/softhsm/libsofthsm2.so`. Panics, saying what to install, when it does not exist.
pub fn pkcs11_module() -> PathBuf {
    let module = std::env::var_os("DPOP_TEST_PKCS11_MODULE")
        .filter(|m| !m.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"));
    assert!(
        module.exists(),
        "PKCS#11 module {} not found: install SoftHSM2 (apt-get install softhsm2) or set \
         DPOP_TEST_PKCS11_MODULE",
        module.display()
    );
    module
}

/// Writes a fresh EC P-256 key to `path` as `openssl ecparam -genkey -noout` does (SEC1 PEM).
pub fn openssl_ec_pem(path: &Path) {
    run_ok(
        Command::new("openssl")
            .args([
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
            ])
            .arg(path),
    );
}

/// Writes a fresh EC P-256 key to `path` as `openssl genpkey` does (PKCS#8 PEM).
pub fn openssl_pkcs8_ec_pem(path: &Path) {
    run_ok(
        Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
            ])
            .arg(path),
    );
}

/// Panics, saying to install `package`, unless `program args` runs and succeeds.
pub fn require_tool(program: &str, args: &[&str], package: &str) {
    require_command(Command::new(program).args(args), program, package);
}

fn require_command(command: &mut Command, program: &str, package: &str) {
    let out = command.output();
    assert!(
        out.as_ref().is_ok_and(|o| o.status.success()),
        "{program} is needed by this test and is not runnable ({}): apt-get install {package}",
        match &out {
            Ok(o) => format!(
                "{}: {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => e.to_string(),
        }
    );
}

/// A throw-away SoftHSM2 token in a temporary directory of its own, made by
/// `softhsm/make-token.sh DIR LABEL PIN SO_PIN`:
///
/// - `<dir>/softhsm2.conf`: its `SOFTHSM2_CONF` ([`Self::conf`]), used by nothing else, so
///   tests with their own tokens run in parallel and may delete or restore them freely,
/// - `<dir>/tokens/<uuid>/`: SoftHSM2's storage of the token ([`Self::tokens_dir`]).
///
/// SoftHSM2 reads the token directory once per process, in `C_Initialize`: an agent sees the
/// tokens that exist when it starts (see `softhsm/README.md`). The directory is removed on
/// drop; stop the agents using it first (drop them before the token).
#[derive(Debug)]
pub struct SoftHsmToken {
    dir: TempDir,
    label: String,
    pin: String,
    so_pin: String,
    module: PathBuf,
}

impl SoftHsmToken {
    /// Makes the token; panics (with the script's output) when SoftHSM2 is missing or the
    /// script fails.
    pub fn create(label: &str, pin: &str, so_pin: &str) -> SoftHsmToken {
        let module = pkcs11_module();
        require_tool("softhsm2-util", &["--version"], "softhsm2");
        let dir = tempfile::Builder::new()
            .prefix("dpop-e2e-softhsm-")
            .tempdir()
            .expect("creating a temporary directory");
        let script = workspace_root().join("softhsm/make-token.sh");
        let out = Command::new(&script)
            .arg(dir.path())
            .args([label, pin, so_pin])
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} failed ({}): {}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let token = SoftHsmToken {
            dir,
            label: label.to_owned(),
            pin: pin.to_owned(),
            so_pin: so_pin.to_owned(),
            module,
        };
        let expected = format!("export SOFTHSM2_CONF={}\n", token.conf().display());
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            expected,
            "make-token.sh prints the line that selects the token's configuration"
        );
        token
    }

    /// The token label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The user PIN.
    pub fn pin(&self) -> &str {
        &self.pin
    }

    /// The security officer PIN.
    pub fn so_pin(&self) -> &str {
        &self.so_pin
    }

    /// The PKCS#11 module ([`pkcs11_module`]).
    pub fn module(&self) -> &Path {
        &self.module
    }

    /// The temporary directory holding configuration and token storage.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The `SOFTHSM2_CONF` of this token.
    pub fn conf(&self) -> PathBuf {
        self.dir.path().join("softhsm2.conf")
    }

    /// SoftHSM2's token directory (one subdirectory per token).
    pub fn tokens_dir(&self) -> PathBuf {
        self.dir.path().join("tokens")
    }

    /// `program` with `SOFTHSM2_CONF` set to this token's configuration.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new(program);
        command.env("SOFTHSM2_CONF", self.conf());
        command
    }

    /// `softhsm2-util` on this token's configuration.
    pub fn softhsm2_util(&self) -> Command {
        self.command("softhsm2-util")
    }

    /// `pkcs11-tool --module <module> --token-label <label>` on this token's configuration
    /// (OpenSC; panics when it is missing). Add `--login` and `--pin` for private objects.
    pub fn pkcs11_tool(&self) -> Command {
        // (Its --help and --version exit with status 2.)
        require_command(
            self.command("pkcs11-tool")
                .arg("--module")
                .arg(&self.module)
                .arg("--show-info"),
            "pkcs11-tool",
            "opensc",
        );
        let mut command = self.command("pkcs11-tool");
        command
            .arg("--module")
            .arg(&self.module)
            .arg("--token-label")
            .arg(&self.label);
        command
    }

    /// Deletes the token with `softhsm2-util --delete-token` (as if it were unplugged); the
    /// token's storage directory is gone afterwards.
    pub fn delete(&self) {
        run_ok(
            self.softhsm2_util()
                .args(["--delete-token", "--token"])
                .arg(&self.label),
        );
    }
}

impl AgentOptions {
    /// The agent on `token`: `--pkcs11-module`, `--pkcs11-token LABEL`, `SOFTHSM2_CONF` in its
    /// environment, and the token's PIN in [`PKCS11_PIN_VAR`] named by `--pkcs11-pin-env`.
    pub fn pkcs11(self, token: &SoftHsmToken) -> AgentOptions {
        let pin = token.pin().to_owned();
        self.pkcs11_pin_env(token, &pin)
    }

    /// Like [`Self::pkcs11`] with another PIN in [`PKCS11_PIN_VAR`] (a wrong one, say).
    pub fn pkcs11_pin_env(self, token: &SoftHsmToken, pin: &str) -> AgentOptions {
        self.pkcs11_no_pin(token)
            .arg("--pkcs11-pin-env")
            .arg(PKCS11_PIN_VAR)
            .env(PKCS11_PIN_VAR, pin)
    }

    /// Like [`Self::pkcs11`], the PIN from `--pkcs11-pin-file <token dir>/pin`, a 0600 file
    /// holding `contents` (write the PIN with or without a newline, or nothing at all).
    pub fn pkcs11_pin_file(self, token: &SoftHsmToken, contents: &str) -> AgentOptions {
        let path = token.dir().join("pin");
        let _ = fs::remove_file(&path);
        write_private_file(&path, contents.as_bytes());
        self.pkcs11_no_pin(token).arg("--pkcs11-pin-file").arg(path)
    }

    /// `--pkcs11-module`, `--pkcs11-token` and `SOFTHSM2_CONF` only: add a PIN source
    /// yourself (without one the agent would prompt on its terminal, which it has not).
    pub fn pkcs11_no_pin(self, token: &SoftHsmToken) -> AgentOptions {
        self.arg("--pkcs11-module")
            .arg(token.module())
            .arg("--pkcs11-token")
            .arg(token.label())
            .env("SOFTHSM2_CONF", token.conf())
    }
}

/// Checks `proof` with the independent Python jwcrypto verifier (`tests/interop/verify_proof.py`:
/// signature, `typ`, `alg`, no private JWK members, `htm`, `htu`, `iat`, `jti`, `ath`, and that
/// jwcrypto's RFC 7638 thumbprint is `jkt`). `htu` is the normalised URL the proof must carry.
/// Panics with the verifier's explanation unless every check passes, and says what to install
/// when python3 or jwcrypto is missing.
pub fn jwcrypto_verify(
    proof: &str,
    alg: &str,
    htm: &str,
    htu: &str,
    jkt: &str,
    access_token: Option<&str>,
) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/verify_proof.py");
    let mut command = Command::new("python3");
    command.arg(script).args([proof, alg, htm, htu, jkt]);
    if let Some(token) = access_token {
        command.arg(token);
    }
    let out = command.output().unwrap_or_else(|e| {
        panic!("cannot run python3 for the jwcrypto interop check (install python3): {e}")
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(
        out.status.code(),
        Some(2),
        "jwcrypto is missing: pip install jwcrypto\n{stderr}"
    );
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok",
        "jwcrypto rejects the {alg} proof ({}): {stderr}\nproof: {proof}",
        out.status
    );
}
