//! TPM keys end to end on a real swtpm (see `dpop_tests::tpm`): every algorithm the TPM does,
//! keys that survive agent restarts, keys that cannot leave the TPM, adoption of a persistent
//! key, import of a PEM key, and a damaged key blob.

use dpop_tests::tpm::*;
use dpop_tests::{AgentOptions, Swtpm, TestAgent};

/// ES256, ES384 and RS256 keys made in the TPM sign proofs that `dpop verify`, jwcrypto and
/// dpop-jose accept. PS256 does the same exactly when the TPM's PSS salt is the hash length,
/// which the test finds out on its own (a PSS signature made here with tss-esapi, judged by
/// Python's `cryptography`); otherwise it is refused with that reason and leaves nothing
/// behind. EdDSA is refused with a reason.
#[test]
fn every_tpm_algorithm_signs_verifiable_proofs() {
    let swtpm = Swtpm::start();
    let message = b"is the salt as long as the hash?";
    let (modulus, signature) = tpm_pss_signature(&mut swtpm.context(), message);
    let (valid, salt_is_hash_length) = python_pss_verdicts(&modulus, &signature, message);
    assert!(
        valid,
        "the TPM's PSS signature does not verify with any salt length"
    );
    let agent = TestAgent::start(AgentOptions::new().tpm(&swtpm));
    for alg in ["ES256", "ES384", "RS256"] {
        let key = generate(&agent, &format!("tpm-{}", alg.to_lowercase()), alg);
        assert!(key.persistent, "{key:?}");
        assert_signs(&agent, &key);
    }
    let pss = agent.dpop(&[
        "keys",
        "generate",
        "--label",
        "tpm-ps256",
        "--backend",
        "tpm",
        "--alg",
        "PS256",
        "--json",
    ]);
    if salt_is_hash_length {
        assert!(
            pss.status.success(),
            "{}",
            String::from_utf8_lossy(&pss.stderr)
        );
        assert_signs(&agent, &parse_key(&String::from_utf8_lossy(&pss.stdout)));
    } else {
        assert!(
            !pss.status.success(),
            "PS256 accepted on a TPM whose PSS salt is not the hash length"
        );
        let stderr = String::from_utf8_lossy(&pss.stderr);
        assert!(
            stderr.contains("unsupported_algorithm")
                && stderr.contains("salt length = hash length"),
            "{stderr}"
        );
        assert!(!list(&agent).iter().any(|k| k.label == "tpm-ps256"));
        assert!(!agent.data_dir().join("tpm/tpm-ps256.json").exists());
    }
    let refused = agent.dpop(&[
        "keys",
        "generate",
        "--label",
        "ed",
        "--backend",
        "tpm",
        "--alg",
        "EdDSA",
    ]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("Ed25519"), "{stderr}");
}

/// Keys survive agent restarts (same jkt, still signing), and the TPM reports what the
/// backend promises: the key cannot leave this TPM (fixedTPM, fixedParent), the TPM made it
/// (sensitiveDataOrigin), and it only signs (not decrypt, not restricted). The record holds
/// the public area and the SRK-wrapped private blob, 0600.
#[test]
fn tpm_keys_persist_and_cannot_leave_the_tpm() {
    let swtpm = Swtpm::start();
    let mut agent = TestAgent::start(AgentOptions::new().tpm(&swtpm));
    let es256 = generate(&agent, "p-es256", "ES256");
    let rs256 = generate(&agent, "p-rs256", "RS256");
    agent.restart();
    let listed = list(&agent);
    for key in [&es256, &rs256] {
        assert!(
            listed.contains(key),
            "{key:?} missing after restart: {listed:?}"
        );
        assert_signs(&agent, key);
    }
    let record_path = agent.data_dir().join("tpm/p-es256.json");
    assert_eq!(dpop_tests::mode(&record_path), 0o600);
    let record = direct::record(&agent.data_dir(), "p-es256");
    assert_eq!(record["origin"], "generated");
    assert_eq!(record["alg"], "ES256");

    agent.stop();
    let mut ctx = swtpm.context();
    for label in ["p-es256", "p-rs256"] {
        let attributes =
            direct::load_and_read_public(&mut ctx, &agent.data_dir(), label).object_attributes();
        assert!(
            attributes.fixed_tpm() && attributes.fixed_parent(),
            "{label}: {attributes:?}"
        );
        assert!(attributes.sensitive_data_origin(), "{label}");
        assert!(
            attributes.sign_encrypt() && attributes.user_with_auth(),
            "{label}"
        );
        assert!(!attributes.decrypt() && !attributes.restricted(), "{label}");
    }
}

/// A persistent key another program made is adopted by handle when the agent allows it,
/// signs, survives a restart, and stays in the TPM when the agent forgets it. Without
/// `--tpm-allow-adopt` clients are refused.
#[test]
fn a_persistent_tpm_key_is_adopted_by_handle() {
    const HANDLE: u32 = 0x8100_0101;
    let swtpm = Swtpm::start();
    direct::persistent_p256_key(&mut swtpm.context(), HANDLE);
    let uri = "tpm:handle=0x81000101";

    let mut agent = TestAgent::start(AgentOptions::new().tpm(&swtpm));
    let refused = agent.dpop(&["keys", "adopt", uri, "--label", "adopted"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("permission_denied"),
        "{stderr}"
    );
    assert!(stderr.contains("--tpm-allow-adopt"), "{stderr}");

    agent.restart_with(AgentOptions::new().tpm(&swtpm).arg("--tpm-allow-adopt"));
    let key = parse_key(&agent.dpop_ok(&["keys", "adopt", uri, "--label", "adopted", "--json"]));
    assert_eq!(
        (key.backend.as_str(), key.alg.to_string().as_str()),
        ("tpm", "ES256")
    );
    assert_eq!(key.location.as_deref(), Some(uri));
    assert_signs(&agent, &key);
    let twice = agent.dpop(&["keys", "adopt", uri, "--label", "again"]);
    let stderr = String::from_utf8_lossy(&twice.stderr);
    assert!(
        stderr.contains("key_exists") && stderr.contains("adopted"),
        "{stderr}"
    );
    let nothing = agent.dpop(&["keys", "adopt", "tpm:handle=0x81000777", "--label", "none"]);
    let stderr = String::from_utf8_lossy(&nothing.stderr);
    assert!(
        stderr.contains("key_not_found") && stderr.contains("0x81000777"),
        "{stderr}"
    );

    agent.restart();
    assert!(list(&agent).contains(&key));
    assert_signs(&agent, &key);
    agent.dpop_ok(&["keys", "delete", "adopted", "--yes"]);
    agent.stop();
    assert!(
        direct::persistent_exists(&mut swtpm.context(), HANDLE),
        "forgetting an adopted key must leave it in the TPM"
    );
}

/// An EC PEM key is imported with TPM2_Import: its public key is the file's, it signs, and
/// the TPM marks it as not bound to this TPM (an imported key cannot be fixedTPM). RSA keys
/// are refused with a reason.
#[test]
fn an_ec_pem_key_is_imported_into_the_tpm() {
    let swtpm = Swtpm::start();
    let mut agent = TestAgent::start(AgentOptions::new().tpm(&swtpm));
    let pem = agent.dir().join("import.pem");
    dpop_tests::openssl_ec_pem(&pem);
    let pem_text = std::fs::read_to_string(&pem).unwrap();
    let key = parse_key(&agent.dpop_ok(&[
        "keys",
        "import",
        pem.to_str().unwrap(),
        "--label",
        "imported",
        "--backend",
        "tpm",
        "--json",
    ]));
    // The same key in the software backend has the same thumbprint.
    let software = agent
        .client()
        .import_key(dpop_client::ImportKey::new("soft-copy", &pem_text))
        .expect("software import");
    assert_eq!(key.jkt, software.jkt);
    assert_signs(&agent, &key);
    assert_eq!(
        direct::record(&agent.data_dir(), "imported")["origin"],
        "imported"
    );

    let rsa = agent.dir().join("rsa.pem");
    dpop_tests::openssl_rsa_pem(&rsa);
    let refused = agent.dpop(&[
        "keys",
        "import",
        rsa.to_str().unwrap(),
        "--label",
        "rsa",
        "--backend",
        "tpm",
    ]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("generate RSA keys in the TPM"),
        "{stderr}"
    );

    agent.stop();
    let attributes =
        direct::load_and_read_public(&mut swtpm.context(), &agent.data_dir(), "imported")
            .object_attributes();
    assert!(
        !attributes.fixed_tpm() && !attributes.fixed_parent(),
        "{attributes:?}"
    );
    assert!(attributes.sign_encrypt() && !attributes.decrypt());
}

/// A key whose wrapped private blob was damaged is reported at start-up and answers with a
/// clear error; the other TPM keys are unaffected.
#[test]
fn a_damaged_key_blob_spoils_only_its_own_key() {
    let swtpm = Swtpm::start();
    let mut agent = TestAgent::start(AgentOptions::new().tpm(&swtpm));
    let good = generate(&agent, "good", "ES256");
    generate(&agent, "damaged", "ES256");
    agent.stop();

    let path = agent.data_dir().join("tpm/damaged.json");
    let mut record = direct::record(&agent.data_dir(), "damaged");
    let mut private = direct::blob(&record, "private");
    // Inside the encrypted sensitive area, past the size and the integrity HMAC's size.
    let middle = private.len() / 2;
    private[middle] ^= 0x5a;
    use base64::Engine;
    record["private"] = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(&private)
        .into();
    std::fs::write(&path, serde_json::to_vec_pretty(&record).unwrap()).unwrap();

    agent.restart();
    let reply = sign_reply(&agent, "damaged");
    assert_eq!(dpop_tests::error_code(&reply), "backend_error", "{reply}");
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("damaged") && message.contains("TPM2_Load"),
        "{message}"
    );
    assert!(
        agent.stderr_log().contains("TPM key not loaded"),
        "{}",
        agent.stderr_log()
    );
    assert_signs(&agent, &good);
}
