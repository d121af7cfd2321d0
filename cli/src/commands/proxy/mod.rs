//! `dpop proxy`: a local reverse proxy that adds DPoP. Programs that cannot be changed send
//! plain HTTP to a Unix socket (or loopback TCP) of their own user; each request goes to the
//! route's upstream with `Authorization: DPoP <token>` and a fresh proof from the agent.
//!
//! - [`routes`]: the settings of a route (flags or `[[route]]` tables, one declaration),
//!   prefix matching, upstream URLs, redirect mapping.
//! - [`listen`]: the Unix socket or loopback TCP listener and its per-connection uid check.
//! - [`credentials`]: the agent connections per key, and each route's token (refreshed).
//! - [`forward`]: one request upstream and back, and the access log.
//!
//! This file: the arguments, start-up (bind first, then the runtime, agent and tokens), the
//! accept loop, and shutdown on SIGINT or SIGTERM (stop accepting, remove the socket, let
//! requests in flight finish for up to [`SHUTDOWN_GRACE`]).

/// A line on standard error, ignoring a failure to write it (a log reader that went away
/// must not take requests down with it, as `eprintln!`'s panic would).
#[cfg(unix)]
macro_rules! log {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

#[cfg(unix)]
mod credentials;
#[cfg(unix)]
mod forward;
#[cfg(unix)]
mod listen;
mod routes;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use routes::RouteSettings;

/// Default `--body-retry-limit`: 1 MiB.
const DEFAULT_BODY_RETRY_LIMIT: usize = 1024 * 1024;

/// How long requests in flight may take to finish after SIGINT or SIGTERM.
#[cfg(unix)]
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// `dpop proxy`'s arguments.
#[derive(Args)]
pub(crate) struct ProxyArgs {
    /// The one route of the command line (prefix /); --config FILE gives several instead.
    #[command(flatten)]
    route: RouteSettings,
    /// Routes file (TOML): `[[route]]` tables with prefix, upstream, token or
    /// access_token_file, and key.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where to listen: unix:PATH, or 127.0.0.1:PORT / `[::1]:PORT` (Linux; only this user's
    /// connections are served). Default: unix:$XDG_RUNTIME_DIR/dpop-agent/proxy.sock.
    #[arg(long, value_name = "ADDR")]
    #[cfg_attr(unix, arg(value_parser = clap::value_parser!(listen::ListenAddr)))]
    listen: Option<ListenArg>,
    /// Request bodies up to this many bytes are held in memory, so that a use_dpop_nonce
    /// challenge can be answered by sending them again; larger ones are streamed, and such a
    /// challenge goes back to the client.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_BODY_RETRY_LIMIT)]
    body_retry_limit: usize,
}

#[cfg(unix)]
type ListenArg = listen::ListenAddr;
#[cfg(not(unix))]
type ListenArg = String;

/// Runs the proxy until SIGINT or SIGTERM.
#[cfg(not(unix))]
pub(crate) fn exec(_socket: Option<&Path>, cmd: ProxyArgs) -> Result<ExitCode> {
    routes::load(&cmd.route, cmd.config.as_deref())?;
    let _ = (cmd.listen, cmd.body_retry_limit);
    anyhow::bail!(
        "dpop proxy is not supported on Windows yet (it serves a Unix socket, or loopback TCP \
         with a per-connection user check); use dpop request, or the client crate"
    )
}

/// Runs the proxy until SIGINT or SIGTERM.
#[cfg(unix)]
pub(crate) fn exec(socket: Option<&Path>, cmd: ProxyArgs) -> Result<ExitCode> {
    use anyhow::Context;

    let routes = routes::load(&cmd.route, cmd.config.as_deref())?;
    // Bound before the runtime's threads exist: binding a Unix socket sets the umask.
    let bound = match &cmd.listen {
        Some(addr) => listen::bind(addr, false)?,
        None => listen::bind(&listen::ListenAddr::Unix(listen::default_socket()?), true)?,
    };
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .context("starting the proxy's runtime")?;
    // The listener removes its socket file when dropped, whichever way serve ends.
    let result = runtime.block_on(async {
        let listener = listen::Listener::new(bound)?;
        serve(socket, routes, listener, cmd.body_retry_limit).await
    });
    // Connections still open after the grace period are dropped with the runtime.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    result.map(|()| ExitCode::SUCCESS)
}

/// Connects to the agent, loads the tokens, then serves until a signal.
#[cfg(unix)]
async fn serve(
    socket: Option<&Path>,
    routes: Vec<routes::Route>,
    listener: listen::Listener,
    body_retry_limit: usize,
) -> Result<()> {
    use std::collections::HashMap;
    use std::sync::Arc;

    use anyhow::{Context, bail};
    use dpop_client::http::{TokenCache, reqwest};
    use hyper_util::rt::TokioIo;
    use hyper_util::server::graceful::GracefulShutdown;
    use tokio::signal::unix::{SignalKind, signal};

    use credentials::{AGENT_CONNECTIONS, Credential, Signer};
    use forward::{Proxy, Target};

    let mut terminate = signal(SignalKind::terminate()).context("handling SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("handling SIGINT")?;

    // No redirects followed: they go back to the client. No user agent of ours: the client's
    // goes on.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("building the HTTP client")?;
    let mut signers: HashMap<String, Arc<Signer>> = HashMap::new();
    let mut targets = Vec::new();
    for route in routes {
        let label = match (&route.token, &route.key) {
            (routes::TokenFrom::Saved(name), key) => {
                let saved = TokenCache::default_location()?.load(name)?;
                if let Some(key) = key
                    && *key != saved.key
                {
                    bail!(
                        "route {}: saved token {name:?} is bound to key {:?}, not {key:?}",
                        route.prefix,
                        saved.key
                    );
                }
                saved.key.clone()
            }
            (routes::TokenFrom::File(_), key) => {
                let mut agent = super::connect_async(socket).await?;
                super::pick_key_async(&mut agent, key.as_deref())
                    .await?
                    .label
            }
        };
        let signer = match signers.get(&label) {
            Some(signer) => signer.clone(),
            None => {
                let signer =
                    Arc::new(Signer::connect(socket, &http, &label, AGENT_CONNECTIONS).await?);
                signers.insert(label.clone(), signer.clone());
                signer
            }
        };
        let credential = Credential::load(&route.token, &signer)
            .await
            .with_context(|| format!("route {}", route.prefix))?;
        log!(
            "dpop proxy: route {} -> {} (key {label})",
            route.prefix,
            route.upstream
        );
        targets.push(Target {
            route,
            signer,
            credential,
        });
    }
    let proxy = Arc::new(Proxy {
        targets,
        body_retry_limit,
        check_host: matches!(listener, listen::Listener::Tcp(_)),
    });

    // The address on standard output, alone, for scripts and `curl --unix-socket`.
    // (Ignored when standard output is closed: the proxy serves all the same.)
    {
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "listening on {}", listener.describe());
        let _ = stdout.flush();
    }

    let graceful = GracefulShutdown::new();
    loop {
        let conn = tokio::select! {
            conn = listener.accept() => conn,
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        };
        let conn = match conn {
            Ok(Some(conn)) => conn,
            Ok(None) => continue,
            Err(e) => {
                // Out of file descriptors and the like: wait a moment rather than spin.
                log!("dpop proxy: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let proxy = proxy.clone();
        let service = hyper::service::service_fn(move |request| proxy.clone().handle(request));
        let http1 = hyper::server::conn::http1::Builder::new();
        match conn {
            listen::Conn::Unix(stream) => {
                let conn = http1.serve_connection(TokioIo::new(stream), service);
                tokio::spawn(graceful.watch(conn));
            }
            listen::Conn::Tcp(stream) => {
                let conn = http1.serve_connection(TokioIo::new(stream), service);
                tokio::spawn(graceful.watch(conn));
            }
        }
    }
    // Stop accepting first: the socket goes, then requests in flight finish.
    drop(listener);
    log!("dpop proxy: shutting down");
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        log!(
            "dpop proxy: requests still in flight after {}s; closing them",
            SHUTDOWN_GRACE.as_secs()
        );
    }
    Ok(())
}
