//! A throw-away software TPM: `swtpm socket` on two free loopback ports (the TPM and its
//! control channel) with its own state directory, killed on drop. It can be stopped and
//! started again on the same state (a TPM restart under a running agent).
//!
//! swtpm serves one connection at a time: while an agent holds its connection, a second
//! client (a test reading the TPM with `Swtpm::context`, feature `tpm`) waits, so tests look
//! at the TPM themselves only while no agent is connected.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::{KillOnDrop, PROCESS_TIMEOUT, new_temp_dir, require_tool, wait_timeout, wait_until};

/// A running (or stopped) swtpm.
pub struct Swtpm {
    dir: TempDir,
    port: u16,
    child: Option<(Child, KillOnDrop)>,
}

/// Two free consecutive loopback ports, the first one returned. Free when asked: another
/// process may take one before swtpm binds it, so [`Swtpm::start`] tries again then.
fn free_port_pair() -> u16 {
    loop {
        let first = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
        let port = first.local_addr().expect("bound address").port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

impl Swtpm {
    /// Starts a fresh TPM with its own state directory. Panics, naming the package, when
    /// swtpm is not installed.
    pub fn start() -> Swtpm {
        require_tool("swtpm", &["--version"], "swtpm swtpm-tools");
        let mut swtpm = Swtpm {
            dir: new_temp_dir(),
            port: 0,
            child: None,
        };
        for _ in 0..5 {
            swtpm.port = free_port_pair();
            if swtpm.try_run() {
                return swtpm;
            }
        }
        panic!("swtpm did not start on free loopback ports (5 tries)");
    }

    /// Runs swtpm on our ports and state; false when it exits early (a port was taken).
    fn try_run(&mut self) -> bool {
        let state = self.dir.path().join("state");
        std::fs::create_dir_all(&state).expect("creating the swtpm state directory");
        let mut child = Command::new("swtpm")
            .arg("socket")
            .arg("--tpmstate")
            .arg(format!("dir={}", state.display()))
            .arg("--tpm2")
            .arg("--server")
            .arg(format!("type=tcp,bindaddr=127.0.0.1,port={}", self.port))
            .arg("--ctrl")
            .arg(format!(
                "type=tcp,bindaddr=127.0.0.1,port={}",
                self.port + 1
            ))
            .args(["--flags", "not-need-init,startup-clear"])
            .arg("--log")
            .arg(format!(
                "file={},level=1",
                self.dir.path().join("swtpm.log").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting swtpm");
        let guard = KillOnDrop(child.id());
        let deadline = std::time::Instant::now() + PROCESS_TIMEOUT;
        loop {
            // The control port: a connection there does not take the TPM's one client slot.
            if TcpStream::connect(("127.0.0.1", self.port + 1)).is_ok() {
                self.child = Some((child, guard));
                return true;
            }
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "swtpm did not accept connections within {PROCESS_TIMEOUT:?}; log: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The TCTI that reaches it: `swtpm:host=127.0.0.1,port=P`.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// Its state directory's parent (state, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// swtpm's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("swtpm.log")).unwrap_or_default()
    }

    /// Stops it (SIGTERM; the state stays) and waits until it is gone and the port free.
    pub fn stop(&mut self) {
        if let Some((mut child, _guard)) = self.child.take() {
            crate::send_signal(child.id(), libc::SIGTERM);
            if wait_timeout(&mut child, PROCESS_TIMEOUT).is_none() {
                crate::send_signal(child.id(), libc::SIGKILL);
                let _ = child.wait();
            }
        }
        let port = self.port;
        wait_until("the swtpm port to be free", PROCESS_TIMEOUT, || {
            TcpListener::bind(("127.0.0.1", port)).is_ok()
        });
    }

    /// Starts it again on the same state and ports (the TPM resets: transient objects are
    /// gone, persistent ones and the seeds stay).
    pub fn restart(&mut self) {
        self.stop();
        assert!(
            self.try_run(),
            "swtpm did not start again on port {}; log: {}",
            self.port,
            self.log()
        );
    }

    /// A tss-esapi context on it, for tests that look at the TPM themselves (no agent may be
    /// connected: see the module documentation).
    #[cfg(feature = "tpm")]
    pub fn context(&self) -> tss_esapi::Context {
        use std::str::FromStr;
        let tcti = tss_esapi::tcti_ldr::TctiNameConf::from_str(&self.tcti()).expect("a TCTI");
        tss_esapi::Context::new(tcti).expect("connecting to swtpm")
    }
}

/// The well-known SRK template (TCG provisioning guidance: ECC P-256, AES-128-CFB,
/// restricted decryption, empty unique), written out here independently of the backend, so
/// that tests and benches check the agent's keys against the standard, not against its own
/// code.
#[cfg(feature = "tpm")]
pub fn srk_template() -> tss_esapi::structures::Public {
    use tss_esapi::attributes::ObjectAttributesBuilder;
    use tss_esapi::interface_types::ecc::EccCurve;
    use tss_esapi::interface_types::{algorithm::HashingAlgorithm, algorithm::PublicAlgorithm};
    use tss_esapi::structures::{
        EccPoint, PublicBuilder, PublicEccParametersBuilder, SymmetricDefinitionObject,
    };
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .with_restricted(true)
        .with_decrypt(true)
        .build()
        .expect("SRK attributes");
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new_restricted_decryption_key(
                SymmetricDefinitionObject::AES_128_CFB,
                EccCurve::NistP256,
            )
            .build()
            .expect("SRK parameters"),
        )
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
        .expect("SRK template")
}

/// Makes the SRK from [`srk_template`] under the owner hierarchy (the same key every time).
#[cfg(feature = "tpm")]
pub fn create_srk(ctx: &mut tss_esapi::Context) -> tss_esapi::handles::KeyHandle {
    use tss_esapi::interface_types::{resource_handles::Hierarchy, session_handles::AuthSession};
    ctx.execute_with_session(Some(AuthSession::Password), |c| {
        c.create_primary(Hierarchy::Owner, srk_template(), None, None, None, None)
    })
    .expect("creating the SRK")
    .key_handle
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        if let Some((mut child, guard)) = self.child.take() {
            drop(guard);
            let _ = child.wait();
        }
    }
}

impl crate::AgentOptions {
    /// Runs the agent's TPM backend on `swtpm` (`--tpm-tcti`).
    pub fn tpm(self, swtpm: &Swtpm) -> crate::AgentOptions {
        self.arg("--tpm-tcti").arg(swtpm.tcti())
    }
}
