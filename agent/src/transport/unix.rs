//! Unix: where the socket lives and how it is made safe: a 0700 directory we own, a 0600
//! socket created under a restrictive umask (so it is never reachable by others, not even
//! briefly); socket activation.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// A client's connection.
pub type Stream = tokio::net::UnixStream;

/// Where clients connect: the agent's socket.
pub type Listener = tokio::net::UnixListener;

/// Waits for the next client.
pub async fn accept(listener: &mut Listener) -> std::io::Result<Stream> {
    listener.accept().await.map(|(stream, _)| stream)
}

/// The listening socket that systemd passed (socket activation: `LISTEN_PID` is us and
/// `LISTEN_FDS` is 1), or `None` when not socket-activated. The variables are removed, so no
/// child inherits them. Call it while single-threaded (it changes the environment).
pub fn activated_listener() -> Result<Option<UnixListener>> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let fds: Vec<_> = sd_notify::listen_fds()
        .context("reading LISTEN_FDS (socket activation)")?
        .collect();
    // SAFETY: single-threaded (see above).
    unsafe {
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    let fd = match fds.as_slice() {
        [] => return Ok(None),
        [fd] => *fd,
        more => bail!(
            "socket activation passed {} sockets; dpop-agent listens on one (ListenStream= once)",
            more.len()
        ),
    };
    // SAFETY: the service manager passed this descriptor to us alone (LISTEN_PID is our
    // pid), open; nothing else in the process owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    check_listening_unix_stream(&owned)?;
    Ok(Some(UnixListener::from(owned)))
}

/// Refuses a passed socket that is not a listening Unix stream socket (a `ListenDatagram=`
/// or TCP `ListenStream=` in the unit): the peer check needs Unix credentials.
fn check_listening_unix_stream(fd: &impl std::os::fd::AsRawFd) -> Result<()> {
    let int_opt = |level, name| -> Result<libc::c_int> {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `value`.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                level,
                name,
                (&raw mut value).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            bail!(
                "the socket passed by socket activation: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(value)
    };
    let domain = int_opt(libc::SOL_SOCKET, libc::SO_DOMAIN)?;
    let kind = int_opt(libc::SOL_SOCKET, libc::SO_TYPE)?;
    let listening = int_opt(libc::SOL_SOCKET, libc::SO_ACCEPTCONN)?;
    if domain != libc::AF_UNIX || kind != libc::SOCK_STREAM || listening == 0 {
        bail!(
            "the socket passed by socket activation is not a listening Unix stream socket \
             (use ListenStream=%t/dpop-agent/agent.sock in the .socket unit)"
        );
    }
    Ok(())
}

/// The default socket when there is a runtime directory (the one clients look for).
pub use dpop_protocol::default_socket_path;

/// Where the socket goes when no path is configured: `$XDG_RUNTIME_DIR/dpop-agent/agent.sock`,
/// or, without a runtime directory, `agent.<pid>` in a fresh private directory (see
/// [`SocketLocation::Private`]), created here.
pub fn default_location() -> Result<SocketLocation> {
    match default_socket_path() {
        Some(path) => Ok(SocketLocation::Default(path)),
        None => {
            let dir = make_private_temp_dir()?;
            Ok(SocketLocation::Private(
                dir.join(format!("agent.{}", std::process::id())),
            ))
        }
    }
}

/// Where the socket is bound, and so who prepares its directory.
#[derive(Clone, Debug)]
pub enum SocketLocation {
    /// Under `$XDG_RUNTIME_DIR`: the agent creates its 0700 directory, or checks an existing
    /// one.
    Default(PathBuf),
    /// A path the user chose: its directory must exist; it is the user's to secure.
    Given(PathBuf),
    /// No runtime directory: a socket in a directory made like mkdtemp(3) does it
    /// (`$TMPDIR/dpop-XXXXXXXXXX`, 0700), as ssh-agent does. Nobody can predict its name, so
    /// nobody can squat it (a fixed `/tmp/dpop-agent-<uid>` that another user created first
    /// kept the agent from starting). The agent removes the socket and the directory when it
    /// stops.
    Private(PathBuf),
}

impl SocketLocation {
    /// The socket's path.
    pub fn path(&self) -> PathBuf {
        match self {
            SocketLocation::Default(path)
            | SocketLocation::Given(path)
            | SocketLocation::Private(path) => path.clone(),
        }
    }

    /// Removes what the agent made: the socket, and a [`SocketLocation::Private`] directory.
    pub fn remove(&self) {
        let path = self.path();
        let _ = fs::remove_file(&path);
        if let (SocketLocation::Private(_), Some(dir)) = (self, path.parent()) {
            // Only when empty: never anything we did not put there.
            let _ = fs::remove_dir(dir);
        }
    }
}

/// Creates `$TMPDIR/dpop-XXXXXXXXXX` (mode 0700) as mkdtemp(3) does, with ten random
/// characters (glibc's mkdtemp takes six only): `mkdir` fails on any name that exists, link
/// or not, and another name is tried.
pub fn make_private_temp_dir() -> Result<PathBuf> {
    use std::io::Read;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let tmp = std::env::temp_dir();
    let mut urandom = fs::File::open("/dev/urandom").context("opening /dev/urandom")?;
    for _ in 0..100 {
        let mut random = [0u8; 10];
        urandom
            .read_exact(&mut random)
            .context("reading /dev/urandom")?;
        // 62 characters: the modulo bias is irrelevant to a name that must only be unguessable
        // enough not to be squatted in advance.
        let name: String = random
            .iter()
            .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
            .collect();
        let dir = tmp.join(format!("dpop-{name}"));
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("creating a private socket directory in {}", tmp.display())
                });
            }
        }
    }
    bail!(
        "could not create a private socket directory in {}: every name tried exists",
        tmp.display()
    )
}

pub use dpop_protocol::socket_dir::euid;

/// Creates the default socket directory 0700 or checks an existing one: ours, and nobody
/// else can write to it. (A private directory exists already and gets the same check.)
pub fn prepare_private_dir(dir: &Path) -> Result<()> {
    Ok(dpop_protocol::socket_dir::prepare_private_dir(dir)?)
}

/// Binds the listening socket 0600. A stale socket (nobody answering) is replaced; a live one
/// means another agent runs there, and anything that is not a socket is left alone.
pub fn bind(location: &SocketLocation) -> Result<UnixListener> {
    let path = &location.path();
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    match location {
        SocketLocation::Default(_) | SocketLocation::Private(_) => prepare_private_dir(parent)?,
        SocketLocation::Given(_) if !parent.is_dir() => {
            bail!("socket directory {} does not exist", parent.display())
        }
        SocketLocation::Given(_) => {}
    }
    if let Ok(meta) = fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            bail!(
                "{} exists and is not a socket; not touching it",
                path.display()
            );
        }
        if UnixStream::connect(path).is_ok() {
            bail!("another agent is listening on {}", path.display());
        }
        fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    // SAFETY: umask only changes this process's file creation mask; we restore it at once and
    // no other thread exists yet.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    unsafe { libc::umask(old) };
    let listener = bound.with_context(|| format!("binding socket {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("setting socket mode on {}", path.display()))?;
    Ok(listener)
}
