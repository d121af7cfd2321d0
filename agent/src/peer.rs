//! Who is on the other end of a connection: its uid and pid from the socket's credentials
//! (`SO_PEERCRED`; on Windows the pipe client's process and that process's user), and which
//! process that is, read once when the connection is accepted: its executable and, on Linux,
//! its start time (`/proc/<pid>/stat` field 22) and a pidfd (`SO_PEERPIDFD`, else
//! `pidfd_open`) that holds on to that very process.
//!
//! A request that depends on who asks (a client policy, a confirmation, managing a key's
//! policy) checks again, with [`Peer::verified_exe`], that the process is still the one that
//! connected: it has not exited (so its pid cannot have gone to another process) and runs the
//! same program (no exec since). Otherwise the request is refused; the client connects again
//! and is identified anew.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::transport::Stream;

/// A connected client.
#[derive(Debug)]
pub struct Peer {
    /// Its process id, when the kernel gave one.
    pub pid: Option<i32>,
    /// The process, as it was when the connection was accepted.
    process: Arc<Process>,
}

/// One client process, identified when its connection was accepted. Shared with the
/// confirmations remembered for it, which hold only while it lives.
#[derive(Debug)]
pub struct Process {
    pid: Option<i32>,
    /// Its executable at connect time.
    exe: Option<PathBuf>,
    /// Its start time in clock ticks after boot (Linux): tells it from a later process
    /// that got the same pid.
    start_time: Option<u64>,
    /// A pidfd for it (Linux): readable once it has exited.
    #[cfg(target_os = "linux")]
    pidfd: Option<std::os::fd::OwnedFd>,
}

/// Why a connection's process no longer counts as the one that connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed {
    /// It exited (its pid may belong to another process now).
    Exited,
    /// It runs another program than when it connected (an exec since).
    Exec { now: PathBuf },
}

impl std::fmt::Display for Changed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Changed::Exited => f.write_str("the client process that connected has exited"),
            Changed::Exec { now } => write!(
                f,
                "the client process runs {} now, another program than when it connected; \
                 connect again",
                dpop_protocol::printable(&now.to_string_lossy())
            ),
        }
    }
}

impl Process {
    /// Reads who `pid` is now (Linux: its pidfd first, so that what is read afterwards is
    /// known to belong to that process if it is still alive then).
    #[cfg(target_os = "linux")]
    fn identify(pid: Option<i32>, pidfd: Option<std::os::fd::OwnedFd>) -> Process {
        let Some(pid) = pid.filter(|p| *p > 0) else {
            return Process {
                pid,
                exe: None,
                start_time: None,
                pidfd: None,
            };
        };
        let pidfd = pidfd.or_else(|| linux::pidfd_open(pid));
        let mut process = Process {
            pid: Some(pid),
            exe: executable(pid),
            start_time: linux::start_time(pid),
            pidfd,
        };
        // Exited before or while we read: nothing read may be its (the pid may be reused).
        if process.exited() {
            process.exe = None;
            process.start_time = None;
        }
        process
    }

    #[cfg(not(target_os = "linux"))]
    fn identify(pid: Option<i32>) -> Process {
        Process {
            pid,
            exe: pid.filter(|p| *p > 0).and_then(executable),
            start_time: None,
        }
    }

    /// Whether the process has exited (as far as this platform can tell).
    pub fn exited(&self) -> bool {
        #[cfg(target_os = "linux")]
        {
            if let Some(fd) = &self.pidfd {
                return linux::pidfd_exited(fd);
            }
            if let (Some(pid), Some(start)) = (self.pid, self.start_time) {
                return linux::start_time(pid) != Some(start);
            }
        }
        false
    }

    /// The executable, when the process is still the one identified at connect time.
    pub fn verified_exe(&self) -> Result<Option<&Path>, Changed> {
        let Some(exe) = self.exe.as_deref() else {
            return Ok(None);
        };
        if self.exited() {
            return Err(Changed::Exited);
        }
        #[cfg(target_os = "linux")]
        if let Some(pid) = self.pid {
            if let Some(start) = self.start_time
                && linux::start_time(pid) != Some(start)
            {
                return Err(Changed::Exited);
            }
            match executable(pid) {
                Some(now) if now == exe => {}
                Some(now) => return Err(Changed::Exec { now }),
                None => return Err(Changed::Exited),
            }
        }
        Ok(Some(exe))
    }

    /// Its pid and start time: with the executable, what a remembered answer is tied to.
    pub fn key(&self) -> (i32, u64) {
        (self.pid.unwrap_or(0), self.start_time.unwrap_or(0))
    }
}

impl Peer {
    /// A peer with this process id, identified now.
    pub fn new(pid: Option<i32>) -> Peer {
        #[cfg(target_os = "linux")]
        let process = Process::identify(pid, None);
        #[cfg(not(target_os = "linux"))]
        let process = Process::identify(pid);
        Peer {
            pid,
            process: Arc::new(process),
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
                #[cfg(target_os = "linux")]
                let process = Process::identify(cred.pid(), linux::peer_pidfd(stream));
                #[cfg(not(target_os = "linux"))]
                let process = Process::identify(cred.pid());
                Ok(Peer {
                    pid: cred.pid(),
                    process: Arc::new(process),
                })
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

    /// The client's executable as it was when the connection was accepted (Linux:
    /// `/proc/<pid>/exe`; Windows: the process's image), for the audit log and questions.
    /// `None` when unknown (no pid, the process was gone, or another platform).
    ///
    /// A process of the same user can be changed (ptrace): this names the program that
    /// asked, it does not prove it.
    pub fn exe(&self) -> Option<&Path> {
        self.process.exe.as_deref()
    }

    /// [`exe`](Self::exe), after checking that the process is still the one that connected
    /// (not exited, no exec since): what a policy decision uses.
    pub fn verified_exe(&self) -> Result<Option<&Path>, Changed> {
        self.process.verified_exe()
    }

    /// The process, shared (a remembered confirmation holds it).
    pub fn process(&self) -> &Arc<Process> {
        &self.process
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    /// `SO_PEERPIDFD` (Linux 6.5): a pidfd of the process that connected, race-free. Its
    /// value where the architecture uses the generic socket options.
    #[cfg(any(
        target_arch = "x86_64",
        target_arch = "x86",
        target_arch = "aarch64",
        target_arch = "arm",
        target_arch = "riscv64"
    ))]
    const SO_PEERPIDFD: libc::c_int = 77;

    /// The pidfd of the process that connected `stream`, when the kernel offers it.
    pub(super) fn peer_pidfd(stream: &super::Stream) -> Option<OwnedFd> {
        #[cfg(any(
            target_arch = "x86_64",
            target_arch = "x86",
            target_arch = "aarch64",
            target_arch = "arm",
            target_arch = "riscv64"
        ))]
        {
            let mut fd: libc::c_int = -1;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: fd and len are valid for the option's int result.
            let done = unsafe {
                libc::getsockopt(
                    stream.as_raw_fd(),
                    libc::SOL_SOCKET,
                    SO_PEERPIDFD,
                    (&raw mut fd).cast(),
                    &mut len,
                )
            };
            if done == 0 && fd >= 0 {
                // SAFETY: the kernel gave us this new descriptor.
                return Some(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
        let _ = stream;
        None
    }

    /// A pidfd for whatever process has `pid` now (Linux 5.3).
    pub(super) fn pidfd_open(pid: i32) -> Option<OwnedFd> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        let fd = libc::c_int::try_from(fd).ok().filter(|fd| *fd >= 0)?;
        // SAFETY: the kernel gave us this new descriptor.
        Some(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Whether the pidfd's process has exited (the pidfd polls readable).
    pub(super) fn pidfd_exited(fd: &OwnedFd) -> bool {
        let mut poll = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no wait.
        let n = unsafe { libc::poll(&mut poll, 1, 0) };
        n > 0 && poll.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0
    }

    /// Field 22 of `/proc/<pid>/stat`: when the process started, in clock ticks after boot.
    pub(super) fn start_time(pid: i32) -> Option<u64> {
        let stat = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
        parse_start_time(&stat)
    }

    /// Field 22 of a `stat` line. The command name (field 2) is in parentheses and may
    /// hold spaces and parentheses itself: fields are counted after its last `)`.
    pub(super) fn parse_start_time(stat: &[u8]) -> Option<u64> {
        let close = stat.iter().rposition(|&b| b == b')')?;
        let rest = std::str::from_utf8(&stat[close + 1..]).ok()?;
        // After ")": field 3 (state) is the first; field 22 is the twentieth.
        rest.split_ascii_whitespace().nth(19)?.parse().ok()
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

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn start_time_is_field_22_after_the_command_name() {
        let line = b"1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                     987654 1000 10 18446744073709551615";
        assert_eq!(linux::parse_start_time(line), Some(987654));
        assert_eq!(linux::parse_start_time(b"1 (x) S 1"), None);
        let mine = linux::start_time(std::process::id() as i32).expect("our own stat");
        assert!(mine > 0);
    }

    #[test]
    fn a_process_is_known_until_it_exits() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let peer = Peer::new(Some(child.id() as i32));
        let exe = peer.verified_exe().unwrap().expect("sleep's executable");
        assert!(exe.ends_with("sleep"), "{}", exe.display());
        assert!(!peer.process().exited());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(peer.process().exited());
        assert_eq!(peer.verified_exe(), Err(Changed::Exited));
        // The connect-time name stays, for the audit log.
        assert!(peer.exe().is_some());
    }
}
