//! The Windows builds of `dpop-agent` and `dpop`, run under Wine: a real named pipe, real
//! Win32 calls for its security descriptor and for who is at either end, without a Windows
//! machine. Wine runs every program as one user and does not enforce ACLs, so what these
//! tests cannot show is another user being kept out.
//!
//! [`wine()`] makes (once, kept in the target directory) a Wine prefix with the stand-in
//! `bcryptprimitives.dll` that Wine 8 lacks (`tests/wine/bcryptprimitives.c`), and starts a
//! wineserver with no inherited output, so that a test capturing a program's output does
//! not wait for the server to exit. [`WindowsAgent`] runs `dpop-agent.exe -D` on a pipe of
//! its own and `dpop.exe` against it.

use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tempfile::TempDir;

use crate::binaries::windows_binaries;
use crate::{new_temp_dir, require_tool, wait_until, workspace_root};

/// Debian's 64-bit Wine loader.
const WINE64: &str = "/usr/lib/wine/wine64";
const WINESERVER: &str = "/usr/lib/wine/wineserver";

/// How long a Wine program may take to start (the first one starts Wine's own services).
pub const WINE_TIMEOUT: Duration = Duration::from_secs(60);

/// A Wine prefix ready for the Windows binaries.
#[derive(Debug)]
pub struct Wine {
    prefix: PathBuf,
}

/// The suite's Wine prefix, made on first use. Fails (never skips) when Wine or mingw-w64 is
/// missing.
pub fn wine() -> &'static Wine {
    static WINE: OnceLock<Wine> = OnceLock::new();
    WINE.get_or_init(|| {
        require_tool(WINE64, &["--version"], "wine64");
        require_tool("x86_64-w64-mingw32-gcc", &["--version"], "mingw-w64");
        // Next to the Windows binaries: a prefix is 700 MB and takes seconds to make, so it
        // is kept between runs (nothing in it matters to the tests).
        let prefix = windows_binaries()
            .agent
            .parent()
            .expect("the agent has a directory")
            .join("wine-prefix");
        let wine = Wine { prefix };
        wine.prepare();
        wine
    })
}

impl Wine {
    fn prepare(&self) {
        std::fs::create_dir_all(&self.prefix).expect("creating the Wine prefix directory");
        // A persistent server with no inherited pipes: it outlives the programs (60 s). It
        // fails when one runs for this prefix already (an earlier run's), which is as good.
        Command::new(WINESERVER)
            .arg("-p60")
            .env("WINEPREFIX", &self.prefix)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("starting wineserver");
        let system32 = self.prefix.join("drive_c/windows/system32");
        if !system32.join("kernel32.dll").exists() {
            let status = self
                .command(OsStr::new("wineboot"))
                .arg("--init")
                .status()
                .expect("running wineboot");
            assert!(status.success(), "wineboot --init: {status}");
        }
        let source = workspace_root().join("tests/wine/bcryptprimitives.c");
        let output = Command::new("x86_64-w64-mingw32-gcc")
            .args(["-shared", "-O2", "-Wl,--kill-at", "-o"])
            .arg(system32.join("bcryptprimitives.dll"))
            .arg(&source)
            .arg("-ladvapi32")
            .output()
            .expect("running x86_64-w64-mingw32-gcc");
        assert!(
            output.status.success(),
            "building {}: {}",
            source.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// `wine64 program` in this prefix, quiet, with no agent socket inherited.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new(WINE64);
        command
            .arg(program)
            .env("WINEPREFIX", &self.prefix)
            .env("WINEDEBUG", "-all")
            .env_remove("DPOP_AUTH_SOCK")
            .env_remove("DPOP_AGENT_PASSPHRASE")
            .stdin(Stdio::null());
        command
    }
}

/// `path` as Windows programs under Wine see it (the Unix root is drive `Z:`).
pub fn windows_path(path: &Path) -> String {
    format!("Z:{}", path.display()).replace('/', "\\")
}

/// A fresh pipe name, unique in this test process.
pub fn unique_pipe() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        r"\\.\pipe\dpop-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// `dpop-agent.exe -D` under Wine, with its data directory in a fresh temporary directory;
/// killed when dropped.
pub struct WindowsAgent {
    child: Child,
    /// Taken back by [`stop`](Self::stop).
    dir: Option<TempDir>,
    /// The pipe it was told to listen on (`None`: its default pipe).
    pipe: Option<String>,
}

impl WindowsAgent {
    /// Starts an agent on `pipe` (`None`: the user's default pipe) with a passphrase, and
    /// waits until it listens.
    pub fn start(pipe: Option<&str>) -> WindowsAgent {
        WindowsAgent::start_in(new_temp_dir(), pipe, &[])
    }

    /// [`start`](Self::start) in `dir` (its `data` directory keeps the keys) with `args`.
    pub fn start_in(dir: TempDir, pipe: Option<&str>, args: &[&str]) -> WindowsAgent {
        let child = WindowsAgent::spawn(dir.path(), pipe, args);
        let mut agent = WindowsAgent {
            child,
            dir: Some(dir),
            pipe: pipe.map(str::to_owned),
        };
        wait_until("the Windows agent listens", WINE_TIMEOUT, || {
            agent.log().contains(" listening ")
                || agent.child.try_wait().expect("polling the agent").is_some()
        });
        assert!(
            agent.log().contains(" listening "),
            "the Windows agent did not start:\n{}",
            agent.log()
        );
        agent
    }

    /// Runs `dpop-agent.exe -D` in `dir` and waits for it to exit: for starts that must fail.
    pub fn run_to_exit(dir: &Path, pipe: Option<&str>, args: &[&str]) -> (bool, String) {
        let mut child = WindowsAgent::spawn(dir, pipe, args);
        let status = crate::wait_timeout(&mut child, WINE_TIMEOUT).unwrap_or_else(|| {
            let _ = child.kill();
            panic!("dpop-agent.exe did not exit")
        });
        let log = std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default();
        (status.success(), log)
    }

    fn spawn(dir: &Path, pipe: Option<&str>, args: &[&str]) -> Child {
        let log = File::create(dir.join("agent.log")).expect("creating the agent log");
        let mut command = wine().command(&windows_binaries().agent);
        command
            .arg("-D")
            .arg("--data-dir")
            .arg(windows_path(&dir.join("data")))
            .args(args)
            .env("DPOP_AGENT_PASSPHRASE", "correct horse")
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(pipe) = pipe {
            command.arg("-a").arg(pipe);
        }
        command.spawn().expect("starting dpop-agent.exe under Wine")
    }

    /// What the agent logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir().join("agent.log")).unwrap_or_default()
    }

    /// The temporary directory (the data directory is `data` in it).
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("the agent is running").path()
    }

    /// `dpop.exe ARGS` under Wine, pointed at this agent's pipe (`DPOP_AUTH_SOCK`; left
    /// unset for an agent on the default pipe, which the client must find itself).
    pub fn dpop<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        let mut command = wine().command(&windows_binaries().dpop);
        command.args(args);
        if let Some(pipe) = &self.pipe {
            command.env("DPOP_AUTH_SOCK", pipe);
        }
        command.output().expect("running dpop.exe under Wine")
    }

    /// [`dpop`](Self::dpop) that must succeed; its standard output.
    pub fn dpop_ok<S: AsRef<OsStr>>(&self, args: &[S]) -> String {
        let out = self.dpop(args);
        assert!(
            out.status.success(),
            "dpop.exe {:?} failed ({}): {}",
            args.iter().map(|a| a.as_ref()).collect::<Vec<_>>(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("dpop.exe prints UTF-8")
    }

    /// Kills the agent and hands back its directory (to start another on the same keys).
    pub fn stop(mut self) -> TempDir {
        self.kill();
        self.dir.take().expect("the agent is running")
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for WindowsAgent {
    fn drop(&mut self) {
        self.kill();
    }
}
