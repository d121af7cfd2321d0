//! Clients of dpop-agent. Ask the agent for DPoP proofs (RFC 9449) and manage its keys over
//! its Unix socket; the private keys never leave the agent.
//!
//! [`Client`] is async (tokio), [`blocking::Client`] is for synchronous code. Both find the
//! agent through `DPOP_AUTH_SOCK` ([`Client::connect_env`]) or an explicit path.
//!
//! ```no_run
//! # async fn demo() -> Result<(), dpop_client::Error> {
//! let mut agent = dpop_client::Client::connect_env().await?;
//! let proof = agent
//!     .sign_proof("my-key", "GET", "https://api.example.com/v1/items", Some("access-token"), None)
//!     .await?;
//! println!("DPoP: {proof}");
//! # Ok(()) }
//! ```

pub mod blocking;

use std::path::{Path, PathBuf};

use dpop_jose::Algorithm;
use dpop_protocol::{
    AdoptKey, DeleteKey, GenerateKey, HelloReply, ImportKey, KeyDescription, KeyReply,
    ListKeysReply, Op, ProofReply, Reply, Request, SignProof, WireError, encode_request,
};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// The environment variable that names the agent's socket.
pub const SOCKET_ENV: &str = "DPOP_AUTH_SOCK";

/// Longest reply accepted (a `list_keys` of many RSA keys is long).
const MAX_REPLY: u64 = 4 * 1024 * 1024;

/// What can go wrong talking to the agent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `DPOP_AUTH_SOCK` is not set.
    #[error("DPOP_AUTH_SOCK is not set: start an agent with eval \"$(dpop-agent)\"")]
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
    /// Reading or writing the socket failed.
    #[error("talking to the agent")]
    Io(#[from] std::io::Error),
    /// The agent closed the connection (it refused us, or stopped).
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

/// The socket named by `DPOP_AUTH_SOCK`.
pub fn socket_from_env() -> Result<PathBuf, Error> {
    std::env::var_os(SOCKET_ENV)
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .ok_or(Error::NoSocket)
}

/// The request shapes, shared by both clients.
pub(crate) mod ops {
    use super::*;

    pub fn generate(label: &str, backend: Option<&str>, alg: Option<Algorithm>) -> Op {
        Op::GenerateKey(GenerateKey {
            label: label.to_owned(),
            backend: backend.map(str::to_owned),
            alg,
        })
    }

    pub fn import(label: &str, backend: Option<&str>, pem: &str, alg: Option<Algorithm>) -> Op {
        Op::ImportKey(ImportKey {
            label: label.to_owned(),
            backend: backend.map(str::to_owned),
            pem: pem.to_owned(),
            alg,
        })
    }

    pub fn adopt(uri: &str, label: &str, alg: Option<Algorithm>) -> Op {
        Op::AdoptKey(AdoptKey {
            label: label.to_owned(),
            uri: uri.to_owned(),
            alg,
        })
    }

    pub fn delete(label: &str) -> Op {
        Op::DeleteKey(DeleteKey {
            label: label.to_owned(),
        })
    }

    pub fn sign(
        key: &str,
        method: &str,
        url: &str,
        access_token: Option<&str>,
        nonce: Option<&str>,
    ) -> Op {
        Op::SignProof(SignProof {
            key: key.to_owned(),
            htm: method.to_owned(),
            htu: url.to_owned(),
            access_token: access_token.map(str::to_owned),
            ath: None,
            nonce: nonce.map(str::to_owned),
        })
    }
}

/// Builds a request line; a private key inside (import) is wiped from the message, and the
/// line itself is wiped when dropped.
pub(crate) fn request_line(id: u64, op: Op) -> zeroize::Zeroizing<Vec<u8>> {
    let mut request = Request { id: id.into(), op };
    let line = zeroize::Zeroizing::new(encode_request(&request));
    if let Op::ImportKey(import) = &mut request.op {
        zeroize::Zeroize::zeroize(&mut import.pem);
    }
    line
}

/// Waits for the reply by polling the socket for up to `spin` before the caller blocks.
///
/// An agent answers a software-key proof in about 15 us, but waking a thread that sleeps in
/// `read` costs 20 to 40 us on virtual machines, more than the work itself. A short bounded
/// poll (`MSG_PEEK | MSG_DONTWAIT`, nothing is consumed) avoids that sleep.
pub(crate) fn spin_until_readable(fd: std::os::fd::RawFd, spin: std::time::Duration) {
    if spin.is_zero() {
        return;
    }
    let deadline = std::time::Instant::now() + spin;
    let mut byte = 0u8;
    loop {
        // SAFETY: peeking one byte into a valid local buffer on a socket we own.
        let n = unsafe {
            libc::recv(
                fd,
                (&raw mut byte).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock {
            return; // data, end of stream or an error: the real read reports it
        }
        if std::time::Instant::now() >= deadline {
            return;
        }
        std::hint::spin_loop();
    }
}

/// The error for a failed request write: the agent's own answer when it sent one before
/// closing (a refusal), else the I/O error.
pub(crate) fn write_failed(reply: &[u8], id: u64, e: std::io::Error) -> Error {
    match decode_reply::<serde_json::Value>(reply, id) {
        Err(Error::Agent(refusal)) => Error::Agent(refusal),
        _ => Error::Io(e),
    }
}

/// Checks a reply line against the request id and decodes its body.
pub(crate) fn decode_reply<T: DeserializeOwned>(line: &[u8], id: u64) -> Result<T, Error> {
    if line.is_empty() {
        return Err(Error::Closed);
    }
    let reply: Reply = serde_json::from_slice(line)
        .map_err(|e| Error::Protocol(format!("reply is not a JSON reply object: {e}")))?;
    if !reply.ok {
        return Err(Error::Agent(reply.error.ok_or_else(|| {
            Error::Protocol("failed reply without an error member".into())
        })?));
    }
    if reply.id != id {
        return Err(Error::Protocol(format!(
            "reply id {} does not match request id {id}",
            reply.id
        )));
    }
    serde_json::from_value(serde_json::Value::Object(reply.body))
        .map_err(|e| Error::Protocol(format!("reply body: {e}")))
}

/// An async connection to the agent. Requests on one client run one after another; open
/// several clients for parallel requests.
#[derive(Debug)]
pub struct Client {
    stream: BufReader<UnixStream>,
    next_id: u64,
    line: Vec<u8>,
    spin: std::time::Duration,
}

impl Client {
    /// Connects to the agent at `path`.
    pub async fn connect(path: impl AsRef<Path>) -> Result<Client, Error> {
        let path = path.as_ref();
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| Error::Connect {
                path: path.to_owned(),
                source,
            })?;
        Ok(Client {
            stream: BufReader::new(stream),
            next_id: 1,
            line: Vec::with_capacity(1024),
            spin: std::time::Duration::ZERO,
        })
    }

    /// Connects to the agent named by `DPOP_AUTH_SOCK`.
    pub async fn connect_env() -> Result<Client, Error> {
        Client::connect(socket_from_env()?).await
    }

    /// Polls for each reply for up to `spin` before yielding to the runtime (off by default).
    /// This trades a little CPU, on the runtime's thread, for latency when one task sends
    /// requests back to back; leave it off when many tasks share few threads.
    pub fn set_spin(&mut self, spin: std::time::Duration) {
        self.spin = spin;
    }

    async fn call<T: DeserializeOwned>(&mut self, op: Op) -> Result<T, Error> {
        let id = self.next_id;
        self.next_id += 1;
        let line = request_line(id, op);
        if let Err(e) = self.stream.get_mut().write_all(&line).await {
            // The agent may have answered and closed (a refusal): show its answer if so.
            self.line.clear();
            let _ = (&mut self.stream)
                .take(MAX_REPLY)
                .read_until(b'\n', &mut self.line)
                .await;
            return Err(write_failed(&self.line, id, e));
        }
        if self.stream.buffer().is_empty() {
            spin_until_readable(
                std::os::fd::AsRawFd::as_raw_fd(self.stream.get_ref()),
                self.spin,
            );
        }
        self.line.clear();
        (&mut self.stream)
            .take(MAX_REPLY)
            .read_until(b'\n', &mut self.line)
            .await?;
        decode_reply(&self.line, id)
    }

    /// Agent version and backends.
    pub async fn hello(&mut self) -> Result<HelloReply, Error> {
        self.call(Op::Hello {}).await
    }

    /// Every key, sorted by label.
    pub async fn list_keys(&mut self) -> Result<Vec<KeyDescription>, Error> {
        Ok(self.call::<ListKeysReply>(Op::ListKeys {}).await?.keys)
    }

    /// Generates a key (`backend` defaults to software, `alg` to ES256).
    pub async fn generate_key(
        &mut self,
        label: &str,
        backend: Option<&str>,
        alg: Option<Algorithm>,
    ) -> Result<KeyDescription, Error> {
        Ok(self
            .call::<KeyReply>(ops::generate(label, backend, alg))
            .await?
            .key)
    }

    /// Imports a PEM private key.
    pub async fn import_key(
        &mut self,
        label: &str,
        backend: Option<&str>,
        pem: &str,
        alg: Option<Algorithm>,
    ) -> Result<KeyDescription, Error> {
        Ok(self
            .call::<KeyReply>(ops::import(label, backend, pem, alg))
            .await?
            .key)
    }

    /// Adopts an existing PKCS#11 key by RFC 7512 URI.
    pub async fn adopt_key(
        &mut self,
        uri: &str,
        label: &str,
        alg: Option<Algorithm>,
    ) -> Result<KeyDescription, Error> {
        Ok(self
            .call::<KeyReply>(ops::adopt(uri, label, alg))
            .await?
            .key)
    }

    /// Deletes a key (adopted keys are only forgotten).
    pub async fn delete_key(&mut self, label: &str) -> Result<KeyDescription, Error> {
        Ok(self.call::<KeyReply>(ops::delete(label)).await?.key)
    }

    /// A compact DPoP proof for one request, signed by `key`. The agent sets `iat` and `jti`
    /// and derives `htu` from `url` and `ath` from `access_token`.
    pub async fn sign_proof(
        &mut self,
        key: &str,
        method: &str,
        url: &str,
        access_token: Option<&str>,
        nonce: Option<&str>,
    ) -> Result<String, Error> {
        Ok(self
            .call::<ProofReply>(ops::sign(key, method, url, access_token, nonce))
            .await?
            .proof)
    }
}
