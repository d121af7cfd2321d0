//! Token keys across agent restarts and token loss, each test on a SoftHSM2 token of its own
//! (see `dpop_tests::pkcs11`): keys survive a restart, `[[pkcs11_adopt]]` tables adopt keys at
//! start-up, and the token deleted and brought back under a running agent.

use std::process::Command;
use std::time::Duration;

use dpop_client::Error as ClientError;
use dpop_protocol::{ErrorCode, KeyDescription};
use dpop_tests::pkcs11::*;
use dpop_tests::{AgentOptions, TestAgent, poll_until, run_ok, verify_proof};

/// Generated, imported and adopted token keys come back after a restart with the same jkt and
/// location, and still sign.
#[test]
fn token_keys_survive_a_restart() {
    let token = token("restart");
    // Made before the agent starts: SoftHSM2 2.6 misses objects that another process creates
    // while this one runs if this one writes to the token before looking again (each process
    // tracks a generation counter, and its own write bumps past the other's change).
    pkcs11_tool_keypair(&token, "theirs", "a1b2", &[]);
    let mut agent = TestAgent::start(
        AgentOptions::new()
            .pkcs11(&token)
            .arg("--pkcs11-allow-adopt"),
    );
    let pem = agent.dir().join("import-me.pem");
    dpop_tests::openssl_ec_pem(&pem);
    let generated = [
        generate(&agent, &token, "r-es256", "ES256"),
        generate(&agent, &token, "r-eddsa", "EdDSA"),
    ];
    let imported = import(&agent, &token, &pem, "r-imported", None, "ES256");
    std::fs::remove_file(&pem).expect("removing the imported PEM");
    let adopted = parse_key(&agent.dpop_ok(&[
        "keys",
        "adopt",
        "pkcs11:object=theirs;type=private",
        "--label",
        "r-adopted",
        "--json",
    ]));
    let software = agent.client().generate_key("r-soft").unwrap();
    let before = list(&agent);
    assert_eq!(before.len(), 5, "{before:?}");

    agent.restart();
    let after = list(&agent);
    let token_keys: Vec<&KeyDescription> =
        before.iter().filter(|k| k.backend == "pkcs11").collect();
    assert_eq!(token_keys.len(), 4);
    for key in &token_keys {
        assert!(
            after.contains(key),
            "{} changed or vanished across the restart: {after:?}",
            key.label
        );
        assert_still_signs(&agent, key);
    }
    // The software key was memory-only (no passphrase), as the agent warned.
    assert!(!after.iter().any(|k| k.label == software.label));
    for key in &generated {
        assert_stays_on_token(&token, key, true);
    }
    assert_stays_on_token(&token, &imported, false);
    assert_signs(&agent, &adopted);
}

/// `[[pkcs11_adopt]]` tables in the config file adopt token keys at start-up; an entry whose
/// key is not on the token is reported and the rest served; a restart loads the recorded key.
#[test]
fn config_file_adopts_token_keys_at_start() {
    let token = token("cfgadopt");
    // Made before the agent starts (SoftHSM2 hides other processes' later objects).
    pkcs11_tool_keypair(&token, "piv-9a", "9a", &[]);
    let config = token.dir().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[[pkcs11_adopt]]\nlabel = \"yubikey\"\nuri = \"pkcs11:token={};id=%9a;type=private\"\n\n\
             [[pkcs11_adopt]]\nlabel = \"missing\"\nuri = \"pkcs11:token={};object=nothing-here;type=private\"\n",
            token.label(),
            token.label()
        ),
    )
    .expect("writing the config file");
    let mut agent = TestAgent::start(
        AgentOptions::new()
            .pkcs11(&token)
            .arg("--config")
            .arg(&config),
    );
    let key = listed(&agent, "yubikey").expect("the configured key is adopted at start-up");
    assert_token_key(&key, &token, "yubikey", "ES256");
    assert_eq!(key_id(&key), "9a", "{key:?}");
    assert_signs(&agent, &key);
    // A configured key that is not on the token is reported, and the agent serves the rest.
    assert_eq!(listed(&agent, "missing"), None);
    let log = agent.stderr_log();
    assert!(
        log.contains("missing") && log.contains("pkcs11_adopt"),
        "the unadoptable entry is reported:\n{log}"
    );
    // On restart the recorded key is loaded, not adopted twice.
    agent.restart();
    assert_eq!(listed(&agent, "yubikey").as_ref(), Some(&key));
    assert_still_signs(&agent, &key);
}

/// The token deleted under a running agent (`softhsm2-util --delete-token`, the closest thing
/// to unplugging it): token key proofs fail with token_not_present while the agent keeps
/// serving hello, software keys and the list; a delete then fails and loses nothing. Then the
/// token comes back (its storage restored, same serial and objects). SoftHSM2 2.6 never shows
/// a running process a token that appeared after its `C_Initialize` (its slot list is built
/// once, and a token whose directory vanished stays invalid in that process), so an agent
/// recovers without restart only where the module allows; either way a restart brings every
/// key back with the same jkt.
#[test]
fn token_removed_and_back() {
    let token = token("removal");
    let mut agent = start(&token);
    let pem = agent.dir().join("k.pem");
    dpop_tests::openssl_ec_pem(&pem);
    let generated = generate(&agent, &token, "hsm-generated", "ES256");
    let imported = import(&agent, &token, &pem, "hsm-imported", None, "ES256");
    let mut client = agent.client();
    let software = client.generate_key("soft").unwrap();
    assert_still_signs(&agent, &generated);
    assert_stays_on_token(&token, &generated, true);
    assert_stays_on_token(&token, &imported, false);

    let backup = token.dir().join("unplugged");
    run_ok(
        Command::new("cp")
            .arg("-a")
            .arg(token.tokens_dir())
            .arg(&backup),
    );
    token.delete();
    assert_eq!(
        std::fs::read_dir(token.tokens_dir()).unwrap().count(),
        0,
        "softhsm2-util removed the token's storage"
    );

    let out = agent.dpop(&["proof", "--key", "hsm-generated", "-X", "GET", "--url", URL]);
    assert!(!out.status.success(), "a proof without the token");
    let stderr = stderr_of(&out);
    assert!(
        stderr.contains("token is not present") && stderr.contains("\"removal\""),
        "dpop proof does not say that the token \"removal\" is not present: {stderr}"
    );
    for key in [&generated, &imported] {
        for _ in 0..2 {
            let (got, message) =
                code(client.sign_proof(&key.label, &dpop_client::ProofRequest::new("GET", URL)));
            assert_eq!(got, ErrorCode::TokenNotPresent, "{}: {message}", key.label);
        }
    }
    // The agent carries on with everything else.
    let hello = client.hello().expect("hello without the token");
    assert!(hello.backends.iter().any(|b| b == "pkcs11"), "{hello:?}");
    assert_still_signs(&agent, &software);
    let listed = list(&agent);
    assert!(listed.iter().any(|k| k.label == "soft"), "{listed:?}");
    // A delete without the token fails and keeps the key.
    let (got, message) = code(client.delete_key("hsm-generated"));
    assert_eq!(got, ErrorCode::TokenNotPresent, "{message}");

    // The token comes back.
    for entry in std::fs::read_dir(&backup).unwrap() {
        let entry = entry.unwrap();
        run_ok(
            Command::new("cp")
                .arg("-a")
                .arg(entry.path())
                .arg(token.tokens_dir()),
        );
    }
    // The agent looks again (re-initialising the module, at most every 2 s, since SoftHSM2
    // builds its slot list only then) and recovers without a restart.
    let mut last_refusal = String::new();
    let proof = poll_until(
        Duration::from_secs(10),
        Duration::from_millis(250),
        || match client.sign_proof("hsm-generated", &dpop_client::ProofRequest::new("GET", URL)) {
            Ok(proof) => Some(proof),
            Err(ClientError::Agent(e)) if e.code == ErrorCode::TokenNotPresent => {
                last_refusal = e.message;
                None
            }
            Err(e) => panic!("after the token came back: {e}"),
        },
    )
    .unwrap_or_else(|| {
        panic!(
            "the agent did not find the token again within 10 s: {last_refusal}\n{}",
            agent.stderr_log()
        )
    });
    assert_eq!(verify_proof(&proof, "GET", URL, None).jkt, generated.jkt);
    assert_still_signs(&agent, &imported);
    assert_still_signs(&agent, &software);
    drop(client);

    agent.restart();
    let after = list(&agent);
    for key in [&generated, &imported] {
        assert!(
            after.contains(key),
            "{} did not come back after the restart: {after:?}\n{}",
            key.label,
            agent.stderr_log()
        );
        assert_still_signs(&agent, key);
        assert_stays_on_token(&token, key, key.label == "hsm-generated");
    }
}
