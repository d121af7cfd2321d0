//! tpm2-pkcs11, the second PKCS#11 module the key tests run on: Debian's `libtpm2-pkcs11-1`
//! over a throw-away software TPM ([`Swtpm`]), reached through tpm2-abrmd on a private D-Bus
//! session bus, with a token store of its own. Nothing global: no root, no system bus, no
//! `/dev/tpm*`; the processes are killed when the [`Tpm2Token`] is dropped.
//!
//! A token is made as users make one: `tpm2_ptool init` (a primary object in the store) and
//! `tpm2_ptool addtoken --pid=1 --label=.. --userpin=.. --sopin=..`. The whole set-up takes
//! about one and a half seconds on an idle machine (swtpm, dbus-daemon and tpm2-abrmd start
//! in tenths, the two `tpm2_ptool` runs take the rest) and four to five under a parallel test
//! run, so the tests of one process share one token ([`Tpm2Token::shared`], made on first use,
//! stopped when the process exits), each with key labels of its own. They take turns on it:
//! the module keeps its store in SQLite and fails `C_Initialize` ("database is locked") in a
//! process that loads it while another writes, which parallel tests would do. tpm2-pkcs11 reads
//! its store when a process loads the module: a key another process adds later is seen by
//! agents started after it.
//!
//! What the module takes, found by experiment (`TPM2_PKCS11_LOG_LEVEL=2` says why it refuses):
//! it derives a key's flags from the TPM object, where sign and encrypt are one bit and
//! decrypt and verify another, so a public template with `CKA_ENCRYPT false` or `CKA_VERIFY
//! true` next to a private `CKA_DECRYPT false` fails `C_GenerateKeyPair` with
//! `CKR_GENERAL_ERROR` ("User specified and TPM specified attr mismatch: 0x10a"); it ignores
//! `CKA_ALLOWED_MECHANISMS`, `CKA_UNWRAP`, `CKA_DERIVE` and `CKA_SIGN_RECOVER` in templates.
//! Its mechanisms on swtpm: RSA (PKCS#1 v1.5 and PSS, with SHA-256 and others, and raw), ECDSA
//! on P-256 and P-384; no Ed25519.
//!
//! Needs `swtpm`, `dbus-daemon`, `tpm2-abrmd`, `tpm2_ptool` and the module
//! (`apt-get install swtpm libtpm2-pkcs11-1 libtpm2-pkcs11-tools tpm2-abrmd
//! libtss2-tcti-tabrmd0 dbus`); fails, never skips, without them.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use tempfile::TempDir;

use crate::pkcs11::{PIN, Pkcs11Token, SO_PIN};
use crate::{KillOnDrop, PROCESS_TIMEOUT, Swtpm, is_root, require_tool, run_ok, wait_until};

/// Where Debian installs the module.
pub const TPM2_PKCS11_MODULE: &str = "/usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so";

/// A tpm2-pkcs11 token on a TPM of its own, its processes killed on drop.
pub struct Tpm2Token {
    // Held to be killed on drop, in this order: the broker before its bus, both before the
    // TPM.
    _abrmd: Daemon,
    _dbus: Daemon,
    swtpm: Swtpm,
    dir: TempDir,
    reach: Tpm2TokenRef,
}

/// What reaches a [`Tpm2Token`]: module, label, PIN, environment. The shared token's tests
/// get one of these.
#[derive(Clone, Debug)]
pub struct Tpm2TokenRef {
    module: PathBuf,
    label: String,
    dir: PathBuf,
}

/// The token of [`Tpm2Token::shared`], taken and dropped (its processes killed, its files
/// removed) when the process exits.
static SHARED: OnceLock<Mutex<Option<Tpm2Token>>> = OnceLock::new();

/// The turn on the shared token: held by one test at a time.
static TURN: Mutex<()> = Mutex::new(());

/// The shared token for one test ([`Tpm2Token::shared`]): other tests wait for it until this
/// is dropped.
pub struct SharedTpm2Token {
    reach: Tpm2TokenRef,
    _turn: MutexGuard<'static, ()>,
}

impl std::ops::Deref for SharedTpm2Token {
    type Target = Tpm2TokenRef;

    fn deref(&self) -> &Tpm2TokenRef {
        &self.reach
    }
}

impl Pkcs11Token for SharedTpm2Token {
    fn module(&self) -> &Path {
        self.reach.module()
    }

    fn label(&self) -> &str {
        self.reach.label()
    }

    fn pin(&self) -> &str {
        PIN
    }

    fn dir(&self) -> &Path {
        self.reach.dir()
    }

    fn env(&self) -> Vec<(OsString, OsString)> {
        self.reach.env()
    }
}

extern "C" fn stop_shared() {
    if let Some(shared) = SHARED.get()
        && let Ok(mut token) = shared.lock()
    {
        drop(token.take());
    }
}

/// A child process killed on drop.
struct Daemon {
    child: Child,
    _kill: KillOnDrop,
}

impl Daemon {
    fn spawn(command: &mut Command, what: &str) -> Daemon {
        let child = command
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what}: {e}"));
        let kill = KillOnDrop(child.id());
        Daemon { child, _kill: kill }
    }

    /// Panics, with `log`, if the process has ended.
    fn check_running(&mut self, what: &str, log: &Path) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{what} ended ({status}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        crate::send_signal(self.child.id(), libc::SIGKILL);
        let _ = self.child.wait();
    }
}

/// A private session bus: listens on a socket in `dir`, lets its clients do anything.
fn bus_config(socket: &Path) -> String {
    format!(
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
        socket.display()
    )
}

impl Tpm2Token {
    /// Starts swtpm, a private D-Bus, tpm2-abrmd on both, and makes the token `label` with
    /// [`PIN`] and the security officer PIN. Panics, saying what to install, when a piece is
    /// missing.
    pub fn create(label: &str) -> Tpm2Token {
        let module = PathBuf::from(TPM2_PKCS11_MODULE);
        assert!(
            module.exists(),
            "{} not found: apt-get install libtpm2-pkcs11-1",
            module.display()
        );
        require_tool("dbus-daemon", &["--version"], "dbus");
        require_tool("tpm2-abrmd", &["--version"], "tpm2-abrmd");
        require_tool("tpm2_ptool", &["--help"], "libtpm2-pkcs11-tools");
        let started = Instant::now();
        let swtpm = Swtpm::start();
        let dir = crate::new_temp_dir();
        let socket = dir.path().join("bus");
        let config = dir.path().join("bus.conf");
        std::fs::write(&config, bus_config(&socket)).expect("writing the D-Bus configuration");
        let dbus_log = dir.path().join("dbus.log");
        let mut dbus = Daemon::spawn(
            Command::new("dbus-daemon")
                .arg(format!("--config-file={}", config.display()))
                .args(["--nofork", "--nopidfile"])
                .stdout(Stdio::null())
                .stderr(log_file(&dbus_log)),
            "dbus-daemon",
        );
        wait_until("the private D-Bus socket", PROCESS_TIMEOUT, || {
            dbus.check_running("dbus-daemon", &dbus_log);
            socket.exists()
        });
        let bus = format!("unix:path={}", socket.display());
        let abrmd_log = dir.path().join("abrmd.log");
        let mut command = Command::new("tpm2-abrmd");
        command
            .arg("--session")
            .arg(format!("--tcti=swtpm:{}", swtpm_conf(&swtpm)))
            .env("DBUS_SESSION_BUS_ADDRESS", &bus)
            .stdout(log_file(&abrmd_log))
            .stderr(log_file(&abrmd_log));
        if is_root() {
            // The tests run as root in CI; the broker refuses to unless told.
            command.arg("--allow-root");
        }
        let mut abrmd = Daemon::spawn(&mut command, "tpm2-abrmd");
        wait_until("tpm2-abrmd on the private D-Bus", PROCESS_TIMEOUT, || {
            abrmd.check_running("tpm2-abrmd", &abrmd_log);
            Command::new("dbus-send")
                .env("DBUS_SESSION_BUS_ADDRESS", &bus)
                .args([
                    "--session",
                    "--print-reply",
                    "--dest=org.freedesktop.DBus",
                    "/org/freedesktop/DBus",
                    "org.freedesktop.DBus.NameHasOwner",
                    "string:com.intel.tss2.Tabrmd",
                ])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("boolean true"))
                .unwrap_or_else(|e| panic!("running dbus-send ({e}): apt-get install dbus"))
        });
        std::fs::create_dir(dir.path().join("store")).expect("creating the token store");
        let reach = Tpm2TokenRef {
            module,
            label: label.to_owned(),
            dir: dir.path().to_owned(),
        };
        let token = Tpm2Token {
            _abrmd: abrmd,
            _dbus: dbus,
            swtpm,
            dir,
            reach,
        };
        run_ok(token.command("tpm2_ptool").arg("init"));
        run_ok(token.command("tpm2_ptool").args([
            "addtoken",
            "--pid=1",
            &format!("--label={label}"),
            &format!("--userpin={PIN}"),
            &format!("--sopin={SO_PIN}"),
        ]));
        eprintln!(
            "tpm2-pkcs11 token {label:?} made in {:?}",
            started.elapsed()
        );
        token
    }

    /// The token `dpop-tpm2` that the tests of this process share, made on the first call;
    /// its processes are killed and its files removed when the process exits. Tests on it
    /// use key labels of their own, and take turns: this waits until no other test holds it.
    pub fn shared() -> SharedTpm2Token {
        // A test that failed while holding its turn leaves the token usable.
        let turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
        let shared = SHARED.get_or_init(|| {
            let token = Tpm2Token::create("dpop-tpm2");
            // SAFETY: registers a plain function; it runs once, at exit, after the tests.
            let registered = unsafe { libc::atexit(stop_shared) };
            assert_eq!(registered, 0, "atexit failed");
            Mutex::new(Some(token))
        });
        let token = shared.lock().unwrap_or_else(|e| e.into_inner());
        let reach = token
            .as_ref()
            .expect("the shared token runs until the process exits")
            .reach
            .clone();
        SharedTpm2Token { reach, _turn: turn }
    }

    /// The software TPM under the token.
    pub fn swtpm(&self) -> &Swtpm {
        &self.swtpm
    }
}

/// `host=127.0.0.1,port=P` of a TCTI string `swtpm:host=..,port=..`.
fn swtpm_conf(swtpm: &Swtpm) -> String {
    swtpm
        .tcti()
        .strip_prefix("swtpm:")
        .expect("an swtpm TCTI")
        .to_owned()
}

fn log_file(path: &Path) -> Stdio {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map(Stdio::from)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()))
}

impl Pkcs11Token for Tpm2TokenRef {
    fn module(&self) -> &Path {
        &self.module
    }

    fn label(&self) -> &str {
        &self.label
    }

    fn pin(&self) -> &str {
        PIN
    }

    fn dir(&self) -> &Path {
        &self.dir
    }

    /// The module's store, its broker on the private bus; tpm2-tools (under `tpm2_ptool`)
    /// read their own variable for the TCTI.
    fn env(&self) -> Vec<(OsString, OsString)> {
        let tcti = "tabrmd:bus_type=session";
        [
            (
                "DBUS_SESSION_BUS_ADDRESS",
                OsString::from(format!("unix:path={}", self.dir.join("bus").display())),
            ),
            ("TPM2_PKCS11_TCTI", tcti.into()),
            ("TPM2TOOLS_TCTI", tcti.into()),
            ("TPM2_PKCS11_STORE", self.dir.join("store").into()),
        ]
        .into_iter()
        .map(|(k, v)| (OsStr::new(k).to_owned(), v))
        .collect()
    }
}

impl Pkcs11Token for Tpm2Token {
    fn module(&self) -> &Path {
        self.reach.module()
    }

    fn label(&self) -> &str {
        self.reach.label()
    }

    fn pin(&self) -> &str {
        PIN
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn env(&self) -> Vec<(OsString, OsString)> {
        self.reach.env()
    }
}
