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

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use dpop_keys::software::SoftwareBackend;
use dpop_keys::{Backend, Keyring};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::config::{Args, Settings};
use crate::dispatch::State;

fn main() -> Result<()> {
    let args = Args::parse();
    if args.kill {
        return kill_agent();
    }
    if !args.foreground {
        return start_in_background(&args);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "dpop_agent=info,dpop_keys=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = run(&args);
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

/// `dpop-agent` without `-D`: start a detached `dpop-agent -D` and print the shell lines that
/// point clients at it, once it answers.
fn start_in_background(args: &Args) -> Result<()> {
    let socket = args.socket.clone().unwrap_or_else(socket::default_path);
    let exe = std::env::current_exe().context("finding our own executable")?;
    let mut command = Command::new(exe);
    command
        .args(std::env::args_os().skip(1))
        .arg("-D")
        .arg("-a")
        .arg(&socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = command.spawn().context("starting the agent")?;
    let mut stderr = child.stderr.take().expect("piped");
    let collector = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait()? {
            let log = collector.join().unwrap_or_default();
            eprint!("{log}");
            bail!("the agent exited during start-up ({status})");
        }
        if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!(
                "the agent did not start listening on {} within 30 s",
                socket.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
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
