//! The one mapping between key kinds (key type and curve) and signature algorithms, used by
//! every backend: which algorithm a key signs with, which key an algorithm needs, and the sizes
//! that follow from the curve.

use aws_lc_rs::signature::{self, EcdsaSigningAlgorithm};

use crate::{Algorithm, Error};

/// What kind of key this is: the key type and, for elliptic curves, the curve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// ECDSA on P-256.
    P256,
    /// ECDSA on P-384.
    P384,
    /// RSA.
    Rsa,
    /// Ed25519.
    Ed25519,
}

impl KeyKind {
    /// Every kind of key the backends know.
    pub const ALL: [KeyKind; 4] = [KeyKind::P256, KeyKind::P384, KeyKind::Ed25519, KeyKind::Rsa];

    /// The kind of key that makes `alg` signatures.
    pub fn for_alg(alg: Algorithm) -> KeyKind {
        match alg {
            Algorithm::ES256 => KeyKind::P256,
            Algorithm::ES384 => KeyKind::P384,
            Algorithm::EdDSA => KeyKind::Ed25519,
            Algorithm::RS256 | Algorithm::PS256 => KeyKind::Rsa,
        }
    }

    /// The algorithm a key of this kind signs with unless told otherwise.
    pub fn natural_alg(self) -> Algorithm {
        match self {
            KeyKind::P256 => Algorithm::ES256,
            KeyKind::P384 => Algorithm::ES384,
            KeyKind::Ed25519 => Algorithm::EdDSA,
            KeyKind::Rsa => Algorithm::RS256,
        }
    }

    /// The algorithm a key of this kind signs with: the natural one, or `wanted` when the key
    /// can make it (an RSA key makes RS256 or PS256).
    pub fn alg_for(self, wanted: Option<Algorithm>) -> Result<Algorithm, Error> {
        let natural = self.natural_alg();
        let alg = wanted.unwrap_or(natural);
        if alg == natural || (self == KeyKind::Rsa && alg == Algorithm::PS256) {
            Ok(alg)
        } else {
            Err(Error::InvalidKey {
                reason: format!("a {self:?} key cannot make {alg} signatures"),
            })
        }
    }

    /// The length of a field element or scalar in bytes for EC keys (a signature's `r` and
    /// `s` each, a private scalar), the key length for Ed25519, `None` for RSA.
    #[cfg_attr(not(feature = "pkcs11"), allow(dead_code))] // Token keys only, so far.
    pub(crate) fn field_len(self) -> Option<usize> {
        match self {
            KeyKind::P256 | KeyKind::Ed25519 => Some(32),
            KeyKind::P384 => Some(48),
            KeyKind::Rsa => None,
        }
    }

    /// The length of the public point: uncompressed SEC1 for ECDSA, 32 bytes for Ed25519.
    #[cfg_attr(not(feature = "pkcs11"), allow(dead_code))] // Token keys only, so far.
    pub(crate) fn point_len(self) -> Option<usize> {
        match self {
            KeyKind::P256 => Some(65),
            KeyKind::P384 => Some(97),
            KeyKind::Ed25519 => Some(32),
            KeyKind::Rsa => None,
        }
    }

    /// aws-lc-rs' fixed-length (`r||s`) ECDSA signing algorithm for this curve.
    pub(crate) fn ecdsa_signing(self) -> Option<&'static EcdsaSigningAlgorithm> {
        match self {
            KeyKind::P256 => Some(&signature::ECDSA_P256_SHA256_FIXED_SIGNING),
            KeyKind::P384 => Some(&signature::ECDSA_P384_SHA384_FIXED_SIGNING),
            KeyKind::Rsa | KeyKind::Ed25519 => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_algorithm_round_trips_through_its_kind() {
        for alg in Algorithm::ALL {
            let kind = KeyKind::for_alg(alg);
            assert_eq!(kind.alg_for(Some(alg)).unwrap(), alg);
        }
        assert_eq!(KeyKind::Rsa.alg_for(None).unwrap(), Algorithm::RS256);
        assert!(KeyKind::P256.alg_for(Some(Algorithm::ES384)).is_err());
        assert!(KeyKind::Ed25519.alg_for(Some(Algorithm::PS256)).is_err());
    }
}
