//! `dpop-agent`: the daemon that keeps DPoP private keys where they cannot leave (a PKCS#11
//! token, or encrypted software storage) and signs proofs for local clients over a Unix socket,
//! like ssh-agent does for SSH keys.
//!
//! Without arguments it starts in the background and prints shell commands that set
//! `DPOP_AUTH_SOCK`, for `eval "$(dpop-agent)"`. `-D` stays in the foreground; `-k` stops the
//! agent named by `DPOP_AGENT_PID`.

mod config;
mod connection;
mod dispatch;
mod server;
mod socket;

use std::io::{BufRead, IsTerminal, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Parser;
use dpop_keys::software::SoftwareBackend;
use dpop_keys::{Backend, Keyring};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::config::{Args, Settings};
use crate::dispatch::State;

fn main() -> ExitCode {
    let args = Args::parse();
    let result = if args.kill {
        kill_agent()
    } else if !args.foreground {
        start_in_background(&args)
    } else {
        run_foreground(&args)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dpop-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_foreground(args: &Args) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "dpop_agent=info,dpop_keys=info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let result = run(args);
    if let Err(e) = &result {
        error!("{e:#}");
    }
    result
}

fn run(args: &Args) -> Result<()> {
    let settings = Settings::load(args)?;
    if settings.tpm_tcti.is_some() {
        bail!("the tpm backend is not available in this build yet");
    }
    let (socket_path, default_location) = match &settings.socket {
        Some(path) => (path.clone(), false),
        None => (socket::default_path(), true),
    };
    let keyring = Arc::new(Keyring::new(backends(&settings)?));
    let software_persistent = settings.passphrase.is_some();
    for (backend, problem) in keyring.load() {
        if matches!(problem, dpop_keys::Error::WrongPassphrase { .. }) {
            // Starting anyway would encrypt new keys under a different passphrase.
            bail!("{problem}; not starting");
        }
        warn!("{backend} backend: {problem}");
    }
    info!("{} key(s) loaded", keyring.list().len());

    // Bind before starting the runtime's threads: umask is process-wide.
    let std_listener = socket::bind(&socket_path, default_location)?;
    std_listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let state = Arc::new(State {
        keyring,
        software_persistent,
    });
    let result = runtime.block_on(async {
        let listener = tokio::net::UnixListener::from_std(std_listener)?;
        info!(socket = %socket_path.display(), pid = std::process::id(), "listening");
        if args.detached {
            detach_output(settings.log_file.as_deref())?;
        }
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            wait_for_signal().await;
            let _ = tx.send(true);
        });
        server::serve(listener, state, rx).await;
        anyhow::Ok(())
    });
    let _ = std::fs::remove_file(&socket_path);
    info!("stopped");
    result
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    tokio::select! {
        _ = term.recv() => info!("SIGTERM"),
        _ = int.recv() => info!("SIGINT"),
        _ = hup.recv() => info!("SIGHUP"),
    }
}

fn backends(settings: &Settings) -> Result<Vec<Arc<dyn Backend>>> {
    let software_dir = settings.data_dir.join("software");
    let software = match &settings.passphrase {
        Some(passphrase) => {
            dpop_keys::software::create_private_dir(&settings.data_dir)?;
            SoftwareBackend::persistent(software_dir.clone(), passphrase.clone())?
        }
        None => {
            let backend = SoftwareBackend::ephemeral_beside(software_dir.clone());
            warn!(
                "no passphrase (DPOP_AGENT_PASSPHRASE or --passphrase-file): software keys are \
                 kept in memory only and lost when the agent stops"
            );
            let unloaded = backend.unloaded_key_files();
            if unloaded > 0 {
                warn!(
                    "{unloaded} software key file(s) in {} not loaded without the passphrase",
                    software_dir.display()
                );
            }
            backend
        }
    };
    let backends: Vec<Arc<dyn Backend>> = vec![Arc::new(software)];
    if settings.pkcs11.is_some() {
        bail!("the pkcs11 backend is not wired into this build yet");
    }
    Ok(backends)
}

/// Background mode, once listening: point standard error at the log file (or /dev/null),
/// tell the parent we are ready on standard output, then let go of standard output too. The
/// parent exits after that, and writing to its pipes would fail.
fn detach_output(log_file: Option<&std::path::Path>) -> Result<()> {
    use std::os::fd::AsRawFd;
    let log = match log_file {
        Some(path) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening log file {}", path.display()))?,
        None => std::fs::OpenOptions::new().write(true).open("/dev/null")?,
    };
    let null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
    // SAFETY: dup2 onto the standard descriptors; both sources are open files we own.
    if unsafe { libc::dup2(log.as_raw_fd(), 2) } < 0 {
        bail!(
            "redirecting standard error: {}",
            std::io::Error::last_os_error()
        );
    }
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(b"ready\n")?;
    stdout.flush()?;
    // SAFETY: as above.
    if unsafe { libc::dup2(null.as_raw_fd(), 1) } < 0 {
        bail!(
            "redirecting standard output: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// `dpop-agent` without `-D`: start a detached `dpop-agent -D` and print the shell lines that
/// point clients at it, once it answers.
fn start_in_background(args: &Args) -> Result<()> {
    let socket = args.socket.clone().unwrap_or_else(socket::default_path);
    let exe = std::env::current_exe().context("finding our own executable")?;
    let mut command = Command::new(exe);
    command
        .args(std::env::args_os().skip(1))
        .arg("-D")
        .arg("--detached");
    if args.socket.is_none() {
        command.arg("-a").arg(&socket);
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = command.spawn().context("starting the agent")?;
    let mut stderr = child.stderr.take().expect("piped");
    let collector = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    // The child says "ready" once it listens (and has let go of our stderr pipe); EOF
    // without it means it failed, and its log says why.
    let mut ready = String::new();
    let stdout = child.stdout.take().expect("piped");
    std::io::BufReader::new(stdout).read_line(&mut ready)?;
    if ready.trim() != "ready" {
        let _ = child.kill();
        let status = child.wait()?;
        let log = collector.join().unwrap_or_default();
        eprint!("{log}");
        bail!("the agent did not start ({status})");
    }
    let sock = shell_quote(&socket);
    let pid = child.id();
    println!("DPOP_AUTH_SOCK={sock}; export DPOP_AUTH_SOCK;");
    println!("DPOP_AGENT_PID={pid}; export DPOP_AGENT_PID;");
    println!("echo Agent pid {pid};");
    Ok(())
}

fn shell_quote(path: &std::path::Path) -> String {
    let s = path.to_string_lossy();
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn kill_agent() -> Result<()> {
    let pid: i32 = std::env::var("DPOP_AGENT_PID")
        .context("DPOP_AGENT_PID is not set; which agent should stop?")?
        .parse()
        .context("DPOP_AGENT_PID is not a process id")?;
    // SAFETY: kill(2) with a positive pid and SIGTERM has no memory-safety preconditions.
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        bail!(
            "stopping agent pid {pid}: {}",
            std::io::Error::last_os_error()
        );
    }
    println!("unset DPOP_AUTH_SOCK;");
    println!("unset DPOP_AGENT_PID;");
    println!("echo Agent pid {pid} killed;");
    Ok(())
}
