//! Reading PEM private keys for import: PKCS#8 (`PRIVATE KEY`), SEC1 (`EC PRIVATE KEY`, what
//! `openssl ecparam -genkey` writes, possibly after an `EC PARAMETERS` block) and PKCS#1
//! (`RSA PRIVATE KEY`). The decoded DER is zeroized on drop.

use pkcs8::ObjectIdentifier;
use pkcs8::der::Decode;
use zeroize::Zeroizing;

use crate::Error;
pub use crate::kind::KeyKind;

const ID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const PRIME256V1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

/// The DER encoding a PEM block held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DerFormat {
    /// PKCS#8 `PrivateKeyInfo`.
    Pkcs8,
    /// SEC1 / RFC 5915 `ECPrivateKey`.
    Sec1,
    /// PKCS#1 `RSAPrivateKey`.
    Pkcs1,
}

/// A decoded private key, ready for a backend to load.
pub struct PrivateKeyPem {
    /// The key kind.
    pub kind: KeyKind,
    /// How `der` is encoded.
    pub format: DerFormat,
    /// The DER bytes (zeroized on drop).
    pub der: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for PrivateKeyPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivateKeyPem")
            .field("kind", &self.kind)
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::InvalidKey {
        reason: reason.into(),
    }
}

/// Finds the private key block in `pem` and decodes it.
pub fn parse_private_key_pem(pem: &[u8]) -> Result<PrivateKeyPem, Error> {
    let text = std::str::from_utf8(pem).map_err(|_| invalid("not a PEM file (not UTF-8)"))?;
    let mut rest = text;
    let mut labels = Vec::new();
    while let Some(start) = rest.find("-----BEGIN ") {
        let block = &rest[start..];
        let label_end = block[11..]
            .find("-----")
            .ok_or_else(|| invalid("unterminated PEM header"))?;
        let label = &block[11..11 + label_end];
        let end_marker = format!("-----END {label}-----");
        let end = block
            .find(&end_marker)
            .ok_or_else(|| invalid(format!("PEM block {label:?} has no END line")))?
            + end_marker.len();
        let format = match label {
            "PRIVATE KEY" => Some(DerFormat::Pkcs8),
            "EC PRIVATE KEY" => Some(DerFormat::Sec1),
            "RSA PRIVATE KEY" => Some(DerFormat::Pkcs1),
            "ENCRYPTED PRIVATE KEY" => {
                return Err(invalid(
                    "encrypted PEM keys are not supported; decrypt it first \
                     (openssl pkcs8 -in key.pem -out plain.pem)",
                ));
            }
            _ => None,
        };
        if let Some(format) = format {
            let (_, der) = pem_rfc7468::decode_vec(&block.as_bytes()[..end])
                .map_err(|e| invalid(format!("bad PEM encoding: {e}")))?;
            let der = Zeroizing::new(der);
            let kind = detect_kind(format, &der)?;
            return Ok(PrivateKeyPem { kind, format, der });
        }
        labels.push(label.to_owned());
        rest = &block[end..];
    }
    Err(invalid(if labels.is_empty() {
        "no PEM block found".to_owned()
    } else {
        format!("no private key among the PEM blocks {labels:?}")
    }))
}

fn curve_kind(curve: Option<ObjectIdentifier>) -> Result<KeyKind, Error> {
    match curve {
        Some(PRIME256V1) => Ok(KeyKind::P256),
        Some(SECP384R1) => Ok(KeyKind::P384),
        Some(other) => Err(invalid(format!(
            "unsupported EC curve {other} (P-256 and P-384 are)"
        ))),
        None => Err(invalid("EC key without a named curve")),
    }
}

fn detect_kind(format: DerFormat, der: &[u8]) -> Result<KeyKind, Error> {
    match format {
        DerFormat::Pkcs8 => {
            let info = pkcs8::PrivateKeyInfoRef::from_der(der)
                .map_err(|e| invalid(format!("bad PKCS#8 structure: {e}")))?;
            let (oid, params) = info
                .algorithm
                .oids()
                .map_err(|e| invalid(format!("bad PKCS#8 algorithm: {e}")))?;
            match oid {
                ID_EC_PUBLIC_KEY => curve_kind(params),
                RSA_ENCRYPTION => Ok(KeyKind::Rsa),
                ED25519 => Ok(KeyKind::Ed25519),
                other => Err(invalid(format!("unsupported key algorithm {other}"))),
            }
        }
        DerFormat::Sec1 => {
            let key = sec1::EcPrivateKey::from_der(der)
                .map_err(|e| invalid(format!("bad SEC1 EC key: {e}")))?;
            curve_kind(key.parameters.and_then(|p| p.named_curve()))
        }
        DerFormat::Pkcs1 => Ok(KeyKind::Rsa),
    }
}
