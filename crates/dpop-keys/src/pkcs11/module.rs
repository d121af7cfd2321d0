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
use super::error::{ck_error, failed};
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

/// What [`discover`] saw when the token was not there: the initialised tokens the module
/// shows instead, as `"label" (serial S)`, so that a mistyped label can be put right.
pub(crate) struct OtherTokens(pub Vec<String>);

impl std::fmt::Display for OtherTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            f.write_str("the module shows no initialised token")
        } else {
            write!(f, "the module shows {}", self.0.join(", "))
        }
    }
}

/// Looks for the initialised token `selector` names among the slots that hold one: the
/// tokens there instead when there is none, an error when several match.
pub(crate) fn discover(
    ctx: &Pkcs11,
    selector: &TokenSelector,
) -> Result<Result<FoundToken, OtherTokens>, Error> {
    let slots = ctx.get_slots_with_token().map_err(ck_error)?;
    let mut found = Vec::new();
    let mut others = Vec::new();
    for slot in slots {
        // A token can vanish between the two calls; such a slot simply does not match.
        let Ok(info) = ctx.get_token_info(slot) else {
            continue;
        };
        if info.token_initialized() {
            others.push(format!(
                "{:?} (serial {})",
                info.label().trim_end(),
                info.serial_number().trim()
            ));
        }
        let matches = match selector {
            TokenSelector::Label(l) => info.label().trim_end() == l.trim_end(),
            TokenSelector::Serial(s) => info.serial_number().trim() == s.trim(),
        };
        if matches && info.token_initialized() {
            found.push((slot, info));
        }
    }
    match found.len() {
        0 => Ok(Err(OtherTokens(others))),
        1 => {
            let (slot, info) = found.remove(0);
            let mechanisms = ctx.get_mechanism_list(slot).map_err(ck_error)?;
            Ok(Ok(FoundToken {
                slot,
                identity: TokenIdentity {
                    label: info.label().trim_end().to_owned(),
                    serial: info.serial_number().trim().to_owned(),
                    manufacturer: info.manufacturer_id().trim_end().to_owned(),
                    model: info.model().trim_end().to_owned(),
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
