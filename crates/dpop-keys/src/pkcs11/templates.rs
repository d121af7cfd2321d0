//! Templates for the objects we put on a token: generated key pairs and imported PEM keys,
//! always a token object behind the PIN that never leaves it (`CKA_SENSITIVE`, not
//! `CKA_EXTRACTABLE`) and sign-only: the private key cannot decrypt, unwrap, derive or sign
//! with recovery, and is limited to its one signing mechanism (`CKA_ALLOWED_MECHANISMS`, so
//! raw `CKM_RSA_X_509` signing of arbitrary bytes is refused); the public key cannot encrypt,
//! wrap or verify with recovery. Left to the token's defaults, SoftHSM2 lets an agent-made RSA
//! key decrypt, which another program with the PIN could use as a decryption oracle. Private
//! key material in a template is zeroized on drop.
//!
//! Tokens differ in what a template may say ([`Template`]): tpm2-pkcs11 derives attributes
//! from the TPM object and answers `CKR_GENERAL_ERROR` to a public `CKA_ENCRYPT false` (the
//! TPM has one bit for sign and encrypt), older tokens do not know `CKA_ALLOWED_MECHANISMS`.
//! So the caller tries the templates in [`Template::ORDER`] and judges what the token made
//! (`objects::KeyUsage`), not what it asked for.

use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, KeyType, ObjectClass};
use pkcs8::der::asn1::{OctetStringRef, UintRef};
use pkcs8::der::{Decode, Encode, Reader, SliceReader};
use zeroize::{Zeroize, Zeroizing};

use crate::pem::{DerFormat, PrivateKeyPem};
use crate::{Algorithm, Error, KeyKind};

/// `CKA_EC_PARAMS` for P-256: the DER OID prime256v1 (1.2.840.10045.3.1.7).
pub(crate) const P256_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// `CKA_EC_PARAMS` for P-384: the DER OID secp384r1 (1.3.132.0.34).
pub(crate) const P384_PARAMS: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
/// `CKA_EC_PARAMS` for Ed25519: the DER OID id-Ed25519 (1.3.101.112), as PKCS#11 3.0 and
/// SoftHSM2 use it.
pub(crate) const ED25519_PARAMS: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];

/// RSA modulus size for generated keys.
pub(crate) const RSA_BITS: cryptoki_sys::CK_ULONG = 2048;

/// `CKA_KEY_TYPE` and `CKA_EC_PARAMS` of a key kind (no parameters for RSA).
pub(crate) fn key_type(kind: KeyKind) -> (KeyType, Option<&'static [u8]>) {
    match kind {
        KeyKind::P256 => (KeyType::EC, Some(P256_PARAMS)),
        KeyKind::P384 => (KeyType::EC, Some(P384_PARAMS)),
        KeyKind::Ed25519 => (KeyType::EC_EDWARDS, Some(ED25519_PARAMS)),
        KeyKind::Rsa => (KeyType::RSA, None),
    }
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::InvalidKey {
        reason: reason.into(),
    }
}

pub(crate) fn wrap_ec_point(point: &[u8]) -> Vec<u8> {
    OctetStringRef::new(point)
        .and_then(|o| o.to_der())
        .expect("a point is a valid OCTET STRING")
}

/// How much of the sign-only template a token is asked to take, strictest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Template {
    /// Every flag on both halves, and `CKA_ALLOWED_MECHANISMS`.
    Strict,
    /// The private half as [`Strict`](Self::Strict); the public half only a token object
    /// (the agent verifies nothing on the token). tpm2-pkcs11 derives the public flags from
    /// the TPM object, where sign and encrypt are one bit, and decrypt and verify another: a
    /// sign-only key there has `CKA_ENCRYPT` true and `CKA_VERIFY` false, and a template that
    /// says otherwise is refused.
    LoosePublic,
    /// As [`LoosePublic`](Self::LoosePublic) without `CKA_ALLOWED_MECHANISMS` (PKCS#11 2.40;
    /// older tokens refuse it).
    NoMechanismLimit,
    /// Only what makes the key a secret of the token's (token object, private, sensitive, not
    /// extractable, sign); the token chooses the rest, and the caller judges what it chose.
    Minimal,
}

impl Template {
    /// The order to try them in.
    pub(crate) const ORDER: [Template; 4] = [
        Template::Strict,
        Template::LoosePublic,
        Template::NoMechanismLimit,
        Template::Minimal,
    ];
}

/// Key-pair generation templates: (mechanism, public template, private template), without
/// `CKA_ID` and `CKA_LABEL`, which the caller adds. `signs_with` is the one mechanism the
/// private key will be allowed.
pub(crate) fn generation_templates(
    alg: Algorithm,
    signs_with: MechanismType,
    template: Template,
) -> (Mechanism<'static>, Vec<Attribute>, Vec<Attribute>) {
    let kind = KeyKind::for_alg(alg);
    let mut public = public_flags(template);
    let mechanism = match kind {
        KeyKind::Rsa => {
            public.push(Attribute::ModulusBits(RSA_BITS.into()));
            public.push(Attribute::PublicExponent(vec![1, 0, 1]));
            Mechanism::RsaPkcsKeyPairGen
        }
        KeyKind::Ed25519 => Mechanism::EccEdwardsKeyPairGen,
        KeyKind::P256 | KeyKind::P384 => Mechanism::EccKeyPairGen,
    };
    if let (_, Some(params)) = key_type(kind) {
        public.push(Attribute::EcParams(params.to_vec()));
    }
    (mechanism, public, private_flags(signs_with, template))
}

/// What every public key we make is: a token object; (strictly) one anyone may read, for
/// verifying only, which cannot encrypt, wrap or verify with recovery.
fn public_flags(template: Template) -> Vec<Attribute> {
    let mut flags = vec![Attribute::Token(true)];
    if template == Template::Strict {
        flags.extend([
            Attribute::Verify(true),
            Attribute::Private(false),
            Attribute::Encrypt(false),
            Attribute::Wrap(false),
            Attribute::VerifyRecover(false),
        ]);
    }
    flags
}

/// What every private key we make is: a token object, behind the PIN, never leaving, and
/// (unless the template is minimal) good for one thing only: `signs_with` signatures.
fn private_flags(signs_with: MechanismType, template: Template) -> Vec<Attribute> {
    let mut flags = vec![
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
    ];
    if template != Template::Minimal {
        flags.extend([
            Attribute::Decrypt(false),
            Attribute::Unwrap(false),
            Attribute::Derive(false),
            Attribute::SignRecover(false),
        ]);
    }
    if matches!(template, Template::Strict | Template::LoosePublic) {
        flags.push(allowed_mechanisms(signs_with));
    }
    flags
}

/// `CKA_ALLOWED_MECHANISMS`: the one mechanism the private key signs with.
fn allowed_mechanisms(signs_with: MechanismType) -> Attribute {
    Attribute::AllowedMechanisms(vec![signs_with])
}

/// A template holding private key material; zeroized when dropped.
pub(crate) struct SecretTemplate(pub Vec<Attribute>);

impl Drop for SecretTemplate {
    fn drop(&mut self) {
        for a in &mut self.0 {
            match a {
                Attribute::Value(v)
                | Attribute::PrivateExponent(v)
                | Attribute::Prime1(v)
                | Attribute::Prime2(v)
                | Attribute::Exponent1(v)
                | Attribute::Exponent2(v)
                | Attribute::Coefficient(v) => v.zeroize(),
                _ => {}
            }
        }
    }
}

/// A PEM key turned into token object templates (without `CKA_ID` / `CKA_LABEL`).
pub(crate) struct ImportTemplates {
    pub private: SecretTemplate,
    pub public: Vec<Attribute>,
}

fn left_pad(bytes: &[u8], len: usize) -> Result<Zeroizing<Vec<u8>>, Error> {
    let trimmed = &bytes[bytes.iter().take_while(|&&b| b == 0).count()..];
    if trimmed.len() > len {
        return Err(invalid("EC private scalar is longer than the curve order"));
    }
    let mut out = Zeroizing::new(vec![0u8; len]);
    out[len - trimmed.len()..].copy_from_slice(trimmed);
    Ok(out)
}

/// The SEC1 `ECPrivateKey` inside a PEM key (directly, or inside PKCS#8).
fn sec1_scalar(pem: &PrivateKeyPem, len: usize) -> Result<Zeroizing<Vec<u8>>, Error> {
    let from_sec1 = |der: &[u8]| -> Result<Zeroizing<Vec<u8>>, Error> {
        let key = sec1::EcPrivateKey::from_der(der)
            .map_err(|e| invalid(format!("bad SEC1 EC key: {e}")))?;
        left_pad(key.private_key, len)
    };
    match pem.format {
        DerFormat::Sec1 => from_sec1(&pem.der),
        DerFormat::Pkcs8 => {
            let info = pkcs8::PrivateKeyInfoRef::from_der(&pem.der)
                .map_err(|e| invalid(format!("bad PKCS#8 structure: {e}")))?;
            from_sec1(info.private_key.as_bytes())
        }
        DerFormat::Pkcs1 => Err(invalid("a PKCS#1 block holds an RSA key, not an EC key")),
    }
}

/// The eight integers of a PKCS#1 `RSAPrivateKey` (version 0, two primes).
fn rsa_components(der: &[u8]) -> Result<[Zeroizing<Vec<u8>>; 8], Error> {
    let parse = || -> Result<Vec<Zeroizing<Vec<u8>>>, pkcs8::der::Error> {
        let mut reader = SliceReader::new(der)?;
        let ints = reader.sequence(|seq| -> Result<_, pkcs8::der::Error> {
            let mut ints = Vec::with_capacity(9);
            for _ in 0..9 {
                ints.push(Zeroizing::new(UintRef::decode(seq)?.as_bytes().to_vec()));
            }
            if !seq.is_finished() {
                // otherPrimeInfos: multi-prime keys.
                return Err(pkcs8::der::Error::from(pkcs8::der::ErrorKind::Length {
                    tag: pkcs8::der::Tag::Sequence,
                }));
            }
            Ok(ints)
        })?;
        reader.finish()?;
        Ok(ints)
    };
    let mut ints = parse().map_err(|_| {
        invalid("bad PKCS#1 RSAPrivateKey (two-prime keys of version 0 are supported)")
    })?;
    if ints[0].as_slice() != [0u8] && !ints[0].is_empty() {
        return Err(invalid("multi-prime RSA keys are not supported"));
    }
    // The size was checked when the PEM was parsed (pem::check_rsa_size).
    ints.remove(0);
    ints.try_into().map_err(|_| invalid("RSA key components"))
}

/// Builds token templates from a PEM private key. The public half is derived with aws-lc-rs
/// (which also checks that the key is consistent), never trusted from the file. `signs_with`
/// is the one mechanism the private key will be allowed.
pub(crate) fn import_templates(
    pem: &PrivateKeyPem,
    signs_with: MechanismType,
    template: Template,
) -> Result<ImportTemplates, Error> {
    let mut private = private_flags(signs_with, template);
    private.push(Attribute::Class(ObjectClass::PRIVATE_KEY));
    let mut public = vec![Attribute::Class(ObjectClass::PUBLIC_KEY)];
    public.extend(public_flags(template));
    let rejected = |e: aws_lc_rs::error::KeyRejected| invalid(format!("key rejected: {e}"));
    let (key_type, params) = key_type(pem.kind);
    match pem.kind {
        KeyKind::P256 | KeyKind::P384 => {
            let signing = pem.kind.ecdsa_signing().expect("an ECDSA curve");
            let len = pem.kind.field_len().expect("an EC curve");
            let params = params.expect("EC params");
            let pair = EcdsaKeyPair::from_private_key_der(signing, &pem.der).map_err(rejected)?;
            let scalar = sec1_scalar(pem, len)?;
            private.extend([
                Attribute::KeyType(key_type),
                Attribute::EcParams(params.to_vec()),
                Attribute::Value(scalar.to_vec()),
            ]);
            public.extend([
                Attribute::KeyType(key_type),
                Attribute::EcParams(params.to_vec()),
                Attribute::EcPoint(wrap_ec_point(pair.public_key().as_ref())),
            ]);
        }
        KeyKind::Ed25519 => {
            let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pem.der).map_err(rejected)?;
            let info = pkcs8::PrivateKeyInfoRef::from_der(&pem.der)
                .map_err(|e| invalid(format!("bad PKCS#8 structure: {e}")))?;
            // The PKCS#8 private key is an OCTET STRING holding the 32-byte seed.
            let seed = <&OctetStringRef>::from_der(info.private_key.as_bytes())
                .map_err(|e| invalid(format!("bad Ed25519 private key: {e}")))?;
            if seed.as_bytes().len() != 32 {
                return Err(invalid("Ed25519 seed is not 32 bytes"));
            }
            let params = params.expect("Ed25519 params");
            private.extend([
                Attribute::KeyType(key_type),
                Attribute::EcParams(params.to_vec()),
                Attribute::Value(seed.as_bytes().to_vec()),
            ]);
            public.extend([
                Attribute::KeyType(key_type),
                Attribute::EcParams(params.to_vec()),
                Attribute::EcPoint(wrap_ec_point(pair.public_key().as_ref())),
            ]);
        }
        KeyKind::Rsa => {
            let pkcs1: &[u8] = match pem.format {
                DerFormat::Pkcs1 => &pem.der,
                DerFormat::Pkcs8 => pkcs8::PrivateKeyInfoRef::from_der(&pem.der)
                    .map_err(|e| invalid(format!("bad PKCS#8 structure: {e}")))?
                    .private_key
                    .as_bytes(),
                DerFormat::Sec1 => return Err(invalid("a SEC1 block holds an EC key")),
            };
            let [n, e, d, p, q, dp, dq, qinv] = rsa_components(pkcs1)?;
            // Checks the key (aws-lc-rs validates the CRT parameters).
            match pem.format {
                DerFormat::Pkcs1 => signature::RsaKeyPair::from_der(pkcs1).map(drop),
                _ => signature::RsaKeyPair::from_pkcs8(&pem.der).map(drop),
            }
            .map_err(rejected)?;
            private.extend([
                Attribute::KeyType(key_type),
                Attribute::Modulus(n.to_vec()),
                Attribute::PublicExponent(e.to_vec()),
                Attribute::PrivateExponent(d.to_vec()),
                Attribute::Prime1(p.to_vec()),
                Attribute::Prime2(q.to_vec()),
                Attribute::Exponent1(dp.to_vec()),
                Attribute::Exponent2(dq.to_vec()),
                Attribute::Coefficient(qinv.to_vec()),
            ]);
            public.extend([
                Attribute::KeyType(key_type),
                Attribute::Modulus(n.to_vec()),
                Attribute::PublicExponent(e.to_vec()),
            ]);
        }
    }
    Ok(ImportTemplates {
        private: SecretTemplate(private),
        public,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_loosen_step_by_step_but_always_keep_the_key_secret() {
        let limit = Attribute::AllowedMechanisms(vec![MechanismType::ECDSA]);
        let sign_only = [
            Attribute::Decrypt(false),
            Attribute::Unwrap(false),
            Attribute::Derive(false),
            Attribute::SignRecover(false),
        ];
        let public_strict = [
            Attribute::Verify(true),
            Attribute::Encrypt(false),
            Attribute::Wrap(false),
            Attribute::VerifyRecover(false),
        ];
        for alg in Algorithm::ALL {
            for template in Template::ORDER {
                let (_, public, private) =
                    generation_templates(alg, MechanismType::ECDSA, template);
                for flag in [
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    Attribute::Sign(true),
                ] {
                    assert!(private.contains(&flag), "{alg} {template:?}: {flag:?}");
                }
                assert!(public.contains(&Attribute::Token(true)));
                let strict = template == Template::Strict;
                let limited = matches!(template, Template::Strict | Template::LoosePublic);
                assert_eq!(private.contains(&limit), limited, "{alg} {template:?}");
                for flag in &sign_only {
                    let want = template != Template::Minimal;
                    assert_eq!(private.contains(flag), want, "{alg} {template:?}: {flag:?}");
                }
                for flag in &public_strict {
                    assert_eq!(
                        public.contains(flag),
                        strict,
                        "{alg} {template:?}: {flag:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn params_are_the_der_oids() {
        use pkcs8::ObjectIdentifier;
        let oid = |der: &[u8]| <ObjectIdentifier>::from_der(der).unwrap().to_string();
        assert_eq!(oid(P256_PARAMS), "1.2.840.10045.3.1.7");
        assert_eq!(oid(P384_PARAMS), "1.3.132.0.34");
        assert_eq!(oid(ED25519_PARAMS), "1.3.101.112");
    }
}
