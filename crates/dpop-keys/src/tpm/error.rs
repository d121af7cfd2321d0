//! tss-esapi errors sorted by what the backend does about them: reconnect, reload, stop
//! trying an auth value, or report.

use bitfield::BitRange;
use tss_esapi::constants::response_code::Tss2ResponseCode;

use crate::{BackendKind, Error};

/// What a failed TPM call means for the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Fault {
    /// The connection is gone (TPM restarted, resource manager stopped): make a new context.
    Lost,
    /// The TPM no longer has our objects loaded (a reset): reconnect and reload.
    Evicted,
    /// The TPM has no room for another loaded object: unload one of ours and try again.
    ObjectMemory,
    /// The key's auth value was refused: never sent again (dictionary attack protection).
    AuthFail,
    /// The TPM is in dictionary attack lockout.
    Lockout,
    /// The wrapped private blob does not belong to this TPM and SRK, or is damaged.
    BadBlob,
    /// The TPM does not do this algorithm, curve or key size.
    Unsupported,
    /// Anything else.
    Other,
}

/// A failed TPM call: which command, what tss-esapi said, and what it means.
#[derive(Clone, Debug)]
pub(super) struct TpmError {
    pub command: &'static str,
    pub fault: Fault,
    pub reason: String,
}

/// `TSS2_RC` layers (bits 16..24) and base codes, from tpm2-tss' `tss2_common.h`.
const LAYER_TPM: u32 = 0;
const BASE_RC_GENERAL_FAILURE: u32 = 1;
const BASE_RC_BAD_SEQUENCE: u32 = 7;
const BASE_RC_NO_CONNECTION: u32 = 8;
const BASE_RC_TRY_AGAIN: u32 = 9;
const BASE_RC_IO_ERROR: u32 = 10;
const BASE_RC_MALFORMED_RESPONSE: u32 = 17;
const BASE_RC_INSUFFICIENT_RESPONSE: u32 = 19;

/// The raw `TSS2_RC` of a response code.
fn raw(code: Tss2ResponseCode) -> u32 {
    match code {
        Tss2ResponseCode::Success => 0,
        Tss2ResponseCode::FormatZero(rc) => rc.bit_range(31, 0),
        Tss2ResponseCode::FormatOne(rc) => rc.bit_range(31, 0),
    }
}

/// What a raw `TSS2_RC` means (TPM 2.0 Part 2, 6.6 "TPM_RC").
fn fault_of(rc: u32) -> Fault {
    let layer = (rc >> 16) & 0xff;
    if layer != LAYER_TPM {
        // A TCTI, SAPI or ESAPI error: the link to the TPM, or the context's state after a
        // broken link.
        return match rc & 0xffff {
            BASE_RC_GENERAL_FAILURE
            | BASE_RC_BAD_SEQUENCE
            | BASE_RC_NO_CONNECTION
            | BASE_RC_TRY_AGAIN
            | BASE_RC_IO_ERROR
            | BASE_RC_MALFORMED_RESPONSE
            | BASE_RC_INSUFFICIENT_RESPONSE => Fault::Lost,
            _ => Fault::Other,
        };
    }
    let rc = rc & 0xffff;
    if rc & 0x80 != 0 {
        // Format one: an error about a parameter, handle or session.
        return match rc & 0x3f {
            0x0e | 0x22 => Fault::AuthFail, // TPM_RC_AUTH_FAIL, TPM_RC_BAD_AUTH
            0x0b => Fault::Evicted,         // TPM_RC_HANDLE
            0x1f | 0x25 | 0x1c => Fault::BadBlob, // INTEGRITY, BINDING, KEY
            0x01 | 0x07 | 0x12 | 0x26 => Fault::Unsupported, // ASYMMETRIC, KEY_SIZE, SCHEME, CURVE
            _ => Fault::Other,
        };
    }
    if rc & 0x800 != 0 {
        // Format zero warnings (TPM_RC_WARN).
        return match rc & 0x7f {
            0x02 | 0x06 => Fault::ObjectMemory, // OBJECT_MEMORY, OBJECT_HANDLES
            0x10..=0x16 => Fault::Evicted,      // REFERENCE_Hx
            0x21 => Fault::Lockout,
            _ => Fault::Other,
        };
    }
    match rc {
        0x100 => Fault::Lost, // TPM_RC_INITIALIZE: the TPM was reset and not started yet
        _ => Fault::Other,
    }
}

impl TpmError {
    pub(super) fn new(command: &'static str, e: tss_esapi::Error) -> TpmError {
        let fault = match e {
            tss_esapi::Error::Tss2Error(code) => fault_of(raw(code)),
            tss_esapi::Error::WrapperError(_) => Fault::Other,
        };
        TpmError {
            command,
            fault,
            reason: e.to_string(),
        }
    }

    /// The crate's error for it; `tcti` and `label` say where.
    pub(super) fn into_error(self, tcti: &str, label: Option<&str>) -> Error {
        let key = label.map(|l| format!(" (key {l:?})")).unwrap_or_default();
        match self.fault {
            Fault::Lost | Fault::Evicted | Fault::ObjectMemory => Error::DeviceUnavailable {
                backend: BackendKind::Tpm,
                detail: format!(
                    "{} failed{key}: {} (TCTI {tcti})",
                    self.command, self.reason
                ),
            },
            Fault::AuthFail => Error::AuthFailed {
                backend: BackendKind::Tpm,
                key: Some(label.unwrap_or_default().to_owned()),
            },
            Fault::Lockout => Error::AuthLocked {
                backend: BackendKind::Tpm,
            },
            Fault::BadBlob => failed(
                self.command,
                format!(
                    "the TPM refuses the key{key}: its wrapped private blob is damaged, or was \
                     made by another TPM or before this TPM was cleared ({})",
                    self.reason
                ),
            ),
            Fault::Unsupported | Fault::Other => {
                failed(self.command, format!("{}{key}", self.reason))
            }
        }
    }
}

/// Any other failure of a TPM command or step.
pub(super) fn failed(command: &'static str, reason: String) -> Error {
    Error::BackendFailed {
        backend: BackendKind::Tpm,
        operation: command,
        reason,
    }
}

/// A wrapper-side failure (marshalling, sizes) as the crate's error.
pub(super) fn wrapper(command: &'static str, e: tss_esapi::Error) -> Error {
    failed(command, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_codes_sort_into_faults() {
        // TPM_RC_AUTH_FAIL on session 1, TPM_RC_BAD_AUTH.
        assert_eq!(fault_of(0x98e), Fault::AuthFail);
        assert_eq!(fault_of(0x9a2), Fault::AuthFail);
        assert_eq!(fault_of(0x921), Fault::Lockout);
        assert_eq!(fault_of(0x902), Fault::ObjectMemory);
        assert_eq!(fault_of(0x910), Fault::Evicted);
        assert_eq!(fault_of(0x18b), Fault::Evicted);
        assert_eq!(fault_of(0x19f), Fault::BadBlob);
        assert_eq!(fault_of(0x1a6), Fault::Unsupported);
        assert_eq!(fault_of(0x100), Fault::Lost);
        // TSS2_TCTI_RC_IO_ERROR, TSS2_ESYS_RC_BAD_SEQUENCE.
        assert_eq!(fault_of(0xa000a), Fault::Lost);
        assert_eq!(fault_of(0x70007), Fault::Lost);
        assert_eq!(fault_of(0x7000b), Fault::Other);
        assert_eq!(fault_of(0x101), Fault::Other);
    }
}
