use serde::{Deserialize, Serialize};

/// Stable error codes. Clients match on these, never on messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The line is not a JSON object.
    MalformedJson,
    /// The line is longer than 64 KiB.
    LineTooLong,
    /// A field is missing or has the wrong type.
    BadRequest,
    /// The `op` is not one this agent knows.
    UnknownOp,
    /// The key label breaks the naming rules.
    InvalidLabel,
    /// No key has this label.
    KeyNotFound,
    /// A key with this label exists.
    KeyExists,
    /// The URL cannot be used as `htu`.
    InvalidUrl,
    /// The HTTP method cannot be used as `htm`.
    InvalidMethod,
    /// The access token is not a valid token string.
    InvalidAccessToken,
    /// A nonce outside the `DPoP-Nonce` syntax or longer than the protocol allows.
    InvalidNonce,
    /// The private key given for import is unusable.
    InvalidKey,
    /// A PKCS#11 URI cannot be parsed or names another token or module.
    InvalidUri,
    /// A PKCS#11 URI matches more than one key.
    AmbiguousKey,
    /// The algorithm is not supported by the backend or token.
    UnsupportedAlgorithm,
    /// No such backend.
    UnknownBackend,
    /// The backend is not configured in this agent.
    BackendNotConfigured,
    /// The operation is not supported.
    Unsupported,
    /// The client is not allowed to talk to this agent.
    PermissionDenied,
    /// A key file does not decrypt with the agent's passphrase.
    WrongPassphrase,
    /// The token refused the PIN.
    PinIncorrect,
    /// The token's PIN is locked.
    PinLocked,
    /// The PKCS#11 token is not present.
    TokenNotPresent,
    /// The backend failed (token, TPM, disk).
    BackendError,
    /// A bug in the agent.
    Internal,
    /// The agent serves as many connections as it allows; it closes this one. Try again
    /// later.
    Busy,
    /// The agent is locked: signing and key changes wait for `unlock`.
    Locked,
    /// `unlock` of an agent that is not locked.
    NotLocked,
    /// The key's policy does not allow the request's origin.
    OriginNotAllowed,
    /// The key's policy does not allow this client executable.
    ClientNotAllowed,
    /// The key's lifetime is over.
    KeyExpired,
    /// The user said no (or nobody answered) when asked to confirm the signature.
    ConfirmDenied,
    /// A policy that cannot be used (a bad origin pattern, a relative client path).
    InvalidPolicy,
    /// A code this client does not know (a newer agent).
    #[serde(other)]
    Unknown,
}

impl std::fmt::Display for ErrorCode {
    /// The wire name (`key_not_found`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = serde_json::to_value(self).expect("codes serialize");
        f.write_str(name.as_str().expect("codes are strings"))
    }
}

/// The `error` member of a failed reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message} ({code})")]
pub struct WireError {
    /// Stable code.
    pub code: ErrorCode,
    /// Human-readable explanation; never holds secrets.
    pub message: String,
}

impl WireError {
    /// An error with a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> WireError {
        WireError {
            code,
            message: message.into(),
        }
    }
}

impl From<&dpop_jose::Error> for ErrorCode {
    fn from(e: &dpop_jose::Error) -> ErrorCode {
        use dpop_jose::Error as E;
        match e {
            E::InvalidUrl { .. } => ErrorCode::InvalidUrl,
            E::InvalidMethod { .. } => ErrorCode::InvalidMethod,
            E::InvalidAccessToken { .. } => ErrorCode::InvalidAccessToken,
            E::InvalidNonce => ErrorCode::InvalidNonce,
            E::UnsupportedAlgorithm { .. } => ErrorCode::UnsupportedAlgorithm,
            E::InvalidJwk { .. } => ErrorCode::InvalidKey,
            E::Signer(_) | E::SignatureLength { .. } => ErrorCode::BackendError,
            _ => ErrorCode::BadRequest,
        }
    }
}

impl From<&dpop_jose::Error> for WireError {
    fn from(e: &dpop_jose::Error) -> WireError {
        WireError::new(e.into(), e.to_string())
    }
}
