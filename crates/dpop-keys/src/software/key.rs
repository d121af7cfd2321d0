//! One software key pair in aws-lc-rs: made, read from DER, written as PKCS#8, described as a
//! JWK, and signing. Everything that knows aws-lc-rs' key types is here.

use std::sync::Arc;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaEncoding, RsaKeyPair};
use zeroize::Zeroizing;

use super::signer::SoftwareSigner;
use crate::pem::DerFormat;
use crate::{Algorithm, BackendKind, Error, Jwk, KeyKind, KeyLabel, KeyMeta, SignerRef};

enum KeyPairKind {
    Ecdsa(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
    Rsa(RsaKeyPair, &'static dyn RsaEncoding),
}

/// A private key and the algorithm it signs with. Its secret bytes stay inside aws-lc-rs,
/// except as the zeroized PKCS#8 that [`pkcs8`](Self::pkcs8) returns for sealing.
pub(super) struct SoftKey {
    pub(super) alg: Algorithm,
    pair: KeyPairKind,
}

pub(super) fn crypto(what: &'static str) -> impl Fn(aws_lc_rs::error::Unspecified) -> Error {
    move |_| Error::Crypto(what)
}

fn rejected(e: aws_lc_rs::error::KeyRejected) -> Error {
    Error::InvalidKey {
        reason: format!("key rejected: {e}"),
    }
}

impl SoftKey {
    fn rsa_encoding(alg: Algorithm) -> &'static dyn RsaEncoding {
        if alg == Algorithm::PS256 {
            &signature::RSA_PSS_SHA256
        } else {
            &signature::RSA_PKCS1_SHA256
        }
    }

    /// A new key for `alg`.
    pub(super) fn generate(alg: Algorithm) -> Result<SoftKey, Error> {
        let pair = match KeyKind::for_alg(alg) {
            kind @ (KeyKind::P256 | KeyKind::P384) => KeyPairKind::Ecdsa(
                EcdsaKeyPair::generate(kind.ecdsa_signing().expect("an ECDSA curve"))
                    .map_err(crypto("generating an EC key"))?,
            ),
            KeyKind::Ed25519 => KeyPairKind::Ed25519(
                Ed25519KeyPair::generate().map_err(crypto("generating an Ed25519 key"))?,
            ),
            KeyKind::Rsa => KeyPairKind::Rsa(
                RsaKeyPair::generate(KeySize::Rsa2048).map_err(crypto("generating an RSA key"))?,
                Self::rsa_encoding(alg),
            ),
        };
        Ok(SoftKey { alg, pair })
    }

    /// A key from its PKCS#8 DER.
    pub(super) fn from_pkcs8(alg: Algorithm, der: &[u8]) -> Result<SoftKey, Error> {
        Self::from_der(alg, DerFormat::Pkcs8, der)
    }

    /// A key from DER in `format` (an imported PEM's).
    pub(super) fn from_der(
        alg: Algorithm,
        format: DerFormat,
        der: &[u8],
    ) -> Result<SoftKey, Error> {
        let pair = match (KeyKind::for_alg(alg), format) {
            (kind @ (KeyKind::P256 | KeyKind::P384), DerFormat::Pkcs8 | DerFormat::Sec1) => {
                let ec = kind.ecdsa_signing().expect("an ECDSA curve");
                KeyPairKind::Ecdsa(EcdsaKeyPair::from_private_key_der(ec, der).map_err(rejected)?)
            }
            (KeyKind::Ed25519, DerFormat::Pkcs8) => KeyPairKind::Ed25519(
                Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(rejected)?,
            ),
            (KeyKind::Rsa, DerFormat::Pkcs8) => KeyPairKind::Rsa(
                RsaKeyPair::from_pkcs8(der).map_err(rejected)?,
                Self::rsa_encoding(alg),
            ),
            (KeyKind::Rsa, DerFormat::Pkcs1) => KeyPairKind::Rsa(
                RsaKeyPair::from_der(der).map_err(rejected)?,
                Self::rsa_encoding(alg),
            ),
            _ => {
                return Err(Error::InvalidKey {
                    reason: format!("{format:?} encoding does not hold a {alg} key"),
                });
            }
        };
        if let KeyPairKind::Rsa(rsa, _) = &pair
            && rsa.public_modulus_len() < 256
        {
            return Err(Error::InvalidKey {
                reason: "RSA keys must be at least 2048 bits".into(),
            });
        }
        Ok(SoftKey { alg, pair })
    }

    /// The private key as PKCS#8 DER, zeroized when dropped.
    pub(super) fn pkcs8(&self) -> Result<Zeroizing<Vec<u8>>, Error> {
        let der = match &self.pair {
            KeyPairKind::Ecdsa(k) => k
                .to_pkcs8v1()
                .map_err(crypto("encoding the key"))?
                .as_ref()
                .to_vec(),
            KeyPairKind::Ed25519(k) => k
                .to_pkcs8v1()
                .map_err(crypto("encoding the key"))?
                .as_ref()
                .to_vec(),
            KeyPairKind::Rsa(k, _) => AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(k)
                .map_err(crypto("encoding the key"))?
                .as_ref()
                .to_vec(),
        };
        Ok(Zeroizing::new(der))
    }

    /// The public key.
    pub(super) fn jwk(&self) -> Result<Jwk, Error> {
        Ok(match &self.pair {
            KeyPairKind::Ecdsa(k) => Jwk::from_ec_point(k.public_key().as_ref())?,
            KeyPairKind::Ed25519(k) => {
                let public: [u8; 32] = k
                    .public_key()
                    .as_ref()
                    .try_into()
                    .map_err(|_| Error::Crypto("Ed25519 public key is not 32 bytes"))?;
                Jwk::from_ed25519(&public)
            }
            KeyPairKind::Rsa(k, _) => {
                let public = k.public_key();
                Jwk::from_rsa(
                    public.modulus().big_endian_without_leading_zero(),
                    public.exponent().big_endian_without_leading_zero(),
                )
            }
        })
    }

    /// The JWS signature of `message` (`r||s` for ECDSA).
    pub(super) fn sign(&self, rng: &SystemRandom, message: &[u8]) -> Result<Vec<u8>, Error> {
        match &self.pair {
            KeyPairKind::Ecdsa(k) => Ok(k
                .sign(rng, message)
                .map_err(crypto("ECDSA signing"))?
                .as_ref()
                .to_vec()),
            KeyPairKind::Ed25519(k) => Ok(k.sign(message).as_ref().to_vec()),
            KeyPairKind::Rsa(k, encoding) => {
                let mut signature = vec![0; k.public_modulus_len()];
                k.sign(*encoding, rng, message, &mut signature)
                    .map_err(crypto("RSA signing"))?;
                Ok(signature)
            }
        }
    }

    /// The key as the signer of a key labelled `label`.
    pub(super) fn into_signer(self, label: KeyLabel, persistent: bool) -> Result<SignerRef, Error> {
        let meta = KeyMeta::new(
            label,
            self.alg,
            BackendKind::Software,
            self.jwk()?,
            persistent,
            None,
        )?;
        Ok(Arc::new(SoftwareSigner::new(meta, self)))
    }
}
