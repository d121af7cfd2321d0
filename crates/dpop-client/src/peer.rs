//! Who listens on the socket. Any local user can listen on a path that a client is pointed
//! to (a `DPOP_AUTH_SOCK` set by a script, a guessable directory), and the client sends access
//! tokens and, for `import_key`, whole private keys: so before sending anything it asks the
//! kernel who the listener is and talks only to an agent of its own user, or root.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;

use crate::Error;

/// Refuses a peer that runs as neither our effective uid nor root.
pub(crate) fn check_agent(socket: BorrowedFd<'_>, path: &Path) -> Result<(), Error> {
    let uid = peer_uid(socket).map_err(|source| Error::Connect {
        path: path.to_owned(),
        source,
    })?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if uid == euid || uid == 0 {
        Ok(())
    } else {
        Err(Error::ForeignAgent {
            path: path.to_owned(),
            uid,
            euid,
        })
    }
}

/// The uid of the process that listens on the other end (as it was when it called `listen`).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn peer_uid(socket: BorrowedFd<'_>) -> std::io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED writes one ucred into the buffer we pass, of the size we pass.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// The uid of the process that listens on the other end (macOS and the BSDs).
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn peer_uid(socket: BorrowedFd<'_>) -> std::io::Result<u32> {
    let mut uid: libc::uid_t = 0;
    let mut gid: libc::gid_t = 0;
    // SAFETY: getpeereid writes the two ids we pass pointers to.
    if unsafe { libc::getpeereid(socket.as_raw_fd(), &mut uid, &mut gid) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(uid)
}
