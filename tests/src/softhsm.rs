//! SoftHSM2 for the PKCS#11 tests: the one fixture behind the agent's end-to-end tests (a token
//! per test, [`SoftHsmToken`]), the backend's in-process tests (all tokens of a test binary in
//! one configuration, [`SoftHsm::for_this_process`]) and the benches.
//!
//! Tokens are made by `softhsm/make-token.sh DIR LABEL PIN SO_PIN`, as users make them. A
//! configuration [`SoftHsm`] is a directory holding `softhsm2.conf` (its `SOFTHSM2_CONF`) and
//! `tokens/` (SoftHSM2's storage, one subdirectory per token).
//!
//! SoftHSM2 reads `SOFTHSM2_CONF` and its token directory once per process, in `C_Initialize`:
//! a process sees the tokens that existed when it loaded the module (see `softhsm/README.md`).
//! So an agent gets its token before it starts, and an in-process test binary makes all its
//! tokens, and sets `SOFTHSM2_CONF`, before the first test loads the module.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use tempfile::TempDir;

use crate::pkcs11::Pkcs11Token;
use crate::{
    AgentOptions, require_command, require_tool, run_ok, workspace_root, write_private_file,
};

/// The user PIN variable that [`AgentOptions::pkcs11`] sets in the agent's environment (and
/// names with `--pkcs11-pin-env`).
pub const PKCS11_PIN_VAR: &str = "DPOP_TEST_PKCS11_PIN";

/// The PKCS#11 module under test: `DPOP_TEST_PKCS11_MODULE`, else SoftHSM2's
/// `/usr/lib/softhsm/libsofthsm2.so`. Panics, saying what to install, when it does not exist.
pub fn pkcs11_module() -> PathBuf {
    let module = std::env::var_os("DPOP_TEST_PKCS11_MODULE")
        .filter(|m| !m.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"));
    assert!(
        module.exists(),
        "PKCS#11 module {} not found: install SoftHSM2 (apt-get install softhsm2) or set \
         DPOP_TEST_PKCS11_MODULE",
        module.display()
    );
    module
}

/// Where a [`SoftHsm`] keeps its files.
#[derive(Debug)]
enum Storage {
    /// Removed on drop.
    Temporary(TempDir),
    /// Kept: the process-wide configuration lives as long as the process, and the next run
    /// of the test binary removes it (see [`SoftHsm::for_this_process`]).
    Kept(PathBuf),
}

/// A SoftHSM2 configuration of its own: `<dir>/softhsm2.conf` ([`Self::conf`]) and the token
/// directory `<dir>/tokens` ([`Self::tokens_dir`]), used by nothing else, so tests with their
/// own configuration run in parallel and may delete or restore tokens freely.
#[derive(Debug)]
pub struct SoftHsm {
    storage: Storage,
    module: PathBuf,
}

impl SoftHsm {
    /// A new configuration, without tokens, in a fresh temporary directory (removed on drop:
    /// stop the agents using it first). Panics, saying what to install, when SoftHSM2 is
    /// missing.
    pub fn create() -> SoftHsm {
        let module = require_softhsm();
        let dir = tempfile::Builder::new()
            .prefix("dpop-e2e-softhsm-")
            .tempdir()
            .expect("creating a temporary directory");
        SoftHsm {
            storage: Storage::Temporary(dir),
            module,
        }
    }

    /// The configuration of an in-process test binary, made on the first call and the same for
    /// every later one: the tokens `labels` (each with `pin` and `so_pin`) in
    /// `<base>/softhsm-<pid>` (pass cargo's `CARGO_TARGET_TMPDIR`; directories that earlier,
    /// finished runs left there are removed), and `SOFTHSM2_CONF` set in this process's
    /// environment.
    ///
    /// SoftHSM2 reads `SOFTHSM2_CONF` and its tokens once, in `C_Initialize`, once per
    /// process: call this before anything loads the module (every test calls it first), and
    /// name every token the binary's tests use, since tokens other processes make later stay
    /// invisible. Panics when a later call asks for other tokens.
    pub fn for_this_process(
        base: &Path,
        labels: &[&str],
        pin: &str,
        so_pin: &str,
    ) -> &'static SoftHsm {
        static HSM: OnceLock<(Vec<String>, SoftHsm)> = OnceLock::new();
        let (made, hsm) = HSM.get_or_init(|| {
            let module = require_softhsm();
            remove_finished_runs(base);
            let dir = base.join(format!("softhsm-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
            let hsm = SoftHsm {
                storage: Storage::Kept(dir),
                module,
            };
            for label in labels {
                hsm.add_token(label, pin, so_pin);
            }
            // SAFETY: runs once, inside OnceLock initialisation, before any test thread has
            // loaded the PKCS#11 module (every test calls this first), so nothing reads the
            // environment concurrently in a way that matters.
            unsafe { std::env::set_var("SOFTHSM2_CONF", hsm.conf()) };
            (labels.iter().map(|l| (*l).to_owned()).collect(), hsm)
        });
        assert_eq!(
            made, labels,
            "the process-wide SoftHSM2 was made with other tokens"
        );
        hsm
    }

    /// Makes a token labelled `label` in this configuration with `softhsm/make-token.sh`;
    /// panics (with the script's output) when it fails.
    pub fn add_token(&self, label: &str, pin: &str, so_pin: &str) {
        let script = workspace_root().join("softhsm/make-token.sh");
        let out = Command::new(&script)
            .arg(self.dir())
            .args([label, pin, so_pin])
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} failed ({}): {}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let expected = format!("export SOFTHSM2_CONF={}\n", self.conf().display());
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            expected,
            "make-token.sh prints the line that selects the token's configuration"
        );
    }

    /// The PKCS#11 module ([`pkcs11_module`]).
    pub fn module(&self) -> &Path {
        &self.module
    }

    /// The directory holding configuration and token storage.
    pub fn dir(&self) -> &Path {
        match &self.storage {
            Storage::Temporary(dir) => dir.path(),
            Storage::Kept(dir) => dir,
        }
    }

    /// The `SOFTHSM2_CONF` of this configuration.
    pub fn conf(&self) -> PathBuf {
        self.dir().join("softhsm2.conf")
    }

    /// SoftHSM2's token directory (one subdirectory per token).
    pub fn tokens_dir(&self) -> PathBuf {
        self.dir().join("tokens")
    }

    /// `program` with `SOFTHSM2_CONF` set to this configuration.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new(program);
        command.env("SOFTHSM2_CONF", self.conf());
        command
    }

    /// `softhsm2-util` on this configuration.
    pub fn softhsm2_util(&self) -> Command {
        self.command("softhsm2-util")
    }

    /// Deletes the token `label` with `softhsm2-util --delete-token` (as if it were
    /// unplugged); its storage directory is gone afterwards.
    pub fn delete_token(&self, label: &str) {
        run_ok(
            self.softhsm2_util()
                .args(["--delete-token", "--token"])
                .arg(label),
        );
    }
}

/// The module, after checking that it and `softhsm2-util` are there.
fn require_softhsm() -> PathBuf {
    let module = pkcs11_module();
    require_tool("softhsm2-util", &["--version"], "softhsm2");
    module
}

/// Removes the `softhsm-<pid>` directories under `base` whose process is gone.
fn remove_finished_runs(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix("softhsm-")
            && !Path::new("/proc").join(pid).exists()
        {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// A throw-away SoftHSM2 token in a [`SoftHsm`] configuration of its own, so that tests with
/// their own tokens run in parallel and may delete or restore them freely.
///
/// SoftHSM2 reads the token directory once per process, in `C_Initialize`: an agent sees the
/// tokens that exist when it starts (see `softhsm/README.md`). The directory is removed on
/// drop; stop the agents using it first (drop them before the token).
#[derive(Debug)]
pub struct SoftHsmToken {
    hsm: SoftHsm,
    label: String,
    pin: String,
    so_pin: String,
}

impl SoftHsmToken {
    /// Makes the token; panics (with the script's output) when SoftHSM2 is missing or the
    /// script fails.
    pub fn create(label: &str, pin: &str, so_pin: &str) -> SoftHsmToken {
        let hsm = SoftHsm::create();
        hsm.add_token(label, pin, so_pin);
        SoftHsmToken {
            hsm,
            label: label.to_owned(),
            pin: pin.to_owned(),
            so_pin: so_pin.to_owned(),
        }
    }

    /// The configuration the token lives in.
    pub fn hsm(&self) -> &SoftHsm {
        &self.hsm
    }

    /// The token label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The user PIN.
    pub fn pin(&self) -> &str {
        &self.pin
    }

    /// The security officer PIN.
    pub fn so_pin(&self) -> &str {
        &self.so_pin
    }

    /// The PKCS#11 module ([`pkcs11_module`]).
    pub fn module(&self) -> &Path {
        self.hsm.module()
    }

    /// The temporary directory holding configuration and token storage.
    pub fn dir(&self) -> &Path {
        self.hsm.dir()
    }

    /// The `SOFTHSM2_CONF` of this token.
    pub fn conf(&self) -> PathBuf {
        self.hsm.conf()
    }

    /// SoftHSM2's token directory (one subdirectory per token).
    pub fn tokens_dir(&self) -> PathBuf {
        self.hsm.tokens_dir()
    }

    /// `program` with `SOFTHSM2_CONF` set to this token's configuration.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        self.hsm.command(program)
    }

    /// `softhsm2-util` on this token's configuration.
    pub fn softhsm2_util(&self) -> Command {
        self.hsm.softhsm2_util()
    }

    /// `pkcs11-tool --module <module> --token-label <label>` on this token's configuration
    /// (OpenSC; panics when it is missing). Add `--login` and `--pin` for private objects.
    pub fn pkcs11_tool(&self) -> Command {
        // (Its --help and --version exit with status 2.)
        require_command(
            self.command("pkcs11-tool")
                .arg("--module")
                .arg(self.module())
                .arg("--show-info"),
            "pkcs11-tool",
            "opensc",
        );
        let mut command = self.command("pkcs11-tool");
        command
            .arg("--module")
            .arg(self.module())
            .arg("--token-label")
            .arg(&self.label);
        command
    }

    /// What `pkcs11-tool --login --list-objects` prints for this token, all objects or those of
    /// `class` (`privkey`, `pubkey`), logged in with `pin`.
    pub fn list_objects(&self, pin: &str, class: Option<&str>) -> String {
        let mut command = self.pkcs11_tool();
        command.args(["--login", "--pin", pin, "--list-objects"]);
        if let Some(class) = class {
            command.args(["--type", class]);
        }
        String::from_utf8_lossy(&run_ok(&mut command).stdout).into_owned()
    }

    /// Deletes the token with `softhsm2-util --delete-token` (as if it were unplugged); the
    /// token's storage directory is gone afterwards.
    pub fn delete(&self) {
        self.hsm.delete_token(&self.label);
    }
}

impl Pkcs11Token for SoftHsmToken {
    fn module(&self) -> &Path {
        self.hsm.module()
    }

    fn label(&self) -> &str {
        &self.label
    }

    fn pin(&self) -> &str {
        &self.pin
    }

    fn dir(&self) -> &Path {
        self.hsm.dir()
    }

    fn env(&self) -> Vec<(OsString, OsString)> {
        vec![("SOFTHSM2_CONF".into(), self.conf().into())]
    }
}

impl AgentOptions {
    /// The agent on `token`: `--pkcs11-module`, `--pkcs11-token LABEL`, the module's
    /// environment (`SOFTHSM2_CONF`, ...), and the token's PIN in [`PKCS11_PIN_VAR`] named by
    /// `--pkcs11-pin-env`.
    pub fn pkcs11(self, token: &impl Pkcs11Token) -> AgentOptions {
        let pin = token.pin().to_owned();
        self.pkcs11_pin_env(token, &pin)
    }

    /// Like [`Self::pkcs11`] with another PIN in [`PKCS11_PIN_VAR`] (a wrong one, say).
    pub fn pkcs11_pin_env(self, token: &impl Pkcs11Token, pin: &str) -> AgentOptions {
        self.pkcs11_no_pin(token)
            .arg("--pkcs11-pin-env")
            .arg(PKCS11_PIN_VAR)
            .env(PKCS11_PIN_VAR, pin)
    }

    /// Like [`Self::pkcs11`], the PIN from `--pkcs11-pin-file <token dir>/pin`, a 0600 file
    /// holding `contents` (write the PIN with or without a newline, or nothing at all).
    pub fn pkcs11_pin_file(self, token: &impl Pkcs11Token, contents: &str) -> AgentOptions {
        let path = token.dir().join("pin");
        let _ = fs::remove_file(&path);
        write_private_file(&path, contents.as_bytes());
        self.pkcs11_no_pin(token).arg("--pkcs11-pin-file").arg(path)
    }

    /// `--pkcs11-module`, `--pkcs11-token` and the module's environment only: add a PIN
    /// source yourself (without one the agent would prompt on its terminal, which it has not).
    pub fn pkcs11_no_pin(self, token: &impl Pkcs11Token) -> AgentOptions {
        let mut options = self
            .arg("--pkcs11-module")
            .arg(token.module())
            .arg("--pkcs11-token")
            .arg(token.label());
        for (name, value) in token.env() {
            options = options.env(name, value);
        }
        options
    }
}
