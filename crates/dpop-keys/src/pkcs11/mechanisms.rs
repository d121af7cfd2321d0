//! Which mechanism signs for an algorithm on a given token, and what it is given to sign.
//!
//! The combined mechanism (`CKM_ECDSA_SHA256`, `CKM_SHA256_RSA_PKCS`, ...) is used when the
//! token offers it: the token hashes the message. Many tokens offer only the raw mechanisms
//! (`CKM_ECDSA`, `CKM_RSA_PKCS`, `CKM_RSA_PKCS_PSS`); then the agent hashes and the token signs
//! the hash, as OpenSSH's PKCS#11 code does:
//! - RS256: `CKM_RSA_PKCS` over `DigestInfo(SHA-256) || H`, the encoding RSASSA-PKCS1-v1_5
//!   signs (RFC 8017 section 9.2); the token adds the padding;
//! - PS256: `CKM_RSA_PKCS_PSS` over `H` with the same parameters as the combined mechanism
//!   (SHA-256, MGF1-SHA-256, 32-byte salt);
//! - ES256 / ES384: `CKM_ECDSA` over `H` (SHA-256 / SHA-384); the signature is `r||s` either way.
//!
//! Both give the same signatures a verifier sees. The choice is made per key, once: for new keys
//! from the token's mechanism list (and written into the key's `CKA_ALLOWED_MECHANISMS`), for
//! keys found on the token also from what the key itself allows (see [`SignWith::for_key`]).

use std::borrow::Cow;

use aws_lc_rs::digest;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};

use crate::Algorithm;

/// `DigestInfo` for SHA-256 up to the hash itself: `SEQUENCE { SEQUENCE { OID sha256, NULL },
/// OCTET STRING (32 bytes) }`, as RFC 8017 section 9.2, note 1 lists it.
pub(crate) const SHA256_DIGEST_INFO_PREFIX: [u8; 19] = [
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00, 0x04, 0x20,
];

/// The PSS parameters of PS256 (RFC 7518 section 3.5): SHA-256, MGF1 with SHA-256, a salt as
/// long as the hash.
fn ps256_params() -> PkcsPssParams {
    PkcsPssParams {
        hash_alg: MechanismType::SHA256,
        mgf: PkcsMgfType::MGF1_SHA256,
        s_len: 32.into(),
    }
}

/// The mechanisms a token needs to generate keys for `alg` and to sign with them (any one of
/// the second, in order of preference).
pub(crate) fn required_mechanisms(alg: Algorithm) -> (MechanismType, &'static [MechanismType]) {
    match alg {
        Algorithm::ES256 => (
            MechanismType::ECC_KEY_PAIR_GEN,
            &[MechanismType::ECDSA_SHA256, MechanismType::ECDSA],
        ),
        Algorithm::ES384 => (
            MechanismType::ECC_KEY_PAIR_GEN,
            &[MechanismType::ECDSA_SHA384, MechanismType::ECDSA],
        ),
        Algorithm::RS256 => (
            MechanismType::RSA_PKCS_KEY_PAIR_GEN,
            &[MechanismType::SHA256_RSA_PKCS, MechanismType::RSA_PKCS],
        ),
        Algorithm::PS256 => (
            MechanismType::RSA_PKCS_KEY_PAIR_GEN,
            &[
                MechanismType::SHA256_RSA_PKCS_PSS,
                MechanismType::RSA_PKCS_PSS,
            ],
        ),
        Algorithm::EdDSA => (
            MechanismType::ECC_EDWARDS_KEY_PAIR_GEN,
            &[MechanismType::EDDSA],
        ),
    }
}

/// How a key signs: with the combined mechanism of its algorithm (the token hashes) or with
/// the raw one (the agent hashes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SignWith {
    alg: Algorithm,
    /// The agent hashes; the token signs the hash (or, for RS256, the DigestInfo).
    raw: bool,
}

impl SignWith {
    /// The ways `alg` can sign, the combined mechanism first.
    fn candidates(alg: Algorithm) -> impl Iterator<Item = SignWith> {
        // Ed25519 signs the message itself (PureEdDSA): there is no raw form.
        let raw = if alg == Algorithm::EdDSA {
            &[false][..]
        } else {
            &[false, true][..]
        };
        raw.iter().map(move |&raw| SignWith { alg, raw })
    }

    /// The mechanism for `alg` among those the token lists: the combined one when offered, the
    /// raw one otherwise; `None` when it has neither.
    pub(crate) fn choose(alg: Algorithm, mechanisms: &[MechanismType]) -> Option<SignWith> {
        SignWith::candidates(alg).find(|w| mechanisms.contains(&w.mechanism_type()))
    }

    /// The mechanism for a key found on the token: as [`Self::choose`], among the mechanisms
    /// the key's `CKA_ALLOWED_MECHANISMS` names when it names any (a key made elsewhere, or
    /// when the token offered other mechanisms, may allow only the other form).
    pub(crate) fn for_key(
        alg: Algorithm,
        mechanisms: &[MechanismType],
        allowed: &[MechanismType],
    ) -> Option<SignWith> {
        if allowed.is_empty() {
            return SignWith::choose(alg, mechanisms);
        }
        SignWith::candidates(alg).find(|w| {
            let m = w.mechanism_type();
            mechanisms.contains(&m) && allowed.contains(&m)
        })
    }

    /// The one mechanism this key signs with, for its `CKA_ALLOWED_MECHANISMS`.
    pub(crate) fn mechanism_type(self) -> MechanismType {
        self.mechanism().mechanism_type()
    }

    /// The mechanism passed to `C_SignInit`.
    pub(crate) fn mechanism(self) -> Mechanism<'static> {
        match (self.alg, self.raw) {
            (Algorithm::ES256 | Algorithm::ES384, true) => Mechanism::Ecdsa,
            (Algorithm::ES256, false) => Mechanism::EcdsaSha256,
            (Algorithm::ES384, false) => Mechanism::EcdsaSha384,
            (Algorithm::RS256, true) => Mechanism::RsaPkcs,
            (Algorithm::RS256, false) => Mechanism::Sha256RsaPkcs,
            (Algorithm::PS256, true) => Mechanism::RsaPkcsPss(ps256_params()),
            (Algorithm::PS256, false) => Mechanism::Sha256RsaPkcsPss(ps256_params()),
            (Algorithm::EdDSA, _) => Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
        }
    }

    /// What the token is given to sign: the message itself for a combined mechanism, else its
    /// hash (behind the `DigestInfo` prefix for RS256).
    pub(crate) fn data(self, message: &[u8]) -> Cow<'_, [u8]> {
        if !self.raw {
            return Cow::Borrowed(message);
        }
        let hash = |alg| digest::digest(alg, message);
        Cow::Owned(match self.alg {
            Algorithm::ES384 => hash(&digest::SHA384).as_ref().to_vec(),
            Algorithm::RS256 => [
                &SHA256_DIGEST_INFO_PREFIX[..],
                hash(&digest::SHA256).as_ref(),
            ]
            .concat(),
            _ => hash(&digest::SHA256).as_ref().to_vec(),
        })
    }

    /// For ECDSA, the length of `r` and of `s` in the JWS signature.
    pub(crate) fn ecdsa_half(self) -> Option<usize> {
        match self.alg {
            Algorithm::ES256 => Some(32),
            Algorithm::ES384 => Some(48),
            _ => None,
        }
    }

    /// Room to make for a signature: ECDSA as r||s or, from some tokens, DER (up to 9 bytes
    /// more); RSA up to 4096 bits (a token with a larger key says so and gets a second call).
    pub(crate) fn signature_room(self) -> usize {
        match (self.ecdsa_half(), self.alg) {
            (Some(n), _) => 2 * n + 9,
            (None, Algorithm::EdDSA) => 64,
            (None, _) => 512,
        }
    }
}

#[cfg(test)]
mod tests {
    use pkcs8::der::Encode;
    use pkcs8::der::asn1::{Null, OctetStringRef};
    use pkcs8::spki::AlgorithmIdentifier;

    use super::*;

    /// The constant prefix is the DER of `DigestInfo { sha256, NULL }` with a 32-byte digest,
    /// encoded here independently.
    #[test]
    fn digest_info_prefix_is_the_der_encoding() {
        let hash = [0xabu8; 32];
        let algorithm = AlgorithmIdentifier {
            oid: pkcs8::ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1"),
            parameters: Some(Null),
        };
        let mut body = algorithm.to_der().unwrap();
        body.extend(OctetStringRef::new(&hash).unwrap().to_der().unwrap());
        let mut der = vec![0x30, body.len() as u8];
        der.extend(body);
        let mine = SignWith {
            alg: Algorithm::RS256,
            raw: true,
        };
        assert_eq!(der[..19], SHA256_DIGEST_INFO_PREFIX);
        let data = mine.data(b"message");
        assert_eq!(data[..19], SHA256_DIGEST_INFO_PREFIX);
        assert_eq!(
            data[19..],
            *digest::digest(&digest::SHA256, b"message").as_ref()
        );
    }

    /// PS256 is PSS with SHA-256, MGF1-SHA-256 and a 32-byte salt, raw or combined; the raw
    /// mechanism signs the 32-byte hash.
    #[test]
    fn pss_parameters_are_ps256s() {
        for raw in [false, true] {
            let with = SignWith {
                alg: Algorithm::PS256,
                raw,
            };
            let (Mechanism::RsaPkcsPss(params) | Mechanism::Sha256RsaPkcsPss(params)) =
                with.mechanism()
            else {
                panic!("{with:?}: not a PSS mechanism");
            };
            assert_eq!(params.hash_alg, MechanismType::SHA256);
            assert_eq!(params.mgf, PkcsMgfType::MGF1_SHA256);
            assert_eq!(u64::from(params.s_len), 32);
            let data = with.data(b"m");
            assert_eq!(data.len(), if raw { 32 } else { 1 });
        }
    }

    /// The combined mechanism when the token has it, the raw one otherwise, and what the key
    /// allows wins over the preference.
    #[test]
    fn choice_prefers_combined_and_follows_the_key() {
        use MechanismType as M;
        let all = [M::ECDSA, M::ECDSA_SHA256, M::RSA_PKCS, M::SHA256_RSA_PKCS];
        let raw_only = [M::ECDSA, M::RSA_PKCS, M::RSA_PKCS_PSS];
        let pick = |alg, mechs: &[M]| SignWith::choose(alg, mechs).map(|w| w.mechanism_type());
        assert_eq!(pick(Algorithm::ES256, &all), Some(M::ECDSA_SHA256));
        assert_eq!(pick(Algorithm::RS256, &all), Some(M::SHA256_RSA_PKCS));
        assert_eq!(pick(Algorithm::ES256, &raw_only), Some(M::ECDSA));
        assert_eq!(pick(Algorithm::ES384, &raw_only), Some(M::ECDSA));
        assert_eq!(pick(Algorithm::RS256, &raw_only), Some(M::RSA_PKCS));
        assert_eq!(pick(Algorithm::PS256, &raw_only), Some(M::RSA_PKCS_PSS));
        assert_eq!(pick(Algorithm::PS256, &all), None);
        assert_eq!(pick(Algorithm::EdDSA, &raw_only), None);
        let for_key = |allowed: &[M]| {
            SignWith::for_key(Algorithm::ES256, &all, allowed).map(|w| w.mechanism_type())
        };
        assert_eq!(for_key(&[M::ECDSA]), Some(M::ECDSA));
        assert_eq!(for_key(&[]), Some(M::ECDSA_SHA256));
        assert_eq!(for_key(&[M::ECDSA_SHA384]), None);
        let es384 = SignWith::choose(Algorithm::ES384, &raw_only).unwrap();
        assert_eq!(es384.mechanism_type(), M::ECDSA);
        assert_eq!(es384.data(b"m").len(), 48);
        assert_eq!(es384.ecdsa_half(), Some(48));
    }
}
