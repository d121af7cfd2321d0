//! [`TpmSigner`]: a TPM key that hashes here and signs the digest on the worker thread.

use std::sync::Arc;

use aws_lc_rs::digest;
use tss_esapi::structures::{Public, SignatureScheme};

use super::templates;
use super::worker::{KeyId, Tpm, Worker};
use crate::{Algorithm, BackendKind, Error, KeyKind, KeyMeta, KeySigner, SignReceiver};

/// A TPM key that signs through the worker.
pub struct TpmSigner {
    meta: KeyMeta,
    worker: Arc<Worker>,
    id: KeyId,
    kind: KeyKind,
    modulus_len: usize,
    scheme: SignatureScheme,
    hash: &'static digest::Algorithm,
    /// The key has an auth value and the backend none: signing is refused before the TPM.
    auth_missing: bool,
}

impl std::fmt::Debug for TpmSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TpmSigner")
            .field("label", &self.meta.info().label)
            .field("alg", &self.meta.info().alg)
            .finish_non_exhaustive()
    }
}

impl TpmSigner {
    /// The signer of the worker's key `id`. With the key's public area at hand, RSA
    /// signatures are padded to its modulus; without (an adopted key served from its record),
    /// they come back at full length from the TPM. `auth_missing`: the key has an auth value
    /// and the backend none, so signing is refused before the TPM is asked.
    pub(super) fn new(
        meta: KeyMeta,
        worker: Arc<Worker>,
        id: KeyId,
        public: Option<&Public>,
        auth_missing: bool,
    ) -> Result<TpmSigner, Error> {
        let alg = meta.info().alg;
        let kind = KeyKind::for_alg(alg);
        let modulus_len = match public {
            Some(Public::Rsa { unique, .. }) => unique.value().len(),
            _ => 0,
        };
        Ok(TpmSigner {
            scheme: templates::scheme_of(alg).ok_or(Error::UnsupportedAlgorithm {
                alg,
                by: "the TPM backend".into(),
            })?,
            hash: digest_of(alg),
            meta,
            worker,
            id,
            kind,
            modulus_len,
            auth_missing,
        })
    }
}

impl KeySigner for TpmSigner {
    fn meta(&self) -> &KeyMeta {
        &self.meta
    }

    /// Hashes here, signs the digest in the TPM.
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
        self.worker.run(self.sign_job(message)?)
    }

    fn is_blocking(&self) -> bool {
        true
    }

    fn sign_detached(&self, message: &[u8]) -> Option<Result<SignReceiver, Error>> {
        Some(
            self.sign_job(message)
                .and_then(|job| self.worker.run_detached(job)),
        )
    }
}

impl TpmSigner {
    /// The TPM thread's job for one signature of `message` (hashed here): sign the digest and
    /// encode the signature for JWS there too, so the answer is the final signature.
    fn sign_job(
        &self,
        message: &[u8],
    ) -> Result<impl FnOnce(&mut Tpm) -> Result<Vec<u8>, Error> + Send + 'static, Error> {
        if self.auth_missing {
            return Err(Error::AuthMissing {
                backend: BackendKind::Tpm,
                key: self.meta.info().label.to_string(),
            });
        }
        let digest = digest::digest(self.hash, message);
        let (id, scheme, kind, modulus_len) = (self.id, self.scheme, self.kind, self.modulus_len);
        Ok(move |tpm: &mut Tpm| {
            let signature = tpm.sign(id, digest.as_ref(), scheme)?;
            templates::jws_signature(&signature, kind, modulus_len)
        })
    }
}

/// The digest an algorithm signs.
fn digest_of(alg: Algorithm) -> &'static digest::Algorithm {
    match alg {
        Algorithm::ES384 => &digest::SHA384,
        _ => &digest::SHA256,
    }
}
