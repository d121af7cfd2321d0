//! Private files of the key store: 0700 directories we own, 0600 files written atomically.
//!
//! On Windows there are no modes: the store lives under the user's profile
//! (`%LOCALAPPDATA%`), whose inherited ACL already keeps other users out, and files take it.

use std::fs;
use std::io::Write;
#[cfg(unix)]
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::Error;

/// Creates `dir` (and parents) 0700; an existing directory must belong to us and not be
/// writable by others.
pub fn create_private_dir(dir: &Path) -> Result<(), Error> {
    let io = |action| {
        move |source| Error::Io {
            action,
            path: dir.to_owned(),
            source,
        }
    };
    if !dir.exists() {
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        builder.mode(0o700);
        builder.create(dir).map_err(io("creating directory"))?;
    }
    #[cfg(unix)]
    check_private_dir(dir)?;
    Ok(())
}

/// An existing directory must belong to us and not be writable by others.
#[cfg(unix)]
fn check_private_dir(dir: &Path) -> Result<(), Error> {
    let io = |action| {
        move |source| Error::Io {
            action,
            path: dir.to_owned(),
            source,
        }
    };
    let meta = fs::metadata(dir).map_err(io("checking directory"))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid {
        return Err(Error::CorruptStore {
            path: dir.to_owned(),
            reason: format!("owned by uid {}, not by us (uid {euid})", meta.uid()),
        });
    }
    if meta.permissions().mode() & 0o022 != 0 {
        return Err(Error::CorruptStore {
            path: dir.to_owned(),
            reason: "writable by group or others".into(),
        });
    }
    Ok(())
}

/// How a finished temporary file takes its place.
#[derive(Clone, Copy)]
enum Place {
    /// `link`: fails when the path exists, so nothing is ever replaced.
    New,
    /// `rename`: replaces the old file in one step.
    Replace,
}

/// Writes `bytes` to a new 0600 temporary file beside `path`, fsyncs it, puts it in place,
/// and fsyncs the directory. A failure at any point leaves `path` as it was.
fn write_private_file(path: &Path, bytes: &[u8], place: Place) -> Result<(), Error> {
    let io = |action| {
        move |source| Error::Io {
            action,
            path: path.to_owned(),
            source,
        }
    };
    let tmp = path.with_extension("json.tmp");
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(&tmp).map_err(io("creating key file"))?;
    let result = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .and_then(|()| match place {
            Place::New => fs::hard_link(&tmp, path),
            Place::Replace => fs::rename(&tmp, path),
        });
    // After a link the temporary name goes; after a rename it is gone already.
    let _ = fs::remove_file(&tmp);
    result.map_err(|e| match place {
        Place::New if e.kind() == std::io::ErrorKind::AlreadyExists => Error::KeyExists {
            label: path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
        },
        Place::New => io("writing key file")(e),
        Place::Replace => io("replacing key file")(e),
    })?;
    if let Some(parent) = path.parent()
        && let Ok(d) = fs::File::open(parent)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Writes a new 0600 file atomically (temporary name, fsync, link into place); never replaces
/// an existing file.
pub(crate) fn write_new_private_file(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    write_private_file(path, bytes, Place::New)
}

/// Replaces `path` atomically with a 0600 file holding `bytes` (temporary name, fsync,
/// rename): a failure at any point leaves the old file as it was.
pub(crate) fn replace_private_file(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    write_private_file(path, bytes, Place::Replace)
}
