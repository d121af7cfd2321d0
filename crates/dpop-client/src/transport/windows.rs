//! The named pipe, and who created it. Any local user can create a pipe of any free name
//! (the namespace is the machine's), and the client sends access tokens and, for
//! `import_key`, whole private keys: so before sending anything it asks who created the
//! pipe's server end and talks only to an agent of its own user, or LocalSystem. It also
//! opens the pipe at identification level, so a server cannot act as us with our token.

use std::os::windows::fs::OpenOptionsExt;
use std::os::windows::io::AsHandle;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dpop_protocol::pipe::{ProcessUser, default_pipe_name, server_pid};
use windows_sys::Win32::Foundation::{
    ERROR_BROKEN_PIPE, ERROR_NO_DATA, ERROR_PIPE_BUSY, ERROR_PIPE_NOT_CONNECTED,
};
use windows_sys::Win32::Storage::FileSystem::{SECURITY_IDENTIFICATION, SECURITY_SQOS_PRESENT};

use super::connect_error;
use crate::Error;

/// The blocking client's connection: a pipe opened as a file.
pub(crate) type Stream = std::fs::File;

/// The async client's connection.
#[cfg(feature = "async")]
pub(crate) type AsyncStream = tokio::net::windows::named_pipe::NamedPipeClient;

/// How long a client waits while every instance of the pipe is busy (the agent makes the
/// next instance as soon as one is taken, so this is short unless it is overloaded).
const BUSY_WAIT: Duration = Duration::from_secs(2);

/// How long between two tries while the pipe is busy.
const BUSY_RETRY: Duration = Duration::from_millis(10);

fn is_busy(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(ERROR_PIPE_BUSY as i32)
}

/// Opens the agent's pipe at `path` and checks who created it.
pub(crate) fn connect(path: &Path) -> Result<Stream, Error> {
    let deadline = Instant::now() + BUSY_WAIT;
    let file = loop {
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(SECURITY_SQOS_PRESENT | SECURITY_IDENTIFICATION)
            .open(path)
        {
            Err(e) if is_busy(&e) && Instant::now() < deadline => std::thread::sleep(BUSY_RETRY),
            opened => break opened.map_err(connect_error(path))?,
        }
    };
    // Before a single byte goes out: a token or a private key must not reach a pipe that
    // another user created.
    check_agent(&file, path)?;
    Ok(file)
}

/// [`connect`] for the async client (tokio opens at identification level by default).
#[cfg(feature = "async")]
pub(crate) async fn connect_async(path: &Path) -> Result<AsyncStream, Error> {
    use tokio::net::windows::named_pipe::ClientOptions;
    let deadline = Instant::now() + BUSY_WAIT;
    let pipe = loop {
        match ClientOptions::new().open(path) {
            Err(e) if is_busy(&e) && Instant::now() < deadline => {
                tokio::time::sleep(BUSY_RETRY).await
            }
            opened => break opened.map_err(connect_error(path))?,
        }
    };
    check_agent(&pipe, path)?;
    Ok(pipe)
}

/// This user's default pipe, `\\.\pipe\dpop-agent-<SID>` (its existence is not probed:
/// opening it would take an instance from the agent).
pub(crate) fn default_socket() -> Option<PathBuf> {
    default_pipe_name().ok().map(PathBuf::from)
}

/// Refuses a pipe whose server process runs as neither our user nor LocalSystem.
fn check_agent(pipe: &impl AsHandle, path: &Path) -> Result<(), Error> {
    let user = server_pid(pipe)
        .and_then(ProcessUser::of_process)
        .map_err(connect_error(path))?;
    let me = ProcessUser::current().map_err(connect_error(path))?;
    if user == *me || user.is_local_system() {
        Ok(())
    } else {
        Err(Error::ForeignAgentUser {
            path: path.to_owned(),
            sid: user.sid_string().unwrap_or_else(|_| "(unknown)".into()),
        })
    }
}

/// Polling before a read is a Unix socket optimisation; a pipe read just waits.
pub(crate) fn spin_until_readable<T>(_stream: &T, _spin: Duration) {}

/// Whether the agent is done with this connection while no request is outstanding: it
/// closed its end (idle for ten minutes, or it stopped), or it sent something unasked.
/// Asks the pipe how many bytes wait; nothing is read.
pub(crate) fn peer_closed(stream: &impl std::os::windows::io::AsRawHandle) -> bool {
    let mut waiting = 0u32;
    // SAFETY: a pipe handle we own; no buffer is given, only the count is written.
    let ok = unsafe {
        windows_sys::Win32::System::Pipes::PeekNamedPipe(
            stream.as_raw_handle(),
            std::ptr::null_mut(),
            0,
            std::ptr::null_mut(),
            &mut waiting,
            std::ptr::null_mut(),
        )
    };
    if ok != 0 {
        return waiting > 0;
    }
    // Only the answers that mean "the other end is gone": any other failure is left to the
    // write and read that follow, which report it.
    let gone = [ERROR_BROKEN_PIPE, ERROR_PIPE_NOT_CONNECTED, ERROR_NO_DATA];
    std::io::Error::last_os_error()
        .raw_os_error()
        .is_some_and(|code| gone.iter().any(|&g| g as i32 == code))
}
