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
