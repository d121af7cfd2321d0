//! [`SoftwareBackend`]: software keys, persisted under a passphrase or kept in memory only.

use std::path::PathBuf;

use secrecy::SecretString;

use super::key::SoftKey;
use super::store::Store;
use crate::pem::parse_private_key_pem;
use crate::records;
use crate::{Algorithm, Backend, BackendKind, Error, KeyLabel, SealingKey, SignerRef};

/// Software keys, persisted under a passphrase or kept in memory only.
pub struct SoftwareBackend {
    store: Option<Store>,
    /// Where keys would be found, for reporting files left unloaded without a passphrase.
    unloaded_dir: Option<PathBuf>,
}

impl SoftwareBackend {
    /// Keys kept in `dir` (created 0700 if missing), encrypted under `passphrase`.
    pub fn persistent(dir: PathBuf, passphrase: SecretString) -> Result<SoftwareBackend, Error> {
        Ok(SoftwareBackend {
            store: Some(Store::open(dir, passphrase)?),
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
        match &self.store {
            Some(store) => store.persist(label, key),
            None => Ok(()),
        }
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
        match &self.store {
            Some(store) => store.load(),
            None => Ok(Vec::new()),
        }
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
        match &self.store {
            Some(store) => store.remove(label),
            None => Ok(()),
        }
    }

    fn seal(&self, key: &SealingKey) -> Result<(), Error> {
        match &self.store {
            Some(store) => store.seal(key),
            None => Ok(()),
        }
    }

    fn unseal(&self, key: &SealingKey) -> Result<(), Error> {
        match &self.store {
            Some(store) => store.unseal(key),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
