//! A sloppy PKCS#11 token for the end-to-end tests (`tests/e2e/pkcs11_shim.rs`): the small
//! module in `tests/pkcs11-shim/shim.c`, which wraps SoftHSM2 and answers as tokens in the field
//! do ([`ShimFaults`]: a malformed `utcTime`, unreadable token info, only the raw signing
//! mechanisms, usage flags a key template may not turn off), the way `tests/wine/bcryptprimitives.c` stands in for a Windows library.
//!
//! [`shim_module`] builds it with the system `cc` once per test process, next to the test
//! executable; [`AgentOptions::pkcs11_shim`] starts an agent on a [`SoftHsmToken`] through it.
//! Needs `cc` and p11-kit's `pkcs11.h` (`apt-get install gcc libp11-kit-dev`) besides
//! SoftHSM2; fails, never skips, without them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use crate::{AgentOptions, PKCS11_PIN_VAR, SoftHsmToken, require_tool, workspace_root};

/// Where p11-kit keeps the PKCS#11 header the shim is written against.
const P11_KIT_INCLUDE: &str = "/usr/include/p11-kit-1";

/// `CKR_DEVICE_ERROR`, for [`ShimFaults::token_info_fails`].
pub const CKR_DEVICE_ERROR: u64 = 0x30;

/// What the shim gets wrong; the default is nothing (every call goes to SoftHSM2).
#[derive(Clone, Debug, Default)]
pub struct ShimFaults {
    /// `C_GetTokenInfo` says the token has a clock and writes `"    12:34:56    "` as its
    /// `utcTime` (`DPOP_SHIM_BAD_UTCTIME`); label, serial and the other flags stay right.
    pub bad_utc_time: bool,
    /// `C_GetTokenInfo` fails with this return value (`DPOP_SHIM_TOKEN_INFO_RV`).
    pub token_info_fails: Option<u64>,
    /// The combined hash-and-sign mechanisms (`CKM_SHA256_RSA_PKCS`, `CKM_ECDSA_SHA256`, ...)
    /// are hidden and refused by `C_SignInit` (`DPOP_SHIM_RAW_ONLY`): only `CKM_RSA_PKCS`,
    /// `CKM_RSA_PKCS_PSS`, `CKM_ECDSA` (and `CKM_EDDSA`) sign.
    pub raw_only: bool,
    /// The token fixes what a private key may do (`DPOP_SHIM_FIXED_USAGE`):
    /// `C_GenerateKeyPair` and `C_CreateObject` answer `CKR_ATTRIBUTE_VALUE_INVALID` to a
    /// private key template that sets `CKA_DECRYPT`, `CKA_UNWRAP` or `CKA_DERIVE` to false, so
    /// only the agent's minimal template is taken and SoftHSM2 chooses those flags.
    pub fixed_usage: bool,
}

impl ShimFaults {
    /// The environment that selects these faults, and the module the shim wraps.
    pub fn env(&self, token: &SoftHsmToken) -> Vec<(&'static str, String)> {
        let mut env = vec![(
            "DPOP_SHIM_MODULE",
            token.module().to_string_lossy().into_owned(),
        )];
        if self.bad_utc_time {
            env.push(("DPOP_SHIM_BAD_UTCTIME", "1".into()));
        }
        if let Some(rv) = self.token_info_fails {
            env.push(("DPOP_SHIM_TOKEN_INFO_RV", format!("{rv:#x}")));
        }
        if self.raw_only {
            env.push(("DPOP_SHIM_RAW_ONLY", "1".into()));
        }
        if self.fixed_usage {
            env.push(("DPOP_SHIM_FIXED_USAGE", "1".into()));
        }
        env
    }
}

/// The shim module, built on first use (per test process) into `pkcs11-shim/` beside the
/// test executable's directory. Panics with the compiler's output when the build fails.
pub fn shim_module() -> &'static Path {
    static SHIM: OnceLock<PathBuf> = OnceLock::new();
    SHIM.get_or_init(build)
}

fn build() -> PathBuf {
    require_tool("cc", &["--version"], "gcc");
    let header = Path::new(P11_KIT_INCLUDE).join("p11-kit/pkcs11.h");
    assert!(
        header.is_file(),
        "{} is needed to build the PKCS#11 shim: apt-get install libp11-kit-dev",
        header.display()
    );
    let exe = std::env::current_exe().expect("path of the running test executable");
    let mut dir = exe.parent().expect("executable has a directory").to_owned();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let dir = dir.join("pkcs11-shim");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    let module = dir.join("libdpop-pkcs11-shim.so");
    // Built under a name of this process's own and renamed into place, so that two test
    // processes building at once never load a half-written library.
    let partial = dir.join(format!("libdpop-pkcs11-shim.so.{}", std::process::id()));
    let source = workspace_root().join("tests/pkcs11-shim/shim.c");
    let output = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-Wall", "-Wextra"])
        .arg(format!("-I{P11_KIT_INCLUDE}"))
        .arg("-o")
        .arg(&partial)
        .arg(&source)
        .args(["-ldl", "-pthread"])
        .output()
        .expect("running cc");
    assert!(
        output.status.success(),
        "building {}: {}",
        source.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::rename(&partial, &module)
        .unwrap_or_else(|e| panic!("moving the shim to {}: {e}", module.display()));
    module
}

/// Runs the `dpop-test-pkcs11` helper on `token` through the shim with `faults` (logged in
/// with the token's PIN where the command logs in); its output, whatever the exit status.
pub fn inspect_through_shim(token: &SoftHsmToken, faults: &ShimFaults, args: &[&str]) -> Output {
    token
        .command(crate::pkcs11::helper())
        .arg(shim_module())
        .arg(token.label())
        .args(args)
        .envs(faults.env(token))
        .env(PKCS11_PIN_VAR, token.pin())
        .output()
        .expect("running dpop-test-pkcs11")
}

impl AgentOptions {
    /// The agent on `token` as [`AgentOptions::pkcs11`] starts it, with the shim as its
    /// `--pkcs11-module`, wrapping the token's module with `faults`.
    pub fn pkcs11_shim(self, token: &SoftHsmToken, faults: &ShimFaults) -> AgentOptions {
        let mut options = self
            .arg("--pkcs11-module")
            .arg(shim_module())
            .arg("--pkcs11-token")
            .arg(token.label())
            .env("SOFTHSM2_CONF", token.conf())
            .arg("--pkcs11-pin-env")
            .arg(PKCS11_PIN_VAR)
            .env(PKCS11_PIN_VAR, token.pin());
        for (name, value) in faults.env(token) {
            options = options.env(name, value);
        }
        options
    }
}
