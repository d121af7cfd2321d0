//! The agent's audit log (tracing target `audit`): one line per signing decision, allowed or
//! refused and why, with the key, its jkt, the method and origin, and the client's pid and
//! executable; never the access token, the proof, or the URL's path and query.

use dpop_client::ProofRequest;
use dpop_tests::{AgentOptions, TestAgent};

const TOKEN: &str = "audit-secret-token-Kz8mXK1EalYz";

#[test]
fn every_signing_decision_is_audited_without_secrets() {
    let agent = TestAgent::start(AgentOptions::new());
    let mut client = agent.client();
    let key = client.generate_key("audited").unwrap();
    let proof = client
        .sign_proof(
            "audited",
            &ProofRequest::new("POST", "https://api.example.com/v1/secret-path?q=private")
                .access_token(TOKEN),
        )
        .unwrap();
    let refused = client
        .sign_proof(
            "missing",
            &ProofRequest::new("GET", "https://api.example.com/x"),
        )
        .unwrap_err();
    assert_eq!(refused.code(), Some(dpop_protocol::ErrorCode::KeyNotFound));

    let log = agent.stderr_log();
    let audit: Vec<&str> = log.lines().filter(|l| l.contains(" audit: ")).collect();
    assert_eq!(audit.len(), 2, "one line per decision:\n{log}");
    let me = std::process::id();
    let exe = std::env::current_exe().unwrap();
    let allowed = audit[0];
    for part in [
        "sign_proof allowed".to_owned(),
        "key=audited".to_owned(),
        format!("jkt={}", key.jkt),
        "htm=POST".to_owned(),
        "origin=https://api.example.com".to_owned(),
        format!("pid={me}"),
        format!("exe={}", exe.display()),
    ] {
        assert!(allowed.contains(&part), "{part:?} in {allowed}");
    }
    let denied = audit[1];
    for part in ["sign_proof refused", "key=missing", "code=key_not_found"] {
        assert!(denied.contains(part), "{part:?} in {denied}");
    }
    for secret in [TOKEN, proof.as_str(), "secret-path", "q=private"] {
        assert!(!log.contains(secret), "the log holds {secret:?}:\n{log}");
    }
}
