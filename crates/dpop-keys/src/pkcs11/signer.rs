//! Signing on the token: the [`Pkcs11Signer`] that finds its key (cached per token
//! generation), settles once which mechanism it signs with (see `mechanisms`), and signs with
//! one `C_SignInit` and one `C_Sign`.

use std::fmt;
use std::sync::{Arc, Mutex};

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::MechanismType;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use pkcs8::der::asn1::UintRef;
use pkcs8::der::{Decode, Reader, SliceReader};

use super::error::{Fail, failed, rv};
pub(crate) use super::mechanisms::{SignWith, required_mechanisms};
use super::objects::{FoundKey, Locator, find};
use super::pool::Token;
use crate::{Error, KeyMeta, KeySigner};

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

/// A key on the token, ready to sign.
pub struct Pkcs11Signer {
    meta: KeyMeta,
    token: Arc<Token>,
    locator: Locator,
    /// The mechanism chosen from the token's list; settled against the key's
    /// `CKA_ALLOWED_MECHANISMS` when the key is first found.
    with: Mutex<Choice>,
    /// The private key as last found.
    found: Mutex<Option<FoundKey>>,
}

/// The signing mechanism, and whether the key's own allowed mechanisms were consulted yet.
#[derive(Clone, Copy, Debug)]
struct Choice {
    with: SignWith,
    settled: bool,
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
            with: Mutex::new(Choice {
                with,
                settled: false,
            }),
            found: Mutex::new(found),
        }
    }

    /// The mechanism to sign with, settled on first use: when the key's
    /// `CKA_ALLOWED_MECHANISMS` names mechanisms and not the one chosen from the token's list,
    /// the other form (combined or raw) that the key allows and the token offers. A key made
    /// when the token offered other mechanisms, or by another program, then still signs.
    fn settle(&self, session: &Session, key: ObjectHandle) -> SignWith {
        let mut choice = self.with.lock().unwrap_or_else(|p| p.into_inner());
        if choice.settled {
            return choice.with;
        }
        let allowed = allowed_mechanisms(session, key);
        if !allowed.is_empty() && !allowed.contains(&choice.with.mechanism_type()) {
            let alg = self.meta.info().alg;
            if let Some(other) = SignWith::for_key(alg, &self.token.mechanisms(), &allowed) {
                tracing::debug!(
                    label = %self.meta.info().label,
                    mechanism = %other.mechanism_type(),
                    "the key allows another mechanism than the token's preferred one"
                );
                choice.with = other;
            }
        }
        choice.settled = true;
        choice.with
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

/// The key's `CKA_ALLOWED_MECHANISMS`; empty when it has none or the token does not know the
/// attribute (it came with PKCS#11 2.40).
fn allowed_mechanisms(session: &Session, key: ObjectHandle) -> Vec<MechanismType> {
    match session.get_attributes(key, &[AttributeType::AllowedMechanisms]) {
        Ok(attributes) => attributes
            .into_iter()
            .find_map(|a| match a {
                Attribute::AllowedMechanisms(m) => Some(m),
                _ => None,
            })
            .unwrap_or_default(),
        Err(_) => Vec::new(),
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
        let mut used = None;
        let sign = |session: &Session, key: FoundKey, used: &mut Option<SignWith>| {
            let with = self.settle(session, key.handle);
            *used = Some(with);
            self.token.sign(
                session,
                &with.mechanism(),
                key.handle,
                &with.data(message),
                with.signature_room(),
                key.always_authenticate,
            )
        };
        let signature = self.token.run(|session, generation| {
            let key = match self.cached_key(generation) {
                Some(k) => k,
                None => self.find_key(session, generation)?,
            };
            match sign(session, key, &mut used) {
                // The object was re-created (or the cache is stale): find it by CKA_ID again.
                Err(Fail::Ck(e)) if handle_invalid(&e) => {
                    sign(session, self.find_key(session, generation)?, &mut used)
                }
                other => other,
            }
        })?;
        match used.and_then(SignWith::ecdsa_half) {
            Some(n) => ecdsa_to_jws(&signature, n),
            None => Ok(signature),
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
