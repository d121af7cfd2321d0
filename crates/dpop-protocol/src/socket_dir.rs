//! The private directory a socket is bound in (the agent's, `dpop proxy`'s): created 0700, or
//! an existing one accepted only when it is ours and closed to others, so that nobody else
//! can replace the socket or listen there first.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why a socket directory was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SocketDirError {
    /// It could not be created or inspected.
    #[error("{action} socket directory {}: {source}", dir.display())]
    Io {
        /// `creating` or `checking`.
        action: &'static str,
        /// The directory.
        dir: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// The path is something else than a directory.
    #[error("{} is not a directory", dir.display())]
    NotADirectory {
        /// The path.
        dir: PathBuf,
    },
    /// Another user owns it.
    #[error("refusing to use socket directory {}: owned by uid {owner}, not by us (uid {uid})", dir.display())]
    NotOurs {
        /// The directory.
        dir: PathBuf,
        /// Its owner.
        owner: u32,
        /// Our effective uid.
        uid: u32,
    },
    /// Group or others may enter or write it.
    #[error("refusing to use socket directory {}: mode {mode:o} lets others in (want 0700)", dir.display())]
    OpenToOthers {
        /// The directory.
        dir: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

/// Our effective uid.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Creates `dir` 0700 when it is missing, then checks it: a directory (not a symlink to one),
/// owned by our effective uid, with no permission for group or others.
pub fn prepare_private_dir(dir: &Path) -> Result<(), SocketDirError> {
    let io = |action| {
        move |source| SocketDirError::Io {
            action,
            dir: dir.to_owned(),
            source,
        }
    };
    if !dir.exists() {
        fs::DirBuilder::new()
            .mode(0o700)
            .create(dir)
            .map_err(io("creating"))?;
    }
    let meta = fs::symlink_metadata(dir).map_err(io("checking"))?;
    if !meta.is_dir() {
        return Err(SocketDirError::NotADirectory {
            dir: dir.to_owned(),
        });
    }
    if meta.uid() != euid() {
        return Err(SocketDirError::NotOurs {
            dir: dir.to_owned(),
            owner: meta.uid(),
            uid: euid(),
        });
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SocketDirError::OpenToOthers {
            dir: dir.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_directory_is_made_private_and_an_open_one_is_refused() {
        let base = std::env::temp_dir().join(format!("dpop-socket-dir-{}", std::process::id()));
        let dir = base.join("sock");
        fs::create_dir_all(&base).unwrap();
        prepare_private_dir(&dir).unwrap();
        let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o750)).unwrap();
        let err = prepare_private_dir(&dir).unwrap_err();
        assert!(
            matches!(err, SocketDirError::OpenToOthers { mode: 0o750, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("lets others in"), "{err}");
        fs::remove_dir_all(&base).unwrap();
    }
}
