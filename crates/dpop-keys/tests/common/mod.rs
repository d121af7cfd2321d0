//! A SoftHSM2 for the PKCS#11 tests: one config and token directory per test process (under
//! cargo's target tmp dir, made by dpop-tests' [`SoftHsm::for_this_process`]), a token per
//! test made by `softhsm/make-token.sh`, and a raw cryptoki context for looking at the token
//! behind the backend's back.
//!
//! Missing SoftHSM2 is a test failure with a message saying what to install, never a skip.

use std::path::Path;
use std::sync::OnceLock;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use dpop_keys::pkcs11::{Pkcs11Backend, Pkcs11Config, TokenSelector};
use dpop_tests::SoftHsm;
use secrecy::SecretString;

/// The process-wide SoftHSM2 (dpop-tests' fixture): every token of [`TOKENS`], made before
/// any test loads the module, and `SOFTHSM2_CONF` set once, since SoftHSM2 reads it once per
/// process, in `C_Initialize`, and never sees tokens other processes make afterwards.
pub fn hsm() -> &'static SoftHsm {
    SoftHsm::for_this_process(Path::new(env!("CARGO_TARGET_TMPDIR")), TOKENS, PIN, SO_PIN)
}

pub const PIN: &str = "4321";
pub const SO_PIN: &str = "87654321";

/// One token per test, so that tests run in parallel without seeing each other's keys.
pub const TOKENS: &[&str] = &[
    "generate",
    "import",
    "adopt",
    "delete",
    "reload",
    "concurrent",
    "wrong-pin",
    "pin-retry",
    "removal",
    "sensitive",
    "selection",
];

/// The token made for the test of that name (see [`TOKENS`]).
pub struct TestToken {
    pub label: String,
    pub metadata: tempfile::TempDir,
}

pub fn token(label: &str) -> TestToken {
    hsm();
    assert!(TOKENS.contains(&label), "add {label:?} to common::TOKENS");
    TestToken {
        label: label.to_owned(),
        metadata: tempfile::tempdir().unwrap(),
    }
}

impl TestToken {
    pub fn config(&self) -> Pkcs11Config {
        self.config_with_pin(PIN)
    }

    pub fn config_with_pin(&self, pin: &str) -> Pkcs11Config {
        Pkcs11Config::new(
            hsm().module(),
            TokenSelector::Label(self.label.clone()),
            SecretString::from(pin),
            self.metadata.path().join("pkcs11"),
        )
    }

    pub fn open(&self) -> Pkcs11Backend {
        Pkcs11Backend::open(self.config()).expect("opening the test token")
    }

    /// Deletes the token (as if it were unplugged).
    pub fn delete(&self) {
        hsm().delete_token(&self.label);
    }

    /// Creates the token again under the same label (new serial, new slot, no objects), as
    /// if it were plugged back in. Done in this process, through SoftHSM2's free slot, since
    /// the module does not see tokens other processes make after it started.
    pub fn recreate(&self) {
        let ctx = raw();
        let free = ctx
            .get_slots_with_token()
            .unwrap()
            .into_iter()
            .find(|s| ctx.get_token_info(*s).is_ok_and(|i| !i.token_initialized()))
            .expect("SoftHSM2 keeps one free slot");
        ctx.init_token(free, &AuthPin::from(SO_PIN), &self.label)
            .unwrap();
        let session = ctx.open_rw_session(self.slot()).unwrap();
        session
            .login(UserType::So, Some(&AuthPin::from(SO_PIN)))
            .unwrap();
        session.init_pin(&AuthPin::from(PIN)).unwrap();
        session.logout().unwrap();
    }

    /// The token's serial number.
    pub fn serial(&self) -> String {
        raw()
            .get_token_info(self.slot())
            .unwrap()
            .serial_number()
            .trim()
            .to_owned()
    }

    /// The token's slot, found through the raw context.
    pub fn slot(&self) -> Slot {
        let ctx = raw();
        ctx.get_slots_with_token()
            .unwrap()
            .into_iter()
            .find(|s| {
                ctx.get_token_info(*s)
                    .is_ok_and(|i| i.label().trim_end() == self.label)
            })
            .unwrap_or_else(|| panic!("token {} not found", self.label))
    }

    /// A raw read-write session, logged in (sharing the application's login state).
    pub fn raw_session(&self) -> Session {
        let session = raw().open_rw_session(self.slot()).unwrap();
        match session.login(UserType::User, Some(&AuthPin::from(PIN))) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(e) => panic!("raw login: {e}"),
        }
        session
    }
}

/// A cryptoki context on the same module instance the backend uses.
pub fn raw() -> &'static Pkcs11 {
    static RAW: OnceLock<Pkcs11> = OnceLock::new();
    RAW.get_or_init(|| {
        let hsm = hsm();
        let ctx = Pkcs11::new(hsm.module()).unwrap();
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => panic!("C_Initialize: {e}"),
        }
        ctx
    })
}
