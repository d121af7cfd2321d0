//! Loading modules and finding tokens.
//!
//! A PKCS#11 module may be initialised once per process (SoftHSM2 and most others keep global
//! state), so modules live in a process-wide registry keyed by their canonical path and are
//! never finalised. A token is found by label or serial, not by slot ID, because slot IDs
//! change when a token is re-inserted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use cryptoki::context::Pkcs11;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::MechanismType;
use cryptoki::slot::Slot;

use super::TokenSelector;
use cryptoki_sys::{CK_TOKEN_INFO, CKF_TOKEN_INITIALIZED};

use super::error::{ck_error, failed, rv, rv_name, token_gone};
use super::raw::RawModule;
use crate::Error;

/// Loads and initialises the module at `path` as the backend does (handing it parking_lot
/// mutexes, which spin briefly before they sleep, unless it refuses them), or returns the
/// context this process already has for it. For tools and benchmarks that talk to the token
/// beside a backend. The caller counts as a user of the module for the rest of the process, so
/// no backend will re-initialise it under the caller's sessions.
pub fn load_module(path: &Path) -> Result<Pkcs11, Error> {
    let (_, ctx, user) = module(path)?;
    std::mem::forget(user);
    Ok(ctx)
}

/// One loaded module: its context, its raw entry points, and how many tokens in this process
/// use it.
struct Module {
    ctx: Pkcs11,
    raw: Arc<RawModule>,
    users: Arc<AtomicUsize>,
}

/// A token's share of a module; the module may be re-initialised only while a token is its
/// sole user, since `C_Finalize` ends every session of the process on it.
pub(crate) struct ModuleUse {
    users: Arc<AtomicUsize>,
    /// The module's own entry points (`C_Initialize` with our mutexes, single-part `C_Sign`).
    pub(crate) raw: Arc<RawModule>,
}

impl ModuleUse {
    /// Whether the caller's token is the module's only user in this process.
    pub(crate) fn sole_user(&self) -> bool {
        self.users.load(Ordering::SeqCst) == 1
    }
}

impl Drop for ModuleUse {
    fn drop(&mut self) {
        self.users.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Loads (once per process) and initialises the module at `path`, returning its canonical path
/// and context. Later calls with the same file share the context.
pub(crate) fn module(path: &Path) -> Result<(PathBuf, Pkcs11, ModuleUse), Error> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Module>>> = OnceLock::new();
    let canonical = std::fs::canonicalize(path).map_err(|source| Error::Io {
        action: "opening PKCS#11 module",
        path: path.to_owned(),
        source,
    })?;
    let mut modules = MODULES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let in_use = |m: &Module| {
        m.users.fetch_add(1, Ordering::SeqCst);
        ModuleUse {
            users: m.users.clone(),
            raw: m.raw.clone(),
        }
    };
    if let Some(m) = modules.get(&canonical) {
        return Ok((canonical, m.ctx.clone(), in_use(m)));
    }
    let ctx = Pkcs11::new(&canonical).map_err(|e| {
        failed(
            "loading the module",
            format!("{}: {e}", canonical.display()),
        )
    })?;
    let raw = RawModule::load(&canonical).map_err(|reason| {
        failed(
            "loading the module",
            format!("{}: {reason}", canonical.display()),
        )
    })?;
    // Another library in this process (a test's raw cryptoki context, a TLS engine) may have
    // initialised the module already; that is fine, it is the same instance.
    match raw.initialize() {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(ck_error(e)),
    }
    let m = Module {
        ctx: ctx.clone(),
        raw: Arc::new(raw),
        users: Arc::new(AtomicUsize::new(0)),
    };
    let used = in_use(&m);
    modules.insert(canonical.clone(), m);
    Ok((canonical, ctx, used))
}

/// What the token says about itself, compared with URIs and stored in key records.
#[derive(Clone, Debug, Default)]
pub(crate) struct TokenIdentity {
    pub label: String,
    pub serial: String,
    pub manufacturer: String,
    pub model: String,
    pub slot: u64,
}

/// A token found in a slot.
pub(crate) struct FoundToken {
    pub slot: Slot,
    pub identity: TokenIdentity,
    pub mechanisms: Vec<MechanismType>,
}

/// What a slot's `CK_TOKEN_INFO` says that selection and key records need. Read from the raw
/// structure (see [`RawModule::token_info`]): the other fields, `utcTime` among them, are
/// left alone, since tokens in the field fill them sloppily (an older soft token writes
/// spaces and `hh:mm:ss` where PKCS#11 wants `YYYYMMDDhhmmss00`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SlotToken {
    pub label: String,
    pub serial: String,
    pub manufacturer: String,
    pub model: String,
    pub initialized: bool,
}

impl SlotToken {
    /// The blank-padded text fields, trimmed (lossily decoded: a label is for matching and
    /// messages, and a stray byte must not hide the token), and `CKF_TOKEN_INITIALIZED`.
    pub(crate) fn from_raw(info: &CK_TOKEN_INFO) -> SlotToken {
        let text = |field: &[u8]| String::from_utf8_lossy(field).trim_end().to_owned();
        SlotToken {
            label: text(&info.label),
            serial: text(&info.serialNumber).trim_start().to_owned(),
            manufacturer: text(&info.manufacturerID),
            model: text(&info.model),
            initialized: info.flags & CKF_TOKEN_INITIALIZED != 0,
        }
    }

    /// Reads the token in `slot`.
    pub(crate) fn read(raw: &RawModule, slot: Slot) -> Result<SlotToken, CkError> {
        raw.token_info(slot).map(|info| SlotToken::from_raw(&info))
    }
}

/// What [`discover`] saw when the token was not there: the initialised tokens the module
/// shows instead, as `"label" (serial S)`, so that a mistyped label can be put right, and the
/// slots it could not read, with the module's answer, so that a broken token is not mistaken
/// for a missing one.
#[derive(Default)]
pub(crate) struct OtherTokens {
    pub shown: Vec<String>,
    pub unreadable: Vec<String>,
}

impl std::fmt::Display for OtherTokens {
    /// The end of "token labelled X in MODULE ...": a slot that could not be read comes first,
    /// with the module's answer, since the token may well be in it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = if self.shown.is_empty() {
            "no initialised token".to_owned()
        } else {
            self.shown.join(", ")
        };
        if self.unreadable.is_empty() {
            write!(f, "was not found (the module shows {shown})")
        } else {
            write!(
                f,
                "could not be looked up: {}; the other slots show {shown}",
                self.unreadable.join("; ")
            )
        }
    }
}

/// Looks for the initialised token `selector` names among the slots that hold one: the
/// tokens there instead (and the slots that could not be read) when there is none, an error
/// when several match.
pub(crate) fn discover(
    ctx: &Pkcs11,
    raw: &RawModule,
    selector: &TokenSelector,
) -> Result<Result<FoundToken, OtherTokens>, Error> {
    let slots = ctx.get_slots_with_token().map_err(ck_error)?;
    let mut found = Vec::new();
    let mut others = OtherTokens::default();
    for slot in slots {
        let token = match SlotToken::read(raw, slot) {
            Ok(token) => token,
            // A token can vanish between the two calls; such a slot simply does not match.
            Err(e) if rv(&e).is_some_and(token_gone) => continue,
            Err(e) => {
                let reason = rv(&e).map(rv_name).unwrap_or_else(|| e.to_string());
                tracing::debug!(slot = slot.id(), %reason, "C_GetTokenInfo failed; skipping the slot");
                others.unreadable.push(format!(
                    "slot {} could not be read (C_GetTokenInfo: {reason})",
                    slot.id()
                ));
                continue;
            }
        };
        if token.initialized {
            others
                .shown
                .push(format!("{:?} (serial {})", token.label, token.serial));
        }
        let matches = match selector {
            TokenSelector::Label(l) => token.label == l.trim_end(),
            TokenSelector::Serial(s) => token.serial == s.trim(),
        };
        if matches && token.initialized {
            found.push((slot, token));
        }
    }
    match found.len() {
        0 => Ok(Err(others)),
        1 => {
            let (slot, token) = found.remove(0);
            let mechanisms = ctx.get_mechanism_list(slot).map_err(ck_error)?;
            Ok(Ok(FoundToken {
                slot,
                identity: TokenIdentity {
                    label: token.label,
                    serial: token.serial,
                    manufacturer: token.manufacturer,
                    model: token.model,
                    slot: slot.id(),
                },
                mechanisms,
            }))
        }
        n => Err(failed(
            "C_GetTokenInfo",
            format!("{n} tokens match {selector}; select one by serial number instead"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use cryptoki_sys::CKF_CLOCK_ON_TOKEN;

    use super::*;

    fn padded<const N: usize>(text: &str) -> [u8; N] {
        let mut field = [b' '; N];
        field[..text.len()].copy_from_slice(text.as_bytes());
        field
    }

    /// A token with a clock whose `utcTime` is not `YYYYMMDDhhmmss00`: cryptoki refuses the
    /// whole structure, the raw reading still finds label, serial and flags.
    #[test]
    fn a_malformed_utc_time_does_not_hide_the_token() {
        let info = CK_TOKEN_INFO {
            label: padded("dpop"),
            manufacturerID: padded("Sloppy"),
            model: padded("Soft"),
            serialNumber: padded("0123abcd"),
            flags: CKF_TOKEN_INITIALIZED | CKF_CLOCK_ON_TOKEN,
            utcTime: *b"    12:34:56    ",
            ..CK_TOKEN_INFO::default()
        };
        assert!(cryptoki::slot::TokenInfo::try_from(info).is_err());
        assert_eq!(
            SlotToken::from_raw(&info),
            SlotToken {
                label: "dpop".into(),
                serial: "0123abcd".into(),
                manufacturer: "Sloppy".into(),
                model: "Soft".into(),
                initialized: true,
            }
        );
    }

    #[test]
    fn unreadable_slots_are_named() {
        let none = OtherTokens::default().to_string();
        assert_eq!(
            none,
            "was not found (the module shows no initialised token)"
        );
        let broken = OtherTokens {
            shown: vec!["\"other\" (serial 1)".into()],
            unreadable: vec!["slot 7 could not be read (C_GetTokenInfo: CKR_DEVICE_ERROR)".into()],
        };
        assert_eq!(
            broken.to_string(),
            "could not be looked up: slot 7 could not be read (C_GetTokenInfo: \
             CKR_DEVICE_ERROR); the other slots show \"other\" (serial 1)"
        );
    }
}
