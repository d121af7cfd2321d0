//! The PKCS#11 key tests on two modules, SoftHSM2 and tpm2-pkcs11 (over its own swtpm through
//! tpm2-abrmd on a private D-Bus: see `dpop_tests::tpm2_pkcs11`; the tests share one such
//! token, in turns, each with labels of its own), through the real agent and `dpop`:
//!
//! - every algorithm the token's mechanism list offers (SoftHSM2: ES256, ES384, RS256, PS256,
//!   EdDSA; tpm2-pkcs11: ES256, ES384, RS256, PS256) generates, signs proofs that `dpop
//!   verify` and jwcrypto accept, is sign-only as the agent says and as `pkcs11-tool` reads it
//!   back, never extractable (`dpop-test-pkcs11`, another process), and still signs after an
//!   agent restart;
//! - tpm2-pkcs11 refuses the strict sign-only template (`CKR_GENERAL_ERROR`: the TPM has one
//!   bit for sign and encrypt); the agent takes the next template and the key is still
//!   sign-only, which it judges by the flags read back;
//! - a key that can also decrypt (made by `pkcs11-tool` on tpm2-pkcs11, as another
//!   application would) is adopted with a warning naming what it can do, in the agent's log,
//!   on the CLI's standard error and in `keys list`; `--pkcs11-require-sign-only` refuses it
//!   and leaves it on the token, and an agent restarted with it does not serve the key it
//!   adopted before (the record stays);
//! - a private key that is not sensitive and extractable is refused, never adopted;
//! - tpm2-pkcs11 cannot store private keys (`C_CreateObject`): an import fails saying so and
//!   leaves nothing on the token.

use dpop_protocol::{ErrorCode, KeyDescription};
use dpop_tests::dpop_client::AdoptKey;
use dpop_tests::pkcs11::*;
use dpop_tests::{AgentOptions, Pkcs11Token, TestAgent, Tpm2Token, run_ok};

/// The algorithms the token's mechanism list (`pkcs11-tool -M`, read by another process)
/// offers: key generation and a signing mechanism, combined with the hash or raw.
fn offered_algorithms(token: &impl Pkcs11Token) -> Vec<&'static str> {
    let out = run_ok(token.pkcs11_tool().arg("--list-mechanisms"));
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    let mechanisms: Vec<&str> = listed
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(|m| m.trim_end_matches(','))
        .collect();
    let has = |names: &[&str]| names.iter().any(|n| mechanisms.contains(n));
    let mut algs = Vec::new();
    if has(&["ECDSA-KEY-PAIR-GEN"]) && has(&["ECDSA", "ECDSA-SHA256"]) {
        algs.extend(["ES256", "ES384"]);
    }
    if has(&["RSA-PKCS-KEY-PAIR-GEN"]) && has(&["SHA256-RSA-PKCS", "RSA-PKCS"]) {
        algs.push("RS256");
    }
    if has(&["RSA-PKCS-KEY-PAIR-GEN"]) && has(&["SHA256-RSA-PKCS-PSS", "RSA-PKCS-PSS"]) {
        algs.push("PS256");
    }
    if has(&["EC-EDWARDS-KEY-PAIR-GEN"]) && has(&["EDDSA"]) {
        algs.push("EdDSA");
    }
    algs
}

/// What `pkcs11-tool` (another process) lists for the private key with the key's `CKA_ID`:
/// its `Usage:` and `Access:` lines.
fn usage_and_access(token: &impl Pkcs11Token, key: &KeyDescription) -> (String, String) {
    let out = run_ok(token.pkcs11_tool().args([
        "--login",
        "--pin",
        token.pin(),
        "--list-objects",
        "--type",
        "privkey",
    ]));
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    // One block per object, each starting at an unindented line.
    let mut blocks: Vec<Vec<&str>> = Vec::new();
    for line in listed.lines() {
        if !line.starts_with(' ') || blocks.is_empty() {
            blocks.push(Vec::new());
        }
        blocks.last_mut().expect("a block").push(line.trim());
    }
    let id = key_id(key);
    let block = blocks
        .iter()
        .find(|b| {
            b.iter()
                .any(|l| l.strip_prefix("ID:").map(str::trim) == Some(id.as_str()))
        })
        .unwrap_or_else(|| {
            panic!(
                "{}: id {id} not in pkcs11-tool's listing: {listed}",
                key.label
            )
        });
    let line = |name: &str| {
        block
            .iter()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("{}: no {name} in {block:?}", key.label))
    };
    (line("Usage:"), line("Access:"))
}

/// The key tests on one token: each offered algorithm generates (with sign-only keys
/// required), signs (jwcrypto), is sign-only and never leaves the token, and signs after a
/// restart. `fallback`: whether the
/// token is expected to refuse the strict template.
fn generated_keys_on(token: &impl Pkcs11Token, prefix: &str, expected: &[&str], fallback: bool) {
    let algs = offered_algorithms(token);
    assert_eq!(
        algs, expected,
        "the token's mechanisms offer other algorithms"
    );
    // Sign-only keys are required: a key that could do more would be refused.
    let mut agent = TestAgent::start(
        AgentOptions::new()
            .pkcs11(token)
            .arg("--pkcs11-require-sign-only"),
    );
    let mut keys = Vec::new();
    for alg in algs {
        let key = generate(
            &agent,
            token,
            &format!("{prefix}-{}", alg.to_lowercase()),
            alg,
        );
        assert_eq!(key.sign_only, Some(true), "{alg}: {key:?}");
        assert!(key.other_uses.is_empty(), "{alg}: {key:?}");
        assert_signs(&agent, &key);
        assert_stays_on_token(token, &key, true);
        let (usage, access) = usage_and_access(token, &key);
        assert!(usage.contains("sign"), "{alg}: usage {usage}");
        for other in ["decrypt", "unwrap", "derive"] {
            assert!(
                !usage.contains(other),
                "{alg}: the token lets it {other}: {usage}"
            );
        }
        assert!(
            access.contains("sensitive") && access.contains("never extractable"),
            "{alg}: access {access}"
        );
        keys.push(key);
    }
    let log = agent.stderr_log();
    assert_eq!(
        log.contains("refused the stricter key templates"),
        fallback,
        "whether the agent fell back from the strict template: {log}"
    );
    assert!(
        !log.contains("WARN dpop_keys"),
        "no key is worth a warning: {log}"
    );
    assert!(!log.contains(PIN), "the PIN is in the log");

    // Restarted, the agent finds every key, says again that it is sign-only, and signs.
    agent.restart();
    for key in &keys {
        assert_eq!(listed(&agent, &key.label).as_ref(), Some(key));
        assert_still_signs(&agent, key);
    }
    let table = agent.dpop_ok(&["keys", "list"]);
    let header = table.lines().next().unwrap_or_default();
    assert!(header.contains("SIGN-ONLY"), "{table}");
    for key in &keys {
        let row = table
            .lines()
            .find(|l| l.starts_with(&key.label))
            .unwrap_or_else(|| panic!("{} not in {table}", key.label));
        assert!(row.contains(" yes "), "{row}");
    }
}

/// SoftHSM2 takes the strict template for every algorithm.
#[test]
fn softhsm2_keys_are_sign_only_sign_and_survive_a_restart() {
    let token = token("tpm2-ref");
    generated_keys_on(
        &token,
        "soft",
        &["ES256", "ES384", "RS256", "PS256", "EdDSA"],
        false,
    );
}

/// tpm2-pkcs11 refuses the strict template (`CKR_GENERAL_ERROR`); the agent falls back and
/// the keys are sign-only all the same.
#[test]
fn tpm2_pkcs11_keys_are_sign_only_sign_and_survive_a_restart() {
    let token = Tpm2Token::shared();
    generated_keys_on(&token, "tpm2", &["ES256", "ES384", "RS256", "PS256"], true);
}

/// A key another application made on tpm2-pkcs11 with `pkcs11-tool` can decrypt and derive:
/// refused with `--pkcs11-require-sign-only` (and left on the token), adopted with a warning
/// that names what it can do without it, and not served by an agent restarted with it.
#[test]
fn a_key_that_can_decrypt_is_adopted_with_a_warning_or_refused() {
    let token = Tpm2Token::shared();
    // Before an agent starts: tpm2-pkcs11 reads its store when a process loads it.
    pkcs11_tool_keypair(&token, "other-app", "0a", &[]);
    let uri = format!(
        "pkcs11:token={};object=other-app;type=private",
        token.label()
    );
    let adopting = || {
        AgentOptions::new()
            .pkcs11(&token)
            .arg("--pkcs11-allow-adopt")
    };

    let strict = TestAgent::start(adopting().arg("--pkcs11-require-sign-only"));
    let out = strict.dpop(&["keys", "adopt", &uri, "--label", "other"]);
    let stderr = stderr_of(&out);
    assert!(!out.status.success(), "adopted: {stderr}");
    for part in [
        "also decrypt",
        "sign-only keys are required",
        "not adopted",
        "invalid_key",
    ] {
        assert!(stderr.contains(part), "{part:?} missing: {stderr}");
    }
    let (code, _) = code(strict.client().adopt_key(AdoptKey::new("other", &uri)));
    assert_eq!(code, ErrorCode::InvalidKey);
    assert_eq!(listed(&strict, "other"), None);
    drop(strict);
    let objects = String::from_utf8_lossy(
        &run_ok(
            token
                .pkcs11_tool()
                .args(["--login", "--pin", PIN, "--list-objects"]),
        )
        .stdout,
    )
    .into_owned();
    assert!(
        objects.contains("other-app"),
        "the refused key is gone: {objects}"
    );

    let agent = TestAgent::start(adopting());
    let out = agent.dpop(&["keys", "adopt", &uri, "--label", "other", "--json"]);
    let stderr = stderr_of(&out);
    assert!(out.status.success(), "not adopted: {stderr}");
    let key = parse_key(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(key.sign_only, Some(false), "{key:?}");
    assert!(key.other_uses.iter().any(|u| u == "decrypt"), "{key:?}");
    assert!(
        stderr.contains("warning: the token lets key other also decrypt"),
        "the CLI does not warn: {stderr}"
    );
    let log = agent.stderr_log();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("lets key other also decrypt")),
        "the agent does not warn: {log}"
    );
    assert_eq!(listed(&agent, "other").as_ref(), Some(&key));
    let table = agent.dpop_ok(&["keys", "list"]);
    assert!(table.contains("no (decrypt"), "{table}");
    assert_signs(&agent, &key);

    // Restarted with sign-only keys required, the agent does not serve it (the record stays);
    // without, it serves it again, as before.
    let mut agent = agent;
    agent.restart_with(adopting().arg("--pkcs11-require-sign-only"));
    assert_eq!(listed(&agent, "other"), None);
    let log = agent.stderr_log();
    assert!(
        log.contains("sign-only keys are required; not loaded, its record kept"),
        "{log}"
    );
    agent.restart_with(adopting());
    assert_eq!(listed(&agent, "other").as_ref(), Some(&key));
    assert_still_signs(&agent, &key);
}

/// A private key that the token would hand out (not sensitive, extractable: stored so by the
/// helper on SoftHSM2) is never adopted, and stays on the token as it was.
#[test]
fn an_exposed_key_is_not_adopted() {
    let token = token("exposed");
    let agent = TestAgent::start(
        AgentOptions::new()
            .pkcs11(&token)
            .arg("--pkcs11-allow-adopt"),
    );
    inspect(&token, &["create-exposed-ec-key", "0e"]);
    let uri = format!("pkcs11:token={};id=%0e", token.label());
    let (code, message) = code(agent.client().adopt_key(AdoptKey::new("exposed", &uri)));
    assert_eq!(code, ErrorCode::InvalidKey, "{message}");
    assert!(
        message.contains("not sensitive") && message.contains("extractable"),
        "{message}"
    );
    assert_eq!(listed(&agent, "exposed"), None);
    let objects = inspect(&token, &["objects"]);
    assert!(
        objects
            .as_array()
            .expect("array")
            .iter()
            .any(|o| o["class"] == "private" && o["id"] == "0e"),
        "the refused key is gone: {objects}"
    );
}

/// tpm2-pkcs11 creates no private key objects: an import is refused naming `C_CreateObject`,
/// after every template, and leaves nothing on the token.
#[test]
fn tpm2_pkcs11_refuses_imports_and_keeps_nothing() {
    let token = Tpm2Token::shared();
    let agent = start(&token);
    let dir = dpop_tests::new_temp_dir();
    let pem = dir.path().join("import.pem");
    dpop_tests::openssl_ec_pem(&pem);
    let out = agent.dpop(&[
        "keys".as_ref(),
        "import".as_ref(),
        pem.as_os_str(),
        "--label".as_ref(),
        "imported".as_ref(),
        "--backend".as_ref(),
        "pkcs11".as_ref(),
    ]);
    let stderr = stderr_of(&out);
    assert!(!out.status.success(), "imported: {stderr}");
    assert!(stderr.contains("C_CreateObject"), "{stderr}");
    assert_eq!(listed(&agent, "imported"), None);
    let objects = String::from_utf8_lossy(
        &run_ok(
            token
                .pkcs11_tool()
                .args(["--login", "--pin", PIN, "--list-objects"]),
        )
        .stdout,
    )
    .into_owned();
    assert!(!objects.contains("label:      imported"), "{objects}");
}
