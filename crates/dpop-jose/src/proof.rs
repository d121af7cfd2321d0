use std::fmt;

use serde::{Deserialize, Serialize};

#[cfg(feature = "crypto")]
use crate::Htu;
use crate::{Algorithm, Error, Jwk, b64url_encode};

/// An HTTP method for `htm`: a non-empty RFC 9110 token without lower-case letters (`GET`,
/// `POST`, `PROPFIND`). Methods are case-sensitive, and a lower-case `get` is almost always a
/// mistake that the server would reject, so it is refused here with a clear message.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Method(String);

impl Method {
    /// Validates a method.
    pub fn new(method: &str) -> Result<Method, Error> {
        let bad = |reason| Error::InvalidMethod {
            method: method.to_owned(),
            reason,
        };
        if method.is_empty() {
            return Err(bad("empty"));
        }
        if method.len() > 32 {
            return Err(bad("longer than 32 characters"));
        }
        if method.bytes().any(|b| b.is_ascii_lowercase()) {
            return Err(bad("HTTP methods are upper-case (GET, POST, ...)"));
        }
        let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if !method.bytes().all(tchar) {
            return Err(bad("not an HTTP token"));
        }
        Ok(Method(method.to_owned()))
    }

    /// The method.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `ath`: base64url(SHA-256(access token)), RFC 9449 section 4.2. The token must be ASCII
/// in the RFC 6750 `b64token` alphabet, which is what an `Authorization: DPoP` header can carry.
#[cfg(feature = "crypto")]
pub fn ath(access_token: &str) -> Result<String, Error> {
    if access_token.is_empty() {
        return Err(Error::InvalidAccessToken { reason: "empty" });
    }
    let b64token = |b: u8| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b);
    if !access_token.bytes().all(b64token) {
        return Err(Error::InvalidAccessToken {
            reason: "characters outside the RFC 6750 token syntax",
        });
    }
    Ok(b64url_encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        access_token.as_bytes(),
    )))
}

/// A fresh `jti`: 128 random bits, base64url.
#[cfg(feature = "crypto")]
pub fn new_jti() -> String {
    use aws_lc_rs::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("system random generator failed");
    b64url_encode(bytes)
}

/// The JOSE header of a proof: `typ` `dpop+jwt`, the algorithm and the public key.
/// It is the same for every proof of a key, so signers keep it [`encoded`](Self::encoded).
#[derive(Clone, Debug)]
pub struct ProofHeader {
    alg: Algorithm,
    encoded: String,
}

#[derive(Serialize)]
struct HeaderJson<'a> {
    typ: &'static str,
    alg: &'static str,
    jwk: &'a Jwk,
}

impl ProofHeader {
    /// The header for proofs signed with `alg` by the key `jwk`.
    pub fn new(alg: Algorithm, jwk: &Jwk) -> Result<ProofHeader, Error> {
        if !jwk.fits(alg) {
            return Err(Error::InvalidJwk {
                reason: format!("key cannot make {alg} signatures"),
            });
        }
        let json = serde_json::to_vec(&HeaderJson {
            typ: "dpop+jwt",
            alg: alg.as_str(),
            jwk,
        })
        .expect("header serializes");
        Ok(ProofHeader {
            alg,
            encoded: b64url_encode(json),
        })
    }

    /// The algorithm.
    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    /// The base64url-encoded header, the first part of every proof.
    pub fn encoded(&self) -> &str {
        &self.encoded
    }
}

/// The claims of a proof (RFC 9449 section 4.2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Unique identifier, 128 random bits.
    pub jti: String,
    /// HTTP method.
    pub htm: String,
    /// HTTP target URI without query and fragment.
    pub htu: String,
    /// Creation time, seconds since the Unix epoch.
    pub iat: i64,
    /// Hash of the access token, when one is presented.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ath: Option<String>,
    /// The server's `DPoP-Nonce`, when it asked for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
}

impl Claims {
    /// Claims for one request, with a fresh `jti`.
    #[cfg(feature = "crypto")]
    pub fn new(method: &Method, htu: &Htu, iat: i64) -> Claims {
        Claims {
            jti: new_jti(),
            htm: method.as_str().to_owned(),
            htu: htu.as_str().to_owned(),
            iat,
            ath: None,
            nonce: None,
        }
    }

    /// Adds `ath` for the access token presented with the request.
    #[cfg(feature = "crypto")]
    pub fn with_access_token(mut self, access_token: &str) -> Result<Claims, Error> {
        self.ath = Some(ath(access_token)?);
        Ok(self)
    }

    /// Adds `ath` computed elsewhere (base64url of the token's SHA-256 hash), for callers that
    /// do not hold the token itself.
    pub fn with_ath(mut self, ath: String) -> Result<Claims, Error> {
        if crate::b64url_decode(&ath).is_none_or(|hash| hash.len() != 32) {
            return Err(Error::InvalidAth);
        }
        self.ath = Some(ath);
        Ok(self)
    }

    /// Adds the server-provided nonce, which must pass [`check_nonce`].
    pub fn with_nonce(mut self, nonce: Option<&str>) -> Result<Claims, Error> {
        if let Some(n) = nonce {
            check_nonce(n)?;
        }
        self.nonce = nonce.map(str::to_owned);
        Ok(self)
    }
}

/// Longest nonce accepted; servers send far shorter ones.
pub const MAX_NONCE_LEN: usize = 1024;

/// Checks a `DPoP-Nonce` value: the RFC 9449 section 8 syntax (`1*NQCHAR`) and at most
/// [`MAX_NONCE_LEN`] bytes, so that it can round-trip in a header.
pub fn check_nonce(nonce: &str) -> Result<(), Error> {
    let nqchar = |b: u8| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b);
    if nonce.is_empty() || nonce.len() > MAX_NONCE_LEN || !nonce.bytes().all(nqchar) {
        return Err(Error::InvalidNonce);
    }
    Ok(())
}

/// Something that signs with a private key it keeps to itself: a software key, a PKCS#11
/// object, a TPM key.
pub trait Signer {
    /// The error the signer reports.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The cached proof header of this key.
    fn header(&self) -> &ProofHeader;

    /// Signs `message` and returns the JWS signature: `r||s` for ECDSA (never DER), the raw
    /// signature for RSA and EdDSA.
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Self::Error>;
}

/// Signs a compact DPoP proof: `header.claims.signature`.
pub fn sign_proof<S: Signer + ?Sized>(signer: &S, claims: &Claims) -> Result<String, Error> {
    let header = signer.header();
    let input = signing_input(header, claims);
    let signature = signer
        .sign(input.as_bytes())
        .map_err(|e| Error::Signer(Box::new(e)))?;
    finish_proof(header, input, &signature)
}

/// The part of a proof that is signed (`header.claims`, base64url), for a signer that works
/// apart from [`sign_proof`] (one that answers later, on a thread of its own); the proof is
/// then [`finish_proof`].
pub fn signing_input(header: &ProofHeader, claims: &Claims) -> String {
    let claims = serde_json::to_vec(claims).expect("claims serialize");
    let mut input = String::with_capacity(header.encoded().len() + claims.len() * 4 / 3 + 100);
    input.push_str(header.encoded());
    input.push('.');
    base64::Engine::encode_string(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        &claims,
        &mut input,
    );
    input
}

/// The compact proof from [`signing_input`] and its JWS signature; the signature's length is
/// checked against the header's algorithm.
pub fn finish_proof(
    header: &ProofHeader,
    input: String,
    signature: &[u8],
) -> Result<String, Error> {
    if let Some(expected) = header.alg().signature_len()
        && signature.len() != expected
    {
        return Err(Error::SignatureLength {
            alg: header.alg(),
            got: signature.len(),
            expected,
        });
    }
    let mut proof = input;
    proof.push('.');
    base64::Engine::encode_string(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        signature,
        &mut proof,
    );
    Ok(proof)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "crypto")]
    #[test]
    fn rfc9449_ath_vector() {
        assert_eq!(
            ath("Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU").unwrap(),
            "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"
        );
        assert!(ath("").is_err());
        assert!(ath("tok en").is_err());
        assert!(ath("tøken").is_err());
    }

    #[test]
    fn methods() {
        for ok in ["GET", "POST", "PROPFIND", "M-SEARCH"] {
            Method::new(ok).unwrap();
        }
        for bad in ["", "get", "Post", "GE T", "GET\n", "G\u{e9}T"] {
            assert!(Method::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[cfg(feature = "crypto")]
    #[test]
    fn jti_is_128_bits_and_fresh() {
        let a = new_jti();
        assert_eq!(crate::b64url_decode(&a).unwrap().len(), 16);
        assert_ne!(a, new_jti());
    }
}
