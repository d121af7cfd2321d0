//! The background start (`eval "$(dpop-agent)"`): the parent asks for a PIN if one is needed,
//! starts a detached `dpop-agent -D --detached`, waits until it listens and prints the shell
//! lines that point clients at it. The child, once listening, reports readiness and lets go of
//! the parent's pipes ([`detach_output`]).

use std::io::{BufRead, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use secrecy::ExposeSecret;

use crate::backends::token_selector;
use crate::config::{Args, EnvSecrets, PinFrom, Settings};
use crate::pin;

/// `dpop-agent` without `-D`.
pub fn start(args: &Args) -> Result<()> {
    // The settings the child will load, config file included, so the socket printed below is
    // the one it binds.
    let settings = Settings::load(args, EnvSecrets::Keep)?;
    let socket = settings.socket_location().path();
    // A PIN prompt needs the terminal, which the detached child does not have: ask here.
    let pin = match &settings.pkcs11 {
        Some(p11) if matches!(p11.pin, PinFrom::Prompt) => Some(pin::prompt(&token_selector(p11))?),
        _ => None,
    };
    let exe = std::env::current_exe().context("finding our own executable")?;
    let mut command = Command::new(exe);
    // Without -a the child works out the same default path (and creates its 0700 directory).
    command
        .args(std::env::args_os().skip(1))
        .arg("-D")
        .arg("--detached");
    command
        .stdin(if pin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = command.spawn().context("starting the agent")?;
    if let Some(pin) = pin {
        let mut stdin = child.stdin.take().expect("piped");
        let mut line = zeroize::Zeroizing::new(pin.expose_secret().as_bytes().to_vec());
        line.push(b'\n');
        // The pipe buffer holds a PIN; a failure shows up as the child's start-up error.
        let _ = stdin.write_all(&line);
    }
    let mut stderr = child.stderr.take().expect("piped");
    let collector = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    // The child says "ready" once it listens (and has let go of our stderr pipe); EOF
    // without it means it failed, and its log says why.
    let mut ready = String::new();
    let stdout = child.stdout.take().expect("piped");
    std::io::BufReader::new(stdout).read_line(&mut ready)?;
    if ready.trim() != "ready" {
        let _ = child.kill();
        let status = child.wait()?;
        let log = collector.join().unwrap_or_default();
        eprint!("{log}");
        bail!("the agent did not start ({status})");
    }
    let sock = shell_quote(&socket);
    let pid = child.id();
    println!("DPOP_AUTH_SOCK={sock}; export DPOP_AUTH_SOCK;");
    println!("DPOP_AGENT_PID={pid}; export DPOP_AGENT_PID;");
    println!("echo Agent pid {pid};");
    Ok(())
}

fn shell_quote(path: &Path) -> String {
    let s = path.to_string_lossy();
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// In the detached child, once listening: point standard error at the log file (or
/// /dev/null), tell the parent we are ready on standard output, then let go of standard output
/// too. The parent exits after that, and writing to its pipes would fail.
pub fn detach_output(log_file: Option<&Path>) -> Result<()> {
    use std::os::fd::AsRawFd;
    let log = match log_file {
        Some(path) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening log file {}", path.display()))?,
        None => std::fs::OpenOptions::new().write(true).open("/dev/null")?,
    };
    let null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
    // SAFETY: dup2 onto the standard descriptors; both sources are open files we own.
    if unsafe { libc::dup2(log.as_raw_fd(), 2) } < 0 {
        bail!(
            "redirecting standard error: {}",
            std::io::Error::last_os_error()
        );
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
