//! The module's own entry points, for the three calls cryptoki cannot make for us:
//! `C_Initialize` with application mutexes (its `CInitializeArgs` cannot carry them), a
//! single-part `C_Sign` on an operation already started with `C_SignInit` (its `Session::sign`
//! always starts one itself, which leaves no room for the `CKU_CONTEXT_SPECIFIC` login that keys
//! with `CKA_ALWAYS_AUTHENTICATE` need between the two), and `C_GetTokenInfo` as the module
//! fills it in (cryptoki's `get_token_info` refuses the whole answer when one field, such as a
//! malformed `utcTime`, does not parse; token selection needs only label, serial and flags).

use std::path::Path;

use cryptoki::context::Function;
use cryptoki::error::{Error as CkError, Rv};
use cryptoki::session::Session;
use cryptoki::slot::Slot;
use cryptoki_sys::{
    CK_C_GetTokenInfo, CK_C_INITIALIZE_ARGS, CK_C_Initialize, CK_C_Sign, CK_FUNCTION_LIST, CK_RV,
    CK_TOKEN_INFO, CK_ULONG, CKR_BUFFER_TOO_SMALL, CKR_CANT_LOCK,
};

use super::locking::initialize_args;

/// A loaded module's function list, kept with the library handle that keeps it mapped.
pub(crate) struct RawModule {
    // Never read: holding it keeps the module mapped while the functions may be called.
    _library: cryptoki_sys::Pkcs11,
    initialize: CK_C_Initialize,
    sign: CK_C_Sign,
    get_token_info: CK_C_GetTokenInfo,
}

impl RawModule {
    /// Opens the module at `path` (the same mapping as any other handle to it in this process)
    /// and reads its function list.
    pub(crate) fn load(path: &Path) -> Result<RawModule, String> {
        // SAFETY: loading a PKCS#11 module runs its initialisers, exactly as cryptoki's own
        // `Pkcs11::new` on the same path does.
        let library = unsafe { cryptoki_sys::Pkcs11::new(path) }.map_err(|e| e.to_string())?;
        let mut list: *mut CK_FUNCTION_LIST = std::ptr::null_mut();
        // SAFETY: C_GetFunctionList writes a pointer to the module's static function list.
        let rv = unsafe { library.C_GetFunctionList(&mut list) };
        if rv != cryptoki_sys::CKR_OK || list.is_null() {
            return Err(format!("C_GetFunctionList failed (0x{rv:x})"));
        }
        // SAFETY: non-null, and valid for as long as the module stays loaded.
        let list = unsafe { &*list };
        Ok(RawModule {
            _library: library,
            initialize: list.C_Initialize,
            sign: list.C_Sign,
            get_token_info: list.C_GetTokenInfo,
        })
    }

    /// `C_Initialize` with our mutex functions, or with the module's own OS locking when it
    /// refuses them (`CKR_CANT_LOCK`).
    pub(crate) fn initialize(&self) -> Result<(), CkError> {
        let initialize = self.initialize.ok_or(CkError::NullFunctionPointer)?;
        let call = |mut args: CK_C_INITIALIZE_ARGS| {
            // SAFETY: `args` is a valid CK_C_INITIALIZE_ARGS for the duration of the call.
            unsafe { initialize((&mut args as *mut CK_C_INITIALIZE_ARGS).cast()) }
        };
        let mut rv = call(initialize_args(true));
        if rv == CKR_CANT_LOCK {
            tracing::debug!("the PKCS#11 module refuses application mutexes; using its own");
            rv = call(initialize_args(false));
        }
        Rv::from(rv).into_result(Function::Initialize)
    }

    /// `C_GetTokenInfo` for `slot`, the structure as the module wrote it, unparsed.
    pub(crate) fn token_info(&self, slot: Slot) -> Result<CK_TOKEN_INFO, CkError> {
        let get_token_info = self.get_token_info.ok_or(CkError::NullFunctionPointer)?;
        let mut info = CK_TOKEN_INFO::default();
        // SAFETY: `info` is a valid, writable CK_TOKEN_INFO for the duration of the call.
        let rv = unsafe { get_token_info(slot.into(), &mut info) };
        Rv::from(rv).into_result(Function::GetTokenInfo)?;
        Ok(info)
    }

    /// Single-part `C_Sign` of `data` on `session`, whose signing operation the caller has
    /// started (`C_SignInit`). `expected` is the signature length to make room for; a token
    /// that needs more says so, and the operation stays active for a second call.
    pub(crate) fn sign(
        &self,
        session: &Session,
        data: &[u8],
        expected: usize,
    ) -> Result<Vec<u8>, CkError> {
        let sign = self.sign.ok_or(CkError::NullFunctionPointer)?;
        let mut signature = vec![0u8; expected];
        let mut len = expected as CK_ULONG;
        let call = |signature: &mut Vec<u8>, len: &mut CK_ULONG| -> CK_RV {
            // SAFETY: `data` is read-only for the module despite the `*mut` in the C signature;
            // `signature` has room for `len` bytes, and the session handle is live while
            // `session` is borrowed.
            unsafe {
                sign(
                    session.handle(),
                    data.as_ptr().cast_mut(),
                    data.len() as CK_ULONG,
                    signature.as_mut_ptr(),
                    len,
                )
            }
        };
        let mut rv = call(&mut signature, &mut len);
        if rv == CKR_BUFFER_TOO_SMALL {
            signature.resize(len as usize, 0);
            rv = call(&mut signature, &mut len);
        }
        Rv::from(rv).into_result(Function::Sign)?;
        signature.truncate(len as usize);
        Ok(signature)
    }
}
