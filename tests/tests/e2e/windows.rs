//! The Windows builds of the agent and the CLI, under Wine: the named pipe, its default
//! per-user name, the first-instance rule, who the client is, and keys kept across restarts
//! in the Windows file layout. Wine runs everything as one user and does not enforce ACLs,
//! so the pipe's DACL and the client's check of the pipe's owner are exercised only in the
//! case where they allow (see docs/windows.md for what only a Windows machine can show).

use dpop_tests::{
    ResourceServer, ServerOptions, TokenIssuer, WindowsAgent, new_temp_dir, unique_pipe,
    verify_proof, windows_binaries, windows_path,
};

const URL: &str = "https://api.example.com/items";

#[test]
fn the_cli_gets_proofs_from_the_agent_over_a_named_pipe_and_keys_survive_a_restart() {
    let pipe = unique_pipe();
    let agent = WindowsAgent::start(Some(&pipe));
    assert!(
        agent.log().contains(&format!("socket={pipe}")),
        "{}",
        agent.log()
    );
    let generated = agent.dpop_ok(&["keys", "generate", "--key", "win"]);
    assert!(generated.contains("generated win"), "{generated}");
    let proof = agent.dpop_ok(&["proof", "--method", "GET", "--url", URL]);
    let first = verify_proof(proof.trim(), "GET", URL, None);

    // The key file was written the Windows way (no modes; a link into place), sealed under
    // the passphrase: a new agent on the same data directory signs with the same key.
    let dir = agent.stop();
    let keys = dpop_tests::files_under(&dir.path().join("data"));
    assert!(
        keys.iter()
            .any(|f| f.to_string_lossy().ends_with("win.json")),
        "no key file among {keys:?}"
    );
    let agent = WindowsAgent::start_in(dir, Some(&pipe), &[]);
    let proof = agent.dpop_ok(&["proof", "--key", "win", "--method", "POST", "--url", URL]);
    let again = verify_proof(proof.trim(), "POST", URL, None);
    assert_eq!(again.jkt, first.jkt);
}

#[test]
fn clients_find_their_users_default_pipe_and_a_second_agent_is_refused_it() {
    let agent = WindowsAgent::start(None);
    let log = agent.log();
    assert!(
        log.contains(r"socket=\\.\pipe\dpop-agent-S-1-5-"),
        "not the per-user default pipe: {log}"
    );
    // No DPOP_AUTH_SOCK: the client names the same pipe from its own user's SID.
    let status = agent.dpop_ok(&["status"]);
    assert!(status.contains("backends: software"), "{status}");

    // The name is taken: the second agent must not become a second instance of it.
    let dir = new_temp_dir();
    let (ok, log) = WindowsAgent::run_to_exit(dir.path(), None, &[]);
    assert!(!ok, "a second agent started on a taken pipe: {log}");
    assert!(log.contains("exists already"), "{log}");
    assert!(agent.dpop_ok(&["status"]).contains("keys:     0"));
}

#[test]
fn the_agent_knows_the_client_executable_and_enforces_a_client_policy() {
    let pipe = unique_pipe();
    let agent = WindowsAgent::start(Some(&pipe));
    agent.dpop_ok(&["keys", "generate", "--key", "k"]);
    agent.dpop_ok(&["proof", "--method", "GET", "--url", URL]);
    let log = agent.log();
    let audit = log
        .lines()
        .find(|l| l.contains("audit") && l.contains("sign_proof allowed"))
        .unwrap_or_else(|| panic!("no audit line: {log}"));
    // The pipe client's pid, and its image as Windows names it.
    let dpop_exe = windows_path(&windows_binaries().dpop);
    assert!(audit.contains(&format!("exe={dpop_exe}")), "{audit}");
    assert!(audit.contains("pid="), "{audit}");

    // Allowed: dpop.exe itself (the policy stores the path as the process image names it).
    agent.dpop_ok(&["keys", "policy", "--key", "k", "--allow-client", &dpop_exe]);
    agent.dpop_ok(&["proof", "--method", "GET", "--url", URL]);
    // A key only another program may use: dpop.exe is refused. (A second key: widening k's
    // list to that program would be a loosening, which needs the user's yes.)
    let other = windows_path(&windows_binaries().agent);
    agent.dpop_ok(&["keys", "generate", "--key", "k2", "--allow-client", &other]);
    let refused = agent.dpop(&["proof", "--key", "k2", "--method", "GET", "--url", URL]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("client_not_allowed"), "{stderr}");
}

#[test]
fn clients_at_once_each_get_an_instance_of_the_pipe() {
    let pipe = unique_pipe();
    let agent = WindowsAgent::start(Some(&pipe));
    agent.dpop_ok(&["keys", "generate", "--key", "k"]);
    let jkt = agent.dpop_ok(&["thumbprint"]).trim().to_owned();
    let proofs: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|_| s.spawn(|| agent.dpop_ok(&["proof", "--method", "GET", "--url", URL])))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for proof in proofs {
        assert_eq!(verify_proof(proof.trim(), "GET", URL, None).jkt, jkt);
    }
}

#[test]
fn the_background_start_and_kill_are_refused_with_the_way_to_run_it() {
    for args in [&[][..], &["-k"][..]] {
        let mut command = dpop_tests::wine().command(&windows_binaries().agent);
        let out = command.args(args).output().expect("running dpop-agent.exe");
        assert!(!out.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("Windows"), "{args:?}: {stderr}");
    }
}

#[test]
fn dpop_request_calls_an_api_through_the_async_client_and_answers_the_nonce_challenge() {
    let pipe = unique_pipe();
    let agent = WindowsAgent::start(Some(&pipe));
    agent.dpop_ok(&["keys", "generate", "--key", "k"]);
    let jkt = agent.dpop_ok(&["thumbprint"]).trim().to_owned();
    let issuer = TokenIssuer::new();
    let server = ResourceServer::start(
        &issuer,
        ServerOptions {
            nonce_secret: Some("windows-test-nonce-secret-0123456789".to_owned()),
            args: vec!["--require-nonce".into()],
            ..ServerOptions::default()
        },
    );
    let token_file = agent.dir().join("token");
    std::fs::write(&token_file, issuer.token("alice", Some(&jkt))).unwrap();
    let url = server.url("/v1/items");
    let token_arg = windows_path(&token_file);
    let out = agent.dpop(&[
        "request",
        url.as_str(),
        "--key",
        "k",
        "--access-token-file",
        token_arg.as_str(),
        "-v",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{}", server.log());
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(body["sub"], "alice");
    assert_eq!(body["jkt"], jkt.as_str());
    // The nonce went to the agent over the pipe (report_nonce) and into the retried proof.
    assert!(stderr.contains("retried once"), "{stderr}");
}
