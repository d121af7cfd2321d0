//! A SoftHSM2 for the PKCS#11 tests: one config and token directory per test process (under
//! cargo's target tmp dir), a fresh token per test made by `softhsm/make-token.sh`, and a raw
//! cryptoki context for looking at the token behind the backend's back.
//!
//! Missing SoftHSM2 is a test failure with a message saying what to install, never a skip.

#![allow(dead_code)] // Each test binary uses a different part.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use dpop_keys::pkcs11::{Pkcs11Backend, Pkcs11Config, TokenSelector};
use secrecy::SecretString;

/// The PKCS#11 module under test.
pub fn module_path() -> PathBuf {
    std::env::var_os("DPOP_TEST_PKCS11_MODULE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"))
}

pub struct Hsm {
    pub dir: PathBuf,
    pub conf: PathBuf,
    pub module: PathBuf,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The process-wide SoftHSM2 set-up. `SOFTHSM2_CONF` is set here, once, before any test
/// loads the module (SoftHSM2 reads it in `C_Initialize`, which happens once per process).
pub fn hsm() -> &'static Hsm {
    static HSM: OnceLock<Hsm> = OnceLock::new();
    HSM.get_or_init(|| {
        let module = module_path();
        assert!(
            module.exists(),
            "PKCS#11 module {} not found: install SoftHSM2 (apt-get install softhsm2) or set \
             DPOP_TEST_PKCS11_MODULE",
            module.display()
        );
        let version = Command::new("softhsm2-util").arg("--version").output();
        assert!(
            version.as_ref().is_ok_and(|o| o.status.success()),
            "softhsm2-util is not runnable ({version:?}): install SoftHSM2 (apt-get install softhsm2)"
        );
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        // Directories of earlier runs whose process is gone.
        if let Ok(entries) = std::fs::read_dir(&base) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name.strip_prefix("softhsm-")
                    && !Path::new("/proc").join(pid).exists()
                {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = base.join(format!("softhsm-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // SoftHSM2 reads its token directory once, in C_Initialize: tokens made later by
        // another process stay invisible to this one. So every test's token is made now.
        for label in TOKENS {
            make_token_in(&dir, label, PIN, SO_PIN);
        }
        let conf = dir.join("softhsm2.conf");
        // SAFETY: runs once, inside OnceLock initialisation, before any test thread has loaded
        // the PKCS#11 module (every test calls hsm() first), so nothing reads the environment
        // concurrently in a way that matters.
        unsafe { std::env::set_var("SOFTHSM2_CONF", &conf) };
        Hsm { dir, conf, module }
    })
}

fn make_token_in(dir: &Path, label: &str, pin: &str, so_pin: &str) {
    let script = repo_root().join("softhsm/make-token.sh");
    let out = Command::new(&script)
        .args([
            dir.as_os_str(),
            label.as_ref(),
            pin.as_ref(),
            so_pin.as_ref(),
        ])
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("export SOFTHSM2_CONF=") && stdout.trim_end().ends_with("softhsm2.conf"),
        "unexpected output {stdout:?}"
    );
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
            &hsm().module,
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
        let out = Command::new("softhsm2-util")
            .args(["--delete-token", "--token", &self.label])
            .env("SOFTHSM2_CONF", &hsm().conf)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
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
        let ctx = Pkcs11::new(&hsm.module).unwrap();
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => panic!("C_Initialize: {e}"),
        }
        ctx
    })
}
