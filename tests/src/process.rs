//! Processes, files, tools and users: temporary directories, private files, signals, commands
//! that must succeed, required tools, and the second user of the peer-credential tests.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use tempfile::TempDir;

use crate::{POLL_INTERVAL, poll_until};

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
    poll_until(timeout, POLL_INTERVAL, || {
        child.try_wait().expect("polling a child process")
    })
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

/// Panics, saying to install `package`, unless `program args` runs and succeeds.
pub fn require_tool(program: &str, args: &[&str], package: &str) {
    require_command(Command::new(program).args(args), program, package);
}

pub(crate) fn require_command(command: &mut Command, program: &str, package: &str) {
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

/// Every regular file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(dir) = todo.pop() {
        for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let entry = entry.expect("directory entry");
            let kind = entry.file_type().expect("file type");
            if kind.is_dir() {
                todo.push(entry.path());
            } else if kind.is_file() {
                files.push(entry.path());
            }
        }
    }
    files
}

/// Kills a background agent (by pid) when a test fails half-way.
pub struct KillOnDrop(pub u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if !process_gone(self.0) {
            send_signal(self.0, libc::SIGKILL);
        }
    }
}

/// The permission bits of `path` (following links).
pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// `chmod mode path`.
pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

/// Runs `command` (a shell command line) under a pseudo-terminal (`script`) with `env` added,
/// types `answer` once the terminal shows `prompt` (up to its closing ": "), and returns the
/// `script` process and everything it printed up to the prompt. For secrets that the agent
/// asks for on its terminal.
pub fn with_terminal(
    command: &str,
    env: &[(&str, &OsStr)],
    prompt: &str,
    answer: &str,
) -> (Child, String) {
    use std::io::Read;
    require_tool("script", &["--version"], "bsdutils");
    let mut child = Command::new("script")
        .args(["-q", "-e", "-c", command, "/dev/null"])
        .envs(env.iter().copied())
        .env_remove("DPOP_AUTH_SOCK")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("running script(1)");
    let mut stdout = child.stdout.take().expect("piped");
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    // The whole prompt, up to its closing ": ", may arrive in several reads.
    let whole_prompt = |seen: &[u8]| {
        let text = String::from_utf8_lossy(seen);
        text.find(prompt)
            .is_some_and(|at| text[at..].contains(": "))
    };
    while !whole_prompt(&seen) {
        let n = stdout.read(&mut buf).expect("reading the terminal");
        assert!(
            n > 0,
            "no prompt {prompt:?}: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    let stdin = child.stdin.as_mut().expect("piped");
    stdin
        .write_all(format!("{answer}\n").as_bytes())
        .expect("typing the answer");
    stdin.flush().expect("typing the answer");
    // Keep reading in the background so the terminal never blocks the agent.
    let rest = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stdout.read_to_end(&mut text);
        text
    });
    drop(rest); // detached: it ends when the terminal closes
    (child, String::from_utf8_lossy(&seen).into_owned())
}
