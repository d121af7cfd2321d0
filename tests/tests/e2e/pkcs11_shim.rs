//! Sloppy tokens (issue 22, item 1): the real agent on a SoftHSM2 token seen through the test
//! shim (`dpop_tests::pkcs11_shim`, `tests/pkcs11-shim/shim.c`), which answers as tokens in the
//! field do:
//!
//! - a `C_GetTokenInfo` with a malformed `utcTime` (cryptoki refuses such an answer whole):
//!   the agent still finds the token by label, and its keys sign;
//! - a slot whose token info cannot be read at all: the error names the module's answer
//!   instead of saying the module shows no token;
//! - only the raw signing mechanisms (`CKM_RSA_PKCS`, `CKM_RSA_PKCS_PSS`, `CKM_ECDSA`): every
//!   algorithm still generates and signs, the agent hashing (and adding the DigestInfo for
//!   RS256), proofs pass jwcrypto, and the key's `CKA_ALLOWED_MECHANISMS` names the raw
//!   mechanism it signs with; such keys keep signing with it on a token that offers the
//!   combined mechanisms;
//! - usage flags a key template may not turn off (the token refuses `CKA_DECRYPT`,
//!   `CKA_UNWRAP`, `CKA_DERIVE` false, so only the agent's minimal template is taken and
//!   SoftHSM2 makes the private key able to decrypt, unwrap and sign with recovery): generated
//!   and imported keys are kept with a warning that names what else they can do, and really
//!   decrypt from outside; with `--pkcs11-require-sign-only` they are refused and nothing of
//!   them is left on the token.

use std::path::Path;
use std::process::Command;

use dpop_protocol::KeyDescription;
use dpop_tests::pkcs11::*;
use dpop_tests::pkcs11_shim::{CKR_DEVICE_ERROR, ShimFaults, inspect_through_shim};
use dpop_tests::{AgentOptions, SoftHsmToken, TestAgent, new_temp_dir, openssl_rsa_pem, run_ok};
use serde_json::Value;

/// The token's `utcTime` is spaces and `hh:mm:ss`: cryptoki (as the tests' own helper shows)
/// cannot read the token info, yet the agent finds the token, generates a key and signs.
#[test]
fn a_token_with_a_malformed_clock_is_found_and_signs() {
    let token = token("clock");
    let faults = ShimFaults {
        bad_utc_time: true,
        ..ShimFaults::default()
    };
    // The fault is real: cryptoki's own reading of the token info fails, and the helper says
    // why rather than that there is no such token.
    let out = inspect_through_shim(&token, &faults, &["token-info"]);
    let stderr = stderr_of(&out);
    assert!(!out.status.success(), "the shim corrupts nothing? {stderr}");
    assert!(
        stderr.contains("C_GetTokenInfo") && stderr.contains("no token labelled \"clock\" among"),
        "the helper names the unreadable slot: {stderr}"
    );

    let agent = TestAgent::start(AgentOptions::new().pkcs11_shim(&token, &faults));
    let key = generate(&agent, &token, "clock-es256", "ES256");
    assert_signs(&agent, &key);
    // Found again after a restart, from the key record (label and serial match).
    let mut agent = agent;
    agent.restart();
    assert_still_signs(&agent, &key);
}

/// A slot whose `C_GetTokenInfo` fails: the agent does not start, and says which slot and
/// what the module answered, not that the module shows no initialised token.
#[test]
fn a_slot_that_cannot_be_read_is_named() {
    let token = token("broken");
    let faults = ShimFaults {
        token_info_fails: Some(CKR_DEVICE_ERROR),
        ..ShimFaults::default()
    };
    let failure = TestAgent::try_start(AgentOptions::new().pkcs11_shim(&token, &faults))
        .expect_err("the agent cannot open a token it cannot read");
    let log = failure.stderr;
    assert!(
        log.contains("could not be read (C_GetTokenInfo: CKR_DEVICE_ERROR)"),
        "the agent names the module's answer: {log}"
    );
    assert!(
        !log.contains("shows no initialised token)"),
        "a broken slot is not a missing token: {log}"
    );
    // The tests' own helper does not hide it either.
    let out = inspect_through_shim(&token, &faults, &["token-info"]);
    let stderr = stderr_of(&out);
    assert!(
        !out.status.success() && stderr.contains("DeviceError"),
        "the helper names the module's answer: {stderr}"
    );
}

/// With only the raw mechanisms, every algorithm generates and signs (jwcrypto and `dpop
/// verify` accept the proofs), and an RSA PEM imports and signs as PS256, each key allowed
/// exactly the raw mechanism it signs with; the keys still sign when the agent is restarted
/// on a module that offers the combined ones.
#[test]
fn raw_mechanisms_sign_every_algorithm() {
    let token = token("raw");
    let faults = ShimFaults {
        raw_only: true,
        ..ShimFaults::default()
    };
    let mut agent = TestAgent::start(AgentOptions::new().pkcs11_shim(&token, &faults));
    let mut keys = Vec::new();
    for (alg, mechanism) in [
        ("ES256", "CKM_ECDSA"),
        ("ES384", "CKM_ECDSA"),
        ("RS256", "CKM_RSA_PKCS"),
        ("PS256", "CKM_RSA_PKCS_PSS"),
        ("EdDSA", "CKM_EDDSA"),
    ] {
        let key = generate(&agent, &token, &format!("raw-{}", alg.to_lowercase()), alg);
        assert_signs(&agent, &key);
        // Read from the token directly (SoftHSM2, not through the shim).
        let (private, _) = objects_of(&token, &key);
        assert_eq!(
            private[0]["allowed_mechanisms"],
            serde_json::json!([mechanism]),
            "{alg}: CKA_ALLOWED_MECHANISMS names the mechanism the key signs with: {private:?}"
        );
        keys.push(key);
    }
    // An imported PEM is allowed the raw mechanism too.
    let pems = new_temp_dir();
    let pem = pems.path().join("rsa.pem");
    openssl_rsa_pem(&pem);
    let key = import(&agent, &token, &pem, "raw-imported", Some("PS256"), "PS256");
    assert_signs(&agent, &key);
    let (private, _) = objects_of(&token, &key);
    assert_eq!(
        private[0]["allowed_mechanisms"],
        serde_json::json!(["CKM_RSA_PKCS_PSS"]),
        "imported PS256: {private:?}"
    );
    keys.push(key);
    // The same token straight through SoftHSM2, which offers the combined mechanisms: each key
    // signs with the raw mechanism its CKA_ALLOWED_MECHANISMS names, not the token's preferred
    // combined one (which the key would refuse).
    agent.restart_with(AgentOptions::new().pkcs11(&token));
    for key in &keys {
        assert_still_signs(&agent, key);
    }
}

/// The shim that lets no key template turn off `CKA_DECRYPT`, `CKA_UNWRAP` or `CKA_DERIVE`.
fn fixed_usage() -> ShimFaults {
    ShimFaults {
        fixed_usage: true,
        ..ShimFaults::default()
    }
}

/// The `Usage:` line `pkcs11-tool --list-objects` prints for the private key with the key's
/// `CKA_ID` (read from SoftHSM2 directly, not through the shim).
fn private_key_usage(token: &SoftHsmToken, key: &KeyDescription) -> String {
    let text = token.list_objects(PIN, Some("privkey"));
    let id = key_id(key);
    // One block per object, each starting with an unindented line.
    let mut blocks: Vec<Vec<&str>> = Vec::new();
    for line in text.lines() {
        if !line.starts_with(' ') {
            blocks.push(Vec::new());
        }
        if let Some(block) = blocks.last_mut() {
            block.push(line.trim());
        }
    }
    let field = |block: &[&str], name: &str| {
        block
            .iter()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
    };
    let ours: Vec<_> = blocks
        .iter()
        .filter(|b| field(b, "ID:").is_some_and(|v| v.eq_ignore_ascii_case(&id)))
        .collect();
    let [block] = ours[..] else {
        panic!("{}: not one private key with its id: {text}", key.label);
    };
    field(block, "Usage:").unwrap_or_default()
}

/// Whether another program with the PIN decrypts with the key: openssl encrypts to its public
/// key (read from the token), `pkcs11-tool --decrypt -m RSA-PKCS` hands the plaintext back.
fn decrypts_for_anyone_with_the_pin(
    token: &SoftHsmToken,
    key: &KeyDescription,
    dir: &Path,
) -> bool {
    let file = |what: &str| dir.join(format!("{}.{what}", key.label));
    let id = key_id(key);
    run_ok(token.pkcs11_tool().args([
        "--read-object",
        "--type",
        "pubkey",
        "--id",
        &id,
        "-o",
        file("pub.der").to_str().unwrap(),
    ]));
    let plaintext = b"decryption-oracle-Wm47";
    std::fs::write(file("pt"), plaintext).unwrap();
    run_ok(Command::new("openssl").args([
        "pkeyutl",
        "-encrypt",
        "-pubin",
        "-keyform",
        "DER",
        "-inkey",
        file("pub.der").to_str().unwrap(),
        "-in",
        file("pt").to_str().unwrap(),
        "-out",
        file("ct").to_str().unwrap(),
    ]));
    let out = token
        .pkcs11_tool()
        .args(["--login", "--pin", PIN, "--id", &id])
        .args(["--decrypt", "-m", "RSA-PKCS", "--input-file"])
        .arg(file("ct"))
        .output()
        .expect("running pkcs11-tool");
    out.status.success() && contains(&out.stdout, plaintext)
}

/// On a token that does not let a template turn off decrypt, unwrap or derive, an RS256 key
/// generated there and an RSA PEM imported as PS256 are kept (the minimal template): the CLI
/// warns naming what else they can do, `keys list` says they are not sign-only and why, they
/// sign (jwcrypto, `dpop verify`), also after a restart, and the token's object really can
/// decrypt for any program with the PIN.
#[test]
fn keys_a_token_lets_decrypt_are_kept_with_a_warning() {
    let token = token("fixed");
    let mut agent = TestAgent::start(AgentOptions::new().pkcs11_shim(&token, &fixed_usage()));
    let dir = new_temp_dir();
    let pem = dir.path().join("rsa.pem");
    openssl_rsa_pem(&pem);
    let pem = pem.to_str().unwrap();
    let made = [
        (
            "fixed-generated",
            "RS256",
            agent.dpop(&[
                "keys",
                "generate",
                "--label",
                "fixed-generated",
                "--backend",
                "pkcs11",
                "--alg",
                "RS256",
                "--json",
            ]),
        ),
        (
            "fixed-imported",
            "PS256",
            agent.dpop(&[
                "keys",
                "import",
                pem,
                "--label",
                "fixed-imported",
                "--backend",
                "pkcs11",
                "--alg",
                "PS256",
                "--json",
            ]),
        ),
    ];
    let mut keys = Vec::new();
    for (label, alg, out) in made {
        let stderr = stderr_of(&out);
        assert!(out.status.success(), "{label}: refused: {stderr}");
        let key = parse_key(&String::from_utf8_lossy(&out.stdout));
        assert_token_key(&key, &token, label, alg);
        assert!(
            stderr.contains(&format!(
                "warning: the token lets key {label} also decrypt, unwrap, sign_recover, not \
                 only sign"
            )),
            "{label}: the CLI does not warn: {stderr}"
        );
        assert_eq!(key.sign_only, Some(false), "{label}: {key:?}");
        assert_eq!(
            key.other_uses,
            ["decrypt", "unwrap", "sign_recover"],
            "{label}: {key:?}"
        );
        assert_eq!(listed(&agent, label).as_ref(), Some(&key), "{label}");
        assert_signs(&agent, &key);
        // From outside, straight on SoftHSM2: the token made what the agent says.
        let usage = private_key_usage(&token, &key);
        assert!(
            usage.contains("decrypt") && usage.contains("unwrap"),
            "{label}: {usage}"
        );
        assert!(
            decrypts_for_anyone_with_the_pin(&token, &key, dir.path()),
            "{label}: the token does not decrypt with the key after all"
        );
        keys.push(key);
    }
    // The agent says which templates the token refused and which it took.
    let log = agent.stderr_log();
    for part in [
        "refused=Strict: PKCS#11 C_GenerateKeyPair failed: CKR_ATTRIBUTE_VALUE_INVALID",
        "refused=Strict: PKCS#11 C_CreateObject failed: CKR_ATTRIBUTE_VALUE_INVALID",
        "taken=Minimal",
    ] {
        assert!(log.contains(part), "{part:?} missing: {log}");
    }
    let table = agent.dpop_ok(&["keys", "list"]);
    assert!(table.contains("no (decrypt"), "{table}");
    agent.restart();
    for key in &keys {
        assert_eq!(listed(&agent, &key.label).as_ref(), Some(key));
        assert_still_signs(&agent, key);
    }
}

/// With `--pkcs11-require-sign-only` on the same token, generating (RS256, ES256) and
/// importing are refused with an error that says why, and nothing of the refused keys is left
/// on the token: the objects there before (another application's key pair) are all that is
/// there after.
#[test]
fn keys_a_token_lets_decrypt_are_refused_and_destroyed_when_sign_only_is_required() {
    let token = token("strict");
    pkcs11_tool_keypair(&token, "other-app", "0a", &[]);
    let objects = || -> Vec<Value> {
        let mut all = inspect(&token, &["objects"])
            .as_array()
            .expect("array")
            .clone();
        all.sort_by_key(|o| o.to_string());
        all
    };
    let before = objects();
    assert_eq!(before.len(), 2, "{before:?}");
    let agent = TestAgent::start(
        AgentOptions::new()
            .pkcs11_shim(&token, &fixed_usage())
            .arg("--pkcs11-require-sign-only"),
    );
    let dir = new_temp_dir();
    let pem = dir.path().join("rsa.pem");
    openssl_rsa_pem(&pem);
    let attempts: [(&str, Vec<&str>); 3] = [
        (
            "strict-rs256",
            vec!["generate", "--alg", "RS256", "--backend", "pkcs11"],
        ),
        (
            "strict-es256",
            vec!["generate", "--alg", "ES256", "--backend", "pkcs11"],
        ),
        (
            "strict-imported",
            vec!["import", pem.to_str().unwrap(), "--backend", "pkcs11"],
        ),
    ];
    for (label, args) in attempts {
        let mut args = [vec!["keys"], args].concat();
        args.extend(["--label", label]);
        let out = agent.dpop(&args);
        let stderr = stderr_of(&out);
        assert!(!out.status.success(), "{label}: made: {stderr}");
        for part in [
            "lets the private key also decrypt, unwrap, sign_recover",
            "sign-only keys are required",
            "the key was destroyed again",
            "invalid_key",
        ] {
            assert!(stderr.contains(part), "{label}: {part:?} missing: {stderr}");
        }
        assert_eq!(listed(&agent, label), None, "{label}");
        assert_eq!(
            objects(),
            before,
            "{label}: the refused key left objects on the token"
        );
    }
}
