//! The backend value: keys as records in the store and slots in the worker.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aws_lc_rs::signature;
use secrecy::{ExposeSecret, SecretString};
use tss_esapi::structures::{Auth, Public};

use super::record::{Origin, TpmRecord, handle_text, parse_handle};
use super::signer::TpmSigner;
use super::worker::{KeyId, KeySource, Worker};
use super::{TpmConfig, templates};
use crate::records::RecordStore;
use crate::{
    AdoptOptions, Algorithm, Backend, BackendKind, Error, KeyLabel, KeyMeta, KeySigner, SealingKey,
    SignerRef,
};

/// Keys in one TPM 2.0, used through a worker thread that owns the tss-esapi context.
pub struct TpmBackend {
    worker: Arc<Worker>,
    records: RecordStore,
    auth: Mutex<AuthValue>,
    /// The worker's number for each served key.
    ids: Mutex<HashMap<KeyLabel, KeyId>>,
}

impl std::fmt::Debug for TpmBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TpmBackend")
            .field("tcti", &self.worker.tcti())
            .field("metadata_dir", &self.records.dir())
            .field(
                "auth",
                &!matches!(
                    *self.auth.lock().unwrap_or_else(|p| p.into_inner()),
                    AuthValue::None
                ),
            )
            .finish()
    }
}

/// The keys' auth value, as the backend holds it.
enum AuthValue {
    /// Keys have none.
    None,
    /// In memory, for new keys and to give back to the worker on unlock.
    Open(SecretString),
    /// The agent is locked: sealed under the lock's key (see [`Backend::seal`]).
    Sealed(Vec<u8>),
}

/// What a sealed auth value is bound to.
const SEALED_AUTH_AAD: &[u8] = b"dpop-agent tpm auth value";

/// The message a PS256 self-test signs.
const PSS_PROBE: &[u8] = b"dpop-agent: does this TPM's RSASSA-PSS use salt = hash length?";

impl TpmBackend {
    /// Starts the worker on the configured TCTI and tries to reach the TPM. An unreachable
    /// TPM is logged, not fatal: keys are listed from their records and signing answers
    /// [`Error::DeviceUnavailable`] until the TPM is back. A TCTI that does not parse, or a
    /// record directory that cannot be made, is an error.
    pub fn open(config: TpmConfig) -> Result<TpmBackend, Error> {
        let records = RecordStore::open(config.metadata_dir)?;
        let worker = Worker::start(&config.tcti)?;
        if let Err(e) = worker.run(|tpm| tpm.check()) {
            tracing::warn!("TPM not ready: {e}");
        }
        Ok(TpmBackend {
            worker: Arc::new(worker),
            records,
            auth: Mutex::new(config.auth.map_or(AuthValue::None, AuthValue::Open)),
            ids: Mutex::new(HashMap::new()),
        })
    }

    /// The TCTI in use.
    pub fn tcti(&self) -> &str {
        self.worker.tcti()
    }

    fn id(&self, label: &KeyLabel) -> Result<KeyId, Error> {
        self.ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(label)
            .copied()
            .ok_or_else(|| Error::KeyNotFound {
                label: label.to_string(),
            })
    }

    /// The agent's auth value for keys, as tss-esapi wants it; [`Error::Sealed`] while the
    /// agent is locked.
    fn auth_value(&self) -> Result<Option<Auth>, Error> {
        match &*self.auth.lock().unwrap_or_else(|p| p.into_inner()) {
            AuthValue::None => Ok(None),
            AuthValue::Open(secret) => to_auth(secret.expose_secret().as_bytes()).map(Some),
            AuthValue::Sealed(_) => Err(Error::Sealed),
        }
    }

    /// The auth value a recorded key is used with.
    fn auth_for(&self, label: &KeyLabel, has_auth: bool) -> Result<Option<Auth>, Error> {
        if !has_auth {
            return Ok(None);
        }
        match self.auth_value()? {
            Some(auth) => Ok(Some(auth)),
            None => Err(Error::AuthMissing {
                backend: BackendKind::Tpm,
                key: label.to_string(),
            }),
        }
    }

    /// Registers a key with the worker and makes its signer (see [`TpmSigner::new`] for
    /// `auth_missing`).
    fn serve(
        &self,
        label: &KeyLabel,
        alg: Algorithm,
        source: KeySource,
        auth: Option<Auth>,
        public: &Public,
        auth_missing: bool,
    ) -> Result<(KeyId, Arc<TpmSigner>), Error> {
        let (kind, jwk) = templates::describe(public)?;
        let alg = kind.alg_for(Some(alg))?;
        let meta = KeyMeta::new(
            label.clone(),
            alg,
            BackendKind::Tpm,
            jwk,
            true,
            Some(self.location(&source)),
        )?;
        let name = label.to_string();
        let id = self
            .worker
            .run(move |tpm| Ok(tpm.add(&name, source, auth)))?;
        self.ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(label.clone(), id);
        let signer = TpmSigner::new(meta, self.worker.clone(), id, Some(public), auth_missing)?;
        let signer = Arc::new(signer);
        Ok((id, signer))
    }

    fn location(&self, source: &KeySource) -> String {
        match source {
            KeySource::Persistent(handle) => format!("tpm:handle={}", handle_text(*handle)),
            KeySource::Blob { .. } => format!("tpm ({})", self.worker.tcti()),
        }
    }

    /// Undoes [`serve`](Self::serve) after a later step failed.
    fn unserve(&self, label: &KeyLabel, id: KeyId) {
        self.ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(label);
        let _ = self.worker.run(move |tpm| {
            tpm.forget(id);
            Ok(())
        });
    }

    /// Files the record of a new key, or undoes the key.
    fn file(&self, record: &TpmRecord, id: KeyId) -> Result<(), Error> {
        self.records.write_new(record).inspect_err(|_| {
            self.unserve(&record.label, id);
        })
    }

    /// Signs a probe with a new PS256 key and checks it with aws-lc-rs' PSS verifier, which
    /// wants salt = hash length (RFC 7518 3.5); a TPM that uses the longest salt fails here.
    fn check_pss(&self, signer: &TpmSigner, public: &Public) -> Result<(), Error> {
        let Public::Rsa {
            parameters, unique, ..
        } = public
        else {
            return Err(Error::Crypto("a PS256 key that is not RSA"));
        };
        let exponent = match parameters.exponent().value() {
            0 => 65537u32,
            e => e,
        }
        .to_be_bytes();
        // Minimal big-endian: aws-lc-rs refuses an exponent with leading zero bytes.
        let first = exponent.iter().position(|&b| b != 0).unwrap_or(3);
        let components = signature::RsaPublicKeyComponents {
            n: unique.value(),
            e: &exponent[first..],
        };
        let signed = signer.sign(PSS_PROBE)?;
        components
            .verify(&signature::RSA_PSS_2048_8192_SHA256, PSS_PROBE, &signed)
            .map_err(|_| Error::UnsupportedAlgorithm {
                alg: Algorithm::PS256,
                by: "this TPM: its RSASSA-PSS signatures do not verify with salt length = hash \
                     length, which JOSE verifiers expect (RFC 7518 3.5); use RS256 or ES256"
                    .into(),
            })
    }

    /// Makes a key from `template` under the SRK, serves and records it.
    fn make(
        &self,
        label: &KeyLabel,
        alg: Algorithm,
        origin: Origin,
        make: impl FnOnce(
            &Worker,
            Option<Auth>,
        ) -> Result<(Public, tss_esapi::structures::Private), Error>,
    ) -> Result<SignerRef, Error> {
        self.records.check_free(label)?;
        let auth = self.auth_value()?;
        let has_auth = auth.is_some();
        let (public, private) = make(&self.worker, auth.clone())?;
        let (_, jwk) = templates::describe(&public)?;
        let record = TpmRecord::with_blobs(label, alg, origin, &public, &private, has_auth, jwk)?;
        let source = KeySource::Blob {
            public: public.clone(),
            private,
        };
        let (id, signer) = self.serve(label, alg, source, auth, &public, false)?;
        if alg == Algorithm::PS256
            && let Err(e) = self.check_pss(&signer, &public)
        {
            self.unserve(label, id);
            return Err(e);
        }
        self.file(&record, id)?;
        Ok(signer)
    }
}

impl Backend for TpmBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Tpm
    }

    fn algorithms(&self) -> Vec<Algorithm> {
        vec![
            Algorithm::ES256,
            Algorithm::ES384,
            Algorithm::RS256,
            Algorithm::PS256,
        ]
    }

    /// Serves every record. A record that cannot be read is logged and skipped; a key the
    /// TPM refuses to load (damaged blob, another TPM, TPM cleared) is logged and still
    /// served, so that signing with it names the problem.
    fn load(&self) -> Result<Vec<SignerRef>, Error> {
        let mut signers: Vec<SignerRef> = Vec::new();
        for path in self.records.list()? {
            let loaded = self.records.read::<TpmRecord>(&path).and_then(|record| {
                let source = record.source(&path)?;
                // A key whose auth value the agent lacks is still listed; its proofs say why
                // they fail.
                let (auth, auth_missing) = match self.auth_for(&record.label, record.auth) {
                    Ok(auth) => (auth, false),
                    Err(Error::AuthMissing { .. }) => (None, true),
                    Err(e) => return Err(e),
                };
                let public = match &source {
                    KeySource::Blob { public, .. } => public.clone(),
                    KeySource::Persistent(_) => {
                        // Served from the record's JWK; the TPM reads the area on first use.
                        return self.serve_adopted_record(&record, source, auth, auth_missing);
                    }
                };
                let (id, signer) = self.serve(
                    &record.label,
                    record.alg,
                    source,
                    auth,
                    &public,
                    auth_missing,
                )?;
                Ok((id, signer as SignerRef))
            });
            match loaded {
                Ok((id, signer)) => {
                    let label = signer.meta().info().label.to_string();
                    if let Err(e) = self.worker.run(move |tpm| tpm.load(id)) {
                        // Also when the TPM is down: the key is served and signing says so.
                        tracing::warn!(key = %label, "TPM key not loaded: {e}");
                    }
                    signers.push(signer);
                }
                Err(e) => tracing::warn!(path = %path.display(), "TPM key record skipped: {e}"),
            }
        }
        Ok(signers)
    }

    fn generate(&self, label: &KeyLabel, alg: Algorithm) -> Result<SignerRef, Error> {
        let template = templates::key(alg, true, None)?;
        self.make(label, alg, Origin::Generated, |worker, auth| {
            worker.run(move |tpm| tpm.create(&template, auth))
        })
    }

    fn import_pem(
        &self,
        label: &KeyLabel,
        pem: &[u8],
        alg: Option<Algorithm>,
    ) -> Result<SignerRef, Error> {
        let (alg, public, duplicate) = super::import::duplicate(pem, alg, self.auth_value()?)?;
        self.make(label, alg, Origin::Imported, move |worker, _| {
            worker.run(move |tpm| {
                let private = tpm.import(&public, &duplicate)?;
                Ok((public, private))
            })
        })
    }

    fn adopt(
        &self,
        uri: &str,
        label: &KeyLabel,
        alg: Option<Algorithm>,
        _options: AdoptOptions,
    ) -> Result<SignerRef, Error> {
        let handle = parse_tpm_uri(uri)?;
        self.records.check_free(label)?;
        for path in self.records.list()? {
            if let Ok(record) = self.records.read::<TpmRecord>(&path)
                && record.handle.as_deref().and_then(parse_handle) == Some(handle)
            {
                return Err(Error::KeyAlreadyManaged {
                    backend: BackendKind::Tpm,
                    label: record.label.to_string(),
                });
            }
        }
        let auth = self.auth_value()?;
        let has_auth = auth.is_some();
        let source = KeySource::Persistent(handle);
        let name = label.to_string();
        // Reads the public area before anything is served: a handle with no key, or with a
        // key we cannot sign with, is refused here.
        let public = self.worker.run(move |tpm| {
            if !tpm.persistent_exists(handle)? {
                return Err(Error::NothingAtUri {
                    backend: BackendKind::Tpm,
                    uri: format!("tpm:handle={}", handle_text(handle)),
                });
            }
            let id = tpm.add(&name, source, None);
            let public = tpm.read_public(id);
            tpm.forget(id);
            public
        })?;
        let (kind, jwk) = templates::describe(&public)?;
        let alg = kind.alg_for(alg)?;
        let (id, signer) = self.serve(
            label,
            alg,
            KeySource::Persistent(handle),
            auth,
            &public,
            false,
        )?;
        let record = TpmRecord {
            version: 1,
            label: label.clone(),
            alg,
            origin: Origin::Adopted,
            public: None,
            private: None,
            handle: Some(handle_text(handle)),
            auth: has_auth,
            jwk,
        };
        self.file(&record, id)?;
        Ok(signer)
    }

    fn delete(&self, label: &KeyLabel) -> Result<(), Error> {
        let id = self.id(label)?;
        // The blob is the key: once the record is gone, nothing can load it again.
        self.records.remove(label)?;
        self.unserve(label, id);
        Ok(())
    }

    /// The agent is locked: the auth value is sealed under `key`, and the worker forgets it
    /// (every key's copy, and the ESAPI context's), so keys sign nothing until unlocked.
    fn seal(&self, key: &SealingKey) -> Result<(), Error> {
        let mut auth = self.auth.lock().unwrap_or_else(|p| p.into_inner());
        let sealed = match &*auth {
            AuthValue::Open(secret) => {
                key.seal(secret.expose_secret().as_bytes(), SEALED_AUTH_AAD)?
            }
            AuthValue::None | AuthValue::Sealed(_) => return Ok(()),
        };
        self.worker.run(|tpm| {
            tpm.seal();
            Ok(())
        })?;
        // The SecretString is wiped as it is dropped here.
        *auth = AuthValue::Sealed(sealed);
        Ok(())
    }

    /// Gives the worker the auth value again.
    fn unseal(&self, key: &SealingKey) -> Result<(), Error> {
        let mut auth = self.auth.lock().unwrap_or_else(|p| p.into_inner());
        let AuthValue::Sealed(sealed) = &*auth else {
            return Ok(());
        };
        let plain = key
            .unseal(sealed, SEALED_AUTH_AAD)
            .ok_or(Error::Crypto("unsealing the TPM auth value"))?;
        let text = String::from_utf8(plain.to_vec())
            .map_err(|_| Error::Crypto("unsealing the TPM auth value"))?;
        let value = to_auth(text.as_bytes())?;
        self.worker.run(move |tpm| {
            tpm.unseal(&value);
            Ok(())
        })?;
        *auth = AuthValue::Open(SecretString::from(text));
        Ok(())
    }
}

/// An auth value as tss-esapi wants it.
fn to_auth(value: &[u8]) -> Result<Auth, Error> {
    Auth::try_from(value).map_err(|_| Error::InvalidKey {
        reason: "the TPM auth value is longer than the TPM allows (at most the size of a \
                 SHA-256 digest, 32 bytes)"
            .into(),
    })
}

impl TpmBackend {
    /// Serves an adopted key from its record (the TPM is asked on first use).
    fn serve_adopted_record(
        &self,
        record: &TpmRecord,
        source: KeySource,
        auth: Option<Auth>,
        auth_missing: bool,
    ) -> Result<(KeyId, SignerRef), Error> {
        let meta = KeyMeta::new(
            record.label.clone(),
            record.alg,
            BackendKind::Tpm,
            record.jwk.clone(),
            true,
            Some(self.location(&source)),
        )?;
        let name = record.label.to_string();
        let id = self
            .worker
            .run(move |tpm| Ok(tpm.add(&name, source, auth)))?;
        self.ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(record.label.clone(), id);
        let signer = TpmSigner::new(meta, self.worker.clone(), id, None, auth_missing)?;
        Ok((id, Arc::new(signer)))
    }
}

/// The handle in a `tpm:handle=0x81000001` URI.
fn parse_tpm_uri(uri: &str) -> Result<u32, Error> {
    let invalid = |reason: &str| Error::InvalidUri {
        backend: BackendKind::Tpm,
        reason: reason.to_owned(),
    };
    let (scheme, rest) = uri
        .split_once(':')
        .ok_or_else(|| invalid("expected tpm:handle=0x81XXXXXX"))?;
    if !scheme.eq_ignore_ascii_case("tpm") {
        return Err(invalid("expected tpm:handle=0x81XXXXXX"));
    }
    let value = rest
        .strip_prefix("handle=")
        .ok_or_else(|| invalid("expected tpm:handle=0x81XXXXXX (the only attribute is handle)"))?;
    parse_handle(value)
        .ok_or_else(|| invalid("the handle is not a persistent handle (0x81000000 to 0x81FFFFFF)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tpm_uris_name_a_persistent_handle() {
        assert_eq!(parse_tpm_uri("tpm:handle=0x81000001").unwrap(), 0x8100_0001);
        assert_eq!(parse_tpm_uri("TPM:handle=0x81010002").unwrap(), 0x8101_0002);
        for bad in [
            "tpm:0x81000001",
            "tpm:handle=0x40000001",
            "pkcs11:id=1",
            "tpm",
        ] {
            assert!(
                matches!(parse_tpm_uri(bad), Err(Error::InvalidUri { .. })),
                "{bad}"
            );
        }
    }
}
