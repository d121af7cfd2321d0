//! Windows: the agent's named pipe, made for its user alone.
//!
//! The pipe is created with a protected DACL that lets the agent's user in and nobody else
//! ([`OwnerOnly`]), refuses remote clients, and must be the first instance of its name: the
//! pipe namespace is the machine's, so a name that exists already belongs to another agent or
//! to a process (maybe another user's) that took it first, and the agent then refuses to
//! start rather than share it. As on Unix, it first tries to connect: a pipe that answers is
//! refused at once (and under Wine, which ignores `FILE_FLAG_FIRST_PIPE_INSTANCE`, this is
//! the only check); the first-instance flag closes the race after it. Each accepted client
//! takes the listening instance; a new one is made at once for the next client.

use std::io;

use anyhow::{Context, Result, bail};
use dpop_protocol::pipe::OwnerOnly;
use tokio::net::windows::named_pipe::{ClientOptions, NamedPipeServer, ServerOptions};
use windows_sys::Win32::Foundation::{ERROR_ACCESS_DENIED, ERROR_PIPE_BUSY};

/// A client's connection: the pipe instance it connected to.
pub type Stream = NamedPipeServer;

/// Where clients connect: the agent's pipe.
pub type Listener = PipeListener;

/// Waits for the next client.
pub async fn accept(listener: &mut Listener) -> io::Result<Stream> {
    listener.accept().await
}

/// Where a pipe's name must start.
const PIPE_PREFIX: &str = r"\\.\pipe\";

/// The listening instance of the agent's pipe.
pub struct PipeListener {
    name: String,
    security: OwnerOnly,
    /// The instance the next client connects to (`None` after the system's limit of
    /// instances was reached; the next [`accept`](Self::accept) makes it).
    next: Option<NamedPipeServer>,
}

impl PipeListener {
    /// Creates the pipe `name` (`\\.\pipe\...`) for this user alone. Call it inside the
    /// runtime (the pipe registers with its reactor).
    pub fn bind(name: &str) -> Result<PipeListener> {
        if !name.starts_with(PIPE_PREFIX) || name.len() == PIPE_PREFIX.len() {
            bail!("{name} is not a named pipe: on Windows the socket is \\\\.\\pipe\\<name>");
        }
        let taken = || {
            anyhow::anyhow!(
                "the pipe {name} exists already: another dpop-agent of yours listens there, \
                 or another process took the name first; pass -a with another name"
            )
        };
        // Nothing is sent: the other end only sees a connection that closes.
        match ClientOptions::new().open(name) {
            Ok(_) => return Err(taken()),
            Err(e) if e.raw_os_error() == Some(ERROR_PIPE_BUSY as i32) => return Err(taken()),
            Err(_) => {}
        }
        let security =
            OwnerOnly::for_current_user().context("making the pipe's security descriptor")?;
        let first = create(name, &security, true).map_err(|e| {
            if e.raw_os_error() == Some(ERROR_ACCESS_DENIED as i32) {
                taken()
            } else {
                anyhow::Error::new(e).context(format!("creating the pipe {name}"))
            }
        })?;
        Ok(PipeListener {
            name: name.to_owned(),
            security,
            next: Some(first),
        })
    }

    /// The pipe's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits for a client; returns its connected instance. The next instance is made before
    /// this one is handed out (or dropped, when the client went away before the connect
    /// finished), so the name does not lapse while clients come and go.
    pub async fn accept(&mut self) -> io::Result<NamedPipeServer> {
        let pipe = match self.next.take() {
            Some(pipe) => pipe,
            None => create(&self.name, &self.security, false)?,
        };
        let connected = pipe.connect().await;
        // At the system's limit of instances (255) this fails; the connected client is
        // served all the same, and the next call tries again.
        self.next = create(&self.name, &self.security, false).ok();
        connected.map(|()| pipe)
    }
}

fn create(name: &str, security: &OwnerOnly, first: bool) -> io::Result<NamedPipeServer> {
    let mut options = ServerOptions::new();
    options
        .first_pipe_instance(first)
        .reject_remote_clients(true);
    // SAFETY: `security` points at a SECURITY_ATTRIBUTES whose descriptor outlives the call.
    unsafe { options.create_with_security_attributes_raw(name, security.as_raw()) }
}
