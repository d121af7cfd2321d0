use std::path::PathBuf;

use crate::BackendKind;

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
    #[error("unknown backend {name:?} (expected {})", names(|k| Some(k.as_str()), " or "))]
    UnknownBackend {
        /// The name given.
        name: String,
    },
    /// The backend exists but this agent was not started with it.
    #[error("the {backend} backend is not configured in this agent")]
    BackendNotConfigured {
        /// Which backend.
        backend: BackendKind,
    },
    /// The backend is known but this build of dpop-keys does not have it.
    #[error("{}", not_compiled(*backend))]
    BackendNotCompiled {
        /// Which backend.
        backend: BackendKind,
    },
    /// A key URI's scheme names no backend this version knows.
    #[error(
        "cannot tell the backend from the key URI's scheme {scheme:?} (known: {}); name the \
         backend or give a {} URI",
        names(|k| k.uri_scheme().map(|s| format!("{s}:")), ", "),
        names(|k| k.uri_scheme().map(|s| format!("{s}:")), " or ")
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
    /// A secret that opens the backend or its keys (a token's PIN, the TPM keys' auth value)
    /// could not be read from its source. The message never holds the secret.
    #[error("cannot read the {} {} from {from}: {reason}", backend.title(), backend.secret())]
    SecretUnavailable {
        /// Whose secret.
        backend: BackendKind,
        /// The source (`environment variable X`, `file F`).
        from: String,
        /// What went wrong.
        reason: String,
    },
    /// The device refused the secret (a token's PIN, a TPM key's auth value). Not tried
    /// again: devices lock after a few wrong ones (a TPM's dictionary attack protection).
    #[error(
        "the {} refused the {}{} (not retried: it locks after a few wrong {}s)",
        backend.device(),
        backend.secret(),
        key.as_ref().map(|l| format!(" of key {l:?}")).unwrap_or_default(),
        backend.secret()
    )]
    AuthFailed {
        /// Which backend.
        backend: BackendKind,
        /// The key, when the secret is the key's own (a TPM auth value).
        key: Option<String>,
    },
    /// The device refuses every secret after too many wrong ones (a token's locked PIN, a
    /// TPM in dictionary attack lockout).
    #[error("{}", backend.locked_message())]
    AuthLocked {
        /// Which backend.
        backend: BackendKind,
    },
    /// The key has a secret (a TPM auth value) and the backend was given none.
    #[error(
        "key {key:?} has a {} {}, and the backend was given none",
        backend.title(),
        backend.secret()
    )]
    AuthMissing {
        /// Which backend.
        backend: BackendKind,
        /// The key.
        key: String,
    },
    /// The device cannot be reached: a token removed or re-initialised, a TPM without device,
    /// resource manager or simulator at the TCTI (or one that lost the key and could not
    /// load it again). The next request looks again.
    #[error("the {} {}: {detail}", backend.device(), backend.unreachable())]
    DeviceUnavailable {
        /// Which backend.
        backend: BackendKind,
        /// Which device and what happened.
        detail: String,
    },
    /// A key URI (an RFC 7512 PKCS#11 URI, a `tpm:` URI) could not be parsed or is refused.
    #[error("invalid {} URI: {reason}", backend.title())]
    InvalidUri {
        /// Whose URI.
        backend: BackendKind,
        /// What is wrong, naming the attribute.
        reason: String,
    },
    /// A key URI names another device (token, module) than the one this backend uses.
    #[error(
        "the {} URI's {attribute} {uri_value:?} does not match the configured one ({actual:?})",
        backend.title()
    )]
    UriMismatch {
        /// Whose URI.
        backend: BackendKind,
        /// The URI attribute (`token`, `serial`, `module-path`, ...).
        attribute: &'static str,
        /// Its value in the URI.
        uri_value: String,
        /// What the backend has instead.
        actual: String,
    },
    /// A key URI names no key the backend can sign with. For a PKCS#11 URI, whether it
    /// matched none or several objects is not said, so that a client cannot count or probe
    /// the token's objects.
    #[error(
        "the {} URI {uri} does not name exactly one private signing key on the {}",
        backend.title(),
        backend.device()
    )]
    NothingAtUri {
        /// Whose URI.
        backend: BackendKind,
        /// The URI as given.
        uri: String,
    },
    /// Adopting this key is not allowed here; the agent says what would allow it.
    #[error("{}", adopt_refused(*backend, *refusal))]
    AdoptNotAllowed {
        /// Which backend.
        backend: BackendKind,
        /// Why.
        refusal: AdoptRefusal,
    },
    /// The key is served already, under another label; adopting it twice would let deleting
    /// one label break the other.
    #[error(
        "this {} key is already served as {label:?}; use that label, or delete it first to \
         adopt the key under another",
        backend.device()
    )]
    KeyAlreadyManaged {
        /// Which backend.
        backend: BackendKind,
        /// The label the key is served under.
        label: String,
    },
    /// Any other failure of a backend's device, the call named (`C_Sign`, `TPM2_Load`).
    #[error("{} {operation} failed: {reason}", backend.title())]
    BackendFailed {
        /// Which backend.
        backend: BackendKind,
        /// The PKCS#11 function, TPM command or step.
        operation: &'static str,
        /// The return value, response code or cause.
        reason: String,
    },
    /// A cryptographic operation failed (should not happen with valid keys).
    #[error("cryptographic operation failed: {0}")]
    Crypto(&'static str),
    /// Building the proof header from the key failed.
    #[error(transparent)]
    Jose(#[from] dpop_jose::Error),
}

/// Why an adoption was refused ([`Error::AdoptNotAllowed`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdoptRefusal {
    /// Clients of the agent may not adopt this backend's keys (off by default: a key on the
    /// device may belong to another application).
    ClientsNotAllowed,
    /// The key wants the secret for each signature (`CKA_ALWAYS_AUTHENTICATE`); giving it
    /// for every proof overrides that policy, so only an explicit configuration may.
    PerUseAuth,
}

/// What an [`Error`] means, with no details: one value per kind of problem, so that a caller
/// (the agent, mapping errors to wire codes) can match every kind without a catch-all arm
/// and the compiler names the match when a kind is added. [`Error::backend`] says which
/// backend, where one is concerned.
#[derive(Clone, Copy, Debug)]
pub enum ErrorKind<'a> {
    /// [`Error::InvalidLabel`].
    InvalidLabel,
    /// [`Error::KeyNotFound`].
    KeyNotFound,
    /// The label, or the device key, is taken: [`Error::KeyExists`],
    /// [`Error::UnloadedKeyExists`], [`Error::KeyAlreadyManaged`].
    KeyExists,
    /// [`Error::UnknownBackend`].
    UnknownBackend,
    /// [`Error::BackendNotConfigured`].
    BackendNotConfigured,
    /// [`Error::BackendNotCompiled`].
    BackendNotCompiled,
    /// [`Error::UnknownUriScheme`].
    UnknownUriScheme,
    /// [`Error::UnsupportedAlgorithm`].
    UnsupportedAlgorithm,
    /// [`Error::Unsupported`].
    Unsupported,
    /// [`Error::InvalidKey`].
    InvalidKey,
    /// [`Error::WrongPassphrase`].
    WrongPassphrase,
    /// [`Error::Sealed`].
    Sealed,
    /// The data directory: [`Error::Io`], [`Error::CorruptStore`].
    Storage,
    /// [`Error::SecretUnavailable`].
    SecretUnavailable,
    /// [`Error::AuthFailed`].
    AuthFailed,
    /// [`Error::AuthLocked`].
    AuthLocked,
    /// [`Error::AuthMissing`].
    AuthMissing,
    /// [`Error::DeviceUnavailable`].
    DeviceUnavailable,
    /// [`Error::InvalidUri`], [`Error::UriMismatch`].
    InvalidUri,
    /// [`Error::NothingAtUri`].
    NothingAtUri,
    /// [`Error::AdoptNotAllowed`], and why.
    AdoptNotAllowed(AdoptRefusal),
    /// A device or cryptographic operation failed: [`Error::BackendFailed`],
    /// [`Error::Crypto`].
    BackendFailed,
    /// Building the proof header failed ([`Error::Jose`]): the proof library's own error.
    Proof(&'a dpop_jose::Error),
}

impl Error {
    /// What kind of problem this is.
    pub fn kind(&self) -> ErrorKind<'_> {
        match self {
            Error::InvalidLabel { .. } => ErrorKind::InvalidLabel,
            Error::KeyNotFound { .. } => ErrorKind::KeyNotFound,
            Error::KeyExists { .. }
            | Error::UnloadedKeyExists { .. }
            | Error::KeyAlreadyManaged { .. } => ErrorKind::KeyExists,
            Error::UnknownBackend { .. } => ErrorKind::UnknownBackend,
            Error::BackendNotConfigured { .. } => ErrorKind::BackendNotConfigured,
            Error::BackendNotCompiled { .. } => ErrorKind::BackendNotCompiled,
            Error::UnknownUriScheme { .. } => ErrorKind::UnknownUriScheme,
            Error::UnsupportedAlgorithm { .. } => ErrorKind::UnsupportedAlgorithm,
            Error::Unsupported { .. } => ErrorKind::Unsupported,
            Error::InvalidKey { .. } => ErrorKind::InvalidKey,
            Error::WrongPassphrase { .. } => ErrorKind::WrongPassphrase,
            Error::Sealed => ErrorKind::Sealed,
            Error::Io { .. } | Error::CorruptStore { .. } => ErrorKind::Storage,
            Error::SecretUnavailable { .. } => ErrorKind::SecretUnavailable,
            Error::AuthFailed { .. } => ErrorKind::AuthFailed,
            Error::AuthLocked { .. } => ErrorKind::AuthLocked,
            Error::AuthMissing { .. } => ErrorKind::AuthMissing,
            Error::DeviceUnavailable { .. } => ErrorKind::DeviceUnavailable,
            Error::InvalidUri { .. } | Error::UriMismatch { .. } => ErrorKind::InvalidUri,
            Error::NothingAtUri { .. } => ErrorKind::NothingAtUri,
            Error::AdoptNotAllowed { refusal, .. } => ErrorKind::AdoptNotAllowed(*refusal),
            Error::BackendFailed { .. } | Error::Crypto(_) => ErrorKind::BackendFailed,
            Error::Jose(e) => ErrorKind::Proof(e),
        }
    }

    /// The backend the error is about, when it is about one.
    pub fn backend(&self) -> Option<BackendKind> {
        match self {
            Error::BackendNotConfigured { backend }
            | Error::BackendNotCompiled { backend }
            | Error::SecretUnavailable { backend, .. }
            | Error::AuthFailed { backend, .. }
            | Error::AuthLocked { backend }
            | Error::AuthMissing { backend, .. }
            | Error::DeviceUnavailable { backend, .. }
            | Error::InvalidUri { backend, .. }
            | Error::UriMismatch { backend, .. }
            | Error::NothingAtUri { backend, .. }
            | Error::AdoptNotAllowed { backend, .. }
            | Error::KeyAlreadyManaged { backend, .. }
            | Error::BackendFailed { backend, .. } => Some(*backend),
            Error::InvalidLabel { .. }
            | Error::KeyNotFound { .. }
            | Error::KeyExists { .. }
            | Error::UnloadedKeyExists { .. }
            | Error::UnknownBackend { .. }
            | Error::UnknownUriScheme { .. }
            | Error::UnsupportedAlgorithm { .. }
            | Error::Unsupported { .. }
            | Error::InvalidKey { .. }
            | Error::WrongPassphrase { .. }
            | Error::Sealed
            | Error::Io { .. }
            | Error::CorruptStore { .. }
            | Error::Crypto(_)
            | Error::Jose(_) => None,
        }
    }
}

/// Every backend's `item` that it has, joined like `a, b or c` (with `last` before the last).
fn names<T: std::fmt::Display>(item: impl Fn(BackendKind) -> Option<T>, last: &str) -> String {
    let items: Vec<String> = BackendKind::ALL
        .into_iter()
        .filter_map(|k| item(k).map(|i| i.to_string()))
        .collect();
    match items.split_last() {
        Some((tail, [])) => tail.clone(),
        Some((tail, head)) => format!("{}{last}{tail}", head.join(", ")),
        None => String::new(),
    }
}

/// The message for [`Error::BackendNotCompiled`]: which cargo feature to build with.
fn not_compiled(backend: BackendKind) -> String {
    match backend.cargo_feature() {
        Some(feature) => format!(
            "the {backend} backend is not compiled into this build; build with the cargo \
             feature `{feature}`"
        ),
        None => format!("the {backend} backend is not available in this version"),
    }
}

/// The message for [`Error::AdoptNotAllowed`].
fn adopt_refused(backend: BackendKind, refusal: AdoptRefusal) -> String {
    match refusal {
        AdoptRefusal::ClientsNotAllowed => format!(
            "clients may not adopt existing {} keys from this agent",
            backend.title()
        ),
        AdoptRefusal::PerUseAuth => format!(
            "this key wants the {secret} for each signature; the agent would give it for \
             every proof, overriding that policy, so only an explicit configuration may adopt \
             such a key",
            secret = backend.secret()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lists in messages come from [`BackendKind::ALL`], so a new backend shows up there.
    #[test]
    fn backend_lists_come_from_the_backends() {
        let unknown = Error::UnknownBackend { name: "x".into() }.to_string();
        assert!(
            unknown.contains("(expected software, pkcs11 or tpm)"),
            "{unknown}"
        );
        let scheme = Error::UnknownUriScheme {
            scheme: "tpm2".into(),
        }
        .to_string();
        assert!(
            scheme.contains("(known: pkcs11:, tpm:)") && scheme.contains("a pkcs11: or tpm: URI"),
            "{scheme}"
        );
        for kind in BackendKind::ALL {
            assert_eq!(kind.as_str().parse::<BackendKind>().unwrap(), kind);
            if let Some(scheme) = kind.uri_scheme() {
                let uri = format!("{}:x", scheme.to_uppercase());
                assert_eq!(BackendKind::from_uri(&uri).unwrap(), kind);
            }
        }
        assert!(BackendKind::from_uri("no-scheme").is_err());
    }

    /// Each backend's errors read as they did when each had its own variant.
    #[test]
    fn messages_keep_each_backends_words() {
        let pkcs11 = BackendKind::Pkcs11;
        let tpm = BackendKind::Tpm;
        let cases = [
            (
                Error::AuthFailed {
                    backend: pkcs11,
                    key: None,
                },
                "the PKCS#11 token refused the PIN (not retried: it locks after a few wrong PINs)",
            ),
            (
                Error::AuthFailed {
                    backend: tpm,
                    key: Some("k".into()),
                },
                "the TPM refused the auth value of key \"k\" (not retried",
            ),
            (
                Error::AuthLocked { backend: pkcs11 },
                "the PKCS#11 token's PIN is locked",
            ),
            (
                Error::AuthLocked { backend: tpm },
                "dictionary attack lockout",
            ),
            (
                Error::AuthMissing {
                    backend: tpm,
                    key: "k".into(),
                },
                "key \"k\" has a TPM auth value",
            ),
            (
                Error::DeviceUnavailable {
                    backend: pkcs11,
                    detail: "gone".into(),
                },
                "the PKCS#11 token is not present: gone",
            ),
            (
                Error::DeviceUnavailable {
                    backend: tpm,
                    detail: "gone".into(),
                },
                "the TPM is not available: gone",
            ),
            (
                Error::NothingAtUri {
                    backend: pkcs11,
                    uri: "pkcs11:id=%01".into(),
                },
                "does not name exactly one private signing key",
            ),
            (
                Error::InvalidUri {
                    backend: tpm,
                    reason: "bad".into(),
                },
                "invalid TPM URI: bad",
            ),
            (
                Error::SecretUnavailable {
                    backend: pkcs11,
                    from: "file /x".into(),
                    reason: "it is empty".into(),
                },
                "cannot read the PKCS#11 PIN from file /x: it is empty",
            ),
            (
                Error::BackendFailed {
                    backend: tpm,
                    operation: "TPM2_Load",
                    reason: "0x1df".into(),
                },
                "TPM TPM2_Load failed: 0x1df",
            ),
        ];
        for (error, words) in cases {
            let message = error.to_string();
            assert!(message.contains(words), "{message:?} lacks {words:?}");
            assert!(!message.contains("--"), "an agent flag in {message:?}");
        }
    }
}
