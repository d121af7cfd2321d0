//! Key objects on the token as they are: finding a key's objects, reading its kind and public
//! key back, and remembering the private key's handle.

use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use pkcs8::der::Decode;
use pkcs8::der::asn1::OctetStringRef;

use super::error::Fail;
use super::templates::{self, ED25519_PARAMS};
use crate::{Error, Jwk, KeyKind, KeyMeta};

/// The older spelling of the Ed25519 `CKA_EC_PARAMS` some tokens use: PrintableString
/// "edwards25519".
const ED25519_PRINTABLE: &[u8] = b"\x13\x0cedwards25519";

fn invalid(reason: impl Into<String>) -> Error {
    Error::InvalidKey {
        reason: reason.into(),
    }
}

/// How to find a key's objects: by `CKA_ID`, and by `CKA_LABEL` when the ID alone does not
/// tell keys apart (adopted keys named by `object=`, or without an ID).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Locator {
    pub id: Vec<u8>,
    pub object: Option<String>,
}

impl Locator {
    pub(crate) fn template(&self, class: ObjectClass) -> Vec<Attribute> {
        let mut t = vec![Attribute::Class(class)];
        if !self.id.is_empty() {
            t.push(Attribute::Id(self.id.clone()));
        }
        if let Some(label) = &self.object {
            t.push(Attribute::Label(label.as_bytes().to_vec()));
        }
        t
    }
}

/// Finds the objects matching `template`.
pub(crate) fn find(session: &Session, template: &[Attribute]) -> Result<Vec<ObjectHandle>, Fail> {
    Ok(session.find_objects(template)?)
}

/// The curve or key family of a token key, from `CKA_KEY_TYPE` and `CKA_EC_PARAMS`.
pub(crate) fn key_kind(session: &Session, key: ObjectHandle) -> Result<KeyKind, Fail> {
    let attrs = session.get_attributes(key, &[AttributeType::KeyType, AttributeType::EcParams])?;
    let mut key_type = None;
    let mut params = None;
    for a in attrs {
        match a {
            Attribute::KeyType(t) => key_type = Some(t),
            Attribute::EcParams(p) => params = Some(p),
            _ => {}
        }
    }
    let key_type = key_type.ok_or_else(|| invalid("the token does not report CKA_KEY_TYPE"))?;
    let params = params.unwrap_or_default();
    // The older spelling of the Ed25519 parameters names the same curve.
    let params = match params.as_slice() {
        ED25519_PRINTABLE if key_type == KeyType::EC_EDWARDS => ED25519_PARAMS,
        p => p,
    };
    // The inverse of `templates::key_type`, the one table of what each kind is on a token.
    let kind = KeyKind::ALL
        .into_iter()
        .find(|&kind| match templates::key_type(kind) {
            (t, None) => t == key_type,
            (t, Some(p)) => t == key_type && p == params,
        });
    kind.ok_or_else(|| {
        if key_type == KeyType::EC {
            invalid("EC key on an unsupported curve (P-256 and P-384 are)")
        } else if key_type == KeyType::EC_EDWARDS {
            invalid("Edwards key on a curve other than Ed25519")
        } else {
            invalid(format!("unsupported key type {key_type}"))
        }
        .into()
    })
}

/// The point inside `CKA_EC_POINT`: PKCS#11 wants a DER OCTET STRING around it, some tokens
/// return the bare point. `len` is the point's length (65 or 97 uncompressed, 32 Ed25519).
pub(crate) fn unwrap_ec_point(value: &[u8], len: usize) -> Result<Vec<u8>, Error> {
    let wrapped = <&OctetStringRef>::from_der(value)
        .ok()
        .map(|o| o.as_bytes())
        .filter(|p| p.len() == len);
    let point = match wrapped {
        Some(p) => p,
        None if value.len() == len => value,
        None => {
            return Err(invalid(format!(
                "CKA_EC_POINT of {} bytes is neither a {len}-byte point nor one in a DER \
                 OCTET STRING",
                value.len()
            )));
        }
    };
    if len != 32 && point[0] != 4 {
        return Err(invalid("CKA_EC_POINT is not an uncompressed point"));
    }
    Ok(point.to_vec())
}

/// The key's public JWK, read from the token: for RSA the modulus and exponent (which private
/// key objects carry too), for EC and Ed25519 `CKA_EC_POINT` of the public key object with the
/// same locator, or of the private key where the token exposes it.
pub(crate) fn public_jwk(
    session: &Session,
    private: ObjectHandle,
    locator: &Locator,
    kind: KeyKind,
) -> Result<Jwk, Fail> {
    let publics = find(session, &locator.template(ObjectClass::PUBLIC_KEY))?;
    let mut candidates = vec![private];
    candidates.extend(publics.first().copied());
    // The public object first: it is where the standard puts CKA_EC_POINT.
    candidates.reverse();
    match kind {
        KeyKind::Rsa => {
            for object in candidates {
                let attrs = session.get_attributes(
                    object,
                    &[AttributeType::Modulus, AttributeType::PublicExponent],
                )?;
                let (mut n, mut e) = (None, None);
                for a in attrs {
                    match a {
                        Attribute::Modulus(v) if !v.is_empty() => n = Some(v),
                        Attribute::PublicExponent(v) if !v.is_empty() => e = Some(v),
                        _ => {}
                    }
                }
                if let (Some(n), Some(e)) = (n, e) {
                    return Ok(Jwk::from_rsa(&n, &e));
                }
            }
            Err(
                invalid("the token shows neither the RSA key's modulus nor its public key object")
                    .into(),
            )
        }
        KeyKind::P256 | KeyKind::P384 | KeyKind::Ed25519 => {
            let len = kind.point_len().expect("EC and Edwards keys have a point");
            for object in candidates {
                let attrs = session.get_attributes(object, &[AttributeType::EcPoint])?;
                if let Some(Attribute::EcPoint(value)) = attrs.into_iter().next() {
                    let point = unwrap_ec_point(&value, len)?;
                    return Ok(if kind == KeyKind::Ed25519 {
                        Jwk::from_ed25519(point.as_slice().try_into().expect("32 bytes"))
                    } else {
                        Jwk::from_ec_point(&point).map_err(Error::from)?
                    });
                }
            }
            Err(invalid(
                "no public key object with the same CKA_ID, and the private key does not \
                 expose CKA_EC_POINT",
            )
            .into())
        }
    }
}

/// A private key found on the token: its handle in one token generation, and whether the token
/// wants the PIN for each use of it (`CKA_ALWAYS_AUTHENTICATE`: YubiKey PIV slot 9c, or any
/// key made with PIN policy "always").
#[derive(Clone, Copy, Debug)]
pub(crate) struct FoundKey {
    pub generation: u64,
    pub handle: ObjectHandle,
    pub always_authenticate: bool,
}

impl FoundKey {
    pub(crate) fn read(session: &Session, generation: u64, handle: ObjectHandle) -> FoundKey {
        let always_authenticate =
            match session.get_attributes(handle, &[AttributeType::AlwaysAuthenticate]) {
                Ok(attributes) => attributes
                    .iter()
                    .any(|a| matches!(a, Attribute::AlwaysAuthenticate(true))),
                // Some tokens fail the read instead of answering CKR_ATTRIBUTE_TYPE_INVALID:
                // an ordinary key then, and one that does want the PIN says so at C_Sign.
                Err(e) => {
                    tracing::debug!(error = %e, "reading CKA_ALWAYS_AUTHENTICATE failed");
                    false
                }
            };
        FoundKey {
            generation,
            handle,
            always_authenticate,
        }
    }

    /// Says so when the key wants the PIN for every signature: the agent gives it each time,
    /// which costs a PIN check per proof (and, on a YubiKey, no touch unless its touch policy
    /// asks for one).
    pub(crate) fn note(&self, meta: &KeyMeta) {
        if self.always_authenticate {
            tracing::info!(label = %meta.info().label, "PKCS#11 key wants the PIN for each signature \
                (CKA_ALWAYS_AUTHENTICATE); the agent logs in for every proof it signs with it");
        }
    }
}

/// What a private key on the token is allowed, as the token reports it (`None`: the token
/// did not say). Tokens do not always make what a template asks for, so every key is judged
/// by this, read back, not by its template.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct KeyUsage {
    pub sensitive: Option<bool>,
    pub extractable: Option<bool>,
    pub always_sensitive: Option<bool>,
    pub never_extractable: Option<bool>,
    pub sign: Option<bool>,
    pub decrypt: Option<bool>,
    pub unwrap: Option<bool>,
    pub derive: Option<bool>,
    pub sign_recover: Option<bool>,
}

/// How a key that leaves the token, or may, is described; `None`: it stays on the token.
pub(crate) type Exposure = Option<String>;

impl KeyUsage {
    /// Reads the flags; attributes the token does not have stay `None`.
    pub(crate) fn read(session: &Session, key: ObjectHandle) -> Result<KeyUsage, Fail> {
        let mut usage = KeyUsage::default();
        // cryptoki leaves out what the token answers CKR_ATTRIBUTE_TYPE_INVALID to.
        for a in session.get_attributes(
            key,
            &[
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::AlwaysSensitive,
                AttributeType::NeverExtractable,
                AttributeType::Sign,
                AttributeType::Decrypt,
                AttributeType::Unwrap,
                AttributeType::Derive,
                AttributeType::SignRecover,
            ],
        )? {
            match a {
                Attribute::Sensitive(v) => usage.sensitive = Some(v),
                Attribute::Extractable(v) => usage.extractable = Some(v),
                Attribute::AlwaysSensitive(v) => usage.always_sensitive = Some(v),
                Attribute::NeverExtractable(v) => usage.never_extractable = Some(v),
                Attribute::Sign(v) => usage.sign = Some(v),
                Attribute::Decrypt(v) => usage.decrypt = Some(v),
                Attribute::Unwrap(v) => usage.unwrap = Some(v),
                Attribute::Derive(v) => usage.derive = Some(v),
                Attribute::SignRecover(v) => usage.sign_recover = Some(v),
                _ => {}
            }
        }
        Ok(usage)
    }

    /// Why the private key is not a secret of the token's, if it is not: not sensitive,
    /// extractable, or (for a key the token `generated`) once either, or one that cannot
    /// sign. A token that does not say is taken at its worst for the first two.
    pub(crate) fn exposure(&self, generated: bool) -> Exposure {
        let mut problems = Vec::new();
        if self.sensitive != Some(true) {
            problems.push("not sensitive (CKA_SENSITIVE)");
        }
        if self.extractable != Some(false) {
            problems.push("extractable (CKA_EXTRACTABLE)");
        }
        // An imported key was outside by definition; one the token generated never was.
        if generated && self.always_sensitive == Some(false) {
            problems.push("not always sensitive (CKA_ALWAYS_SENSITIVE)");
        }
        if generated && self.never_extractable == Some(false) {
            problems.push("once extractable (CKA_NEVER_EXTRACTABLE)");
        }
        if self.sign == Some(false) {
            problems.push("not for signing (CKA_SIGN)");
        }
        (!problems.is_empty()).then(|| problems.join(", "))
    }

    /// What else than signing the private key may do: `decrypt`, `unwrap`, `derive`,
    /// `sign_recover` (the names on the wire); empty for a sign-only key.
    pub(crate) fn other_uses(&self) -> Vec<&'static str> {
        [
            (self.decrypt, "decrypt"),
            (self.unwrap, "unwrap"),
            (self.derive, "derive"),
            (self.sign_recover, "sign_recover"),
        ]
        .into_iter()
        .filter(|(allowed, _)| *allowed == Some(true))
        .map(|(_, name)| name)
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pkcs11::templates::wrap_ec_point;

    #[test]
    fn usage_is_judged_by_what_the_token_says() {
        let safe = KeyUsage {
            sensitive: Some(true),
            extractable: Some(false),
            always_sensitive: Some(true),
            never_extractable: Some(true),
            sign: Some(true),
            decrypt: Some(false),
            ..KeyUsage::default()
        };
        assert_eq!(safe.exposure(true), None);
        assert!(safe.other_uses().is_empty());
        let silent = KeyUsage::default();
        assert_eq!(
            silent.exposure(false).unwrap(),
            "not sensitive (CKA_SENSITIVE), extractable (CKA_EXTRACTABLE)"
        );
        let imported = KeyUsage {
            always_sensitive: Some(false),
            never_extractable: Some(false),
            ..safe
        };
        assert_eq!(imported.exposure(false), None);
        assert!(
            imported
                .exposure(true)
                .unwrap()
                .contains("CKA_NEVER_EXTRACTABLE")
        );
        let decrypts = KeyUsage {
            decrypt: Some(true),
            derive: Some(true),
            ..safe
        };
        assert_eq!(decrypts.exposure(true), None);
        assert_eq!(decrypts.other_uses(), ["decrypt", "derive"]);
    }

    #[test]
    fn ec_point_wrapped_or_raw() {
        let mut point = vec![4u8];
        point.extend([0u8; 64]);
        point[1] = 0; // leading zeros in x stay
        assert_eq!(unwrap_ec_point(&wrap_ec_point(&point), 65).unwrap(), point);
        assert_eq!(unwrap_ec_point(&point, 65).unwrap(), point);
        assert!(unwrap_ec_point(&point[..64], 65).is_err());
        let mut compressed = point.clone();
        compressed[0] = 2;
        assert!(unwrap_ec_point(&compressed, 65).is_err());
        let ed = [7u8; 32];
        assert_eq!(unwrap_ec_point(&wrap_ec_point(&ed), 32).unwrap(), ed);
        assert_eq!(unwrap_ec_point(&ed, 32).unwrap(), ed);
    }
}
