use dpop_jose::{Algorithm, Jwk};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{ErrorCode, WireError};

/// One request line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Echoed in the reply; any JSON value (clients use numbers).
    #[serde(default)]
    pub id: Value,
    /// What to do.
    #[serde(flatten)]
    pub op: Op,
}

/// The operations, tagged by `op`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Versions and backends.
    Hello {},
    /// Every key's public description.
    ListKeys {},
    /// Make a key inside a backend.
    GenerateKey(GenerateKey),
    /// Import a PEM private key into a backend.
    ImportKey(ImportKey),
    /// Adopt a key that already exists in a backend (a PKCS#11 URI today).
    AdoptKey(AdoptKey),
    /// Delete (or, for adopted keys, forget) a key.
    DeleteKey(DeleteKey),
    /// Sign a DPoP proof; the agent sets `iat` and `jti`.
    SignProof(SignProof),
    /// Remember a server's `DPoP-Nonce` for a key's proofs to that origin.
    ReportNonce(ReportNonce),
    /// The agent's state: pid, version, backends, lock, key count.
    Status {},
    /// Refuse every signing and key-changing request until `unlock` with the same passphrase.
    Lock(LockRequest),
    /// Undo `lock`.
    Unlock(LockRequest),
    /// Replace a key's policy.
    SetPolicy(SetPolicy),
}

/// The op names, for telling an unknown op from a malformed known one.
pub const OPS: [&str; 12] = [
    "hello",
    "list_keys",
    "generate_key",
    "import_key",
    "adopt_key",
    "delete_key",
    "sign_proof",
    "report_nonce",
    "status",
    "lock",
    "unlock",
    "set_policy",
];

/// `generate_key`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateKey {
    /// The new key's label.
    pub label: String,
    /// `software` (default), `pkcs11` or `tpm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// Algorithm (default ES256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<Algorithm>,
    /// The new key's policy (default: none, or the agent's default lifetime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<KeyPolicy>,
}

/// `import_key`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportKey {
    /// The new key's label.
    pub label: String,
    /// `software` (default) or `pkcs11`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// The PEM private key (PKCS#8, SEC1 or PKCS#1).
    pub pem: String,
    /// For RSA keys: RS256 (default) or PS256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<Algorithm>,
    /// The key's policy (default: none, or the agent's default lifetime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<KeyPolicy>,
}

impl std::fmt::Debug for ImportKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImportKey")
            .field("label", &self.label)
            .field("backend", &self.backend)
            .field("alg", &self.alg)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// `adopt_key`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdoptKey {
    /// The label to file the key under.
    pub label: String,
    /// Where the key is: an RFC 7512 PKCS#11 URI for `pkcs11`.
    pub uri: String,
    /// The backend that holds the key; absent: the agent derives it from the URI's scheme
    /// (`pkcs11:` is `pkcs11`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// For RSA keys: RS256 (default) or PS256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<Algorithm>,
    /// The key's policy (default: none, or the agent's default lifetime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<KeyPolicy>,
}

/// `delete_key`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteKey {
    /// The key's label.
    pub label: String,
}

/// `sign_proof`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignProof {
    /// The key's label.
    pub key: String,
    /// HTTP method, upper-case.
    pub htm: String,
    /// Request URL; the agent derives `htu` (query and fragment dropped).
    pub htu: String,
    /// Access token presented with the request; the agent puts its hash in `ath`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    /// Precomputed `ath`, for clients that keep the token to themselves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ath: Option<String>,
    /// The server's `DPoP-Nonce`; absent: the nonce reported for the URL's origin, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
}

/// `report_nonce`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportNonce {
    /// The key whose proofs carry the nonce.
    pub key: String,
    /// The server's origin, or any URL of it: only the scheme, host and port count.
    pub origin: String,
    /// The `DPoP-Nonce` value (RFC 9449 section 8 syntax, at most [`MAX_NONCE_LEN`] bytes).
    pub nonce: String,
}

/// What a key may be used for, enforced by the agent. Empty lists allow everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyPolicy {
    /// Origins whose proofs the key signs: `https://api.example.com`, `https://*.example.com`
    /// (any subdomain, not the domain itself), `http://localhost:8080`. Any other origin is
    /// refused with `origin_not_allowed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_origins: Vec<String>,
    /// Absolute paths of the client executables that may use the key (Linux:
    /// `/proc/<pid>/exe` of the peer). Others are refused with `client_not_allowed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_clients: Vec<String>,
    /// When the key stops signing (Unix seconds): `key_expired` after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// Ask the user (`DPOP_ASKPASS` / `SSH_ASKPASS`) before each signature.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub confirm: bool,
    /// With `confirm`: a yes is remembered for this many seconds for the same client process,
    /// at most [`MAX_CONFIRM_REMEMBER_SECS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm_remember_secs: Option<u64>,
}

/// The longest `confirm_remember_secs` the agent takes: a year. Longer is refused (the CLI
/// refuses it before sending), so that no clock arithmetic with it can overflow.
pub const MAX_CONFIRM_REMEMBER_SECS: u64 = 365 * 24 * 60 * 60;

impl KeyPolicy {
    /// True when the policy allows everything (nothing to show or store).
    pub fn is_empty(&self) -> bool {
        self == &KeyPolicy::default()
    }
}

/// `set_policy`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetPolicy {
    /// The key's label.
    pub key: String,
    /// Its new policy, replacing the old one.
    pub policy: KeyPolicy,
}

/// `lock` and `unlock`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockRequest {
    /// The lock passphrase (not the key store's): chosen at `lock`, needed for `unlock`.
    pub passphrase: String,
}

impl std::fmt::Debug for LockRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockRequest").finish_non_exhaustive()
    }
}

/// Longest `DPoP-Nonce` the agent takes (in `sign_proof` and `report_nonce`).
pub const MAX_NONCE_LEN: usize = dpop_jose::MAX_NONCE_LEN;

impl std::fmt::Debug for SignProof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignProof")
            .field("key", &self.key)
            .field("htm", &self.htm)
            .field("htu", &self.htu)
            .field(
                "access_token",
                &self.access_token.as_ref().map(|_| "<redacted>"),
            )
            .field("ath", &self.ath)
            .field("nonce", &self.nonce)
            .finish()
    }
}

/// A public key description, as `list_keys` and the key ops return it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyDescription {
    /// Label.
    pub label: String,
    /// Algorithm.
    pub alg: Algorithm,
    /// Backend name.
    pub backend: String,
    /// Public JWK.
    pub jwk: Jwk,
    /// RFC 7638 thumbprint.
    pub jkt: String,
    /// Whether it survives an agent restart.
    pub persistent: bool,
    /// Where the backend keeps it, when worth showing (a PKCS#11 URI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// For a PKCS#11 key: whether the token lets the private key only sign, as the agent read
    /// it back from the token (absent for other backends, whose keys are sign-only by
    /// construction, and when the token could not say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sign_only: Option<bool>,
    /// What else the token lets the private key do (`decrypt`, `unwrap`, `derive`,
    /// `sign_recover`) when it is not sign-only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub other_uses: Vec<String>,
    /// Origins for which the agent holds a server nonce for this key (`list_keys` only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nonce_origins: Vec<String>,
    /// The key's policy (absent: none).
    #[serde(default, skip_serializing_if = "KeyPolicy::is_empty")]
    pub policy: KeyPolicy,
}

/// Reply to `hello`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloReply {
    /// Protocol version.
    pub protocol: u32,
    /// Agent name and version.
    pub agent: String,
    /// Configured backends.
    pub backends: Vec<String>,
    /// Backends compiled into this agent, configured or not (absent from older agents).
    #[serde(default)]
    pub compiled_backends: Vec<String>,
    /// Whether software keys are saved to disk (a passphrase was given).
    pub software_persistent: bool,
}

/// Reply to `status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReply {
    /// Agent name and version.
    pub agent: String,
    /// Protocol version.
    pub protocol: u32,
    /// The agent's process id.
    pub pid: u32,
    /// Configured backends.
    pub backends: Vec<String>,
    /// Whether the agent is locked (`lock`).
    pub locked: bool,
    /// How many keys it serves.
    pub keys: usize,
    /// Whether software keys are saved to disk.
    pub software_persistent: bool,
}

/// Reply to `list_keys`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListKeysReply {
    /// Keys sorted by label.
    pub keys: Vec<KeyDescription>,
}

/// Reply to `generate_key`, `import_key`, `adopt_key`, `delete_key`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyReply {
    /// The key concerned.
    pub key: KeyDescription,
}

/// Reply to `sign_proof`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProofReply {
    /// The compact proof JWT.
    pub proof: String,
}

/// Reply to `report_nonce`: nothing but `ok`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmptyReply {}

/// A successful reply line: `{"id":..,"ok":true,<body fields>}`.
#[derive(Serialize)]
pub struct OkReply<'a, T: Serialize> {
    /// The request id.
    pub id: &'a Value,
    /// Always true.
    pub ok: bool,
    /// The op's result.
    #[serde(flatten)]
    pub body: T,
}

/// A failed reply line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrReply {
    /// The request id (`null` when the request could not be read).
    pub id: Value,
    /// Always false.
    pub ok: bool,
    /// What went wrong.
    pub error: WireError,
}

/// Any reply, as a client first reads it.
#[derive(Clone, Debug, Deserialize)]
pub struct Reply {
    /// The request id.
    #[serde(default)]
    pub id: Value,
    /// Success flag.
    pub ok: bool,
    /// Present when `ok` is false.
    #[serde(default)]
    pub error: Option<WireError>,
    /// The op's result fields.
    #[serde(flatten)]
    pub body: serde_json::Map<String, Value>,
}

/// Serializes a reply line (with its newline).
pub fn encode_ok<T: Serialize>(id: &Value, body: T) -> Vec<u8> {
    let mut line = serde_json::to_vec(&OkReply { id, ok: true, body }).expect("reply serializes");
    line.push(b'\n');
    line
}

/// Serializes an error reply line (with its newline).
pub fn encode_err(id: Value, error: WireError) -> Vec<u8> {
    let mut line = serde_json::to_vec(&ErrReply {
        id,
        ok: false,
        error,
    })
    .expect("reply serializes");
    line.push(b'\n');
    line
}

/// A request line that could not be read; answer with [`encode_err`].
#[derive(Clone, Debug, PartialEq)]
pub struct BadRequest {
    /// The id, when the line had one.
    pub id: Value,
    /// What is wrong.
    pub error: WireError,
}

/// Parses one request line (without its newline).
pub fn parse_request(line: &[u8]) -> Result<Request, BadRequest> {
    serde_json::from_slice::<Request>(line).map_err(|parse_error| {
        // Slow path: work out which error code fits.
        let value: Value = match serde_json::from_slice(line) {
            Ok(v) => v,
            Err(e) => {
                return BadRequest {
                    id: Value::Null,
                    error: WireError::new(ErrorCode::MalformedJson, format!("not JSON: {e}")),
                };
            }
        };
        let Value::Object(map) = value else {
            return BadRequest {
                id: Value::Null,
                error: WireError::new(ErrorCode::MalformedJson, "a request must be a JSON object"),
            };
        };
        let id = map.get("id").cloned().unwrap_or(Value::Null);
        let error = match map.get("op") {
            None => WireError::new(ErrorCode::BadRequest, "missing \"op\""),
            Some(Value::String(op)) if !OPS.contains(&op.as_str()) => WireError::new(
                ErrorCode::UnknownOp,
                format!("unknown op {:?}", op.chars().take(64).collect::<String>()),
            ),
            Some(Value::String(op)) => WireError::new(
                ErrorCode::BadRequest,
                format!("bad {op} request: {parse_error}"),
            ),
            Some(_) => WireError::new(ErrorCode::BadRequest, "\"op\" must be a string"),
        };
        BadRequest { id, error }
    })
}

/// Serializes a request line (with its newline).
pub fn encode_request(request: &Request) -> Vec<u8> {
    let mut line = serde_json::to_vec(request).expect("request serializes");
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let request = Request {
            id: 3.into(),
            op: Op::SignProof(SignProof {
                key: "k".into(),
                htm: "POST".into(),
                htu: "https://as.example/token".into(),
                access_token: None,
                ath: None,
                nonce: Some("n".into()),
            }),
        };
        let line = encode_request(&request);
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(parse_request(&line[..line.len() - 1]).unwrap(), request);
        let hello = parse_request(br#"{"op":"hello"}"#).unwrap();
        assert_eq!(hello.op, Op::Hello {});
        assert_eq!(hello.id, Value::Null);
    }

    #[test]
    fn additive_fields_are_optional() {
        // adopt_key without a backend: the agent derives it from the URI.
        let adopt =
            parse_request(br#"{"id":1,"op":"adopt_key","label":"a","uri":"pkcs11:x"}"#).unwrap();
        let Op::AdoptKey(adopt) = adopt.op else {
            panic!("not adopt_key")
        };
        assert_eq!(adopt.backend, None);
        let line = encode_request(&Request {
            id: 2.into(),
            op: Op::AdoptKey(adopt),
        });
        assert!(!String::from_utf8(line).unwrap().contains("backend"));
        let with = parse_request(
            br#"{"id":1,"op":"adopt_key","label":"a","uri":"pkcs11:x","backend":"pkcs11"}"#,
        )
        .unwrap();
        assert!(
            matches!(with.op, Op::AdoptKey(AdoptKey { backend: Some(b), .. }) if b == "pkcs11")
        );

        // A hello reply from an agent that does not report compiled-in backends.
        let old: HelloReply = serde_json::from_str(
            r#"{"protocol":1,"agent":"dpop-agent/0.1.0","backends":["software"],"software_persistent":false}"#,
        )
        .unwrap();
        assert!(old.compiled_backends.is_empty());

        // report_nonce round-trips; a key description without nonces does not mention them,
        // and one from an older agent reads as none.
        let report = Request {
            id: 4.into(),
            op: Op::ReportNonce(ReportNonce {
                key: "k".into(),
                origin: "https://as.example".into(),
                nonce: "n".into(),
            }),
        };
        let line = encode_request(&report);
        assert_eq!(parse_request(&line[..line.len() - 1]).unwrap(), report);
        let key: KeyDescription = serde_json::from_str(
            r#"{"label":"k","alg":"ES256","backend":"software","jwk":{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},"jkt":"j","persistent":false}"#,
        )
        .unwrap();
        assert!(key.nonce_origins.is_empty());
        assert!(!serde_json::to_string(&key).unwrap().contains("nonce"));
        // Nor sign_only: a software key has none, an older agent sends none.
        assert_eq!(key.sign_only, None);
        assert!(key.other_uses.is_empty());
        assert!(!serde_json::to_string(&key).unwrap().contains("sign_only"));
        assert!(!serde_json::to_string(&key).unwrap().contains("other_uses"));
        // A newer agent's members that a client does not know are ignored, so older clients
        // read descriptions that say sign_only.
        let mut newer = serde_json::to_value(&key).unwrap();
        newer["sign_only"] = false.into();
        newer["other_uses"] = serde_json::json!(["decrypt"]);
        newer["member_from_the_future"] = 1.into();
        let read: KeyDescription = serde_json::from_value(newer).unwrap();
        assert_eq!(read.sign_only, Some(false));
        assert_eq!(read.other_uses, ["decrypt"]);
    }

    #[test]
    fn error_codes() {
        let code = |line: &[u8]| parse_request(line).unwrap_err().error.code;
        assert_eq!(code(b"{not json"), ErrorCode::MalformedJson);
        assert_eq!(code(b"[1,2]"), ErrorCode::MalformedJson);
        assert_eq!(code(br#"{"id":1}"#), ErrorCode::BadRequest);
        assert_eq!(code(br#"{"id":1,"op":5}"#), ErrorCode::BadRequest);
        assert_eq!(code(br#"{"id":1,"op":"explode"}"#), ErrorCode::UnknownOp);
        assert_eq!(
            code(br#"{"id":1,"op":"sign_proof","key":"k"}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(br#"{"id":1,"op":"sign_proof","key":"k","htm":"GET","htu":"u","x":1}"#),
            ErrorCode::BadRequest
        );
        let bad = parse_request(br#"{"id":"abc","op":"nope"}"#).unwrap_err();
        assert_eq!(bad.id, Value::String("abc".into()));

        // `busy` (added for overload) is a wire name of its own.
        assert_eq!(ErrorCode::Busy.to_string(), "busy");
        let busy: ErrReply = serde_json::from_slice(&encode_err(
            Value::Null,
            WireError::new(ErrorCode::Busy, "full"),
        ))
        .unwrap();
        assert_eq!(busy.error.code, ErrorCode::Busy);
    }

    #[test]
    fn replies() {
        let ok = encode_ok(
            &Value::from(9),
            ProofReply {
                proof: "a.b.c".into(),
            },
        );
        assert_eq!(ok, b"{\"id\":9,\"ok\":true,\"proof\":\"a.b.c\"}\n");
        let err = encode_err(
            Value::Null,
            WireError::new(ErrorCode::KeyNotFound, "no key"),
        );
        let reply: Reply = serde_json::from_slice(&err).unwrap();
        assert!(!reply.ok);
        assert_eq!(reply.error.unwrap().code, ErrorCode::KeyNotFound);
    }
}
