//! The sans-I/O half of both clients: request lines with ids (secrets wiped), reply lines
//! checked against those ids and decoded into each op's result. The clients only move bytes.

use dpop_protocol::{
    self as wire, DeleteKey, HelloReply, KeyDescription, KeyPolicy, KeyReply, ListKeysReply,
    LockRequest, Op, ProofReply, Reply, ReportNonce, Request, SetPolicy, SignProof, StatusReply,
};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use zeroize::{Zeroize, Zeroizing};

use crate::Error;
use crate::requests::{AdoptKey, ImportKey, NewKey, ProofRequest, TokenBinding};

/// How a reply's body fields become the op's result.
type Output<T> = fn(Map<String, Value>) -> Result<T, serde_json::Error>;

/// One request to the agent, typed by what its reply yields. Each op is written once, here;
/// both clients run it.
pub(crate) struct Call<T> {
    op: Op,
    output: Output<T>,
}

fn body<R: DeserializeOwned>(fields: Map<String, Value>) -> Result<R, serde_json::Error> {
    serde_json::from_value(Value::Object(fields))
}

impl Call<HelloReply> {
    pub(crate) fn hello() -> Self {
        Call {
            op: Op::Hello {},
            output: body,
        }
    }
}

impl Call<Vec<KeyDescription>> {
    pub(crate) fn list_keys() -> Self {
        Call {
            op: Op::ListKeys {},
            output: |fields| body::<ListKeysReply>(fields).map(|reply| reply.keys),
        }
    }
}

impl Call<KeyDescription> {
    fn key_op(op: Op) -> Self {
        Call {
            op,
            output: |fields| body::<KeyReply>(fields).map(|reply| reply.key),
        }
    }

    pub(crate) fn generate_key(key: &NewKey<'_>) -> Self {
        Call::key_op(Op::GenerateKey(wire::GenerateKey {
            label: key.label.to_owned(),
            backend: key.backend.map(str::to_owned),
            alg: key.alg,
            policy: key.policy.cloned(),
        }))
    }

    pub(crate) fn import_key(key: &ImportKey<'_>) -> Self {
        Call::key_op(Op::ImportKey(wire::ImportKey {
            label: key.label.to_owned(),
            backend: key.backend.map(str::to_owned),
            pem: key.pem.to_owned(),
            alg: key.alg,
            policy: key.policy.cloned(),
        }))
    }

    pub(crate) fn adopt_key(key: &AdoptKey<'_>) -> Self {
        Call::key_op(Op::AdoptKey(wire::AdoptKey {
            label: key.label.to_owned(),
            uri: key.uri.to_owned(),
            // The agent tells the backend from the URI's scheme.
            backend: None,
            alg: key.alg,
            policy: key.policy.cloned(),
        }))
    }

    pub(crate) fn set_policy(key: &str, policy: &KeyPolicy) -> Self {
        Call::key_op(Op::SetPolicy(SetPolicy {
            key: key.to_owned(),
            policy: policy.clone(),
        }))
    }

    pub(crate) fn delete_key(label: &str) -> Self {
        Call::key_op(Op::DeleteKey(DeleteKey {
            label: label.to_owned(),
        }))
    }
}

impl Call<String> {
    pub(crate) fn sign_proof(key: &str, request: &ProofRequest<'_>) -> Self {
        let (access_token, ath) = match request.token {
            Some(TokenBinding::AccessToken(token)) => (Some(token.to_owned()), None),
            Some(TokenBinding::Ath(ath)) => (None, Some(ath.to_owned())),
            None => (None, None),
        };
        Call {
            op: Op::SignProof(SignProof {
                key: key.to_owned(),
                htm: request.method.to_owned(),
                htu: request.url.to_owned(),
                access_token,
                ath,
                nonce: request.nonce.map(str::to_owned),
            }),
            output: |fields| body::<ProofReply>(fields).map(|reply| reply.proof),
        }
    }
}

impl Call<StatusReply> {
    pub(crate) fn status() -> Self {
        Call {
            op: Op::Status {},
            output: body,
        }
    }
}

impl Call<()> {
    pub(crate) fn lock(passphrase: &str) -> Self {
        Call {
            op: Op::Lock(LockRequest {
                passphrase: passphrase.to_owned(),
            }),
            output: |_| Ok(()),
        }
    }

    pub(crate) fn unlock(passphrase: &str) -> Self {
        Call {
            op: Op::Unlock(LockRequest {
                passphrase: passphrase.to_owned(),
            }),
            output: |_| Ok(()),
        }
    }

    pub(crate) fn report_nonce(key: &str, origin: &str, nonce: &str) -> Self {
        Call {
            op: Op::ReportNonce(ReportNonce {
                key: key.to_owned(),
                origin: origin.to_owned(),
                nonce: nonce.to_owned(),
            }),
            output: |_| Ok(()),
        }
    }
}

/// The request side of one connection: hands out request ids.
#[derive(Debug)]
pub(crate) struct Exchange {
    next_id: u64,
}

impl Exchange {
    pub(crate) fn new() -> Exchange {
        Exchange { next_id: 1 }
    }

    /// Encodes `call` with the next id. Secrets in the message (a private key, an access
    /// token) are wiped once encoded; the line is wiped when the [`Pending`] is dropped.
    pub(crate) fn start<T>(&mut self, call: Call<T>) -> Pending<T> {
        let id = self.next_id;
        self.next_id += 1;
        let mut request = Request {
            id: id.into(),
            op: call.op,
        };
        // Room for the whole line up front, so that growing the buffer leaves no copy of the
        // secret behind: PEM text and tokens at most double when escaped (newlines).
        let capacity = 1024 + 2 * secret_mut(&mut request.op).map_or(0, |s| s.len());
        let mut line = Zeroizing::new(Vec::with_capacity(capacity));
        serde_json::to_writer(&mut *line, &request).expect("requests serialize");
        line.push(b'\n');
        if let Some(secret) = secret_mut(&mut request.op) {
            secret.zeroize();
        }
        Pending {
            id,
            line,
            output: call.output,
        }
    }
}

/// The secret a request carries, if any: a private key to import, an access token, a lock
/// passphrase.
fn secret_mut(op: &mut Op) -> Option<&mut String> {
    match op {
        Op::ImportKey(import) => Some(&mut import.pem),
        Op::SignProof(sign) => sign.access_token.as_mut(),
        Op::Lock(lock) | Op::Unlock(lock) => Some(&mut lock.passphrase),
        _ => None,
    }
}

/// A request on its way: its line to send, then its reply to read.
pub(crate) struct Pending<T> {
    id: u64,
    line: Zeroizing<Vec<u8>>,
    output: Output<T>,
}

impl<T> Pending<T> {
    /// The request line, newline included.
    pub(crate) fn line(&self) -> &[u8] {
        &self.line
    }

    /// Checks the reply line (as read, newline included; empty at end of stream) and decodes
    /// the op's result.
    pub(crate) fn finish(self, reply: &[u8]) -> Result<T, Error> {
        let fields = decode_reply(reply, self.id)?;
        (self.output)(fields).map_err(|e| Error::Protocol(format!("reply body: {e}")))
    }

    /// The error for a failed request write: the agent's own answer when it sent one before
    /// closing (a refusal, read into `reply`), else the I/O error.
    pub(crate) fn write_failed(self, reply: &[u8], e: std::io::Error) -> Error {
        match decode_reply(reply, self.id) {
            Err(Error::Agent(refusal)) => Error::Agent(refusal),
            _ => Error::Io(e),
        }
    }
}

/// Checks a reply line against the request id and returns its body fields.
fn decode_reply(line: &[u8], id: u64) -> Result<Map<String, Value>, Error> {
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
    Ok(reply.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent<T>(pending: &Pending<T>) -> Value {
        serde_json::from_slice(pending.line()).unwrap()
    }

    #[test]
    fn ids_count_up_and_replies_must_match() {
        let mut exchange = Exchange::new();
        let first = exchange.start(Call::hello());
        let second = exchange.start(Call::list_keys());
        assert_eq!(sent(&first)["id"], 1);
        assert_eq!(sent(&second)["id"], 2);
        assert_eq!(first.line().last(), Some(&b'\n'));
        let keys = second.finish(br#"{"id":2,"ok":true,"keys":[]}"#).unwrap();
        assert!(keys.is_empty());
        let wrong = first.finish(br#"{"id":9,"ok":true,"protocol":1}"#);
        assert!(matches!(wrong, Err(Error::Protocol(m)) if m.contains("does not match")));
    }

    #[test]
    fn errors_closed_and_refusals() {
        let mut exchange = Exchange::new();
        let refused = exchange.start(Call::delete_key("k")).finish(
            br#"{"id":null,"ok":false,"error":{"code":"permission_denied","message":"no"}}"#,
        );
        assert_eq!(
            refused.unwrap_err().code(),
            Some(dpop_protocol::ErrorCode::PermissionDenied)
        );
        let closed = exchange.start(Call::hello()).finish(b"");
        assert!(matches!(closed, Err(Error::Closed)));
        let broken = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        let io = exchange.start(Call::hello()).write_failed(b"", broken);
        assert!(matches!(io, Error::Io(_)));
    }

    #[test]
    fn proof_requests() {
        let mut exchange = Exchange::new();
        let plain = ProofRequest::new("GET", "https://rs.example/x");
        let line = sent(&exchange.start(Call::sign_proof("k", &plain)));
        assert_eq!(line["op"], "sign_proof");
        assert_eq!(line["htm"], "GET");
        assert_eq!(line["htu"], "https://rs.example/x");
        for absent in ["access_token", "ath", "nonce"] {
            assert!(line.get(absent).is_none(), "{absent} sent");
        }

        let with_token = plain.access_token("secret-token").nonce("n");
        let line = sent(&exchange.start(Call::sign_proof("k", &with_token)));
        assert_eq!(line["access_token"], "secret-token");
        assert_eq!(line["nonce"], "n");
        assert!(line.get("ath").is_none());

        // The later binding wins: a proof never carries both.
        let with_ath = with_token.ath("hash");
        let line = sent(&exchange.start(Call::sign_proof("k", &with_ath)));
        assert_eq!(line["ath"], "hash");
        assert!(line.get("access_token").is_none());
        assert!(!format!("{with_token:?}").contains("secret-token"));
    }

    #[test]
    fn key_requests() {
        let mut exchange = Exchange::new();
        let line = sent(&exchange.start(Call::generate_key(&"plain".into())));
        assert_eq!(line["op"], "generate_key");
        assert_eq!(line["label"], "plain");
        for absent in ["backend", "alg", "policy"] {
            assert!(line.get(absent).is_none(), "{absent} sent");
        }

        let policy = KeyPolicy {
            allow_origins: vec!["https://rs.example".into()],
            ..KeyPolicy::default()
        };
        let full = NewKey::new("hsm")
            .backend("pkcs11")
            .alg(dpop_jose::Algorithm::ES384)
            .policy(&policy);
        let line = sent(&exchange.start(Call::generate_key(&full)));
        assert_eq!(line["backend"], "pkcs11");
        assert_eq!(line["alg"], "ES384");
        assert_eq!(line["policy"]["allow_origins"][0], "https://rs.example");

        let pem = "-----BEGIN PRIVATE KEY-----\nsecret\n-----END PRIVATE KEY-----\n";
        let import = ImportKey::new("imported", pem)
            .backend("pkcs11")
            .alg(dpop_jose::Algorithm::PS256);
        assert!(!format!("{import:?}").contains("secret"));
        let line = sent(&exchange.start(Call::import_key(&import)));
        assert_eq!(line["op"], "import_key");
        assert_eq!(line["label"], "imported");
        assert_eq!(line["pem"], pem);
        assert_eq!(line["backend"], "pkcs11");
        assert_eq!(line["alg"], "PS256");
        assert!(line.get("policy").is_none());

        let adopt = AdoptKey::new("adopted", "pkcs11:object=k").policy(&policy);
        let line = sent(&exchange.start(Call::adopt_key(&adopt)));
        assert_eq!(line["op"], "adopt_key");
        assert_eq!(line["label"], "adopted");
        assert_eq!(line["uri"], "pkcs11:object=k");
        assert!(line.get("backend").is_none(), "the agent picks the backend");
        assert_eq!(line["policy"], serde_json::to_value(&policy).unwrap());
    }

    #[test]
    fn report_nonce() {
        let mut exchange = Exchange::new();
        let pending = exchange.start(Call::report_nonce("k", "https://as.example/token", "n-1"));
        let line = sent(&pending);
        assert_eq!(line["op"], "report_nonce");
        assert_eq!(line["key"], "k");
        assert_eq!(line["origin"], "https://as.example/token");
        assert_eq!(line["nonce"], "n-1");
        pending.finish(br#"{"id":1,"ok":true}"#).unwrap();
    }
}
