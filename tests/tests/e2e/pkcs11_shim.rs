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
//!   combined mechanisms.

use dpop_tests::pkcs11::*;
use dpop_tests::pkcs11_shim::{CKR_DEVICE_ERROR, ShimFaults, inspect_through_shim};
use dpop_tests::{AgentOptions, TestAgent, new_temp_dir, openssl_rsa_pem};

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
