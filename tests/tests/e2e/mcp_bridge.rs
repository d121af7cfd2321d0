//! `dpop mcp URL`, the stdio <-> Streamable HTTP bridge: the real `dpop` binary spawned over
//! stdio as an MCP client does, against a real MCP server built with the official TypeScript
//! SDK (dpop_tests::McpServer), with proofs from a real agent. Messages go through unchanged
//! (key order and unknown fields, echoed back by a tool), server messages arrive over the GET
//! stream, a dropped answer stream is resumed with `Last-Event-ID`, the session is DELETEd
//! when stdin closes, and the bridge exits by itself when the server ends the session. With
//! authorization: the same server behind a front that wants DPoP-bound tokens from
//! oidc-provider, the whole MCP flow run by the bridge.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dpop_tests::{
    AgentOptions, McpServer, McpServerOptions, OIDC_RS_SECRET, OidcProvider, PROCESS_TIMEOUT,
    TestAgent, initialize_request, wait_timeout,
};
use serde_json::{Value, json};

/// `dpop mcp` running as an MCP client's child: stdin to write, stdout lines to read.
struct Bridge {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Bridge {
    fn start(agent: &TestAgent, url: &str) -> Bridge {
        let mut child = agent
            .dpop_command()
            .args(["mcp", "--key", "k", "-v", url])
            // No browser: the test reads the URL on stderr and plays the browser.
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting dpop mcp");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("piped stderr");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Bridge {
            stdin: child.stdin.take(),
            child,
            lines,
            stderr,
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Writes one message line, exactly these bytes.
    fn send_raw(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(line.as_bytes()).unwrap();
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
    }

    fn send(&mut self, message: &Value) {
        self.send_raw(&message.to_string());
    }

    /// The next line on stdout (raw).
    fn next_line(&self) -> String {
        self.lines
            .recv_timeout(PROCESS_TIMEOUT)
            .unwrap_or_else(|e| {
                panic!(
                    "no line from dpop mcp within {PROCESS_TIMEOUT:?} ({e}); stderr:\n{}",
                    self.stderr()
                )
            })
    }

    /// Lines until the answer to `id`; returns (the answer's raw line, the other messages).
    fn answer(&self, id: &Value) -> (String, Vec<Value>) {
        let mut others = Vec::new();
        loop {
            let line = self.next_line();
            let message: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
                panic!("dpop mcp printed a line that is not JSON ({e}): {line}")
            });
            if message.get("method").is_none() && message.get("id") == Some(id) {
                return (line, others);
            }
            others.push(message);
        }
    }

    /// initialize, then notifications/initialized; returns the initialize result.
    fn initialize(&mut self) -> Value {
        self.send(&initialize_request(0));
        let (line, _) = self.answer(&json!(0));
        self.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        serde_json::from_str::<Value>(&line).unwrap()["result"].clone()
    }

    fn close_stdin(&mut self) {
        self.stdin.take();
    }

    fn wait(&mut self, timeout: Duration) -> ExitStatus {
        wait_timeout(&mut self.child, timeout).unwrap_or_else(|| {
            let _ = self.child.kill();
            panic!(
                "dpop mcp did not exit within {timeout:?}; stderr:\n{}",
                self.stderr()
            )
        })
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> TestAgent {
    let agent = TestAgent::start(AgentOptions::new());
    agent.client().generate_key("k").unwrap();
    agent
}

/// The message the test sends to `echo`: keys out of order and fields no schema knows, in
/// the arguments and in `_meta`.
const ECHO_ARGUMENTS: &str =
    r#"{"zeta":1,"alpha":{"unknown_field":[3,2,1],"b":"x\ny","_x-ext":null},"mid":true}"#;

fn echo_call(id: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":"{id}","method":"tools/call","params":{{"name":"echo","_meta":{{"x-vendor/trace":"t-1"}},"arguments":{ECHO_ARGUMENTS}}}}}"#
    )
}

/// initialize -> tools/list -> tools/call through the bridge: the answers are the server's,
/// and the arguments reach the tool byte for byte (the echo's JSON text is the tool's
/// `JSON.stringify` of what it received, which keeps key order).
fn round_trip(options: McpServerOptions) {
    let agent = agent();
    let server = McpServer::start_with(options);
    let mut bridge = Bridge::start(&agent, &server.url);
    let init = bridge.initialize();
    assert_eq!(init["protocolVersion"], "2025-11-25", "{init}");

    bridge.send(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}));
    let (tools, _) = bridge.answer(&json!(1));
    let tools: Value = serde_json::from_str(&tools).unwrap();
    let names: Vec<&str> = tools["result"]["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(names.contains(&"echo"), "{tools}");

    bridge.send_raw(&echo_call("call-1"));
    let (line, _) = bridge.answer(&json!("call-1"));
    let answer: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        answer["result"]["content"][0]["text"].as_str(),
        Some(ECHO_ARGUMENTS),
        "the arguments changed on the way: {line}"
    );
    // The session id of the initialize answer went with every later request, the
    // negotiated version with every request after initialize.
    let session = server.sessions_opened().pop().expect("a session");
    let posts: Vec<Value> = server
        .events("http")
        .into_iter()
        .filter(|e| e["method"] == "POST")
        .collect();
    assert_eq!(posts[0]["session"], Value::Null);
    assert_eq!(posts[0]["protocol_version"], Value::Null);
    for post in &posts {
        assert_eq!(
            post["accept"], "application/json, text/event-stream",
            "{post}"
        );
    }
    for post in &posts[1..] {
        assert_eq!(post["session"], session.as_str(), "{post}");
        assert_eq!(post["protocol_version"], "2025-11-25", "{post}");
    }
    bridge.close_stdin();
    assert!(
        bridge.wait(PROCESS_TIMEOUT).success(),
        "{}",
        bridge.stderr()
    );
}

#[test]
fn round_trip_with_sse_answers_keeps_messages_unchanged() {
    round_trip(McpServerOptions::default());
}

#[test]
fn round_trip_with_json_answers_keeps_messages_unchanged() {
    round_trip(McpServerOptions {
        json_response: true,
        ..McpServerOptions::default()
    });
}

/// A message the server sends on its own (no request of the client's) arrives on the GET
/// stream the bridge opened after initialization.
#[test]
fn server_messages_arrive_over_the_get_stream() {
    let agent = agent();
    let server = McpServer::start();
    let mut bridge = Bridge::start(&agent, &server.url);
    bridge.initialize();
    let session = server.sessions_opened().pop().expect("a session");
    // The GET stream opens once the initialized notification is accepted.
    dpop_tests::wait_until("the bridge opened the GET stream", PROCESS_TIMEOUT, || {
        server
            .events("http")
            .iter()
            .any(|e| e["method"] == "GET" && e["session"] == session.as_str())
    });
    bridge.send(&json!({
        "jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {"name": "broadcast", "arguments": {"text": "over the GET stream"}},
    }));
    let (_, mut before) = bridge.answer(&json!(7));
    // The broadcast may come before or after the call's answer.
    let deadline = std::time::Instant::now() + PROCESS_TIMEOUT;
    while !before
        .iter()
        .any(|m| m["params"]["data"] == "over the GET stream")
    {
        assert!(std::time::Instant::now() < deadline, "{}", bridge.stderr());
        before.push(serde_json::from_str(&bridge.next_line()).unwrap());
    }
    let note = before
        .iter()
        .find(|m| m["params"]["data"] == "over the GET stream")
        .unwrap();
    assert_eq!(note["method"], "notifications/message", "{note}");
    let get = server
        .events("http")
        .into_iter()
        .find(|e| e["method"] == "GET")
        .unwrap();
    assert_eq!(get["accept"], "text/event-stream", "{get}");
    assert_eq!(get["protocol_version"], "2025-11-25", "{get}");
}

/// The server closes the stream of a call before its answer: the bridge resumes it with a
/// GET carrying the last event id, after the server's `retry`, and the answer arrives.
#[test]
fn a_dropped_answer_stream_is_resumed_with_last_event_id() {
    let agent = agent();
    let server = McpServer::start_with(McpServerOptions {
        retry_interval_ms: Some(50),
        ..McpServerOptions::default()
    });
    let mut bridge = Bridge::start(&agent, &server.url);
    bridge.initialize();
    bridge.send(&json!({
        "jsonrpc": "2.0", "id": "slow", "method": "tools/call",
        "params": {"name": "interrupt", "arguments": {"delay_ms": 300}},
    }));
    let (line, before) = bridge.answer(&json!("slow"));
    let answer: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(answer["result"]["content"][0]["text"], "resumed", "{line}");
    assert!(
        before
            .iter()
            .any(|m| m["params"]["data"] == "closing the stream"),
        "{before:?}"
    );
    assert!(
        server
            .events("http")
            .iter()
            .any(|e| e["method"] == "GET" && e["last_event_id"].is_string()),
        "no resumption with Last-Event-ID reached the server: {:?}",
        server.events("http")
    );
}

/// The end of standard input ends the bridge, after a DELETE of the session.
#[test]
fn closing_stdin_deletes_the_session_and_exits() {
    let agent = agent();
    let server = McpServer::start();
    let mut bridge = Bridge::start(&agent, &server.url);
    bridge.initialize();
    let session = server.sessions_opened().pop().expect("a session");
    bridge.close_stdin();
    let status = bridge.wait(PROCESS_TIMEOUT);
    assert!(status.success(), "{status}: {}", bridge.stderr());
    // The DELETE came before the exit.
    assert_eq!(server.sessions_closed(), vec![session.clone()]);
    let deletes: Vec<Value> = server
        .events("http")
        .into_iter()
        .filter(|e| e["method"] == "DELETE")
        .collect();
    assert_eq!(deletes.len(), 1, "{deletes:?}");
    assert_eq!(deletes[0]["session"], session.as_str());
}

/// The server ends the session (here: someone else DELETEs it): the bridge learns it from
/// the 404 of its next request (the GET stream's reconnection) and exits by itself, stdin
/// still open.
#[test]
fn the_bridge_exits_when_the_server_ends_the_session() {
    let agent = agent();
    let server = McpServer::start();
    let mut bridge = Bridge::start(&agent, &server.url);
    bridge.initialize();
    let session = server.sessions_opened().pop().expect("a session");
    dpop_tests::wait_until("the bridge opened the GET stream", PROCESS_TIMEOUT, || {
        server.events("http").iter().any(|e| e["method"] == "GET")
    });
    delete_session(server.port, &session);
    let status = bridge.wait(PROCESS_TIMEOUT);
    assert!(status.success(), "{status}: {}", bridge.stderr());
    assert!(
        bridge.stderr().contains("the server ended the session"),
        "{}",
        bridge.stderr()
    );
    assert!(bridge.stdin.is_some(), "stdin was still open");
}

/// A DELETE of `session` over a plain socket, as another client of the server would send it.
fn delete_session(port: u16, session: &str) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "DELETE /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nMcp-Session-Id: {session}\r\n\
         MCP-Protocol-Version: 2025-11-25\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// SIGTERM (what an MCP client sends a server that does not exit soon after stdin closes)
/// ends the bridge at once, a call still running, after a DELETE of the session.
#[test]
fn sigterm_deletes_the_session_and_exits_at_once() {
    let agent = agent();
    let server = McpServer::start();
    let mut bridge = Bridge::start(&agent, &server.url);
    bridge.initialize();
    let session = server.sessions_opened().pop().expect("a session");
    // A call that runs for 10 s.
    bridge.send(&json!({
        "jsonrpc": "2.0", "id": 9, "method": "tools/call",
        "params": {"name": "progress", "arguments": {"steps": 100, "delay_ms": 100}},
    }));
    dpop_tests::wait_until("the call started", PROCESS_TIMEOUT, || {
        server
            .events("tool")
            .iter()
            .any(|e| e["name"] == "progress")
    });
    let started = std::time::Instant::now();
    // SAFETY: a signal to our own child, whose pid is live until it is waited for.
    assert_eq!(
        unsafe { libc::kill(bridge.child.id() as i32, libc::SIGTERM) },
        0
    );
    let status = bridge.wait(PROCESS_TIMEOUT);
    assert!(status.success(), "{status}: {}", bridge.stderr());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the bridge waited for the call: {:?}",
        started.elapsed()
    );
    assert_eq!(server.sessions_closed(), vec![session]);
}

/// Requests are not queued behind a slow one: a quick call sent after a slow call is answered
/// first, while the slow call's notifications stream in.
#[test]
fn a_slow_call_does_not_hold_back_the_next_one() {
    let agent = agent();
    let server = McpServer::start();
    let mut bridge = Bridge::start(&agent, &server.url);
    bridge.initialize();
    bridge.send(&json!({
        "jsonrpc": "2.0", "id": "slow", "method": "tools/call",
        "params": {"name": "progress", "arguments": {"steps": 20, "delay_ms": 50},
                   "_meta": {"progressToken": "p1"}},
    }));
    bridge.send(&json!({
        "jsonrpc": "2.0", "id": "quick", "method": "tools/call",
        "params": {"name": "add", "arguments": {"a": 2, "b": 3}},
    }));
    let (quick, before) = bridge.answer(&json!("quick"));
    assert!(
        !before.iter().any(|m| m["id"] == "slow"),
        "the quick call was answered after the slow one"
    );
    let quick: Value = serde_json::from_str(&quick).unwrap();
    assert_eq!(quick["result"]["structuredContent"]["sum"], 5, "{quick}");
    let (slow, during) = bridge.answer(&json!("slow"));
    assert!(slow.contains("done after 20 steps"), "{slow}");
    // The slow call's progress went on after the quick answer.
    assert!(
        during.iter().any(
            |m| m["method"] == "notifications/progress" && m["params"]["progressToken"] == "p1"
        ),
        "{during:?}"
    );
}

/// The MCP server behind a front that wants a DPoP-bound token of oidc-provider for it
/// (checked by introspection: active, bound to the test key, for this resource) and a proof
/// with it, and answers 401 with its protected resource metadata otherwise; what passes is
/// forwarded to the real MCP server, answers streamed back.
struct Front {
    base: String,
    issuer: String,
    jkt: String,
    upstream: String,
    /// Requests that came with a valid token / without one.
    authorized: std::sync::atomic::AtomicU32,
    refused: std::sync::atomic::AtomicU32,
}

impl Front {
    fn url(&self) -> String {
        format!("{}/mcp", self.base)
    }
}

async fn front_metadata(
    axum::extract::State(front): axum::extract::State<Arc<Front>>,
) -> axum::Json<Value> {
    axum::Json(json!({
        "resource": front.url(),
        "authorization_servers": [front.issuer],
        "scopes_supported": ["mcp:tools"],
    }))
}

async fn front_mcp(
    axum::extract::State(front): axum::extract::State<Arc<Front>>,
    method: axum::http::Method,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use std::sync::atomic::Ordering;
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("DPoP "));
    let valid = match token {
        Some(token) if headers.contains_key("dpop") => {
            let introspection: Value = reqwest::Client::new()
                .post(format!("{}/token/introspection", front.issuer))
                .basic_auth("resource-server", Some(OIDC_RS_SECRET))
                .form(&[("token", token)])
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            introspection["active"] == true
                && introspection["cnf"]["jkt"] == front.jkt.as_str()
                && introspection["aud"] == front.url().as_str()
        }
        _ => false,
    };
    if !valid {
        front.refused.fetch_add(1, Ordering::Relaxed);
        return axum::http::Response::builder()
            .status(401)
            .header(
                "www-authenticate",
                format!(
                    "DPoP algs=\"ES256\", resource_metadata=\"{}/.well-known/oauth-protected-resource/mcp\"",
                    front.base
                ),
            )
            .body(axum::body::Body::empty())
            .unwrap();
    }
    front.authorized.fetch_add(1, Ordering::Relaxed);
    let mut request = reqwest::Client::new()
        .request(method, &front.upstream)
        .body(body);
    for name in [
        "content-type",
        "accept",
        "mcp-session-id",
        "mcp-protocol-version",
        "last-event-id",
    ] {
        if let Some(value) = headers.get(name) {
            request = request.header(name, value);
        }
    }
    let answer = request.send().await.unwrap();
    let mut response = axum::http::Response::builder().status(answer.status());
    for name in ["content-type", "mcp-session-id"] {
        if let Some(value) = answer.headers().get(name) {
            response = response.header(name, value.clone());
        }
    }
    response
        .body(axum::body::Body::new(reqwest::Body::from(answer)))
        .unwrap()
}

/// Plays the browser: GETs `url` and follows every redirect with the cookies it was given
/// (oidc-provider logs "alice" in and consents without a user), down to the bridge's
/// loopback callback.
async fn browse(url: &str) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut cookies: Vec<String> = Vec::new();
    let mut url = url::Url::parse(url).unwrap();
    for _ in 0..20 {
        let mut request = client.get(url.clone());
        if !cookies.is_empty() {
            request = request.header("cookie", cookies.join("; "));
        }
        let response = request.send().await.unwrap();
        for set in response.headers().get_all("set-cookie") {
            let pair = set.to_str().unwrap().split(';').next().unwrap().to_owned();
            let name = pair.split('=').next().unwrap().to_owned();
            cookies.retain(|c| !c.starts_with(&format!("{name}=")));
            cookies.push(pair);
        }
        if !response.status().is_redirection() {
            assert!(
                response.status().is_success(),
                "{} at {url}",
                response.status()
            );
            return;
        }
        url = url
            .join(response.headers()["location"].to_str().unwrap())
            .unwrap();
    }
    panic!("more than 20 redirects");
}

/// The whole MCP authorization through `dpop mcp`: the first request's 401 leads the bridge
/// through discovery, dynamic registration and the code flow (the URL on stderr), and the
/// request is sent again with the DPoP-bound token; every later request carries it; the
/// token is saved under the name made from the URL and never shown.
#[test]
fn the_bridge_authorizes_itself_at_a_dpop_protected_server() {
    let provider = OidcProvider::start();
    let agent = TestAgent::start(AgentOptions::new());
    let jkt = agent.client().generate_key("k").unwrap().jkt;
    let server = McpServer::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let front = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front = Arc::new(Front {
            base: format!("http://{}", listener.local_addr().unwrap()),
            issuer: provider.issuer.clone(),
            jkt,
            upstream: server.url.clone(),
            authorized: Default::default(),
            refused: Default::default(),
        });
        let router = axum::Router::new()
            .route(
                "/.well-known/oauth-protected-resource/mcp",
                axum::routing::get(front_metadata),
            )
            .route("/mcp", axum::routing::any(front_mcp))
            .with_state(front.clone());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        front
    });

    let mut bridge = Bridge::start(&agent, &front.url());
    bridge.send(&initialize_request(0));
    // The authorization URL comes on stderr (stdout is the protocol's).
    let mut url = None;
    dpop_tests::wait_until(
        "the bridge printed the authorization URL",
        PROCESS_TIMEOUT,
        || {
            let stderr = bridge.stderr();
            url = stderr
                .split("open this URL in a browser to authorize:\n")
                .nth(1)
                .and_then(|rest| rest.lines().next())
                .map(str::to_owned);
            url.is_some()
        },
    );
    runtime.block_on(browse(&url.unwrap()));
    let (line, _) = bridge.answer(&json!(0));
    let init: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(init["result"]["protocolVersion"], "2025-11-25", "{line}");
    bridge.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    bridge.send_raw(&echo_call("call-1"));
    let (line, _) = bridge.answer(&json!("call-1"));
    let answer: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        answer["result"]["content"][0]["text"].as_str(),
        Some(ECHO_ARGUMENTS),
        "{line}"
    );
    bridge.close_stdin();
    assert!(
        bridge.wait(PROCESS_TIMEOUT).success(),
        "{}",
        bridge.stderr()
    );

    use std::sync::atomic::Ordering;
    // One refusal (the first initialize), then initialize again, initialized, the call, the
    // GET stream and the DELETE, all with the token.
    assert_eq!(front.refused.load(Ordering::Relaxed), 1);
    assert!(front.authorized.load(Ordering::Relaxed) >= 4);
    assert_eq!(server.sessions_closed().len(), 1);
    let port = front.base.rsplit(':').next().unwrap();
    let name = format!("mcp-127.0.0.1-{port}-mcp");
    let saved = dpop_client::http::TokenCache::new(agent.dir().join("state/dpop/tokens"))
        .load(&name)
        .unwrap_or_else(|e| panic!("no saved token {name}: {e}"));
    assert!(saved.token_type.eq_ignore_ascii_case("DPoP"));
    let stderr = bridge.stderr();
    assert!(
        !stderr.contains(saved.access_token()),
        "the token was logged:\n{stderr}"
    );
    assert!(stderr.contains("client: registered at"), "{stderr}");
}
