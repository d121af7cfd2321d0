use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use crate::{
    AdoptOptions, AdoptRefusal, Algorithm, Backend, BackendKind, Error, KeyInfo, KeyLabel,
    SealingKey, SignerRef,
};

/// Every configured backend's keys under unique labels. Reads (the signing path) take a
/// shared lock; changes are serialized so that a label stays unique across backends.
pub struct Keyring {
    backends: Vec<Arc<dyn Backend>>,
    keys: RwLock<HashMap<String, SignerRef>>,
    changes: Mutex<()>,
    /// The backends from which [`adopt`](Self::adopt) (a client's request) may adopt keys.
    client_adopt: Vec<BackendKind>,
}

impl Keyring {
    /// A keyring over these backends, with no keys loaded yet. Clients may not adopt keys
    /// until [`allow_client_adopt_in`](Self::allow_client_adopt_in) says so.
    pub fn new(backends: Vec<Arc<dyn Backend>>) -> Keyring {
        Keyring {
            backends,
            keys: RwLock::new(HashMap::new()),
            changes: Mutex::new(()),
            client_adopt: Vec::new(),
        }
    }

    /// Lets clients adopt existing keys of one backend through [`adopt`](Self::adopt)
    /// (off by default: a key on the token may
    /// belong to another application, and any client of the agent could otherwise make it
    /// sign proofs).
    pub fn allow_client_adopt_in(mut self, backend: BackendKind, allowed: bool) -> Keyring {
        self.client_adopt.retain(|&kind| kind != backend);
        if allowed {
            self.client_adopt.push(backend);
        }
        self
    }

    /// Loads every backend's keys. A backend that fails is reported and skipped; a label that
    /// two backends share is kept from the first and reported.
    pub fn load(&self) -> Vec<(BackendKind, Error)> {
        let _guard = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        let mut problems = Vec::new();
        let mut keys = HashMap::new();
        for backend in &self.backends {
            match backend.load() {
                Ok(loaded) => {
                    for key in loaded {
                        let label = key.meta().info().label.to_string();
                        match keys.entry(label) {
                            std::collections::hash_map::Entry::Occupied(e) => problems.push((
                                backend.kind(),
                                Error::KeyExists {
                                    label: e.key().clone(),
                                },
                            )),
                            std::collections::hash_map::Entry::Vacant(e) => {
                                e.insert(key);
                            }
                        }
                    }
                }
                Err(e) => problems.push((backend.kind(), e)),
            }
        }
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = keys;
        problems
    }

    /// The configured backends.
    pub fn backend_kinds(&self) -> Vec<BackendKind> {
        self.backends.iter().map(|b| b.kind()).collect()
    }

    /// The signer of a key.
    pub fn get(&self, label: &str) -> Result<SignerRef, Error> {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        keys.get(label).cloned().ok_or_else(|| Error::KeyNotFound {
            label: label.chars().take(80).collect(),
        })
    }

    /// Seals every key whose private part is in memory, and the backends' own secrets, under
    /// `key` (the agent is locked): afterwards no usable private key or key-encryption key is
    /// left in this process until [`unseal`](Self::unseal). The keys stay listed. All or
    /// nothing: on failure everything is as before.
    pub fn seal(&self, key: &SealingKey) -> Result<(), Error> {
        self.swap_signers(
            key,
            |signer, key| signer.sealed(key),
            |backend, key| backend.seal(key),
            |backend, key| backend.unseal(key),
        )
    }

    /// Undoes [`seal`](Self::seal) with the same key.
    pub fn unseal(&self, key: &SealingKey) -> Result<(), Error> {
        self.swap_signers(
            key,
            |signer, key| signer.unsealed(key),
            |backend, key| backend.unseal(key),
            |backend, key| backend.seal(key),
        )
    }

    fn swap_signers(
        &self,
        key: &SealingKey,
        swap: impl Fn(&SignerRef, &SealingKey) -> Option<Result<SignerRef, Error>>,
        backend_step: impl Fn(&Arc<dyn Backend>, &SealingKey) -> Result<(), Error>,
        backend_undo: impl Fn(&Arc<dyn Backend>, &SealingKey) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let _guard = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        let mut replaced = Vec::new();
        for (label, signer) in self.keys.read().unwrap_or_else(|p| p.into_inner()).iter() {
            if let Some(new) = swap(signer, key) {
                replaced.push((label.clone(), new?));
            }
        }
        for (done, backend) in self.backends.iter().enumerate() {
            if let Err(e) = backend_step(backend, key) {
                for backend in &self.backends[..done] {
                    let _ = backend_undo(backend, key);
                }
                return Err(e);
            }
        }
        let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
        for (label, signer) in replaced {
            keys.insert(label, signer);
        }
        Ok(())
    }

    /// How many keys are served (without copying their descriptions, as [`list`](Self::list)
    /// does).
    pub fn len(&self) -> usize {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no key is served.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every key, sorted by label.
    pub fn list(&self) -> Vec<KeyInfo> {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let mut infos: Vec<KeyInfo> = keys.values().map(|k| k.meta().info().clone()).collect();
        infos.sort_by(|a, b| a.label.cmp(&b.label));
        infos
    }

    /// The backend of that kind: [`Error::BackendNotCompiled`] when this build lacks it,
    /// [`Error::BackendNotConfigured`] when the agent was started without it.
    fn backend(&self, kind: BackendKind) -> Result<&Arc<dyn Backend>, Error> {
        self.backends
            .iter()
            .find(|b| b.kind() == kind)
            .ok_or(if kind.is_compiled() {
                Error::BackendNotConfigured { backend: kind }
            } else {
                Error::BackendNotCompiled { backend: kind }
            })
    }

    /// Runs `make` with the change lock held, after checking the label is free, and files the
    /// new key under it.
    fn add(
        &self,
        label: &KeyLabel,
        make: impl FnOnce() -> Result<SignerRef, Error>,
    ) -> Result<SignerRef, Error> {
        let _guard = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        if self
            .keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(label.as_str())
        {
            return Err(Error::KeyExists {
                label: label.to_string(),
            });
        }
        let key = make()?;
        self.keys
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(label.to_string(), key.clone());
        Ok(key)
    }

    /// Generates a key in a backend.
    pub fn generate(
        &self,
        backend: BackendKind,
        label: &KeyLabel,
        alg: Algorithm,
    ) -> Result<SignerRef, Error> {
        let backend = self.backend(backend)?;
        self.add(label, || backend.generate(label, alg))
    }

    /// Imports a PEM private key into a backend.
    pub fn import_pem(
        &self,
        backend: BackendKind,
        label: &KeyLabel,
        pem: &[u8],
        alg: Option<Algorithm>,
    ) -> Result<SignerRef, Error> {
        let backend = self.backend(backend)?;
        self.add(label, || backend.import_pem(label, pem, alg))
    }

    /// Adopts a key that already exists in a backend, named by a URI, for a client of the
    /// agent: [`Error::AdoptNotAllowed`] unless
    /// [`allow_client_adopt_in`](Self::allow_client_adopt_in) allowed its backend, and never a
    /// key that wants the PIN for each signature. `backend: None` takes the backend from the
    /// URI's scheme ([`BackendKind::from_uri`]: `pkcs11:` is PKCS#11).
    pub fn adopt(
        &self,
        backend: Option<BackendKind>,
        uri: &str,
        label: &KeyLabel,
        alg: Option<Algorithm>,
    ) -> Result<SignerRef, Error> {
        let backend = self.adopting_backend(backend, uri)?;
        if !self.client_adopt.contains(&backend.kind()) {
            return Err(Error::AdoptNotAllowed {
                backend: backend.kind(),
                refusal: AdoptRefusal::ClientsNotAllowed,
            });
        }
        self.add(label, || {
            backend.adopt(uri, label, alg, AdoptOptions::default())
        })
    }

    /// Adopts a key that the agent's own configuration names (its user's explicit choice):
    /// no client permission needed, and `options` may allow more than a client gets.
    pub fn adopt_configured(
        &self,
        backend: Option<BackendKind>,
        uri: &str,
        label: &KeyLabel,
        alg: Option<Algorithm>,
        options: AdoptOptions,
    ) -> Result<SignerRef, Error> {
        let backend = self.adopting_backend(backend, uri)?;
        self.add(label, || backend.adopt(uri, label, alg, options))
    }

    fn adopting_backend(
        &self,
        backend: Option<BackendKind>,
        uri: &str,
    ) -> Result<&Arc<dyn Backend>, Error> {
        let kind = match backend {
            Some(kind) => kind,
            None => BackendKind::from_uri(uri)?,
        };
        self.backend(kind)
    }

    /// Deletes a key from its backend, then forgets it.
    pub fn delete(&self, label: &str) -> Result<KeyInfo, Error> {
        let _guard = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        let key = self.get(label)?;
        let info = key.meta().info().clone();
        self.backend(info.backend)?.delete(&info.label)?;
        self.keys
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(info.label.as_str());
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::software::SoftwareBackend;

    fn keyring() -> Keyring {
        Keyring::new(vec![Arc::new(SoftwareBackend::ephemeral())])
    }

    #[test]
    fn adopt_takes_its_backend_from_the_uri_scheme() {
        let label = KeyLabel::new("k").unwrap();
        let err = keyring()
            .adopt(None, "tpm2:0x81000001", &label, None)
            .unwrap_err();
        assert!(
            matches!(&err, Error::UnknownUriScheme { scheme } if scheme == "tpm2"),
            "{err}"
        );
        let err = keyring()
            .adopt(None, "no-scheme", &label, None)
            .unwrap_err();
        assert!(matches!(err, Error::UnknownUriScheme { .. }), "{err}");
        // pkcs11: goes to the PKCS#11 backend, which this keyring lacks.
        let err = keyring()
            .adopt(None, "PKCS11:object=x", &label, None)
            .unwrap_err();
        let expected = if BackendKind::Pkcs11.is_compiled() {
            matches!(
                err,
                Error::BackendNotConfigured {
                    backend: BackendKind::Pkcs11
                }
            )
        } else {
            matches!(
                err,
                Error::BackendNotCompiled {
                    backend: BackendKind::Pkcs11
                }
            )
        };
        assert!(expected, "{err}");
        // The software backend adopts nothing.
        let err = keyring()
            .allow_client_adopt_in(BackendKind::Software, true)
            .adopt(Some(BackendKind::Software), "pkcs11:object=x", &label, None)
            .unwrap_err();
        assert!(matches!(err, Error::Unsupported { .. }), "{err}");
        // tpm: goes to the TPM backend, which this keyring lacks too.
        let err = keyring()
            .adopt(None, "tpm:handle=0x81000001", &label, None)
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::BackendNotConfigured {
                    backend: BackendKind::Tpm
                } | Error::BackendNotCompiled {
                    backend: BackendKind::Tpm
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn client_adoption_is_allowed_per_backend() {
        let label = KeyLabel::new("k").unwrap();
        // Allowed for PKCS#11 only: the software backend still refuses clients.
        let err = keyring()
            .allow_client_adopt_in(BackendKind::Pkcs11, true)
            .adopt(Some(BackendKind::Software), "pkcs11:object=x", &label, None)
            .unwrap_err();
        assert!(matches!(err, Error::AdoptNotAllowed { .. }), "{err}");
        let err = keyring()
            .allow_client_adopt_in(BackendKind::Software, true)
            .adopt(Some(BackendKind::Software), "pkcs11:object=x", &label, None)
            .unwrap_err();
        assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    }

    #[test]
    fn clients_adopt_only_when_allowed() {
        let label = KeyLabel::new("k").unwrap();
        let err = keyring()
            .adopt(Some(BackendKind::Software), "pkcs11:object=x", &label, None)
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::AdoptNotAllowed {
                    backend: BackendKind::Software,
                    refusal: AdoptRefusal::ClientsNotAllowed
                }
            ),
            "{err}"
        );
        assert!(
            !err.to_string().contains("--"),
            "the agent names its own flags: {err}"
        );
        // The configuration needs no permission (the software backend then says it adopts
        // nothing).
        let err = keyring()
            .adopt_configured(
                Some(BackendKind::Software),
                "pkcs11:object=x",
                &label,
                None,
                AdoptOptions::default(),
            )
            .unwrap_err();
        assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    }

    #[test]
    fn a_backend_not_compiled_in_names_its_feature() {
        assert!(BackendKind::Software.is_compiled());
        assert_eq!(
            BackendKind::Tpm.is_compiled(),
            cfg!(feature = "tpm"),
            "compiled() follows the features"
        );
        assert_eq!(
            BackendKind::Pkcs11.is_compiled(),
            cfg!(feature = "pkcs11"),
            "compiled() follows the features"
        );
        assert_eq!(BackendKind::Tpm.cargo_feature(), Some("tpm"));
        let label = KeyLabel::new("k").unwrap();
        // A keyring without a TPM backend: not compiled in, or compiled but not configured.
        let err = keyring()
            .generate(BackendKind::Tpm, &label, Algorithm::ES256)
            .unwrap_err();
        if cfg!(feature = "tpm") {
            assert!(matches!(err, Error::BackendNotConfigured { .. }), "{err}");
        } else {
            assert!(matches!(err, Error::BackendNotCompiled { .. }), "{err}");
            assert!(err.to_string().contains("feature `tpm`"), "{err}");
        }
        let message = Error::BackendNotCompiled {
            backend: BackendKind::Pkcs11,
        }
        .to_string();
        assert!(message.contains("feature `pkcs11`"), "{message}");
    }
}
