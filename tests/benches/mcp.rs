//! `cargo bench -p dpop-tests --bench mcp`: what `dpop mcp` (the stdio <-> Streamable HTTP
//! bridge) adds to one MCP tool call. The same `tools/call echo`, sequentially, (a) through
//! one `dpop mcp` process over stdio, timed from writing the line to reading the answer line,
//! and (b) made by this bench directly with reqwest on one keep-alive connection, in a session
//! of its own, with the same headers, the same token and proofs made beforehand (from the
//! agent, one per call, the server's nonce included). Against the DPoP-protected server
//! (the TypeScript-SDK server behind `DpopLayer`, tokens from oidc-provider, nonces required),
//! then against the bare server (no authorization: what the transport alone costs).
//!
//! Numbers are printed, never asserted. `cargo test --benches` runs it with a few calls.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::time::{Duration, Instant};

use dpop_client::ProofRequest;
use dpop_client::http::TokenCache;
use dpop_tests::bench::{Run, build_kind, operations};
use dpop_tests::mcp::drive_dpop_mcp;
use dpop_tests::{
    AgentOptions, Introspection, MCP_SCOPE, McpAuthorizationServer, McpServer, McpServerOptions,
    ProtectedMcpServer, TestAgent, initialize_request, mcp_messages,
};
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{Value, json};

/// The saved token's name (`dpop mcp --token`).
const TOKEN_NAME: &str = "bench";

/// A small `tools/call echo` with JSON-RPC id `id`.
fn echo_call(id: usize) -> String {
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "hello", "n": id}},
    })
    .to_string()
}

/// The answer to call `id` carries the echo (the call went through).
fn check_answer(answer: &Value, id: usize) {
    assert_eq!(answer["id"], json!(id), "{answer}");
    assert_eq!(
        answer["result"]["structuredContent"]["n"],
        json!(id),
        "{answer}"
    );
}

/// `dpop mcp` over stdio, initialized.
struct Bridge {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Bridge {
    fn start(agent: &TestAgent, url: &str) -> Bridge {
        let mut child = agent
            .dpop_command()
            .args(["mcp", "--key", "k", "--token", TOKEN_NAME, url])
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting dpop mcp");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut bridge = Bridge {
            child,
            stdin,
            stdout,
        };
        bridge.send(&initialize_request(0).to_string());
        let answer = bridge.answer(&json!(0));
        assert!(answer["result"].is_object(), "initialize: {answer}");
        bridge.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string());
        bridge
    }

    fn send(&mut self, line: &str) {
        self.stdin.write_all(line.as_bytes()).unwrap();
        self.stdin.write_all(b"\n").unwrap();
        self.stdin.flush().unwrap();
    }

    /// Reads lines until the answer to `id` (server messages in between are skipped).
    fn answer(&mut self, id: &Value) -> Value {
        loop {
            let mut line = String::new();
            let n = self.stdout.read_line(&mut line).expect("reading dpop mcp");
            assert!(n > 0, "dpop mcp ended its output (its errors are above)");
            let message: Value = serde_json::from_str(&line).expect("dpop mcp prints JSON lines");
            if message.get("method").is_none() && message.get("id") == Some(id) {
                return message;
            }
        }
    }

    /// `n` echo calls, each timed from writing the line to reading its answer.
    fn calls(&mut self, name: &str, n: usize) -> Run {
        let lines: Vec<String> = (1..=n).map(echo_call).collect();
        let mut samples = Vec::with_capacity(n);
        let start = Instant::now();
        for (i, line) in lines.iter().enumerate() {
            let t = Instant::now();
            self.send(line);
            let answer = self.answer(&json!(i + 1));
            samples.push(t.elapsed());
            check_answer(&answer, i + 1);
        }
        Run {
            name: name.to_owned(),
            wall: start.elapsed(),
            samples,
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How the direct client authorizes: the token, and proofs from the agent with the server's
/// nonce (all made before they are needed, one per request).
struct Auth<'a> {
    agent: &'a TestAgent,
    token: String,
    nonce: String,
}

impl Auth<'_> {
    fn proofs(&self, url: &str, n: usize) -> Vec<String> {
        let mut client = self.agent.client();
        (0..n)
            .map(|_| {
                let request = ProofRequest::new("POST", url)
                    .access_token(&self.token)
                    .nonce(&self.nonce);
                client.sign_proof("k", &request).expect("a proof")
            })
            .collect()
    }
}

/// The same calls made directly: reqwest, one keep-alive connection, its own session.
struct Direct {
    http: reqwest::Client,
    url: String,
    headers: HeaderMap,
}

impl Direct {
    /// `auth`: the DPoP token, whose proofs the caller hands to each request.
    async fn start(url: &str, auth: Option<&Auth<'_>>) -> Direct {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .build()
            .unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.insert(
            "accept",
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        if let Some(auth) = auth {
            headers.insert(
                "authorization",
                HeaderValue::from_str(&format!("DPoP {}", auth.token)).unwrap(),
            );
        }
        let mut direct = Direct {
            http,
            url: url.to_owned(),
            headers,
        };
        let proof = auth.map(|a| a.proofs(url, 1).remove(0));
        let response = direct
            .post(&initialize_request(0).to_string(), proof.as_deref())
            .await;
        assert_eq!(response.status(), 200, "direct initialize");
        let session = response.headers()["mcp-session-id"].clone();
        let answer = mcp_messages(&response.text().await.unwrap()).remove(0);
        let version = answer["result"]["protocolVersion"]
            .as_str()
            .expect("protocolVersion")
            .to_owned();
        direct.headers.insert("mcp-session-id", session);
        direct.headers.insert(
            "mcp-protocol-version",
            HeaderValue::from_str(&version).unwrap(),
        );
        let proof = auth.map(|a| a.proofs(url, 1).remove(0));
        let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        let response = direct
            .post(&initialized.to_string(), proof.as_deref())
            .await;
        assert_eq!(response.status(), 202, "direct notifications/initialized");
        direct
    }

    async fn post(&self, body: &str, proof: Option<&str>) -> reqwest::Response {
        let mut request = self
            .http
            .post(&self.url)
            .headers(self.headers.clone())
            .body(body.to_owned());
        if let Some(proof) = proof {
            request = request.header("dpop", proof);
        }
        request.send().await.expect("POST to the MCP server")
    }

    /// `n` echo calls, each timed from sending the request to having the whole answer;
    /// `proofs`: one per call, made beforehand (none without authorization).
    async fn calls(&self, name: &str, n: usize, proofs: &[String]) -> Run {
        let bodies: Vec<String> = (1..=n).map(echo_call).collect();
        let mut samples = Vec::with_capacity(n);
        let mut answers = Vec::with_capacity(n);
        let start = Instant::now();
        for (i, body) in bodies.iter().enumerate() {
            let t = Instant::now();
            let response = self.post(body, proofs.get(i).map(String::as_str)).await;
            let status = response.status();
            let text = response.text().await.expect("the answer's body");
            samples.push(t.elapsed());
            answers.push((status, text));
        }
        let wall = start.elapsed();
        for (i, (status, text)) in answers.iter().enumerate() {
            assert_eq!(*status, 200, "{text}");
            check_answer(&mcp_messages(text)[0], i + 1);
        }
        Run {
            name: name.to_owned(),
            wall,
            samples,
        }
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Prints both runs' median and p90 and the bridge's overhead at each.
fn report(title: &str, bridge: &Run, direct: &Run) {
    println!("{title}");
    for run in [bridge, direct] {
        println!(
            "  {:<44} p50 {:>8.1} us  p90 {:>8.1} us  ({} calls)",
            run.name,
            us(run.percentile(0.5)),
            us(run.percentile(0.9)),
            run.samples.len()
        );
    }
    println!(
        "  bridge overhead per call: p50 {:+.1} us, p90 {:+.1} us",
        us(bridge.percentile(0.5)) - us(direct.percentile(0.5)),
        us(bridge.percentile(0.9)) - us(direct.percentile(0.9)),
    );
}

/// The server's current `DPoP-Nonce`: what it answers a proof with a nonce it never issued
/// (the agent would otherwise add the one the bridge reported to it).
async fn server_nonce(agent: &TestAgent, url: &str, token: &str) -> String {
    let request = ProofRequest::new("POST", url)
        .access_token(token)
        .nonce("not-the-servers");
    let proof = agent.client().sign_proof("k", &request).expect("a proof");
    let response = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("authorization", format!("DPoP {token}"))
        .header("dpop", proof)
        .body(initialize_request(0).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        401,
        "a proof without the server's nonce is refused"
    );
    response.headers()["dpop-nonce"]
        .to_str()
        .unwrap()
        .to_owned()
}

/// `n` RFC 7662 introspections of `token`, as the protected front makes them.
async fn introspections(endpoint: &Introspection, token: &str, n: usize) -> Run {
    let http = reqwest::Client::new();
    let mut samples = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        let answer: Value = http
            .post(&endpoint.url)
            .basic_auth(&endpoint.client_id, Some(&endpoint.secret))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        samples.push(t.elapsed());
        assert_eq!(answer["active"], true, "{answer}");
    }
    Run {
        name: "introspection".into(),
        wall: start.elapsed(),
        samples,
    }
}

fn main() {
    let n = operations(5, 200);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "dpop mcp: one tools/call echo, sequential, {}",
        build_kind()
    );
    let agent = TestAgent::start(AgentOptions::new());
    agent.client().generate_key("k").unwrap();

    // DPoP-protected: a token through `dpop mcp` once (the whole authorization flow), saved
    // under TOKEN_NAME; the bridge then uses it as saved.
    let authorization = McpAuthorizationServer::start();
    let server = ProtectedMcpServer::start(
        &authorization.issuer,
        &authorization.introspection(),
        &[MCP_SCOPE],
        McpServerOptions::default(),
        true,
    );
    let out = drive_dpop_mcp(&agent, &server.url, &["--key", "k", "--token", TOKEN_NAME]);
    assert!(
        out.status.success(),
        "getting a token through dpop mcp: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let cache = TokenCache::new(agent.dir().join("state/dpop/tokens"));
    let token = cache
        .load(TOKEN_NAME)
        .expect("dpop mcp saved the token")
        .access_token()
        .to_owned();

    let mut bridge = Bridge::start(&agent, &server.url);
    let bridged = bridge.calls("dpop mcp over stdio (DPoP)", n);
    drop(bridge);
    let direct = runtime.block_on(async {
        let nonce = server_nonce(&agent, &server.url, &token).await;
        let auth = Auth {
            agent: &agent,
            token: token.clone(),
            nonce,
        };
        let direct = Direct::start(&server.url, Some(&auth)).await;
        let proofs = auth.proofs(&server.url, n);
        direct
            .calls("reqwest, token and proofs made before (DPoP)", n, &proofs)
            .await
    });
    report(
        "DPoP-protected server (DpopLayer + introspection, nonces):",
        &bridged,
        &direct,
    );
    // The front checks the token at oidc-provider on every request: most of a protected
    // call's time, the same on both paths.
    let introspection = runtime.block_on(introspections(
        &authorization.introspection(),
        &token,
        n.min(50),
    ));
    println!(
        "  of which the front's introspection at oidc-provider: p50 {:.1} us",
        introspection.p50_us()
    );
    drop(server);

    // No authorization: the transport alone.
    let server = McpServer::start();
    let mut bridge = Bridge::start(&agent, &server.url);
    let bridged = bridge.calls("dpop mcp over stdio (no auth)", n);
    drop(bridge);
    let direct = runtime.block_on(async {
        Direct::start(&server.url, None)
            .await
            .calls("reqwest (no auth)", n, &[])
            .await
    });
    report("Unprotected server (no auth):", &bridged, &direct);
}
