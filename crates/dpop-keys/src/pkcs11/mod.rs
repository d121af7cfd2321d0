//! The PKCS#11 backend: keys that live on a token (an HSM, a YubiKey through its PKCS#11
//! module, SoftHSM2) and sign there.
//!
//! Keys are generated on the token (`CKA_TOKEN`, `CKA_PRIVATE`, `CKA_SENSITIVE`, not
//! `CKA_EXTRACTABLE`), imported from PEM into such an object, or adopted from an RFC 7512 URI
//! ([`Pkcs11Uri`]). The token holds the keys; the agent keeps one small record per key in
//! `metadata_dir` (`<label>.json`: algorithm, `CKA_ID`, origin, token label and serial) so
//! that labels survive restarts. Records hold no secrets.
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

mod keys;
mod locking;
mod pool;
mod raw;
mod uri;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

pub use keys::Pkcs11Signer;
pub use uri::{ObjectType, Pkcs11Uri};

use keys::{FoundKey, Locator, SignWith};
use pool::{Fail, Token, TokenIdentity};

use crate::fsutil::{create_private_dir, json_files, write_new_private_file};
use crate::pem::{KeyKind, parse_private_key_pem};
use crate::{Algorithm, Backend, BackendKind, Error, Jwk, KeyLabel, KeyMeta, SignerRef};

/// Default number of sessions kept open per token.
pub const DEFAULT_MAX_SESSIONS: usize = 8;

/// Loads and initialises the module at `path` as the backend does (handing it parking_lot
/// mutexes, which spin briefly before they sleep, unless it refuses them), or returns the
/// context this process already has for it. For tools and benchmarks that talk to the token
/// beside a backend. The caller counts as a user of the module for the rest of the process, so
/// no backend will re-initialise it under the caller's sessions.
pub fn load_module(path: &Path) -> Result<cryptoki::context::Pkcs11, Error> {
    let (_, ctx, user) = pool::module(path)?;
    std::mem::forget(user);
    Ok(ctx)
}

/// Which token to use: by label (`CK_TOKEN_INFO.label`) or serial number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSelector {
    /// The token label, e.g. `dpop` or `YubiKey PIV #12345678`.
    Label(String),
    /// The token serial number.
    Serial(String),
}

impl std::fmt::Display for TokenSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSelector::Label(l) => write!(f, "token labelled {l:?}"),
            TokenSelector::Serial(s) => write!(f, "token with serial {s:?}"),
        }
    }
}

/// Where the user PIN comes from, other than a prompt (the agent prompts itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PinSource {
    /// An environment variable.
    Env(String),
    /// A file; one trailing newline is removed.
    File(PathBuf),
}

impl PinSource {
    /// Reads the PIN. Errors name the source, never the PIN.
    pub fn resolve(&self) -> Result<SecretString, Error> {
        match self {
            PinSource::Env(var) => {
                let unavailable = |reason: &str| Error::PinUnavailable {
                    from: format!("environment variable {var}"),
                    reason: reason.to_owned(),
                };
                let value = std::env::var_os(var).ok_or_else(|| unavailable("it is not set"))?;
                let value = Zeroizing::new(
                    value
                        .into_string()
                        .map_err(|_| unavailable("it is not valid UTF-8"))?,
                );
                if value.is_empty() {
                    return Err(unavailable("it is empty"));
                }
                Ok(SecretString::from(value.as_str()))
            }
            PinSource::File(path) => {
                let unavailable = |reason: String| Error::PinUnavailable {
                    from: format!("file {}", path.display()),
                    reason,
                };
                let bytes = Zeroizing::new(fs::read(path).map_err(|e| unavailable(e.to_string()))?);
                if let Ok(meta) = fs::metadata(path)
                    && meta.permissions().mode() & 0o077 != 0
                {
                    tracing::warn!(path = %path.display(), "the PIN file is readable by group or others; chmod 600 it");
                }
                let text = std::str::from_utf8(&bytes)
                    .map_err(|_| unavailable("it is not valid UTF-8".into()))?;
                let text = text
                    .strip_suffix("\r\n")
                    .or_else(|| text.strip_suffix('\n'))
                    .unwrap_or(text);
                if text.is_empty() {
                    return Err(unavailable("it is empty".into()));
                }
                Ok(SecretString::from(text))
            }
        }
    }

    /// The source an RFC 7512 `pin-source` names: `file:/path` or a plain path, or `env:VAR`
    /// (a common extension).
    pub fn from_uri_pin_source(value: &str) -> Result<PinSource, Error> {
        if let Some(var) = value.strip_prefix("env:") {
            return Ok(PinSource::Env(var.to_owned()));
        }
        let path = value
            .strip_prefix("file://")
            .or_else(|| value.strip_prefix("file:"));
        let path = path.unwrap_or(value);
        if path.starts_with('/') {
            Ok(PinSource::File(PathBuf::from(path)))
        } else {
            Err(Error::InvalidPkcs11Uri {
                reason: format!(
                    "pin-source {value:?} is neither file:/absolute/path nor env:VARIABLE"
                ),
            })
        }
    }
}

/// How to open a token.
#[derive(Clone, Debug)]
pub struct Pkcs11Config {
    /// The PKCS#11 module (shared library) file.
    pub module: PathBuf,
    /// Which token.
    pub token: TokenSelector,
    /// The user PIN (`CKU_USER`).
    pub pin: SecretString,
    /// A directory, created 0700, for the per-key records.
    pub metadata_dir: PathBuf,
    /// At most this many sessions are open at once (signing requests beyond it wait).
    pub max_sessions: usize,
    /// While the token is missing, re-initialise the module (`C_Finalize`, `C_Initialize`,
    /// at most every 2 s) so that modules which list slots only at start-up, SoftHSM2 among
    /// them, see it come back. Only for processes where nothing else uses the module: it ends
    /// every session on it. Off by default; the agent, which owns its process, turns it on.
    pub reinitialize_module: bool,
}

impl Pkcs11Config {
    /// A configuration with [`DEFAULT_MAX_SESSIONS`].
    pub fn new(
        module: impl Into<PathBuf>,
        token: TokenSelector,
        pin: SecretString,
        metadata_dir: impl Into<PathBuf>,
    ) -> Pkcs11Config {
        Pkcs11Config {
            module: module.into(),
            token,
            pin,
            metadata_dir: metadata_dir.into(),
            max_sessions: DEFAULT_MAX_SESSIONS,
            reinitialize_module: false,
        }
    }
}

/// How a key came to the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Origin {
    /// Made on the token by us; deleting destroys it.
    Generated,
    /// Imported from PEM by us; deleting destroys it.
    Imported,
    /// Already on the token; deleting only forgets it.
    Adopted,
}

/// One key's record in `metadata_dir`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct KeyRecord {
    version: u32,
    label: KeyLabel,
    alg: Algorithm,
    /// `CKA_ID`, hex.
    id: String,
    /// `CKA_LABEL` to match as well (adopted keys named by `object=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    object: Option<String>,
    origin: Origin,
    token_label: String,
    token_serial: String,
    /// The public key when the record was written; used when the token shows none.
    jwk: Jwk,
}

impl KeyRecord {
    fn locator(&self, path: &Path) -> Result<Locator, Error> {
        Ok(Locator {
            id: hex_decode(&self.id).ok_or_else(|| Error::CorruptStore {
                path: path.to_owned(),
                reason: "id is not hex".into(),
            })?,
            object: self.object.clone(),
        })
    }
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Keys on one PKCS#11 token.
pub struct Pkcs11Backend {
    token: Arc<Token>,
    metadata_dir: PathBuf,
}

impl std::fmt::Debug for Pkcs11Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Backend")
            .field("token", &self.token)
            .field("metadata_dir", &self.metadata_dir)
            .finish()
    }
}

impl Pkcs11Backend {
    /// Loads the module (once per process), finds the token and logs in as `CKU_USER`, so that
    /// a wrong PIN ([`Error::PinIncorrect`], tried once), a locked PIN or a missing token is
    /// reported now.
    pub fn open(config: Pkcs11Config) -> Result<Pkcs11Backend, Error> {
        create_private_dir(&config.metadata_dir)?;
        let (module_path, ctx, module) = pool::module(&config.module)?;
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
            metadata_dir: config.metadata_dir,
        })
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

    fn record_path(&self, label: &KeyLabel) -> PathBuf {
        self.metadata_dir.join(format!("{label}.json"))
    }

    fn read_record(&self, path: &Path) -> Result<KeyRecord, Error> {
        let bytes = fs::read(path).map_err(|source| Error::Io {
            action: "reading key record",
            path: path.to_owned(),
            source,
        })?;
        let record: KeyRecord =
            serde_json::from_slice(&bytes).map_err(|e| Error::CorruptStore {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        if path.file_stem().and_then(|s| s.to_str()) != Some(record.label.as_str()) {
            return Err(Error::CorruptStore {
                path: path.to_owned(),
                reason: "file name does not match the label inside".into(),
            });
        }
        Ok(record)
    }

    fn check_label_free(&self, label: &KeyLabel) -> Result<(), Error> {
        if self.record_path(label).exists() {
            return Err(Error::KeyExists {
                label: label.to_string(),
            });
        }
        Ok(())
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
            let (_, sign) = keys::required_mechanisms(alg);
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

    /// Writes the record for a key just put on the token; when that fails, `undo` removes the
    /// key again so that nothing is left half-made.
    #[allow(clippy::too_many_arguments)]
    fn finish_new_key(
        &self,
        label: &KeyLabel,
        alg: Algorithm,
        origin: Origin,
        locator: Locator,
        jwk: Jwk,
        identity: &TokenIdentity,
        found: Option<FoundKey>,
    ) -> Result<SignerRef, Error> {
        let made = self
            .signer(
                label.clone(),
                alg,
                jwk.clone(),
                identity,
                locator.clone(),
                found,
            )
            .and_then(|signer| {
                let record = KeyRecord {
                    version: 1,
                    label: label.clone(),
                    alg,
                    id: hex_encode(&locator.id),
                    object: locator.object.clone(),
                    origin,
                    token_label: identity.label.clone(),
                    token_serial: identity.serial.clone(),
                    jwk,
                };
                let json = serde_json::to_vec_pretty(&record).expect("record serializes");
                write_new_private_file(&self.record_path(label), &json)?;
                Ok(signer)
            });
        // Keys we made go again if they cannot be filed; adopted keys are never ours to destroy.
        if made.is_err()
            && origin != Origin::Adopted
            && let Err(e) = self.destroy(&locator)
        {
            tracing::warn!(error = %e, "could not remove a half-made PKCS#11 key");
        }
        made
    }

    /// Destroys the objects of a key we created (public first: if the private key then cannot
    /// be destroyed, the key still works from its record).
    fn destroy(&self, locator: &Locator) -> Result<(), Error> {
        self.token.run(|session, generation| {
            let private = keys::find(session, &locator.template(ObjectClass::PRIVATE_KEY))?;
            if private.is_empty() {
                // Gone already, or is the token? Only the former may drop the record.
                self.token.explain_missing(session, generation)?;
            }
            for object in keys::find(session, &locator.template(ObjectClass::PUBLIC_KEY))? {
                session.destroy_object(object)?;
            }
            for object in private {
                session.destroy_object(object)?;
            }
            Ok(())
        })
    }

    fn new_id() -> Result<Vec<u8>, Error> {
        let mut id = vec![0u8; 16];
        SystemRandom::new()
            .fill(&mut id)
            .map_err(|_| Error::Crypto("random CKA_ID"))?;
        Ok(id)
    }

    /// Checks an adopt URI against the module and token in use.
    fn check_uri_target(&self, uri: &Pkcs11Uri, identity: &TokenIdentity) -> Result<(), Error> {
        let mismatch = |attribute, uri_value: &str, actual: &str| Error::Pkcs11UriMismatch {
            attribute,
            uri_value: uri_value.to_owned(),
            actual: actual.to_owned(),
        };
        if let Some(path) = &uri.module_path {
            let same = fs::canonicalize(path).is_ok_and(|p| p == self.token.module_path());
            if !same {
                return Err(mismatch(
                    "module-path",
                    path,
                    &self.token.module_path().display().to_string(),
                ));
            }
        }
        if let Some(name) = &uri.module_name {
            let file = self
                .token
                .module_path()
                .file_name()
                .and_then(|f| f.to_str())
                .unwrap_or_default();
            // module-name is the file name without "lib" prefix and suffixes: softhsm2.
            let stem = file.strip_prefix("lib").unwrap_or(file);
            let stem = stem.split('.').next().unwrap_or(stem);
            if stem != name {
                return Err(mismatch("module-name", name, file));
            }
        }
        let checks = [
            ("token", &uri.token, &identity.label),
            ("serial", &uri.serial, &identity.serial),
            ("manufacturer", &uri.manufacturer, &identity.manufacturer),
            ("model", &uri.model, &identity.model),
        ];
        for (attribute, wanted, actual) in checks {
            if let Some(wanted) = wanted
                && wanted.trim_end() != actual.trim_end()
            {
                return Err(mismatch(attribute, wanted, actual));
            }
        }
        if let Some(slot) = uri.slot_id
            && slot != identity.slot
        {
            return Err(mismatch(
                "slot-id",
                &slot.to_string(),
                &identity.slot.to_string(),
            ));
        }
        if uri.library_manufacturer.is_some() || uri.library_description.is_some() {
            let info = self
                .token
                .context()
                .get_library_info()
                .map_err(pool::ck_error)?;
            if let Some(m) = &uri.library_manufacturer
                && m.trim_end() != info.manufacturer_id().trim_end()
            {
                return Err(mismatch("library-manufacturer", m, info.manufacturer_id()));
            }
            if let Some(d) = &uri.library_description
                && d.trim_end() != info.library_description().trim_end()
            {
                return Err(mismatch(
                    "library-description",
                    d,
                    info.library_description(),
                ));
            }
        }
        Ok(())
    }
}

impl Backend for Pkcs11Backend {
    fn kind(&self) -> BackendKind {
        BackendKind::Pkcs11
    }

    fn algorithms(&self) -> Vec<Algorithm> {
        let mechanisms = self.token.mechanisms();
        Algorithm::ALL
            .into_iter()
            .filter(|&alg| {
                let (generate, _) = keys::required_mechanisms(alg);
                mechanisms.contains(&generate) && SignWith::choose(alg, &mechanisms).is_some()
            })
            .collect()
    }

    fn load(&self) -> Result<Vec<SignerRef>, Error> {
        let paths = json_files(&self.metadata_dir, "reading PKCS#11 key records")?;
        let identity = self.token.identity()?;
        let mut signers = Vec::new();
        for path in paths {
            let record = match self.read_record(&path) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "skipping PKCS#11 key record");
                    continue;
                }
            };
            // A token restored from backup has a new serial but the same keys; a different
            // key under the same CKA_ID on another token is caught by the JWK check below.
            let other_token = !record.token_serial.is_empty()
                && !identity.serial.is_empty()
                && record.token_serial != identity.serial;
            let locator = record.locator(&path)?;
            let found = self.token.run(|session, generation| {
                let objects = keys::find(session, &locator.template(ObjectClass::PRIVATE_KEY))?;
                if objects.is_empty() {
                    self.token.explain_missing(session, generation)?;
                }
                let [private] = objects[..] else {
                    return Ok(Err(objects.len()));
                };
                let jwk = match keys::key_kind(session, private)
                    .and_then(|kind| keys::public_jwk(session, private, &locator, kind))
                {
                    Ok(jwk) => jwk,
                    // The public object may be gone (a delete that stopped half-way).
                    Err(Fail::Other(Error::InvalidKey { .. })) => record.jwk.clone(),
                    Err(e) => return Err(e),
                };
                Ok(Ok((jwk, FoundKey::read(session, generation, private))))
            })?;
            let (jwk, handle) = match found {
                Ok(found) => found,
                Err(count) => {
                    tracing::warn!(
                        label = %record.label,
                        id = %record.id,
                        count,
                        "PKCS#11 key record names {count} private keys on the token (not 1); \
                         not loaded, record kept"
                    );
                    continue;
                }
            };
            if jwk != record.jwk {
                if other_token {
                    tracing::warn!(
                        label = %record.label,
                        record_serial = %record.token_serial,
                        token_serial = %identity.serial,
                        "PKCS#11 key record belongs to another token holding another key; \
                         not loaded, record kept"
                    );
                    continue;
                }
                tracing::warn!(label = %record.label, "the PKCS#11 key's public key differs from its record; using the token's");
            }
            signers.push(self.signer(
                record.label,
                record.alg,
                jwk,
                &identity,
                locator,
                Some(handle),
            )?);
        }
        Ok(signers)
    }

    fn generate(&self, label: &KeyLabel, alg: Algorithm) -> Result<SignerRef, Error> {
        self.check_label_free(label)?;
        let mechanisms = self.token.mechanisms();
        let (generate, _) = keys::required_mechanisms(alg);
        if !mechanisms.contains(&generate) {
            return Err(Error::UnsupportedAlgorithm {
                alg,
                by: format!("this token (it lists no {generate})"),
            });
        }
        self.sign_with(alg)?;
        let identity = self.token.identity()?;
        let locator = Locator {
            id: Self::new_id()?,
            object: None,
        };
        let (mechanism, mut public, mut private) = keys::generation_templates(alg);
        for t in [&mut public, &mut private] {
            t.push(Attribute::Id(locator.id.clone()));
            t.push(Attribute::Label(label.as_str().as_bytes().to_vec()));
        }
        let kind = match alg {
            Algorithm::ES256 => KeyKind::P256,
            Algorithm::ES384 => KeyKind::P384,
            Algorithm::EdDSA => KeyKind::Ed25519,
            Algorithm::RS256 | Algorithm::PS256 => KeyKind::Rsa,
        };
        let (jwk, handle) = self.token.run(|session, generation| {
            let (_, private_key) = session.generate_key_pair(&mechanism, &public, &private)?;
            match keys::public_jwk(session, private_key, &locator, kind) {
                Ok(jwk) => Ok((jwk, FoundKey::read(session, generation, private_key))),
                Err(e) => {
                    let _ = session.destroy_object(private_key);
                    for p in keys::find(session, &locator.template(ObjectClass::PUBLIC_KEY))? {
                        let _ = session.destroy_object(p);
                    }
                    Err(e)
                }
            }
        })?;
        self.finish_new_key(
            label,
            alg,
            Origin::Generated,
            locator,
            jwk,
            &identity,
            Some(handle),
        )
    }

    fn import_pem(
        &self,
        label: &KeyLabel,
        pem: &[u8],
        alg: Option<Algorithm>,
    ) -> Result<SignerRef, Error> {
        self.check_label_free(label)?;
        let parsed = parse_private_key_pem(pem)?;
        let alg = keys::alg_for(parsed.kind, alg)?;
        self.sign_with(alg)?;
        let mut templates = keys::import_templates(&parsed)?;
        drop(parsed);
        let identity = self.token.identity()?;
        let locator = Locator {
            id: Self::new_id()?,
            object: None,
        };
        for t in [&mut templates.public, &mut templates.private.0] {
            t.push(Attribute::Id(locator.id.clone()));
            t.push(Attribute::Label(label.as_str().as_bytes().to_vec()));
        }
        let kind = templates.kind;
        let (jwk, handle) = self.token.run(|session, generation| {
            let private = session.create_object(&templates.private.0)?;
            let public = match session.create_object(&templates.public) {
                Ok(p) => p,
                Err(e) => {
                    let _ = session.destroy_object(private);
                    return Err(e.into());
                }
            };
            match keys::public_jwk(session, private, &locator, kind) {
                Ok(jwk) => Ok((jwk, FoundKey::read(session, generation, private))),
                Err(e) => {
                    let _ = session.destroy_object(private);
                    let _ = session.destroy_object(public);
                    Err(e)
                }
            }
        })?;
        drop(templates);
        self.finish_new_key(
            label,
            alg,
            Origin::Imported,
            locator,
            jwk,
            &identity,
            Some(handle),
        )
    }

    fn adopt(
        &self,
        uri_text: &str,
        label: &KeyLabel,
        alg: Option<Algorithm>,
    ) -> Result<SignerRef, Error> {
        let uri = Pkcs11Uri::parse(uri_text)?;
        if uri.has_pin_value {
            return Err(Error::InvalidPkcs11Uri {
                reason: "pin-value is refused: a PIN in a URI ends up in shell history and \
                         process lists; configure --pkcs11-pin-env or --pkcs11-pin-file"
                    .into(),
            });
        }
        if let Some(t) = uri.object_type
            && t != ObjectType::Private
        {
            return Err(Error::InvalidPkcs11Uri {
                reason: format!(
                    "type={} names no private key; adopt needs type=private (or no type)",
                    t.as_str()
                ),
            });
        }
        self.check_label_free(label)?;
        let identity = self.token.identity()?;
        self.check_uri_target(&uri, &identity)?;
        let shown = uri.to_string();
        let mut template = vec![
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Sign(true),
        ];
        if let Some(id) = &uri.id {
            template.push(Attribute::Id(id.clone()));
        }
        if let Some(object) = &uri.object {
            template.push(Attribute::Label(object.as_bytes().to_vec()));
        }
        let (kind, jwk, locator, handle) = self.token.run(|session, generation| {
            let found = keys::find(session, &template)?;
            if found.is_empty() {
                self.token.explain_missing(session, generation)?;
            }
            let [private] = found[..] else {
                return Err(Error::Pkcs11ObjectCount {
                    uri: shown.clone(),
                    count: found.len(),
                }
                .into());
            };
            let id = session
                .get_attributes(private, &[AttributeType::Id])?
                .into_iter()
                .find_map(|a| match a {
                    Attribute::Id(id) => Some(id),
                    _ => None,
                })
                .unwrap_or_default();
            // The ID finds the key again; the label too when the URI named the key by it or
            // there is no ID.
            let object = uri.object.clone().or_else(|| {
                if !id.is_empty() {
                    return None;
                }
                session
                    .get_attributes(private, &[AttributeType::Label])
                    .ok()?
                    .into_iter()
                    .find_map(|a| match a {
                        Attribute::Label(l) => String::from_utf8(l).ok(),
                        _ => None,
                    })
            });
            let locator = Locator { id, object };
            let kind = keys::key_kind(session, private)?;
            let jwk = keys::public_jwk(session, private, &locator, kind)?;
            Ok((
                kind,
                jwk,
                locator,
                FoundKey::read(session, generation, private),
            ))
        })?;
        let alg = keys::alg_for(kind, alg)?;
        self.finish_new_key(
            label,
            alg,
            Origin::Adopted,
            locator,
            jwk,
            &identity,
            Some(handle),
        )
    }

    fn delete(&self, label: &KeyLabel) -> Result<(), Error> {
        let path = self.record_path(label);
        if !path.exists() {
            return Err(Error::KeyNotFound {
                label: label.to_string(),
            });
        }
        let record = self.read_record(&path)?;
        if record.origin == Origin::Adopted {
            // The key was on the token before us and stays there.
            return fs::remove_file(&path).map_err(|source| Error::Io {
                action: "removing key record",
                path,
                source,
            });
        }
        let locator = record.locator(&path)?;
        // Move the record aside first, so that a crash in between leaves no record of a key
        // that is gone; put it back if the token refuses.
        let aside = path.with_extension("json.deleting");
        fs::rename(&path, &aside).map_err(|source| Error::Io {
            action: "removing key record",
            path: path.clone(),
            source,
        })?;
        if let Err(e) = self.destroy(&locator) {
            if let Err(io) = fs::rename(&aside, &path) {
                tracing::error!(error = %io, path = %path.display(), "could not restore the key record");
            }
            return Err(e);
        }
        fs::remove_file(&aside).map_err(|source| Error::Io {
            action: "removing key record",
            path: aside,
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn pin_file_trims_one_newline_and_errors_hide_the_pin() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pin");
        fs::write(&path, "12 34\n\n").unwrap();
        let pin = PinSource::File(path.clone()).resolve().unwrap();
        assert_eq!(pin.expose_secret(), "12 34\n");
        fs::write(&path, "5678\r\n").unwrap();
        assert_eq!(
            PinSource::File(path.clone())
                .resolve()
                .unwrap()
                .expose_secret(),
            "5678"
        );
        fs::write(&path, "\n").unwrap();
        let err = PinSource::File(path.clone())
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(err.contains("empty"), "{err}");
        fs::write(&path, b"\xff9999\n").unwrap();
        let err = PinSource::File(path.clone())
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(err.contains("UTF-8") && !err.contains("9999"), "{err}");
        let missing = PinSource::File(dir.path().join("nope"))
            .resolve()
            .unwrap_err();
        assert!(missing.to_string().contains("nope"), "{missing}");
        let env = PinSource::Env("DPOP_TEST_SURELY_UNSET_PIN_VAR".into())
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(env.contains("DPOP_TEST_SURELY_UNSET_PIN_VAR") && env.contains("not set"));
        assert!(!format!("{:?}", pin).contains("12 34"));
    }

    #[test]
    fn config_debug_hides_the_pin() {
        let config = Pkcs11Config::new(
            "/m.so",
            TokenSelector::Label("t".into()),
            SecretString::from("314159"),
            "/d",
        );
        let debug = format!("{config:?}");
        assert!(
            !debug.contains("314159") && debug.contains("/m.so"),
            "{debug}"
        );
    }

    #[test]
    fn pin_source_from_uri() {
        assert_eq!(
            PinSource::from_uri_pin_source("file:/etc/token_pin").unwrap(),
            PinSource::File("/etc/token_pin".into())
        );
        assert_eq!(
            PinSource::from_uri_pin_source("/run/pin").unwrap(),
            PinSource::File("/run/pin".into())
        );
        assert_eq!(
            PinSource::from_uri_pin_source("env:PIN").unwrap(),
            PinSource::Env("PIN".into())
        );
        assert!(PinSource::from_uri_pin_source("|/bin/askpass").is_err());
    }

    #[test]
    fn hex() {
        assert_eq!(hex_encode(&[0, 0xab, 0x10]), "00ab10");
        assert_eq!(hex_decode("00ab10").unwrap(), [0, 0xab, 0x10]);
        assert_eq!(hex_decode("").unwrap(), Vec::<u8>::new());
        assert!(hex_decode("0").is_none() && hex_decode("zz").is_none());
    }
}
