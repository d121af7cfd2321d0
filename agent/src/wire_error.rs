//! Backend errors as wire errors. The mapping lives here, not in dpop-protocol, so that the
//! protocol crate (and every client that links it) compiles no key backend.

use dpop_protocol::{ErrorCode, WireError};

/// The wire code for a backend error; clients match on it, so it must stay stable.
pub fn keys_error_code(e: &dpop_keys::Error) -> ErrorCode {
    use dpop_keys::Error as E;
    match e {
        E::InvalidLabel { .. } => ErrorCode::InvalidLabel,
        E::KeyNotFound { .. } => ErrorCode::KeyNotFound,
        E::KeyExists { .. } | E::UnloadedKeyExists { .. } => ErrorCode::KeyExists,
        E::UnknownBackend { .. } => ErrorCode::UnknownBackend,
        E::BackendNotConfigured { .. } | E::BackendNotCompiled { .. } => {
            ErrorCode::BackendNotConfigured
        }
        E::UnsupportedAlgorithm { .. } => ErrorCode::UnsupportedAlgorithm,
        E::Unsupported { .. } => ErrorCode::Unsupported,
        E::InvalidKey { .. } => ErrorCode::InvalidKey,
        E::WrongPassphrase { .. } => ErrorCode::WrongPassphrase,
        E::InvalidPkcs11Uri { .. }
        | E::Pkcs11UriMismatch { .. }
        | E::UnknownUriScheme { .. }
        | E::InvalidTpmUri { .. } => ErrorCode::InvalidUri,
        E::Pkcs11NoSingleKey { .. } | E::TpmNoKeyAtHandle { .. } => ErrorCode::KeyNotFound,
        E::KeyAlreadyManaged { .. } => ErrorCode::KeyExists,
        E::AdoptNotAllowed { .. } => ErrorCode::PermissionDenied,
        E::Sealed => ErrorCode::Locked,
        E::PinIncorrect => ErrorCode::PinIncorrect,
        E::PinLocked => ErrorCode::PinLocked,
        E::TokenNotPresent { .. } => ErrorCode::TokenNotPresent,
        // The TPM's counterparts of a token's states.
        E::TpmAuthFail { .. } | E::TpmAuthRequired { .. } => ErrorCode::PinIncorrect,
        E::TpmLockout => ErrorCode::PinLocked,
        E::TpmUnavailable { .. } => ErrorCode::TokenNotPresent,
        E::Jose(j) => j.into(),
        _ => ErrorCode::BackendError,
    }
}

/// A backend error as the `error` member of a reply; the message is the error's own text,
/// which never holds secrets.
pub fn keys_error(e: &dpop_keys::Error) -> WireError {
    WireError::new(keys_error_code(e), e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_clients_match_on() {
        let code = |e: dpop_keys::Error| keys_error(&e).code;
        assert_eq!(
            code(dpop_keys::Error::PinIncorrect),
            ErrorCode::PinIncorrect
        );
        assert_eq!(code(dpop_keys::Error::PinLocked), ErrorCode::PinLocked);
        assert_eq!(
            code(dpop_keys::Error::TpmAuthFail { label: "k".into() }),
            ErrorCode::PinIncorrect
        );
        assert_eq!(code(dpop_keys::Error::TpmLockout), ErrorCode::PinLocked);
        assert_eq!(
            code(dpop_keys::Error::TpmUnavailable {
                tcti: "device:/dev/tpmrm0".into(),
                reason: "gone".into()
            }),
            ErrorCode::TokenNotPresent
        );
        assert_eq!(
            code(dpop_keys::Error::Jose(dpop_jose::Error::InvalidNonce)),
            ErrorCode::InvalidNonce
        );
    }
}
