//! The PKCS#11 backend: keys that live on a token (an HSM, a YubiKey through its PKCS#11
//! module, SoftHSM2) and sign there.
//!
//! Keys are generated on the token (`CKA_TOKEN`, `CKA_PRIVATE`, `CKA_SENSITIVE`, not
//! `CKA_EXTRACTABLE`), imported from PEM into such an object, or adopted from an RFC 7512 URI
//! ([`Pkcs11Uri`]). The token holds the keys; the agent keeps one small record per key in
//! `metadata_dir` (`<label>.json`: algorithm, `CKA_ID`, origin, token label and serial; the
//! crate's one record store) so that labels survive restarts. Records hold no secrets.
//!
//! Faults: a wrong PIN is reported once ([`Error::PinIncorrect`]) and never tried again by
//! this backend; a removed token gives [`Error::TokenNotPresent`] and is looked up again (by
//! label or serial, since slot IDs change) on the next request, so the agent recovers when the
//! token comes back.
//!
//! ```no_run
//! use dpop_keys::pkcs11::{Pkcs11Backend, Pkcs11Config, PinSource, TokenSelector};
//! use dpop_keys::{Backend, KeyLabel, Algorithm};
//!
//! let pin = PinSource::Env("DPOP_PKCS11_PIN".into()).resolve()?;
//! let backend = Pkcs11Backend::open(Pkcs11Config::new(
//!     "/usr/lib/softhsm/libsofthsm2.so",
//!     TokenSelector::Label("dpop".into()),
//!     pin,
//!     "/home/me/.local/share/dpop-agent/pkcs11",
//! ))?;
//! let key = backend.generate(&KeyLabel::new("api")?, Algorithm::ES256)?;
//! # Ok::<(), dpop_keys::Error>(())
//! ```
//!
//! One file per concern:
//! - `config`: which module and token, PIN sources ([`PinSource`]), [`Pkcs11Config`];
//! - `module`: loading modules once per process ([`load_module`]) and finding the token;
//! - `pool`: the token's logged-in session pool, re-login and token loss;
//! - `error`: cryptoki errors as the specification names them;
//! - `manage`: generating, importing, adopting, loading and deleting keys (generate and
//!   import share one create-on-token path; every new key, adopted too, is filed by one);
//! - `templates`: the objects we create; `objects`: reading the token's objects back;
//! - `record`: the per-key record; `signer`: mechanisms and [`Pkcs11Signer`];
//! - `uri`: RFC 7512 URIs; `raw` and `locking`: the two calls cryptoki cannot make for us.

mod config;
mod error;
mod locking;
mod manage;
mod module;
mod objects;
mod pool;
mod raw;
mod record;
mod signer;
mod templates;
mod uri;

use std::path::Path;
use std::sync::Arc;

pub use config::{DEFAULT_MAX_SESSIONS, PinSource, Pkcs11Config, TokenSelector};
pub use module::load_module;
pub use signer::Pkcs11Signer;
pub use uri::{ObjectType, Pkcs11Uri};

use module::TokenIdentity;
use objects::{FoundKey, Locator};
use pool::Token;
use signer::SignWith;

use crate::records::RecordStore;
use crate::{Algorithm, BackendKind, Error, Jwk, KeyLabel, KeyMeta, SignerRef};

/// Keys on one PKCS#11 token.
pub struct Pkcs11Backend {
    token: Arc<Token>,
    records: RecordStore,
}

impl std::fmt::Debug for Pkcs11Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Backend")
            .field("token", &self.token)
            .field("metadata_dir", &self.records.dir())
            .finish()
    }
}

impl Pkcs11Backend {
    /// Loads the module (once per process), finds the token and logs in as `CKU_USER`, so that
    /// a wrong PIN ([`Error::PinIncorrect`], tried once), a locked PIN or a missing token is
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
        Ok(Pkcs11Backend { token, records })
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
    fn key_uri(identity: &TokenIdentity, locator: &Locator) -> String {
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

    fn sign_with(&self, alg: Algorithm) -> Result<SignWith, Error> {
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

    fn signer(
        &self,
        label: KeyLabel,
        alg: Algorithm,
        jwk: Jwk,
        identity: &TokenIdentity,
        locator: Locator,
        found: Option<FoundKey>,
    ) -> Result<SignerRef, Error> {
        let with = self.sign_with(alg)?;
        let meta = KeyMeta::new(
            label,
            alg,
            BackendKind::Pkcs11,
            jwk,
            true,
            Some(Self::key_uri(identity, &locator)),
        )?;
        Ok(Arc::new(Pkcs11Signer::new(
            meta,
            self.token.clone(),
            locator,
            with,
            found,
        )))
    }
}
