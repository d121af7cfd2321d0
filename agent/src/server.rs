//! The accept loop: peer check, one task per connection, limits, clean shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dpop_protocol::{ErrorCode, WireError, encode_err, parse_request};
use serde_json::Value;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::connection::{Connection, Frame};
use crate::dispatch::{State, handle};

/// More connections than this wait until one closes.
const MAX_CONNECTIONS: usize = 1024;

/// How long a connection polls for its next request while there are no more connections
/// than cores (see `connection.rs`).
const SPIN: Duration = Duration::from_micros(50);

/// A shutdown signal that turns true on SIGTERM, SIGINT or SIGHUP.
pub fn shutdown_on_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
        tokio::select! {
            _ = term.recv() => info!("SIGTERM"),
            _ = int.recv() => info!("SIGINT"),
            _ = hup.recv() => info!("SIGHUP"),
        }
        let _ = tx.send(true);
    });
    rx
}

/// Serves until `shutdown` turns true, then lets in-flight requests finish.
pub async fn serve(listener: UnixListener, state: Arc<State>, mut shutdown: watch::Receiver<bool>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let open = Arc::new(AtomicUsize::new(0));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut tasks = JoinSet::new();
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("semaphore never closes"),
            _ = shutdown.changed() => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!("accept failed: {e}");
                    // EMFILE and friends: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let state = state.clone();
        let shutdown = shutdown.clone();
        let open = open.clone();
        open.fetch_add(1, Ordering::Relaxed);
        tasks.spawn(async move {
            let spin = || {
                if open.load(Ordering::Relaxed) <= cores {
                    SPIN
                } else {
                    Duration::ZERO
                }
            };
            serve_connection(stream, state, shutdown, spin).await;
            open.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    drop(listener);
    while tasks.try_join_next().is_some() {}
    info!("shutting down: waiting for {} connection(s)", tasks.len());
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .is_err()
    {
        warn!("connections still busy after 5 s; closing them");
    }
}

/// Same user as the agent, or root (who can read the agent's memory anyway, as ssh-agent
/// also allows).
fn peer_allowed(stream: &UnixStream) -> Result<u32, String> {
    let me = crate::socket::euid();
    match stream.peer_cred() {
        Ok(cred) if cred.uid() == me || cred.uid() == 0 => Ok(cred.uid()),
        Ok(cred) => Err(format!("uid {} (pid {:?})", cred.uid(), cred.pid())),
        Err(e) => Err(format!("unknown peer ({e})")),
    }
}

async fn serve_connection(
    stream: UnixStream,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
    spin: impl Fn() -> Duration,
) {
    let uid = match peer_allowed(&stream) {
        Ok(uid) => uid,
        Err(who) => {
            warn!("refused connection from {who}: not the agent's user");
            let mut conn = Connection::new(stream);
            let reply = encode_err(
                Value::Null,
                WireError::new(
                    ErrorCode::PermissionDenied,
                    "this agent serves only its own user",
                ),
            );
            let _ = conn.write(&reply).await;
            // Close gently: a client that is still sending would otherwise get EPIPE or
            // ECONNRESET instead of reading the refusal.
            conn.refuse_and_drain(Duration::from_secs(1)).await;
            return;
        }
    };
    debug!(uid, "client connected");
    let mut conn = Connection::new(stream);
    loop {
        let frame = tokio::select! {
            f = conn.read_frame(spin()) => f,
            _ = shutdown.changed() => break,
        };
        let reply = match frame {
            Ok(Frame::Line(line)) => match parse_request(line) {
                Ok(request) => handle(&state, request).await,
                Err(bad) => {
                    debug!(code = ?bad.error.code, "bad request");
                    encode_err(bad.id, bad.error)
                }
            },
            Ok(Frame::TooLong) => encode_err(
                Value::Null,
                WireError::new(
                    ErrorCode::LineTooLong,
                    format!("request line longer than {} bytes", dpop_protocol::MAX_LINE),
                ),
            ),
            Ok(Frame::Eof) => break,
            Err(e) => {
                debug!("read failed: {e}");
                break;
            }
        };
        if let Err(e) = conn.write(&reply).await {
            debug!("write failed: {e}");
            return;
        }
    }
    let _ = conn.flush().await;
    debug!("client disconnected");
}
