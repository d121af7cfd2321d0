//! TPM faults under a running agent, on a real swtpm (see `dpop_tests::tpm`): the TPM stopped and
//! started again (coded error while it is gone, recovery after, other backends served
//! throughout), an agent started while the TPM is down, and a wrong auth value (coded error,
//! never retried, so the TPM's dictionary attack counter does not reach lockout).

use dpop_tests::tpm::*;
use dpop_tests::{AgentOptions, Swtpm, TestAgent, error_code};

/// `sign_proof` fails with `token_not_present` while swtpm is down, software keys sign all
/// along, and the TPM key signs again once swtpm is back (the agent reconnects, makes the SRK
/// again and reloads the blob: the restart reset the TPM).
#[test]
fn the_agent_recovers_when_the_tpm_comes_back() {
    let mut swtpm = Swtpm::start();
    let agent = TestAgent::start(AgentOptions::new().tpm(&swtpm));
    let key = generate(&agent, "survivor", "ES256");
    let software = agent.client().generate_key("soft").unwrap();
    assert_signs(&agent, &key);

    swtpm.stop();
    for _ in 0..2 {
        let reply = sign_reply(&agent, "survivor");
        assert_eq!(error_code(&reply), "token_not_present", "{reply}");
        let message = reply["error"]["message"].as_str().unwrap();
        assert!(message.contains(&swtpm.tcti()), "{message}");
    }
    assert_signs(&agent, &software);
    // Generating needs the TPM too.
    let reply = agent.raw_request(
        br#"{"id":1,"op":"generate_key","label":"late","backend":"tpm","alg":"ES256"}"#,
    );
    assert_eq!(error_code(&reply), "token_not_present", "{reply}");

    swtpm.restart();
    assert_signs(&agent, &key);
    assert_signs(&agent, &software);
    assert!(list(&agent).iter().all(|k| k.label != "late"));
}

/// An agent started while the TPM is down starts, serves its TPM keys from their records
/// (listing, `token_not_present` for proofs) and its other backends, and uses the TPM once
/// it is there.
#[test]
fn an_agent_starts_while_the_tpm_is_down() {
    let mut swtpm = Swtpm::start();
    let mut agent = TestAgent::start(AgentOptions::new().tpm(&swtpm));
    let key = generate(&agent, "waiting", "ES384");
    agent.stop();
    swtpm.stop();

    agent.restart();
    assert!(list(&agent).contains(&key));
    assert_eq!(
        error_code(&sign_reply(&agent, "waiting")),
        "token_not_present"
    );
    let software = agent.client().generate_key("soft").unwrap();
    assert_signs(&agent, &software);
    assert!(
        agent.stderr_log().contains("TPM not ready"),
        "{}",
        agent.stderr_log()
    );

    swtpm.restart();
    assert_signs(&agent, &key);
}

/// The auth value comes from a variable or a file, never the command line. A key made with
/// one does not sign with a wrong one: `pin_incorrect`, and the TPM is asked once, not again
/// on the next request, so its lockout counter rises by one per agent start and stays below
/// the lockout threshold; the right value still works afterwards.
#[test]
fn a_wrong_auth_value_is_not_retried_into_lockout() {
    const VAR: &str = "DPOP_TEST_TPM_AUTH";
    const RIGHT: &str = "tpm-auth-Hv62Qe";
    const WRONG: &str = "tpm-auth-wrong-Pz41";
    let swtpm = Swtpm::start();
    let with_auth = |value: &str| {
        AgentOptions::new()
            .tpm(&swtpm)
            .arg("--tpm-auth-env")
            .arg(VAR)
            .env(VAR, value)
    };
    let mut agent = TestAgent::start(with_auth(RIGHT));
    let key = generate(&agent, "guarded", "ES256");
    assert_signs(&agent, &key);
    assert_eq!(direct::record(&agent.data_dir(), "guarded")["auth"], true);
    agent.stop();
    let (before, max) = direct::lockout_counter_and_max(&mut swtpm.context());
    assert!(
        max >= 3,
        "a TPM that locks out after {max} failures leaves no room for the test"
    );

    for run in 1..=2 {
        agent.restart_with(with_auth(WRONG));
        for _ in 0..3 {
            let reply = sign_reply(&agent, "guarded");
            assert_eq!(error_code(&reply), "pin_incorrect", "{reply}");
            let message = reply["error"]["message"].as_str().unwrap();
            assert!(
                !message.contains(WRONG) && !message.contains(RIGHT),
                "{message}"
            );
        }
        agent.stop();
        let (counter, _) = direct::lockout_counter_and_max(&mut swtpm.context());
        assert_eq!(
            counter,
            before + run,
            "one failed authorization per agent run"
        );
        assert!(counter < max);
    }
    for secret in [RIGHT, WRONG] {
        assert!(
            !agent.stderr_log().contains(secret),
            "the auth value was logged"
        );
    }

    // A file works like the variable; the right value still signs.
    let file = agent.dir().join("tpm-auth");
    dpop_tests::write_private_file(&file, format!("{RIGHT}\n").as_bytes());
    agent.restart_with(
        AgentOptions::new()
            .tpm(&swtpm)
            .arg("--tpm-auth-file")
            .arg(&file),
    );
    assert_signs(&agent, &key);

    // Without any auth value the key says what it needs.
    agent.restart_with(AgentOptions::new().tpm(&swtpm));
    let reply = sign_reply(&agent, "guarded");
    assert_eq!(error_code(&reply), "pin_incorrect", "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--tpm-auth-env")
    );
}

/// A TCTI that does not parse is reported and the agent serves its other backends; TPM
/// requests say the backend is not configured.
#[test]
fn a_bad_tcti_does_not_stop_the_agent() {
    let agent = TestAgent::start(AgentOptions::new().arg("--tpm-tcti").arg("bogus:x"));
    let software = agent.client().generate_key("soft").unwrap();
    assert_signs(&agent, &software);
    let log = agent.stderr_log();
    assert!(
        log.contains("TPM backend not started") && log.contains("bogus:x"),
        "{log}"
    );
    let reply = agent
        .raw_request(br#"{"id":1,"op":"generate_key","label":"t","backend":"tpm","alg":"ES256"}"#);
    assert_eq!(error_code(&reply), "backend_not_configured", "{reply}");
}

/// The background start (`eval "$(dpop-agent ...)"`) with the TPM named in the config file:
/// the auth value read from the variable reaches the detached agent over its pipe (new keys get
/// it), and is in neither process's environment afterwards.
#[test]
fn a_background_agent_gets_the_auth_value_through_the_config_file() {
    use std::process::Command;

    use dpop_tests::{KillOnDrop, binaries, new_temp_dir, run_ok};

    const VAR: &str = "DPOP_TEST_TPM_AUTH_BG";
    const AUTH: &str = "tpm-auth-bg-Wm38Lk";
    let swtpm = Swtpm::start();
    let dir = new_temp_dir();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "tpm_tcti = \"{}\"\ntpm_auth_env = \"{VAR}\"\n",
            swtpm.tcti()
        ),
    )
    .unwrap();
    let socket = dir.path().join("agent.sock");
    let data = dir.path().join("data");
    let script = r#"eval "$("$0" -a "$1" --data-dir "$2" --config "$3")" >/dev/null || exit 9
"$4" keys generate --label bg --backend tpm >/dev/null || exit 10
"$4" proof --key bg -X GET --url https://api.example.com/x || exit 11
printf 'PID=%s\n' "$DPOP_AGENT_PID""#;
    let out = run_ok(
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(&binaries().agent)
            .arg(&socket)
            .arg(&data)
            .arg(&config)
            .arg(&binaries().dpop)
            .env(VAR, AUTH)
            .env_remove("DPOP_AUTH_SOCK")
            .env_remove("DPOP_AGENT_PID"),
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let pid: u32 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("PID="))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no agent pid: {stdout}"));
    let _guard = KillOnDrop(pid);
    let proof = stdout.lines().next().unwrap();
    dpop_tests::verify_proof(proof, "GET", "https://api.example.com/x", None);

    // The agent is non-dumpable: only root reads its environment (and must be able to).
    let environ = match std::fs::read(format!("/proc/{pid}/environ")) {
        Ok(environ) => environ,
        Err(e) => {
            assert!(
                !dpop_tests::is_root(),
                "root cannot read the agent's environment: {e}"
            );
            Vec::new()
        }
    };
    assert!(
        !String::from_utf8_lossy(&environ).contains(AUTH),
        "the auth value is in the agent's environment"
    );
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("tpm/bg.json")).unwrap()).unwrap();
    assert_eq!(record["auth"], true, "{record}");
    run_ok(
        Command::new(&binaries().agent)
            .arg("-k")
            .env("DPOP_AUTH_SOCK", &socket),
    );
}

/// Auth value sources are checked before anything starts.
#[test]
fn conflicting_auth_sources_are_refused() {
    let swtpm = Swtpm::start();
    let Err(both) = TestAgent::try_start(
        AgentOptions::new()
            .tpm(&swtpm)
            .arg("--tpm-auth-env")
            .arg("X")
            .arg("--tpm-auth-prompt"),
    ) else {
        panic!("two auth sources are refused");
    };
    assert!(both.stderr.contains("--tpm-auth-prompt"), "{}", both.stderr);
    let Err(without_tpm) = TestAgent::try_start(AgentOptions::new().arg("--tpm-auth-env").arg("X"))
    else {
        panic!("an auth value without a TPM is refused");
    };
    assert!(
        without_tpm.stderr.contains("needs --tpm"),
        "{}",
        without_tpm.stderr
    );
}

/// A TPM in dictionary attack lockout answers `pin_locked`, also for the right auth value.
/// The lockout is reached on purpose here: one key per allowed failure, each refused once
/// (the agent never asks twice for the same key).
#[test]
fn a_tpm_in_lockout_answers_pin_locked() {
    const VAR: &str = "DPOP_TEST_TPM_AUTH_LOCK";
    let swtpm = Swtpm::start();
    let (counter, max) = direct::lockout_counter_and_max(&mut swtpm.context());
    assert!(
        max <= 64,
        "swtpm allows {max} failures; the test makes one key per failure"
    );
    let with_auth = |value: &str| {
        AgentOptions::new()
            .tpm(&swtpm)
            .arg("--tpm-auth-env")
            .arg(VAR)
            .env(VAR, value)
    };
    let mut agent = TestAgent::start(with_auth("right-Jr52"));
    let labels: Vec<String> = (counter..max).map(|i| format!("k{i}")).collect();
    for label in &labels {
        agent
            .client()
            .generate_key(dpop_client::NewKey::new(label).backend("tpm"))
            .expect("a TPM key");
    }
    agent.restart_with(with_auth("wrong-Jr52"));
    for label in &labels {
        let reply = sign_reply(&agent, label);
        let code = error_code(&reply);
        assert!(code == "pin_incorrect" || code == "pin_locked", "{reply}");
    }
    agent.restart_with(with_auth("right-Jr52"));
    let reply = sign_reply(&agent, &labels[0]);
    assert_eq!(error_code(&reply), "pin_locked", "{reply}");
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(message.contains("lockout"), "{message}");
}

/// `--tpm-auth-prompt` in a background start: the launcher asks on its terminal (no echo)
/// and hands the value to the detached agent, whose new keys get it.
#[test]
fn the_auth_value_can_be_typed_at_the_terminal() {
    use std::process::Command;

    use dpop_tests::{binaries, new_temp_dir, wait_until, with_terminal};

    const TYPED: &str = "typed-auth-Qn47";
    let swtpm = Swtpm::start();
    let dir = new_temp_dir();
    let socket = dir.path().join("agent.sock");
    let quote =
        |p: &std::path::Path| format!("'{}'", p.display().to_string().replace('\'', r"'\''"));
    let command = format!(
        "{} -a {} --data-dir {} --tpm-tcti {} --tpm-auth-prompt",
        quote(&binaries().agent),
        quote(&socket),
        quote(&dir.path().join("data")),
        swtpm.tcti()
    );
    let (mut launcher, prompt) = with_terminal(&command, &[], "Auth value for the TPM keys", TYPED);
    assert!(!prompt.contains(TYPED), "{prompt}");
    let status = launcher.wait().expect("the launcher exits");
    assert!(status.success(), "the launcher failed: {status}");
    wait_until(
        "the background agent listens",
        dpop_tests::PROCESS_TIMEOUT,
        || std::os::unix::net::UnixStream::connect(&socket).is_ok(),
    );
    let mut client = dpop_client::blocking::Client::connect(&socket).expect("connect");
    let key = client
        .generate_key(dpop_client::NewKey::new("typed").backend("tpm"))
        .expect("a TPM key");
    let proof = client
        .sign_proof("typed", &dpop_client::ProofRequest::new("GET", URL))
        .expect("proof");
    assert_eq!(
        dpop_tests::verify_proof(&proof, "GET", URL, None).jkt,
        key.jkt
    );
    let record = direct::record(&dir.path().join("data"), "typed");
    assert_eq!(record["auth"], true, "{record}");
    drop(client);
    let stopped = Command::new(&binaries().agent)
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
