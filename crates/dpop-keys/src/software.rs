//! The software backend: aws-lc-rs keys in the agent's memory.
//!
//! With a passphrase each key lives in `<dir>/<label>.json`: its label, algorithm and its
//! PKCS#8 sealed with AES-256-GCM under the store key ([`crate::store_key`]: one scrypt
//! derivation per start, not one per key). Files are written 0600 to a temporary name and
//! linked or renamed into place, so a failure never leaves half a key. Key files of the first
//! format (version 1: a PBES2 `ENCRYPTED PRIVATE KEY`, scrypt per file) still load, and are
//! rewritten in the new format on the first start that loads them. Without a passphrase keys
//! are kept in memory only.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaEncoding, RsaKeyPair};
use pkcs8::der::Decode;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use zeroize::Zeroizing;

use crate::pem::{DerFormat, parse_private_key_pem};
use crate::records::{self, Record, RecordStore};
use crate::store_key::{SealingKey, StoreKey, key_aad, store_file};
use crate::{
    Algorithm, Backend, BackendKind, Error, Jwk, KeyKind, KeyLabel, KeyMeta, KeySigner, SignerRef,
};

/// The key file format written now: the PKCS#8 sealed under the store key.
const SEALED_VERSION: u32 = 2;
/// The first format: a PBES2 (scrypt + AES-256-GCM) `ENCRYPTED PRIVATE KEY` per file.
const PBES2_VERSION: u32 = 1;

/// Software keys, persisted under a passphrase or kept in memory only.
pub struct SoftwareBackend {
    store: Option<Store>,
    /// Where keys would be found, for reporting files left unloaded without a passphrase.
    unloaded_dir: Option<PathBuf>,
}

struct Store {
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

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

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

impl SoftwareBackend {
    /// Keys kept in `dir` (created 0700 if missing), encrypted under `passphrase`.
    pub fn persistent(dir: PathBuf, passphrase: SecretString) -> Result<SoftwareBackend, Error> {
        Ok(SoftwareBackend {
            store: Some(Store {
                records: RecordStore::open(dir)?,
                passphrase: Mutex::new(Some(passphrase)),
                key: Mutex::new(None),
                sealed_key: Mutex::new(None),
            }),
            unloaded_dir: None,
        })
    }

    /// Keys kept in memory only, lost when the agent stops.
    pub fn ephemeral() -> SoftwareBackend {
        SoftwareBackend {
            store: None,
            unloaded_dir: None,
        }
    }

    /// Memory-only, noting that `dir` may hold key files that stay unloaded.
    pub fn ephemeral_beside(dir: PathBuf) -> SoftwareBackend {
        SoftwareBackend {
            store: None,
            unloaded_dir: Some(dir),
        }
    }

    /// Whether keys survive a restart.
    pub fn is_persistent(&self) -> bool {
        self.store.is_some()
    }

    /// How many key files sit in the data directory unloaded (memory-only mode).
    pub fn unloaded_key_files(&self) -> usize {
        self.unloaded_dir.as_deref().map_or(0, records::count_in)
    }

    /// Refuses a label that an unloaded key file has: the new key would shadow the saved one
    /// now, and the two would clash once the agent has its passphrase again.
    fn check_not_shadowing(&self, label: &KeyLabel) -> Result<(), Error> {
        let Some(dir) = &self.unloaded_dir else {
            return Ok(());
        };
        let path = dir.join(format!("{label}.json"));
        if path.exists() {
            return Err(Error::UnloadedKeyExists {
                label: label.to_string(),
                path,
            });
        }
        Ok(())
    }

    fn persist(&self, label: &KeyLabel, key: &SoftKey) -> Result<(), Error> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        store.records.check_free(label)?;
        let store_key = store.key()?;
        let pkcs8 = key.pkcs8()?;
        let file = KeyFile {
            version: SEALED_VERSION,
            label: label.clone(),
            alg: key.alg,
            pkcs8: None,
            sealed: Some(store_key.seal_key(label, key.alg, &pkcs8)?),
        };
        store.records.write_new(&file)
    }
}

impl Backend for SoftwareBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Software
    }

    fn algorithms(&self) -> Vec<Algorithm> {
        Algorithm::ALL.to_vec()
    }

    fn load(&self) -> Result<Vec<SignerRef>, Error> {
        let Some(store) = &self.store else {
            return Ok(Vec::new());
        };
        let paths = store.records.list()?;
        // Derived (or made, with the store file) now, so that the passphrase can go.
        let store_key = store.key()?;
        let mut keys: Vec<SignerRef> = Vec::new();
        for path in paths {
            let file: KeyFile = store.records.read(&path)?;
            let corrupt = |reason: String| Error::CorruptStore {
                path: path.clone(),
                reason,
            };
            let der = match (file.version, &file.sealed, &file.pkcs8) {
                (SEALED_VERSION, Some(sealed), None) => {
                    store_key.open_key(&file.label, file.alg, sealed, &path)?
                }
                (PBES2_VERSION, None, Some(pem)) => {
                    let passphrase = locked(&store.passphrase).clone().ok_or(Error::Sealed)?;
                    let der = decrypt_pkcs8(pem, &passphrase, &path)?;
                    store.migrate(&store_key, &file, &der, &path);
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
        *locked(&store.passphrase) = None;
        Ok(keys)
    }

    fn generate(&self, label: &KeyLabel, alg: Algorithm) -> Result<SignerRef, Error> {
        self.check_not_shadowing(label)?;
        let key = SoftKey::generate(alg)?;
        self.persist(label, &key)?;
        key.into_signer(label.clone(), self.is_persistent())
    }

    fn import_pem(
        &self,
        label: &KeyLabel,
        pem: &[u8],
        alg: Option<Algorithm>,
    ) -> Result<SignerRef, Error> {
        self.check_not_shadowing(label)?;
        let parsed = parse_private_key_pem(pem)?;
        let alg = parsed.kind.alg_for(alg)?;
        let key = SoftKey::from_der(alg, parsed.format, &parsed.der)?;
        self.persist(label, &key)?;
        key.into_signer(label.clone(), self.is_persistent())
    }

    fn delete(&self, label: &KeyLabel) -> Result<(), Error> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        store.records.remove(label)
    }

    fn seal(&self, key: &SealingKey) -> Result<(), Error> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let mut slot = locked(&store.key);
        if let Some(store_key) = slot.as_ref() {
            let sealed = store_key.key.seal_under(key, SEALED_STORE_KEY_AAD)?;
            *locked(&store.sealed_key) = Some(sealed);
            *slot = None;
        }
        Ok(())
    }

    fn unseal(&self, key: &SealingKey) -> Result<(), Error> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let mut sealed = locked(&store.sealed_key);
        if let Some(bytes) = sealed.as_ref() {
            let store_key = SealingKey::unseal_from(bytes, key, SEALED_STORE_KEY_AAD)
                .ok_or(Error::Crypto("unsealing the store key"))?;
            *locked(&store.key) = Some(Arc::new(StoreKey { key: store_key }));
            *sealed = None;
        }
        Ok(())
    }
}

enum KeyPairKind {
    Ecdsa(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
    Rsa(RsaKeyPair, &'static dyn RsaEncoding),
}

struct SoftKey {
    alg: Algorithm,
    pair: KeyPairKind,
}

fn crypto(what: &'static str) -> impl Fn(aws_lc_rs::error::Unspecified) -> Error {
    move |_| Error::Crypto(what)
}

fn rejected(e: aws_lc_rs::error::KeyRejected) -> Error {
    Error::InvalidKey {
        reason: format!("key rejected: {e}"),
    }
}

impl SoftKey {
    fn rsa_encoding(alg: Algorithm) -> &'static dyn RsaEncoding {
        if alg == Algorithm::PS256 {
            &signature::RSA_PSS_SHA256
        } else {
            &signature::RSA_PKCS1_SHA256
        }
    }

    fn generate(alg: Algorithm) -> Result<SoftKey, Error> {
        let pair = match KeyKind::for_alg(alg) {
            kind @ (KeyKind::P256 | KeyKind::P384) => KeyPairKind::Ecdsa(
                EcdsaKeyPair::generate(kind.ecdsa_signing().expect("an ECDSA curve"))
                    .map_err(crypto("generating an EC key"))?,
            ),
            KeyKind::Ed25519 => KeyPairKind::Ed25519(
                Ed25519KeyPair::generate().map_err(crypto("generating an Ed25519 key"))?,
            ),
            KeyKind::Rsa => KeyPairKind::Rsa(
                RsaKeyPair::generate(KeySize::Rsa2048).map_err(crypto("generating an RSA key"))?,
                Self::rsa_encoding(alg),
            ),
        };
        Ok(SoftKey { alg, pair })
    }

    fn from_pkcs8(alg: Algorithm, der: &[u8]) -> Result<SoftKey, Error> {
        Self::from_der(alg, DerFormat::Pkcs8, der)
    }

    fn from_der(alg: Algorithm, format: DerFormat, der: &[u8]) -> Result<SoftKey, Error> {
        let pair = match (KeyKind::for_alg(alg), format) {
            (kind @ (KeyKind::P256 | KeyKind::P384), DerFormat::Pkcs8 | DerFormat::Sec1) => {
                let ec = kind.ecdsa_signing().expect("an ECDSA curve");
                KeyPairKind::Ecdsa(EcdsaKeyPair::from_private_key_der(ec, der).map_err(rejected)?)
            }
            (KeyKind::Ed25519, DerFormat::Pkcs8) => KeyPairKind::Ed25519(
                Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(rejected)?,
            ),
            (KeyKind::Rsa, DerFormat::Pkcs8) => KeyPairKind::Rsa(
                RsaKeyPair::from_pkcs8(der).map_err(rejected)?,
                Self::rsa_encoding(alg),
            ),
            (KeyKind::Rsa, DerFormat::Pkcs1) => KeyPairKind::Rsa(
                RsaKeyPair::from_der(der).map_err(rejected)?,
                Self::rsa_encoding(alg),
            ),
            _ => {
                return Err(Error::InvalidKey {
                    reason: format!("{format:?} encoding does not hold a {alg} key"),
                });
            }
        };
        if let KeyPairKind::Rsa(rsa, _) = &pair
            && rsa.public_modulus_len() < 256
        {
            return Err(Error::InvalidKey {
                reason: "RSA keys must be at least 2048 bits".into(),
            });
        }
        Ok(SoftKey { alg, pair })
    }

    fn pkcs8(&self) -> Result<Zeroizing<Vec<u8>>, Error> {
        let der = match &self.pair {
            KeyPairKind::Ecdsa(k) => k
                .to_pkcs8v1()
                .map_err(crypto("encoding the key"))?
                .as_ref()
                .to_vec(),
            KeyPairKind::Ed25519(k) => k
                .to_pkcs8v1()
                .map_err(crypto("encoding the key"))?
                .as_ref()
                .to_vec(),
            KeyPairKind::Rsa(k, _) => AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(k)
                .map_err(crypto("encoding the key"))?
                .as_ref()
                .to_vec(),
        };
        Ok(Zeroizing::new(der))
    }

    fn jwk(&self) -> Result<Jwk, Error> {
        Ok(match &self.pair {
            KeyPairKind::Ecdsa(k) => Jwk::from_ec_point(k.public_key().as_ref())?,
            KeyPairKind::Ed25519(k) => {
                let public: [u8; 32] = k
                    .public_key()
                    .as_ref()
                    .try_into()
                    .map_err(|_| Error::Crypto("Ed25519 public key is not 32 bytes"))?;
                Jwk::from_ed25519(&public)
            }
            KeyPairKind::Rsa(k, _) => {
                let public = k.public_key();
                Jwk::from_rsa(
                    public.modulus().big_endian_without_leading_zero(),
                    public.exponent().big_endian_without_leading_zero(),
                )
            }
        })
    }

    fn into_signer(self, label: KeyLabel, persistent: bool) -> Result<SignerRef, Error> {
        let meta = KeyMeta::new(
            label,
            self.alg,
            BackendKind::Software,
            self.jwk()?,
            persistent,
            None,
        )?;
        Ok(Arc::new(SoftwareSigner {
            meta,
            key: self,
            rng: SystemRandom::new(),
        }))
    }
}

/// A software key ready to sign.
pub struct SoftwareSigner {
    meta: KeyMeta,
    key: SoftKey,
    rng: SystemRandom,
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
        match &self.key.pair {
            KeyPairKind::Ecdsa(k) => Ok(k
                .sign(&self.rng, message)
                .map_err(crypto("ECDSA signing"))?
                .as_ref()
                .to_vec()),
            KeyPairKind::Ed25519(k) => Ok(k.sign(message).as_ref().to_vec()),
            KeyPairKind::Rsa(k, encoding) => {
                let mut signature = vec![0; k.public_modulus_len()];
                k.sign(*encoding, &self.rng, message, &mut signature)
                    .map_err(crypto("RSA signing"))?;
                Ok(signature)
            }
        }
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
    use aws_lc_rs::rand::SecureRandom;

    use super::*;
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

    /// Without the passphrase, a saved key's label is not free: generating or importing a key
    /// under it is refused, naming the file; other labels work, and nothing is written.
    #[test]
    fn unloaded_key_files_keep_their_labels() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("software");
        let saved = SoftwareBackend::persistent(keys.clone(), SecretString::from("pass"))
            .unwrap()
            .generate(&label("api"), Algorithm::ES256)
            .unwrap();
        let pem = {
            let pkcs8 = SoftKey::generate(Algorithm::ES256)
                .unwrap()
                .pkcs8()
                .unwrap();
            pem_rfc7468::encode_string("PRIVATE KEY", pem_rfc7468::LineEnding::LF, &pkcs8).unwrap()
        };

        let memory_only = SoftwareBackend::ephemeral_beside(keys.clone());
        assert_eq!(memory_only.unloaded_key_files(), 1);
        let refused = [
            memory_only.generate(&label("api"), Algorithm::ES256),
            memory_only.import_pem(&label("api"), pem.as_bytes(), None),
        ];
        for result in refused {
            let err = result.unwrap_err();
            assert!(
                matches!(&err, Error::UnloadedKeyExists { label, .. } if label == "api"),
                "{err:?}"
            );
            assert!(err.to_string().contains("a saved key file"), "{err}");
        }
        memory_only
            .generate(&label("other"), Algorithm::ES256)
            .unwrap();
        memory_only
            .import_pem(&label("imported"), pem.as_bytes(), None)
            .unwrap();
        // The saved key is untouched and loads with the passphrase.
        let loaded = SoftwareBackend::persistent(keys, SecretString::from("pass"))
            .unwrap()
            .load()
            .unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].meta().info().jkt, saved.meta().info().jkt);
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
