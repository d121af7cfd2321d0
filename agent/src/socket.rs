//! Where the socket lives and how it is made safe: a 0700 directory we own, a 0600 socket
//! created under a restrictive umask (so it is never reachable by others, not even briefly).

use std::fs;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Default socket: `$XDG_RUNTIME_DIR/dpop-agent/agent.sock`, or
/// `/tmp/dpop-agent-<uid>/agent.sock` without a runtime directory.
pub fn default_path() -> PathBuf {
    let dir = match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(runtime) => PathBuf::from(runtime).join("dpop-agent"),
        None => PathBuf::from(format!("/tmp/dpop-agent-{}", euid())),
    };
    dir.join("agent.sock")
}

/// Where the socket is bound, and so who prepares its directory.
#[derive(Clone, Debug)]
pub enum SocketLocation {
    /// The default path: the agent creates its 0700 directory, or checks an existing one.
    Default(PathBuf),
    /// A path the user chose: its directory must exist; it is the user's to secure.
    Given(PathBuf),
}

impl SocketLocation {
    /// The socket's path.
    pub fn path(&self) -> PathBuf {
        match self {
            SocketLocation::Default(path) | SocketLocation::Given(path) => path.clone(),
        }
    }
}

pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Creates the default socket directory 0700 or checks an existing one: ours, and nobody
/// else can write to it.
pub fn prepare_private_dir(dir: &Path) -> Result<()> {
    if !dir.exists() {
        fs::DirBuilder::new()
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating socket directory {}", dir.display()))?;
    }
    let meta = fs::symlink_metadata(dir)
        .with_context(|| format!("checking socket directory {}", dir.display()))?;
    if !meta.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    if meta.uid() != euid() {
        bail!(
            "refusing to use socket directory {}: owned by uid {}, not by us (uid {})",
            dir.display(),
            meta.uid(),
            euid()
        );
    }
    if meta.permissions().mode() & 0o077 != 0 {
        bail!(
            "refusing to use socket directory {}: mode {:o} lets others in (want 0700)",
            dir.display(),
            meta.permissions().mode() & 0o777
        );
    }
    Ok(())
}

/// Binds the listening socket 0600. A stale socket (nobody answering) is replaced; a live one
/// means another agent runs there, and anything that is not a socket is left alone.
pub fn bind(location: &SocketLocation) -> Result<UnixListener> {
    let (SocketLocation::Default(path) | SocketLocation::Given(path)) = location;
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    match location {
        SocketLocation::Default(_) => prepare_private_dir(parent)?,
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
