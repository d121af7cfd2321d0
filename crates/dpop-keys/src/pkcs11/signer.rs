//! Signing on the token: which mechanism an algorithm uses there, and the [`Pkcs11Signer`]
//! that finds its key (cached per token generation) and signs with one `C_SignInit` and one
//! `C_Sign`.

use std::fmt;
use std::sync::{Arc, Mutex};

use aws_lc_rs::digest;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::ObjectClass;
use cryptoki::session::Session;
use pkcs8::der::asn1::UintRef;
use pkcs8::der::{Decode, Reader, SliceReader};

use super::error::{Fail, failed, rv};
use super::objects::{FoundKey, Locator, find};
use super::pool::Token;
use crate::{Algorithm, Error, KeyMeta, KeySigner};

/// ECDSA signature from the token -> JWS `r||s`, each `n` bytes. PKCS#11 specifies `r||s`;
/// a few tokens return DER anyway.
pub(crate) fn ecdsa_to_jws(sig: &[u8], n: usize) -> Result<Vec<u8>, Error> {
    if sig.len() == 2 * n {
        return Ok(sig.to_vec());
    }
    let bad = || {
        failed(
            "C_Sign",
            format!(
                "ECDSA signature of {} bytes is neither r||s nor DER",
                sig.len()
            ),
        )
    };
    let parse = || -> Result<(Vec<u8>, Vec<u8>), pkcs8::der::Error> {
        let mut reader = SliceReader::new(sig)?;
        let (r, s) = reader.sequence(|seq| -> Result<_, pkcs8::der::Error> {
            let r = UintRef::decode(seq)?;
            let s = UintRef::decode(seq)?;
            Ok((r.as_bytes().to_vec(), s.as_bytes().to_vec()))
        })?;
        reader.finish()?;
        Ok((r, s))
    };
    let (r, s) = parse().map_err(|_| bad())?;
    if r.len() > n || s.len() > n {
        return Err(bad());
    }
    let mut out = vec![0u8; 2 * n];
    out[n - r.len()..n].copy_from_slice(&r);
    out[2 * n - s.len()..].copy_from_slice(&s);
    Ok(out)
}

/// The mechanisms a token needs to generate and sign with `alg`.
pub(crate) fn required_mechanisms(alg: Algorithm) -> (MechanismType, &'static [MechanismType]) {
    match alg {
        Algorithm::ES256 | Algorithm::ES384 => (
            MechanismType::ECC_KEY_PAIR_GEN,
            &[MechanismType::ECDSA, MechanismType::ECDSA_SHA256],
        ),
        Algorithm::RS256 => (
            MechanismType::RSA_PKCS_KEY_PAIR_GEN,
            &[MechanismType::SHA256_RSA_PKCS],
        ),
        Algorithm::PS256 => (
            MechanismType::RSA_PKCS_KEY_PAIR_GEN,
            &[MechanismType::SHA256_RSA_PKCS_PSS],
        ),
        Algorithm::EdDSA => (
            MechanismType::ECC_EDWARDS_KEY_PAIR_GEN,
            &[MechanismType::EDDSA],
        ),
    }
}

/// How a signer asks the token to sign.
#[derive(Clone, Copy, Debug)]
pub(crate) enum SignWith {
    /// CKM_ECDSA over a digest we compute; `n` is the coordinate length.
    EcdsaDigest(&'static digest::Algorithm, usize),
    /// CKM_ECDSA_SHA256 (or _SHA384) when the token lacks raw CKM_ECDSA.
    EcdsaHashing(Algorithm, usize),
    /// CKM_SHA256_RSA_PKCS.
    RsaPkcs,
    /// CKM_SHA256_RSA_PKCS_PSS, SHA-256, MGF1-SHA-256, 32-byte salt.
    RsaPss,
    /// CKM_EDDSA (pure Ed25519).
    Eddsa,
}

impl SignWith {
    /// Picks the mechanism for `alg` from what the token lists; `None` when it has none.
    pub(crate) fn choose(alg: Algorithm, mechanisms: &[MechanismType]) -> Option<SignWith> {
        let has = |m| mechanisms.contains(&m);
        match alg {
            Algorithm::ES256 if has(MechanismType::ECDSA) => {
                Some(SignWith::EcdsaDigest(&digest::SHA256, 32))
            }
            Algorithm::ES256 if has(MechanismType::ECDSA_SHA256) => {
                Some(SignWith::EcdsaHashing(alg, 32))
            }
            Algorithm::ES384 if has(MechanismType::ECDSA) => {
                Some(SignWith::EcdsaDigest(&digest::SHA384, 48))
            }
            Algorithm::ES384 if has(MechanismType::ECDSA_SHA384) => {
                Some(SignWith::EcdsaHashing(alg, 48))
            }
            Algorithm::RS256 if has(MechanismType::SHA256_RSA_PKCS) => Some(SignWith::RsaPkcs),
            Algorithm::PS256 if has(MechanismType::SHA256_RSA_PKCS_PSS) => Some(SignWith::RsaPss),
            Algorithm::EdDSA if has(MechanismType::EDDSA) => Some(SignWith::Eddsa),
            _ => None,
        }
    }

    /// Room to make for a signature: ECDSA as r||s or, from some tokens, DER (up to 9 bytes
    /// more); RSA up to 4096 bits (a token with a larger key says so and gets a second call).
    fn signature_room(self) -> usize {
        match self {
            SignWith::EcdsaDigest(_, n) | SignWith::EcdsaHashing(_, n) => 2 * n + 9,
            SignWith::RsaPkcs | SignWith::RsaPss => 512,
            SignWith::Eddsa => 64,
        }
    }

    /// The one mechanism this key signs with, for its `CKA_ALLOWED_MECHANISMS`.
    pub(crate) fn mechanism_type(self) -> MechanismType {
        self.mechanism().mechanism_type()
    }

    fn mechanism(self) -> Mechanism<'static> {
        match self {
            SignWith::EcdsaDigest(..) => Mechanism::Ecdsa,
            SignWith::EcdsaHashing(Algorithm::ES384, _) => Mechanism::EcdsaSha384,
            SignWith::EcdsaHashing(..) => Mechanism::EcdsaSha256,
            SignWith::RsaPkcs => Mechanism::Sha256RsaPkcs,
            SignWith::RsaPss => Mechanism::Sha256RsaPkcsPss(PkcsPssParams {
                hash_alg: MechanismType::SHA256,
                mgf: PkcsMgfType::MGF1_SHA256,
                s_len: 32.into(),
            }),
            SignWith::Eddsa => Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
        }
    }
}

/// A key on the token, ready to sign.
pub struct Pkcs11Signer {
    meta: KeyMeta,
    token: Arc<Token>,
    locator: Locator,
    with: SignWith,
    /// The private key as last found.
    found: Mutex<Option<FoundKey>>,
}

impl fmt::Debug for Pkcs11Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Signer")
            .field("label", &self.meta.info().label)
            .field("alg", &self.meta.info().alg)
            .field("location", &self.meta.info().location)
            .finish_non_exhaustive()
    }
}

impl Pkcs11Signer {
    pub(crate) fn new(
        meta: KeyMeta,
        token: Arc<Token>,
        locator: Locator,
        with: SignWith,
        found: Option<FoundKey>,
    ) -> Pkcs11Signer {
        if let Some(f) = found {
            f.note(&meta);
        }
        Pkcs11Signer {
            meta,
            token,
            locator,
            with,
            found: Mutex::new(found),
        }
    }

    fn find_key(&self, session: &Session, generation: u64) -> Result<FoundKey, Fail> {
        let found = find(session, &self.locator.template(ObjectClass::PRIVATE_KEY))?;
        if found.is_empty() {
            self.token.explain_missing(session, generation)?;
        }
        let [handle] = found[..] else {
            tracing::debug!(
                label = %self.meta.info().label,
                matching = found.len(),
                "the key's private object is not on the token exactly once"
            );
            return Err(Error::KeyNotFound {
                label: self.meta.info().label.to_string(),
            }
            .into());
        };
        let found = FoundKey::read(session, generation, handle);
        found.note(&self.meta);
        *self.found.lock().unwrap_or_else(|p| p.into_inner()) = Some(found);
        Ok(found)
    }

    fn cached_key(&self, generation: u64) -> Option<FoundKey> {
        self.found
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .filter(|f| f.generation == generation)
    }
}

fn handle_invalid(e: &CkError) -> bool {
    matches!(
        rv(e),
        Some(RvError::ObjectHandleInvalid | RvError::KeyHandleInvalid)
    )
}

impl KeySigner for Pkcs11Signer {
    fn meta(&self) -> &KeyMeta {
        &self.meta
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
        let hashed;
        let data: &[u8] = match self.with {
            SignWith::EcdsaDigest(d, _) => {
                hashed = digest::digest(d, message);
                hashed.as_ref()
            }
            _ => message,
        };
        let mechanism = self.with.mechanism();
        let sign = |session: &Session, key: FoundKey| {
            self.token.sign(
                session,
                &mechanism,
                key.handle,
                data,
                self.with.signature_room(),
                key.always_authenticate,
            )
        };
        let signature = self.token.run(|session, generation| {
            let key = match self.cached_key(generation) {
                Some(k) => k,
                None => self.find_key(session, generation)?,
            };
            match sign(session, key) {
                // The object was re-created (or the cache is stale): find it by CKA_ID again.
                Err(Fail::Ck(e)) if handle_invalid(&e) => {
                    sign(session, self.find_key(session, generation)?)
                }
                other => other,
            }
        })?;
        match self.with {
            SignWith::EcdsaDigest(_, n) | SignWith::EcdsaHashing(_, n) => {
                ecdsa_to_jws(&signature, n)
            }
            _ => Ok(signature),
        }
    }

    fn is_blocking(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecdsa_der_becomes_r_s() {
        // r = 0x00ff.. (needs a leading zero in DER), s = 0x01 (short).
        let r = [0xffu8; 32];
        let mut der = vec![0x30, 0x00, 0x02, 0x21, 0x00];
        der.extend(r);
        der.extend([0x02, 0x01, 0x01]);
        der[1] = (der.len() - 2) as u8;
        let jws = ecdsa_to_jws(&der, 32).unwrap();
        assert_eq!(&jws[..32], &r);
        assert_eq!(&jws[32..63], &[0u8; 31]);
        assert_eq!(jws[63], 1);
        let raw = [9u8; 64];
        assert_eq!(ecdsa_to_jws(&raw, 32).unwrap(), raw);
        assert!(ecdsa_to_jws(&[0x30, 0x01], 32).is_err());
    }
}
