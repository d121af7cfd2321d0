//! The binaries under test (`dpop-agent`, `dpop`), built once per test process (and their
//! Windows builds, for the Wine tests), and the workspace root.

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

/// The Windows binaries (`dpop-agent.exe`, `dpop.exe`), cross-built on first use for
/// `x86_64-pc-windows-gnu` into the running test's target directory and profile, for the
/// tests that run them under Wine. Needs `rustup target add x86_64-pc-windows-gnu` and
/// mingw-w64; panics with cargo's output when the build fails. With
/// `DPOP_TEST_WINDOWS_BIN_DIR` set (absolute, or relative to the workspace root), nothing is
/// built and the binaries are taken from there (the CI builds them once, linted).
pub fn windows_binaries() -> &'static WindowsBinaries {
    static BINARIES: OnceLock<WindowsBinaries> = OnceLock::new();
    BINARIES.get_or_init(|| {
        crate::require_tool("x86_64-w64-mingw32-gcc", &["--version"], "mingw-w64");
        let dir = match std::env::var_os("DPOP_TEST_WINDOWS_BIN_DIR").filter(|d| !d.is_empty()) {
            Some(dir) => workspace_root().join(dir),
            None => Build::of_this_test().run(
                &[
                    "--target",
                    WINDOWS_TARGET,
                    "-p",
                    "dpop-agent",
                    "-p",
                    "dpop-cli",
                ],
                Some(WINDOWS_TARGET),
            ),
        };
        let bins = WindowsBinaries {
            agent: dir.join("dpop-agent.exe"),
            dpop: dir.join("dpop.exe"),
        };
        for path in [&bins.agent, &bins.dpop] {
            assert!(path.is_file(), "{} was not built", path.display());
        }
        bins
    })
}

/// Paths of the Windows builds under test.
#[derive(Debug, Clone)]
pub struct WindowsBinaries {
    /// `dpop-agent.exe`.
    pub agent: PathBuf,
    /// `dpop.exe`.
    pub dpop: PathBuf,
}

/// The Windows target the Wine tests build for.
pub const WINDOWS_TARGET: &str = "x86_64-pc-windows-gnu";

/// The target directory and profile of the running test or bench executable.
struct Build {
    target_dir: PathBuf,
    profile: String,
}

impl Build {
    fn of_this_test() -> Build {
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
            .unwrap_or_else(|| panic!("cannot tell the target directory from {}", exe.display()))
            .to_owned();
        Build {
            target_dir,
            profile,
        }
    }

    /// `cargo build --quiet ARGS` in this build's target directory and profile; returns the
    /// directory the binaries land in (under `target` when cross-building).
    fn run(&self, args: &[&str], target: Option<&str>) -> PathBuf {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
        let mut command = Command::new(&cargo);
        command
            .current_dir(workspace_root())
            .args(["build", "--quiet"])
            .args(args)
            .arg("--target-dir")
            .arg(&self.target_dir);
        match self.profile.as_str() {
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
            "building the binaries under test failed ({:?}, {}):\n{}{}",
            command,
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        match target {
            Some(target) => self.target_dir.join(target).join(&self.profile),
            None => self.target_dir.join(&self.profile),
        }
    }
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
    let mut args = vec![
        "-p",
        "dpop-agent",
        "-p",
        "dpop-cli",
        "-p",
        "dpop-resource-server",
    ];
    // The TPM tests need an agent with the TPM backend, which needs libtss2 to build.
    if cfg!(feature = "tpm") {
        args.extend(["--features", "dpop-agent/tpm"]);
    }
    in_dir(&Build::of_this_test().run(&args, None))
}
