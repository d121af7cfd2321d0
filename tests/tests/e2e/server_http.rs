//! The example resource server over real HTTP on loopback: proofs from the real agent, JWT
//! access tokens minted by the test, and every refusal of issue 15 item 8 with its answer
//! (status, `WWW-Authenticate`, `DPoP-Nonce`, JSON body).

use std::time::Duration;

use dpop_keys::software::SoftwareBackend;
use dpop_keys::{Backend, KeyLabel};
use dpop_server::HmacNonces;
use dpop_tests::dpop_jose::{Algorithm, Claims, Htu, Method, b64url_decode, sign_proof};
use dpop_tests::{DpopCaller, Reply, ResourceServer, ServerOptions, TokenIssuer, unix_now};

const SECRET: &str = "an example nonce secret, 32 bytes or more, shared by the fleet";
/// Long, so no step starts while a test runs.
const INTERVAL: u64 = 3600;

fn with_nonces() -> ServerOptions {
    ServerOptions {
        nonce_secret: Some(SECRET.to_owned()),
        args: vec![
            "--require-nonce".into(),
            "--nonce-interval".into(),
            INTERVAL.to_string(),
        ],
        ..ServerOptions::default()
    }
}

#[track_caller]
fn assert_refused(reply: &Reply, status: u16, code: &str, description: &str) {
    assert_eq!(reply.status, status, "{reply:?}");
    assert_eq!(reply.error(), Some(code), "{reply:?}");
    let challenge = reply.www_authenticate.as_deref().unwrap_or_default();
    assert!(
        challenge.starts_with(&format!("DPoP error=\"{code}\", error_description=\"")),
        "{challenge:?}"
    );
    assert!(
        challenge.ends_with(r#"algs="ES256 ES384 EdDSA PS256 RS256""#),
        "{challenge:?}"
    );
    let text = reply.body["error_description"].as_str().unwrap_or_default();
    assert!(
        text.contains(description),
        "error_description {text:?} does not mention {description:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bound_token_with_a_fresh_proof_is_served() {
    let issuer = TokenIssuer::new();
    let caller = DpopCaller::new();
    let server = ResourceServer::start(&issuer, ServerOptions::default());
    let token = issuer.token("alice", Some(&caller.jkt));
    let url = server.url("/v1/items");

    let reply = caller.get(&url, &token, None).await;
    assert_eq!(reply.status, 200, "{reply:?}\n{}", server.log());
    assert_eq!(reply.body["jkt"], caller.jkt.as_str());
    assert_eq!(reply.body["sub"], "alice");
    assert_eq!(reply.body["path"], "/v1/items");
    assert_eq!(reply.body["alg"], "ES256");
    assert_eq!(reply.dpop_nonce, None, "no nonce secret, no nonces");
}

#[tokio::test(flavor = "multi_thread")]
async fn each_wrong_proof_is_refused_with_its_reason() {
    let issuer = TokenIssuer::new();
    let caller = DpopCaller::new();
    let server = ResourceServer::start(&issuer, ServerOptions::default());
    let token = issuer.token("alice", Some(&caller.jkt));
    let auth = format!("DPoP {token}");
    let url = server.url("/v1/items");

    // Wrong method: a POST proof on a GET.
    let proof = caller.proof("POST", &url, Some(&token), None).await;
    let reply = caller.send("GET", &url, Some(&auth), &[&proof]).await;
    assert_refused(
        &reply,
        401,
        "invalid_dpop_proof",
        r#"htm "POST" does not match"#,
    );

    // Wrong htu: a proof for another path.
    let proof = caller
        .proof("GET", &server.url("/v1/other"), Some(&token), None)
        .await;
    let reply = caller.send("GET", &url, Some(&auth), &[&proof]).await;
    assert_refused(&reply, 401, "invalid_dpop_proof", "/v1/other");

    // Wrong ath: a proof bound to another token.
    let other = issuer.token("bob", Some(&caller.jkt));
    let proof = caller.proof("GET", &url, Some(&other), None).await;
    let reply = caller.send("GET", &url, Some(&auth), &[&proof]).await;
    assert_refused(&reply, 401, "invalid_dpop_proof", "ath does not match");

    // Wrong key: the token is bound to another key.
    let elsewhere = issuer.token("alice", Some("0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"));
    let proof = caller.proof("GET", &url, Some(&elsewhere), None).await;
    let reply = caller
        .send("GET", &url, Some(&format!("DPoP {elsewhere}")), &[&proof])
        .await;
    assert_refused(
        &reply,
        401,
        "invalid_token",
        "does not match the token's cnf.jkt",
    );

    // Replay: the same proof twice.
    let proof = caller.proof("GET", &url, Some(&token), None).await;
    let first = caller.send("GET", &url, Some(&auth), &[&proof]).await;
    assert_eq!(first.status, 200, "{first:?}");
    let again = caller.send("GET", &url, Some(&auth), &[&proof]).await;
    assert_refused(&again, 401, "invalid_dpop_proof", "replay");

    // Two DPoP headers, each valid on its own.
    let a = caller.proof("GET", &url, Some(&token), None).await;
    let b = caller.proof("GET", &url, Some(&token), None).await;
    let reply = caller.send("GET", &url, Some(&auth), &[&a, &b]).await;
    assert_refused(
        &reply,
        401,
        "invalid_dpop_proof",
        "more than one DPoP header",
    );

    // No DPoP header at all.
    let reply = caller.send("GET", &url, Some(&auth), &[]).await;
    assert_refused(&reply, 401, "invalid_dpop_proof", "no DPoP header");

    // Not a proof.
    let reply = caller.send("GET", &url, Some(&auth), &["x.y.z"]).await;
    assert_refused(&reply, 401, "invalid_dpop_proof", "malformed DPoP proof");
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_checked_and_a_bound_token_is_never_a_bearer_token() {
    let issuer = TokenIssuer::new();
    let caller = DpopCaller::new();
    let server = ResourceServer::start(&issuer, ServerOptions::default());
    let token = issuer.token("alice", Some(&caller.jkt));
    let url = server.url("/v1/items");

    // Bearer downgrade (RFC 9449 section 7.2), even with a valid proof beside it.
    let proof = caller.proof("GET", &url, Some(&token), None).await;
    let reply = caller
        .send("GET", &url, Some(&format!("Bearer {token}")), &[&proof])
        .await;
    assert_refused(&reply, 401, "invalid_token", "not Bearer");

    // No credentials: a bare challenge that names the algorithms.
    let reply = caller.send("GET", &url, None, &[&proof]).await;
    assert_eq!(reply.status, 401);
    assert_eq!(
        reply.www_authenticate.as_deref(),
        Some(r#"DPoP algs="ES256 ES384 EdDSA PS256 RS256""#)
    );

    // A token that is not DPoP-bound, with either scheme.
    let unbound = issuer.token("alice", None);
    let proof = caller.proof("GET", &url, Some(&unbound), None).await;
    let reply = caller
        .send("GET", &url, Some(&format!("DPoP {unbound}")), &[&proof])
        .await;
    assert_refused(&reply, 401, "invalid_token", "not DPoP-bound");

    // A token signed by another issuer's key.
    let stranger = TokenIssuer::new().token("alice", Some(&caller.jkt));
    let proof = caller.proof("GET", &url, Some(&stranger), None).await;
    let reply = caller
        .send("GET", &url, Some(&format!("DPoP {stranger}")), &[&proof])
        .await;
    assert_refused(&reply, 401, "invalid_token", "signature does not verify");

    // An expired one.
    let expired = issuer.sign(&serde_json::json!({
        "iss": dpop_tests::server::ISSUER, "aud": dpop_tests::server::AUDIENCE,
        "sub": "alice", "exp": unix_now() - 1, "cnf": {"jkt": caller.jkt},
    }));
    let proof = caller.proof("GET", &url, Some(&expired), None).await;
    let reply = caller
        .send("GET", &url, Some(&format!("DPoP {expired}")), &[&proof])
        .await;
    assert_refused(&reply, 401, "invalid_token", "expired");
}

/// The agent always signs with the current time, so a stale proof comes from a software key
/// in the test, with a token bound to that key.
#[tokio::test(flavor = "multi_thread")]
async fn a_stale_or_future_iat_is_refused() {
    let issuer = TokenIssuer::new();
    let caller = DpopCaller::new();
    let server = ResourceServer::start(&issuer, ServerOptions::default());
    let url = server.url("/v1/items");
    let key = SoftwareBackend::ephemeral()
        .generate(&KeyLabel::new("stale").unwrap(), Algorithm::ES256)
        .unwrap();
    let jkt = key.meta().info().jkt.clone();
    let token = issuer.token("alice", Some(&jkt));
    let proof_at = |iat: i64| {
        let claims = Claims::new(
            &Method::new("GET").unwrap(),
            &Htu::from_url(&url).unwrap(),
            iat,
        )
        .with_access_token(&token)
        .unwrap();
        sign_proof(&*key, &claims).unwrap()
    };
    let auth = format!("DPoP {token}");

    let reply = caller
        .send("GET", &url, Some(&auth), &[&proof_at(unix_now() - 120)])
        .await;
    assert_refused(
        &reply,
        401,
        "invalid_dpop_proof",
        "outside the accepted window",
    );
    let reply = caller
        .send("GET", &url, Some(&auth), &[&proof_at(unix_now() + 120)])
        .await;
    assert_refused(
        &reply,
        401,
        "invalid_dpop_proof",
        "outside the accepted window",
    );
    // The same key and token with a current iat pass: only iat was wrong.
    let reply = caller
        .send("GET", &url, Some(&auth), &[&proof_at(unix_now())])
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body["jkt"], jkt.as_str());
}

/// The step a nonce was issued in (its first 8 bytes).
fn step_of(nonce: &str) -> i64 {
    let bytes = b64url_decode(nonce).expect("nonce is base64url");
    i64::from_be_bytes(bytes[..8].try_into().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_and_rotated_nonces_get_use_dpop_nonce_and_a_fresh_one() {
    let issuer = TokenIssuer::new();
    let caller = DpopCaller::new();
    let server = ResourceServer::start(&issuer, with_nonces());
    let token = issuer.token("alice", Some(&caller.jkt));
    let url = server.url("/v1/items");

    // No nonce: refused, with one to use.
    let reply = caller.get(&url, &token, None).await;
    assert_refused(&reply, 401, "use_dpop_nonce", "nonce is missing");
    let nonce = reply
        .dpop_nonce
        .clone()
        .expect("a DPoP-Nonce with use_dpop_nonce");

    // With it: served, and no new nonce within the step.
    let reply = caller.get(&url, &token, Some(&nonce)).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.dpop_nonce, None);

    // The same secret made these: a nonce of the previous step is still accepted, and the
    // response hands out the current one; two steps back it is refused.
    let nonces = HmacNonces::new(SECRET.as_bytes(), Duration::from_secs(INTERVAL)).unwrap();
    let step = step_of(&nonce);
    let previous = nonces.nonce_at((step - 1) * INTERVAL as i64);
    let reply = caller.get(&url, &token, Some(&previous)).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.dpop_nonce.as_deref(), Some(nonce.as_str()));

    let rotated = nonces.nonce_at((step - 2) * INTERVAL as i64);
    let reply = caller.get(&url, &token, Some(&rotated)).await;
    assert_refused(&reply, 401, "use_dpop_nonce", "not current");
    assert_eq!(reply.dpop_nonce.as_deref(), Some(nonce.as_str()));

    // A nonce made with another secret is no nonce of this server.
    let forged = HmacNonces::new(&[9; 32], Duration::from_secs(INTERVAL))
        .unwrap()
        .nonce_at(step * INTERVAL as i64);
    let reply = caller.get(&url, &token, Some(&forged)).await;
    assert_refused(&reply, 401, "use_dpop_nonce", "not current");
}

#[tokio::test(flavor = "multi_thread")]
async fn htu_is_the_configured_public_url_not_the_address_the_request_reached() {
    let issuer = TokenIssuer::new();
    let caller = DpopCaller::new();
    // As behind a reverse proxy that serves https://rs.test.invalid/api/ from this server.
    let server = ResourceServer::start(
        &issuer,
        ServerOptions {
            public_url: Some("https://rs.test.invalid:443/api/".into()),
            args: vec![
                "--trusted-proxy".into(),
                "127.0.0.1".into(),
                "--proxy-headers".into(),
                "x-forwarded".into(),
            ],
            ..ServerOptions::default()
        },
    );
    let token = issuer.token("alice", Some(&caller.jkt));
    let auth = format!("DPoP {token}");
    let local = server.url("/items");

    // The proof names the public URL (default port dropped, prefix included).
    let proof = caller
        .proof(
            "GET",
            "https://rs.test.invalid/api/items",
            Some(&token),
            None,
        )
        .await;
    let reply = caller.send("GET", &local, Some(&auth), &[&proof]).await;
    assert_eq!(reply.status, 200, "{reply:?}");

    // A proof for the loopback address is for another URL.
    let proof = caller.proof("GET", &local, Some(&token), None).await;
    let reply = caller.send("GET", &local, Some(&auth), &[&proof]).await;
    assert_refused(
        &reply,
        401,
        "invalid_dpop_proof",
        "https://rs.test.invalid/api/items",
    );

    // The peer (127.0.0.1) is a trusted proxy here: its X-Forwarded-Host counts.
    let proof = caller
        .proof(
            "GET",
            "https://public.test.invalid/api/items",
            Some(&token),
            None,
        )
        .await;
    let reply = send_forwarded(&local, &auth, &proof, "public.test.invalid").await;
    assert_eq!(reply, 200);
}

async fn send_forwarded(url: &str, auth: &str, proof: &str, host: &str) -> u16 {
    reqwest::Client::new()
        .get(url)
        .header("authorization", auth)
        .header("dpop", proof)
        .header("x-forwarded-host", host)
        .send()
        .await
        .expect("HTTP request")
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_headers_from_an_untrusted_peer_are_ignored() {
    let issuer = TokenIssuer::new();
    let caller = DpopCaller::new();
    let server = ResourceServer::start(
        &issuer,
        ServerOptions {
            public_url: Some("https://rs.test.invalid".into()),
            ..ServerOptions::default()
        },
    );
    let token = issuer.token("alice", Some(&caller.jkt));
    let auth = format!("DPoP {token}");
    let local = server.url("/items");
    let proof = caller
        .proof(
            "GET",
            "https://attacker.test.invalid/items",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(
        send_forwarded(&local, &auth, &proof, "attacker.test.invalid").await,
        401
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_fapi2_preset_requires_nonces() {
    let issuer = TokenIssuer::new();
    let caller = DpopCaller::new();
    let mut options = with_nonces();
    options.args = vec!["--preset".into(), "fapi2".into()];
    let server = ResourceServer::start(&issuer, options);
    let token = issuer.token("alice", Some(&caller.jkt));
    let url = server.url("/x");
    let reply = caller.get(&url, &token, None).await;
    assert_eq!(reply.status, 401, "{reply:?}");
    assert_eq!(reply.error(), Some("use_dpop_nonce"));
    let challenge = reply.www_authenticate.unwrap();
    assert!(
        challenge.ends_with(r#"algs="PS256 ES256 EdDSA""#),
        "{challenge}"
    );
    let reply = caller.get(&url, &token, reply.dpop_nonce.as_deref()).await;
    assert_eq!(reply.status, 200, "{reply:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_jwks_can_come_from_an_http_url() {
    use dpop_tests::{KillOnDrop, free_port, wait_until};
    use std::process::{Command, Stdio};

    let issuer = TokenIssuer::new();
    let caller = DpopCaller::new();
    // A real HTTP server for the JWKS: Python's (python3 is already needed by the suite).
    let port = free_port();
    let dir = issuer.jwks_path().parent().unwrap().to_owned();
    let mut http = Command::new("python3")
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
        ])
        .arg("--directory")
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 runs (install python3)");
    let _guard = KillOnDrop(http.id());
    wait_until(
        "python3 -m http.server listens",
        dpop_tests::PROCESS_TIMEOUT,
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
    );
    let server = ResourceServer::start(
        &issuer,
        ServerOptions {
            jwks_url: Some(format!("http://127.0.0.1:{port}/jwks.json")),
            ..ServerOptions::default()
        },
    );
    let token = issuer.token("alice", Some(&caller.jkt));
    let reply = caller.get(&server.url("/"), &token, None).await;
    assert_eq!(reply.status, 200, "{reply:?}\n{}", server.log());
    let _ = http.kill();
    let _ = http.wait();
}

/// The project's own client against the example server: `dpop request` with a bound JWT,
/// answering the server's nonce challenge once, then sending the nonce it learnt (through the
/// agent) without a new challenge; and the server's refusal shown when the token is not bound
/// to the key.
#[test]
fn dpop_request_against_the_example_server() {
    let issuer = TokenIssuer::new();
    let caller = DpopCaller::new();
    let server = ResourceServer::start(&issuer, with_nonces());
    let dir = dpop_tests::new_temp_dir();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, issuer.token("alice", Some(&caller.jkt))).unwrap();
    let url = server.url("/v1/items?page=2");
    let request = |extra: &[&str]| {
        let mut args = vec![
            "request",
            url.as_str(),
            "--key",
            "k",
            "--access-token-file",
            token_file.to_str().unwrap(),
            "-v",
        ];
        args.extend_from_slice(extra);
        caller.agent.dpop(&args)
    };

    let first = request(&[]);
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "{stderr}\n{}", server.log());
    let body: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    assert_eq!(body["sub"], "alice");
    assert_eq!(body["jkt"], caller.jkt.as_str());
    assert!(
        stderr.contains("retried once"),
        "the nonce challenge was answered: {stderr}"
    );

    // The agent holds the server's nonce now: no challenge the second time.
    let second = request(&[]);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "{stderr}");
    assert!(!stderr.contains("retried"), "{stderr}");

    // A token bound to another key: the server's answer, shown, and a failing exit.
    std::fs::write(&token_file, issuer.token("mallory", Some("another-jkt"))).unwrap();
    let refused = request(&[]);
    assert_eq!(refused.status.code(), Some(22));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("401") && stderr.contains("invalid_token"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_memory_replay_store_refuses_new_proofs_rather_than_forgetting_old_ones() {
    let issuer = TokenIssuer::new();
    let caller = DpopCaller::new();
    let capacity = ["--replay-capacity".to_owned(), "2".to_owned()];
    let server = ResourceServer::start(
        &issuer,
        ServerOptions {
            args: capacity.to_vec(),
            ..ServerOptions::default()
        },
    );
    let token = issuer.token("alice", Some(&caller.jkt));
    let url = server.url("/v1/items");

    // Two proofs fill it; the first one is still refused as a replay afterwards.
    let first = caller.proof("GET", &url, Some(&token), None).await;
    let auth = format!("DPoP {token}");
    assert_eq!(
        caller
            .send("GET", &url, Some(&auth), &[&first])
            .await
            .status,
        200
    );
    assert_eq!(caller.get(&url, &token, None).await.status, 200);
    let reply = caller.get(&url, &token, None).await;
    assert_eq!(reply.status, 503, "{reply:?}\n{}", server.log());
    assert_eq!(reply.error(), Some("temporarily_unavailable"), "{reply:?}");
    let replay = caller.send("GET", &url, Some(&auth), &[&first]).await;
    assert_eq!(
        replay.status, 401,
        "the full store forgot a proof: {replay:?}"
    );

    // With nonces, a full store answers use_dpop_nonce and a nonce to retry with.
    let mut options = with_nonces();
    options.args.extend(capacity);
    let server = ResourceServer::start(&issuer, options);
    let url = server.url("/v1/items");
    let nonce = caller
        .get(&url, &token, None)
        .await
        .dpop_nonce
        .expect("a nonce with the first challenge");
    for _ in 0..2 {
        let reply = caller.get(&url, &token, Some(&nonce)).await;
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    let reply = caller.get(&url, &token, Some(&nonce)).await;
    assert_eq!(reply.status, 401, "{reply:?}\n{}", server.log());
    assert_eq!(reply.error(), Some("use_dpop_nonce"), "{reply:?}");
    assert!(reply.dpop_nonce.is_some(), "{reply:?}");
}
