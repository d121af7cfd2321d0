//! Serving: the accept loop, the peer check, one task per connection, limits, and a clean
//! shutdown when the signal from [`crate::signals`] comes (the listener goes first, requests
//! in flight finish). Bytes come and go through [`crate::transport`].
//!
//! Limits: at most [`MAX_CONNECTIONS`] connections are served at once; one more is answered
//! with a `busy` error line and closed, instead of waiting unanswered in the listen backlog. A
//! connection that sends no request for [`IDLE_TIMEOUT`], or does not read its replies for as
//! long, is closed. A connection's queued replies are bounded in `connection.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dpop_protocol::{ErrorCode, WireError, encode_err, parse_request};
use serde_json::Value;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::connection::{Connection, Frame};
use crate::dispatch::handle;
use crate::peer::Peer;
use crate::state::State;
use crate::transport::{Listener, Stream, accept};

/// Connections served at once; the next one is answered `busy` and closed.
pub const MAX_CONNECTIONS: usize = 1024;

/// A connection with no request for this long (or whose client reads no reply for this
/// long) is closed. Clients connect again when they need the agent.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// Test-only: overrides [`IDLE_TIMEOUT`] (in milliseconds), read once when serving starts,
/// so tests need not wait ten minutes. Not a configuration knob: it is not in the
/// configuration file or the flags, and users have no reason to set it.
pub const IDLE_TIMEOUT_TEST_VAR: &str = "DPOP_AGENT_TEST_IDLE_TIMEOUT_MS";

/// `busy` refusals that wait for their client to close at once; beyond this, a refusal is
/// written without waiting (a flood of connections must not hold file descriptors).
const MAX_REFUSALS: usize = 64;

/// How long a `busy` refusal waits for its client to close (see `refuse_and_drain`).
const REFUSAL_DRAIN: Duration = Duration::from_millis(500);

/// How long a connection polls for its next request while there are no more connections
/// than cores (see `connection.rs`).
const SPIN: Duration = Duration::from_micros(50);

/// [`IDLE_TIMEOUT`], or the test override in [`IDLE_TIMEOUT_TEST_VAR`].
fn idle_timeout() -> Duration {
    match std::env::var(IDLE_TIMEOUT_TEST_VAR) {
        Ok(ms) => match ms.parse() {
            Ok(ms) => {
                warn!("idle timeout set to {ms} ms by {IDLE_TIMEOUT_TEST_VAR} (for tests only)");
                Duration::from_millis(ms)
            }
            Err(_) => {
                warn!("ignoring {IDLE_TIMEOUT_TEST_VAR}={ms:?}: not a number of milliseconds");
                IDLE_TIMEOUT
            }
        },
        Err(_) => IDLE_TIMEOUT,
    }
}

/// Open files a full agent needs: per connection its socket and the pidfd that holds its
/// client process (see `peer.rs`), and room for keys, tokens, logs and the `busy` refusals.
#[cfg(unix)]
const FILES_NEEDED: u64 = 2 * MAX_CONNECTIONS as u64 + MAX_REFUSALS as u64 + 256;

/// Raises the soft open-file limit towards [`FILES_NEEDED`] (within the hard limit), so that
/// the connection limit, not `EMFILE`, is what a flood of connections meets.
#[cfg(unix)]
fn raise_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 || limit.rlim_cur >= FILES_NEEDED {
            return;
        }
        limit.rlim_cur = FILES_NEEDED.min(limit.rlim_max);
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            debug!(
                "raising the open-file limit: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Serves until `shutdown` turns true, then lets in-flight requests finish.
pub async fn serve(mut listener: Listener, state: Arc<State>, mut shutdown: watch::Receiver<bool>) {
    #[cfg(unix)]
    raise_file_limit();
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
    let idle = idle_timeout();
    let open = Arc::new(AtomicUsize::new(0));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut tasks = JoinSet::new();
    loop {
        let stream = tokio::select! {
            accepted = accept(&mut listener) => match accepted {
                Ok(stream) => stream,
                Err(e) => {
                    warn!("accept failed: {e}");
                    // EMFILE and friends: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            warn!("{MAX_CONNECTIONS} connections open: answering busy");
            match refusals.clone().try_acquire_owned() {
                Ok(refusal) => {
                    tasks.spawn(async move {
                        refuse_busy(stream).await;
                        drop(refusal);
                    });
                }
                // Too many refusals under way: the line fits in the socket buffer of a new
                // connection, so write it without waiting, and close.
                Err(_) => {
                    let _ = stream.try_write(&busy_reply());
                }
            }
            while tasks.try_join_next().is_some() {}
            continue;
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
            serve_connection(stream, state.clone(), shutdown, spin, idle).await;
            // Its process may have exited with it: no yes stays remembered for it.
            state.policies.connection_closed();
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

fn busy_reply() -> Vec<u8> {
    encode_err(
        Value::Null,
        WireError::new(
            ErrorCode::Busy,
            format!("the agent serves {MAX_CONNECTIONS} connections already; try again later"),
        ),
    )
}

/// Answers a connection over the limit with one `busy` line and closes it.
async fn refuse_busy(stream: Stream) {
    let mut conn = Connection::new(stream);
    let _ = conn.write(&busy_reply()).await;
    conn.refuse_and_drain(REFUSAL_DRAIN).await;
}

async fn serve_connection(
    stream: Stream,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
    spin: impl Fn() -> Duration,
    idle: Duration,
) {
    let peer = match Peer::identify(&stream) {
        Ok(peer) => peer,
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
    let mut conn = Connection::new(stream);
    let idle_deadline = tokio::time::sleep(idle);
    tokio::pin!(idle_deadline);
    loop {
        idle_deadline
            .as_mut()
            .reset(tokio::time::Instant::now() + idle);
        let frame = tokio::select! {
            f = conn.read_frame(spin()) => f,
            _ = shutdown.changed() => break,
            _ = &mut idle_deadline => {
                debug!("no request for {idle:?}: closing the connection");
                break;
            }
        };
        let reply = match frame {
            Ok(Frame::Line(line)) => match parse_request(line) {
                Ok(request) => handle(&state, &peer, request).await,
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
        // The write waits while the client does not read (backpressure); not forever.
        match tokio::time::timeout(idle, conn.write(&reply)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                debug!("write failed: {e}");
                return;
            }
            Err(_) => {
                debug!("client read no reply for {idle:?}: closing the connection");
                return;
            }
        }
    }
    let _ = tokio::time::timeout(idle, conn.flush()).await;
    debug!("client disconnected");
}
