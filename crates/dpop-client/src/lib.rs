//! Clients of dpop-agent. Ask the agent for DPoP proofs (RFC 9449) and manage its keys over
//! its Unix socket (a named pipe on Windows); the private keys never leave the agent.
//!
//! [`Client`] is async (tokio, feature `async`, on by default), [`blocking::Client`] is for
//! synchronous code and needs no runtime (`default-features = false`). Both find the agent
//! through `DPOP_AUTH_SOCK` (`connect_env`) or an explicit path, both talk only to an agent
//! of their own user (or root; LocalSystem on Windows) and refuse any other listener before
//! sending anything (`Error::ForeignAgent`), and both run the same request/reply code; they
//! differ only in how they wait for the socket. The crate compiles no cryptography: the agent
//! signs.
//!
//! ```no_run
//! use dpop_client::ProofRequest;
//!
//! # async fn demo() -> Result<(), dpop_client::Error> {
//! let mut agent = dpop_client::Client::connect_env().await?;
//! let request = ProofRequest::new("GET", "https://api.example.com/v1/items")
//!     .access_token("access-token");
//! let proof = agent.sign_proof("my-key", &request).await?;
//! println!("DPoP: {proof}");
//! # Ok(()) }
//! ```
//!
//! Each op is one method; what a request may carry is a builder: [`ProofRequest`] for a proof,
//! [`NewKey`], [`ImportKey`] and [`AdoptKey`] for a new key (a bare label is a [`NewKey`]):
//!
//! ```no_run
//! use dpop_client::NewKey;
//!
//! # fn demo(policy: &dpop_protocol::KeyPolicy) -> Result<(), dpop_client::Error> {
//! let mut agent = dpop_client::blocking::Client::connect_env()?;
//! agent.generate_key("scratch")?;
//! agent.generate_key(NewKey::new("api").backend("pkcs11").policy(policy))?;
//! # Ok(()) }
//! ```
//!
//! On Unix, either client can poll for each reply for a moment before it sleeps (`set_spin`,
//! off by default): that saves the wake-up of a sleeping thread, which costs more than a software-key
//! proof, but burns CPU while a slow token signs.
//!
//! The agent closes connections that stay idle for 10 minutes; an application that keeps a
//! client between rare requests connects again when a call returns [`Error::Closed`].

#[cfg(feature = "async")]
mod asynchronous;
pub mod blocking;
mod exchange;
#[cfg(feature = "http")]
pub mod http;
mod requests;
mod transport;

use std::path::PathBuf;

use dpop_protocol::WireError;

#[cfg(feature = "async")]
pub use asynchronous::Client;
pub use requests::{AdoptKey, ImportKey, NewKey, ProofRequest};

/// The environment variable that names the agent's socket.
pub const SOCKET_ENV: &str = "DPOP_AUTH_SOCK";

/// Longest reply accepted (a `list_keys` of many RSA keys is long).
const MAX_REPLY: u64 = 4 * 1024 * 1024;

/// What can go wrong talking to the agent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `DPOP_AUTH_SOCK` is not set and no agent socket is at the default place.
    #[error(
        "DPOP_AUTH_SOCK is not set and no agent listens at $XDG_RUNTIME_DIR/dpop-agent/agent.sock: start one with eval \"$(dpop-agent)\""
    )]
    NoSocket,
    /// The socket could not be reached.
    #[error("cannot connect to the agent at {path}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The process listening on the socket runs as another user (neither ours nor root):
    /// nothing was sent to it. Someone else may be listening where the agent was expected.
    #[cfg(unix)]
    #[error(
        "refusing to talk to {path}: the process listening there runs as uid {uid}, \
         not as this user (uid {euid}) or root"
    )]
    ForeignAgent {
        /// The socket path.
        path: PathBuf,
        /// The listener's uid.
        uid: u32,
        /// Our effective uid.
        euid: u32,
    },
    /// Windows: the process that created the agent's pipe runs as another user (neither ours
    /// nor LocalSystem): nothing was sent to it. Another user created the pipe first.
    #[cfg(windows)]
    #[error(
        "refusing to talk to {path}: the process that created this pipe runs as {sid}, \
         not as this user or LocalSystem"
    )]
    ForeignAgentUser {
        /// The pipe's path.
        path: PathBuf,
        /// The SID of the pipe server's user.
        sid: String,
    },
    /// Reading or writing the socket failed.
    #[error("talking to the agent")]
    Io(#[from] std::io::Error),
    /// The agent closed the connection: it refused us, stopped, or closed a connection that
    /// sent no request for 10 minutes. A long-lived application connects again.
    #[error("the agent closed the connection")]
    Closed,
    /// The agent's reply is not what the protocol says.
    #[error("unexpected reply from the agent: {0}")]
    Protocol(String),
    /// The agent answered with an error.
    #[error("agent error: {0}")]
    Agent(WireError),
}

// Not `#[from]`: that would also make the wire error the `source`, and error reports would
// print it twice.
impl From<WireError> for Error {
    fn from(e: WireError) -> Error {
        Error::Agent(e)
    }
}

impl Error {
    /// The agent's error code, when the agent answered with an error.
    pub fn code(&self) -> Option<dpop_protocol::ErrorCode> {
        match self {
            Error::Agent(e) => Some(e.code),
            _ => None,
        }
    }
}

/// The agent's socket: the one `DPOP_AUTH_SOCK` names, else the agent's default
/// `$XDG_RUNTIME_DIR/dpop-agent/agent.sock` when it exists (an agent started without `-a`, or
/// the systemd socket unit), as ssh clients look for `SSH_AUTH_SOCK`. On Windows the default
/// is this user's pipe, `\\.\pipe\dpop-agent-<SID>`.
pub fn socket_from_env() -> Result<PathBuf, Error> {
    if let Some(socket) = std::env::var_os(SOCKET_ENV).filter(|s| !s.is_empty()) {
        return Ok(PathBuf::from(socket));
    }
    transport::default_socket().ok_or(Error::NoSocket)
}
