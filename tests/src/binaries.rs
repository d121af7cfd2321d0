//! The binaries under test (`dpop-agent`, `dpop`), built once per test process, and the
//! workspace root.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Paths of the workspace binaries under test.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// The `dpop-agent` daemon.
    pub agent: PathBuf,
    /// The `dpop` command line.
    pub dpop: PathBuf,
    /// The example resource server (`examples/resource-server`).
    pub resource_server: PathBuf,
}

/// The workspace root (the directory that holds the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent directory")
        .to_owned()
}

/// The binaries under test, built on first use.
///
/// The first call runs `$CARGO build -p dpop-agent -p dpop-cli -p dpop-resource-server` in the
/// workspace root (with `--features dpop-agent/tpm` when this package's feature `tpm` is on),
/// into the target directory and profile of the running test or bench executable
/// (`target/<profile>/deps/<exe>`: `debug` builds the dev profile, `release` adds `--release`,
/// anything else is passed as `--profile`). Panics with cargo's output when the build fails.
/// With `DPOP_TEST_BIN_DIR` set (absolute, or relative to the workspace root), nothing is built
/// and the binaries are taken from there.
pub fn binaries() -> &'static Binaries {
    static BINARIES: OnceLock<Binaries> = OnceLock::new();
    BINARIES.get_or_init(build_binaries)
}

fn build_binaries() -> Binaries {
    let in_dir = |dir: &Path| {
        let bins = Binaries {
            agent: dir.join("dpop-agent"),
            dpop: dir.join("dpop"),
            resource_server: dir.join("dpop-resource-server"),
        };
        for path in [&bins.agent, &bins.dpop, &bins.resource_server] {
            assert!(
                path.is_file(),
                "binary under test {} does not exist",
                path.display()
            );
        }
        bins
    };
    if let Some(dir) = std::env::var_os("DPOP_TEST_BIN_DIR").filter(|d| !d.is_empty()) {
        // Relative to the workspace root, not to the test's working directory (tests/).
        return in_dir(&workspace_root().join(dir));
    }
    let exe = std::env::current_exe().expect("path of the running test executable");
    // Test and bench executables live in target/<profile>/deps/.
    let mut profile_dir = exe.parent().expect("executable has a directory").to_owned();
    if profile_dir.file_name() == Some(OsStr::new("deps")) {
        profile_dir.pop();
    }
    let profile = profile_dir
        .file_name()
        .and_then(OsStr::to_str)
        .unwrap_or_else(|| panic!("cannot tell the profile from {}", exe.display()))
        .to_owned();
    let target_dir = profile_dir
        .parent()
        .unwrap_or_else(|| panic!("cannot tell the target directory from {}", exe.display()));

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let mut command = Command::new(&cargo);
    command
        .current_dir(workspace_root())
        .args(["build", "--quiet", "-p", "dpop-agent", "-p", "dpop-cli"])
        .args(["-p", "dpop-resource-server"])
        // The TPM tests need an agent with the TPM backend, which needs libtss2 to build.
        .args(
            cfg!(feature = "tpm")
                .then_some(["--features", "dpop-agent/tpm"])
                .into_iter()
                .flatten(),
        )
        .arg("--target-dir")
        .arg(target_dir);
    match profile.as_str() {
        "debug" => {}
        "release" => {
            command.arg("--release");
        }
        other => {
            command.args(["--profile", other]);
        }
    }
    let output = command.output().unwrap_or_else(|e| {
        panic!(
            "cannot run {} to build the binaries under test: {e}",
            Path::new(&cargo).display()
        )
    });
    assert!(
        output.status.success(),
        "building dpop-agent, dpop and dpop-resource-server failed ({:?}, {}):\n{}{}",
        command,
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    in_dir(&profile_dir)
}
