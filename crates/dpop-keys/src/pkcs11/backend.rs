//! The backend value: the token's session pool and the record store, and how a key found on
//! the token becomes a signer.

use super::module::{self, TokenIdentity};
use super::objects::{FoundKey, Locator};
use super::pool::Token;
use super::signer::{self, SignWith};
use super::{ObjectType, Pkcs11Config, Pkcs11Signer, Pkcs11Uri};
use std::path::Path;
use std::sync::Arc;

use crate::records::RecordStore;
use crate::{Algorithm, BackendKind, Error, Jwk, KeyLabel, KeyMeta, SignerRef};

/// Keys on one PKCS#11 token.
pub struct Pkcs11Backend {
    pub(super) token: Arc<Token>,
    pub(super) records: RecordStore,
    /// Refuse keys the token lets do more than sign ([`Self::require_sign_only`]).
    pub(super) require_sign_only: bool,
}

impl std::fmt::Debug for Pkcs11Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Backend")
            .field("token", &self.token)
            .field("metadata_dir", &self.records.dir())
            .field("require_sign_only", &self.require_sign_only)
            .finish()
    }
}

impl Pkcs11Backend {
    /// Loads the module (once per process), finds the token and logs in as `CKU_USER`, so that
    /// a wrong PIN ([`Error::AuthFailed`], tried once), a locked PIN or a missing token is
    /// reported now.
    pub fn open(config: Pkcs11Config) -> Result<Pkcs11Backend, Error> {
        let records = RecordStore::open(config.metadata_dir)?;
        let (module_path, ctx, module) = module::module(&config.module)?;
        let token = Arc::new(Token::new(
            ctx,
            module,
            module_path,
            config.token,
            config.pin,
            config.max_sessions,
            config.reinitialize_module,
        ));
        // Opens the first session, which logs in.
        drop(token.session()?);
        Ok(Pkcs11Backend {
            token,
            records,
            require_sign_only: false,
        })
    }

    /// With `required`, a key that the token lets decrypt, unwrap, derive or sign with
    /// recovery is refused (a generated or imported one destroyed again) instead of kept with
    /// a warning. Tokens that derive a key's flags themselves (tpm2-pkcs11, a YubiKey's PIV
    /// slots) may make such keys whatever the template asks.
    pub fn require_sign_only(mut self, required: bool) -> Pkcs11Backend {
        self.require_sign_only = required;
        self
    }

    /// The canonical path of the module in use.
    pub fn module_path(&self) -> &Path {
        self.token.module_path()
    }

    /// The token's label and serial number, looking the token up if needed.
    pub fn token_label_and_serial(&self) -> Result<(String, String), Error> {
        let id = self.token.identity()?;
        Ok((id.label, id.serial))
    }

    /// The URI that names a key, shown as its location.
    pub(super) fn key_uri(identity: &TokenIdentity, locator: &Locator) -> String {
        Pkcs11Uri {
            token: Some(identity.label.clone()),
            serial: Some(identity.serial.clone()).filter(|s| !s.is_empty()),
            object: locator.object.clone(),
            object_type: Some(ObjectType::Private),
            id: Some(locator.id.clone()).filter(|id| !id.is_empty()),
            ..Pkcs11Uri::default()
        }
        .to_string()
    }

    pub(super) fn sign_with(&self, alg: Algorithm) -> Result<SignWith, Error> {
        SignWith::choose(alg, &self.token.mechanisms()).ok_or_else(|| {
            let (_, sign) = signer::required_mechanisms(alg);
            Error::UnsupportedAlgorithm {
                alg,
                by: format!(
                    "this token (it lists no {})",
                    sign.iter()
                        .map(|m| m.to_string())
                        .collect::<Vec<_>>()
                        .join(" or ")
                ),
            }
        })
    }

    #[allow(clippy::too_many_arguments)] // What the token says of one key; see file_key.
    pub(super) fn signer(
        &self,
        label: KeyLabel,
        alg: Algorithm,
        jwk: Jwk,
        identity: &TokenIdentity,
        locator: Locator,
        found: Option<FoundKey>,
        other_uses: Option<&[&str]>,
    ) -> Result<SignerRef, Error> {
        let with = self.sign_with(alg)?;
        let mut meta = KeyMeta::new(
            label,
            alg,
            BackendKind::Pkcs11,
            jwk,
            true,
            Some(Self::key_uri(identity, &locator)),
        )?;
        // Unknown when the token could not say.
        if let Some(uses) = other_uses {
            meta = meta.with_other_uses(uses);
        }
        Ok(Arc::new(Pkcs11Signer::new(
            meta,
            self.token.clone(),
            locator,
            with,
            found,
        )))
    }
}
