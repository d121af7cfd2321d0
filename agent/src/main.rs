//! `dpop-agent`: the daemon that keeps DPoP private keys where they cannot leave (a PKCS#11
//! token, a TPM, or encrypted software storage) and signs proofs for local clients over a Unix
//! socket (a named pipe on Windows), like ssh-agent does for SSH keys.
//!
//! Without arguments it starts in the background and prints shell commands that set
//! `DPOP_AUTH_SOCK`, for `eval "$(dpop-agent)"`. `-D` stays in the foreground; `-k` stops the
//! agent named by `DPOP_AUTH_SOCK` (or, without it, `DPOP_AGENT_PID`). On Windows the agent
//! runs in the foreground only (`-D`), on its user's pipe, where clients find it.
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
use dpop_agent::config::{Args, Settings};
use dpop_agent::policy::Policies;
use dpop_agent::secrets::HandedSecrets;
#[cfg(unix)]
use dpop_agent::shell::Shell;
use dpop_agent::state::State;
#[cfg(unix)]
use dpop_agent::{background, secrets, stop, transport};
use dpop_agent::{server, signals};

fn main() -> ExitCode {
    // First, in every mode (the background start and -k included), before any secret is read.
    if let Err(e) = make_non_dumpable() {
        eprintln!("dpop-agent: warning: could not make the process non-dumpable: {e}");
    }
    let args = Args::parse();
    if let Some(shell) = args.completions {
        let mut command = <Args as clap::CommandFactory>::command();
        clap_complete::generate(shell, &mut command, "dpop-agent", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    if args.man {
        let man = clap_mangen::Man::new(<Args as clap::CommandFactory>::command());
        return match man.render(&mut std::io::stdout()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("dpop-agent: writing the man page: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let result = if args.kill {
        kill(&args)
    } else if args.check_config {
        check_config(&args)
    } else if args.foreground {
        init_logging(args.detached);
        run(&args)
    } else {
        start_in_background(&args)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dpop-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(unix)]
fn kill(args: &Args) -> Result<()> {
    stop::kill_agent(Shell::choose(args.csh, args.sh))
}

#[cfg(windows)]
fn kill(_args: &Args) -> Result<()> {
    anyhow::bail!("-k is not supported on Windows: stop the agent with Ctrl-C in its console")
}

#[cfg(unix)]
fn start_in_background(args: &Args) -> Result<()> {
    background::start(args)
}

#[cfg(windows)]
fn start_in_background(_args: &Args) -> Result<()> {
    anyhow::bail!(
        "on Windows dpop-agent runs in the foreground: start it with dpop-agent -D (clients \
         find it on this user's pipe without DPOP_AUTH_SOCK)"
    )
}

/// Logs go to standard error; a detached child also keeps what it logs until it detaches, for
/// the log file (the parent repeats the warnings on its own standard error).
fn init_logging(detached: bool) {
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "dpop_agent=info,dpop_keys=info,audit=info".into()),
        )
        .with_ansi(std::io::stderr().is_terminal());
    #[cfg(unix)]
    {
        if detached {
            background::keep_startup_log();
        }
        subscriber.with_writer(|| background::StderrTee).init();
    }
    #[cfg(windows)]
    {
        let _ = detached; // no background start on Windows
        subscriber.with_writer(std::io::stderr).init();
    }
}

/// The agent itself, in the foreground (`-D`) or as the background start's child.
fn run(args: &Args) -> Result<()> {
    // First, while single-threaded: it clears the activation variables.
    #[cfg(unix)]
    let activated = transport::activated_listener()?;
    #[cfg(unix)]
    let handed = if args.detached {
        secrets::receive_on_stdin()?
    } else {
        HandedSecrets::default()
    };
    #[cfg(windows)]
    let handed = HandedSecrets::default();
    let mut settings = Settings::load(args, handed)?;
    // Before the slow part (loading keys), so that a refused log file fails the start at once.
    #[cfg(unix)]
    let log_file = match (&settings.log_file, args.detached) {
        (Some(path), true) => Some(background::open_log_file(path)?),
        _ => None,
    };
    let prompt = if args.detached {
        PinPrompt::LaunchPipe
    } else {
        PinPrompt::Terminal
    };
    let keyring = Arc::new(backends::open(
        &settings.backends,
        &settings.data_dir,
        prompt,
    )?);
    let encrypted_keys = settings.backends.software.passphrase.is_some();
    settings.backends.forget_secrets();
    let policies = Policies::open(
        Some(settings.data_dir.join("policies")),
        settings.askpass.clone(),
    )?;
    policies.load(&keyring)?;
    let state = Arc::new(
        State::new(keyring, encrypted_keys).with_policies(policies, settings.default_lifetime),
    );
    #[cfg(unix)]
    return serve_unix(args, &settings, state, activated, log_file);
    #[cfg(windows)]
    return serve_windows(&settings, state);
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Binds the socket (or takes systemd's) and serves until a shutdown signal.
#[cfg(unix)]
fn serve_unix(
    args: &Args,
    settings: &Settings,
    state: Arc<State>,
    activated: Option<std::os::unix::net::UnixListener>,
    log_file: Option<std::fs::File>,
) -> Result<()> {
    use std::path::Path;
    // Before the socket exists and before the runtime's threads (which inherit the mask): a
    // SIGTERM from now on stops the agent cleanly, socket removed, however early it comes.
    // Not earlier: Ctrl-C at the PIN prompt must still end the agent at once.
    signals::hold_shutdown_signals().context("holding back shutdown signals")?;
    let (std_listener, location) = match activated {
        // systemd made the socket (mode and directory from the .socket unit) and keeps it.
        Some(listener) => (listener, None),
        None => {
            // Bind before starting the runtime's threads: umask is process-wide.
            let location = settings.socket_location()?;
            match transport::bind(&location) {
                Ok(listener) => (listener, Some(location)),
                Err(e) => {
                    if let transport::SocketLocation::Private(_) = location {
                        location.remove();
                    }
                    return Err(e);
                }
            }
        }
    };
    std_listener.set_nonblocking(true)?;
    let socket_path = match &location {
        Some(location) => location.path(),
        None => std_listener
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(Path::to_owned))
            .unwrap_or_else(|| "(socket activation)".into()),
    };
    let runtime = runtime()?;
    let result = runtime.block_on(async {
        let shutdown = signals::shutdown_on_signal().context("installing signal handlers")?;
        let listener = tokio::net::UnixListener::from_std(std_listener)?;
        info!(
            socket = %socket_path.display(),
            pid = std::process::id(),
            activated = location.is_none(),
            "listening"
        );
        if args.detached {
            background::detach_output(log_file)?;
        }
        // Type=notify units: ready once it listens. Without NOTIFY_SOCKET this does nothing.
        if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
            tracing::warn!(error = %e, "could not tell systemd that the agent is ready");
        }
        server::serve(listener, state, shutdown).await;
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        anyhow::Ok(())
    });
    if let Some(location) = location {
        location.remove();
    }
    info!("stopped");
    result
}

/// Creates this user's pipe and serves until Ctrl-C (or logoff, or shutdown).
#[cfg(windows)]
fn serve_windows(settings: &Settings, state: Arc<State>) -> Result<()> {
    let name = settings.pipe_name()?;
    let runtime = runtime()?;
    let result = runtime.block_on(async {
        let shutdown = signals::shutdown_on_signal().context("installing console handlers")?;
        let listener = dpop_agent::transport::PipeListener::bind(&name)?;
        info!(socket = %listener.name(), pid = std::process::id(), "listening");
        server::serve(listener, state, shutdown).await;
        anyhow::Ok(())
    });
    info!("stopped");
    result
}

/// `--check-config`: loads the settings as a start would, checks the files they name, and
/// prints what the agent would use. Secrets are read (to check them) but never printed.
fn check_config(args: &Args) -> Result<()> {
    let settings = Settings::load(args, HandedSecrets::default())?;
    for line in settings.check_lines()? {
        println!("{line}");
    }
    println!("configuration OK");
    Ok(())
}

/// Like ssh-agent: no core dumps, no ptrace and no /proc/<pid>/{mem,environ} for other
/// processes of the same user, which could otherwise read keys, PINs and the passphrase.
#[cfg(target_os = "linux")]
fn make_non_dumpable() -> std::io::Result<()> {
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) only changes this process's flags.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Windows has no per-process dumpable flag: any process of the same user may open the agent
/// for reading. Keys that must not be read by the user's other programs belong in a TPM or a
/// token.
#[cfg(not(target_os = "linux"))]
fn make_non_dumpable() -> std::io::Result<()> {
    Ok(())
}
