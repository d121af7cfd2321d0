//! The Unix socket, and who listens on it. Any local user can listen on a path that a client
//! is pointed to (a `DPOP_AUTH_SOCK` set by a script, a guessable directory), and the client
//! sends access tokens and, for `import_key`, whole private keys: so before sending anything
//! it asks the kernel who the listener is and talks only to an agent of its own user, or root.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::connect_error;
use crate::Error;

/// The blocking client's connection.
pub(crate) type Stream = std::os::unix::net::UnixStream;

/// The async client's connection.
#[cfg(feature = "async")]
pub(crate) type AsyncStream = tokio::net::UnixStream;

/// Connects to the agent's socket at `path` and checks who listens there.
pub(crate) fn connect(path: &Path) -> Result<Stream, Error> {
    let stream = Stream::connect(path).map_err(connect_error(path))?;
    // Before a single byte goes out: a token or a private key must not reach a listener
    // of another user.
    check_agent(stream.as_fd(), path)?;
    Ok(stream)
}

/// [`connect`] for the async client.
#[cfg(feature = "async")]
pub(crate) async fn connect_async(path: &Path) -> Result<AsyncStream, Error> {
    let stream = AsyncStream::connect(path)
        .await
        .map_err(connect_error(path))?;
    check_agent(stream.as_fd(), path)?;
    Ok(stream)
}

/// The agent's default socket, `$XDG_RUNTIME_DIR/dpop-agent/agent.sock`, when it exists.
pub(crate) fn default_socket() -> Option<PathBuf> {
    dpop_protocol::default_socket_path().filter(|socket| socket.exists())
}

/// Refuses a peer that runs as neither our effective uid nor root.
fn check_agent(socket: BorrowedFd<'_>, path: &Path) -> Result<(), Error> {
    let uid = peer_uid(socket).map_err(connect_error(path))?;
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

/// Waits for the reply by polling the socket for up to `spin` before the caller blocks.
///
/// An agent answers a software-key proof in about 15 us, but waking a thread that sleeps in
/// `read` costs 20 to 40 us on virtual machines, more than the work itself. A short bounded
/// poll (`MSG_PEEK | MSG_DONTWAIT`, nothing is consumed) avoids that sleep. It burns CPU for a
/// slow token (a YubiKey takes milliseconds), so both clients leave it off unless asked.
pub(crate) fn spin_until_readable(stream: &impl AsRawFd, spin: Duration) {
    let fd: RawFd = stream.as_raw_fd();
    if spin.is_zero() {
        return;
    }
    let deadline = Instant::now() + spin;
    let mut byte = 0u8;
    loop {
        // SAFETY: peeking one byte into a valid local buffer on a socket we own.
        let n = unsafe {
            libc::recv(
                fd,
                (&raw mut byte).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock {
            return; // data, end of stream or an error: the real read reports it
        }
        if Instant::now() >= deadline {
            return;
        }
        std::hint::spin_loop();
    }
}

/// Whether the agent is done with this connection while no request is outstanding: it
/// closed it (idle for ten minutes, or it stopped), or it sent something unasked (a `busy`
/// line before closing). Peeks without waiting; nothing is consumed.
pub(crate) fn peer_closed(stream: &impl AsRawFd) -> bool {
    let mut byte = 0u8;
    // SAFETY: peeking one byte into a valid local buffer on a socket we own.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            (&raw mut byte).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n >= 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock
}
