/// Everything that can go wrong building or verifying a DPoP proof.
///
/// Messages name the problem but never include an access token or key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The algorithm name is not one DPoP proofs may use.
    #[error("unsupported or disallowed algorithm {alg:?}")]
    UnsupportedAlgorithm {
        /// The name as given.
        alg: String,
    },
    /// The request URL cannot be used as `htu`.
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given, without user information, query and fragment (they may hold
        /// credentials, and errors reach logs), at most about 200 characters.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The HTTP method cannot be used as `htm`.
    #[error("invalid HTTP method {method:?}: {reason}")]
    InvalidMethod {
        /// The method as given.
        method: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The access token has characters outside the RFC 6750 token syntax.
    #[error("invalid access token: {reason}")]
    InvalidAccessToken {
        /// What is wrong with it (never the token itself).
        reason: &'static str,
    },
    /// A precomputed `ath` that is not base64url of a SHA-256 hash.
    #[error("ath must be base64url of 32 bytes")]
    InvalidAth,
    /// A nonce outside the `DPoP-Nonce` syntax (RFC 9449 section 8: `1*NQCHAR`), or longer
    /// than any server sends (1024 bytes).
    #[error("nonce has characters outside the DPoP-Nonce syntax")]
    InvalidNonce,
    /// A JWK that cannot be used as a DPoP public key.
    #[error("invalid JWK: {reason}")]
    InvalidJwk {
        /// What is wrong with it.
        reason: String,
    },
    /// The signer failed.
    #[error("signing failed: {0}")]
    Signer(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The signer returned a signature of the wrong size (for ECDSA: DER instead of `r||s`?).
    #[error("{alg} signer returned a {got}-byte signature, JWS needs {expected}")]
    SignatureLength {
        /// The algorithm.
        alg: super::Algorithm,
        /// What the signer returned.
        got: usize,
        /// What JWS requires.
        expected: usize,
    },

    // ---- verification (RFC 9449 section 4.3) ----
    /// Not a single well-formed compact JWS.
    #[error("malformed DPoP proof: {0}")]
    MalformedProof(&'static str),
    /// The header or the payload repeats a member name (at any depth, the `jwk` included).
    /// JSON parsers disagree on which one counts, so neither does.
    #[error("DPoP proof {part} repeats a member name")]
    DuplicateMember {
        /// `"header"` or `"payload"`.
        part: &'static str,
    },
    /// The header has a `crit` member (RFC 7515 section 4.1.11). DPoP defines no extension
    /// that a verifier must understand, so any `crit`, well-formed or not, is refused rather
    /// than ignored (`"crit":["b64"]` with `"b64":false` would change what is signed).
    #[error("DPoP proof header has a crit member; DPoP defines no critical extension")]
    CriticalHeader,
    /// `typ` is not `dpop+jwt`.
    #[error("DPoP proof typ must be \"dpop+jwt\"")]
    WrongType,
    /// The `jwk` header holds private key members.
    #[error("DPoP proof jwk contains the private member {member:?}")]
    PrivateKeyInJwk {
        /// The offending member.
        member: String,
    },
    /// The signature does not verify with the header's `jwk`.
    #[error("DPoP proof signature is invalid")]
    BadSignature,
    /// A required claim is missing or has the wrong type.
    #[error("DPoP proof claim {0:?} is missing or has the wrong type")]
    BadClaim(&'static str),
    /// `jti` is longer than a random identifier needs to be; the limit keeps what a replay
    /// store holds per proof small.
    #[error("DPoP proof jti is {len} bytes, more than {max}")]
    JtiTooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// `htm` differs from the request method.
    #[error("DPoP proof htm {got:?} does not match the request method {expected:?}")]
    MethodMismatch {
        /// The request's method.
        expected: String,
        /// The proof's `htm`.
        got: String,
    },
    /// `htu` differs from the request URI (after normalization).
    #[error("DPoP proof htu {got:?} does not match the request URI {expected:?}")]
    UrlMismatch {
        /// The request URI, normalized.
        expected: String,
        /// The proof's `htu`, normalized.
        got: String,
    },
    /// The server requires a nonce and the proof carries none or a stale one
    /// (answer with the `use_dpop_nonce` error and a fresh `DPoP-Nonce`).
    #[error("DPoP proof nonce is missing or not current")]
    UseNonce,
    /// `iat` is outside the accepted window.
    #[error("DPoP proof iat {iat} is outside the accepted window around {now}")]
    IatOutOfWindow {
        /// The proof's `iat`.
        iat: i64,
        /// The verifier's clock.
        now: i64,
    },
    /// An access token was presented but `ath` is missing.
    #[error("DPoP proof has no ath claim but an access token was presented")]
    AthMissing,
    /// `ath` is not the hash of the presented access token.
    #[error("DPoP proof ath does not match the access token")]
    AthMismatch,
    /// The proof key is not the key the access token is bound to.
    #[error("DPoP proof key thumbprint {got} does not match the token's cnf.jkt {expected}")]
    JktMismatch {
        /// The token's `cnf.jkt`.
        expected: String,
        /// The proof key's thumbprint.
        got: String,
    },
    /// The same `jti` was seen before for this key.
    #[error("DPoP proof jti was already used (replay)")]
    Replayed,
    /// The replay store is full of entries that have not expired yet, so this proof, valid
    /// in every other respect, cannot be recorded; accepting it unrecorded would let it be
    /// replayed. Not the client's fault: a server answers with a fresh `DPoP-Nonce` and
    /// `use_dpop_nonce` (what [`oauth_error`](Error::oauth_error) returns), or with `503
    /// Service Unavailable` and a `Retry-After` of the `iat` window, by when entries expire.
    #[error("DPoP replay store is full of unexpired proofs; try again later")]
    ReplayStoreFull,
}

impl Error {
    /// The OAuth error code a server should answer with (RFC 9449 sections 7.1 and 8).
    pub fn oauth_error(&self) -> &'static str {
        match self {
            Error::UseNonce | Error::ReplayStoreFull => "use_dpop_nonce",
            _ => "invalid_dpop_proof",
        }
    }
}
