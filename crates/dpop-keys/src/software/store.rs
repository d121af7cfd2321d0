//! The key files of a persistent software backend: one `<label>.json` per key in the crate's
//! record store, its PKCS#8 sealed under the store key, and the first format (a PBES2 file
//! per key) read and rewritten.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use pkcs8::der::Decode;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use zeroize::Zeroizing;

use super::key::SoftKey;
use crate::records::{Record, RecordStore};
use crate::store_key::{SealingKey, StoreKey, store_file};
use crate::{Algorithm, Error, KeyLabel, SignerRef};

/// The key file format written now: the PKCS#8 sealed under the store key.
const SEALED_VERSION: u32 = 2;
/// The first format: a PBES2 (scrypt + AES-256-GCM) `ENCRYPTED PRIVATE KEY` per file.
const PBES2_VERSION: u32 = 1;

/// The key files in a directory and the key that opens them.
pub(super) struct Store {
    records: RecordStore,
    /// Needed until the store key is derived (and first-format files are rewritten): dropped
    /// at the end of `load`.
    passphrase: Mutex<Option<SecretString>>,
    /// Derived on first use (start-up's `load`), then kept, except while sealed.
    key: Mutex<Option<Arc<StoreKey>>>,
    /// The store key sealed under a locked agent's key (see `Backend::seal`).
    sealed_key: Mutex<Option<Vec<u8>>>,
}

/// What the store key is bound to when a locked agent seals it.
const SEALED_STORE_KEY_AAD: &[u8] = b"dpop-agent sealed store key";

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One key file.
#[derive(Serialize, Deserialize)]
struct KeyFile {
    version: u32,
    label: KeyLabel,
    alg: Algorithm,
    /// Version 1: `ENCRYPTED PRIVATE KEY` PEM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pkcs8: Option<String>,
    /// Version 2: base64url of nonce || AES-256-GCM(PKCS#8 DER) under the store key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed: Option<String>,
}

impl Record for KeyFile {
    fn label(&self) -> &KeyLabel {
        &self.label
    }
}

impl Store {
    /// The key files in `dir` (created 0700 if missing), opened with `passphrase`.
    pub(super) fn open(dir: std::path::PathBuf, passphrase: SecretString) -> Result<Store, Error> {
        Ok(Store {
            records: RecordStore::open(dir)?,
            passphrase: Mutex::new(Some(passphrase)),
            key: Mutex::new(None),
            sealed_key: Mutex::new(None),
        })
    }

    /// Every key file as a signer. The store key is derived (or made, with the store file)
    /// now, so that the passphrase can go.
    pub(super) fn load(&self) -> Result<Vec<SignerRef>, Error> {
        let paths = self.records.list()?;
        let store_key = self.key()?;
        let mut keys: Vec<SignerRef> = Vec::new();
        for path in paths {
            let file: KeyFile = self.records.read(&path)?;
            let corrupt = |reason: String| Error::CorruptStore {
                path: path.clone(),
                reason,
            };
            let der = match (file.version, &file.sealed, &file.pkcs8) {
                (SEALED_VERSION, Some(sealed), None) => {
                    store_key.open_key(&file.label, file.alg, sealed, &path)?
                }
                (PBES2_VERSION, None, Some(pem)) => {
                    let passphrase = locked(&self.passphrase).clone().ok_or(Error::Sealed)?;
                    let der = decrypt_pkcs8(pem, &passphrase, &path)?;
                    self.migrate(&store_key, &file, &der, &path);
                    der
                }
                (version, ..) => {
                    return Err(corrupt(format!(
                        "not a key file of a known version (version {version})"
                    )));
                }
            };
            let key = SoftKey::from_pkcs8(file.alg, &der).map_err(|e| corrupt(e.to_string()))?;
            keys.push(key.into_signer(file.label, true)?);
        }
        // Every key file opens with the store key from now on.
        *locked(&self.passphrase) = None;
        Ok(keys)
    }

    /// Writes a new key's file, sealed under the store key.
    pub(super) fn persist(&self, label: &KeyLabel, key: &SoftKey) -> Result<(), Error> {
        self.records.check_free(label)?;
        let store_key = self.key()?;
        let pkcs8 = key.pkcs8()?;
        let file = KeyFile {
            version: SEALED_VERSION,
            label: label.clone(),
            alg: key.alg,
            pkcs8: None,
            sealed: Some(store_key.seal_key(label, key.alg, &pkcs8)?),
        };
        self.records.write_new(&file)
    }

    /// Removes a key's file.
    pub(super) fn remove(&self, label: &KeyLabel) -> Result<(), Error> {
        self.records.remove(label)
    }

    /// Seals the store key under a locked agent's `key` and forgets it.
    pub(super) fn seal(&self, key: &SealingKey) -> Result<(), Error> {
        let mut slot = locked(&self.key);
        if let Some(store_key) = slot.as_ref() {
            let sealed = store_key.key.seal_under(key, SEALED_STORE_KEY_AAD)?;
            *locked(&self.sealed_key) = Some(sealed);
            *slot = None;
        }
        Ok(())
    }

    /// Undoes [`seal`](Self::seal).
    pub(super) fn unseal(&self, key: &SealingKey) -> Result<(), Error> {
        let mut sealed = locked(&self.sealed_key);
        if let Some(bytes) = sealed.as_ref() {
            let store_key = SealingKey::unseal_from(bytes, key, SEALED_STORE_KEY_AAD)
                .ok_or(Error::Crypto("unsealing the store key"))?;
            *locked(&self.key) = Some(Arc::new(StoreKey { key: store_key }));
            *sealed = None;
        }
        Ok(())
    }

    /// The store key: derived once, from the store file, or made with a new store file.
    fn key(&self) -> Result<Arc<StoreKey>, Error> {
        let mut slot = locked(&self.key);
        if let Some(key) = &*slot {
            return Ok(key.clone());
        }
        if locked(&self.sealed_key).is_some() {
            return Err(Error::Sealed);
        }
        let passphrase = locked(&self.passphrase).clone().ok_or(Error::Sealed)?;
        let dir = self.records.dir();
        let key = if store_file(dir).exists() {
            StoreKey::open(dir, &passphrase)?
        } else {
            self.check_before_new_store(&passphrase)?;
            StoreKey::create(dir, &passphrase)?
        };
        let key = Arc::new(key);
        *slot = Some(key.clone());
        Ok(key)
    }

    /// Before a store file is made for this passphrase: sealed key files need the store
    /// file they were sealed under, and key files of the first format must open with the
    /// passphrase, or a mistyped one would become the store's for good.
    fn check_before_new_store(&self, passphrase: &SecretString) -> Result<(), Error> {
        let mut first_pbes2 = None;
        for path in self.records.list()? {
            let file: KeyFile = self.records.read(&path)?;
            if file.sealed.is_some() {
                return Err(Error::CorruptStore {
                    path: store_file(self.records.dir()),
                    reason: format!(
                        "missing, and {} was sealed under it: restore the file from a backup",
                        path.display()
                    ),
                });
            }
            if first_pbes2.is_none()
                && let Some(pem) = file.pkcs8
            {
                first_pbes2 = Some((pem, path));
            }
        }
        if let Some((pem, path)) = first_pbes2 {
            decrypt_pkcs8(&pem, passphrase, &path)?;
        }
        Ok(())
    }

    /// Rewrites a first-format key file sealed under the store key. A failure leaves the old
    /// file in place (it still loads) and is tried again at the next start.
    fn migrate(&self, key: &StoreKey, file: &KeyFile, der: &[u8], path: &Path) {
        let sealed = match key.seal_key(&file.label, file.alg, der) {
            Ok(sealed) => sealed,
            Err(e) => {
                warn!(path = %path.display(), error = %e, "key file left in the first format");
                return;
            }
        };
        let new = KeyFile {
            version: SEALED_VERSION,
            label: file.label.clone(),
            alg: file.alg,
            pkcs8: None,
            sealed: Some(sealed),
        };
        match self.records.replace(&new) {
            Ok(()) => info!(path = %path.display(), "key file rewritten under the store key"),
            Err(e) => {
                warn!(path = %path.display(), error = %e, "key file left in the first format")
            }
        }
    }
}

/// Opens a key file of the first format.
fn decrypt_pkcs8(
    pem: &str,
    passphrase: &SecretString,
    path: &Path,
) -> Result<Zeroizing<Vec<u8>>, Error> {
    let corrupt = |reason: &str| Error::CorruptStore {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let (label, der) =
        pem_rfc7468::decode_vec(pem.as_bytes()).map_err(|_| corrupt("pkcs8 is not PEM"))?;
    if label != "ENCRYPTED PRIVATE KEY" {
        return Err(corrupt("pkcs8 is not an ENCRYPTED PRIVATE KEY"));
    }
    let info = pkcs8::EncryptedPrivateKeyInfoRef::from_der(&der)
        .map_err(|_| corrupt("bad EncryptedPrivateKeyInfo"))?;
    let plain = info
        .decrypt(passphrase.expose_secret().as_bytes())
        .map_err(|_| Error::WrongPassphrase {
            path: path.to_owned(),
        })?;
    Ok(Zeroizing::new(plain.as_bytes().to_vec()))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use aws_lc_rs::rand::{SecureRandom, SystemRandom};

    use super::*;
    use crate::Backend;
    use crate::software::SoftwareBackend;
    use crate::software::key::crypto;
    use crate::store_key::{SCRYPT_LOG_N, STORE_FILE as STORE_FILE_NAME};

    /// Writes a key file of the first format (a PBES2 `ENCRYPTED PRIVATE KEY`), as agents
    /// before the store key did.
    fn encrypt_pkcs8(der: &[u8], passphrase: &SecretString) -> Result<String, Error> {
        let rng = SystemRandom::new();
        let mut salt = [0u8; 16];
        let mut nonce = [0u8; 12];
        rng.fill(&mut salt).map_err(crypto("random salt"))?;
        rng.fill(&mut nonce).map_err(crypto("random nonce"))?;
        let params = pkcs8::pkcs5::scrypt::Params::new(SCRYPT_LOG_N, 8, 1)
            .map_err(|_| Error::Crypto("scrypt parameters"))?;
        let pbes2 = pkcs8::pkcs5::pbes2::Parameters::scrypt_aes256gcm(params, &salt, nonce)
            .map_err(|_| Error::Crypto("PBES2 parameters"))?;
        let info = pkcs8::PrivateKeyInfoRef::from_der(der)
            .map_err(|_| Error::Crypto("PKCS#8 re-encoding"))?;
        let encrypted = info
            .encrypt_with_params(pbes2, passphrase.expose_secret().as_bytes())
            .map_err(|_| Error::Crypto("encrypting the key"))?;
        encrypted
            .to_pem("ENCRYPTED PRIVATE KEY", pkcs8::LineEnding::LF)
            .map(|pem| pem.to_string())
            .map_err(|_| Error::Crypto("PEM encoding"))
    }

    fn label(s: &str) -> KeyLabel {
        KeyLabel::new(s).unwrap()
    }

    fn first_format_file(dir: &Path, name: &str, passphrase: &str) -> (PathBuf, String) {
        let key = SoftKey::generate(Algorithm::ES256).unwrap();
        let jkt = key.jwk().unwrap().thumbprint();
        let file = KeyFile {
            version: PBES2_VERSION,
            label: label(name),
            alg: Algorithm::ES256,
            pkcs8: Some(
                encrypt_pkcs8(&key.pkcs8().unwrap(), &SecretString::from(passphrase)).unwrap(),
            ),
            sealed: None,
        };
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join(format!("{name}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(&file).unwrap()).unwrap();
        (path, jkt)
    }

    fn version_of(path: &Path) -> serde_json::Value {
        let file: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        file["version"].clone()
    }

    /// Key files of the first format load, are rewritten under the store key, and load the
    /// same keys again; a wrong passphrase makes no store file.
    #[test]
    fn first_format_files_migrate_without_losing_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("software");
        let (a, jkt_a) = first_format_file(&keys, "a", "pass");
        let (b, jkt_b) = first_format_file(&keys, "b", "pass");

        let wrong = SoftwareBackend::persistent(keys.clone(), SecretString::from("typo"))
            .unwrap()
            .load()
            .map(|keys| keys.len())
            .expect_err("a wrong passphrase is refused");
        assert!(matches!(wrong, Error::WrongPassphrase { .. }), "{wrong:?}");
        assert!(
            !store_file(&keys).exists(),
            "no store file for a wrong passphrase"
        );
        assert_eq!(version_of(&a), PBES2_VERSION);

        // A stale temporary file makes a's rewrite fail: a stays as it was and still loads.
        let stale = a.with_extension("json.tmp");
        std::fs::write(&stale, b"crash leftovers").unwrap();
        let jkts = |backend: &SoftwareBackend| -> Vec<String> {
            backend
                .load()
                .unwrap()
                .iter()
                .map(|k| k.meta().info().jkt.clone())
                .collect()
        };
        let backend =
            SoftwareBackend::persistent(keys.clone(), SecretString::from("pass")).unwrap();
        assert_eq!(jkts(&backend), [jkt_a.clone(), jkt_b.clone()]);
        assert_eq!(
            version_of(&a),
            PBES2_VERSION,
            "a failed rewrite leaves the old file"
        );
        assert_eq!(version_of(&b), SEALED_VERSION);
        let b_text = std::fs::read_to_string(&b).unwrap();
        assert!(
            !b_text.contains("PRIVATE KEY") && b_text.contains("sealed"),
            "{b_text}"
        );

        std::fs::remove_file(&stale).unwrap();
        let backend =
            SoftwareBackend::persistent(keys.clone(), SecretString::from("pass")).unwrap();
        assert_eq!(jkts(&backend), [jkt_a.clone(), jkt_b.clone()]);
        assert_eq!(version_of(&a), SEALED_VERSION);
        // A new key goes in the new format under the same store key.
        let c = backend.generate(&label("c"), Algorithm::EdDSA).unwrap();
        let backend =
            SoftwareBackend::persistent(keys.clone(), SecretString::from("pass")).unwrap();
        assert_eq!(jkts(&backend), [jkt_a, jkt_b, c.meta().info().jkt.clone()]);

        // The store file is what the sealed files need: without it they are named, not lost.
        std::fs::rename(store_file(&keys), dir.path().join("store.backup")).unwrap();
        let err = SoftwareBackend::persistent(keys.clone(), SecretString::from("pass"))
            .unwrap()
            .load()
            .map(|keys| keys.len())
            .expect_err("sealed files without their store file");
        assert!(
            matches!(&err, Error::CorruptStore { path, .. } if path.ends_with(STORE_FILE_NAME)),
            "{err:?}"
        );
        assert!(
            !store_file(&keys).exists(),
            "no new store file over sealed keys"
        );
    }
}
