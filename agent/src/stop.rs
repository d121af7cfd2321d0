//! `dpop-agent -k`: stops the agent that `DPOP_AUTH_SOCK` names. Its pid comes from the
//! socket's peer credentials, so a stale `DPOP_AGENT_PID` cannot make us signal another
//! process; `DPOP_AGENT_PID` is used only when no socket is set.

use std::path::Path;

use anyhow::{Context, Result, bail};

/// Sends SIGTERM to the agent and prints the shell lines that forget it.
pub fn kill_agent() -> Result<()> {
    let pid: i32 = match std::env::var_os("DPOP_AUTH_SOCK").filter(|s| !s.is_empty()) {
        Some(sock) => {
            let stream = std::os::unix::net::UnixStream::connect(&sock).with_context(|| {
                format!("connecting to the agent at {}", Path::new(&sock).display())
            })?;
            let cred = peer_credentials(&stream)?;
            if cred.uid != crate::socket::euid() {
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
    println!("unset DPOP_AUTH_SOCK;");
    println!("unset DPOP_AGENT_PID;");
    println!("echo Agent pid {pid} killed;");
    Ok(())
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
