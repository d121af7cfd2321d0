//! The software key store's key-encryption key: derived once per passphrase (scrypt with a
//! per-store salt), then every key file is sealed under it with AES-256-GCM, a fresh nonce per
//! file and the label and algorithm bound as associated data.
//!
//! One scrypt per start instead of one per key file: start-up with hundreds of keys takes
//! milliseconds, and `generate` no longer pays tens of milliseconds, while a guess at the
//! passphrase still costs an attacker one full scrypt. The derivation's salt and parameters,
//! and a check value that tells a wrong passphrase from a damaged file, live in
//! `<dir>/store.scrypt` (not a `.json` record, so it never lists as a key).

use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use dpop_jose::{b64url_decode, b64url_encode};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::fsutil::write_new_private_file;
use crate::{Algorithm, Error, KeyLabel};

/// scrypt cost: 2^15 * 8 * 128 bytes = 32 MiB, tens of milliseconds: as strong as the
/// per-file PBES2 parameters before.
pub(crate) const SCRYPT_LOG_N: u8 = 15;
const SCRYPT_R: u32 = 8;
const SCRYPT_P: u32 = 1;
/// Weakest parameters a store file may name: a tampered file must not make the passphrase
/// cheap to guess for keys written later.
const MIN_LOG_N: u8 = 15;
/// Highest cost accepted, so a damaged file cannot make the agent allocate terabytes.
const MAX_LOG_N: u8 = 22;

/// Name of the store file in the key directory.
pub(crate) const STORE_FILE: &str = "store.scrypt";

const CHECK_PLAINTEXT: &[u8] = b"dpop-agent software key store";
const CHECK_AAD: &[u8] = b"dpop-agent store check v1";

/// `<dir>/store.scrypt`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    version: u32,
    kdf: String,
    log_n: u8,
    r: u32,
    p: u32,
    /// base64url.
    salt: String,
    /// base64url of nonce || AES-256-GCM(check plaintext): opens only under the right key.
    check: String,
}

/// An AES-256-GCM key that seals secrets in memory or on disk: the store's key-encryption
/// key, or the key a locked agent seals its decrypted software keys under
/// ([`crate::Keyring::seal`]).
pub struct SealingKey {
    key: LessSafeKey,
    /// Kept (wiped on drop) so that the key itself can be sealed under another one.
    raw: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealingKey(<redacted>)")
    }
}

impl SealingKey {
    /// A sealing key from 32 secret bytes (derived from a passphrase, or random).
    pub fn new(raw: &[u8; 32]) -> Result<SealingKey, Error> {
        let key = UnboundKey::new(&AES_256_GCM, raw).map_err(|_| Error::Crypto("AES key"))?;
        Ok(SealingKey {
            key: LessSafeKey::new(key),
            raw: Zeroizing::new(*raw),
        })
    }

    /// nonce || ciphertext || tag, `aad` bound.
    pub(crate) fn seal(&self, plain: &[u8], aad: &[u8]) -> Result<Vec<u8>, Error> {
        let mut nonce = [0u8; NONCE_LEN];
        rng_fill(&mut nonce, "random nonce")?;
        let mut out = Vec::with_capacity(NONCE_LEN + plain.len() + AES_256_GCM.tag_len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut out[NONCE_LEN..],
            )
            .map_err(|_| Error::Crypto("sealing"))?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// The plaintext of [`seal`](Self::seal)'s output, or None when it does not open.
    pub(crate) fn unseal(&self, sealed: &[u8], aad: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        if sealed.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return None;
        }
        let nonce = Nonce::try_assume_unique_for_key(&sealed[..NONCE_LEN]).ok()?;
        let mut buf = Zeroizing::new(sealed[NONCE_LEN..].to_vec());
        let plain_len = self
            .key
            .open_in_place(nonce, Aad::from(aad), &mut buf)
            .ok()?
            .len();
        buf.truncate(plain_len);
        Some(buf)
    }

    /// This key sealed under `other` (for a locked agent).
    pub(crate) fn seal_under(&self, other: &SealingKey, aad: &[u8]) -> Result<Vec<u8>, Error> {
        other.seal(&self.raw[..], aad)
    }

    /// A key sealed by [`seal_under`](Self::seal_under).
    pub(crate) fn unseal_from(sealed: &[u8], other: &SealingKey, aad: &[u8]) -> Option<SealingKey> {
        let raw = other.unseal(sealed, aad)?;
        let raw: &[u8; 32] = raw.as_slice().try_into().ok()?;
        SealingKey::new(raw).ok()
    }
}

/// The key-encryption key of one store.
pub(crate) struct StoreKey {
    pub(crate) key: SealingKey,
}

impl std::fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreKey(<redacted>)")
    }
}

/// Where the store file of `dir` lives.
pub(crate) fn store_file(dir: &Path) -> PathBuf {
    dir.join(STORE_FILE)
}

fn rng_fill(bytes: &mut [u8], what: &'static str) -> Result<(), Error> {
    SystemRandom::new()
        .fill(bytes)
        .map_err(|_| Error::Crypto(what))
}

fn derive(passphrase: &SecretString, salt: &[u8], log_n: u8) -> Result<StoreKey, Error> {
    let params = scrypt::Params::new(log_n, SCRYPT_R, SCRYPT_P)
        .map_err(|_| Error::Crypto("scrypt parameters"))?;
    let mut kek = Zeroizing::new([0u8; 32]);
    scrypt::scrypt(
        passphrase.expose_secret().as_bytes(),
        salt,
        &params,
        &mut kek[..],
    )
    .map_err(|_| Error::Crypto("scrypt"))?;
    Ok(StoreKey {
        key: SealingKey::new(&kek)?,
    })
}

impl StoreKey {
    /// Opens the store of `dir` with `passphrase`: [`Error::WrongPassphrase`] when the check
    /// value does not open, [`Error::CorruptStore`] when the file is damaged.
    pub(crate) fn open(dir: &Path, passphrase: &SecretString) -> Result<StoreKey, Error> {
        let path = store_file(dir);
        let corrupt = |reason: String| Error::CorruptStore {
            path: path.clone(),
            reason,
        };
        let bytes = std::fs::read(&path).map_err(|source| Error::Io {
            action: "reading the key store file",
            path: path.clone(),
            source,
        })?;
        let file: StoreFile = serde_json::from_slice(&bytes)
            .map_err(|e| corrupt(format!("not a store file: {e}")))?;
        if file.version != 1 || file.kdf != "scrypt" {
            return Err(corrupt(format!(
                "unknown store version {} / kdf {:?}",
                file.version, file.kdf
            )));
        }
        if file.r != SCRYPT_R
            || file.p != SCRYPT_P
            || !(MIN_LOG_N..=MAX_LOG_N).contains(&file.log_n)
        {
            return Err(corrupt(
                "scrypt parameters out of the accepted range".into(),
            ));
        }
        let salt =
            b64url_decode(&file.salt).ok_or_else(|| corrupt("salt is not base64url".into()))?;
        if salt.len() < 16 {
            return Err(corrupt("salt shorter than 16 bytes".into()));
        }
        let check =
            b64url_decode(&file.check).ok_or_else(|| corrupt("check is not base64url".into()))?;
        let key = derive(passphrase, &salt, file.log_n)?;
        match key.key.unseal(&check, CHECK_AAD) {
            Some(plain) if plain.as_slice() == CHECK_PLAINTEXT => Ok(key),
            _ => Err(Error::WrongPassphrase { path }),
        }
    }

    /// Makes a new store in `dir` (fresh salt) for `passphrase`; never replaces a store file.
    pub(crate) fn create(dir: &Path, passphrase: &SecretString) -> Result<StoreKey, Error> {
        let mut salt = [0u8; 16];
        rng_fill(&mut salt, "random salt")?;
        let key = derive(passphrase, &salt, SCRYPT_LOG_N)?;
        let check = key.key.seal(CHECK_PLAINTEXT, CHECK_AAD)?;
        let file = StoreFile {
            version: 1,
            kdf: "scrypt".into(),
            log_n: SCRYPT_LOG_N,
            r: SCRYPT_R,
            p: SCRYPT_P,
            salt: b64url_encode(salt),
            check: b64url_encode(check),
        };
        let json = serde_json::to_vec_pretty(&file).expect("store file serializes");
        let path = store_file(dir);
        write_new_private_file(&path, &json).map_err(|e| match e {
            Error::KeyExists { .. } => Error::Io {
                action: "creating the key store file",
                path: path.clone(),
                source: std::io::ErrorKind::AlreadyExists.into(),
            },
            other => other,
        })?;
        Ok(key)
    }

    /// Seals a key's PKCS#8 DER for its file; base64url.
    pub(crate) fn seal_key(
        &self,
        label: &KeyLabel,
        alg: Algorithm,
        pkcs8: &[u8],
    ) -> Result<String, Error> {
        Ok(b64url_encode(self.key.seal(pkcs8, &key_aad(label, alg))?))
    }

    /// Opens a key file's sealed PKCS#8; a file moved to another label, with its algorithm
    /// changed, or damaged does not open.
    pub(crate) fn open_key(
        &self,
        label: &KeyLabel,
        alg: Algorithm,
        sealed: &str,
        path: &Path,
    ) -> Result<Zeroizing<Vec<u8>>, Error> {
        let corrupt = |reason: &str| Error::CorruptStore {
            path: path.to_owned(),
            reason: reason.to_owned(),
        };
        let bytes = b64url_decode(sealed).ok_or_else(|| corrupt("sealed key is not base64url"))?;
        self.key
            .unseal(&bytes, &key_aad(label, alg))
            .ok_or_else(|| {
                corrupt("the key does not open under the store key (damaged, or changed by hand)")
            })
    }
}

/// What a sealed key is bound to: its label and algorithm.
pub(crate) fn key_aad(label: &KeyLabel, alg: Algorithm) -> Vec<u8> {
    format!("dpop-agent key v2\n{label}\n{alg}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(s: &str) -> KeyLabel {
        KeyLabel::new(s).unwrap()
    }

    #[test]
    fn one_derivation_seals_every_key_bound_to_its_label_and_alg() {
        let dir = tempfile::tempdir().unwrap();
        let pass = SecretString::from("correct horse");
        let created = StoreKey::create(dir.path(), &pass).unwrap();
        let sealed = created
            .seal_key(&label("a"), Algorithm::ES256, b"der bytes")
            .unwrap();
        let again = created
            .seal_key(&label("a"), Algorithm::ES256, b"der bytes")
            .unwrap();
        assert_ne!(sealed, again, "a fresh nonce per file");

        let opened = StoreKey::open(dir.path(), &pass).unwrap();
        let path = dir.path().join("a.json");
        let plain = opened
            .open_key(&label("a"), Algorithm::ES256, &sealed, &path)
            .unwrap();
        assert_eq!(plain.as_slice(), b"der bytes");
        for (l, alg) in [("b", Algorithm::ES256), ("a", Algorithm::ES384)] {
            let err = opened.open_key(&label(l), alg, &sealed, &path).unwrap_err();
            assert!(matches!(err, Error::CorruptStore { .. }), "{err:?}");
        }
        let mut damaged = b64url_decode(&sealed).unwrap();
        *damaged.last_mut().unwrap() ^= 1;
        assert!(
            opened
                .open_key(
                    &label("a"),
                    Algorithm::ES256,
                    &b64url_encode(damaged),
                    &path
                )
                .is_err()
        );

        let wrong = StoreKey::open(dir.path(), &SecretString::from("wrong")).unwrap_err();
        assert!(matches!(wrong, Error::WrongPassphrase { .. }), "{wrong:?}");
        // A second store file is never written over the first.
        assert!(StoreKey::create(dir.path(), &pass).is_err());
        assert!(StoreKey::open(dir.path(), &pass).is_ok());
    }

    #[test]
    fn a_store_file_cannot_weaken_the_derivation() {
        let dir = tempfile::tempdir().unwrap();
        let pass = SecretString::from("p");
        StoreKey::create(dir.path(), &pass).unwrap();
        let path = store_file(dir.path());
        let mut file: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        file["log_n"] = 10.into();
        std::fs::write(&path, serde_json::to_vec(&file).unwrap()).unwrap();
        let err = StoreKey::open(dir.path(), &pass).unwrap_err();
        assert!(
            matches!(&err, Error::CorruptStore { reason, .. } if reason.contains("scrypt")),
            "{err:?}"
        );
    }
}
