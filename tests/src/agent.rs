//! A real `dpop-agent -D` per test, in a temporary directory of its own: start options, start
//! failures, restarts, and the ways to talk to it (client crate, `dpop`, raw lines).

use std::ffi::{OsStr, OsString};
use std::fs::{self, OpenOptions};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use crate::{
    POLL_INTERVAL, RawConnection, binaries, new_temp_dir, poll_until, send_signal, wait_timeout,
    write_private_file,
};

/// How long an agent may take to start listening, or to exit after a signal.
pub const PROCESS_TIMEOUT: Duration = Duration::from_secs(20);

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
            // Saved tokens (dpop token --save) stay in the test's directory.
            .env("XDG_STATE_HOME", self.dir().join("state"))
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
        // Up until the socket accepts, or the agent exits, or the timeout.
        let started = poll_until(PROCESS_TIMEOUT, POLL_INTERVAL, || {
            if let Some(status) = child.try_wait().expect("polling the agent") {
                return Some(Err(status));
            }
            UnixStream::connect(&socket).is_ok().then_some(Ok(()))
        });
        match started {
            Some(Ok(())) => {
                self.child = Some(child);
                Ok(())
            }
            Some(Err(status)) => Err((Some(status), self.stderr_log())),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                Err((None, self.stderr_log()))
            }
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

/// A scripted askpass program (`DPOP_ASKPASS`): answers with a fixed exit status (0 is yes)
/// and appends each question, as `prompt|question` on one line, to a log beside it.
pub struct Askpass {
    path: PathBuf,
    log: PathBuf,
}

impl Askpass {
    /// An askpass named `name` in `dir` that answers `answer` (an exit status: 0 is yes).
    pub fn new(dir: &Path, name: &str, answer: u8) -> Askpass {
        let path = dir.join(name);
        let log = dir.join(format!("{name}.log"));
        fs::write(
            &path,
            format!(
                "#!/bin/sh\nprintf '%s|%s\\n' \"$SSH_ASKPASS_PROMPT\" \"$1\" >> '{}'\nexit {answer}\n",
                log.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).unwrap();
        Askpass { path, log }
    }

    /// The program, for `DPOP_ASKPASS`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The questions asked so far, oldest first (`prompt|question`).
    pub fn questions(&self) -> Vec<String> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}
