//! How the clients reach the agent: its Unix socket, or on Windows its named pipe. Either
//! way the agent's user is checked before anything is sent.

#[cfg(unix)]
mod unix;
#[cfg(windows)]
mod windows;

#[cfg(unix)]
pub(crate) use unix::*;
#[cfg(windows)]
pub(crate) use windows::*;

use std::path::Path;

use crate::Error;

/// The error for a socket or pipe at `path` that cannot be reached or checked.
fn connect_error(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Connect {
        path: path.to_owned(),
        source,
    }
}
