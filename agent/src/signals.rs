//! The signals that stop the agent: SIGTERM, SIGINT and SIGHUP on Unix (held back from before
//! the socket is bound, so that an early one still removes it), the console's Ctrl-C,
//! Ctrl-Break, close, logoff and shutdown events on Windows. Either way they turn one
//! [`watch`] value true, which the server and every connection task wait on.

use tokio::sync::watch;
use tracing::info;

/// The signals that stop the agent.
#[cfg(unix)]
const SHUTDOWN_SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

#[cfg(unix)]
fn shutdown_signal_mask(how: libc::c_int) -> std::io::Result<()> {
    // SAFETY: sigemptyset/sigaddset fill a local set; pthread_sigmask changes only this
    // thread's mask.
    let rc = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in SHUTDOWN_SIGNALS {
            libc::sigaddset(&mut set, signal);
        }
        libc::pthread_sigmask(how, &set, std::ptr::null_mut())
    };
    match rc {
        0 => Ok(()),
        errno => Err(std::io::Error::from_raw_os_error(errno)),
    }
}

/// Holds back SIGTERM, SIGINT and SIGHUP in this thread and every thread it starts later.
/// Call it before the socket is bound and before any other thread exists: a signal that comes
/// while the agent starts then waits for [`shutdown_on_signal`]'s handler instead of killing
/// the agent with its socket file left behind.
#[cfg(unix)]
pub fn hold_shutdown_signals() -> std::io::Result<()> {
    shutdown_signal_mask(libc::SIG_BLOCK)
}

/// A shutdown signal that turns true on SIGTERM, SIGINT or SIGHUP. Call it on the thread that
/// called [`hold_shutdown_signals`] (the one running the runtime's `block_on`): the handlers
/// are in place before it returns, and then that thread takes the signals again, including one
/// held back meanwhile.
#[cfg(unix)]
pub fn shutdown_on_signal() -> std::io::Result<watch::Receiver<bool>> {
    use tokio::signal::unix::{SignalKind, signal};
    let (tx, rx) = watch::channel(false);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM"),
            _ = int.recv() => info!("SIGINT"),
            _ = hup.recv() => info!("SIGHUP"),
        }
        let _ = tx.send(true);
    });
    shutdown_signal_mask(libc::SIG_UNBLOCK)?;
    Ok(rx)
}

/// A shutdown signal that turns true on Ctrl-C or Ctrl-Break, or when the console closes or
/// the user logs off or the system shuts down. Call it inside the runtime.
#[cfg(windows)]
pub fn shutdown_on_signal() -> std::io::Result<watch::Receiver<bool>> {
    use tokio::signal::windows::{ctrl_break, ctrl_c, ctrl_close, ctrl_logoff, ctrl_shutdown};
    let (tx, rx) = watch::channel(false);
    let mut c = ctrl_c()?;
    let mut brk = ctrl_break()?;
    let mut close = ctrl_close()?;
    let mut logoff = ctrl_logoff()?;
    let mut shutdown = ctrl_shutdown()?;
    tokio::spawn(async move {
        tokio::select! {
            _ = c.recv() => info!("Ctrl-C"),
            _ = brk.recv() => info!("Ctrl-Break"),
            _ = close.recv() => info!("console closed"),
            _ = logoff.recv() => info!("user logging off"),
            _ = shutdown.recv() => info!("system shutting down"),
        }
        let _ = tx.send(true);
    });
    Ok(rx)
}
