//! Who is on the other end of a connection: its uid and pid from the socket's credentials
//! (`SO_PEERCRED`), and its executable, for the audit log and per-key client policies.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A connected client.
#[derive(Debug)]
pub struct Peer {
    /// Its user id.
    pub uid: u32,
    /// Its process id, when the kernel gave one.
    pub pid: Option<i32>,
    /// `/proc/<pid>/exe`, read once, when first needed.
    exe: OnceLock<Option<PathBuf>>,
}

impl Peer {
    /// A peer with these credentials.
    pub fn new(uid: u32, pid: Option<i32>) -> Peer {
        Peer {
            uid,
            pid,
            exe: OnceLock::new(),
        }
    }

    /// The client's executable (Linux: `/proc/<pid>/exe`), read at its first signing request
    /// and kept for the connection. `None` when unknown (no pid, the process is gone, or
    /// another platform).
    ///
    /// A process of the same user can change what it runs (exec) or be changed (ptrace):
    /// this names the program that asked, it does not prove it.
    pub fn exe(&self) -> Option<&Path> {
        self.exe
            .get_or_init(|| {
                let pid = self.pid.filter(|p| *p > 0)?;
                std::fs::read_link(format!("/proc/{pid}/exe")).ok()
            })
            .as_deref()
    }
}
