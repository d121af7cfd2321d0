//! `dpop-agent`: the daemon that keeps DPoP private keys where they cannot leave (a PKCS#11
//! token, or encrypted software storage) and signs proofs for local clients over a Unix socket,
//! like ssh-agent does for SSH keys.
//!
//! Without arguments it starts in the background and prints shell commands that set
//! `DPOP_AUTH_SOCK`, for `eval "$(dpop-agent)"`. `-D` stays in the foreground; `-k` stops the
//! agent named by `DPOP_AUTH_SOCK` (or, without it, `DPOP_AGENT_PID`).
//!
//! This file only wires: parse, settings, backends, bind, serve. The parts live in the
//! crate's library (`src/lib.rs`).

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Parser;
use tracing::{info, warn};

use dpop_agent::backends::{self, PinPrompt};
use dpop_agent::config::{Args, EnvSecrets, Settings};
use dpop_agent::dispatch::State;
use dpop_agent::{background, server, socket, stop};

fn main() -> ExitCode {
    let args = Args::parse();
    let result = if args.kill {
        stop::kill_agent()
    } else if args.foreground {
        init_logging();
        run(&args)
    } else {
        background::start(&args)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dpop-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "dpop_agent=info,dpop_keys=info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// The agent itself, in the foreground (`-D`) or as the background start's child.
fn run(args: &Args) -> Result<()> {
    make_non_dumpable();
    let settings = Settings::load(args, EnvSecrets::Consume)?;
    if settings.tpm_tcti.is_some() {
        bail!("the tpm backend is not available in this build yet");
    }
    let prompt = if args.detached {
        PinPrompt::LaunchPipe
    } else {
        PinPrompt::Terminal
    };
    let state = Arc::new(State {
        keyring: Arc::new(backends::open(&settings, prompt)?),
        software_persistent: settings.passphrase.is_some(),
    });

    // Bind before starting the runtime's threads: umask is process-wide.
    let location = settings.socket_location();
    let std_listener = socket::bind(&location)?;
    std_listener.set_nonblocking(true)?;
    let socket_path = location.path();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async {
        let listener = tokio::net::UnixListener::from_std(std_listener)?;
        info!(socket = %socket_path.display(), pid = std::process::id(), "listening");
        if args.detached {
            background::detach_output(settings.log_file.as_deref())?;
        }
        server::serve(listener, state, server::shutdown_on_signal()).await;
        anyhow::Ok(())
    });
    let _ = std::fs::remove_file(&socket_path);
    info!("stopped");
    result
}

/// Like ssh-agent: no core dumps, no ptrace and no /proc/<pid>/{mem,environ} for other
/// processes of the same user, which could otherwise read keys, PINs and the passphrase.
fn make_non_dumpable() {
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) only changes this process's flags.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        warn!(
            "could not make the agent non-dumpable: {}",
            std::io::Error::last_os_error()
        );
    }
}
