//! `dpop proxy` (issue 24 part 1): real curl through the real proxy to a real upstream, with
//! the real agent signing. The example resource server (Redis replay, nonces required) checks
//! the bound token and proofs; an echo upstream shows what the proxy forwards; the OAuth test
//! server refreshes a saved token; nginx with a private CA's certificate is an https upstream.

use std::io::Read;
use std::process::{Output, Stdio};
use std::time::Duration;

use dpop_tests::nginx::TestCa;
use dpop_tests::proxy::{EchoUpstream, ProxyProcess, curl};
use dpop_tests::{
    AgentOptions, Nginx, OAuthOptions, RedisServer, ResourceServer, ServerOptions, TestAgent,
    TokenIssuer, command_as_other_user, decode_jws, mode, new_temp_dir, verify_proof,
    write_private_file,
};
use serde_json::Value;

use crate::http::authorization_code;

const NONCE_SECRET: &str = "the proxy tests' nonce secret, 32 bytes or more, for HMAC";

/// An agent with key `k`, and its thumbprint.
fn agent() -> (TestAgent, String) {
    let agent = TestAgent::start(AgentOptions::new());
    let jkt = agent.client().generate_key("k").expect("a key").jkt;
    (agent, jkt)
}

/// The example resource server with Redis replay and nonces required.
fn strict_server(issuer: &TokenIssuer, redis: &RedisServer) -> ResourceServer {
    ResourceServer::start(
        issuer,
        ServerOptions {
            redis: Some(redis.url()),
            nonce_secret: Some(NONCE_SECRET.into()),
            args: vec!["--require-nonce".into()],
            ..ServerOptions::default()
        },
    )
}

/// `token` in a 0600 file of `dir`.
fn token_file(dir: &std::path::Path, token: &str) -> String {
    let path = dir.join("token");
    write_private_file(&path, token.as_bytes());
    path.display().to_string()
}

/// `dpop proxy --upstream UPSTREAM --access-token-file F --listen unix:DIR/p.sock EXTRA...`, the
/// token written to `DIR/token` (0600).
fn proxy_on_socket(
    agent: &TestAgent,
    dir: &std::path::Path,
    upstream: &str,
    token: &str,
    extra: &[&str],
) -> ProxyProcess {
    let file = token_file(dir, token);
    let listen = format!("unix:{}", dir.join("p.sock").display());
    let mut args = vec![
        "--upstream",
        upstream,
        "--access-token-file",
        &file,
        "--listen",
        &listen,
    ];
    args.extend_from_slice(extra);
    ProxyProcess::start(agent, &args)
}

fn ok_json(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// `curl -i` output split into status, headers (lower-case names) and body.
fn head_and_body(out: &Output) -> (u16, Vec<(String, String)>, String) {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn curl_over_the_default_unix_socket_reaches_the_resource_server_with_a_bound_token() {
    let (agent, jkt) = agent();
    let redis = RedisServer::start();
    let issuer = TokenIssuer::new();
    let server = strict_server(&issuer, &redis);
    let dir = new_temp_dir();
    let token = issuer.token("alice", Some(&jkt));
    let file = token_file(dir.path(), &token);
    let runtime = dir.path().join("run");
    std::fs::create_dir(&runtime).unwrap();
    let mut proxy = ProxyProcess::try_start(
        &agent,
        &["--upstream", server.base(), "--access-token-file", &file],
        &[("XDG_RUNTIME_DIR", runtime.to_str().unwrap())],
    )
    .unwrap_or_else(|log| panic!("{log}"));
    let socket = runtime.join("dpop-agent/proxy.sock");
    assert_eq!(proxy.socket().as_deref(), Some(socket.as_path()));
    assert_eq!(mode(&runtime.join("dpop-agent")), 0o700);
    assert_eq!(mode(&socket), 0o600);

    // The first request meets the nonce challenge and is retried; the second carries the
    // nonce the agent now keeps.
    for (i, query) in ["?secret-query=xyzzy", ""].iter().enumerate() {
        let body = ok_json(&curl(
            &proxy,
            &[&proxy.url(&format!("/v1/items/{i}{query}"))],
        ));
        assert_eq!(body["jkt"], jkt.as_str());
        assert_eq!(body["sub"], "alice");
        assert_eq!(body["path"], format!("/v1/items/{i}"));
    }
    let log = proxy.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(" /v1/items/")).collect();
    assert_eq!(lines.len(), 2, "one access-log line per request:\n{log}");
    assert!(
        lines[0].starts_with("dpop proxy: GET /v1/items/0 200 ")
            && lines[0].contains("(nonce retry)"),
        "{log}"
    );
    assert!(!lines[1].contains("nonce retry"), "{log}");
    assert!(!log.contains(&token), "the token is in the log:\n{log}");
    assert!(
        !log.contains(&token[..20]),
        "part of the token is in the log:\n{log}"
    );
    assert!(!log.contains("xyzzy"), "the query is in the log:\n{log}");
    assert!(
        !log.contains("eyJ"),
        "a JWT (token or proof) is in the log:\n{log}"
    );

    let status = proxy.terminate();
    assert!(status.success(), "{status}: {}", proxy.log());
    assert!(
        !socket.exists(),
        "the socket file is still there after SIGTERM"
    );
    assert!(proxy.log().contains("shutting down"), "{}", proxy.log());
}

#[test]
fn loopback_tcp_serves_this_user_and_closes_on_another() {
    let (agent, jkt) = agent();
    let upstream = EchoUpstream::start();
    let issuer = TokenIssuer::new();
    let dir = new_temp_dir();
    let file = token_file(dir.path(), &issuer.token("alice", Some(&jkt)));
    // Readable by the other user's curl: only the proxy's check keeps it out.
    let proxy = ProxyProcess::start(
        &agent,
        &[
            "--upstream",
            &upstream.base,
            "--access-token-file",
            &file,
            "--listen",
            "127.0.0.1:0",
        ],
    );
    assert!(proxy.listen.starts_with("127.0.0.1:"), "{}", proxy.listen);
    let body = ok_json(&curl(&proxy, &[&proxy.url("/mine")]));
    assert_eq!(body["path"], "/mine");
    assert_eq!(upstream.requests(), 1);
    // A page in this user's browser: a rebound name in Host, or the marks browsers put on
    // requests from pages.
    for header in [
        "Host: rebound.example",
        "Origin: https://evil.example",
        "Sec-Fetch-Site: cross-site",
    ] {
        let (status, _, body) =
            head_and_body(&curl(&proxy, &["-i", "-H", header, &proxy.url("/web")]));
        assert_eq!(status, 403, "{header}: {body}");
    }
    assert_eq!(upstream.requests(), 1, "a browser's request went upstream");

    let other = command_as_other_user("curl")
        .args(["-sS", &proxy.url("/theirs")])
        .stdin(Stdio::null())
        .output()
        .expect("curl as another user");
    assert!(
        !other.status.success(),
        "another user's curl got an answer: {}",
        String::from_utf8_lossy(&other.stdout)
    );
    assert_eq!(
        upstream.requests(),
        1,
        "another user's request went upstream"
    );
    let (uid, _) = dpop_tests::other_user();
    let log = proxy.log();
    assert!(
        log.contains(&format!("refused a connection from uid {uid} ")),
        "{log}"
    );

    // Anything but loopback is refused at start.
    for addr in ["0.0.0.0:0", "[::]:0"] {
        let err = ProxyProcess::try_start(
            &agent,
            &[
                "--upstream",
                &upstream.base,
                "--access-token-file",
                &file,
                "--listen",
                addr,
            ],
            &[],
        )
        .err()
        .unwrap_or_else(|| panic!("--listen {addr} was accepted"));
        assert!(err.contains("loopback only"), "{err}");
    }
}

#[test]
fn a_programs_own_authorization_or_dpop_header_is_refused() {
    let (agent, jkt) = agent();
    let upstream = EchoUpstream::start();
    let dir = new_temp_dir();
    let file = token_file(dir.path(), &TokenIssuer::new().token("a", Some(&jkt)));
    let socket = dir.path().join("p.sock");
    let listen = format!("unix:{}", socket.display());
    let proxy = ProxyProcess::start(
        &agent,
        &[
            "--upstream",
            &upstream.base,
            "--access-token-file",
            &file,
            "--listen",
            &listen,
        ],
    );
    for header in ["Authorization: Bearer mine", "DPoP: eyJhbGciOi.x.y"] {
        let out = curl(&proxy, &["-i", "-H", header, &proxy.url("/x")]);
        let (status, _, body) = head_and_body(&out);
        assert_eq!(status, 400, "{header}: {body}");
        assert!(body.contains("remove it"), "{body}");
    }
    assert_eq!(upstream.requests(), 0, "a refused request went upstream");
    // No route: 404 with a plain message (a config file with one prefix).
    let config = dir.path().join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "[[route]]\nprefix = \"/api\"\nupstream = \"{}\"\naccess_token_file = \"{file}\"\n",
            upstream.base
        ),
    )
    .unwrap();
    let routed = ProxyProcess::start(
        &agent,
        &[
            "--config",
            config.to_str().unwrap(),
            "--listen",
            &format!("unix:{}", dir.path().join("q.sock").display()),
        ],
    );
    let (status, _, body) = head_and_body(&curl(&routed, &["-i", &routed.url("/other")]));
    assert_eq!(status, 404);
    assert!(body.contains("no route for /other"), "{body}");
    let body = ok_json(&curl(&routed, &[&routed.url("/api/v1/x?q=1")]));
    assert_eq!(body["path"], "/v1/x");
    assert_eq!(body["query"], "q=1");
}

#[test]
fn hop_by_hop_headers_are_dropped_both_ways_and_the_proof_is_for_the_upstream_url() {
    let (agent, jkt) = agent();
    let upstream = EchoUpstream::start();
    let dir = new_temp_dir();
    let token = TokenIssuer::new().token("a", Some(&jkt));
    let proxy = proxy_on_socket(&agent, dir.path(), &upstream.base, &token, &[]);
    let out = curl(
        &proxy,
        &[
            "-i",
            "-H",
            "Connection: keep-alive, X-Hop",
            "-H",
            "X-Hop: 1",
            "-H",
            "Keep-Alive: timeout=5",
            "-H",
            "TE: trailers",
            "-H",
            "Upgrade: example/1",
            "-H",
            "Proxy-Authorization: Basic eA==",
            "-H",
            "X-Kept: yes",
            "-H",
            "User-Agent: legacy-tool/1.0",
            &proxy.url("/echo/path?a=b"),
        ],
    );
    let (status, response_headers, body) = head_and_body(&out);
    assert_eq!(status, 200, "{body}");
    let echoed: Value = serde_json::from_str(&body).unwrap();
    let seen: Vec<(String, String)> = echoed["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap().to_owned(),
                p[1].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for dropped in [
        "x-hop",
        "keep-alive",
        "te",
        "upgrade",
        "proxy-authorization",
    ] {
        assert_eq!(
            header(&seen, dropped),
            None,
            "{dropped} went upstream: {seen:?}"
        );
    }
    assert_ne!(header(&seen, "connection"), Some("keep-alive, X-Hop"));
    assert_eq!(header(&seen, "x-kept"), Some("yes"));
    assert_eq!(header(&seen, "user-agent"), Some("legacy-tool/1.0"));
    assert_eq!(
        header(&seen, "authorization"),
        Some(format!("DPoP {token}").as_str())
    );
    let proof = header(&seen, "dpop").expect("a DPoP header upstream");
    // htu is the upstream's URL (query left out by the rules), ath the token's.
    let verified = verify_proof(proof, "GET", &upstream.url("/echo/path?a=b"), Some(&token));
    assert_eq!(verified.jkt, jkt);
    assert_eq!(echoed["query"], "a=b");

    for dropped in ["x-resp-hop", "proxy-authenticate"] {
        assert_eq!(
            header(&response_headers, dropped),
            None,
            "{response_headers:?}"
        );
    }
    assert_ne!(header(&response_headers, "keep-alive"), Some("timeout=9"));
    assert_ne!(header(&response_headers, "connection"), Some("x-resp-hop"));
    assert_eq!(header(&response_headers, "x-resp-kept"), Some("yes"));
}

/// `curl -N` of the proxy's `/sse`, and what it has printed so far, sent after each read.
fn sse_curl(proxy: &ProxyProcess) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    dpop_tests::require_tool("curl", &["--version"], "curl");
    let mut child = std::process::Command::new("curl")
        .args(["-sS", "-N"])
        .args(proxy.curl_args())
        .arg(proxy.url("/sse"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("curl");
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            let _ = tx.send(String::from_utf8_lossy(&seen).into_owned());
        }
    });
    (child, rx)
}

#[test]
fn server_sent_events_stream_through_before_the_upstream_ends() {
    let (agent, jkt) = agent();
    let upstream = EchoUpstream::start();
    let dir = new_temp_dir();
    let proxy = proxy_on_socket(
        &agent,
        dir.path(),
        &upstream.base,
        &TokenIssuer::new().token("a", Some(&jkt)),
        &[],
    );
    let (mut child, rx) = sse_curl(&proxy);
    let first = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the first event did not arrive while the upstream held the stream open");
    assert_eq!(first, "data: one\n\n");
    assert!(child.try_wait().unwrap().is_none(), "curl ended early");
    upstream.release_sse();
    let mut all = first;
    while let Ok(more) = rx.recv_timeout(Duration::from_secs(10)) {
        all = more;
    }
    assert_eq!(all, "data: one\n\ndata: two\n\n");
    let status = dpop_tests::wait_timeout(&mut child, Duration::from_secs(10)).expect("curl ends");
    assert!(status.success());
}

#[test]
fn a_body_over_the_retry_limit_is_streamed_and_its_nonce_challenge_passed_back() {
    let (agent, jkt) = agent();
    let redis = RedisServer::start();
    let issuer = TokenIssuer::new();
    let server = strict_server(&issuer, &redis);
    let dir = new_temp_dir();
    let proxy = proxy_on_socket(
        &agent,
        dir.path(),
        server.base(),
        &issuer.token("alice", Some(&jkt)),
        &["--body-retry-limit", "1024"],
    );
    let big = dir.path().join("big");
    std::fs::write(&big, vec![b'x'; 4096]).unwrap();
    let big_arg = format!("@{}", big.display());
    let out = curl(
        &proxy,
        &["-i", "--data-binary", &big_arg, &proxy.url("/upload")],
    );
    let (status, headers, _) = head_and_body(&out);
    assert_eq!(status, 401, "a streamed body was retried");
    assert!(
        header(&headers, "www-authenticate").is_some_and(|c| c.contains("use_dpop_nonce")),
        "{headers:?}"
    );
    assert!(header(&headers, "dpop-nonce").is_some(), "{headers:?}");
    // The nonce was reported to the agent: the next request carries it, even with a large
    // body (sent once, no retry needed); a small one too.
    let body = ok_json(&curl(
        &proxy,
        &["--data-binary", &big_arg, &proxy.url("/upload")],
    ));
    assert_eq!(body["method"], "POST");
    let body = ok_json(&curl(&proxy, &["-d", "small", &proxy.url("/upload")]));
    assert_eq!(body["jkt"], jkt.as_str());
    assert!(!proxy.log().contains("nonce retry"), "{}", proxy.log());
}

#[test]
fn redirects_are_passed_back_mapped_under_the_route_when_they_point_into_it() {
    let (agent, jkt) = agent();
    let upstream = EchoUpstream::start();
    let dir = new_temp_dir();
    let file = token_file(dir.path(), &TokenIssuer::new().token("a", Some(&jkt)));
    let config = dir.path().join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "[[route]]\nprefix = \"/up\"\nupstream = \"{}\"\naccess_token_file = \"{file}\"\n",
            upstream.base
        ),
    )
    .unwrap();
    let listen = format!("unix:{}", dir.path().join("p.sock").display());
    let proxy = ProxyProcess::start(
        &agent,
        &["--config", config.to_str().unwrap(), "--listen", &listen],
    );
    let cases = [
        ("/echo/next?x=1".to_owned(), "/up/echo/next?x=1".to_owned()),
        (upstream.url("/echo/abs"), "/up/echo/abs".to_owned()),
        (
            "https://elsewhere.example/x".to_owned(),
            "https://elsewhere.example/x".to_owned(),
        ),
    ];
    for (to, expected) in cases {
        let url = format!(
            "{}?to={}",
            proxy.url("/up/redirect"),
            to.replace('?', "%3F").replace('&', "%26")
        );
        let (status, headers, _) = head_and_body(&curl(&proxy, &["-i", &url]));
        assert_eq!(status, 302);
        assert_eq!(
            header(&headers, "location"),
            Some(expected.as_str()),
            "{to}"
        );
    }
    // Not followed: the upstream saw the three redirect requests only.
    assert_eq!(upstream.requests(), 3);
    // A client that follows comes back through the proxy, and gets credentials again.
    let body = ok_json(&curl(
        &proxy,
        &[
            "-L",
            &format!("{}?to=/echo/next", proxy.url("/up/redirect")),
        ],
    ));
    assert_eq!(body["path"], "/echo/next");
}

#[test]
fn a_saved_token_is_refreshed_before_it_expires() {
    // Tokens that live 31 s: within the 30 s margin a second after they are issued.
    let (s, out) = authorization_code(
        OAuthOptions {
            token_lifetime: 31,
            nonce_uses: 1000,
            ..OAuthOptions::default()
        },
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = new_temp_dir();
    let listen = format!("unix:{}", dir.path().join("p.sock").display());
    let proxy = ProxyProcess::start(
        &s.agent,
        &[
            "--upstream",
            &s.server.resource,
            "--token",
            "web",
            "--listen",
            &listen,
        ],
    );
    let body = ok_json(&curl(&proxy, &[&proxy.url("/api/me")]));
    assert_eq!(body["path"], "/api/me", "{body}");
    let before = s.server.counts().refreshes;
    std::thread::sleep(Duration::from_millis(1100));
    let body = ok_json(&curl(&proxy, &[&proxy.url("/api/me")]));
    assert_eq!(body["path"], "/api/me", "{body}");
    assert!(s.server.counts().refreshes > before, "{}", proxy.log());
    assert!(
        proxy.log().contains("saved token \"web\" refreshed"),
        "{}",
        proxy.log()
    );
    let saved = s.saved("web");
    assert!(
        !proxy
            .log()
            .contains(saved["access_token"].as_str().unwrap())
    );
    assert!(
        !proxy
            .log()
            .contains(saved["refresh_token"].as_str().unwrap())
    );
}

#[test]
fn upstreams_in_clear_text_are_refused_unless_loopback() {
    let (agent, _) = agent();
    let dir = new_temp_dir();
    let file = token_file(dir.path(), "t");
    let err = ProxyProcess::try_start(
        &agent,
        &[
            "--upstream",
            "http://example.com",
            "--access-token-file",
            &file,
            "--listen",
            &format!("unix:{}", dir.path().join("p.sock").display()),
        ],
        &[],
    )
    .err()
    .expect("http:// to a remote host was accepted");
    assert!(err.contains("http:// only to a loopback host"), "{err}");
    assert!(!dir.path().join("p.sock").exists());
}

#[test]
fn chunked_bodies_arrive_whole_below_and_above_the_retry_limit() {
    let (agent, jkt) = agent();
    let upstream = EchoUpstream::start();
    let dir = new_temp_dir();
    let proxy = proxy_on_socket(
        &agent,
        dir.path(),
        &upstream.base,
        &TokenIssuer::new().token("a", Some(&jkt)),
        &["--body-retry-limit", "1024"],
    );
    // Without a Content-Length the proxy reads up to the limit, then streams the rest after
    // what it has read.
    for size in [100usize, 1024, 1025, 70_000] {
        let body = dir.path().join(format!("body{size}"));
        std::fs::write(&body, vec![b'y'; size]).unwrap();
        let echoed = ok_json(&curl(
            &proxy,
            &[
                "-H",
                "Transfer-Encoding: chunked",
                "--data-binary",
                &format!("@{}", body.display()),
                &proxy.url("/chunked"),
            ],
        ));
        assert_eq!(echoed["body_len"], size, "{echoed}");
        assert_eq!(echoed["method"], "POST");
    }
}

#[test]
fn sigterm_stops_accepting_and_lets_a_request_in_flight_finish() {
    let (agent, jkt) = agent();
    let upstream = EchoUpstream::start();
    let dir = new_temp_dir();
    let file = token_file(dir.path(), &TokenIssuer::new().token("a", Some(&jkt)));
    let socket = dir.path().join("p.sock");
    let listen = format!("unix:{}", socket.display());
    let mut proxy = ProxyProcess::start(
        &agent,
        &[
            "--upstream",
            &upstream.base,
            "--access-token-file",
            &file,
            "--listen",
            &listen,
        ],
    );
    let (mut child, rx) = sse_curl(&proxy);
    let first = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the first event");
    assert_eq!(first, "data: one\n\n");
    dpop_tests::send_signal(proxy.pid(), libc::SIGTERM);
    // The socket goes first: no new connection.
    dpop_tests::wait_until(
        "the socket file is removed",
        Duration::from_secs(10),
        || !socket.exists(),
    );
    assert!(
        std::os::unix::net::UnixStream::connect(&socket).is_err(),
        "a new connection was accepted after SIGTERM"
    );
    // The stream in flight still ends normally.
    upstream.release_sse();
    let mut all = first;
    while let Ok(more) = rx.recv_timeout(Duration::from_secs(10)) {
        all = more;
    }
    assert_eq!(all, "data: one\n\ndata: two\n\n");
    let status = dpop_tests::wait_timeout(&mut child, Duration::from_secs(10)).expect("curl ends");
    assert!(status.success());
    let status = proxy.wait();
    assert!(status.success(), "{status}: {}", proxy.log());
}

#[test]
fn an_https_upstream_is_verified_against_ssl_cert_file_or_dir_and_refused_without_its_ca() {
    let (agent, jkt) = agent();
    let upstream = EchoUpstream::start();
    let ca = TestCa::new();
    // nginx terminates TLS (certificate for 127.0.0.1 from the private CA) before the echo.
    let nginx = Nginx::start_https(&upstream.base, "", &ca);
    let https = nginx.url("/");
    assert!(https.starts_with("https://127.0.0.1:"), "{https}");
    let dir = new_temp_dir();
    let token = TokenIssuer::new().token("a", Some(&jkt));
    let file = token_file(dir.path(), &token);
    let proxy = |name: &str, upstream: &str, env: &[(&str, &str)]| {
        let listen = format!("unix:{}", dir.path().join(name).display());
        let args = [
            "--upstream",
            upstream,
            "--access-token-file",
            &file,
            "--listen",
            &listen,
        ];
        ProxyProcess::try_start(&agent, &args, env).unwrap_or_else(|log| panic!("{log}"))
    };
    let ca_file = ca.ca_cert().display().to_string();
    let ca_dir = ca.ca_dir().display().to_string();

    // The CA trusted through SSL_CERT_FILE, then through SSL_CERT_DIR.
    for (i, env) in [("SSL_CERT_FILE", &ca_file), ("SSL_CERT_DIR", &ca_dir)]
        .into_iter()
        .enumerate()
    {
        let trusting = proxy(&format!("{i}.sock"), &https, &[(env.0, env.1.as_str())]);
        let path = format!("/echo/tls/{i}?a=b");
        let (status, _, body) = head_and_body(&curl(&trusting, &["-i", &trusting.url(&path)]));
        assert_eq!(status, 200, "{}: {body}\n{}", env.0, trusting.log());
        let echoed: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(echoed["path"], format!("/echo/tls/{i}"));
        let seen: Vec<(String, String)> = echoed["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_str().unwrap().into(), p[1].as_str().unwrap().into()))
            .collect();
        assert_eq!(
            header(&seen, "authorization"),
            Some(format!("DPoP {token}").as_str())
        );
        let proof = header(&seen, "dpop").expect("a DPoP header upstream");
        let (_, claims) = decode_jws(proof);
        // The proof is for the https URL the proxy sent to (query left out), not the echo's.
        assert_eq!(
            claims["htu"],
            nginx.url(&format!("/echo/tls/{i}")),
            "{claims}"
        );
        let verified = verify_proof(proof, "GET", &nginx.url(&path), Some(&token));
        assert_eq!(verified.jkt, jkt);
        assert_eq!(upstream.requests(), i as u32 + 1);
        let log = trusting.log();
        assert!(
            log.contains(&format!("dpop proxy: GET /echo/tls/{i} 200 ")) && log.contains(&https),
            "{log}"
        );
    }

    // Neither set: the system store does not know the private CA. The handshake fails, the
    // proxy answers 502 and says why, and no request (so no token) reached the upstream.
    let untrusting = proxy("none.sock", &https, &[]);
    let (status, _, body) = head_and_body(&curl(
        &untrusting,
        &["-i", &untrusting.url("/echo/unverified")],
    ));
    assert_eq!(status, 502, "{body}");
    let log = untrusting.log();
    assert!(
        body.contains("invalid peer certificate: UnknownIssuer"),
        "{body}\n{log}"
    );
    assert!(
        log.contains("dpop proxy: GET /echo/unverified 502 ")
            && log.contains("invalid peer certificate: UnknownIssuer"),
        "{log}"
    );
    assert!(
        !log.contains(&token[..20]),
        "the token is in the log:\n{log}"
    );

    // The CA trusted, but the name is not the certificate's (it is for 127.0.0.1 only).
    let localhost = https.replace("127.0.0.1", "localhost");
    let misnamed = proxy("name.sock", &localhost, &[("SSL_CERT_FILE", &ca_file)]);
    let (status, _, body) = head_and_body(&curl(&misnamed, &["-i", &misnamed.url("/echo/name")]));
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains(r#"certificate not valid for name "localhost""#),
        "{body}\n{}",
        misnamed.log()
    );
    assert_eq!(
        upstream.requests(),
        2,
        "a request went through an unverified connection"
    );
}

#[test]
fn the_proxy_reconnects_after_the_agent_closes_idle_connections_or_restarts() {
    // Connections idle for 300 ms are closed by the agent (ten minutes in production); the
    // passphrase keeps the key across the restart.
    let mut agent = TestAgent::start(
        AgentOptions::new()
            .passphrase_env("proxy reconnect store")
            .env("DPOP_AGENT_TEST_IDLE_TIMEOUT_MS", "300"),
    );
    let jkt = agent.client().generate_key("k").expect("a key").jkt;
    let upstream = EchoUpstream::start();
    let dir = new_temp_dir();
    let token = TokenIssuer::new().token("a", Some(&jkt));
    let proxy = proxy_on_socket(&agent, dir.path(), &upstream.base, &token, &[]);
    let get = |round: &str| {
        // More requests than the proxy has agent connections, so each one is used.
        for i in 0..6 {
            let out = curl(&proxy, &["-i", &proxy.url(&format!("/echo/{round}/{i}"))]);
            let (status, _, body) = head_and_body(&out);
            assert_eq!(
                status,
                200,
                "{round} #{i}: {body}\nproxy log:\n{}",
                proxy.log()
            );
        }
    };
    get("fresh");
    std::thread::sleep(Duration::from_millis(900));
    get("after-idle-close");
    agent.restart();
    get("after-restart");
}
