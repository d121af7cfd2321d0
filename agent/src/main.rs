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

use anyhow::{Context, Result};
use clap::Parser;
use tracing::info;

use dpop_agent::backends::{self, PinPrompt};
use dpop_agent::config::{Args, HandedSecrets, Settings};
use dpop_agent::dispatch::State;
use dpop_agent::{background, pin, server, socket, stop};

fn main() -> ExitCode {
    // First, in every mode (the background start and -k included), before any secret is read.
    if let Err(e) = make_non_dumpable() {
        eprintln!("dpop-agent: warning: could not make the process non-dumpable: {e}");
    }
    let args = Args::parse();
    let result = if args.kill {
        stop::kill_agent()
    } else if args.foreground {
        init_logging(args.detached);
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

/// Logs go to standard error; a detached child also keeps what it logs until it detaches, for
/// the log file (the parent repeats the warnings on its own standard error).
fn init_logging(detached: bool) {
    if detached {
        background::keep_startup_log();
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "dpop_agent=info,dpop_keys=info".into()),
        )
        .with_writer(|| background::StderrTee)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// The agent itself, in the foreground (`-D`) or as the background start's child.
fn run(args: &Args) -> Result<()> {
    let handed = if args.detached {
        receive_handed_secrets()?
    } else {
        HandedSecrets::default()
    };
    let settings = Settings::load(args, handed)?;
    // Before the slow part (loading keys), so that a refused log file fails the start at once.
    let log_file = match (&settings.log_file, args.detached) {
        (Some(path), true) => Some(background::open_log_file(path)?),
        _ => None,
    };
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
    let location = settings.socket_location()?;
    let std_listener = match socket::bind(&location) {
        Ok(listener) => listener,
        Err(e) => {
            if let socket::SocketLocation::Private(_) = location {
                location.remove();
            }
            return Err(e);
        }
    };
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
            background::detach_output(log_file)?;
        }
        server::serve(listener, state, server::shutdown_on_signal()).await;
        anyhow::Ok(())
    });
    location.remove();
    info!("stopped");
    result
}

/// Like ssh-agent: no core dumps, no ptrace and no /proc/<pid>/{mem,environ} for other
/// processes of the same user, which could otherwise read keys, PINs and the passphrase.
fn make_non_dumpable() -> std::io::Result<()> {
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) only changes this process's flags.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The detached child's secrets, from the pipe on its standard input (read unbuffered, so
/// no copy stays in a buffer we cannot wipe); standard input is /dev/null afterwards.
fn receive_handed_secrets() -> Result<HandedSecrets> {
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: descriptor 0 is open for the process's life; ManuallyDrop never closes it.
    let stdin = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(0) });
    let handed = pin::receive(&*stdin)?;
    let null = std::fs::File::open("/dev/null")?;
    // SAFETY: dup2 onto standard input from a file we own.
    unsafe { libc::dup2(null.as_raw_fd(), 0) };
    Ok(handed)
}
