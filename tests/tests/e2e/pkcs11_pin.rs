//! The token PIN, each test on a SoftHSM2 token of its own (see `dpop_tests::pkcs11`): wrong,
//! missing and empty PINs; the PIN never shows in logs or output; the PIN prompt on a terminal,
//! in front and for a background start.

use std::path::Path;
use std::process::{Command, Output};

use dpop_tests::pkcs11::*;
use dpop_tests::{
    AgentOptions, PROCESS_TIMEOUT, SoftHsmToken, TestAgent, new_temp_dir, pkcs11_module,
    verify_proof, wait_until, write_private_file,
};

/// A wrong PIN: the agent refuses to start, says the token refused the PIN, never shows it,
/// tries it once (the token is not locked), and starts with the right PIN afterwards.
#[test]
fn wrong_pin_is_refused_once_and_never_shown() {
    let token = token("wrongpin");
    let failure = TestAgent::try_start(
        AgentOptions::new()
            .pkcs11_pin_env(&token, WRONG_PIN)
            .env("RUST_LOG", "debug"),
    )
    .expect_err("the agent started with a wrong PIN");
    assert!(
        failure.status.is_some_and(|s| !s.success()),
        "the agent should exit non-zero: {:?}\n{}",
        failure.status,
        failure.stderr
    );
    assert!(
        failure.stderr.contains("refused the PIN"),
        "the message does not say the token refused the PIN:\n{}",
        failure.stderr
    );
    assert!(
        failure.stderr.contains(&format!("\"{}\"", token.label())),
        "the message does not name the token:\n{}",
        failure.stderr
    );
    let info = inspect(&token, &["token-info"]);
    assert_eq!(info["user_pin_locked"], false, "{info}");
    assert_eq!(info["user_pin_final_try"], false, "{info}");
    assert_eq!(
        info["user_pin_count_low"], true,
        "the token saw no failed login: {info}"
    );

    let agent = TestAgent::try_start_in(
        failure.dir,
        AgentOptions::new().pkcs11(&token).env("RUST_LOG", "debug"),
    )
    .unwrap_or_else(|f| panic!("the right PIN should work after a wrong one:\n{}", f.stderr));
    let info = inspect(&token, &["token-info"]);
    assert_eq!(info["user_pin_count_low"], false, "{info}");
    let key = generate(&agent, &token, "after-wrong-pin", "ES256");
    assert_signs(&agent, &key);
    assert_stays_on_token(&token, &key, true);
    let log = agent.stderr_log();
    for pin in [WRONG_PIN, PIN] {
        assert!(!log.contains(pin), "a PIN is in the agent's log:\n{log}");
    }
}

/// A missing environment variable, an empty one, an empty or missing PIN file: the agent
/// refuses to start and names the source, without trying to log in.
#[test]
fn missing_or_empty_pin_is_a_clear_error() {
    let token = token("nopin");
    let empty_file = token.dir().join("empty-pin");
    write_private_file(&empty_file, b"\n");
    let missing_file = token.dir().join("no-such-pin-file");
    let cases = [
        (
            "unset variable",
            AgentOptions::new()
                .pkcs11_no_pin(&token)
                .arg("--pkcs11-pin-env")
                .arg("DPOP_TEST_UNSET_PIN_VARIABLE"),
            vec!["DPOP_TEST_UNSET_PIN_VARIABLE", "not set"],
        ),
        (
            "empty variable",
            AgentOptions::new().pkcs11_pin_env(&token, ""),
            vec![dpop_tests::PKCS11_PIN_VAR, "empty"],
        ),
        (
            "empty file",
            AgentOptions::new()
                .pkcs11_no_pin(&token)
                .arg("--pkcs11-pin-file")
                .arg(&empty_file),
            vec![empty_file.to_str().unwrap(), "empty"],
        ),
        (
            "missing file",
            AgentOptions::new()
                .pkcs11_no_pin(&token)
                .arg("--pkcs11-pin-file")
                .arg(&missing_file),
            vec![missing_file.to_str().unwrap()],
        ),
    ];
    for (what, options, named) in cases {
        let failure = TestAgent::try_start(options.env("RUST_LOG", "debug"))
            .err()
            .unwrap_or_else(|| panic!("{what}: the agent started without a PIN"));
        assert!(
            failure.status.is_some_and(|s| !s.success()),
            "{what}: {:?}",
            failure.status
        );
        assert!(
            failure.stderr.contains("PIN"),
            "{what}: the message does not say it is about the PIN:\n{}",
            failure.stderr
        );
        for name in named {
            assert!(
                failure.stderr.contains(name),
                "{what}: the message does not name {name:?}:\n{}",
                failure.stderr
            );
        }
    }
    let info = inspect(&token, &["token-info"]);
    assert_eq!(
        info["user_pin_count_low"], false,
        "no login should have been tried: {info}"
    );
}

/// The agent configured by TOML (`pkcs11_module`, `pkcs11_serial`, `pkcs11_pin_file`) with
/// debug logging: through key generation, import, proofs, listing, a refused `pin-value` URI
/// carrying the PIN, and deletion, the PIN appears in no output and not in the agent's log.
#[test]
fn pin_never_appears_in_logs_or_output() {
    let token = token("quiet");
    let serial = inspect(&token, &["token-info"])["serial"]
        .as_str()
        .expect("serial")
        .to_owned();
    let pin_file = token.dir().join("pin");
    write_private_file(&pin_file, format!("{PIN}\n").as_bytes());
    let config = token.dir().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "pkcs11_module = {:?}\npkcs11_serial = {serial:?}\npkcs11_pin_file = {:?}\n\
             pkcs11_allow_adopt = true\n",
            token.module().display().to_string(),
            pin_file.display().to_string()
        ),
    )
    .unwrap();
    let agent = TestAgent::start(
        AgentOptions::new()
            .arg("--config")
            .arg(&config)
            .env("SOFTHSM2_CONF", token.conf())
            .env("RUST_LOG", "debug"),
    );
    let pem = agent.dir().join("k.pem");
    dpop_tests::openssl_ec_pem(&pem);
    let mut outputs: Vec<Output> = Vec::new();
    let mut run = |args: &[&str]| {
        let out = agent.dpop(args);
        outputs.push(out.clone());
        out
    };
    let key = run(&[
        "keys",
        "generate",
        "--label",
        "quiet",
        "--backend",
        "pkcs11",
        "--json",
    ]);
    assert!(key.status.success(), "{}", stderr_of(&key));
    let key = parse_key(&String::from_utf8_lossy(&key.stdout));
    assert_token_key(&key, &token, "quiet", "ES256");
    assert!(
        key.location
            .as_deref()
            .is_some_and(|l| l.contains(&format!("serial={serial}"))),
        "{key:?}"
    );
    let imported = run(&[
        "keys",
        "import",
        pem.to_str().unwrap(),
        "--label",
        "quiet-imported",
        "--backend",
        "pkcs11",
    ]);
    assert!(imported.status.success(), "{}", stderr_of(&imported));
    let signed = run(&["proof", "--key", "quiet", "-X", "GET", "--url", URL]);
    assert!(signed.status.success(), "{}", stderr_of(&signed));
    verify_proof(
        String::from_utf8_lossy(&signed.stdout).trim(),
        "GET",
        URL,
        None,
    );
    assert!(run(&["keys", "list"]).status.success());
    assert!(run(&["keys", "list", "--json"]).status.success());
    let refused = run(&[
        "keys",
        "adopt",
        &format!("pkcs11:object=quiet;type=private?pin-value={PIN}"),
        "--label",
        "with-pin",
    ]);
    assert!(!refused.status.success(), "a pin-value URI was accepted");
    assert!(
        stderr_of(&refused).contains("pin-value"),
        "the refusal does not name pin-value: {}",
        stderr_of(&refused)
    );
    assert!(
        run(&["keys", "delete", "quiet-imported", "--yes"])
            .status
            .success()
    );
    let mut agent = agent;
    agent.stop();
    let log = agent.stderr_log();
    assert!(log.contains("DEBUG"), "debug logging is on:\n{log}");
    assert!(!log.contains(PIN), "the PIN is in the agent's log:\n{log}");
    for out in &outputs {
        for stream in [&out.stdout, &out.stderr] {
            assert!(
                !String::from_utf8_lossy(stream).contains(PIN),
                "the PIN is in dpop's output: {}",
                String::from_utf8_lossy(stream)
            );
        }
    }
}

/// Runs `command` under a pseudo-terminal, types `pin` once the agent asks for it, and
/// returns the `script` process and everything it printed up to the prompt.
fn with_terminal(command: &str, token: &SoftHsmToken, pin: &str) -> (std::process::Child, String) {
    let conf = token.conf();
    dpop_tests::with_terminal(
        command,
        &[("SOFTHSM2_CONF", conf.as_os_str())],
        "PIN for the PKCS#11",
        pin,
    )
}

fn quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

fn wait_for_socket(socket: &Path) {
    wait_until(
        format_args!(
            "an agent listens on {} after the PIN was typed",
            socket.display()
        ),
        PROCESS_TIMEOUT,
        || std::os::unix::net::UnixStream::connect(socket).is_ok(),
    );
}

#[test]
fn pin_prompt_on_the_terminal() {
    let token = token("prompt");
    let dir = new_temp_dir();
    let agent = dpop_tests::binaries().agent.clone();
    let common = format!(
        "--data-dir {} --pkcs11-module {} --pkcs11-token {}",
        quote(&dir.path().join("data")),
        quote(&pkcs11_module()),
        token.label()
    );

    // Foreground: the agent itself asks on its terminal (the PIN is not echoed back).
    let socket = dir.path().join("fg.sock");
    let command = format!("{} -D -a {} {common}", quote(&agent), quote(&socket));
    let (mut child, prompt) = with_terminal(&command, &token, PIN);
    assert!(
        prompt.contains(token.label()),
        "the prompt names the token: {prompt}"
    );
    wait_for_socket(&socket);
    let mut client = dpop_client::blocking::Client::connect(&socket).expect("connect");
    let key = client
        .generate_key(dpop_client::NewKey::new("prompted").backend("pkcs11"))
        .expect("a token key after the PIN was typed");
    let proof = client
        .sign_proof("prompted", &dpop_client::ProofRequest::new("GET", URL))
        .expect("proof");
    assert_eq!(verify_proof(&proof, "GET", URL, None).jkt, key.jkt);
    drop(client);
    let _ = child.kill();
    let _ = child.wait();
    // The foreground agent shares script's session: make sure it is gone before going on.
    let _ = Command::new("pkill")
        .arg("-f")
        .arg(socket.to_string_lossy().as_ref())
        .status();

    // Background start: the launcher asks, then hands the PIN to the detached agent.
    let socket = dir.path().join("bg.sock");
    let command = format!("{} -a {} {common}", quote(&agent), quote(&socket));
    let (mut child, _) = with_terminal(&command, &token, PIN);
    let status = child.wait().expect("the launcher exits");
    assert!(status.success(), "the launcher failed: {status}");
    wait_for_socket(&socket);
    let mut client = dpop_client::blocking::Client::connect(&socket).expect("connect");
    let keys = client.list_keys().expect("list");
    assert!(
        keys.iter()
            .any(|k| k.label == "prompted" && k.jkt == key.jkt),
        "the background agent logged in and loaded the token key: {keys:?}"
    );
    let proof = client
        .sign_proof("prompted", &dpop_client::ProofRequest::new("GET", URL))
        .expect("proof");
    assert_eq!(verify_proof(&proof, "GET", URL, None).jkt, key.jkt);
    drop(client);
    let stopped = Command::new(&agent)
        .arg("-k")
        .env("DPOP_AUTH_SOCK", &socket)
        .output()
        .expect("dpop-agent -k");
    assert!(
        stopped.status.success(),
        "{}",
        String::from_utf8_lossy(&stopped.stderr)
    );
}
