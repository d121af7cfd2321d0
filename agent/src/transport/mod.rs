//! Where clients connect, mirroring `dpop-client`'s `transport`: on Unix a socket in a
//! private directory (bound safely, or passed by systemd's socket activation); on Windows a
//! named pipe for the agent's user alone. Each side gives a [`Stream`] (one client's
//! connection), a [`Listener`] and [`accept`]; the server only moves bytes through them.

#[cfg(unix)]
mod unix;
#[cfg(windows)]
mod windows;

#[cfg(unix)]
pub use unix::*;
#[cfg(windows)]
pub use windows::*;
