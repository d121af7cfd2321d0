use std::path::PathBuf;

/// Everything a key backend can report. Messages never include PINs, passphrases or key bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The label breaks the naming rules.
    #[error("invalid key label {label:?}: {reason}")]
    InvalidLabel {
        /// The label (cut at 80 characters).
        label: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// No key has this label.
    #[error("no key labelled {label:?}")]
    KeyNotFound {
        /// The label asked for.
        label: String,
    },
    /// A key with this label exists already (in any backend).
    #[error("a key labelled {label:?} exists already")]
    KeyExists {
        /// The label.
        label: String,
    },
    /// A saved software key file has this label but is not loaded (the agent runs without its
    /// passphrase); a new key under the label would shadow it.
    #[error(
        "a saved key file has the label {label:?} ({path}) but is not loaded without the \
         passphrase; start the agent with its passphrase, or choose another label"
    )]
    UnloadedKeyExists {
        /// The label.
        label: String,
        /// The key file.
        path: PathBuf,
    },
    /// No backend of that name.
    #[error("unknown backend {name:?} (expected software, pkcs11 or tpm)")]
    UnknownBackend {
        /// The name given.
        name: String,
    },
    /// The backend exists but this agent was not started with it.
    #[error("the {backend} backend is not configured in this agent")]
    BackendNotConfigured {
        /// Which backend.
        backend: crate::BackendKind,
    },
    /// The backend is known but this build of dpop-keys does not have it.
    #[error("{}", not_compiled(*backend))]
    BackendNotCompiled {
        /// Which backend.
        backend: crate::BackendKind,
    },
    /// A key URI's scheme names no backend this version knows (`pkcs11:`, `tpm:`).
    #[error(
        "cannot tell the backend from the key URI's scheme {scheme:?} (known: pkcs11:, tpm:); \
         name the backend or give a pkcs11: or tpm: URI"
    )]
    UnknownUriScheme {
        /// The scheme (empty when the URI has none), cut at 32 characters.
        scheme: String,
    },
    /// The backend cannot make or use keys of this algorithm.
    #[error("algorithm {alg} is not supported by {by}")]
    UnsupportedAlgorithm {
        /// The algorithm.
        alg: dpop_jose::Algorithm,
        /// The backend or token that refuses it.
        by: String,
    },
    /// The operation is not available here.
    #[error("{what} is not supported")]
    Unsupported {
        /// What was asked.
        what: String,
    },
    /// The key material given for import cannot be used.
    #[error("invalid private key: {reason}")]
    InvalidKey {
        /// What is wrong.
        reason: String,
    },
    /// The passphrase does not decrypt a key file (or the file is corrupt). The file is left
    /// untouched.
    #[error("the passphrase does not decrypt {path} (wrong passphrase, or a corrupt file)")]
    WrongPassphrase {
        /// The key file.
        path: PathBuf,
    },
    /// The software keys are sealed while the agent is locked.
    #[error("the software keys are sealed while the agent is locked")]
    Sealed,
    /// A file in the data directory could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A key file or metadata file is not what it should be.
    #[error("corrupt key store file {path}: {reason}")]
    CorruptStore {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The token's PIN was refused. Not retried: tokens lock after a few wrong PINs.
    #[error("the PKCS#11 token refused the PIN (not retried: tokens lock after a few wrong PINs)")]
    PinIncorrect,
    /// The token's PIN is locked.
    #[error("the PKCS#11 token's PIN is locked")]
    PinLocked,
    /// The token was removed or re-initialised.
    #[error("the PKCS#11 token is not present: {detail}")]
    TokenNotPresent {
        /// Which token, what happened.
        detail: String,
    },
    /// A PIN (the PKCS#11 PIN, a TPM auth value) could not be read from its source (the
    /// message never holds the PIN).
    #[error("cannot read the {what} from {from}: {reason}")]
    PinUnavailable {
        /// Which secret (`PKCS#11 PIN`, `TPM auth value`).
        what: &'static str,
        /// The source (`environment variable X`, `file F`).
        from: String,
        /// What went wrong.
        reason: String,
    },
    /// A PKCS#11 URI (RFC 7512) could not be parsed.
    #[error("invalid PKCS#11 URI: {reason}")]
    InvalidPkcs11Uri {
        /// What is wrong, naming the attribute.
        reason: String,
    },
    /// A PKCS#11 URI names another token or module than the one this backend uses.
    #[error(
        "the PKCS#11 URI's {attribute} {uri_value:?} does not match the configured token or \
         module ({actual:?})"
    )]
    Pkcs11UriMismatch {
        /// The URI attribute (`token`, `serial`, `module-path`, ...).
        attribute: &'static str,
        /// Its value in the URI.
        uri_value: String,
        /// What the backend has instead.
        actual: String,
    },
    /// A PKCS#11 URI does not name exactly one private signing key. Whether it matched none
    /// or several is not said, so that a client cannot count or probe the token's objects.
    #[error(
        "the PKCS#11 URI {uri} does not name exactly one private signing key on the token \
         (check its id= and object=)"
    )]
    Pkcs11NoSingleKey {
        /// The URI as given.
        uri: String,
    },
    /// Adopting this key is not allowed here: clients may not adopt keys unless the agent
    /// enables it, and a key that wants the PIN for each signature needs explicit configuration.
    #[error("{reason}")]
    AdoptNotAllowed {
        /// Why, and what would allow it.
        reason: String,
    },
    /// The token object is served already, under another label; adopting it twice would let
    /// deleting one label break the other.
    #[error(
        "this token key is already served as {label:?}; use that label, or delete it first \
         to adopt the key under another"
    )]
    KeyAlreadyManaged {
        /// The label the key is served under.
        label: String,
    },
    /// Any other PKCS#11 failure.
    #[error("PKCS#11 {function} failed: {reason}")]
    Pkcs11 {
        /// The PKCS#11 function.
        function: &'static str,
        /// The return value or cause.
        reason: String,
    },
    /// The TPM cannot be reached (no device, resource manager or simulator at the TCTI, or
    /// the link broke and reconnecting failed too), or lost the key and could not load it
    /// again. The next request tries again.
    #[error("the TPM at {tcti} is not available: {reason}")]
    TpmUnavailable {
        /// The TCTI.
        tcti: String,
        /// What failed.
        reason: String,
    },
    /// The TPM refused the key's auth value. Not sent again until the agent restarts: the
    /// TPM counts failures and locks out after a few (dictionary attack protection).
    #[error(
        "the TPM refused the auth value of key {label:?} (not tried again: the TPM locks out \
         after repeated failures); restart the agent with the right value"
    )]
    TpmAuthFail {
        /// The key.
        label: String,
    },
    /// The key has an auth value and the backend was given none.
    #[error(
        "key {label:?} has a TPM auth value, and the agent was started without one \
         (--tpm-auth-env or --tpm-auth-file)"
    )]
    TpmAuthRequired {
        /// The key.
        label: String,
    },
    /// The TPM is in dictionary attack lockout: it refuses keys with auth values until its
    /// lockout time passes or the lockout is reset with the lockout hierarchy's auth.
    #[error(
        "the TPM is in dictionary attack lockout after too many wrong auth values; wait for \
         its recovery time or reset the lockout (tpm2_dictionarylockout -c)"
    )]
    TpmLockout,
    /// A `tpm:` key URI could not be parsed.
    #[error("invalid TPM key URI: {reason}")]
    InvalidTpmUri {
        /// What is wrong.
        reason: String,
    },
    /// A `tpm:handle=` URI names a handle where the TPM has no persistent object.
    #[error("the TPM has no persistent key at handle {handle}")]
    TpmNoKeyAtHandle {
        /// The handle, `0x81......`.
        handle: String,
    },
    /// Any other TPM failure, the command named.
    #[error("TPM {command} failed: {reason}")]
    Tpm {
        /// The TPM command or step.
        command: &'static str,
        /// The response code or cause.
        reason: String,
    },
    /// A cryptographic operation failed (should not happen with valid keys).
    #[error("cryptographic operation failed: {0}")]
    Crypto(&'static str),
    /// Building the proof header from the key failed.
    #[error(transparent)]
    Jose(#[from] dpop_jose::Error),
}

/// The message for [`Error::BackendNotCompiled`]: which cargo feature to build with.
fn not_compiled(backend: crate::BackendKind) -> String {
    match backend.cargo_feature() {
        Some(feature) => format!(
            "the {backend} backend is not compiled into this build; build with the cargo \
             feature `{feature}` (dpop-agent: `cargo build -p dpop-agent --features {feature}`)"
        ),
        None => format!("the {backend} backend is not available in this version"),
    }
}
