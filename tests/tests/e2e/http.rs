//! Tokens and API calls over real HTTP on loopback: the real `dpop` binary and the real agent
//! against the test authorization and resource servers (dpop_tests::oauth), which check every
//! proof claim, require and rotate nonces and bind tokens to the proof key.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use dpop_tests::{OAuthOptions, OAuthServer, TestAgent, mode, wait_timeout};

pub(crate) const SECRET_VAR: &str = "DPOP_TEST_CLIENT_SECRET";
pub(crate) const SECRET: &str = "s3cret:with&odd=chars";

pub(crate) struct Setup {
    pub(crate) agent: TestAgent,
    pub(crate) server: OAuthServer,
    pub(crate) jkt: String,
}

pub(crate) fn setup(options: OAuthOptions) -> Setup {
    let agent = TestAgent::start(dpop_tests::AgentOptions::new());
    let jkt = agent.client().generate_key("k").unwrap().jkt;
    Setup {
        agent,
        server: OAuthServer::start(options),
        jkt,
    }
}

impl Setup {
    pub(crate) fn dpop(&self, args: &[&str]) -> Output {
        self.agent
            .dpop_command()
            .env(SECRET_VAR, SECRET)
            .args(args)
            .output()
            .expect("running dpop")
    }

    pub(crate) fn dpop_ok(&self, args: &[&str]) -> String {
        let out = self.dpop(args);
        assert!(
            out.status.success(),
            "dpop {args:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `dpop token` with client_credentials and client_secret_post, saved as `name`.
    pub(crate) fn client_credentials(&self, name: &str) -> Output {
        let token_url = self.server.token_url();
        self.dpop(&[
            "token",
            "--key",
            "k",
            "--token-url",
            &token_url,
            "--client-id",
            "confidential",
            "--client-auth",
            "client_secret_post",
            "--client-secret-env",
            SECRET_VAR,
            "--scope",
            "read write",
            "--resource",
            "https://rs.example/a",
            "--resource",
            "https://rs.example/b",
            "--audience",
            "rs",
            "--save",
            name,
        ])
    }

    pub(crate) fn api(&self, path: &str) -> String {
        format!("{}{path}", self.server.resource)
    }

    pub(crate) fn saved(&self, name: &str) -> serde_json::Value {
        let path = self
            .agent
            .dir()
            .join(format!("state/dpop/tokens/{name}.json"));
        assert_eq!(mode(&path), 0o600, "{} is private", path.display());
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
    }
}

pub(crate) fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn client_credentials_then_request_each_answer_one_nonce_challenge() {
    let s = setup(OAuthOptions::default());
    let out = s.client_credentials("api");
    assert!(out.status.success(), "{}", stderr(&out));
    // --save prints no token.
    assert!(out.stdout.is_empty());
    let saved = s.saved("api");
    let token = saved["access_token"].as_str().unwrap();
    assert!(!stderr(&out).contains(token), "the token is not printed");
    assert_eq!(saved["jkt"], s.jkt.as_str());
    assert_eq!(s.server.token_jkt(token).as_deref(), Some(s.jkt.as_str()));
    let counts = s.server.counts();
    assert_eq!(
        counts.resources,
        ["https://rs.example/a", "https://rs.example/b"]
    );
    assert_eq!(counts.audiences, ["rs"]);
    // One challenge, one retry with its nonce: two requests, no more.
    assert_eq!(counts.as_nonce_challenges, 1);
    assert_eq!(counts.token_requests["client_credentials"], 2);
    assert_eq!(counts.client_auth, ["client_secret_post"]);

    let body = s.dpop_ok(&[
        "request",
        &s.api("/api/items?page=2#frag"),
        "--token",
        "api",
    ]);
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echo["path"], "/api/items");
    assert_eq!(echo["query"], "page=2");
    assert_eq!(echo["scope"], "read write");
    let counts = s.server.counts();
    assert_eq!(counts.rs_nonce_challenges, 1);
    assert_eq!(counts.rs_requests, 2);

    // The agent now holds both servers' nonces: later processes are never challenged, across
    // the servers' rotations (every 3 proofs) too.
    let keys = s.agent.client().list_keys().unwrap();
    assert_eq!(
        keys[0].nonce_origins.len(),
        2,
        "{:?}",
        keys[0].nonce_origins
    );
    for _ in 0..4 {
        s.dpop_ok(&["request", &s.api("/api/items"), "--token", "api"]);
        let out = s.client_credentials("other");
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let counts = s.server.counts();
    assert_eq!(counts.rs_nonce_challenges, 1);
    assert_eq!(counts.as_nonce_challenges, 1);
    assert_eq!(counts.rs_requests, 6);
    assert_eq!(counts.token_requests["client_credentials"], 6);
}

#[test]
fn a_server_that_always_wants_a_nonce_gets_one_retry_only() {
    let s = setup(OAuthOptions::default());
    assert!(s.client_credentials("api").status.success());
    s.server.set_always_use_nonce(true);
    let before = s.server.counts();

    let out = s.dpop(&["request", &s.api("/api/items"), "--token", "api"]);
    assert_eq!(out.status.code(), Some(22), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("HTTP 401") && err.contains("use_dpop_nonce"),
        "{err}"
    );
    assert!(err.contains("after one retry"), "{err}");
    assert_eq!(s.server.counts().rs_requests - before.rs_requests, 2);

    let out = s.client_credentials("again");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("use_dpop_nonce") && err.contains("after one retry"),
        "{err}"
    );
    let after = s.server.counts();
    assert_eq!(
        after.token_requests["client_credentials"] - before.token_requests["client_credentials"],
        2
    );
}

#[test]
fn a_nonce_challenge_without_a_nonce_is_reported_clearly() {
    let s = setup(OAuthOptions {
        challenge_without_nonce: true,
        ..OAuthOptions::default()
    });
    assert!(s.client_credentials("api").status.success());
    let out = s.dpop(&["request", &s.api("/api/items"), "--token", "api"]);
    assert_eq!(out.status.code(), Some(22));
    let err = stderr(&out);
    assert!(
        err.contains("HTTP 401 Unauthorized: use_dpop_nonce"),
        "{err}"
    );
    assert!(err.contains("sent no DPoP-Nonce header"), "{err}");
    // No nonce to retry with: one request.
    assert_eq!(s.server.counts().rs_requests, 1);
}

#[test]
fn request_sends_bodies_follows_same_origin_redirects_and_refuses_others() {
    let s = setup(OAuthOptions::default());
    assert!(s.client_credentials("api").status.success());
    let body = s.dpop_ok(&[
        "request",
        &s.api("/api/form"),
        "--token",
        "api",
        "-d",
        "a=1&b=2",
    ]);
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["body"], "a=1&b=2");
    assert_eq!(echo["content_type"], "application/x-www-form-urlencoded");

    let out = s.dpop(&[
        "request",
        "-X",
        "PUT",
        &s.api("/api/doc"),
        "--token",
        "api",
        "--data-binary",
        "{\"x\":1}",
        "-H",
        "Content-Type: application/json",
        "-i",
        "-v",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    assert!(stdout.starts_with("HTTP/1.1 200 OK\n"), "{stdout}");
    assert!(stdout.contains("\"method\":\"PUT\""), "{stdout}");
    let err = stderr(&out);
    assert!(
        err.contains("< HTTP/1.1 200 OK") && err.contains("> PUT "),
        "{err}"
    );
    let token = s.saved("api")["access_token"].as_str().unwrap().to_owned();
    assert!(
        !err.contains(&token) && !stdout.contains(&token),
        "-v never shows the token"
    );

    // Same origin: followed, with a fresh proof for the new URL (the server checks htu).
    let body = s.dpop_ok(&["request", &s.api("/api/hop"), "--token", "api"]);
    assert!(body.contains("\"path\":\"/api/landed\""), "{body}");
    let out = s.dpop(&["request", &s.api("/api/away"), "--token", "api"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("another origin"), "{}", stderr(&out));

    // A body from standard input, sent again on the retry that a fresh nonce rotation forces.
    s.server.rotate_nonces();
    let challenges = s.server.counts().rs_nonce_challenges;
    let mut child = s
        .agent
        .dpop_command()
        .args([
            "request",
            &s.api("/api/in"),
            "--token",
            "api",
            "--data-binary",
            "@-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"from\nstdin").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let echo: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(echo["body"], "from\nstdin");
    assert_eq!(s.server.counts().rs_nonce_challenges, challenges + 1);

    let file = s.agent.dir().join("body.json");
    s.dpop_ok(&[
        "request",
        &s.api("/api/x"),
        "--token",
        "api",
        "-o",
        file.to_str().unwrap(),
    ]);
    assert!(std::fs::read_to_string(&file).unwrap().contains("/api/x"));
}

#[test]
fn a_saved_token_whose_key_is_gone_or_replaced_is_not_sent() {
    let s = setup(OAuthOptions::default());
    assert!(s.client_credentials("api").status.success());
    s.agent.client().delete_key("k").unwrap();
    s.agent.client().generate_key("k").unwrap();
    let before = s.server.counts().rs_requests;
    let out = s.dpop(&["request", &s.api("/api/items"), "--token", "api"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("now names a different key"),
        "{}",
        stderr(&out)
    );
    s.agent.client().delete_key("k").unwrap();
    let out = s.dpop(&["request", &s.api("/api/items"), "--token", "api"]);
    assert!(stderr(&out).contains("no longer has"), "{}", stderr(&out));
    assert_eq!(s.server.counts().rs_requests, before, "nothing was sent");

    let list = s.dpop_ok(&["tokens", "list"]);
    assert!(list.contains("api") && list.contains("k"), "{list}");
    s.dpop_ok(&["tokens", "delete", "api"]);
    assert_eq!(s.dpop_ok(&["tokens", "list"]).trim(), "no saved tokens");
}

#[test]
fn bearer_tokens_are_refused_unless_allowed_and_discovery_checks_the_algorithm() {
    let s = setup(OAuthOptions {
        token_type: "Bearer".into(),
        algs: vec!["PS256".into()],
        ..OAuthOptions::default()
    });
    let token_url = s.server.token_url();
    // The secret from a file this time (its line break is not part of it).
    let secret_file = s.agent.dir().join("client-secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let args = [
        "token",
        "--token-url",
        &token_url,
        "--client-id",
        "confidential",
        "--client-secret-file",
        secret_file.to_str().unwrap(),
    ];
    let out = s.dpop(&args);
    assert!(
        stderr(&out).contains("not a DPoP-bound"),
        "{}",
        stderr(&out)
    );
    let mut allowed = args.to_vec();
    allowed.push("--allow-bearer");
    let token = s.dpop_ok(&allowed);
    assert!(
        s.server.token_jkt(token.trim()).is_some(),
        "printed the token itself"
    );
    // client_secret_basic is the default with a secret.
    assert!(
        s.server
            .counts()
            .client_auth
            .iter()
            .all(|a| a == "client_secret_basic")
    );

    let out = s.dpop(&[
        "token",
        "--issuer",
        &s.server.issuer,
        "--client-id",
        "public",
        "--allow-bearer",
    ]);
    let err = stderr(&out);
    assert!(err.contains("PS256 only") && err.contains("ES256"), "{err}");
}

/// Runs `dpop token` in the background; once a line of its standard error satisfies `pick`,
/// calls `act` with it (to play the browser or approve a device code), then waits for it.
pub(crate) fn run_interactive(
    s: &Setup,
    args: &[&str],
    pick: impl FnMut(&str) -> bool,
    act: impl FnOnce(&str),
) -> Output {
    run_interactive_with(s.agent.dpop_command(), args, pick, act)
}

/// Plays the browser: opens the URL and follows the redirects to the loopback listener.
pub(crate) fn browse(url: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let response = runtime
        .block_on(reqwest::get(url))
        .unwrap_or_else(|e| panic!("browsing {url}: {e}"));
    assert_eq!(response.status(), 200, "{}", response.url());
    assert_eq!(response.url().host_str(), Some("127.0.0.1"));
}

pub(crate) fn authorization_code(options: OAuthOptions, extra: &[&str]) -> (Setup, Output) {
    let s = setup(options);
    let issuer = s.server.issuer.clone();
    let mut args = vec![
        "token",
        "--grant",
        "authorization_code",
        "--issuer",
        &issuer,
        "--client-id",
        "public",
        "--scope",
        "openid offline",
        "--no-browser",
        "--save",
        "web",
    ];
    args.extend_from_slice(extra);
    let out = run_interactive(&s, &args, |l| l.starts_with("http://"), browse);
    (s, out)
}

#[test]
fn authorization_code_with_pkce_loopback_redirect_and_dpop_jkt() {
    let (s, out) = authorization_code(OAuthOptions::default(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let counts = s.server.counts();
    assert_eq!(counts.authorizations, 1);
    assert_eq!(counts.dpop_jkts, std::slice::from_ref(&s.jkt));
    assert_eq!(counts.par_requests, 0);
    assert_eq!(counts.client_auth, ["none"]);
    let saved = s.saved("web");
    assert_eq!(saved["scope"], "openid offline");
    assert!(saved["refresh_token"].is_string());
    s.dpop_ok(&["request", &s.api("/api/me"), "--token", "web"]);
}

#[test]
fn authorization_code_is_pushed_when_the_server_requires_par() {
    let (s, out) = authorization_code(
        OAuthOptions {
            require_par: true,
            ..OAuthOptions::default()
        },
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let counts = s.server.counts();
    assert_eq!(counts.par_requests, 1);
    assert_eq!(counts.dpop_jkts, std::slice::from_ref(&s.jkt));
    // The URL shown carries only client_id and request_uri.
    assert!(stderr(&out).contains("request_uri="), "{}", stderr(&out));
    assert!(!stderr(&out).contains("code_challenge"), "{}", stderr(&out));
}

#[test]
fn device_code_with_slow_down_then_an_expired_token_is_refreshed() {
    let s = setup(OAuthOptions {
        // Under the 30 s margin: the saved token counts as expired at once.
        token_lifetime: 20,
        ..OAuthOptions::default()
    });
    let issuer = s.server.issuer.clone();
    let args = [
        "token",
        "--grant",
        "device_code",
        "--issuer",
        &issuer,
        "--client-id",
        "confidential",
        "--client-secret-env",
        SECRET_VAR,
        "--save",
        "dev",
    ];
    let mut child_env = s.agent.dpop_command();
    child_env.env(SECRET_VAR, SECRET);
    let out = {
        let server = &s.server;
        run_interactive_with(
            child_env,
            &args,
            |l| l.contains("enter the code"),
            |line| {
                let code = line.rsplit(' ').next().unwrap();
                assert!(server.approve(code), "unknown user code {code}");
            },
        )
    };
    assert!(out.status.success(), "{}", stderr(&out));
    let counts = s.server.counts();
    assert_eq!(counts.slow_downs, 1);
    let first = s.saved("dev");
    let old_refresh = first["refresh_token"].as_str().unwrap().to_owned();

    s.dpop_ok(&["request", &s.api("/api/items"), "--token", "dev"]);
    assert_eq!(
        s.server.counts().token_requests.get("refresh_token"),
        Some(&1)
    );
    let second = s.saved("dev");
    assert_ne!(first["access_token"], second["access_token"]);
    assert!(!s.server.knows_refresh_token(&old_refresh), "rotated");
    assert!(
        s.server
            .knows_refresh_token(second["refresh_token"].as_str().unwrap())
    );

    // The refresh_token grant by hand, from a file.
    let file = s.agent.dir().join("refresh");
    std::fs::write(&file, second["refresh_token"].as_str().unwrap()).unwrap();
    let token_url = s.server.token_url();
    let out = s.dpop(&[
        "token",
        "--grant",
        "refresh_token",
        "--token-url",
        &token_url,
        "--client-id",
        "confidential",
        "--client-secret-env",
        SECRET_VAR,
        "--refresh-token-file",
        file.to_str().unwrap(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["token_type"], "DPoP");
    assert_eq!(
        s.server
            .token_jkt(json["access_token"].as_str().unwrap())
            .as_deref(),
        Some(s.jkt.as_str())
    );
}

#[test]
fn a_server_that_does_not_rotate_refresh_tokens_leaves_the_saved_one_in_place() {
    let s = setup(OAuthOptions {
        rotate_refresh_tokens: false,
        ..OAuthOptions::default()
    });
    let issuer = s.server.issuer.clone();
    let mut command = s.agent.dpop_command();
    command.env(SECRET_VAR, SECRET);
    let out = {
        let server = &s.server;
        run_interactive_with(
            command,
            &[
                "token",
                "--grant",
                "device_code",
                "--issuer",
                &issuer,
                "--client-id",
                "confidential",
                "--client-secret-env",
                SECRET_VAR,
                "--save",
                "dev",
            ],
            |l| l.contains("enter the code"),
            |line| {
                let code = line.rsplit(' ').next().unwrap();
                assert!(server.approve(code), "unknown user code {code}");
            },
        )
    };
    assert!(out.status.success(), "{}", stderr(&out));
    let refresh = s.saved("dev")["refresh_token"].as_str().unwrap().to_owned();

    // The refresh_token grant by hand, saved: the answer has no refresh token, and the saved
    // token keeps the one that still works, so it can be refreshed again later.
    let file = s.agent.dir().join("refresh");
    std::fs::write(&file, &refresh).unwrap();
    let token_url = s.server.token_url();
    s.dpop_ok(&[
        "token",
        "--grant",
        "refresh_token",
        "--token-url",
        &token_url,
        "--client-id",
        "confidential",
        "--client-secret-env",
        SECRET_VAR,
        "--refresh-token-file",
        file.to_str().unwrap(),
        "--save",
        "again",
    ]);
    assert_eq!(s.saved("again")["refresh_token"], refresh.as_str());
    assert!(s.server.knows_refresh_token(&refresh));
}

pub(crate) fn run_interactive_with(
    mut command: Command,
    args: &[&str],
    mut pick: impl FnMut(&str) -> bool,
    act: impl FnOnce(&str),
) -> Output {
    let mut child = command
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    let line = loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("dpop ended before the expected line:\n{seen}"))
            .unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if pick(&line) {
            break line;
        }
    };
    act(&line);
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = wait_timeout(&mut child, Duration::from_secs(60)).expect("dpop token ends");
    let mut stdout = Vec::new();
    std::io::Read::read_to_end(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    Output {
        status,
        stdout,
        stderr: (seen + &rest.join("\n")).into_bytes(),
    }
}

#[test]
fn the_library_gets_a_token_and_calls_the_api_with_one_retry_each() {
    use dpop_client::http::{ClientAuth, DpopClient, OAuthClient, TokenParams, discover};

    let s = setup(OAuthOptions::default());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let agent = dpop_client::Client::connect(s.agent.socket())
            .await
            .unwrap();
        let http = DpopClient::new(agent, "k").unwrap();
        let metadata = discover(http.reqwest(), &s.server.issuer).await.unwrap();
        metadata.check_alg("k", "ES256").unwrap();
        let oauth = OAuthClient::from_metadata(
            &metadata,
            "confidential",
            ClientAuth::SecretBasic(SECRET.to_owned().into()),
        )
        .unwrap();
        let token = oauth
            .client_credentials(&http, &TokenParams::default().scope("read"))
            .await
            .unwrap();
        assert!(token.is_dpop());
        assert!(!format!("{token:?}").contains(token.access_token()));
        assert_eq!(http.nonce_retries(), 1);

        let request = http.reqwest().get(s.api("/api/lib")).build().unwrap();
        let response = http
            .send(request, Some(token.access_token()))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(http.nonce_retries(), 2);
        // The nonce that came with the answer is in the agent: no more retries.
        for _ in 0..5 {
            let request = http.reqwest().get(s.api("/api/lib")).build().unwrap();
            let response = http
                .send(request, Some(token.access_token()))
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
        }
        assert_eq!(http.nonce_retries(), 2);
        // A rotation the client did not see: one retry, then the new nonce.
        s.server.rotate_nonces();
        let request = http.reqwest().get(s.api("/api/lib")).build().unwrap();
        assert_eq!(
            http.send(request, Some(token.access_token()))
                .await
                .unwrap()
                .status(),
            200
        );
        assert_eq!(http.nonce_retries(), 3);
    });
    let counts = s.server.counts();
    assert_eq!(counts.rs_nonce_challenges, 2);
    assert_eq!(counts.client_auth, ["client_secret_basic"]);
}

#[test]
fn a_token_source_requests_again_only_when_the_token_expires() {
    use dpop_client::http::{ClientAuth, DpopClient, OAuthClient, TokenParams, TokenSource};

    let s = setup(OAuthOptions::default());
    // Tokens that live 20 s, inside the 30 s renewal margin: renewed on every use.
    let short = OAuthServer::start(OAuthOptions {
        token_lifetime: 20,
        ..OAuthOptions::default()
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let agent = dpop_client::Client::connect(s.agent.socket())
            .await
            .unwrap();
        let http = DpopClient::new(agent, "k").unwrap();
        let source = |server: &OAuthServer| {
            TokenSource::client_credentials(
                OAuthClient::new(
                    server.token_url().parse().unwrap(),
                    "public",
                    ClientAuth::None,
                ),
                TokenParams::default(),
            )
        };
        let long_lived = source(&s.server);
        let first = long_lived.access_token(&http).await.unwrap();
        let second = long_lived.access_token(&http).await.unwrap();
        assert_eq!(*first, *second);
        let renewed = source(&short);
        let first = renewed.access_token(&http).await.unwrap();
        let second = renewed.access_token(&http).await.unwrap();
        assert_ne!(*first, *second);
        assert_eq!(short.token_jkt(&second).as_deref(), Some(s.jkt.as_str()));
    });
    // Successful requests only (the nonce challenges are counted apart).
    let issued = |server: &OAuthServer| {
        let c = server.counts();
        c.token_requests["client_credentials"] - c.as_nonce_challenges
    };
    assert_eq!(issued(&s.server), 1);
    assert_eq!(issued(&short), 2);
}
