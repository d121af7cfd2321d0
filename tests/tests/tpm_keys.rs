//! TPM keys end to end on a real swtpm (see `tpm/mod.rs`): every algorithm the TPM does,
//! keys that survive agent restarts, keys that cannot leave the TPM, adoption of a persistent
//! key, import of a PEM key, and a damaged key blob.

mod tpm;

use dpop_tests::{AgentOptions, Swtpm, TestAgent};
use tpm::*;

/// ES256, ES384 and RS256 keys made in the TPM sign proofs that `dpop verify`, jwcrypto and
/// dpop-jose accept. PS256 either does the same or, when the TPM's PSS salt is not the hash
/// length (swtpm's libtpms signs with another salt length), is refused with that reason and
/// leaves nothing behind. EdDSA is refused with a reason.
#[test]
fn every_tpm_algorithm_signs_verifiable_proofs() {
    let swtpm = Swtpm::start();
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
    if pss.status.success() {
        assert_signs(&agent, &parse_key(&String::from_utf8_lossy(&pss.stdout)));
    } else {
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
