//! Key objects on the token: templates for generating and importing, reading the public key
//! back, and the signer.

use std::fmt;
use std::sync::{Arc, Mutex};

use aws_lc_rs::digest;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use pkcs8::der::asn1::{OctetStringRef, UintRef};
use pkcs8::der::{Decode, Encode, Reader, SliceReader};
use zeroize::{Zeroize, Zeroizing};

use super::pool::{Fail, Token, rv};
use crate::pem::{DerFormat, KeyKind, PrivateKeyPem};
use crate::{Algorithm, Error, Jwk, KeyMeta, KeySigner};

/// `CKA_EC_PARAMS` for P-256: the DER OID prime256v1 (1.2.840.10045.3.1.7).
pub(crate) const P256_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// `CKA_EC_PARAMS` for P-384: the DER OID secp384r1 (1.3.132.0.34).
pub(crate) const P384_PARAMS: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
/// `CKA_EC_PARAMS` for Ed25519: the DER OID id-Ed25519 (1.3.101.112), as PKCS#11 3.0 and
/// SoftHSM2 use it.
pub(crate) const ED25519_PARAMS: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
/// The older spelling some tokens use: PrintableString "edwards25519".
const ED25519_PRINTABLE: &[u8] = b"\x13\x0cedwards25519";

/// RSA modulus size for generated keys.
pub(crate) const RSA_BITS: u64 = 2048;

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
    if key_type == KeyType::RSA {
        Ok(KeyKind::Rsa)
    } else if key_type == KeyType::EC {
        match params.as_slice() {
            P256_PARAMS => Ok(KeyKind::P256),
            P384_PARAMS => Ok(KeyKind::P384),
            _ => Err(invalid("EC key on an unsupported curve (P-256 and P-384 are)").into()),
        }
    } else if key_type == KeyType::EC_EDWARDS {
        match params.as_slice() {
            ED25519_PARAMS | ED25519_PRINTABLE => Ok(KeyKind::Ed25519),
            _ => Err(invalid("Edwards key on a curve other than Ed25519").into()),
        }
    } else {
        Err(invalid(format!("unsupported key type {key_type}")).into())
    }
}

/// The algorithm a key of `kind` signs with: the natural one, or `wanted` when it fits.
pub(crate) fn alg_for(kind: KeyKind, wanted: Option<Algorithm>) -> Result<Algorithm, Error> {
    let natural = match kind {
        KeyKind::P256 => Algorithm::ES256,
        KeyKind::P384 => Algorithm::ES384,
        KeyKind::Ed25519 => Algorithm::EdDSA,
        KeyKind::Rsa => Algorithm::RS256,
    };
    let alg = wanted.unwrap_or(natural);
    if alg == natural || (kind == KeyKind::Rsa && alg == Algorithm::PS256) {
        Ok(alg)
    } else {
        Err(invalid(format!(
            "a {kind:?} key cannot make {alg} signatures"
        )))
    }
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

fn wrap_ec_point(point: &[u8]) -> Vec<u8> {
    OctetStringRef::new(point)
        .and_then(|o| o.to_der())
        .expect("a point is a valid OCTET STRING")
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
            let len = match kind {
                KeyKind::P256 => 65,
                KeyKind::P384 => 97,
                _ => 32,
            };
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

/// ECDSA signature from the token -> JWS `r||s`, each `n` bytes. PKCS#11 specifies `r||s`;
/// a few tokens return DER anyway.
pub(crate) fn ecdsa_to_jws(sig: &[u8], n: usize) -> Result<Vec<u8>, Error> {
    if sig.len() == 2 * n {
        return Ok(sig.to_vec());
    }
    let bad = || Error::Pkcs11 {
        function: "C_Sign",
        reason: format!(
            "ECDSA signature of {} bytes is neither r||s nor DER",
            sig.len()
        ),
    };
    let parse = || -> Result<(Vec<u8>, Vec<u8>), pkcs8::der::Error> {
        let mut reader = SliceReader::new(sig)?;
        let (r, s) = reader.sequence(|seq| -> Result<_, pkcs8::der::Error> {
            let r = UintRef::decode(seq)?;
            let s = UintRef::decode(seq)?;
            Ok((r.as_bytes().to_vec(), s.as_bytes().to_vec()))
        })?;
        reader.finish()?;
        Ok((r, s))
    };
    let (r, s) = parse().map_err(|_| bad())?;
    if r.len() > n || s.len() > n {
        return Err(bad());
    }
    let mut out = vec![0u8; 2 * n];
    out[n - r.len()..n].copy_from_slice(&r);
    out[2 * n - s.len()..].copy_from_slice(&s);
    Ok(out)
}

/// Key-pair generation templates: (mechanism, public template, private template), without
/// `CKA_ID` and `CKA_LABEL`, which the caller adds.
pub(crate) fn generation_templates(
    alg: Algorithm,
) -> (Mechanism<'static>, Vec<Attribute>, Vec<Attribute>) {
    let public_common = vec![
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Verify(true),
    ];
    let private = private_flags();
    match alg {
        Algorithm::ES256 | Algorithm::ES384 => {
            let params = if alg == Algorithm::ES256 {
                P256_PARAMS
            } else {
                P384_PARAMS
            };
            let mut public = public_common;
            public.push(Attribute::EcParams(params.to_vec()));
            (Mechanism::EccKeyPairGen, public, private)
        }
        Algorithm::RS256 | Algorithm::PS256 => {
            let mut public = public_common;
            public.push(Attribute::ModulusBits(RSA_BITS.into()));
            public.push(Attribute::PublicExponent(vec![1, 0, 1]));
            (Mechanism::RsaPkcsKeyPairGen, public, private)
        }
        Algorithm::EdDSA => {
            let mut public = public_common;
            public.push(Attribute::EcParams(ED25519_PARAMS.to_vec()));
            (Mechanism::EccEdwardsKeyPairGen, public, private)
        }
    }
}

/// What every private key we make is: a token object, behind the PIN, never leaving.
fn private_flags() -> Vec<Attribute> {
    vec![
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
    ]
}

/// The mechanisms a token needs to generate and sign with `alg`.
pub(crate) fn required_mechanisms(alg: Algorithm) -> (MechanismType, &'static [MechanismType]) {
    match alg {
        Algorithm::ES256 | Algorithm::ES384 => (
            MechanismType::ECC_KEY_PAIR_GEN,
            &[MechanismType::ECDSA, MechanismType::ECDSA_SHA256],
        ),
        Algorithm::RS256 => (
            MechanismType::RSA_PKCS_KEY_PAIR_GEN,
            &[MechanismType::SHA256_RSA_PKCS],
        ),
        Algorithm::PS256 => (
            MechanismType::RSA_PKCS_KEY_PAIR_GEN,
            &[MechanismType::SHA256_RSA_PKCS_PSS],
        ),
        Algorithm::EdDSA => (
            MechanismType::ECC_EDWARDS_KEY_PAIR_GEN,
            &[MechanismType::EDDSA],
        ),
    }
}

/// How a signer asks the token to sign.
#[derive(Clone, Copy, Debug)]
pub(crate) enum SignWith {
    /// CKM_ECDSA over a digest we compute; `n` is the coordinate length.
    EcdsaDigest(&'static digest::Algorithm, usize),
    /// CKM_ECDSA_SHA256 (or _SHA384) when the token lacks raw CKM_ECDSA.
    EcdsaHashing(Algorithm, usize),
    /// CKM_SHA256_RSA_PKCS.
    RsaPkcs,
    /// CKM_SHA256_RSA_PKCS_PSS, SHA-256, MGF1-SHA-256, 32-byte salt.
    RsaPss,
    /// CKM_EDDSA (pure Ed25519).
    Eddsa,
}

impl SignWith {
    /// Picks the mechanism for `alg` from what the token lists; `None` when it has none.
    pub(crate) fn choose(alg: Algorithm, mechanisms: &[MechanismType]) -> Option<SignWith> {
        let has = |m| mechanisms.contains(&m);
        match alg {
            Algorithm::ES256 if has(MechanismType::ECDSA) => {
                Some(SignWith::EcdsaDigest(&digest::SHA256, 32))
            }
            Algorithm::ES256 if has(MechanismType::ECDSA_SHA256) => {
                Some(SignWith::EcdsaHashing(alg, 32))
            }
            Algorithm::ES384 if has(MechanismType::ECDSA) => {
                Some(SignWith::EcdsaDigest(&digest::SHA384, 48))
            }
            Algorithm::ES384 if has(MechanismType::ECDSA_SHA384) => {
                Some(SignWith::EcdsaHashing(alg, 48))
            }
            Algorithm::RS256 if has(MechanismType::SHA256_RSA_PKCS) => Some(SignWith::RsaPkcs),
            Algorithm::PS256 if has(MechanismType::SHA256_RSA_PKCS_PSS) => Some(SignWith::RsaPss),
            Algorithm::EdDSA if has(MechanismType::EDDSA) => Some(SignWith::Eddsa),
            _ => None,
        }
    }

    /// Room to make for a signature: ECDSA as r||s or, from some tokens, DER (up to 9 bytes
    /// more); RSA up to 4096 bits (a token with a larger key says so and gets a second call).
    fn signature_room(self) -> usize {
        match self {
            SignWith::EcdsaDigest(_, n) | SignWith::EcdsaHashing(_, n) => 2 * n + 9,
            SignWith::RsaPkcs | SignWith::RsaPss => 512,
            SignWith::Eddsa => 64,
        }
    }

    fn mechanism(self) -> Mechanism<'static> {
        match self {
            SignWith::EcdsaDigest(..) => Mechanism::Ecdsa,
            SignWith::EcdsaHashing(Algorithm::ES384, _) => Mechanism::EcdsaSha384,
            SignWith::EcdsaHashing(..) => Mechanism::EcdsaSha256,
            SignWith::RsaPkcs => Mechanism::Sha256RsaPkcs,
            SignWith::RsaPss => Mechanism::Sha256RsaPkcsPss(PkcsPssParams {
                hash_alg: MechanismType::SHA256,
                mgf: PkcsMgfType::MGF1_SHA256,
                s_len: 32.into(),
            }),
            SignWith::Eddsa => Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
        }
    }
}

/// A private key found on the token: its handle in one token generation, and whether the token
/// wants the PIN for each use of it (`CKA_ALWAYS_AUTHENTICATE`: YubiKey PIV slot 9c, or any
/// key made with PIN policy "always").
#[derive(Clone, Copy, Debug)]
pub(crate) struct FoundKey {
    generation: u64,
    handle: ObjectHandle,
    always_authenticate: bool,
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
    fn note(&self, meta: &KeyMeta) {
        if self.always_authenticate {
            tracing::info!(label = %meta.info().label, "PKCS#11 key wants the PIN for each signature \
                (CKA_ALWAYS_AUTHENTICATE); the agent logs in for every proof it signs with it");
        }
    }
}

/// A key on the token, ready to sign.
pub struct Pkcs11Signer {
    meta: KeyMeta,
    token: Arc<Token>,
    locator: Locator,
    with: SignWith,
    /// The private key as last found.
    found: Mutex<Option<FoundKey>>,
}

impl fmt::Debug for Pkcs11Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Signer")
            .field("label", &self.meta.info().label)
            .field("alg", &self.meta.info().alg)
            .field("location", &self.meta.info().location)
            .finish_non_exhaustive()
    }
}

impl Pkcs11Signer {
    pub(crate) fn new(
        meta: KeyMeta,
        token: Arc<Token>,
        locator: Locator,
        with: SignWith,
        found: Option<FoundKey>,
    ) -> Pkcs11Signer {
        if let Some(f) = found {
            f.note(&meta);
        }
        Pkcs11Signer {
            meta,
            token,
            locator,
            with,
            found: Mutex::new(found),
        }
    }

    fn find_key(&self, session: &Session, generation: u64) -> Result<FoundKey, Fail> {
        let found = find(session, &self.locator.template(ObjectClass::PRIVATE_KEY))?;
        if found.is_empty() {
            self.token.explain_missing(session, generation)?;
        }
        let [handle] = found[..] else {
            return Err(Error::KeyNotFound {
                label: format!(
                    "{} ({} matching private keys on the token)",
                    self.meta.info().label,
                    found.len()
                ),
            }
            .into());
        };
        let found = FoundKey::read(session, generation, handle);
        found.note(&self.meta);
        *self.found.lock().unwrap_or_else(|p| p.into_inner()) = Some(found);
        Ok(found)
    }

    fn cached_key(&self, generation: u64) -> Option<FoundKey> {
        self.found
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .filter(|f| f.generation == generation)
    }
}

fn handle_invalid(e: &CkError) -> bool {
    matches!(
        rv(e),
        Some(RvError::ObjectHandleInvalid | RvError::KeyHandleInvalid)
    )
}

impl KeySigner for Pkcs11Signer {
    fn meta(&self) -> &KeyMeta {
        &self.meta
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
        let hashed;
        let data: &[u8] = match self.with {
            SignWith::EcdsaDigest(d, _) => {
                hashed = digest::digest(d, message);
                hashed.as_ref()
            }
            _ => message,
        };
        let mechanism = self.with.mechanism();
        let sign = |session: &Session, key: FoundKey| {
            self.token.sign(
                session,
                &mechanism,
                key.handle,
                data,
                self.with.signature_room(),
                key.always_authenticate,
            )
        };
        let signature = self.token.run(|session, generation| {
            let key = match self.cached_key(generation) {
                Some(k) => k,
                None => self.find_key(session, generation)?,
            };
            match sign(session, key) {
                // The object was re-created (or the cache is stale): find it by CKA_ID again.
                Err(Fail::Ck(e)) if handle_invalid(&e) => {
                    sign(session, self.find_key(session, generation)?)
                }
                other => other,
            }
        })?;
        match self.with {
            SignWith::EcdsaDigest(_, n) | SignWith::EcdsaHashing(_, n) => {
                ecdsa_to_jws(&signature, n)
            }
            _ => Ok(signature),
        }
    }

    fn is_blocking(&self) -> bool {
        true
    }
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
    pub kind: KeyKind,
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
    let bits = ints[1].len() * 8;
    if bits < 2048 {
        return Err(invalid("RSA keys must be at least 2048 bits"));
    }
    ints.remove(0);
    ints.try_into().map_err(|_| invalid("RSA key components"))
}

/// Builds token templates from a PEM private key. The public half is derived with aws-lc-rs
/// (which also checks that the key is consistent), never trusted from the file.
pub(crate) fn import_templates(pem: &PrivateKeyPem) -> Result<ImportTemplates, Error> {
    let mut private = private_flags();
    private.push(Attribute::Class(ObjectClass::PRIVATE_KEY));
    let mut public = vec![
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Verify(true),
    ];
    let rejected = |e: aws_lc_rs::error::KeyRejected| invalid(format!("key rejected: {e}"));
    match pem.kind {
        KeyKind::P256 | KeyKind::P384 => {
            let (alg, params, len) = if pem.kind == KeyKind::P256 {
                (&signature::ECDSA_P256_SHA256_FIXED_SIGNING, P256_PARAMS, 32)
            } else {
                (&signature::ECDSA_P384_SHA384_FIXED_SIGNING, P384_PARAMS, 48)
            };
            let pair = EcdsaKeyPair::from_private_key_der(alg, &pem.der).map_err(rejected)?;
            let scalar = sec1_scalar(pem, len)?;
            private.extend([
                Attribute::KeyType(KeyType::EC),
                Attribute::EcParams(params.to_vec()),
                Attribute::Value(scalar.to_vec()),
            ]);
            public.extend([
                Attribute::KeyType(KeyType::EC),
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
            private.extend([
                Attribute::KeyType(KeyType::EC_EDWARDS),
                Attribute::EcParams(ED25519_PARAMS.to_vec()),
                Attribute::Value(seed.as_bytes().to_vec()),
            ]);
            public.extend([
                Attribute::KeyType(KeyType::EC_EDWARDS),
                Attribute::EcParams(ED25519_PARAMS.to_vec()),
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
                Attribute::KeyType(KeyType::RSA),
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
                Attribute::KeyType(KeyType::RSA),
                Attribute::Modulus(n.to_vec()),
                Attribute::PublicExponent(e.to_vec()),
            ]);
        }
    }
    Ok(ImportTemplates {
        kind: pem.kind,
        private: SecretTemplate(private),
        public,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn ecdsa_der_becomes_r_s() {
        // r = 0x00ff.. (needs a leading zero in DER), s = 0x01 (short).
        let r = [0xffu8; 32];
        let mut der = vec![0x30, 0x00, 0x02, 0x21, 0x00];
        der.extend(r);
        der.extend([0x02, 0x01, 0x01]);
        der[1] = (der.len() - 2) as u8;
        let jws = ecdsa_to_jws(&der, 32).unwrap();
        assert_eq!(&jws[..32], &r);
        assert_eq!(&jws[32..63], &[0u8; 31]);
        assert_eq!(jws[63], 1);
        let raw = [9u8; 64];
        assert_eq!(ecdsa_to_jws(&raw, 32).unwrap(), raw);
        assert!(ecdsa_to_jws(&[0x30, 0x01], 32).is_err());
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
