//! Against an authorization server we did not write: node oidc-provider with DPoP nonces
//! required (tests/interop/oidc-provider). `dpop token` gets DPoP-bound tokens from it with
//! client_credentials and refresh_token, answering its nonce challenge, and `dpop request`
//! spends them at the test resource server, which checks them by introspection at
//! oidc-provider (`cnf.jkt` included), and at oidc-provider's own userinfo endpoint. Fails
//! when node or the npm package is missing.

use dpop_tests::oidc_provider::{
    OIDC_SECRET_VAR as SECRET_VAR, dpop_with_client_secret as dpop_ok,
};
use dpop_tests::{AgentOptions, OAuthOptions, OAuthServer, OidcProvider, TestAgent};

#[test]
fn oidc_provider_client_credentials_and_refresh_token_then_request() {
    let provider = OidcProvider::start();
    let rs = OAuthServer::start(OAuthOptions {
        introspection: Some(provider.introspection()),
        ..OAuthOptions::default()
    });
    let agent = TestAgent::start(AgentOptions::new());
    let key = agent.client().generate_key("k").unwrap();
    let api = format!("{}/api/items", rs.resource);

    // client_credentials, discovered from the issuer. oidc-provider requires a nonce, so the
    // first proof (without one) is refused and the retry carries its DPoP-Nonce.
    let (stdout, _) = dpop_ok(
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
            "--save",
            "cc",
        ],
    );
    assert!(stdout.is_empty(), "--save prints no token");
    let keys = agent.client().list_keys().unwrap();
    assert!(
        keys[0].nonce_origins.contains(&provider.issuer),
        "the agent keeps oidc-provider's nonce: {:?}",
        keys[0].nonce_origins
    );
    let (body, stderr) = dpop_ok(&agent, &["request", &api, "--token", "cc", "-v"]);
    assert!(
        stderr.contains("retried once with the server's DPoP-Nonce"),
        "{stderr}"
    );
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echo["path"], "/api/items");
    assert_eq!(echo["scope"], "api:read");
    assert_eq!(rs.counts().rs_nonce_challenges, 1);

    // refresh_token: a token bound to the key (oidc-provider's introspection says cnf.jkt,
    // and the resource server requires the proof key to match it).
    let file = agent.dir().join("refresh-token");
    std::fs::write(&file, &provider.refresh_token).unwrap();
    let (stdout, stderr) = dpop_ok(
        &agent,
        &[
            "token",
            "-v",
            "--grant",
            "refresh_token",
            "--key",
            "k",
            "--issuer",
            &provider.issuer,
            "--client-id",
            "dpop-client",
            "--client-secret-env",
            SECRET_VAR,
            "--refresh-token-file",
            file.to_str().unwrap(),
            "--json",
        ],
    );
    // Another process, and the agent already holds oidc-provider's nonce: no challenge.
    assert!(stderr.contains("answered 0 use_dpop_nonce"), "{stderr}");
    let token: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(token["token_type"], "DPoP");
    assert!(token["refresh_token"].is_string(), "{token}");
    let access = agent.dir().join("access-token");
    std::fs::write(&access, token["access_token"].as_str().unwrap()).unwrap();
    let (body, _) = dpop_ok(
        &agent,
        &[
            "request",
            &api,
            "--access-token-file",
            access.to_str().unwrap(),
        ],
    );
    assert!(body.contains("\"path\":\"/api/items\""), "{body}");
    // oidc-provider's own resource: userinfo takes the DPoP-bound token with a proof.
    let userinfo = format!("{}/me", provider.issuer);
    let (body, _) = dpop_ok(
        &agent,
        &[
            "request",
            &userinfo,
            "--access-token-file",
            access.to_str().unwrap(),
        ],
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["sub"],
        "alice"
    );

    // The same token from another key's proof is refused: it is bound to k.
    agent.client().generate_key("other").unwrap();
    let out = agent
        .dpop_command()
        .args(["request", &api, "--key", "other", "--access-token-file"])
        .arg(&access)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(22));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid_dpop_proof") || err.contains("invalid_token"),
        "{err}"
    );
    assert_ne!(key.jkt, agent.client().list_keys().unwrap()[1].jkt);
}
