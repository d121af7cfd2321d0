//! Per-key policies enforced by the real agent: allowed origins (exact and `*.` subdomains),
//! allowed client executables, expiry (`set_policy` and the agent's `-t`), confirm-on-use
//! through a scripted askpass answering yes or no, persistence across restarts, and refusals of
//! bad policies that leave nothing behind. Who may change a policy: `policy_guard.rs`.

use std::fs;
use std::path::Path;
use std::time::Duration;

use dpop_client::ProofRequest;
use dpop_protocol::{ErrorCode, KeyPolicy};
use dpop_tests::agent::Askpass;
use dpop_tests::{AgentOptions, TestAgent, new_temp_dir, unix_now, verify_proof};

fn sign(agent: &TestAgent, key: &str, url: &str) -> Result<String, dpop_client::Error> {
    agent
        .client()
        .sign_proof(key, &ProofRequest::new("GET", url))
}

fn code(result: Result<String, dpop_client::Error>) -> Option<ErrorCode> {
    result.unwrap_err().code()
}

#[test]
fn origins_exact_and_subdomains() {
    let agent = TestAgent::start(AgentOptions::new());
    let policy = KeyPolicy {
        allow_origins: vec![
            "https://API.example.com".into(),
            "https://*.svc.example.com".into(),
        ],
        ..KeyPolicy::default()
    };
    let key = agent
        .client()
        .generate_key(dpop_client::NewKey::new("k").policy(&policy))
        .unwrap();
    assert_eq!(key.policy.allow_origins, policy.allow_origins);
    for url in [
        "https://api.example.com/v1/items",
        "https://api.example.com:443/x",
        "https://a.svc.example.com/x",
        "https://a.b.svc.example.com/x",
    ] {
        verify_proof(&sign(&agent, "k", url).unwrap(), "GET", url, None);
    }
    for url in [
        "https://evil.example.com/x",
        "http://api.example.com/x",
        "https://api.example.com:8443/x",
        "https://svc.example.com/x",
        "https://a.svc.example.com.evil.org/x",
    ] {
        let err = sign(&agent, "k", url).unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::OriginNotAllowed), "{url}");
        assert!(
            err.to_string().contains("https://*.svc.example.com"),
            "{err}"
        );
    }
    // list_keys shows the policy. Lifting it takes the user's yes, and this agent has no
    // askpass to ask with (policy_guard.rs has the rest).
    let listed = agent.client().list_keys().unwrap();
    assert_eq!(listed[0].policy, policy);
    let err = agent
        .client()
        .set_policy("k", &KeyPolicy::default())
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ConfirmDenied), "{err}");
    assert_eq!(
        code(sign(&agent, "k", "https://evil.example.com/x")),
        Some(ErrorCode::OriginNotAllowed)
    );
}

#[test]
fn client_executables() {
    let agent = TestAgent::start(AgentOptions::new());
    let me = std::env::current_exe().unwrap();
    let policy = KeyPolicy {
        allow_clients: vec![me.to_string_lossy().into_owned()],
        ..KeyPolicy::default()
    };
    agent
        .client()
        .generate_key(dpop_client::NewKey::new("mine").policy(&policy))
        .unwrap();
    sign(&agent, "mine", "https://rs.example/").unwrap();
    // Another program (the dpop CLI) is refused, and told which programs may.
    let out = agent.dpop(&[
        "proof",
        "--key",
        "mine",
        "-X",
        "GET",
        "--url",
        "https://rs.example/",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("client_not_allowed"), "{stderr}");
    assert!(stderr.contains(&*me.to_string_lossy()), "{stderr}");

    // Relative or missing programs are not a policy.
    for bad in ["dpop", "/nonexistent/dpop"] {
        let err = agent
            .client()
            .set_policy(
                "mine",
                &KeyPolicy {
                    allow_clients: vec![bad.into()],
                    ..KeyPolicy::default()
                },
            )
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::InvalidPolicy), "{bad}");
    }
}

#[test]
fn expiry_by_policy_and_by_default_lifetime() {
    // A later expiry loosens the policy: the user says yes.
    let dir = new_temp_dir();
    let yes = Askpass::new(dir.path(), "yes", 0);
    let agent = TestAgent::start(AgentOptions::new().env("DPOP_ASKPASS", yes.path()));
    agent.client().generate_key("k").unwrap();
    let expired = KeyPolicy {
        expires_at: Some(unix_now() - 1),
        ..KeyPolicy::default()
    };
    agent.client().set_policy("k", &expired).unwrap();
    assert_eq!(
        code(sign(&agent, "k", "https://rs.example/")),
        Some(ErrorCode::KeyExpired)
    );
    let later = KeyPolicy {
        expires_at: Some(unix_now() + 3600),
        ..KeyPolicy::default()
    };
    agent.client().set_policy("k", &later).unwrap();
    assert_eq!(yes.questions().len(), 1, "the later expiry was asked");
    sign(&agent, "k", "https://rs.example/").unwrap();

    // -t 1: keys added without a lifetime get one second.
    let agent = TestAgent::start(AgentOptions::new().arg("-t").arg("1s"));
    let key = agent.client().generate_key("short").unwrap();
    let expires_at = key.policy.expires_at.expect("the default lifetime applies");
    assert!(
        (unix_now()..=unix_now() + 2).contains(&expires_at),
        "{expires_at}"
    );
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(
        code(sign(&agent, "short", "https://rs.example/")),
        Some(ErrorCode::KeyExpired)
    );
    let bad = TestAgent::try_start(AgentOptions::new().arg("-t").arg("soon"));
    let Err(failure) = bad else {
        panic!("a bad lifetime stops the start")
    };
    assert!(failure.stderr.contains("lifetime"), "{}", failure.stderr);
}

/// An askpass that answers `answer` (exit status) and logs its questions.
fn askpass(dir: &Path, name: &str, answer: u8) -> std::path::PathBuf {
    Askpass::new(dir, name, answer).path().to_owned()
}

fn questions(dir: &Path, name: &str) -> Vec<String> {
    fs::read_to_string(dir.join(format!("{name}.log")))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn confirm_on_use_asks_through_askpass() {
    let dir = new_temp_dir();
    let yes = askpass(dir.path(), "yes", 0);
    let no = askpass(dir.path(), "no", 1);
    let confirm = KeyPolicy {
        confirm: true,
        ..KeyPolicy::default()
    };

    let agent = TestAgent::start(AgentOptions::new().env("DPOP_ASKPASS", &yes));
    agent
        .client()
        .generate_key(dpop_client::NewKey::new("asked").policy(&confirm))
        .unwrap();
    sign(&agent, "asked", "https://api.example.com/v1").unwrap();
    sign(&agent, "asked", "https://api.example.com/v2").unwrap();
    let asked = questions(dir.path(), "yes");
    assert_eq!(asked.len(), 2, "asked for each signature: {asked:?}");
    let me = std::env::current_exe().unwrap();
    assert!(asked[0].starts_with("confirm|"), "{asked:?}");
    for part in [
        "\"asked\"",
        "https://api.example.com",
        &*me.to_string_lossy(),
        &format!("pid {}", std::process::id()),
    ] {
        assert!(asked[0].contains(part), "{part:?} in {}", asked[0]);
    }
    assert!(
        !asked[0].contains("/v1"),
        "the question names the origin, not the path"
    );

    // Remembered for the same client for a while: one more question, then none.
    let remember = KeyPolicy {
        confirm: true,
        confirm_remember_secs: Some(600),
        ..KeyPolicy::default()
    };
    // Remembering a yes loosens the policy: asked too.
    agent.client().set_policy("asked", &remember).unwrap();
    let asked = questions(dir.path(), "yes");
    assert_eq!(asked.len(), 3);
    assert!(
        asked[2].contains("confirm-remember: 0 s -> 600 s"),
        "{}",
        asked[2]
    );
    let mut client = agent.client();
    for _ in 0..3 {
        client
            .sign_proof(
                "asked",
                &ProofRequest::new("GET", "https://api.example.com/"),
            )
            .unwrap();
    }
    assert_eq!(questions(dir.path(), "yes").len(), 4);

    // An askpass that says no.
    let agent = TestAgent::start(AgentOptions::new().env("DPOP_ASKPASS", &no));
    agent
        .client()
        .generate_key(dpop_client::NewKey::new("asked").policy(&confirm))
        .unwrap();
    assert_eq!(
        code(sign(&agent, "asked", "https://api.example.com/")),
        Some(ErrorCode::ConfirmDenied)
    );
    assert_eq!(questions(dir.path(), "no").len(), 1);
    assert!(agent.stderr_log().contains("code=confirm_denied"));

    // No askpass at all: refused, saying why.
    let agent = TestAgent::start(AgentOptions::new());
    agent
        .client()
        .generate_key(dpop_client::NewKey::new("asked").policy(&confirm))
        .unwrap();
    let err = sign(&agent, "asked", "https://api.example.com/").unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ConfirmDenied));
    assert!(err.to_string().contains("ASKPASS"), "{err}");
}

#[test]
fn policies_persist_with_their_key_and_go_with_it() {
    // Deleting a key with a policy takes the user's yes.
    let dir = new_temp_dir();
    let yes = Askpass::new(dir.path(), "yes", 0);
    let mut agent = TestAgent::start(
        AgentOptions::new()
            .passphrase_env("pass")
            .env("DPOP_ASKPASS", yes.path()),
    );
    let policy = KeyPolicy {
        allow_origins: vec!["https://api.example.com".into()],
        ..KeyPolicy::default()
    };
    agent
        .client()
        .generate_key(dpop_client::NewKey::new("kept").policy(&policy))
        .unwrap();
    let record = agent.data_dir().join("policies/kept.json");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&record).unwrap().permissions().mode() & 0o777,
        0o600
    );

    agent.restart();
    assert_eq!(agent.client().list_keys().unwrap()[0].policy, policy);
    assert_eq!(
        code(sign(&agent, "kept", "https://other.example/")),
        Some(ErrorCode::OriginNotAllowed)
    );

    // A bad policy makes no key.
    let bad = KeyPolicy {
        allow_origins: vec!["https://api.example.com/path".into()],
        ..KeyPolicy::default()
    };
    let err = agent
        .client()
        .generate_key(dpop_client::NewKey::new("never").policy(&bad))
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidPolicy));
    assert_eq!(agent.client().list_keys().unwrap().len(), 1);

    // Deleting the key deletes its policy: a new key under the label has none.
    agent.client().delete_key("kept").unwrap();
    assert!(!record.exists());
    agent.client().generate_key("kept").unwrap();
    sign(&agent, "kept", "https://other.example/").unwrap();
    agent.restart();
    sign(&agent, "kept", "https://other.example/").unwrap();

    // Locked: no policy changes.
    agent.client().lock("l").unwrap();
    let err = agent.client().set_policy("kept", &policy).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Locked));
}

/// Issue 22, item 7: a remembered yes of 2^64-1 seconds made every later signature overflow
/// `Instant + Duration` and panic its connection. It is refused where it enters, naming the
/// field and the bound, and the key keeps signing.
#[test]
fn confirm_remember_is_bounded() {
    let dir = new_temp_dir();
    let yes = askpass(dir.path(), "yes", 0);
    let agent = TestAgent::start(AgentOptions::new().env("DPOP_ASKPASS", &yes));
    let remember = |secs: u64| KeyPolicy {
        confirm: true,
        confirm_remember_secs: Some(secs),
        ..KeyPolicy::default()
    };
    let year = 365 * 24 * 60 * 60;
    for huge in [u64::MAX, year + 1] {
        let err = agent
            .client()
            .generate_key(dpop_client::NewKey::new("never").policy(&remember(huge)))
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::InvalidPolicy), "{err}");
        assert!(err.to_string().contains("confirm_remember_secs"), "{err}");
        assert!(err.to_string().contains(&year.to_string()), "{err}");
    }
    assert!(agent.client().list_keys().unwrap().is_empty());

    agent
        .client()
        .generate_key(dpop_client::NewKey::new("asked").policy(&remember(60)))
        .unwrap();
    let err = agent
        .client()
        .set_policy("asked", &remember(u64::MAX))
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidPolicy), "{err}");
    assert!(err.to_string().contains("confirm_remember_secs"), "{err}");
    // The key still signs, asked once and then remembered, on the same connection.
    let mut client = agent.client();
    for _ in 0..2 {
        let proof = client
            .sign_proof(
                "asked",
                &ProofRequest::new("GET", "https://api.example.com/"),
            )
            .unwrap();
        verify_proof(&proof, "GET", "https://api.example.com/", None);
    }
    // The longest allowed is a year (remembering longer is asked), and it signs too.
    agent.client().set_policy("asked", &remember(year)).unwrap();
    assert_eq!(questions(dir.path(), "yes").len(), 2);
    for _ in 0..2 {
        client
            .sign_proof(
                "asked",
                &ProofRequest::new("GET", "https://api.example.com/"),
            )
            .unwrap();
    }
    assert_eq!(questions(dir.path(), "yes").len(), 3);
}

/// Issue 22, item 7: a client whose path holds a newline wrote a second line into the
/// question, which could name another program. Control characters reach the askpass escaped.
#[test]
fn the_question_escapes_control_characters() {
    let dir = new_temp_dir();
    let yes = askpass(dir.path(), "yes", 0);
    let agent = TestAgent::start(AgentOptions::new().env("DPOP_ASKPASS", &yes));
    agent
        .client()
        .generate_key(dpop_client::NewKey::new("asked").policy(&KeyPolicy {
            confirm: true,
            ..KeyPolicy::default()
        }))
        .unwrap();
    // The real dpop, installed under a directory whose name holds a newline and an escape.
    let odd = dir.path().join("x\nasked by /usr/bin/ssh\u{1b}[1A");
    fs::create_dir_all(&odd).unwrap();
    let dpop = odd.join("dpop");
    fs::copy(&dpop_tests::binaries().dpop, &dpop).unwrap();
    // The same environment as the suite's own dpop (the agent's socket).
    let command = agent.dpop_command();
    let out = std::process::Command::new(&dpop)
        .envs(command.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .env_remove("RUST_LOG")
        .args([
            "proof",
            "--key",
            "asked",
            "-X",
            "GET",
            "--url",
            "https://rs.example/",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let asked = questions(dir.path(), "yes");
    assert_eq!(asked.len(), 1, "one question on one line: {asked:?}");
    assert!(
        asked[0].contains("x\\nasked by /usr/bin/ssh\\u{1b}[1A/dpop"),
        "{}",
        asked[0]
    );
    assert!(!asked[0].contains('\u{1b}'), "{}", asked[0]);
}
