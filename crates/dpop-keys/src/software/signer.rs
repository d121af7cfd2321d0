//! The signers of software keys: [`SoftwareSigner`], and the sealed stand-in a locked agent
//! lists in its place.

use std::sync::Arc;

use aws_lc_rs::rand::SystemRandom;

use super::key::SoftKey;
use crate::store_key::key_aad;
use crate::{Error, KeyMeta, KeySigner, SealingKey, SignerRef};

/// A software key ready to sign.
pub struct SoftwareSigner {
    meta: KeyMeta,
    key: SoftKey,
    rng: SystemRandom,
}

impl SoftwareSigner {
    pub(super) fn new(meta: KeyMeta, key: SoftKey) -> SoftwareSigner {
        SoftwareSigner {
            meta,
            key,
            rng: SystemRandom::new(),
        }
    }
}

impl std::fmt::Debug for SoftwareSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoftwareSigner")
            .field("label", &self.meta.info().label)
            .field("alg", &self.meta.info().alg)
            .finish_non_exhaustive()
    }
}

impl KeySigner for SoftwareSigner {
    fn meta(&self) -> &KeyMeta {
        &self.meta
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
        self.key.sign(&self.rng, message)
    }

    fn is_blocking(&self) -> bool {
        false
    }

    fn sealed(&self, key: &SealingKey) -> Option<Result<SignerRef, Error>> {
        let info = self.meta.info();
        let sealed = self
            .key
            .pkcs8()
            .and_then(|pkcs8| key.seal(&pkcs8, &key_aad(&info.label, info.alg)));
        Some(sealed.map(|sealed| {
            Arc::new(SealedSigner {
                meta: self.meta.clone(),
                sealed,
            }) as SignerRef
        }))
    }
}

/// A software key while the agent is locked: listed as before, its PKCS#8 sealed under the
/// lock's key, unable to sign.
struct SealedSigner {
    meta: KeyMeta,
    sealed: Vec<u8>,
}

impl std::fmt::Debug for SealedSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedSigner")
            .field("label", &self.meta.info().label)
            .finish_non_exhaustive()
    }
}

impl KeySigner for SealedSigner {
    fn meta(&self) -> &KeyMeta {
        &self.meta
    }

    fn sign(&self, _message: &[u8]) -> Result<Vec<u8>, Error> {
        Err(Error::Sealed)
    }

    fn is_blocking(&self) -> bool {
        false
    }

    fn unsealed(&self, key: &SealingKey) -> Option<Result<SignerRef, Error>> {
        let info = self.meta.info();
        let der = match key.unseal(&self.sealed, &key_aad(&info.label, info.alg)) {
            Some(der) => der,
            None => return Some(Err(Error::Crypto("unsealing a software key"))),
        };
        Some(
            SoftKey::from_pkcs8(info.alg, &der)
                .and_then(|key| key.into_signer(info.label.clone(), info.persistent)),
        )
    }
}
