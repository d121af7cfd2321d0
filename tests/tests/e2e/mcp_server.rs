//! The real MCP servers the `dpop mcp` tests run against (tests/interop/mcp, the official
//! TypeScript SDK), checked without the bridge, so a failure of the bridge's tests is the
//! bridge's and not the harness's: plain HTTP to the unprotected server, and `dpop token` +
//! `dpop request` to the DPoP-protected one (dpop-server in front, oidc-provider issuing).

use std::time::Duration;

use dpop_tests::mcp::drive_dpop_mcp;
use dpop_tests::oidc_provider::{
    OIDC_SECRET_VAR as SECRET_VAR, dpop_with_client_secret as dpop_ok,
};
use dpop_tests::{
    AgentOptions, MCP_SCOPE, McpAuthorizationServer, McpServer, McpServerOptions, OidcProvider,
    PROCESS_TIMEOUT, ProtectedMcpServer, TestAgent, initialize_request, mcp_messages,
};
use serde_json::{Value, json};

const PROTOCOL: &str = "2025-11-25";

struct Answer {
    status: u16,
    session: Option<String>,
    content_type: String,
    messages: Vec<Value>,
}

async fn post(http: &reqwest::Client, url: &str, session: Option<&str>, body: &Value) -> Answer {
    let mut request = http
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body.to_string());
    if let Some(session) = session {
        request = request
            .header("mcp-session-id", session)
            .header("mcp-protocol-version", PROTOCOL);
    }
    let response = request.send().await.expect("POST to the MCP server");
    let status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let session = header("mcp-session-id");
    let content_type = header("content-type").unwrap_or_default();
    let text = response.text().await.unwrap();
    Answer {
        status,
        session,
        content_type,
        messages: if text.is_empty() {
            Vec::new()
        } else {
            mcp_messages(&text)
        },
    }
}

/// The text of an SSE stream that stays open, up to the end of the event holding `needle`.
async fn read_until(mut stream: reqwest::Response, needle: &str) -> String {
    let mut seen = String::new();
    loop {
        if seen
            .find(needle)
            .is_some_and(|at| seen[at..].contains("\n\n"))
        {
            return seen;
        }
        let chunk = tokio::time::timeout(PROCESS_TIMEOUT, stream.chunk())
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} on the stream: {seen}"))
            .unwrap()
            .unwrap_or_else(|| panic!("the stream ended without {needle:?}: {seen}"));
        seen.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A whole session by hand: initialize, tools/list, echo (arguments back exactly), add, a tool
/// that notifies while it runs, DELETE; the server's log records each, for the bridge's tests.
fn session_round_trip(options: McpServerOptions) {
    let server = McpServer::start_with(options.clone());
    let http = reqwest::Client::new();
    runtime().block_on(async {
        let init = post(&http, &server.url, None, &initialize_request(1)).await;
        assert_eq!(init.status, 200);
        let expected_type = if options.json_response {
            "application/json"
        } else {
            "text/event-stream"
        };
        assert!(
            init.content_type.starts_with(expected_type),
            "{}",
            init.content_type
        );
        assert_eq!(init.messages.len(), 1, "{:?}", init.messages);
        assert_eq!(init.messages[0]["result"]["protocolVersion"], PROTOCOL);
        let session = init.session.expect("Mcp-Session-Id");
        let sid = Some(session.as_str());

        let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        assert_eq!(
            post(&http, &server.url, sid, &initialized).await.status,
            202
        );

        let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
        let tools = post(&http, &server.url, sid, &list).await.messages;
        let names: Vec<&str> = tools[0]["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["echo", "add", "progress", "broadcast", "interrupt"]);

        let arguments = json!({"nested": [1, 2.5, {"x": null}], "text": "é\u{1F600}\n", "b": true});
        let call = json!({"jsonrpc": "2.0", "id": "e", "method": "tools/call",
            "params": {"name": "echo", "arguments": arguments}});
        let echo = post(&http, &server.url, sid, &call).await.messages;
        assert_eq!(echo[0]["id"], "e");
        assert_eq!(echo[0]["result"]["structuredContent"], arguments);

        let call = json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call",
            "params": {"name": "add", "arguments": {"a": 2, "b": 40}}});
        let add = post(&http, &server.url, sid, &call).await.messages;
        assert_eq!(add[0]["result"]["structuredContent"]["sum"], 42);

        let call = json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call",
            "params": {"name": "progress", "arguments": {"steps": 2, "delay_ms": 1},
                "_meta": {"progressToken": "t"}}});
        let progress = post(&http, &server.url, sid, &call).await.messages;
        let methods: Vec<&str> = progress
            .iter()
            .map(|m| m["method"].as_str().unwrap_or("response"))
            .collect();
        if options.json_response {
            // A JSON answer has room for the response only: the notifications are dropped.
            assert_eq!(methods, ["response"]);
        } else {
            assert_eq!(
                methods,
                [
                    "notifications/progress",
                    "notifications/message",
                    "notifications/progress",
                    "notifications/message",
                    "response"
                ]
            );
            assert_eq!(progress[0]["params"]["progressToken"], "t");
        }
        assert_eq!(
            progress.last().unwrap()["result"]["content"][0]["text"],
            "done after 2 steps"
        );

        let deleted = http
            .delete(&server.url)
            .header("mcp-session-id", &session)
            .header("mcp-protocol-version", PROTOCOL)
            .send()
            .await
            .unwrap();
        assert_eq!(deleted.status(), 200);
        // The session is gone: a request in it is refused.
        assert_eq!(post(&http, &server.url, sid, &list).await.status, 404);

        server.wait_session_closed(&session, PROCESS_TIMEOUT);
        assert_eq!(server.sessions_opened(), std::slice::from_ref(&session));
        let tools: Vec<String> = server
            .events("tool")
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(tools, ["echo", "add", "progress"]);
        assert_eq!(server.events("tool")[0]["arguments"], arguments);
        let http_log = server.events("http");
        let methods: Vec<&str> = http_log
            .iter()
            .map(|e| e["method"].as_str().unwrap())
            .collect();
        assert_eq!(
            methods,
            [
                "POST", "POST", "POST", "POST", "POST", "POST", "DELETE", "POST"
            ]
        );
        assert_eq!(http_log[0]["rpc"], json!(["initialize"]));
        assert_eq!(http_log[6]["session"], session.as_str());
        assert_eq!(http_log[6]["protocol_version"], PROTOCOL);
    });
}

#[test]
fn mcp_server_session_round_trip_sse() {
    session_round_trip(McpServerOptions::default());
}

#[test]
fn mcp_server_session_round_trip_json() {
    session_round_trip(McpServerOptions {
        json_response: true,
        ..McpServerOptions::default()
    });
}

/// The resumption a bridge must do: `interrupt` closes the call's stream after one message,
/// and the answer comes on a GET with `Last-Event-ID`; `broadcast` goes to the GET stream.
#[test]
fn mcp_server_resumption_and_get_stream() {
    let server = McpServer::start_with(McpServerOptions {
        retry_interval_ms: Some(10),
        ..McpServerOptions::default()
    });
    let http = reqwest::Client::new();
    runtime().block_on(async {
        let init = post(&http, &server.url, None, &initialize_request(1)).await;
        let session = init.session.expect("Mcp-Session-Id");
        let sid = Some(session.as_str());

        // The raw SSE text: the event ids matter here.
        let call = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": "interrupt", "arguments": {"delay_ms": 50}}});
        let text = http
            .post(&server.url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-session-id", &session)
            .header("mcp-protocol-version", PROTOCOL)
            .body(call.to_string())
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(text.contains("retry: 10"), "{text}");
        let messages = mcp_messages(&text);
        assert_eq!(
            messages.len(),
            1,
            "only the notification before the stream closed: {text}"
        );
        assert_eq!(messages[0]["method"], "notifications/message");
        let last_event_id = text
            .lines()
            .filter_map(|l| l.strip_prefix("id: "))
            .next_back()
            .expect("event ids")
            .to_owned();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let resumed = http
            .get(&server.url)
            .header("accept", "text/event-stream")
            .header("mcp-session-id", &session)
            .header("mcp-protocol-version", PROTOCOL)
            .header("last-event-id", &last_event_id)
            .send()
            .await
            .unwrap();
        assert_eq!(resumed.status(), 200);
        // The resumed stream stays open for what the call may still send: read up to the
        // answer.
        let messages = mcp_messages(&read_until(resumed, "resumed").await);
        assert_eq!(messages.len(), 1, "{messages:?}");
        assert_eq!(messages[0]["id"], 7);
        assert_eq!(messages[0]["result"]["content"][0]["text"], "resumed");

        // broadcast without a GET stream open: the message is only kept for a resumption.
        // Then with one open: it arrives there, not on the call's stream.
        let call = json!({"jsonrpc": "2.0", "id": 8, "method": "tools/call",
            "params": {"name": "broadcast", "arguments": {"text": "hello"}}});
        let answer = post(&http, &server.url, sid, &call).await.messages;
        assert_eq!(answer[0]["result"]["content"][0]["text"], "sent");
        let stream = http
            .get(&server.url)
            .header("accept", "text/event-stream")
            .header("mcp-session-id", &session)
            .header("mcp-protocol-version", PROTOCOL)
            .send()
            .await
            .unwrap();
        assert_eq!(stream.status(), 200);
        let call = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
            "params": {"name": "broadcast", "arguments": {"text": "live"}}});
        post(&http, &server.url, sid, &call).await;
        let seen = read_until(stream, "live").await;
        let messages = mcp_messages(&seen);
        assert_eq!(messages[0]["params"]["data"], "live", "{seen}");
        let gets: Vec<Value> = server
            .events("http")
            .into_iter()
            .filter(|e| e["method"] == "GET")
            .collect();
        assert_eq!(gets[0]["last_event_id"], last_event_id.as_str());
        assert_eq!(gets[1]["last_event_id"], Value::Null);
    });
}

/// The DPoP-protected MCP server (dpop-server's layer in front, oidc-provider as the
/// authorization server, nonces required at both) without the bridge: its metadata and 401
/// challenge are what an MCP client discovers from; a token from `dpop token` and `dpop
/// request` make a whole session (initialize, tools/list, an echo call, DELETE); a replayed
/// proof is refused and never reaches the MCP server.
#[test]
fn protected_mcp_server_with_dpop_token_and_request() {
    let provider = OidcProvider::start();
    let server = ProtectedMcpServer::start(
        &provider.issuer,
        &provider.introspection(),
        &[],
        McpServerOptions::default(),
        true,
    );
    let agent = TestAgent::start(AgentOptions::new());
    agent.client().generate_key("k").unwrap();
    let http = reqwest::Client::new();
    let rt = runtime();

    // What an MCP client discovers: the 401 challenge names the metadata, which names
    // oidc-provider.
    let (status, challenge) = rt.block_on(async {
        let refused = http
            .post(&server.url)
            .header("content-type", "application/json")
            .body(initialize_request(1).to_string())
            .send()
            .await
            .unwrap();
        let challenge = refused.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_owned();
        (refused.status().as_u16(), challenge)
    });
    assert_eq!(status, 401);
    assert!(challenge.starts_with("DPoP "), "{challenge}");
    assert!(
        challenge.contains(&format!(
            "resource_metadata=\"{}\"",
            server.resource_metadata
        )),
        "{challenge}"
    );
    let metadata: Value = rt.block_on(async {
        http.get(&server.resource_metadata)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    assert_eq!(metadata["resource"], server.url.as_str());
    assert_eq!(metadata["authorization_servers"], json!([provider.issuer]));
    assert!(
        metadata["dpop_signing_alg_values_supported"]
            .as_array()
            .unwrap()
            .contains(&json!("ES256"))
    );

    // A DPoP-bound token from oidc-provider (client_credentials; it requires nonces too).
    let token = dpop_json(
        &agent,
        &[
            "token",
            "--key",
            "k",
            "--issuer",
            &provider.issuer,
            "--client-id",
            "dpop-client",
            "--client-secret-env",
            SECRET_VAR,
            "--scope",
            "api:read",
            "--json",
        ],
    );
    assert_eq!(token["token_type"], "DPoP");
    let token_file = agent.dir().join("access-token");
    std::fs::write(&token_file, token["access_token"].as_str().unwrap()).unwrap();
    let token_file = token_file.to_str().unwrap();

    // A session through `dpop request`: the first proof has no nonce of the resource
    // server's and is answered with use_dpop_nonce; the CLI retries once with it.
    let request = |session: Option<&str>, body: &Value, verbose: bool| {
        let mut args = vec![
            "request".to_owned(),
            "-i".into(),
            "-X".into(),
            "POST".into(),
            server.url.clone(),
            "--key".into(),
            "k".into(),
            "--access-token-file".into(),
            token_file.into(),
            "-H".into(),
            "content-type: application/json".into(),
            "-H".into(),
            "accept: application/json, text/event-stream".into(),
            "-d".into(),
            body.to_string(),
        ];
        if let Some(session) = session {
            args.extend([
                "-H".into(),
                format!("mcp-session-id: {session}"),
                "-H".into(),
                format!("mcp-protocol-version: {PROTOCOL}"),
            ]);
        }
        if verbose {
            args.push("-v".into());
        }
        dpop_ok(&agent, &args)
    };
    let (out, stderr) = request(None, &initialize_request(1), true);
    assert!(
        stderr.contains("retried once with the server's DPoP-Nonce"),
        "{stderr}"
    );
    let (head, body) = split_head(&out);
    let session = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("mcp-session-id: ")
                .map(|_| l["mcp-session-id: ".len()..].trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no Mcp-Session-Id: {out}"));
    assert_eq!(mcp_messages(body)[0]["result"]["protocolVersion"], PROTOCOL);
    let (out, _) = request(
        Some(&session),
        &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        false,
    );
    assert!(out.starts_with("HTTP/1.1 202"), "{out}");
    let (out, _) = request(
        Some(&session),
        &json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
        false,
    );
    assert_eq!(
        mcp_messages(split_head(&out).1)[0]["result"]["tools"][0]["name"],
        "echo"
    );
    let arguments = json!({"through": "dpop-server", "n": [1, 2, 3]});
    let (out, _) = request(
        Some(&session),
        &json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
            "params": {"name": "echo", "arguments": arguments}}),
        false,
    );
    assert_eq!(
        mcp_messages(split_head(&out).1)[0]["result"]["structuredContent"],
        arguments
    );
    let out = dpop_ok(
        &agent,
        &[
            "request",
            "-i",
            "-X",
            "DELETE",
            &server.url,
            "--key",
            "k",
            "--access-token-file",
            token_file,
            "-H",
            &format!("mcp-session-id: {session}"),
            "-H",
            &format!("mcp-protocol-version: {PROTOCOL}"),
        ],
    )
    .0;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    server.inner.wait_session_closed(&session, PROCESS_TIMEOUT);

    // A replayed proof: the same proof (and token) twice. The first is accepted; the second
    // is refused by the verifier and never reaches the MCP server.
    // The agent keeps the resource server's nonce from the session above and puts it in.
    let proof = dpop_ok(
        &agent,
        &[
            "proof",
            "--key",
            "k",
            "-X",
            "POST",
            "--url",
            &server.url,
            "--access-token-file",
            token_file,
        ],
    )
    .0;
    let access_token = token["access_token"].as_str().unwrap();
    let send = |body: &Value| {
        rt.block_on(
            http.post(&server.url)
                .header("authorization", format!("DPoP {access_token}"))
                .header("dpop", proof.trim())
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .body(body.to_string())
                .send(),
        )
        .unwrap()
    };
    let before = server.inner.events("http").len();
    let first = send(&initialize_request(10));
    assert_eq!(first.status(), 200);
    let replayed = send(&initialize_request(11));
    assert_eq!(replayed.status(), 401);
    let challenge = replayed.headers()["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.contains("error=\"invalid_dpop_proof\""),
        "{challenge}"
    );
    assert!(challenge.contains("resource_metadata="), "{challenge}");
    assert_eq!(
        server.inner.events("http").len(),
        before + 1,
        "only the first reached the MCP server"
    );
}

/// `dpop mcp` against the DPoP-protected MCP server, oidc-provider set up as an MCP
/// authorization server (dynamic registration, code flow with PKCE and resource indicators,
/// nonces required at both servers): a local MCP client's session (initialize, tools/list, a
/// tool call) goes through, the tool call reaches the MCP server, and the session is
/// DELETEd when the client closes stdin.
#[test]
fn dpop_mcp_through_the_protected_mcp_server() {
    let authorization = McpAuthorizationServer::start();
    let server = ProtectedMcpServer::start(
        &authorization.issuer,
        &authorization.introspection(),
        &[MCP_SCOPE],
        McpServerOptions::default(),
        true,
    );
    let agent = TestAgent::start(AgentOptions::new());
    agent.client().generate_key("k").unwrap();
    let out = drive_dpop_mcp(&agent, &server.url, &["--key", "k", "-v"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{}\n{stdout}\n{stderr}", out.status);
    assert_eq!(
        serde_json::from_str::<Value>(stdout.lines().last().unwrap()).unwrap(),
        json!({"session": "complete"}),
        "{stderr}"
    );
    let tools = server.inner.events("tool");
    assert_eq!(tools.len(), 1, "{tools:?}");
    assert_eq!(tools[0]["name"], "echo");
    let sessions = server.inner.sessions_opened();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    server
        .inner
        .wait_session_closed(&sessions[0], PROCESS_TIMEOUT);
}

fn dpop_json(agent: &TestAgent, args: &[&str]) -> Value {
    serde_json::from_str(&dpop_ok(agent, args).0).expect("dpop --json prints JSON")
}

/// `dpop request -i` output: (status line and headers, body).
fn split_head(out: &str) -> (&str, &str) {
    out.split_once("\r\n\r\n")
        .or_else(|| out.split_once("\n\n"))
        .unwrap_or_else(|| panic!("no head: {out}"))
}
