//! A synchronous client, for code without an async runtime. It needs no tokio: it works with
//! `default-features = false`.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use dpop_protocol::{HelloReply, KeyDescription, KeyPolicy, StatusReply};

use crate::exchange::{Call, Exchange};
use crate::transport::{Stream, connect, peer_closed, spin_until_readable};
use crate::{AdoptKey, Error, ImportKey, MAX_REPLY, NewKey, ProofRequest, socket_from_env};

/// A blocking connection to the agent. Requests run one after another; open several clients
/// for parallel requests.
///
/// A connection the agent has closed while it was idle (it closes connections that send
/// nothing for ten minutes, and a restarted agent's old connections are gone) is opened again,
/// with the same check of the agent's user, before the next request is sent; a request is
/// never sent twice.
#[derive(Debug)]
pub struct Client {
    path: PathBuf,
    stream: BufReader<Stream>,
    exchange: Exchange,
    line: Vec<u8>,
    spin: Duration,
}

impl Client {
    /// Connects to the agent at `path`.
    pub fn connect(path: impl AsRef<Path>) -> Result<Client, Error> {
        let stream = connect(path.as_ref())?;
        Ok(Client {
            path: path.as_ref().to_owned(),
            stream: BufReader::new(stream),
            exchange: Exchange::new(),
            line: Vec::with_capacity(1024),
            spin: Duration::ZERO,
        })
    }

    /// Connects to the agent named by `DPOP_AUTH_SOCK`.
    pub fn connect_env() -> Result<Client, Error> {
        Client::connect(socket_from_env()?)
    }

    /// Polls for each reply for up to `spin` before sleeping in `read` (off by default).
    ///
    /// Waking a sleeping thread costs more than a software-key proof takes, so a thread that
    /// sends requests back to back gets its proofs sooner with about 200 us; against a slow
    /// token (milliseconds per signature) polling only burns CPU.
    /// On Windows (a named pipe) it does nothing.
    pub fn set_spin(&mut self, spin: Duration) {
        self.spin = spin;
    }

    fn read_reply(&mut self) -> std::io::Result<usize> {
        self.line.clear();
        (&mut self.stream)
            .take(MAX_REPLY)
            .read_until(b'\n', &mut self.line)
    }

    fn run<T>(&mut self, call: Call<T>) -> Result<T, Error> {
        // Unread bytes or a closed connection: the agent is done with it (see the type's docs).
        if !self.stream.buffer().is_empty() || peer_closed(self.stream.get_ref()) {
            self.stream = BufReader::new(connect(&self.path)?);
        }
        let pending = self.exchange.start(call);
        if let Err(e) = self.stream.get_mut().write_all(pending.line()) {
            // The agent may have answered and closed (a refusal): show its answer if so.
            let _ = self.read_reply();
            return Err(pending.write_failed(&self.line, e));
        }
        if self.stream.buffer().is_empty() {
            spin_until_readable(self.stream.get_ref(), self.spin);
        }
        self.read_reply()?;
        pending.finish(&self.line)
    }

    /// Agent version and backends.
    pub fn hello(&mut self) -> Result<HelloReply, Error> {
        self.run(Call::hello())
    }

    /// Every key, sorted by label.
    pub fn list_keys(&mut self) -> Result<Vec<KeyDescription>, Error> {
        self.run(Call::list_keys())
    }

    /// Generates a key: a label alone (software, ES256, no policy), or a [`NewKey`] with
    /// the backend, algorithm and policy.
    pub fn generate_key<'a>(
        &mut self,
        key: impl Into<NewKey<'a>>,
    ) -> Result<KeyDescription, Error> {
        self.run(Call::generate_key(&key.into()))
    }

    /// Imports a PEM private key; the client's copy of it is wiped once sent.
    pub fn import_key(&mut self, key: ImportKey<'_>) -> Result<KeyDescription, Error> {
        self.run(Call::import_key(&key))
    }

    /// Adopts an existing key by URI (an RFC 7512 PKCS#11 URI, or a persistent TPM key's
    /// handle); the agent picks the backend from the URI's scheme.
    pub fn adopt_key(&mut self, key: AdoptKey<'_>) -> Result<KeyDescription, Error> {
        self.run(Call::adopt_key(&key))
    }

    /// Deletes a key (adopted keys are only forgotten).
    pub fn delete_key(&mut self, label: &str) -> Result<KeyDescription, Error> {
        self.run(Call::delete_key(label))
    }

    /// A compact DPoP proof for one request, signed by `key`. The agent sets `iat` and `jti`.
    pub fn sign_proof(&mut self, key: &str, request: &ProofRequest<'_>) -> Result<String, Error> {
        self.run(Call::sign_proof(key, request))
    }

    /// Remembers a server's `DPoP-Nonce` for `key`'s proofs to `origin` (an origin, or any
    /// URL of it: only the scheme, host and port count). Later proofs for that origin that
    /// give no nonce of their own carry it, whichever process asks: report every `DPoP-Nonce`
    /// a response carries.
    pub fn report_nonce(&mut self, key: &str, origin: &str, nonce: &str) -> Result<(), Error> {
        self.run(Call::report_nonce(key, origin, nonce))
    }

    /// Replaces `key`'s policy; returns the key with its new policy.
    pub fn set_policy(&mut self, key: &str, policy: &KeyPolicy) -> Result<KeyDescription, Error> {
        self.run(Call::set_policy(key, policy))
    }

    /// The agent's pid, version, backends, lock state and key count.
    pub fn status(&mut self) -> Result<StatusReply, Error> {
        self.run(Call::status())
    }

    /// Locks the agent: it refuses every signing and key-changing request (`locked`) until
    /// [`unlock`](Self::unlock) with the same passphrase.
    pub fn lock(&mut self, passphrase: &str) -> Result<(), Error> {
        self.run(Call::lock(passphrase))
    }

    /// Unlocks the agent. A wrong passphrase is answered late, later after each wrong one.
    pub fn unlock(&mut self, passphrase: &str) -> Result<(), Error> {
        self.run(Call::unlock(passphrase))
    }
}
