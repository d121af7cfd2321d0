//! Windows: the agent's named pipe, made for its user alone.
//!
//! The pipe is created with a protected DACL that lets the agent's user in and nobody else
//! ([`OwnerOnly`]), refuses remote clients, and must be the first instance of its name: the
//! pipe namespace is the machine's, so a name that exists already belongs to another agent or
//! to a process (maybe another user's) that took it first, and the agent then refuses to
//! start rather than share it. Each accepted client takes the listening instance; a new one
//! is made at once for the next client.

use std::io;

use anyhow::{Context, Result, bail};
use dpop_protocol::pipe::OwnerOnly;
use tokio::net::windows::named_pipe::{NamedPipeServer, ServerOptions};
use windows_sys::Win32::Foundation::ERROR_ACCESS_DENIED;

/// Where a pipe's name must start.
const PIPE_PREFIX: &str = r"\\.\pipe\";

/// The listening instance of the agent's pipe.
pub struct PipeListener {
    name: String,
    security: OwnerOnly,
    next: NamedPipeServer,
}

impl PipeListener {
    /// Creates the pipe `name` (`\\.\pipe\...`) for this user alone. Call it inside the
    /// runtime (the pipe registers with its reactor).
    pub fn bind(name: &str) -> Result<PipeListener> {
        if !name.starts_with(PIPE_PREFIX) || name.len() == PIPE_PREFIX.len() {
            bail!("{name} is not a named pipe: on Windows the socket is \\\\.\\pipe\\<name>");
        }
        let security =
            OwnerOnly::for_current_user().context("making the pipe's security descriptor")?;
        let first = create(name, &security, true).map_err(|e| {
            if e.raw_os_error() == Some(ERROR_ACCESS_DENIED as i32) {
                anyhow::anyhow!(
                    "the pipe {name} exists already: another dpop-agent of yours listens \
                     there, or another process took the name first; pass -a with another name"
                )
            } else {
                anyhow::Error::new(e).context(format!("creating the pipe {name}"))
            }
        })?;
        Ok(PipeListener {
            name: name.to_owned(),
            security,
            next: first,
        })
    }

    /// The pipe's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits for a client; returns its connected instance. The next instance exists before
    /// this one is handed out, so the name never lapses.
    pub async fn accept(&mut self) -> io::Result<NamedPipeServer> {
        let connected = self.next.connect().await;
        let next = create(&self.name, &self.security, false)?;
        let taken = std::mem::replace(&mut self.next, next);
        // A client that came and went before the connect finished leaves an instance that
        // nobody can use: it is dropped, and the fresh one listens.
        connected.map(|()| taken)
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
