//! Issue 22, items 2 and 7: a key's policy binds the clients it refuses. On the real agent
//! with a scripted askpass: a refused client cannot clear or widen a policy and then sign,
//! nor delete a key that has one (its key file and token object stay); tightening needs no
//! askpass; the user's yes allows a loosening, a no refuses it, and without an askpass the
//! refusal says why. And who the client is: the process is identified at connect, so an exec
//! after connecting does not pass for the new program, a yes remembered for a process is not
//! inherited by a later process under the same pid, and an allowed program that is gone does
//! not stop the agent from starting.

use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use dpop_client::{NewKey, ProofRequest};
use dpop_protocol::{ErrorCode, KeyPolicy};
use dpop_tests::agent::Askpass;
use dpop_tests::{AgentOptions, SoftHsmToken, TestAgent, binaries, new_temp_dir, unix_now};

const URL: &str = "https://api.example.com/x";

fn sign(agent: &TestAgent, key: &str, url: &str) -> Result<String, dpop_client::Error> {
    agent
        .client()
        .sign_proof(key, &ProofRequest::new("GET", url))
}

fn refused<T: std::fmt::Debug>(result: Result<T, dpop_client::Error>) -> (ErrorCode, String) {
    let err = result.expect_err("refused");
    (err.code().expect("a wire error"), err.to_string())
}

/// Only the dpop CLI may use the key: this test program is a client the policy refuses.
fn cli_only() -> KeyPolicy {
    KeyPolicy {
        allow_clients: vec![
            fs::canonicalize(&binaries().dpop)
                .unwrap()
                .to_string_lossy()
                .into_owned(),
        ],
        ..KeyPolicy::default()
    }
}

fn origin_only() -> KeyPolicy {
    KeyPolicy {
        allow_origins: vec!["https://api.example.com".into()],
        ..KeyPolicy::default()
    }
}

fn software_key_file(agent: &TestAgent, label: &str) -> PathBuf {
    agent
        .data_dir()
        .join("software")
        .join(format!("{label}.json"))
}

/// Without an askpass: a client the key refuses cannot clear or widen its policy, nor delete
/// it; a client the key allows cannot loosen it either. Each refusal says why; the policy,
/// the key file and the key are as before.
#[test]
fn without_an_askpass_a_policy_cannot_be_undone() {
    let agent = TestAgent::start(AgentOptions::new().passphrase_env("pass"));
    agent
        .client()
        .generate_key(NewKey::new("cli").policy(&cli_only()))
        .unwrap();
    agent
        .client()
        .generate_key(NewKey::new("origin").policy(&origin_only()))
        .unwrap();
    let (code, _) = refused(sign(&agent, "cli", URL));
    assert_eq!(code, ErrorCode::ClientNotAllowed);

    let me = std::env::current_exe().unwrap();
    let widened = KeyPolicy {
        allow_clients: vec![me.to_string_lossy().into_owned()],
        ..KeyPolicy::default()
    };
    for attempt in [KeyPolicy::default(), widened.clone()] {
        let (code, message) = refused(agent.client().set_policy("cli", &attempt));
        assert_eq!(code, ErrorCode::ClientNotAllowed, "{message}");
        assert!(message.contains("may be managed only by"), "{message}");
        assert!(message.contains(&cli_only().allow_clients[0]), "{message}");
        assert!(message.contains("ASKPASS"), "{message}");
    }
    // Even a tightening is not for a client the key refuses.
    let tighter = KeyPolicy {
        confirm: true,
        ..cli_only()
    };
    let (code, _) = refused(agent.client().set_policy("cli", &tighter));
    assert_eq!(code, ErrorCode::ClientNotAllowed);
    let (code, message) = refused(agent.client().delete_key("cli"));
    assert_eq!(code, ErrorCode::ClientNotAllowed, "{message}");

    // A client the key allows (any, here) cannot loosen it either.
    let (code, message) = refused(agent.client().set_policy("origin", &KeyPolicy::default()));
    assert_eq!(code, ErrorCode::ConfirmDenied, "{message}");
    assert!(
        message.contains("allow-origin: https://api.example.com -> (any)")
            && message.contains("loosens")
            && message.contains("ASKPASS"),
        "{message}"
    );
    let (code, message) = refused(agent.client().delete_key("origin"));
    assert_eq!(code, ErrorCode::ConfirmDenied, "{message}");
    assert!(message.contains("delete"), "{message}");

    // The audit log has the refusals.
    let log = agent.stderr_log();
    assert!(log.contains("set_policy refused"), "{log}");
    assert!(log.contains("delete_key refused"), "{log}");

    // Nothing changed: the policies hold, the keys and their files are there, across a
    // restart too.
    let (code, _) = refused(sign(&agent, "cli", URL));
    assert_eq!(code, ErrorCode::ClientNotAllowed);
    let (code, _) = refused(sign(&agent, "origin", "https://evil.example/"));
    assert_eq!(code, ErrorCode::OriginNotAllowed);
    for label in ["cli", "origin"] {
        assert!(software_key_file(&agent, label).exists(), "{label}");
    }
    let mut agent = agent;
    agent.restart();
    let keys = agent.client().list_keys().unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0].policy, cli_only());
    assert_eq!(keys[1].policy, origin_only());
}

/// A key on a token with a policy: a delete without the user's yes leaves its objects on the
/// token.
#[test]
fn a_token_key_with_a_policy_is_not_deleted_without_a_yes() {
    let token = SoftHsmToken::create("guard", "pin-Gd72Lq", "so-Gd72Lq");
    let agent = TestAgent::start(AgentOptions::new().pkcs11(&token));
    agent
        .client()
        .generate_key(NewKey::new("hsm").backend("pkcs11").policy(&origin_only()))
        .unwrap();
    let (code, _) = refused(agent.client().delete_key("hsm"));
    assert_eq!(code, ErrorCode::ConfirmDenied);
    let objects = token.list_objects(token.pin(), None);
    assert!(
        objects.contains("hsm"),
        "the key's objects are on the token: {objects}"
    );
    sign(&agent, "hsm", URL).unwrap();
}

/// Tightening is free, with no askpass: narrower origins, confirm added, a shorter lifetime;
/// also by a key's allowed client. A key without a policy is deleted as before.
#[test]
fn tightening_needs_no_askpass() {
    let agent = TestAgent::start(AgentOptions::new());
    let two = KeyPolicy {
        allow_origins: vec![
            "https://api.example.com".into(),
            "https://*.example.org".into(),
        ],
        expires_at: Some(unix_now() + 3600),
        ..KeyPolicy::default()
    };
    agent
        .client()
        .generate_key(NewKey::new("k").policy(&two))
        .unwrap();
    let steps = [
        KeyPolicy {
            allow_origins: vec![
                "https://api.example.com".into(),
                "https://a.example.org".into(),
            ],
            ..two.clone()
        },
        KeyPolicy {
            allow_origins: vec!["https://api.example.com".into()],
            expires_at: Some(unix_now() + 60),
            ..two.clone()
        },
        KeyPolicy {
            allow_origins: vec!["https://api.example.com".into()],
            expires_at: Some(unix_now() + 60),
            confirm: true,
            ..two.clone()
        },
    ];
    for step in &steps {
        let set = agent.client().set_policy("k", step).unwrap();
        assert_eq!(&set.policy, step);
    }
    // A key only this program may use: it tightens it itself.
    let me = fs::canonicalize(std::env::current_exe().unwrap()).unwrap();
    let mine = KeyPolicy {
        allow_clients: vec![me.to_string_lossy().into_owned()],
        ..KeyPolicy::default()
    };
    agent
        .client()
        .generate_key(NewKey::new("mine").policy(&mine))
        .unwrap();
    agent
        .client()
        .set_policy(
            "mine",
            &KeyPolicy {
                allow_origins: vec!["https://api.example.com".into()],
                ..mine.clone()
            },
        )
        .unwrap();
    sign(&agent, "mine", URL).unwrap();
    agent.client().generate_key("plain").unwrap();
    agent.client().delete_key("plain").unwrap();
}

/// With an askpass: the user's yes lets a refused client clear the policy (the question names
/// the program, its pid and exactly what changes) and then sign, and delete a key with a
/// policy; a no refuses both and changes nothing.
#[test]
fn the_users_answer_decides_a_loosening() {
    let dir = new_temp_dir();
    let no = Askpass::new(dir.path(), "no", 1);
    let agent = TestAgent::start(
        AgentOptions::new()
            .passphrase_env("pass")
            .env("DPOP_ASKPASS", no.path()),
    );
    agent
        .client()
        .generate_key(NewKey::new("cli").policy(&cli_only()))
        .unwrap();
    let (code, message) = refused(agent.client().set_policy("cli", &KeyPolicy::default()));
    assert_eq!(code, ErrorCode::ConfirmDenied, "{message}");
    let (code, _) = refused(agent.client().delete_key("cli"));
    assert_eq!(code, ErrorCode::ConfirmDenied);
    assert_eq!(no.questions().len(), 2, "{:?}", no.questions());
    let (code, _) = refused(sign(&agent, "cli", URL));
    assert_eq!(code, ErrorCode::ClientNotAllowed);
    assert!(software_key_file(&agent, "cli").exists());

    let yes = Askpass::new(dir.path(), "yes", 0);
    let mut agent = agent;
    agent.restart_with(
        AgentOptions::new()
            .passphrase_env("pass")
            .env("DPOP_ASKPASS", yes.path()),
    );
    let cleared = agent
        .client()
        .set_policy("cli", &KeyPolicy::default())
        .unwrap();
    assert!(cleared.policy.is_empty());
    let asked = yes.questions();
    assert_eq!(asked.len(), 1, "{asked:?}");
    let me = std::env::current_exe().unwrap();
    let dpop = fs::canonicalize(&binaries().dpop).unwrap();
    for part in [
        "confirm|Allow ",
        &*me.to_string_lossy(),
        &format!("(pid {})", std::process::id()),
        "change the policy of DPoP key \"cli\"",
        &format!("allow-client: {} -> (any)", dpop.display()),
    ] {
        assert!(asked[0].contains(part), "{part:?} in {}", asked[0]);
    }
    sign(&agent, "cli", URL).unwrap();

    agent
        .client()
        .set_policy("cli", &origin_only())
        .expect("tightening: no question");
    assert_eq!(yes.questions().len(), 1);
    agent.client().delete_key("cli").unwrap();
    let asked = yes.questions();
    assert_eq!(asked.len(), 2, "{asked:?}");
    assert!(
        asked[1].contains("delete DPoP key \"cli\"")
            && asked[1].contains("allow-origin https://api.example.com"),
        "{}",
        asked[1]
    );
    assert!(!software_key_file(&agent, "cli").exists());
    assert!(agent.client().list_keys().unwrap().is_empty());
}

/// A Python process connects (and is served a `hello`, so the agent has identified it), then
/// execs `/bin/sh`, which asks for a proof over the inherited connection with a key that only
/// `/bin/sh` may use. The connection belongs to the program that opened it: refused, saying
/// that the process runs another program now. A fresh connection of a real shell would not
/// have python's path, so this is the exec alone.
#[test]
fn an_exec_after_connecting_does_not_pass_for_the_new_program() {
    dpop_tests::require_tool("python3", &["--version"], "python3");
    let agent = TestAgent::start(AgentOptions::new());
    let sh = fs::canonicalize("/bin/sh").unwrap();
    agent
        .client()
        .generate_key(NewKey::new("sh").policy(&KeyPolicy {
            allow_clients: vec![sh.to_string_lossy().into_owned()],
            ..KeyPolicy::default()
        }))
        .unwrap();
    let request = format!(r#"{{"id":2,"op":"sign_proof","key":"sh","htm":"GET","htu":"{URL}"}}"#);
    let script = r#"
import os, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(b'{"id":1,"op":"hello"}\n')
f = s.makefile("rb")
f.readline()
os.dup2(s.fileno(), 9)
os.execv("/bin/sh", ["sh", "-c", 'printf "%s\\n" "$0" >&9 && head -n 1 <&9', sys.argv[2]])
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(agent.socket())
        .arg(&request)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no reply ({e}): {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(reply["ok"], false, "{reply}");
    assert_eq!(reply["error"]["code"], "client_not_allowed", "{reply}");
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("another program than when it connected")
            && message.contains(&*sh.to_string_lossy()),
        "{message}"
    );
}

/// Writes `pid - 1` to `ns_last_pid` so that the next process gets `pid`; false where the
/// kernel does not let us (not root in the initial user namespace).
fn next_pid_is(pid: u32) -> bool {
    fs::OpenOptions::new()
        .write(true)
        .open("/proc/sys/kernel/ns_last_pid")
        .and_then(|mut f| f.write_all((pid - 1).to_string().as_bytes()))
        .is_ok()
}

/// A yes remembered for one `dpop proof` process is not inherited by a later `dpop proof` that
/// gets the same pid (made to by `ns_last_pid`): that one is asked again.
#[test]
fn a_remembered_yes_is_not_inherited_by_a_reused_pid() {
    let dir = new_temp_dir();
    let yes = Askpass::new(dir.path(), "yes", 0);
    let agent = TestAgent::start(AgentOptions::new().env("DPOP_ASKPASS", yes.path()));
    agent
        .client()
        .generate_key(NewKey::new("asked").policy(&KeyPolicy {
            confirm: true,
            confirm_remember_secs: Some(600),
            ..KeyPolicy::default()
        }))
        .unwrap();
    let proof = || {
        let mut command = agent.dpop_command();
        command
            .args(["proof", "--key", "asked", "-X", "GET", "--url", URL])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = command.spawn().unwrap();
        let pid = child.id();
        assert!(child.wait().unwrap().success());
        pid
    };
    let first = proof();
    assert_eq!(yes.questions().len(), 1);
    if !next_pid_is(first) {
        eprintln!("skipped: cannot write /proc/sys/kernel/ns_last_pid here");
        return;
    }
    // Other processes on the machine may take the pid first: try a few times.
    for _ in 0..50 {
        assert!(next_pid_is(first));
        let before = yes.questions().len();
        let pid = proof();
        if pid == first {
            assert_eq!(
                yes.questions().len(),
                before + 1,
                "the process that got pid {first} again inherited the first one's yes"
            );
            return;
        }
    }
    panic!("no process got pid {first} again in 50 tries");
}

/// An allowed program that is gone (uninstalled, or upgraded to another path) does not stop
/// the agent from starting: the start warns with the key and the path, that key refuses
/// every client, and the other keys sign.
#[test]
fn a_missing_allowed_program_refuses_only_its_key() {
    let dir = new_temp_dir();
    let program = dir.path().join("python3.12");
    fs::copy("/bin/true", &program).unwrap();
    let mut agent = TestAgent::start(AgentOptions::new().passphrase_env("pass"));
    agent
        .client()
        .generate_key(NewKey::new("gone").policy(&KeyPolicy {
            allow_clients: vec![program.to_string_lossy().into_owned()],
            ..KeyPolicy::default()
        }))
        .unwrap();
    agent.client().generate_key("other").unwrap();
    let program = fs::canonicalize(&program).unwrap();
    fs::remove_file(&program).unwrap();
    agent.restart();
    let log = agent.stderr_log();
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("gone")
            && l.contains(&*program.to_string_lossy())),
        "{log}"
    );
    let (code, _) = refused(sign(&agent, "gone", URL));
    assert_eq!(code, ErrorCode::ClientNotAllowed);
    sign(&agent, "other", URL).unwrap();
    let keys = agent.client().list_keys().unwrap();
    assert_eq!(keys[0].policy.allow_clients, [program.to_string_lossy()]);
}
