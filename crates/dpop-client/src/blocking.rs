//! A synchronous client, for code without an async runtime.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use dpop_jose::Algorithm;
use dpop_protocol::{HelloReply, KeyDescription, KeyReply, ListKeysReply, Op, ProofReply};
use serde::de::DeserializeOwned;

use crate::{
    Error, MAX_REPLY, decode_reply, ops, request_line, socket_from_env, spin_until_readable,
    write_failed,
};

/// A blocking connection to the agent.
#[derive(Debug)]
pub struct Client {
    stream: BufReader<UnixStream>,
    next_id: u64,
    line: Vec<u8>,
    spin: Duration,
}

/// How long the blocking client polls for a reply before it sleeps in `read`: longer than a
/// software-key proof takes, short enough to be free for a thread that waits anyway.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(200);

impl Client {
    /// Connects to the agent at `path`.
    pub fn connect(path: impl AsRef<Path>) -> Result<Client, Error> {
        let path = path.as_ref();
        let stream = UnixStream::connect(path).map_err(|source| Error::Connect {
            path: path.to_owned(),
            source,
        })?;
        Ok(Client {
            stream: BufReader::new(stream),
            next_id: 1,
            line: Vec::with_capacity(1024),
            spin: DEFAULT_SPIN,
        })
    }

    /// Sets how long to poll for each reply before sleeping ([`DEFAULT_SPIN`]; zero turns
    /// polling off).
    pub fn set_spin(&mut self, spin: Duration) {
        self.spin = spin;
    }

    /// Connects to the agent named by `DPOP_AUTH_SOCK`.
    pub fn connect_env() -> Result<Client, Error> {
        Client::connect(socket_from_env()?)
    }

    fn call<T: DeserializeOwned>(&mut self, op: Op) -> Result<T, Error> {
        let id = self.next_id;
        self.next_id += 1;
        let line = request_line(id, op);
        if let Err(e) = self.stream.get_mut().write_all(&line) {
            // The agent may have answered and closed (a refusal): show its answer if so.
            self.line.clear();
            let _ = (&mut self.stream)
                .take(MAX_REPLY)
                .read_until(b'\n', &mut self.line);
            return Err(write_failed(&self.line, id, e));
        }
        if self.stream.buffer().is_empty() {
            spin_until_readable(self.stream.get_ref().as_raw_fd(), self.spin);
        }
        self.line.clear();
        (&mut self.stream)
            .take(MAX_REPLY)
            .read_until(b'\n', &mut self.line)?;
        decode_reply(&self.line, id)
    }

    /// Agent version and backends.
    pub fn hello(&mut self) -> Result<HelloReply, Error> {
        self.call(Op::Hello {})
    }

    /// Every key, sorted by label.
    pub fn list_keys(&mut self) -> Result<Vec<KeyDescription>, Error> {
        Ok(self.call::<ListKeysReply>(Op::ListKeys {})?.keys)
    }

    /// Generates a key (`backend` defaults to software, `alg` to ES256).
    pub fn generate_key(
        &mut self,
        label: &str,
        backend: Option<&str>,
        alg: Option<Algorithm>,
    ) -> Result<KeyDescription, Error> {
        Ok(self
            .call::<KeyReply>(ops::generate(label, backend, alg))?
            .key)
    }

    /// Imports a PEM private key.
    pub fn import_key(
        &mut self,
        label: &str,
        backend: Option<&str>,
        pem: &str,
        alg: Option<Algorithm>,
    ) -> Result<KeyDescription, Error> {
        Ok(self
            .call::<KeyReply>(ops::import(label, backend, pem, alg))?
            .key)
    }

    /// Adopts an existing PKCS#11 key by RFC 7512 URI.
    pub fn adopt_key(
        &mut self,
        uri: &str,
        label: &str,
        alg: Option<Algorithm>,
    ) -> Result<KeyDescription, Error> {
        Ok(self.call::<KeyReply>(ops::adopt(uri, label, alg))?.key)
    }

    /// Deletes a key (adopted keys are only forgotten).
    pub fn delete_key(&mut self, label: &str) -> Result<KeyDescription, Error> {
        Ok(self.call::<KeyReply>(ops::delete(label))?.key)
    }

    /// A compact DPoP proof for one request, signed by `key`.
    pub fn sign_proof(
        &mut self,
        key: &str,
        method: &str,
        url: &str,
        access_token: Option<&str>,
        nonce: Option<&str>,
    ) -> Result<String, Error> {
        Ok(self
            .call::<ProofReply>(ops::sign(key, method, url, access_token, nonce))?
            .proof)
    }
}
