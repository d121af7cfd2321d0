//! Key management on the token: generating, importing, adopting, loading and deleting keys.
//!
//! Generating and importing share one create-on-token path ([`Pkcs11Backend::create_on_token`]:
//! a fresh `CKA_ID`, the objects made with the strictest template the token takes, the key
//! judged by the flags read back ([`Pkcs11Backend::judge`], which adopting uses too), the
//! public key read back, everything undone on failure), and
//! every new key, adopted ones too, is filed by one function ([`Pkcs11Backend::file_key`]),
//! which writes its record to the record store or, failing that, removes what we made.
//!
//! Over 600 lines: generate, import and adopt share the template ladder, the judging and the
//! undo-on-failure path, and a split by operation would pull those apart; the templates
//! themselves are in `templates.rs` and the flags read back in `objects.rs`.

use std::fs;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

use super::error::{Fail, ck_error, rv};
use super::module::TokenIdentity;
use super::objects::{FoundKey, KeyUsage, Locator, find, key_kind, public_jwk};
use super::record::{KeyRecord, Origin, hex_encode};
use super::signer::{SignWith, required_mechanisms};
use super::templates::{ImportTemplates, Template, generation_templates, import_templates};
use super::{ObjectType, Pkcs11Backend, Pkcs11Uri};
use crate::pem::{PrivateKeyPem, parse_private_key_pem};
use crate::{
    AdoptOptions, AdoptRefusal, Algorithm, Backend, BackendKind, Error, Jwk, KeyKind, KeyLabel,
    SignerRef,
};

/// The key [`Pkcs11Backend::create_on_token`] puts on the token: generated there, or a PEM
/// key's objects.
enum NewKey<'a> {
    /// A key pair the token generates.
    Generate {
        alg: Algorithm,
        signs_with: MechanismType,
    },
    /// A PEM key (zeroized on drop, as are the templates made from it).
    Import {
        pem: &'a PrivateKeyPem,
        signs_with: MechanismType,
    },
}

impl NewKey<'_> {
    /// Its objects under one [`Template`].
    fn objects(&self, template: Template) -> Result<NewObjects, Error> {
        Ok(match *self {
            NewKey::Generate { alg, signs_with } => {
                let (mechanism, public, private) = generation_templates(alg, signs_with, template);
                NewObjects::Generate {
                    mechanism,
                    public,
                    private,
                }
            }
            NewKey::Import { pem, signs_with } => {
                NewObjects::Import(import_templates(pem, signs_with, template)?)
            }
        })
    }

    fn origin(&self) -> Origin {
        match self {
            NewKey::Generate { .. } => Origin::Generated,
            NewKey::Import { .. } => Origin::Imported,
        }
    }
}

/// The objects of one attempt at a [`NewKey`], without `CKA_ID` and `CKA_LABEL`, which the
/// caller adds.
enum NewObjects {
    /// A key pair the token generates.
    Generate {
        mechanism: Mechanism<'static>,
        public: Vec<Attribute>,
        private: Vec<Attribute>,
    },
    /// A PEM key's objects (the private template is zeroized on drop).
    Import(ImportTemplates),
}

impl NewObjects {
    /// The public and private templates, to add the key's `CKA_ID` and `CKA_LABEL` to.
    fn templates_mut(&mut self) -> [&mut Vec<Attribute>; 2] {
        match self {
            NewObjects::Generate {
                public, private, ..
            } => [public, private],
            NewObjects::Import(t) => [&mut t.public, &mut t.private.0],
        }
    }

    /// Makes the objects on the token; returns the private key's handle. A failure leaves
    /// nothing behind.
    fn create(&self, session: &Session) -> Result<ObjectHandle, CkError> {
        match self {
            NewObjects::Generate {
                mechanism,
                public,
                private,
            } => Ok(session.generate_key_pair(mechanism, public, private)?.1),
            NewObjects::Import(t) => {
                let private = session.create_object(&t.private.0)?;
                if let Err(e) = session.create_object(&t.public) {
                    let _ = session.destroy_object(private);
                    return Err(e);
                }
                Ok(private)
            }
        }
    }
}

/// Whether a token refused a template (an attribute it does not know or a value it does not
/// take): `CKR_ATTRIBUTE_*`, `CKR_TEMPLATE_*`, and the `CKR_GENERAL_ERROR` /
/// `CKR_FUNCTION_FAILED` that some modules answer instead (tpm2-pkcs11: "User specified and
/// TPM specified attr mismatch").
fn refuses_template(e: &CkError) -> bool {
    matches!(
        rv(e),
        Some(
            RvError::AttributeTypeInvalid
                | RvError::AttributeValueInvalid
                | RvError::AttributeReadOnly
                | RvError::TemplateInconsistent
                | RvError::TemplateIncomplete
                | RvError::GeneralError
                | RvError::FunctionFailed
        )
    )
}

impl Pkcs11Backend {
    /// Puts a new key on the token (generated there or imported), judges what the token
    /// made, reads its public key back and files it. The caller has checked the label, the
    /// algorithm and the token's mechanisms. Whatever fails, nothing is left half-made on the
    /// token.
    fn create_on_token(
        &self,
        label: &KeyLabel,
        alg: Algorithm,
        new: NewKey<'_>,
    ) -> Result<SignerRef, Error> {
        let identity = self.token.identity()?;
        let locator = Locator {
            id: Self::new_id()?,
            object: None,
        };
        let origin = new.origin();
        let kind = KeyKind::for_alg(alg);
        let (jwk, handle, uses) = self.token.run(|session, generation| {
            let private = Self::create_loosening(session, &new, label, &locator)?;
            // Judge what the token made, not what was asked: a token may take a template
            // and still make a key that can decrypt.
            let judged = KeyUsage::read(session, private)
                .and_then(|usage| Ok(self.judge(label, usage, origin, false)?))
                .and_then(|uses| Ok((public_jwk(session, private, &locator, kind)?, uses)));
            match judged {
                Ok((jwk, uses)) => Ok((jwk, FoundKey::read(session, generation, private), uses)),
                Err(e) => {
                    let _ = session.destroy_object(private);
                    for p in find(session, &locator.template(ObjectClass::PUBLIC_KEY))? {
                        let _ = session.destroy_object(p);
                    }
                    Err(e)
                }
            }
        })?;
        self.file_key(
            label,
            alg,
            origin,
            locator,
            jwk,
            &identity,
            Some(handle),
            Some(&uses),
        )
    }

    /// Makes the key's objects with the strictest [`Template`] the token takes. PKCS#11 has
    /// no way to ask a token which attributes and values it takes short of using them, so
    /// each refused template is followed by a looser one; the last error is returned when the
    /// token takes none.
    fn create_loosening(
        session: &Session,
        new: &NewKey<'_>,
        label: &KeyLabel,
        locator: &Locator,
    ) -> Result<ObjectHandle, Fail> {
        let mut refused = Vec::new();
        let mut templates = Template::ORDER.into_iter().peekable();
        while let Some(template) = templates.next() {
            let mut objects = new.objects(template)?;
            for t in objects.templates_mut() {
                t.push(Attribute::Id(locator.id.clone()));
                t.push(Attribute::Label(label.as_str().as_bytes().to_vec()));
            }
            match objects.create(session) {
                Ok(private) => {
                    if !refused.is_empty() {
                        tracing::info!(
                            label = %label,
                            refused = %refused.join(", "),
                            taken = ?template,
                            "the PKCS#11 token refused the stricter key templates; the key \
                             is judged by the flags the token reports"
                        );
                    }
                    return Ok(private);
                }
                Err(e) if refuses_template(&e) && templates.peek().is_some() => {
                    refused.push(format!("{template:?}: {}", ck_error(e)));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Unsupported {
            what: "creating keys without a template".into(),
        }
        .into())
    }

    /// Judges a key by the flags the token reports: a private key that leaves the token, or
    /// may, is refused; one that can do more than sign is kept with a warning that names
    /// what (refused when sign-only keys are required). Returns those other uses. The caller
    /// destroys a key it made when this refuses it; an adopted key stays as it is.
    fn judge(
        &self,
        label: &KeyLabel,
        usage: KeyUsage,
        origin: Origin,
        loading: bool,
    ) -> Result<Vec<&'static str>, Error> {
        let (made, outcome) = match origin {
            _ if loading => ("holds", "not loaded, its record kept"),
            Origin::Generated => ("made", "the key was destroyed again"),
            Origin::Imported => ("stored", "the key was destroyed again"),
            Origin::Adopted => ("holds", "not adopted; the key stays on the token as it is"),
        };
        if let Some(problem) = usage.exposure(origin == Origin::Generated) {
            return Err(Error::InvalidKey {
                reason: format!(
                    "the PKCS#11 token {made} a private key that is {problem}; {outcome}"
                ),
            });
        }
        let uses = usage.other_uses();
        if !uses.is_empty() {
            let named = uses.join(", ");
            if self.require_sign_only {
                return Err(Error::InvalidKey {
                    reason: format!(
                        "the PKCS#11 token lets the private key also {named}, and sign-only \
                         keys are required; {outcome}"
                    ),
                });
            }
            tracing::warn!(
                label = %label,
                also = %named,
                "the PKCS#11 token lets key {label} also {named}, not only sign: any program \
                 with the token's PIN can use it so"
            );
        }
        Ok(uses)
    }

    /// Files a key just put on (or adopted from) the token: makes its signer and writes its
    /// record. When that fails, a key we made is destroyed again, so that nothing is left
    /// half-made; an adopted key is never ours to destroy.
    #[allow(clippy::too_many_arguments)] // One call per origin; a struct would only rename them.
    fn file_key(
        &self,
        label: &KeyLabel,
        alg: Algorithm,
        origin: Origin,
        locator: Locator,
        jwk: Jwk,
        identity: &TokenIdentity,
        found: Option<FoundKey>,
        other_uses: Option<&[&str]>,
    ) -> Result<SignerRef, Error> {
        let made = self
            .signer(
                label.clone(),
                alg,
                jwk.clone(),
                identity,
                locator.clone(),
                found,
                other_uses,
            )
            .and_then(|signer| {
                self.records.write_new(&KeyRecord {
                    version: 1,
                    label: label.clone(),
                    alg,
                    id: hex_encode(&locator.id),
                    object: locator.object.clone(),
                    origin,
                    token_label: identity.label.clone(),
                    token_serial: identity.serial.clone(),
                    jwk,
                })?;
                Ok(signer)
            });
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
            let private = find(session, &locator.template(ObjectClass::PRIVATE_KEY))?;
            if private.is_empty() {
                // Gone already, or is the token? Only the former may drop the record.
                self.token.explain_missing(session, generation)?;
            }
            for object in find(session, &locator.template(ObjectClass::PUBLIC_KEY))? {
                session.destroy_object(object)?;
            }
            for object in private {
                session.destroy_object(object)?;
            }
            Ok(())
        })
    }

    /// The label and locator of every key in the records (unreadable records are skipped:
    /// `load` reports them).
    fn managed_locators(&self) -> Result<Vec<(KeyLabel, Locator)>, Error> {
        let mut managed = Vec::new();
        for path in self.records.list()? {
            if let Ok(record) = self.records.read::<KeyRecord>(&path)
                && let Ok(locator) = record.locator(&path)
            {
                managed.push((record.label, locator));
            }
        }
        Ok(managed)
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
        let mismatch = |attribute, uri_value: &str, actual: &str| Error::UriMismatch {
            backend: BackendKind::Pkcs11,
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
            let info = self.token.context().get_library_info().map_err(ck_error)?;
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
                let (generate, _) = required_mechanisms(alg);
                mechanisms.contains(&generate) && SignWith::choose(alg, &mechanisms).is_some()
            })
            .collect()
    }

    fn load(&self) -> Result<Vec<SignerRef>, Error> {
        let paths = self.records.list()?;
        let identity = self.token.identity()?;
        let mut signers = Vec::new();
        for path in paths {
            let record: KeyRecord = match self.records.read(&path) {
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
                let objects = find(session, &locator.template(ObjectClass::PRIVATE_KEY))?;
                if objects.is_empty() {
                    self.token.explain_missing(session, generation)?;
                }
                let [private] = objects[..] else {
                    return Ok(Err(objects.len()));
                };
                let jwk = match key_kind(session, private)
                    .and_then(|kind| public_jwk(session, private, &locator, kind))
                {
                    Ok(jwk) => jwk,
                    // The public object may be gone (a delete that stopped half-way).
                    Err(Fail::Other(Error::InvalidKey { .. })) => record.jwk.clone(),
                    Err(e) => return Err(e),
                };
                // What the key may do; a token that cannot say leaves it unknown rather
                // than failing the start.
                let usage = KeyUsage::read(session, private).ok();
                Ok(Ok((
                    jwk,
                    FoundKey::read(session, generation, private),
                    usage,
                )))
            })?;
            let (jwk, handle, usage) = match found {
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
            // Judged as when it was made or adopted: the token or the settings may differ now
            // (a key adopted before sign-only keys were required).
            let uses = match usage
                .map(|usage| self.judge(&record.label, usage, record.origin, true))
                .transpose()
            {
                Ok(uses) => uses,
                Err(e) => {
                    tracing::warn!(label = %record.label, "PKCS#11 key {}: {e}", record.label);
                    continue;
                }
            };
            signers.push(self.signer(
                record.label,
                record.alg,
                jwk,
                &identity,
                locator,
                Some(handle),
                uses.as_deref(),
            )?);
        }
        Ok(signers)
    }

    fn generate(&self, label: &KeyLabel, alg: Algorithm) -> Result<SignerRef, Error> {
        self.records.check_free(label)?;
        let (generate, _) = required_mechanisms(alg);
        if !self.token.mechanisms().contains(&generate) {
            return Err(Error::UnsupportedAlgorithm {
                alg,
                by: format!("this token (it lists no {generate})"),
            });
        }
        let signs_with = self.sign_with(alg)?.mechanism_type();
        self.create_on_token(label, alg, NewKey::Generate { alg, signs_with })
    }

    fn import_pem(
        &self,
        label: &KeyLabel,
        pem: &[u8],
        alg: Option<Algorithm>,
    ) -> Result<SignerRef, Error> {
        self.records.check_free(label)?;
        let parsed = parse_private_key_pem(pem)?;
        let alg = parsed.kind.alg_for(alg)?;
        let signs_with = self.sign_with(alg)?.mechanism_type();
        // The key is checked before the token sees it (the templates derive the public
        // half with aws-lc-rs, which checks the key).
        import_templates(&parsed, signs_with, Template::Strict)?;
        let new = NewKey::Import {
            pem: &parsed,
            signs_with,
        };
        self.create_on_token(label, alg, new)
    }

    fn adopt(
        &self,
        uri_text: &str,
        label: &KeyLabel,
        alg: Option<Algorithm>,
        options: AdoptOptions,
    ) -> Result<SignerRef, Error> {
        let uri = Pkcs11Uri::parse(uri_text)?;
        if uri.has_pin_value {
            return Err(Error::InvalidUri {
                backend: BackendKind::Pkcs11,
                reason: "pin-value is refused: a PIN in a URI ends up in shell history and \
                         process lists; the PIN comes from the backend's configuration"
                    .into(),
            });
        }
        if let Some(t) = uri.object_type
            && t != ObjectType::Private
        {
            return Err(Error::InvalidUri {
                backend: BackendKind::Pkcs11,
                reason: format!(
                    "type={} names no private key; adopt needs type=private (or no type)",
                    t.as_str()
                ),
            });
        }
        self.records.check_free(label)?;
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
        // The locators of the keys we serve, to refuse adopting one of them a second time.
        let managed = self.managed_locators()?;
        let (kind, jwk, locator, handle, uses) = self.token.run(|session, generation| {
            let found = find(session, &template)?;
            if found.is_empty() {
                self.token.explain_missing(session, generation)?;
            }
            // Zero and several get the same answer: a client learns nothing about how many
            // keys the token holds or which labels and ids exist.
            let [private] = found[..] else {
                return Err(Error::NothingAtUri {
                    backend: BackendKind::Pkcs11,
                    uri: shown.clone(),
                }
                .into());
            };
            // A key that cannot make the algorithm asked for is refused as such first.
            let kind = key_kind(session, private)?;
            kind.alg_for(alg)?;
            for (managed_label, managed_locator) in &managed {
                let theirs = find(session, &managed_locator.template(ObjectClass::PRIVATE_KEY))?;
                if theirs.contains(&private) {
                    return Err(Error::KeyAlreadyManaged {
                        backend: BackendKind::Pkcs11,
                        label: managed_label.to_string(),
                    }
                    .into());
                }
            }
            let handle = FoundKey::read(session, generation, private);
            let usage = KeyUsage::read(session, private)?;
            let uses = self.judge(label, usage, Origin::Adopted, false)?;
            if handle.always_authenticate && !options.always_authenticate {
                return Err(Error::AdoptNotAllowed {
                    backend: BackendKind::Pkcs11,
                    refusal: AdoptRefusal::PerUseAuth,
                }
                .into());
            }
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
            let jwk = public_jwk(session, private, &locator, kind)?;
            Ok((kind, jwk, locator, handle, uses))
        })?;
        let alg = kind.alg_for(alg)?;
        self.file_key(
            label,
            alg,
            Origin::Adopted,
            locator,
            jwk,
            &identity,
            Some(handle),
            Some(&uses),
        )
    }

    fn delete(&self, label: &KeyLabel) -> Result<(), Error> {
        let record: KeyRecord = self.records.load(label)?;
        if record.origin == Origin::Adopted {
            // The key was on the token before us and stays there.
            return self.records.remove(label);
        }
        let locator = record.locator(&self.records.path(label))?;
        // Move the record aside first, so that a crash in between leaves no record of a key
        // that is gone; put it back if the token refuses.
        let aside = self.records.set_aside(label)?;
        if let Err(e) = self.destroy(&locator) {
            aside.restore();
            return Err(e);
        }
        aside.remove()
    }
}
