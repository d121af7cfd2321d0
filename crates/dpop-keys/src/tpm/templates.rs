//! The objects the backend makes (the SRK, signing keys) and what it reads back from a
//! public area: the key's algorithm and JWK, and JWS signatures from TPM signatures.

use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::structures::{
    EccPoint, EccScheme, HashScheme, KeyDerivationFunctionScheme, Public, PublicBuilder,
    PublicEccParametersBuilder, PublicKeyRsa, PublicRsaParametersBuilder, RsaExponent, RsaScheme,
    Signature, SignatureScheme, SymmetricDefinitionObject,
};

use super::error::{failed, wrapper};
use crate::{Algorithm, Error, Jwk, KeyKind};

/// The well-known storage root key: ECC P-256, AES-128-CFB, restricted decryption, empty
/// unique (TCG "TPM 2.0 Provisioning Guidance", the SRK template tpm2-tools and the TPM2 key
/// file format use). The same template under the owner hierarchy always gives the same key,
/// so the SRK is made again whenever it is needed and no persistent handle is used.
pub(super) fn srk() -> Result<Public, Error> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .with_restricted(true)
        .with_decrypt(true)
        .build()
        .map_err(|e| wrapper("building the SRK template", e))?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new_restricted_decryption_key(
                SymmetricDefinitionObject::AES_128_CFB,
                EccCurve::NistP256,
            )
            .build()
            .map_err(|e| wrapper("building the SRK template", e))?,
        )
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
        .map_err(|e| wrapper("building the SRK template", e))
}

/// The hash an algorithm signs: SHA-384 for ES384, SHA-256 otherwise.
pub(super) fn hash_of(alg: Algorithm) -> HashingAlgorithm {
    match alg {
        Algorithm::ES384 => HashingAlgorithm::Sha384,
        _ => HashingAlgorithm::Sha256,
    }
}

/// The TPM signing scheme of an algorithm; `None` for EdDSA, which TPM 2.0 does not have.
pub(super) fn scheme_of(alg: Algorithm) -> Option<SignatureScheme> {
    let hash_scheme = HashScheme::new(hash_of(alg));
    match alg {
        Algorithm::ES256 | Algorithm::ES384 => Some(SignatureScheme::EcDsa { hash_scheme }),
        Algorithm::RS256 => Some(SignatureScheme::RsaSsa { hash_scheme }),
        Algorithm::PS256 => Some(SignatureScheme::RsaPss { hash_scheme }),
        Algorithm::EdDSA => None,
    }
}

/// Attributes of the keys we make: the TPM made the private key (`sensitive_data_origin`,
/// true for generated keys only) and it never leaves this TPM (`fixed`: generated keys only;
/// an imported key cannot be fixedTPM or fixedParent, TPM 2.0 Part 3, TPM2_Import); used with
/// its auth value (`userWithAuth`, not only a policy); sign-only: not decrypt, not restricted
/// (it signs any digest).
fn key_attributes(fixed: bool) -> Result<tss_esapi::attributes::ObjectAttributes, Error> {
    ObjectAttributesBuilder::new()
        .with_fixed_tpm(fixed)
        .with_fixed_parent(fixed)
        .with_sensitive_data_origin(fixed)
        .with_user_with_auth(true)
        .with_sign_encrypt(true)
        .with_decrypt(false)
        .with_restricted(false)
        .build()
        .map_err(|e| wrapper("building the key template", e))
}

/// The public template of a new signing key for `alg`, its scheme fixed in the key so that
/// the TPM makes no other kind of signature with it. `fixed`: generated (see
/// [`key_attributes`]). `point`: the public point of an imported EC key, else empty.
pub(super) fn key(alg: Algorithm, fixed: bool, point: Option<EccPoint>) -> Result<Public, Error> {
    let attributes = key_attributes(fixed)?;
    let failed = |e| wrapper("building the key template", e);
    let hash_scheme = HashScheme::new(hash_of(alg));
    let builder = PublicBuilder::new()
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes);
    let builder = match alg {
        Algorithm::ES256 | Algorithm::ES384 => {
            let curve = if alg == Algorithm::ES256 {
                EccCurve::NistP256
            } else {
                EccCurve::NistP384
            };
            let point = point.unwrap_or_default();
            builder
                .with_public_algorithm(PublicAlgorithm::Ecc)
                .with_ecc_parameters(
                    PublicEccParametersBuilder::new_unrestricted_signing_key(
                        EccScheme::EcDsa(hash_scheme),
                        curve,
                    )
                    .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
                    .build()
                    .map_err(failed)?,
                )
                .with_ecc_unique_identifier(point)
        }
        Algorithm::RS256 | Algorithm::PS256 => {
            let scheme = if alg == Algorithm::RS256 {
                RsaScheme::RsaSsa(hash_scheme)
            } else {
                RsaScheme::RsaPss(hash_scheme)
            };
            let (bits, exponent, modulus) = (
                RsaKeyBits::Rsa2048,
                RsaExponent::default(),
                PublicKeyRsa::default(),
            );
            builder
                .with_public_algorithm(PublicAlgorithm::Rsa)
                .with_rsa_parameters(
                    PublicRsaParametersBuilder::new_unrestricted_signing_key(
                        scheme, bits, exponent,
                    )
                    .build()
                    .map_err(failed)?,
                )
                .with_rsa_unique_identifier(modulus)
        }
        Algorithm::EdDSA => {
            return Err(Error::UnsupportedAlgorithm {
                alg,
                by: "the TPM backend (TPM 2.0 has no Ed25519)".into(),
            });
        }
    };
    builder.build().map_err(failed)
}

/// Left-pads a big-endian number to `len` bytes (the TPM may drop leading zeros).
fn pad(bytes: &[u8], len: usize) -> Result<Vec<u8>, Error> {
    if bytes.len() > len {
        return Err(failed(
            "reading a TPM result",
            format!(
                "a {}-byte number where {len} bytes were expected",
                bytes.len()
            ),
        ));
    }
    let mut out = vec![0; len - bytes.len()];
    out.extend_from_slice(bytes);
    Ok(out)
}

/// What a public area is: the kind of key and its JWK. Only signing keys we can serve pass:
/// not restricted (a restricted key signs only digests the TPM made), allowed to sign, ECC
/// P-256 or P-384, or RSA of 2048 bits or more.
pub(super) fn describe(public: &Public) -> Result<(KeyKind, Jwk), Error> {
    let refuse = |reason: String| Error::InvalidKey { reason };
    let attributes = public.object_attributes();
    if !attributes.sign_encrypt() || attributes.restricted() {
        return Err(refuse(
            "the TPM object is not an unrestricted signing key".into(),
        ));
    }
    match public {
        Public::Ecc {
            parameters, unique, ..
        } => {
            let kind = match parameters.ecc_curve() {
                EccCurve::NistP256 => KeyKind::P256,
                EccCurve::NistP384 => KeyKind::P384,
                other => {
                    return Err(refuse(format!(
                        "the TPM key's curve {other:?} is not supported (P-256 and P-384 are)"
                    )));
                }
            };
            let len = kind.field_len().expect("EC kinds have a field length");
            let mut point = vec![4];
            point.extend(pad(unique.x().value(), len)?);
            point.extend(pad(unique.y().value(), len)?);
            Ok((kind, Jwk::from_ec_point(&point)?))
        }
        Public::Rsa {
            parameters, unique, ..
        } => {
            if unique.value().len() < 256 {
                return Err(refuse("RSA keys under 2048 bits are not supported".into()));
            }
            // 0 stands for the default exponent, 65537 (TPM 2.0 Part 2, TPMS_RSA_PARMS).
            let exponent = match parameters.exponent().value() {
                0 => 65537u32,
                e => e,
            };
            let e = exponent.to_be_bytes();
            let first = e.iter().position(|&b| b != 0).unwrap_or(3);
            Ok((KeyKind::Rsa, Jwk::from_rsa(unique.value(), &e[first..])))
        }
        _ => Err(refuse("the TPM object is not an ECC or RSA key".into())),
    }
}

/// A TPM signature as JWS wants it: ECDSA `r||s`, each padded to the field length; RSA
/// padded to the modulus length.
pub(super) fn jws_signature(
    signature: &Signature,
    kind: KeyKind,
    modulus_len: usize,
) -> Result<Vec<u8>, Error> {
    match (signature, kind.field_len()) {
        (Signature::EcDsa(ecc), Some(len)) => {
            let mut out = pad(ecc.signature_r().value(), len)?;
            out.extend(pad(ecc.signature_s().value(), len)?);
            Ok(out)
        }
        (Signature::RsaSsa(rsa) | Signature::RsaPss(rsa), None) => {
            let signature = rsa.signature().value();
            pad(signature, modulus_len.max(signature.len()))
        }
        _ => Err(failed(
            "TPM2_Sign",
            format!(
                "the TPM returned a {:?} signature for a {kind:?} key",
                signature.algorithm()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_fixed_sign_only() {
        for alg in [
            Algorithm::ES256,
            Algorithm::ES384,
            Algorithm::RS256,
            Algorithm::PS256,
        ] {
            let public = key(alg, true, None).unwrap();
            let a = public.object_attributes();
            assert!(
                a.fixed_tpm() && a.fixed_parent() && a.sensitive_data_origin(),
                "{alg}"
            );
            assert!(a.user_with_auth() && a.sign_encrypt(), "{alg}");
            assert!(!a.decrypt() && !a.restricted(), "{alg}");
        }
        let imported = key(Algorithm::ES256, false, None)
            .unwrap()
            .object_attributes();
        assert!(!imported.fixed_tpm() && !imported.fixed_parent());
        assert!(matches!(
            key(Algorithm::EdDSA, true, None),
            Err(Error::UnsupportedAlgorithm { .. })
        ));
        let srk = srk().unwrap().object_attributes();
        assert!(srk.restricted() && srk.decrypt() && !srk.sign_encrypt());
    }

    #[test]
    fn numbers_are_padded_not_cut() {
        assert_eq!(pad(&[1, 2], 4).unwrap(), [0, 0, 1, 2]);
        assert!(pad(&[1, 2, 3], 2).is_err());
    }
}
