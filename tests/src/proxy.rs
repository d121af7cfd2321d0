//! `dpop proxy` as a real process ([`ProxyProcess`]: started against a [`TestAgent`], its
//! address read from its one line of standard output, its log kept, stopped with SIGTERM),
//! [`curl`] through it, and [`EchoUpstream`]: a tiny real HTTP server on loopback that
//! answers every request with what it received (method, path, query, headers, body size), and
//! has a server-sent-events stream that holds its second event until the test releases it,
//! and redirects.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::{KillOnDrop, PROCESS_TIMEOUT, TestAgent, new_temp_dir, send_signal, wait_timeout};

/// A running `dpop proxy`; SIGKILLed on drop when still running.
pub struct ProxyProcess {
    child: Option<Child>,
    _guard: KillOnDrop,
    /// What it printed after `listening on `: `unix:PATH` or `IP:PORT`.
    pub listen: String,
    dir: TempDir,
}

impl ProxyProcess {
    /// Runs `dpop proxy ARGS` against `agent` (its saved tokens, its socket) and waits for
    /// its `listening on` line; panics with its log when it does not come.
    pub fn start(agent: &TestAgent, args: &[&str]) -> ProxyProcess {
        ProxyProcess::try_start(agent, args, &[])
            .unwrap_or_else(|log| panic!("dpop proxy did not start; its log:\n{log}"))
    }

    /// [`start`](Self::start) with more environment (`SSL_CERT_FILE` and `SSL_CERT_DIR` are
    /// never inherited: only `env` sets them); `Err` holds its log when it exits (or stays
    /// silent) instead of listening.
    pub fn try_start(
        agent: &TestAgent,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<ProxyProcess, String> {
        let dir = new_temp_dir();
        let log = std::fs::File::create(dir.path().join("proxy.log")).expect("log file");
        let mut command = agent.dpop_command();
        command
            .arg("proxy")
            .args(args)
            // The trust store for https upstreams is the test's choice, not the caller's
            // shell's (rustls-native-certs reads these two).
            .env_remove("SSL_CERT_FILE")
            .env_remove("SSL_CERT_DIR")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        let mut child = command.spawn().expect("spawning dpop proxy");
        let guard = KillOnDrop(child.id());
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut proxy = ProxyProcess {
            child: Some(child),
            _guard: guard,
            listen: String::new(),
            dir,
        };
        match rx.recv_timeout(PROCESS_TIMEOUT) {
            Ok(line) if line.starts_with("listening on ") => {
                proxy.listen = line["listening on ".len()..].trim().to_owned();
                Ok(proxy)
            }
            _ => {
                if let Some(mut child) = proxy.child.take() {
                    let _ = child.kill();
                    let _ = wait_timeout(&mut child, PROCESS_TIMEOUT);
                }
                Err(proxy.log())
            }
        }
    }

    /// The Unix socket it listens on, if it does.
    pub fn socket(&self) -> Option<PathBuf> {
        self.listen.strip_prefix("unix:").map(PathBuf::from)
    }

    /// The URL to give curl for `path` (with [`curl_args`](Self::curl_args)).
    pub fn url(&self, path: &str) -> String {
        match self.socket() {
            Some(_) => format!("http://localhost{path}"),
            None => format!("http://{}{path}", self.listen),
        }
    }

    /// `--unix-socket PATH` when it listens on one.
    pub fn curl_args(&self) -> Vec<String> {
        match self.socket() {
            Some(path) => vec!["--unix-socket".into(), path.display().to_string()],
            None => Vec::new(),
        }
    }

    /// Everything it logged on standard error.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("proxy.log")).unwrap_or_default()
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends SIGTERM and waits for it to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        send_signal(self.pid(), libc::SIGTERM);
        self.wait()
    }

    /// Waits for it to exit (after a signal the test sent).
    pub fn wait(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        wait_timeout(&mut child, PROCESS_TIMEOUT).unwrap_or_else(|| {
            let _ = child.kill();
            panic!("dpop proxy still runs; its log:\n{}", self.log())
        })
    }
}

/// Runs `curl -sS` through `proxy` with `args` (the URL among them); fails the test when
/// curl is missing.
pub fn curl(proxy: &ProxyProcess, args: &[&str]) -> Output {
    crate::require_tool("curl", &["--version"], "curl");
    std::process::Command::new("curl")
        .arg("-sS")
        .args(proxy.curl_args())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running curl")
}

/// What [`EchoUpstream`] saw.
#[derive(Default)]
struct Seen {
    requests: u32,
}

#[derive(Clone)]
struct Shared {
    seen: Arc<Mutex<Seen>>,
    release: Arc<tokio::sync::Notify>,
}

/// A plain HTTP server on loopback: `/sse` streams `data: one`, then waits for
/// [`release_sse`](Self::release_sse) before `data: two` and the end; `/redirect?to=URL`
/// answers 302 to URL; every other path echoes the request as JSON (`method`, `path`,
/// `query`, `headers` as `[name, value]` pairs, `body_len`) with a few hop-by-hop headers of
/// its own (`Connection: x-resp-hop`, `X-Resp-Hop`, `Keep-Alive`, `Proxy-Authenticate`) and
/// `X-Resp-Kept`.
pub struct EchoUpstream {
    shared: Shared,
    runtime: Option<tokio::runtime::Runtime>,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Default for EchoUpstream {
    fn default() -> Self {
        EchoUpstream::start()
    }
}

impl EchoUpstream {
    /// Starts it on a free port.
    pub fn start() -> EchoUpstream {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("upstream runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("binding the upstream");
        let base = format!("http://{}", listener.local_addr().expect("local address"));
        let shared = Shared {
            seen: Arc::default(),
            release: Arc::default(),
        };
        let app = Router::new()
            .route("/sse", axum::routing::get(sse))
            .route("/redirect", axum::routing::any(redirect))
            .fallback(echo)
            .with_state(shared.clone());
        runtime.spawn(async move { axum::serve(listener, app).await });
        EchoUpstream {
            shared,
            runtime: Some(runtime),
            base,
        }
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Requests it answered (every path).
    pub fn requests(&self) -> u32 {
        self.shared.seen.lock().expect("upstream state").requests
    }

    /// Lets the `/sse` stream send its second event and end.
    pub fn release_sse(&self) {
        self.shared.release.notify_waiters();
        // A stream that had not started waiting yet finds a stored permit.
        self.shared.release.notify_one();
    }
}

async fn echo(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    shared.seen.lock().expect("upstream state").requests += 1;
    let pairs: Vec<Value> = headers
        .iter()
        .map(|(name, value)| json!([name.as_str(), String::from_utf8_lossy(value.as_bytes())]))
        .collect();
    let mut response = axum::Json(json!({
        "method": method.as_str(),
        "path": uri.path(),
        "query": uri.query(),
        "headers": pairs,
        "body_len": body.len(),
    }))
    .into_response();
    let h = response.headers_mut();
    h.insert("connection", HeaderValue::from_static("x-resp-hop"));
    h.insert("x-resp-hop", HeaderValue::from_static("1"));
    h.insert("keep-alive", HeaderValue::from_static("timeout=9"));
    h.insert("proxy-authenticate", HeaderValue::from_static("Basic"));
    h.insert("x-resp-kept", HeaderValue::from_static("yes"));
    response
}

async fn sse(State(shared): State<Shared>) -> Response {
    shared.seen.lock().expect("upstream state").requests += 1;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(2);
    tokio::spawn(async move {
        let _ = tx.send(Bytes::from_static(b"data: one\n\n")).await;
        shared.release.notified().await;
        let _ = tx.send(Bytes::from_static(b"data: two\n\n")).await;
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, std::convert::Infallible>(chunk), rx))
    });
    (
        [("content-type", "text/event-stream")],
        Body::from_stream(stream),
    )
        .into_response()
}

async fn redirect(
    State(shared): State<Shared>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Response {
    shared.seen.lock().expect("upstream state").requests += 1;
    let to = query.get("to").cloned().unwrap_or_else(|| "/".into());
    (StatusCode::FOUND, [("location", to)], "").into_response()
}
