#[cfg(feature = "lru")]
use std::cmp::Reverse;
#[cfg(feature = "lru")]
use std::collections::{BinaryHeap, HashMap};
#[cfg(feature = "lru")]
use std::num::NonZeroUsize;
#[cfg(feature = "lru")]
use std::sync::Mutex;

use aws_lc_rs::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde_json::{Map, Value};

use crate::jwk::{PRIVATE_MEMBERS, PublicKeyBytes};
use crate::strict_json::{ObjectError, parse_object};
use crate::{Algorithm, Claims, Error, Jwk, ath, b64url_decode, normalize_uri};

/// Longest proof accepted; an RSA-4096 proof is about 1.5 KiB.
const MAX_PROOF_LEN: usize = 16 * 1024;

/// Longest `jti` accepted, in bytes. Ours are 22 characters (128 bits); other clients use
/// UUIDs (36). The replay store keeps a hash, but the limit keeps every proof's work bounded.
pub const MAX_JTI_LEN: usize = 256;

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
    /// Records the pair until `expires_at` (seconds since the epoch): `Ok(true)` when it is
    /// new, `Ok(false)` when it was already recorded and has not expired. An error when it
    /// cannot be recorded ([`Error::ReplayStoreFull`], or a store's own failure): the proof
    /// is then refused, since accepting it unrecorded would let it be replayed.
    ///
    /// A store must never forget a pair before `expires_at`: forgetting early is what lets a
    /// captured proof through again.
    fn insert_if_new(&self, jkt: &str, jti: &str, expires_at: i64, now: i64)
    -> Result<bool, Error>;
}

/// An in-memory, size-bounded [`ReplayStore`]. It keeps each pair until it expires (the end
/// of the `iat` window of its proof) and never earlier: when it holds `capacity` unexpired
/// pairs it refuses new ones with [`Error::ReplayStoreFull`] rather than evicting one, so
/// nobody can flush it by sending many proofs of their own key. Expired pairs are reclaimed
/// as new ones arrive. Each pair is kept as the first 128 bits of its [`pair_hash`], in a
/// hash map and a heap ordered by expiry: 24 bytes in each plus the map's control byte and
/// spare room, between about 53 and 105 bytes per pair as the two grow by doubling (75
/// measured at a million pairs). The map never shrinks, so the store takes at most
/// `capacity` times that. Size it for the proofs a server accepts within its `iat` window
/// (`max_age + max_future` seconds); 100 000 pairs take 5 to 10 MiB.
///
/// (The name is from when it evicted the least recently used pair.)
#[cfg(feature = "lru")]
#[derive(Debug)]
pub struct LruReplayStore {
    capacity: usize,
    seen: Mutex<Seen>,
}

/// The first 128 bits of SHA-256 of `jkt`, a zero byte and `jti`: fixed-size whatever the
/// proof carried. A collision could only make a new proof look replayed (never let a replay
/// through), and one among a million pairs has a chance of about 2^-89.
#[cfg(feature = "lru")]
type PairHash = [u8; 16];

#[cfg(feature = "lru")]
#[derive(Debug, Default)]
struct Seen {
    /// Each pair's expiry.
    until: HashMap<PairHash, i64>,
    /// The same pairs, soonest expiry first, so that expired ones are found without a scan.
    by_expiry: BinaryHeap<Reverse<(i64, PairHash)>>,
}

#[cfg(feature = "lru")]
impl Seen {
    /// Forgets the pairs that expired before `now`.
    fn reclaim(&mut self, now: i64) {
        while let Some(&Reverse((until, hash))) = self.by_expiry.peek() {
            if until >= now {
                break;
            }
            self.by_expiry.pop();
            // A pair recorded again after it expired has a newer expiry; keep that one.
            if self.until.get(&hash) == Some(&until) {
                self.until.remove(&hash);
            }
        }
    }
}

#[cfg(feature = "lru")]
impl LruReplayStore {
    /// A store that holds at most `capacity` unexpired pairs.
    pub fn new(capacity: NonZeroUsize) -> Self {
        LruReplayStore {
            capacity: capacity.get(),
            seen: Mutex::new(Seen::default()),
        }
    }

    /// How many pairs it holds now (expired ones included until they are reclaimed).
    pub fn len(&self) -> usize {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .until
            .len()
    }

    /// Whether it holds no pair.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// SHA-256 of `jkt`, a zero byte and `jti`: how a replay store keeps a pair, fixed-size
/// whatever the proof carried (the in-memory store here, dpop-server's shared stores).
#[cfg(feature = "lru")]
pub fn pair_hash(jkt: &str, jti: &str) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(jkt.as_bytes());
    // A thumbprint is base64url and never holds a zero byte, so the split is unambiguous.
    ctx.update(&[0]);
    ctx.update(jti.as_bytes());
    ctx.finish()
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

#[cfg(feature = "lru")]
impl ReplayStore for LruReplayStore {
    fn insert_if_new(
        &self,
        jkt: &str,
        jti: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<bool, Error> {
        let full = pair_hash(jkt, jti);
        let hash: PairHash = full[..16].try_into().expect("16 of 32 bytes");
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.until.get(&hash).is_some_and(|&until| until >= now) {
            return Ok(false);
        }
        seen.reclaim(now);
        if seen.until.len() >= self.capacity {
            return Err(Error::ReplayStoreFull);
        }
        seen.until.insert(hash, expires_at);
        seen.by_expiry.push(Reverse((expires_at, hash)));
        Ok(true)
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
    let header = decode_json(h, "header", "header is not base64url JSON object")?;
    let claims_json = decode_json(c, "payload", "payload is not base64url JSON object")?;
    let signature = b64url_decode(s).ok_or(Error::MalformedProof("signature is not base64url"))?;
    // RFC 7515 section 4.1.11: a verifier must understand every extension `crit` names, and
    // DPoP defines none; a malformed `crit` is refused just the same.
    if header.contains_key("crit") {
        return Err(Error::CriticalHeader);
    }

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
    // 6: the signature, by that key (which must fit the algorithm).
    let signing_input = &proof.as_bytes()[..h.len() + 1 + c.len()];
    jwk.verify_signature(alg, signing_input, &signature)?;

    let claims: Claims =
        serde_json::from_value(Value::Object(claims_json)).map_err(|_| claim_error(proof))?;
    if claims.jti.is_empty() {
        return Err(Error::BadClaim("jti"));
    }
    if claims.jti.len() > MAX_JTI_LEN {
        return Err(Error::JtiTooLong {
            len: claims.jti.len(),
            max: MAX_JTI_LEN,
        });
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
    if !replay.insert_if_new(&jkt, &claims.jti, expires_at, now)? {
        return Err(Error::Replayed);
    }
    Ok(VerifiedProof {
        alg,
        jwk,
        jkt,
        claims,
    })
}

/// Decodes one part of the proof into a JSON object with unique member names.
fn decode_json(
    part: &str,
    name: &'static str,
    what: &'static str,
) -> Result<Map<String, Value>, Error> {
    let bytes = b64url_decode(part).ok_or(Error::MalformedProof(what))?;
    parse_object(&bytes).map_err(|e| match e {
        ObjectError::NotObject => Error::MalformedProof(what),
        ObjectError::DuplicateMember => Error::DuplicateMember { part: name },
    })
}

/// Names the first required claim that is missing or mistyped.
fn claim_error(proof: &str) -> Error {
    let payload = proof.split('.').nth(1).unwrap_or_default();
    let claims = decode_json(payload, "", "").unwrap_or_default();
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

impl Jwk {
    /// Checks a JWS signature (`r||s` for ECDSA) over `message` by this key with `alg`,
    /// through aws-lc-rs: what [`verify()`] does for a proof, for other JWS such as a JWT
    /// access token checked against a JWKS.
    pub fn verify_signature(
        &self,
        alg: Algorithm,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), Error> {
        if !self.fits(alg) {
            return Err(Error::InvalidJwk {
                reason: format!("key cannot make {alg} signatures"),
            });
        }
        verify_signature(alg, self, message, signature)
    }
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

#[cfg(all(test, feature = "lru"))]
mod bound_tests {
    use super::*;

    /// The store's memory is bounded by its capacity: neither the map nor the expiry heap
    /// ever holds more than `capacity` entries, whatever mix of new, replayed, expired and
    /// refused pairs arrives.
    #[test]
    fn map_and_heap_stay_within_capacity() {
        let capacity = 64;
        let store = LruReplayStore::new(NonZeroUsize::new(capacity).unwrap());
        let mut full = 0;
        for now in 0..400i64 {
            for i in 0..8 {
                // Expiries from 1 to 16 s ahead; some jti come back after they expired.
                let jti = format!("{}", (now * 8 + i) % 500);
                match store.insert_if_new("k", &jti, now + 1 + (i * 7 + now) % 16, now) {
                    Ok(_) => {}
                    Err(Error::ReplayStoreFull) => full += 1,
                    Err(e) => panic!("{e}"),
                }
                let seen = store.seen.lock().unwrap();
                assert!(seen.until.len() <= capacity, "map: {}", seen.until.len());
                assert!(
                    seen.by_expiry.len() <= capacity,
                    "heap: {}",
                    seen.by_expiry.len()
                );
            }
        }
        assert!(full > 0, "the test filled the store");
    }
}
