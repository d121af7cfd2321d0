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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pkcs11::templates::wrap_ec_point;

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
