#[cfg(feature = "lru")]
use std::num::NonZeroUsize;
#[cfg(feature = "lru")]
use std::sync::Mutex;

use aws_lc_rs::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde_json::{Map, Value};

use crate::jwk::{PRIVATE_MEMBERS, PublicKeyBytes};
use crate::{Algorithm, Claims, Error, Jwk, ath, b64url_decode, normalize_uri};

/// Longest proof accepted; an RSA-4096 proof is about 1.5 KiB.
const MAX_PROOF_LEN: usize = 16 * 1024;

/// Verifier settings. The defaults follow RFC 9449's advice.
#[derive(Clone, Debug)]
pub struct VerifyOptions {
    /// Algorithms the server accepts.
    pub algorithms: Vec<Algorithm>,
    /// How old `iat` may be, in seconds (default 60).
    pub max_age: i64,
    /// How far in the future `iat` may be, for clock skew, in seconds (default 5).
    pub max_future: i64,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            algorithms: Algorithm::ALL.to_vec(),
            max_age: 60,
            max_future: 5,
        }
    }
}

/// The HTTP request a proof came with.
#[derive(Clone, Copy, Debug)]
pub struct ExpectedRequest<'a> {
    /// The request method.
    pub method: &'a str,
    /// The request URI (query and fragment are ignored).
    pub url: &'a str,
    /// The access token of `Authorization: DPoP`, when one is presented.
    pub access_token: Option<&'a str>,
    /// The token's `cnf.jkt`, when the token is DPoP-bound.
    pub jkt: Option<&'a str>,
}

/// The server's nonce policy (RFC 9449 section 8).
pub trait NoncePolicy {
    /// `Ok` when the proof's nonce (or its absence) is acceptable now.
    fn check(&self, nonce: Option<&str>) -> Result<(), Error>;
}

/// No nonce required; one that is sent is ignored.
impl NoncePolicy for () {
    fn check(&self, _: Option<&str>) -> Result<(), Error> {
        Ok(())
    }
}

/// Exactly this nonce is required.
impl NoncePolicy for &str {
    fn check(&self, nonce: Option<&str>) -> Result<(), Error> {
        if nonce == Some(*self) {
            Ok(())
        } else {
            Err(Error::UseNonce)
        }
    }
}

/// Remembers `(jkt, jti)` pairs to refuse replayed proofs.
pub trait ReplayStore {
    /// Records the pair until `expires_at` (seconds since the epoch); `false` when it was
    /// already recorded and has not expired.
    fn insert_if_new(&self, jkt: &str, jti: &str, expires_at: i64, now: i64) -> bool;
}

/// An in-memory, size-bounded [`ReplayStore`]. When full, the least recently seen pair goes
/// first; size it for the proofs a server sees within the `iat` window.
#[cfg(feature = "lru")]
#[derive(Debug)]
pub struct LruReplayStore {
    seen: Mutex<lru::LruCache<(String, String), i64>>,
}

#[cfg(feature = "lru")]
impl LruReplayStore {
    /// A store that holds at most `capacity` pairs.
    pub fn new(capacity: NonZeroUsize) -> Self {
        LruReplayStore {
            seen: Mutex::new(lru::LruCache::new(capacity)),
        }
    }
}

#[cfg(feature = "lru")]
impl ReplayStore for LruReplayStore {
    fn insert_if_new(&self, jkt: &str, jti: &str, expires_at: i64, now: i64) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let key = (jkt.to_owned(), jti.to_owned());
        if let Some(&until) = seen.get(&key)
            && until >= now
        {
            return false;
        }
        seen.put(key, expires_at);
        true
    }
}

/// What a valid proof tells the server.
#[derive(Clone, Debug)]
pub struct VerifiedProof {
    /// The signature algorithm.
    pub alg: Algorithm,
    /// The proof's public key.
    pub jwk: Jwk,
    /// Its RFC 7638 thumbprint, to bind tokens to (`cnf.jkt`).
    pub jkt: String,
    /// The claims.
    pub claims: Claims,
}

/// Checks a DPoP proof as RFC 9449 section 4.3 describes, at time `now` (seconds since the
/// epoch). The caller has already checked that the request carried exactly one `DPoP` header.
pub fn verify(
    proof: &str,
    request: &ExpectedRequest<'_>,
    options: &VerifyOptions,
    nonces: &dyn NoncePolicy,
    replay: &dyn ReplayStore,
    now: i64,
) -> Result<VerifiedProof, Error> {
    // 1-2: one well-formed compact JWS.
    if proof.len() > MAX_PROOF_LEN {
        return Err(Error::MalformedProof("longer than 16 KiB"));
    }
    let mut parts = proof.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Error::MalformedProof("not three dot-separated parts"));
    };
    let header: Map<String, Value> = decode_json(h, "header is not base64url JSON object")?;
    let claims_json: Map<String, Value> = decode_json(c, "payload is not base64url JSON object")?;
    let signature = b64url_decode(s).ok_or(Error::MalformedProof("signature is not base64url"))?;

    // 4: typ.
    if header.get("typ").and_then(Value::as_str) != Some("dpop+jwt") {
        return Err(Error::WrongType);
    }
    // 5: an allowed asymmetric algorithm.
    let alg_name = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(Error::MalformedProof("alg missing"))?;
    let alg: Algorithm = alg_name.parse()?;
    if !options.algorithms.contains(&alg) {
        return Err(Error::UnsupportedAlgorithm {
            alg: alg_name.to_owned(),
        });
    }
    // 7: a public key without private members.
    let jwk_json = header
        .get("jwk")
        .and_then(Value::as_object)
        .ok_or(Error::MalformedProof("jwk header missing"))?;
    if let Some(member) = PRIVATE_MEMBERS.iter().find(|m| jwk_json.contains_key(**m)) {
        return Err(Error::PrivateKeyInJwk {
            member: (*member).to_owned(),
        });
    }
    let jwk: Jwk =
        serde_json::from_value(Value::Object(jwk_json.clone())).map_err(|e| Error::InvalidJwk {
            reason: e.to_string(),
        })?;
    if !jwk.fits(alg) {
        return Err(Error::InvalidJwk {
            reason: format!("key cannot make {alg} signatures"),
        });
    }
    // 6: the signature, by that key.
    let signing_input = &proof.as_bytes()[..h.len() + 1 + c.len()];
    verify_signature(alg, &jwk, signing_input, &signature)?;

    let claims: Claims =
        serde_json::from_value(Value::Object(claims_json)).map_err(|_| claim_error(proof))?;
    if claims.jti.is_empty() {
        return Err(Error::BadClaim("jti"));
    }
    // 8: htm.
    if claims.htm != request.method {
        return Err(Error::MethodMismatch {
            expected: request.method.to_owned(),
            got: claims.htm,
        });
    }
    // 9: htu, both sides normalized.
    let expected = normalize_uri(request.url)?;
    let got = normalize_uri(&claims.htu).map_err(|_| Error::BadClaim("htu"))?;
    if expected != got {
        return Err(Error::UrlMismatch { expected, got });
    }
    // 10: nonce.
    nonces.check(claims.nonce.as_deref())?;
    // 11: iat window.
    if claims.iat < now - options.max_age || claims.iat > now + options.max_future {
        return Err(Error::IatOutOfWindow {
            iat: claims.iat,
            now,
        });
    }
    // 12: ath and key binding when an access token is presented.
    if let Some(token) = request.access_token {
        let want = ath(token)?;
        match &claims.ath {
            None => return Err(Error::AthMissing),
            Some(got) if *got != want => return Err(Error::AthMismatch),
            Some(_) => {}
        }
    }
    let jkt = jwk.thumbprint();
    if let Some(expected) = request.jkt
        && expected != jkt
    {
        return Err(Error::JktMismatch {
            expected: expected.to_owned(),
            got: jkt,
        });
    }
    // 3 (RFC 9449 section 11.1): replay, last, so that invalid proofs never fill the store.
    let expires_at = claims.iat + options.max_age + options.max_future;
    if !replay.insert_if_new(&jkt, &claims.jti, expires_at, now) {
        return Err(Error::Replayed);
    }
    Ok(VerifiedProof {
        alg,
        jwk,
        jkt,
        claims,
    })
}

fn decode_json(part: &str, what: &'static str) -> Result<Map<String, Value>, Error> {
    let bytes = b64url_decode(part).ok_or(Error::MalformedProof(what))?;
    serde_json::from_slice(&bytes).map_err(|_| Error::MalformedProof(what))
}

/// Names the first required claim that is missing or mistyped.
fn claim_error(proof: &str) -> Error {
    let payload = proof.split('.').nth(1).unwrap_or_default();
    let claims: Map<String, Value> = decode_json(payload, "").unwrap_or_default();
    for (name, ok) in [
        ("jti", claims.get("jti").is_some_and(Value::is_string)),
        ("htm", claims.get("htm").is_some_and(Value::is_string)),
        ("htu", claims.get("htu").is_some_and(Value::is_string)),
        ("iat", claims.get("iat").is_some_and(Value::is_i64)),
        ("ath", claims.get("ath").is_none_or(Value::is_string)),
        ("nonce", claims.get("nonce").is_none_or(Value::is_string)),
    ] {
        if !ok {
            return Error::BadClaim(name);
        }
    }
    Error::BadClaim("claims")
}

fn verify_signature(
    alg: Algorithm,
    jwk: &Jwk,
    message: &[u8],
    signature: &[u8],
) -> Result<(), Error> {
    let result =
        match (jwk.verification_key()?, alg) {
            (PublicKeyBytes::Raw(key), Algorithm::ES256) => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, key)
                    .verify(message, signature)
            }
            (PublicKeyBytes::Raw(key), Algorithm::ES384) => {
                UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, key)
                    .verify(message, signature)
            }
            (PublicKeyBytes::Raw(key), Algorithm::EdDSA) => {
                UnparsedPublicKey::new(&signature::ED25519, key).verify(message, signature)
            }
            (PublicKeyBytes::Rsa { n, e }, Algorithm::RS256) => RsaPublicKeyComponents { n, e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, signature),
            (PublicKeyBytes::Rsa { n, e }, Algorithm::PS256) => RsaPublicKeyComponents { n, e }
                .verify(&signature::RSA_PSS_2048_8192_SHA256, message, signature),
            _ => {
                return Err(Error::InvalidJwk {
                    reason: format!("key cannot make {alg} signatures"),
                });
            }
        };
    result.map_err(|_| Error::BadSignature)
}
