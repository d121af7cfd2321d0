//! `dpop-agent -k`: stops the agent that `DPOP_AUTH_SOCK` names. Its pid comes from the
//! socket's peer credentials, so a stale `DPOP_AGENT_PID` cannot make us signal another
//! process; `DPOP_AGENT_PID` is used only when no socket is set.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::shell::Shell;

/// How long `-k` waits for the agent to be gone.
const STOP_WAIT: Duration = Duration::from_secs(10);

/// Sends SIGTERM to the agent, waits until it is gone (its socket removed), and prints the
/// shell lines that forget it.
pub fn kill_agent(shell: Shell) -> Result<()> {
    let pid: i32 = match std::env::var_os("DPOP_AUTH_SOCK").filter(|s| !s.is_empty()) {
        Some(sock) => {
            let stream = std::os::unix::net::UnixStream::connect(&sock).with_context(|| {
                format!("connecting to the agent at {}", Path::new(&sock).display())
            })?;
            let cred = peer_credentials(&stream)?;
            if cred.uid != crate::transport::euid() {
                bail!(
                    "the agent at {} runs as uid {}, not as us",
                    sock.to_string_lossy(),
                    cred.uid
                );
            }
            cred.pid
        }
        None => std::env::var("DPOP_AGENT_PID")
            .context("neither DPOP_AUTH_SOCK nor DPOP_AGENT_PID is set; which agent should stop?")?
            .parse()
            .context("DPOP_AGENT_PID is not a process id")?,
    };
    // SAFETY: kill(2) with a positive pid and SIGTERM has no memory-safety preconditions.
    if pid <= 0 || unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        bail!(
            "stopping agent pid {pid}: {}",
            std::io::Error::last_os_error()
        );
    }
    let deadline = Instant::now() + STOP_WAIT;
    while !process_gone(pid) {
        if Instant::now() > deadline {
            bail!(
                "agent pid {pid} did not stop within {} s",
                STOP_WAIT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    print!("{}", shell.unset_lines(pid));
    Ok(())
}

/// Whether `pid` has exited: no such process, or a zombie that its parent has not reaped yet
/// (the agent has let go of everything by then).
fn process_gone(pid: i32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
    }
    // /proc/<pid>/stat: "pid (comm) STATE ..."; comm may hold spaces and parentheses.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(')')?.1.trim_start().chars().next()?;
            Some(state == 'Z' || state == 'X')
        })
        .unwrap_or(false)
}

/// The agent listening on `socket`, if it is ours and answers `hello`: its process id.
/// For `--reuse`.
pub fn live_agent(socket: &Path) -> Option<i32> {
    use std::io::{BufRead, BufReader, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).ok()?;
    let cred = peer_credentials(&stream).ok()?;
    if cred.uid != crate::transport::euid() {
        return None;
    }
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let hello = dpop_protocol::Request {
        id: 1.into(),
        op: dpop_protocol::Op::Hello {},
    };
    stream
        .write_all(&dpop_protocol::encode_request(&hello))
        .ok()?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line).ok()?;
    let reply: dpop_protocol::Reply = serde_json::from_str(&line).ok()?;
    let hello: dpop_protocol::HelloReply =
        serde_json::from_value(serde_json::Value::Object(reply.body)).ok()?;
    (reply.ok && hello.agent.starts_with("dpop-agent/")).then_some(cred.pid)
}

fn peer_credentials(stream: &std::os::unix::net::UnixStream) -> Result<libc::ucred> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED writes a ucred into the buffer we pass, of the size we pass.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        bail!(
            "reading the agent's credentials: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(cred)
}
