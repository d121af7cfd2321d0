//! PKCS#11 failures: cryptoki errors named as the specification names them, mapped to
//! [`Error`], and the [`Fail`] that session closures return so that the pool can act on token
//! loss and logouts.

use cryptoki::context::Function;
use cryptoki::error::{Error as CkError, RvError};

use crate::{BackendKind, Error};

/// The `C_` name of a PKCS#11 function, for error messages.
fn function_name(f: Function) -> &'static str {
    match f {
        Function::Initialize => "C_Initialize",
        Function::GetSlotList => "C_GetSlotList",
        Function::GetTokenInfo => "C_GetTokenInfo",
        Function::GetMechanismList => "C_GetMechanismList",
        Function::GetMechanismInfo => "C_GetMechanismInfo",
        Function::OpenSession => "C_OpenSession",
        Function::GetSessionInfo => "C_GetSessionInfo",
        Function::Login => "C_Login",
        Function::CreateObject => "C_CreateObject",
        Function::DestroyObject => "C_DestroyObject",
        Function::GetAttributeValue => "C_GetAttributeValue",
        Function::FindObjectsInit => "C_FindObjectsInit",
        Function::FindObjects => "C_FindObjects",
        Function::FindObjectsFinal => "C_FindObjectsFinal",
        Function::SignInit => "C_SignInit",
        Function::Sign => "C_Sign",
        Function::GenerateKeyPair => "C_GenerateKeyPair",
        Function::GenerateRandom => "C_GenerateRandom",
        _ => "a PKCS#11 function",
    }
}

/// `PinIncorrect` -> `CKR_PIN_INCORRECT`, as the PKCS#11 specification spells return values.
pub(crate) fn rv_name(rv: &RvError) -> String {
    let debug = format!("{rv:?}");
    if debug.contains('(') {
        return debug;
    }
    let mut name = String::from("CKR");
    for c in debug.chars() {
        if c.is_ascii_uppercase() {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

/// The token refused the PIN.
pub(crate) fn pin_refused() -> Error {
    Error::AuthFailed {
        backend: BackendKind::Pkcs11,
        key: None,
    }
}

/// The token's PIN is locked.
pub(crate) fn pin_locked() -> Error {
    Error::AuthLocked {
        backend: BackendKind::Pkcs11,
    }
}

/// Any other failure of a PKCS#11 function or step.
pub(crate) fn failed(function: &'static str, reason: String) -> Error {
    Error::BackendFailed {
        backend: BackendKind::Pkcs11,
        operation: function,
        reason,
    }
}

/// Maps a cryptoki error that has no better-named variant.
pub(crate) fn ck_error(e: CkError) -> Error {
    match e {
        CkError::Pkcs11(RvError::PinIncorrect, _) => pin_refused(),
        CkError::Pkcs11(RvError::PinLocked, _) => pin_locked(),
        CkError::Pkcs11(rv, f) => failed(function_name(f), rv_name(&rv)),
        other => failed("cryptoki", other.to_string()),
    }
}

/// The return value of a failed call, if it came from the module.
pub(crate) fn rv(e: &CkError) -> Option<&RvError> {
    match e {
        CkError::Pkcs11(rv, _) => Some(rv),
        _ => None,
    }
}

/// Return values after which the token (or our sessions with it) are gone: start over.
pub(crate) fn token_gone(rv: &RvError) -> bool {
    matches!(
        rv,
        RvError::TokenNotPresent
            | RvError::DeviceRemoved
            | RvError::SessionHandleInvalid
            | RvError::SessionClosed
            | RvError::TokenNotRecognized
            | RvError::SlotIdInvalid
    )
}

pub(crate) fn gone(f: Function) -> Fail {
    Fail::Ck(CkError::Pkcs11(RvError::TokenNotPresent, f))
}

/// A failure inside a [`Token::run`] closure: a module error the pool may act on, or a final one.
pub(crate) enum Fail {
    /// A cryptoki error; the pool handles re-login and token loss.
    Ck(CkError),
    /// Any other error, returned as it is.
    Other(Error),
}

impl From<CkError> for Fail {
    fn from(e: CkError) -> Fail {
        Fail::Ck(e)
    }
}

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        Fail::Other(e)
    }
}
