//! Helpers of the TPM end-to-end tests (`tpm_*.rs`): each test runs its own swtpm (own state
//! directory, own loopback ports) and agent, makes keys through the real `dpop` CLI or the
//! client crate, and checks proofs with `dpop verify`, the Python jwcrypto verifier and
//! dpop-jose. Needs swtpm (`apt-get install swtpm swtpm-tools`), `python3` with jwcrypto and
//! `openssl`; fails, never skips, without them.

#![allow(dead_code)] // Each test binary uses a different part.

use dpop_protocol::KeyDescription;
use dpop_tests::{TestAgent, jwcrypto_verify, verify_proof};
use serde_json::Value;

/// The URL the proofs are for; [`HTU`] is its normalised form.
pub const URL: &str = "https://API.example.com:443/v1/items?page=2#top";
/// The `htu` of [`URL`].
pub const HTU: &str = "https://api.example.com/v1/items";

/// A key as `dpop ... --json` prints it.
pub fn parse_key(json: &str) -> KeyDescription {
    serde_json::from_str(json.trim())
        .unwrap_or_else(|e| panic!("not a key description ({e}): {json}"))
}

/// Generates a TPM key with `dpop keys generate`.
pub fn generate(agent: &TestAgent, label: &str, alg: &str) -> KeyDescription {
    let key = parse_key(&agent.dpop_ok(&[
        "keys",
        "generate",
        "--label",
        label,
        "--backend",
        "tpm",
        "--alg",
        alg,
        "--json",
    ]));
    assert_eq!(key.backend, "tpm", "{key:?}");
    assert_eq!(key.alg.to_string(), alg, "{key:?}");
    key
}

/// A proof from `key` through `dpop proof`, checked by `dpop verify`, jwcrypto and
/// dpop-jose, all three finding the key's thumbprint.
pub fn assert_signs(agent: &TestAgent, key: &KeyDescription) {
    let proof = agent.dpop_ok(&["proof", "--key", &key.label, "-X", "GET", "--url", URL]);
    let proof = proof.trim();
    let verified = agent.dpop_ok(&[
        "verify", "--proof", proof, "--method", "GET", "--url", URL, "--json",
    ]);
    let verified: Value = serde_json::from_str(verified.trim())
        .unwrap_or_else(|e| panic!("dpop verify --json printed no JSON ({e}): {verified}"));
    assert_eq!(verified["jkt"], key.jkt.as_str(), "dpop verify: {verified}");
    jwcrypto_verify(proof, &key.alg.to_string(), "GET", HTU, &key.jkt, None);
    assert_eq!(verify_proof(proof, "GET", URL, None).jkt, key.jkt);
}

/// A raw `sign_proof` reply (for error codes).
pub fn sign_reply(agent: &TestAgent, label: &str) -> Value {
    let line =
        serde_json::json!({"id": 1, "op": "sign_proof", "key": label, "htm": "GET", "htu": URL});
    agent.raw_request(line.to_string().as_bytes())
}

/// The agent's keys.
pub fn list(agent: &TestAgent) -> Vec<KeyDescription> {
    agent.client().list_keys().expect("list_keys")
}
