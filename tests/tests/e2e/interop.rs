//! Proofs from `dpop proof` checked by an independent JOSE implementation: Python's jwcrypto
//! (`tests/interop/verify_proof.py`), for every algorithm the software backend offers.
//! Needs `python3` with `jwcrypto` (`pip install jwcrypto`); fails, never skips, without it.

use std::path::PathBuf;
use std::process::Command;

use dpop_protocol::KeyDescription;
use dpop_tests::{AgentOptions, TestAgent};

const URL: &str = "https://Resource.Example.COM:443/api/v2/things?filter=x#frag";
const HTU: &str = "https://resource.example.com/api/v2/things";
const TOKEN: &str = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ0ZXN0In0.c2lnbmF0dXJl";

fn verifier() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop/verify_proof.py")
}

/// The harness's jwcrypto check, for a request to [`HTU`].
fn jwcrypto_verify(proof: &str, alg: &str, htm: &str, jkt: &str, token: Option<&str>) {
    dpop_tests::jwcrypto_verify(proof, alg, htm, HTU, jkt, token);
}

fn interop(alg: &str) {
    let agent = TestAgent::start(AgentOptions::new());
    let label = format!("interop-{}", alg.to_lowercase());
    let key: KeyDescription = serde_json::from_str(&agent.dpop_ok(&[
        "keys", "generate", "--label", &label, "--alg", alg, "--json",
    ]))
    .expect("dpop keys generate --json prints the key");
    assert_eq!(
        key.alg.to_string(),
        alg,
        "the key has the requested algorithm"
    );

    let with_token = agent.dpop_ok(&[
        "proof",
        "--key",
        &label,
        "-X",
        "POST",
        "--url",
        URL,
        "--access-token",
        TOKEN,
    ]);
    jwcrypto_verify(with_token.trim(), alg, "POST", &key.jkt, Some(TOKEN));

    let without_token = agent.dpop_ok(&["proof", "--key", &label, "-X", "GET", "--url", URL]);
    jwcrypto_verify(without_token.trim(), alg, "GET", &key.jkt, None);
}

#[test]
fn jwcrypto_verifies_es256_proofs() {
    interop("ES256");
}

#[test]
fn jwcrypto_verifies_es384_proofs() {
    interop("ES384");
}

#[test]
fn jwcrypto_verifies_rs256_proofs() {
    interop("RS256");
}

#[test]
fn jwcrypto_verifies_ps256_proofs() {
    interop("PS256");
}

#[test]
fn jwcrypto_verifies_eddsa_proofs() {
    interop("EdDSA");
}

#[test]
fn jwcrypto_verifies_a_proof_by_an_openssl_made_key() {
    let agent = TestAgent::start(AgentOptions::new());
    let pem = agent.dir().join("k.pem");
    dpop_tests::openssl_ec_pem(&pem);
    let key: KeyDescription = serde_json::from_str(&agent.dpop_ok(&[
        "keys".as_ref(),
        "import".as_ref(),
        pem.as_os_str(),
        "--label".as_ref(),
        "ossl".as_ref(),
        "--json".as_ref(),
    ]))
    .unwrap();
    let proof = agent.dpop_ok(&["proof", "--key", "ossl", "-X", "PUT", "--url", URL]);
    jwcrypto_verify(proof.trim(), "ES256", "PUT", &key.jkt, None);
}

/// The verifier is not a rubber stamp: a proof for another request, a changed signature, or a
/// wrong jkt fail.
#[test]
fn jwcrypto_verifier_rejects_wrong_proofs() {
    let agent = TestAgent::start(AgentOptions::new());
    let key = agent.client().generate_key("k").unwrap();
    let proof = agent.dpop_ok(&["proof", "--key", "k", "-X", "GET", "--url", URL]);
    let proof = proof.trim();
    let (head, sig) = proof.rsplit_once('.').unwrap();
    let tampered = format!(
        "{head}.{}{}",
        if sig.starts_with('A') { 'B' } else { 'A' },
        &sig[1..]
    );
    let other_jkt = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I";
    for (what, args) in [
        (
            "wrong method",
            vec![proof, "ES256", "POST", HTU, key.jkt.as_str()],
        ),
        (
            "wrong htu",
            vec![
                proof,
                "ES256",
                "GET",
                "https://resource.example.com/other",
                key.jkt.as_str(),
            ],
        ),
        (
            "wrong alg",
            vec![proof, "RS256", "GET", HTU, key.jkt.as_str()],
        ),
        ("wrong jkt", vec![proof, "ES256", "GET", HTU, other_jkt]),
        (
            "missing ath",
            vec![proof, "ES256", "GET", HTU, key.jkt.as_str(), TOKEN],
        ),
        (
            "changed signature",
            vec![tampered.as_str(), "ES256", "GET", HTU, key.jkt.as_str()],
        ),
    ] {
        let out = Command::new("python3")
            .arg(verifier())
            .args(&args)
            .output()
            .expect("running python3");
        assert_eq!(
            out.status.code(),
            Some(1),
            "the jwcrypto verifier must reject a proof with a {what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
