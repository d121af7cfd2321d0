//! `lock` / `unlock` and `status` against the real agent: while locked every signing and
//! key-changing request is refused with `locked`, a wrong passphrase is refused late, and the
//! right one restores everything. A lock also ends every signature that waits for the
//! user's confirmation (issue 22, item 3), and that queue is bounded.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use dpop_client::ProofRequest;
use dpop_protocol::{ErrorCode, KeyPolicy};
use dpop_tests::wait::wait_until;
use dpop_tests::{AgentOptions, TestAgent, new_temp_dir, verify_proof};

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

/// An askpass that appends its pid to `<dir>/asked` and answers yes once `<dir>/go` exists:
/// a user who has not clicked yet.
fn waiting_askpass(dir: &Path) -> PathBuf {
    let path = dir.join("askpass");
    fs::write(
        &path,
        format!(
            "#!/bin/sh\necho $$ >> '{asked}'\nwhile [ ! -e '{go}' ]; do sleep 0.05; done\nexit 0\n",
            asked = dir.join("asked").display(),
            go = dir.join("go").display(),
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).unwrap();
    path
}

/// The pids of the askpass programs started so far.
fn asked(dir: &Path) -> Vec<u32> {
    fs::read_to_string(dir.join("asked"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Whether process `pid` has ended (gone, or a zombie not yet reaped).
fn ended(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
    }
}

fn confirmed_key(agent: &TestAgent) {
    let confirm = KeyPolicy {
        confirm: true,
        ..KeyPolicy::default()
    };
    agent
        .client()
        .generate_key(dpop_client::NewKey::new("asked").policy(&confirm))
        .unwrap();
}

/// Signs with key "asked" on a connection of its own, in a thread; the answer comes on the
/// channel.
fn sign_in_background(agent: &TestAgent) -> mpsc::Receiver<Result<String, dpop_client::Error>> {
    let (tx, rx) = mpsc::channel();
    let mut client = agent.client();
    std::thread::spawn(move || {
        let _ = tx.send(client.sign_proof("asked", &ProofRequest::new("GET", URL)));
    });
    rx
}

#[test]
fn lock_ends_a_signature_waiting_for_confirmation() {
    let dir = new_temp_dir();
    let askpass = waiting_askpass(dir.path());
    let agent = TestAgent::start(AgentOptions::new().env("DPOP_ASKPASS", &askpass));
    confirmed_key(&agent);

    let pending = sign_in_background(&agent);
    wait_until("the askpass asks", Duration::from_secs(10), || {
        !asked(dir.path()).is_empty()
    });
    let askpass_pid = asked(dir.path())[0];
    agent.client().lock("lock words").unwrap();

    // The question goes away with the lock, before the user could answer it.
    wait_until(
        "the askpass is ended by the lock",
        Duration::from_secs(5),
        || ended(askpass_pid),
    );
    // A yes now comes too late: the waiting signature was answered `locked`, not signed.
    fs::write(dir.path().join("go"), b"").unwrap();
    let answer = pending
        .recv_timeout(Duration::from_secs(10))
        .expect("the waiting signature is answered");
    assert_eq!(answer.unwrap_err().code(), Some(ErrorCode::Locked));
    assert_eq!(asked(dir.path()).len(), 1, "nobody else was asked");

    // Unlocked, the key asks again and signs.
    agent.client().unlock("lock words").unwrap();
    let proof = sign_in_background(&agent)
        .recv_timeout(Duration::from_secs(10))
        .expect("the signature is answered")
        .unwrap();
    verify_proof(&proof, "GET", URL, None);
    assert_eq!(asked(dir.path()).len(), 2);
}

/// The agent's bound on signatures waiting for confirmation.
const MAX_WAITING: usize = 8;

#[test]
fn signatures_waiting_for_confirmation_are_bounded() {
    let dir = new_temp_dir();
    let askpass = waiting_askpass(dir.path());
    let agent = TestAgent::start(AgentOptions::new().env("DPOP_ASKPASS", &askpass));
    confirmed_key(&agent);

    let waiting: Vec<_> = (0..MAX_WAITING)
        .map(|_| sign_in_background(&agent))
        .collect();
    wait_until("the askpass asks", Duration::from_secs(10), || {
        !asked(dir.path()).is_empty()
    });
    // The others reach the queue behind the first question within milliseconds.
    std::thread::sleep(Duration::from_secs(1));

    // One more is refused at once, not queued.
    let started = Instant::now();
    let extra = sign_in_background(&agent)
        .recv_timeout(Duration::from_secs(5))
        .expect("the signature over the bound is answered at once");
    let err = extra.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Busy), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));

    // The user says yes: every waiting signature is made, one question each.
    fs::write(dir.path().join("go"), b"").unwrap();
    for answer in waiting {
        let proof = answer
            .recv_timeout(Duration::from_secs(20))
            .expect("a waiting signature is answered")
            .unwrap();
        verify_proof(&proof, "GET", URL, None);
    }
    assert_eq!(asked(dir.path()).len(), MAX_WAITING);
    // Room again.
    sign_in_background(&agent)
        .recv_timeout(Duration::from_secs(10))
        .expect("answered")
        .unwrap();
}

/// Issue 22, item 2: a policy change that waits for the user's yes ends with a lock as a
/// signature does: answered `locked`, its askpass ended, the policy as it was, also after a
/// late yes.
#[test]
fn lock_ends_a_policy_change_waiting_for_confirmation() {
    let dir = new_temp_dir();
    let askpass = waiting_askpass(dir.path());
    let agent = TestAgent::start(AgentOptions::new().env("DPOP_ASKPASS", &askpass));
    let origin = KeyPolicy {
        allow_origins: vec!["https://api.example.com".into()],
        ..KeyPolicy::default()
    };
    agent
        .client()
        .generate_key(dpop_client::NewKey::new("k").policy(&origin))
        .unwrap();
    let (tx, pending) = mpsc::channel();
    let mut client = agent.client();
    std::thread::spawn(move || {
        let _ = tx.send(client.set_policy("k", &KeyPolicy::default()));
    });
    wait_until("the askpass asks", Duration::from_secs(10), || {
        !asked(dir.path()).is_empty()
    });
    let askpass_pid = asked(dir.path())[0];
    agent.client().lock("lock words").unwrap();
    wait_until(
        "the askpass is ended by the lock",
        Duration::from_secs(5),
        || ended(askpass_pid),
    );
    fs::write(dir.path().join("go"), b"").unwrap();
    let answer = pending
        .recv_timeout(Duration::from_secs(10))
        .expect("the waiting change is answered");
    assert_eq!(answer.unwrap_err().code(), Some(ErrorCode::Locked));
    assert_eq!(agent.client().list_keys().unwrap()[0].policy, origin);
}
