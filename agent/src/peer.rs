//! Who is on the other end of a connection: its uid and pid from the socket's credentials
//! (`SO_PEERCRED`; on Windows the pipe client's process and that process's user), and its
//! executable, for the audit log and per-key client policies.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::transport::Stream;

/// A connected client.
#[derive(Debug)]
pub struct Peer {
    /// Its process id, when the kernel gave one.
    pub pid: Option<i32>,
    /// Its executable, read once, when first needed.
    exe: OnceLock<Option<PathBuf>>,
}

impl Peer {
    /// A peer with this process id.
    pub fn new(pid: Option<i32>) -> Peer {
        Peer {
            pid,
            exe: OnceLock::new(),
        }
    }

    /// The client on `stream`, when it may be served: our own user, or root (who can read
    /// the agent's memory anyway, as ssh-agent also allows). Otherwise who it is, for the log.
    #[cfg(unix)]
    pub fn identify(stream: &Stream) -> Result<Peer, String> {
        let me = crate::transport::euid();
        match stream.peer_cred() {
            Ok(cred) if cred.uid() == me || cred.uid() == 0 => {
                tracing::debug!(uid = cred.uid(), pid = ?cred.pid(), "client connected");
                Ok(Peer::new(cred.pid()))
            }
            Ok(cred) => Err(format!("uid {} (pid {:?})", cred.uid(), cred.pid())),
            Err(e) => Err(format!("unknown peer ({e})")),
        }
    }

    /// The client on `stream`, when it may be served: a process of our own user, or
    /// LocalSystem. The pipe's security descriptor already keeps other users out; this
    /// checks it again, and finds the pid for the audit log and client policies.
    #[cfg(windows)]
    pub fn identify(stream: &Stream) -> Result<Peer, String> {
        use dpop_protocol::pipe::{ProcessUser, client_pid};
        let pid = client_pid(stream).map_err(|e| format!("unknown peer ({e})"))?;
        let user = ProcessUser::of_process(pid).map_err(|e| format!("pid {pid} ({e})"))?;
        let me = ProcessUser::current().map_err(|e| format!("pid {pid} ({e})"))?;
        if user == *me || user.is_local_system() {
            tracing::debug!(pid, "client connected");
            Ok(Peer::new(i32::try_from(pid).ok()))
        } else {
            Err(format!("{user:?} (pid {pid})"))
        }
    }

    /// The client's executable (Linux: `/proc/<pid>/exe`; Windows: the process's image), read
    /// at its first signing request and kept for the connection. `None` when unknown (no
    /// pid, the process is gone, or another platform).
    ///
    /// A process of the same user can change what it runs (exec) or be changed (ptrace):
    /// this names the program that asked, it does not prove it.
    pub fn exe(&self) -> Option<&Path> {
        self.exe
            .get_or_init(|| executable(self.pid.filter(|p| *p > 0)?))
            .as_deref()
    }
}

#[cfg(target_os = "linux")]
fn executable(pid: i32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/exe")).ok()
}

#[cfg(windows)]
fn executable(pid: i32) -> Option<PathBuf> {
    dpop_protocol::pipe::process_image(u32::try_from(pid).ok()?).ok()
}

#[cfg(not(any(target_os = "linux", windows)))]
fn executable(_pid: i32) -> Option<PathBuf> {
    None
}

/// `path` with every link resolved, as the system names a running executable: what an
/// allowed client of a policy is compared with. On Windows without the `\\?\` prefix that
/// `canonicalize` adds and the process image name lacks.
pub fn canonical_executable(path: &Path) -> std::io::Result<PathBuf> {
    let canonical = std::fs::canonicalize(path)?;
    #[cfg(windows)]
    {
        let text = canonical.to_string_lossy();
        if let Some(unc) = text.strip_prefix(r"\\?\UNC\") {
            return Ok(PathBuf::from(format!(r"\\{unc}")));
        }
        if let Some(local) = text.strip_prefix(r"\\?\") {
            return Ok(PathBuf::from(local));
        }
    }
    Ok(canonical)
}

/// Whether two canonical executable paths name the same program (case-insensitively on
/// Windows, whose file names are).
pub fn same_executable(a: &Path, b: &Path) -> bool {
    if cfg!(windows) {
        a.as_os_str().eq_ignore_ascii_case(b.as_os_str())
    } else {
        a == b
    }
}
