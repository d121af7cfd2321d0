//! `lock` / `unlock` and `status` against the real agent: while locked every signing and
//! key-changing request is refused with `locked`, a wrong passphrase is refused late, and the
//! right one restores everything.

use std::time::{Duration, Instant};

use dpop_client::ProofRequest;
use dpop_protocol::ErrorCode;
use dpop_tests::{AgentOptions, TestAgent, verify_proof};

const URL: &str = "https://api.example.com/v1/items";

#[test]
fn locked_agent_refuses_signing_and_key_changes_until_unlocked() {
    let agent = TestAgent::start(AgentOptions::new());
    let mut client = agent.client();
    client.generate_key("k").unwrap();
    let status = client.status().unwrap();
    assert!(!status.locked);
    assert_eq!(status.keys, 1);
    assert_eq!(status.pid, agent.pid().unwrap());
    assert!(status.agent.starts_with("dpop-agent/"));

    client.lock("lock words").unwrap();
    assert!(client.status().unwrap().locked);
    // Another connection (another process) is locked out too.
    let mut other = agent.client();
    let code = |e: dpop_client::Error| e.code();
    assert_eq!(
        code(
            other
                .sign_proof("k", &ProofRequest::new("GET", URL))
                .unwrap_err()
        ),
        Some(ErrorCode::Locked)
    );
    assert_eq!(
        code(other.generate_key("k2").unwrap_err()),
        Some(ErrorCode::Locked)
    );
    assert_eq!(
        code(other.delete_key("k").unwrap_err()),
        Some(ErrorCode::Locked)
    );
    assert_eq!(
        code(other.lock("again").unwrap_err()),
        Some(ErrorCode::Locked),
        "a locked agent is not locked twice (the first passphrase stays)"
    );
    // Public information stays available.
    assert_eq!(other.list_keys().unwrap().len(), 1);

    // Wrong passphrases: refused, each later than the one before.
    let started = Instant::now();
    assert_eq!(
        code(other.unlock("wrong").unwrap_err()),
        Some(ErrorCode::WrongPassphrase)
    );
    let first = started.elapsed();
    let started = Instant::now();
    assert_eq!(
        code(other.unlock("wrong again").unwrap_err()),
        Some(ErrorCode::WrongPassphrase)
    );
    let second = started.elapsed();
    assert!(first >= Duration::from_millis(100), "{first:?}");
    assert!(second >= Duration::from_millis(200), "{second:?}");
    assert!(client.status().unwrap().locked, "still locked");

    client.unlock("lock words").unwrap();
    let proof = other
        .sign_proof("k", &ProofRequest::new("GET", URL))
        .unwrap();
    verify_proof(&proof, "GET", URL, None);
    assert_eq!(
        code(client.unlock("lock words").unwrap_err()),
        Some(ErrorCode::NotLocked)
    );

    let log = agent.stderr_log();
    for secret in ["lock words", "wrong again"] {
        assert!(!log.contains(secret), "the log holds {secret:?}");
    }
    assert!(log.contains("code=locked"), "refusals are audited:\n{log}");
}

#[test]
fn an_empty_lock_passphrase_is_refused() {
    let agent = TestAgent::start(AgentOptions::new());
    let err = agent.client().lock("").unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BadRequest));
    assert!(!agent.client().status().unwrap().locked);
}
