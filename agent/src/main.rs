//! `dpop-agent`: the daemon that keeps DPoP private keys where they cannot leave (a PKCS#11
//! token, or encrypted software storage) and signs proofs for local clients over a Unix socket,
//! like ssh-agent does for SSH keys.
//!
//! Without arguments it starts in the background and prints shell commands that set
//! `DPOP_AUTH_SOCK`, for `eval "$(dpop-agent)"`. `-D` stays in the foreground; `-k` stops the
//! agent named by `DPOP_AUTH_SOCK` (or, without it, `DPOP_AGENT_PID`).

mod config;
mod connection;
mod dispatch;
mod server;
mod socket;
mod wire_error;

use std::io::{BufRead, IsTerminal, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Parser;
use dpop_keys::pkcs11::{Pkcs11Backend, Pkcs11Config, TokenSelector};
use dpop_keys::software::SoftwareBackend;
use dpop_keys::{Backend, Keyring};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::{Args, PinFrom, Pkcs11Settings, Settings};
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
    run(args)
}

fn run(args: &Args) -> Result<()> {
    // Like ssh-agent: no core dumps, no ptrace and no /proc/<pid>/{mem,environ} for other
    // processes of the same user, which could otherwise read keys, PINs and the passphrase.
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) only changes this process's flags.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        warn!(
            "could not make the agent non-dumpable: {}",
            std::io::Error::last_os_error()
        );
    }
    let settings = Settings::load(args, true)?;
    if settings.tpm_tcti.is_some() {
        bail!("the tpm backend is not available in this build yet");
    }
    let (socket_path, default_location) = match &settings.socket {
        Some(path) => (path.clone(), false),
        None => (socket::default_path(), true),
    };
    let keyring = Arc::new(Keyring::new(backends(&settings, args.detached)?));
    let software_persistent = settings.passphrase.is_some();
    for (backend, problem) in keyring.load() {
        if matches!(problem, dpop_keys::Error::WrongPassphrase { .. }) {
            // Starting anyway would encrypt new keys under a different passphrase.
            bail!("{problem}; not starting");
        }
        warn!("{backend} backend: {problem}");
    }
    if let Some(p11) = &settings.pkcs11 {
        adopt_configured(&keyring, &p11.adopt);
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

fn backends(settings: &Settings, detached: bool) -> Result<Vec<Arc<dyn Backend>>> {
    let software_dir = settings.data_dir.join("software");
    let software = match &settings.passphrase {
        Some(passphrase) => {
            dpop_keys::create_private_dir(&settings.data_dir)?;
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
    let mut backends: Vec<Arc<dyn Backend>> = vec![Arc::new(software)];
    if let Some(p11) = &settings.pkcs11 {
        backends.push(Arc::new(open_pkcs11(p11, &settings.data_dir, detached)?));
    }
    Ok(backends)
}

fn token_selector(p11: &Pkcs11Settings) -> TokenSelector {
    match (&p11.token, &p11.serial) {
        (Some(label), _) => TokenSelector::Label(label.clone()),
        (None, Some(serial)) => TokenSelector::Serial(serial.clone()),
        (None, None) => unreachable!("Settings::load requires a token label or serial"),
    }
}

/// Opens the token once. A refused PIN is reported and never retried: tokens lock after a
/// few wrong PINs.
fn open_pkcs11(
    p11: &Pkcs11Settings,
    data_dir: &std::path::Path,
    detached: bool,
) -> Result<Pkcs11Backend> {
    let token = token_selector(p11);
    let pin = match &p11.pin {
        PinFrom::Source(source) => source.resolve()?,
        // In the background the parent asked for the PIN and passes it on standard input.
        PinFrom::Prompt if detached => read_pin_line(std::io::stdin().lock())?,
        PinFrom::Prompt => prompt_pin(&token)?,
    };
    dpop_keys::create_private_dir(data_dir)?;
    let config = Pkcs11Config {
        // The agent is the module's only user in its process.
        reinitialize_module: true,
        ..Pkcs11Config::new(&p11.module, token.clone(), pin, data_dir.join("pkcs11"))
    };
    let backend = Pkcs11Backend::open(config)
        .with_context(|| format!("opening the PKCS#11 {token} in {}", p11.module.display()))?;
    info!(module = %backend.module_path().display(), "PKCS#11 {token} ready");
    Ok(backend)
}

/// Adopts the config file's `[[pkcs11_adopt]]` keys that are not served yet. A key that
/// cannot be adopted is reported and the agent starts without it.
fn adopt_configured(keyring: &Keyring, entries: &[config::AdoptEntry]) {
    for entry in entries {
        let label = match dpop_keys::KeyLabel::new(&entry.label) {
            Ok(label) => label,
            Err(e) => {
                warn!("[[pkcs11_adopt]] {:?}: {e}", entry.label);
                continue;
            }
        };
        match keyring.get(label.as_str()) {
            Ok(key) if key.meta().info().backend == dpop_keys::BackendKind::Pkcs11 => continue,
            Ok(_) => {
                warn!("[[pkcs11_adopt]] {label}: a key with this label exists in another backend");
                continue;
            }
            Err(_) => {}
        }
        match keyring.adopt(
            dpop_keys::BackendKind::Pkcs11,
            &entry.uri,
            &label,
            entry.alg,
        ) {
            Ok(key) => {
                info!(label = %label, jkt = %key.meta().info().jkt, "adopted from the config file")
            }
            Err(e) => warn!("[[pkcs11_adopt]] {label}: {e}"),
        }
    }
}

fn prompt_pin(token: &TokenSelector) -> Result<SecretString> {
    let pin = rpassword::prompt_password(format!("PIN for the PKCS#11 {token}: ")).context(
        "reading the PIN from the terminal (or use --pkcs11-pin-env / --pkcs11-pin-file)",
    )?;
    if pin.is_empty() {
        bail!("empty PIN");
    }
    Ok(SecretString::from(pin))
}

fn read_pin_line(mut input: impl BufRead) -> Result<SecretString> {
    let mut line = zeroize::Zeroizing::new(String::new());
    input.read_line(&mut line)?;
    let pin = line.trim_end_matches(['\r', '\n']);
    if pin.is_empty() {
        bail!("no PIN was passed to the background agent");
    }
    Ok(SecretString::from(pin))
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
    // A PIN prompt needs the terminal, which the detached child does not have: ask here.
    let settings = Settings::load(args, false)?;
    let pin = match &settings.pkcs11 {
        Some(p11) if matches!(p11.pin, PinFrom::Prompt) => Some(prompt_pin(&token_selector(p11))?),
        _ => None,
    };
    let exe = std::env::current_exe().context("finding our own executable")?;
    let mut command = Command::new(exe);
    // Without -a the child works out the same default path (and creates its 0700 directory).
    command
        .args(std::env::args_os().skip(1))
        .arg("-D")
        .arg("--detached");
    command
        .stdin(if pin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = command.spawn().context("starting the agent")?;
    if let Some(pin) = pin {
        let mut stdin = child.stdin.take().expect("piped");
        let mut line = zeroize::Zeroizing::new(pin.expose_secret().as_bytes().to_vec());
        line.push(b'\n');
        // The pipe buffer holds a PIN; a failure shows up as the child's start-up error.
        let _ = stdin.write_all(&line);
    }
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

/// `-k`: stops the agent that `DPOP_AUTH_SOCK` names (its pid comes from the socket's peer
/// credentials, so a stale `DPOP_AGENT_PID` cannot make us signal another process), or the
/// one `DPOP_AGENT_PID` names when no socket is set.
fn kill_agent() -> Result<()> {
    let pid: i32 = match std::env::var_os("DPOP_AUTH_SOCK").filter(|s| !s.is_empty()) {
        Some(sock) => {
            let stream = std::os::unix::net::UnixStream::connect(&sock).with_context(|| {
                format!(
                    "connecting to the agent at {}",
                    std::path::Path::new(&sock).display()
                )
            })?;
            let cred = peer_credentials(&stream)?;
            if cred.uid != socket::euid() {
                bail!(
                    "the agent at {} runs as uid {}, not as us",
                    sock.to_string_lossy(),
                    cred.uid
                );
            }
            cred.pid
        }
        None => std::env::var("DPOP_AGENT_PID")
            .context("neither DPOP_AUTH_SOCK nor DPOP_AGENT_PID is set; which agent should stop?")?
            .parse()
            .context("DPOP_AGENT_PID is not a process id")?,
    };
    // SAFETY: kill(2) with a positive pid and SIGTERM has no memory-safety preconditions.
    if pid <= 0 || unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
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

fn peer_credentials(stream: &std::os::unix::net::UnixStream) -> Result<libc::ucred> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED writes a ucred into the buffer we pass, of the size we pass.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        bail!(
            "reading the agent's credentials: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(cred)
}
