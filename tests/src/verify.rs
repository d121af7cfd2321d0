//! Checking proofs: in process with dpop-jose as a server would, independently with Python's
//! jwcrypto, or just decoding a JWS to look at it.

use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// Decodes a compact JWS's header and payload (without checking anything).
pub fn decode_jws(jws: &str) -> (Value, Value) {
    let parts: Vec<&str> = jws.split('.').collect();
    assert_eq!(parts.len(), 3, "a compact JWS has three parts: {jws:?}");
    let decode = |part: &str, what: &str| -> Value {
        let bytes = dpop_jose::b64url_decode(part)
            .unwrap_or_else(|| panic!("JWS {what} is not base64url: {part:?}"));
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("JWS {what} is not JSON: {e}"))
    };
    (decode(parts[0], "header"), decode(parts[1], "payload"))
}

/// Verifies `proof` with [`dpop_jose::verify`] as a server would (no nonce required, fresh
/// replay store, now); panics with the reason when it is invalid.
pub fn verify_proof(
    proof: &str,
    method: &str,
    url: &str,
    access_token: Option<&str>,
) -> dpop_jose::VerifiedProof {
    try_verify_proof(proof, method, url, access_token, None)
        .unwrap_or_else(|e| panic!("proof does not verify for {method} {url}: {e}\n{proof}"))
}

/// [`dpop_jose::verify`] with a fresh replay store, no nonce policy, and the current time.
pub fn try_verify_proof(
    proof: &str,
    method: &str,
    url: &str,
    access_token: Option<&str>,
    jkt: Option<&str>,
) -> Result<dpop_jose::VerifiedProof, dpop_jose::Error> {
    let request = dpop_jose::ExpectedRequest {
        method,
        url,
        access_token,
        jkt,
    };
    let replay = dpop_jose::LruReplayStore::new(std::num::NonZeroUsize::new(16).expect("non-zero"));
    dpop_jose::verify(
        proof,
        &request,
        &dpop_jose::VerifyOptions::default(),
        &(),
        &replay,
        unix_now(),
    )
}

/// Checks `proof` with the independent Python jwcrypto verifier (`tests/interop/verify_proof.py`:
/// signature, `typ`, `alg`, no private JWK members, `htm`, `htu`, `iat`, `jti`, `ath`, and that
/// jwcrypto's RFC 7638 thumbprint is `jkt`). `htu` is the normalised URL the proof must carry.
/// Panics with the verifier's explanation unless every check passes, and says what to install
/// when python3 or jwcrypto is missing.
pub fn jwcrypto_verify(
    proof: &str,
    alg: &str,
    htm: &str,
    htu: &str,
    jkt: &str,
    access_token: Option<&str>,
) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/verify_proof.py");
    let mut command = Command::new("python3");
    command.arg(script).args([proof, alg, htm, htu, jkt]);
    if let Some(token) = access_token {
        command.arg(token);
    }
    let out = command.output().unwrap_or_else(|e| {
        panic!("cannot run python3 for the jwcrypto interop check (install python3): {e}")
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(
        out.status.code(),
        Some(2),
        "jwcrypto is missing: pip install jwcrypto\n{stderr}"
    );
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok",
        "jwcrypto rejects the {alg} proof ({}): {stderr}\nproof: {proof}",
        out.status
    );
}
