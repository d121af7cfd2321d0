//! Backend errors as wire errors. The mapping lives here, not in dpop-protocol, so that the
//! protocol crate (and every client that links it) compiles no key backend.
//!
//! Both matches below are exhaustive over [`ErrorKind`] (no `_` arm): a new kind of backend
//! error does not compile until it has a wire code and a decision about its hint. dpop-keys'
//! messages never name the agent's flags; [`hint`] adds them, so that the message a client
//! shows still says what to do.

use dpop_keys::{AdoptRefusal, BackendKind, ErrorKind};
use dpop_protocol::{ErrorCode, WireError};

/// The wire code for a backend error; clients match on it, so it must stay stable.
pub fn keys_error_code(e: &dpop_keys::Error) -> ErrorCode {
    code_of(e.kind())
}

/// The wire code of each kind of backend error.
fn code_of(kind: ErrorKind<'_>) -> ErrorCode {
    match kind {
        ErrorKind::InvalidLabel => ErrorCode::InvalidLabel,
        ErrorKind::KeyNotFound | ErrorKind::NothingAtUri => ErrorCode::KeyNotFound,
        ErrorKind::KeyExists => ErrorCode::KeyExists,
        ErrorKind::UnknownBackend => ErrorCode::UnknownBackend,
        ErrorKind::BackendNotConfigured | ErrorKind::BackendNotCompiled => {
            ErrorCode::BackendNotConfigured
        }
        ErrorKind::UnsupportedAlgorithm => ErrorCode::UnsupportedAlgorithm,
        ErrorKind::Unsupported => ErrorCode::Unsupported,
        ErrorKind::InvalidKey => ErrorCode::InvalidKey,
        ErrorKind::WrongPassphrase => ErrorCode::WrongPassphrase,
        ErrorKind::InvalidUri | ErrorKind::UnknownUriScheme => ErrorCode::InvalidUri,
        ErrorKind::AdoptNotAllowed(_) => ErrorCode::PermissionDenied,
        ErrorKind::Sealed => ErrorCode::Locked,
        // A TPM's auth value is coded like a token's PIN, so clients need one rule.
        ErrorKind::AuthFailed | ErrorKind::AuthMissing => ErrorCode::PinIncorrect,
        ErrorKind::AuthLocked => ErrorCode::PinLocked,
        ErrorKind::DeviceUnavailable => ErrorCode::TokenNotPresent,
        ErrorKind::Storage | ErrorKind::SecretUnavailable | ErrorKind::BackendFailed => {
            ErrorCode::BackendError
        }
        ErrorKind::Proof(e) => e.into(),
    }
}

/// What the agent's user can do about an error, in the agent's own terms (its flags, config
/// keys and cargo features), which dpop-keys does not know.
pub fn hint(kind: ErrorKind<'_>, backend: Option<BackendKind>) -> Option<String> {
    match kind {
        ErrorKind::BackendNotCompiled => backend?.cargo_feature().map(|feature| {
            format!("for dpop-agent: `cargo build -p dpop-agent --features {feature}`")
        }),
        ErrorKind::AdoptNotAllowed(AdoptRefusal::ClientsNotAllowed) => match backend? {
            BackendKind::Pkcs11 => Some(
                "enable it with the agent option --pkcs11-allow-adopt (pkcs11_allow_adopt = \
                 true), or name the key in a [[pkcs11_adopt]] table of the agent's config file",
            ),
            BackendKind::Tpm => {
                Some("enable it with the agent option --tpm-allow-adopt (tpm_allow_adopt = true)")
            }
            BackendKind::Software => None,
        }
        .map(str::to_owned),
        ErrorKind::AdoptNotAllowed(AdoptRefusal::PerUseAuth) => match backend? {
            BackendKind::Pkcs11 => Some(
                "adopt it from a [[pkcs11_adopt]] table with always_authenticate = true in the \
                 agent's config file"
                    .to_owned(),
            ),
            BackendKind::Software | BackendKind::Tpm => None,
        },
        ErrorKind::AuthMissing => match backend? {
            BackendKind::Software => {
                Some("start the agent with its passphrase (--passphrase-file)")
            }
            BackendKind::Pkcs11 => Some(
                "start the agent with --pkcs11-pin-env or --pkcs11-pin-file, or at a terminal \
                 to be asked",
            ),
            BackendKind::Tpm => {
                Some("start the agent with --tpm-auth-env, --tpm-auth-file or --tpm-auth-prompt")
            }
        }
        .map(str::to_owned),
        ErrorKind::AuthFailed => {
            backend.map(|b| format!("restart the agent with the right {}", b.secret()))
        }
        ErrorKind::InvalidLabel
        | ErrorKind::KeyNotFound
        | ErrorKind::KeyExists
        | ErrorKind::UnknownBackend
        | ErrorKind::BackendNotConfigured
        | ErrorKind::UnknownUriScheme
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::Unsupported
        | ErrorKind::InvalidKey
        | ErrorKind::WrongPassphrase
        | ErrorKind::Sealed
        | ErrorKind::Storage
        | ErrorKind::SecretUnavailable
        | ErrorKind::AuthLocked
        | ErrorKind::DeviceUnavailable
        | ErrorKind::InvalidUri
        | ErrorKind::NothingAtUri
        | ErrorKind::BackendFailed
        | ErrorKind::Proof(_) => None,
    }
}

/// A backend error's message with the agent's [`hint`], if it has one. Never holds secrets:
/// neither part does.
pub fn describe(e: &dpop_keys::Error) -> String {
    match hint(e.kind(), e.backend()) {
        Some(hint) => format!("{e}; {hint}"),
        None => e.to_string(),
    }
}

/// A backend error as the `error` member of a reply.
pub fn keys_error(e: &dpop_keys::Error) -> WireError {
    WireError::new(keys_error_code(e), describe(e))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use dpop_keys::Error as E;

    use super::*;

    /// One error of every kind, with the code clients see for it (today's codes: they must
    /// not change).
    fn every_kind() -> Vec<(E, ErrorCode)> {
        let b = BackendKind::Pkcs11;
        let t = BackendKind::Tpm;
        vec![
            (
                E::InvalidLabel {
                    label: "a b".into(),
                    reason: "space",
                },
                ErrorCode::InvalidLabel,
            ),
            (E::KeyNotFound { label: "k".into() }, ErrorCode::KeyNotFound),
            (E::KeyExists { label: "k".into() }, ErrorCode::KeyExists),
            (
                E::UnloadedKeyExists {
                    label: "k".into(),
                    path: PathBuf::from("/k.json"),
                },
                ErrorCode::KeyExists,
            ),
            (
                E::KeyAlreadyManaged {
                    backend: b,
                    label: "k".into(),
                },
                ErrorCode::KeyExists,
            ),
            (
                E::UnknownBackend { name: "x".into() },
                ErrorCode::UnknownBackend,
            ),
            (
                E::BackendNotConfigured { backend: t },
                ErrorCode::BackendNotConfigured,
            ),
            (
                E::BackendNotCompiled { backend: t },
                ErrorCode::BackendNotConfigured,
            ),
            (
                E::UnknownUriScheme {
                    scheme: "tpm2".into(),
                },
                ErrorCode::InvalidUri,
            ),
            (
                E::UnsupportedAlgorithm {
                    alg: dpop_jose::Algorithm::EdDSA,
                    by: "the TPM".into(),
                },
                ErrorCode::UnsupportedAlgorithm,
            ),
            (
                E::Unsupported {
                    what: "adopting".into(),
                },
                ErrorCode::Unsupported,
            ),
            (
                E::InvalidKey {
                    reason: "short".into(),
                },
                ErrorCode::InvalidKey,
            ),
            (
                E::WrongPassphrase {
                    path: PathBuf::from("/k.json"),
                },
                ErrorCode::WrongPassphrase,
            ),
            (E::Sealed, ErrorCode::Locked),
            (
                E::Io {
                    action: "reading",
                    path: PathBuf::from("/k.json"),
                    source: std::io::Error::other("disk"),
                },
                ErrorCode::BackendError,
            ),
            (
                E::CorruptStore {
                    path: PathBuf::from("/k.json"),
                    reason: "json".into(),
                },
                ErrorCode::BackendError,
            ),
            (
                E::SecretUnavailable {
                    backend: t,
                    from: "file /x".into(),
                    reason: "missing".into(),
                },
                ErrorCode::BackendError,
            ),
            (
                E::AuthFailed {
                    backend: b,
                    key: None,
                },
                ErrorCode::PinIncorrect,
            ),
            (
                E::AuthFailed {
                    backend: t,
                    key: Some("k".into()),
                },
                ErrorCode::PinIncorrect,
            ),
            (
                E::AuthMissing {
                    backend: t,
                    key: "k".into(),
                },
                ErrorCode::PinIncorrect,
            ),
            (E::AuthLocked { backend: b }, ErrorCode::PinLocked),
            (E::AuthLocked { backend: t }, ErrorCode::PinLocked),
            (
                E::DeviceUnavailable {
                    backend: b,
                    detail: "token labelled \"x\"".into(),
                },
                ErrorCode::TokenNotPresent,
            ),
            (
                E::DeviceUnavailable {
                    backend: t,
                    detail: "TPM2_Sign failed (TCTI device:/dev/tpmrm0)".into(),
                },
                ErrorCode::TokenNotPresent,
            ),
            (
                E::InvalidUri {
                    backend: b,
                    reason: "bad".into(),
                },
                ErrorCode::InvalidUri,
            ),
            (
                E::UriMismatch {
                    backend: b,
                    attribute: "token",
                    uri_value: "a".into(),
                    actual: "b".into(),
                },
                ErrorCode::InvalidUri,
            ),
            (
                E::NothingAtUri {
                    backend: t,
                    uri: "tpm:handle=0x81000777".into(),
                },
                ErrorCode::KeyNotFound,
            ),
            (
                E::AdoptNotAllowed {
                    backend: b,
                    refusal: AdoptRefusal::ClientsNotAllowed,
                },
                ErrorCode::PermissionDenied,
            ),
            (
                E::AdoptNotAllowed {
                    backend: b,
                    refusal: AdoptRefusal::PerUseAuth,
                },
                ErrorCode::PermissionDenied,
            ),
            (
                E::BackendFailed {
                    backend: t,
                    operation: "TPM2_Load",
                    reason: "0x1df".into(),
                },
                ErrorCode::BackendError,
            ),
            (E::Crypto("signing"), ErrorCode::BackendError),
            (
                E::Jose(dpop_jose::Error::InvalidNonce),
                ErrorCode::InvalidNonce,
            ),
        ]
    }

    #[test]
    fn codes_clients_match_on() {
        for (e, code) in every_kind() {
            assert_eq!(keys_error(&e).code, code, "{e:?}");
        }
    }

    /// The flags that dpop-keys leaves out reach the client's message.
    #[test]
    fn hints_name_the_agents_flags() {
        let message = |e: E| keys_error(&e).message;
        let tpm_adopt = message(E::AdoptNotAllowed {
            backend: BackendKind::Tpm,
            refusal: AdoptRefusal::ClientsNotAllowed,
        });
        assert!(tpm_adopt.contains("--tpm-allow-adopt"), "{tpm_adopt}");
        let p11_adopt = message(E::AdoptNotAllowed {
            backend: BackendKind::Pkcs11,
            refusal: AdoptRefusal::ClientsNotAllowed,
        });
        assert!(p11_adopt.contains("--pkcs11-allow-adopt"), "{p11_adopt}");
        let pinned = message(E::AdoptNotAllowed {
            backend: BackendKind::Pkcs11,
            refusal: AdoptRefusal::PerUseAuth,
        });
        assert!(pinned.contains("always_authenticate"), "{pinned}");
        let missing = message(E::AuthMissing {
            backend: BackendKind::Tpm,
            key: "k".into(),
        });
        assert!(missing.contains("--tpm-auth-env"), "{missing}");
        let not_built = message(E::BackendNotCompiled {
            backend: BackendKind::Tpm,
        });
        assert!(
            not_built.contains("feature `tpm`") && not_built.contains("--features tpm"),
            "{not_built}"
        );
        // Kinds without a hint keep dpop-keys' message as it is.
        let e = E::KeyNotFound { label: "k".into() };
        assert_eq!(keys_error(&e).message, e.to_string());
    }
}
