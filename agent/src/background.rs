//! The background start (`eval "$(dpop-agent)"`): the parent reads the secrets the child will
//! need (the passphrase and PIN variables, wiped from its own environment at once, or the PIN
//! at the terminal), starts a detached `dpop-agent -D --detached` with none of them in its
//! environment, hands them over on the child's standard input ([`crate::secrets`]), waits until
//! it listens, repeats its start-up warnings and prints the shell lines that point clients at
//! it. The child, once listening, reports readiness and lets go of the parent's pipes
//! ([`detach_output`]); what it logged until then goes to the log file too.

use std::fs::File;
use std::io::{BufRead, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, PoisonError, mpsc};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::backends::software::PASSPHRASE_VAR;
use crate::config::{Args, Settings};
use crate::secrets::{self, HandedSecrets};
use crate::shell::Shell;
use crate::stop::live_agent;
use crate::transport::{SocketLocation, default_socket_path};

/// How long the parent waits for the rest of the child's start-up log once it is ready (the
/// child closes the pipe when it detaches; this only guards against a module that forked a
/// helper holding it open).
const STARTUP_LOG_WAIT: Duration = Duration::from_secs(5);

/// `dpop-agent` without `-D`.
pub fn start(args: &Args) -> Result<()> {
    // The settings the child will load, config file included, so the socket printed below is
    // the one it binds. This reads the secret variables and wipes them from our environment.
    let settings = Settings::load(args, HandedSecrets::default())?;
    let shell = Shell::choose(args.csh, args.sh);
    if args.reuse
        && let Some((socket, pid)) = reusable_agent(&settings)
    {
        print!("{}", shell.set_lines(&socket, pid.unsigned_abs()));
        return Ok(());
    }
    let location = settings.socket_location()?;
    let started = launch(&settings, &location, shell);
    if started.is_err() {
        // The child is gone: a private directory we made would be left behind.
        if let SocketLocation::Private(_) = location {
            location.remove();
        }
    }
    started
}

/// `--reuse`: a live agent of ours on `DPOP_AUTH_SOCK`, or on the socket this start would
/// bind (configured, or the default under `$XDG_RUNTIME_DIR`).
fn reusable_agent(settings: &Settings) -> Option<(PathBuf, i32)> {
    let from_env = std::env::var_os("DPOP_AUTH_SOCK")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from);
    let configured = settings.socket.clone().or_else(default_socket_path);
    [from_env, configured]
        .into_iter()
        .flatten()
        .find_map(|socket| Some((socket.clone(), live_agent(&socket)?)))
}

fn launch(settings: &Settings, location: &SocketLocation, shell: Shell) -> Result<()> {
    let socket = location.path();
    // Each backend's secret that the child cannot read itself; asked at the terminal now
    // when it comes from there, since the detached child has none.
    let handed = settings.backends.hand_over()?;
    let exe = std::env::current_exe().context("finding our own executable")?;
    let mut command = Command::new(exe);
    command
        // `--reuse` was for this process; the child must start (and `-D` conflicts with it).
        .args(std::env::args_os().skip(1).filter(|a| a != "--reuse"))
        .arg("-D")
        .arg("--detached");
    if let SocketLocation::Private(path) = location {
        command.arg("--private-socket").arg(path);
    }
    command
        // Settings::load removed the secret variables from our environment already; the
        // child gets them on standard input only.
        .env_remove(PASSPHRASE_VAR)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = command.spawn().context("starting the agent")?;
    {
        let stdin = child.stdin.take().expect("piped");
        // A failure shows up as the child's start-up error.
        let _ = secrets::hand_over(stdin, &handed);
    }
    drop(handed);
    let stderr = child.stderr.take().expect("piped");
    let (lines, log) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    // The child says "ready" once it listens (and has let go of our stderr pipe); EOF
    // without it means it failed, and its log says why.
    let mut ready = String::new();
    let stdout = child.stdout.take().expect("piped");
    std::io::BufReader::new(stdout).read_line(&mut ready)?;
    if ready.trim() != "ready" {
        let _ = child.kill();
        let status = child.wait()?;
        for line in log.iter() {
            eprintln!("{line}");
        }
        bail!("the agent did not start ({status})");
    }
    // Warnings (no passphrase, key files not loaded...) would otherwise only reach the log
    // file, which nobody reads at start-up.
    while let Ok(line) = log.recv_timeout(STARTUP_LOG_WAIT) {
        if let Some(warning) = startup_warning(&line) {
            eprintln!("dpop-agent: {warning}");
        }
    }
    print!("{}", shell.set_lines(&socket, child.id()));
    Ok(())
}

/// A warning or error line of the child's log (tracing's format: time, level, target,
/// message), as `warning: message`.
fn startup_warning(line: &str) -> Option<String> {
    let (level, rest) = [(" WARN ", "warning"), (" ERROR ", "error")]
        .into_iter()
        .find_map(|(tag, level)| Some((level, line.split_once(tag)?.1)))?;
    // Drop the target (`dpop_agent::backends: `).
    let message = rest.split_once(": ").map_or(rest, |(_, m)| m);
    Some(format!("{level}: {}", message.trim()))
}

/// What the detached child logged before detaching, for the log file; `None` when not kept
/// (a foreground agent, or after detaching).
static STARTUP_LOG: Mutex<Option<Vec<u8>>> = Mutex::new(None);

/// The log writer: standard error, and while [`keep_startup_log`] is on, a copy of each line
/// for the log file.
pub struct StderrTee;

/// Makes [`StderrTee`] keep what it writes until [`detach_output`].
pub fn keep_startup_log() {
    *STARTUP_LOG.lock().unwrap_or_else(PoisonError::into_inner) = Some(Vec::new());
}

impl Write for StderrTee {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // Held while writing, so that detach_output cannot slip in between the two copies.
        let mut kept = STARTUP_LOG.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(kept) = kept.as_mut() {
            kept.extend_from_slice(buf);
        }
        // A parent that went away must not cost us the log file's copy.
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Opens (creates 0600) the `--log-file`, refusing a symbolic link: the log holds key labels,
/// origins and client paths, and a link planted where it should be could point anywhere.
pub fn open_log_file(path: &Path) -> Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => anyhow::anyhow!(
                "refusing log file {}: it is a symbolic link",
                path.display()
            ),
            _ => anyhow::Error::new(e).context(format!("opening log file {}", path.display())),
        })
}

/// In the detached child, once listening: write the start-up log to the log file and point
/// standard error at it (or /dev/null), tell the parent we are ready on standard output, then
/// let go of standard output too. The parent exits after that, and writing to its pipes
/// would fail.
pub fn detach_output(log_file: Option<File>) -> Result<()> {
    use std::os::fd::AsRawFd;
    let null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
    let mut log = match log_file {
        Some(file) => file,
        None => null.try_clone()?,
    };
    {
        let mut kept = STARTUP_LOG.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(lines) = kept.take() {
            log.write_all(&lines).context("writing the log file")?;
        }
        // SAFETY: dup2 onto the standard descriptors; both sources are open files we own.
        if unsafe { libc::dup2(log.as_raw_fd(), 2) } < 0 {
            bail!(
                "redirecting standard error: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(b"ready\n")?;
    stdout.flush()?;
    // SAFETY: as above.
    if unsafe { libc::dup2(null.as_raw_fd(), 1) } < 0 {
        bail!(
            "redirecting standard output: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_warnings_are_found_in_the_log() {
        let line = "2026-01-01T00:00:00.000000Z  WARN dpop_agent::backends: no passphrase: keys \
                    are kept in memory only";
        assert_eq!(
            startup_warning(line).as_deref(),
            Some("warning: no passphrase: keys are kept in memory only")
        );
        let info = "2026-01-01T00:00:00.000000Z  INFO dpop_agent: listening socket=/x";
        assert_eq!(startup_warning(info), None);
    }
}
