//! Reading PEM private keys for import: PKCS#8 (`PRIVATE KEY`), SEC1 (`EC PRIVATE KEY`, what
//! `openssl ecparam -genkey` writes, possibly after an `EC PARAMETERS` block) and PKCS#1
//! (`RSA PRIVATE KEY`).
//!
//! The base64 text is decoded straight into one buffer of the right size that is zeroized on
//! drop, also when decoding fails half-way; nothing else here copies the text or the DER.
//! Errors name the problem and the way out: a DER file, an encrypted key (decrypt it on a pipe,
//! so no plain copy lands on disk), an RSA key under 2048 bits, several keys in one file.

use pkcs8::ObjectIdentifier;
use pkcs8::der::asn1::UintRef;
use pkcs8::der::{Decode, Header, SliceReader};
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

/// Labels an error message may name. Any other "label" may be key text from a damaged BEGIN
/// line (everything up to the next `-----`), so it is never repeated to the client or a log.
const KNOWN_LABELS: [&str; 11] = [
    "PRIVATE KEY",
    "EC PRIVATE KEY",
    "RSA PRIVATE KEY",
    "ENCRYPTED PRIVATE KEY",
    "OPENSSH PRIVATE KEY",
    "EC PARAMETERS",
    "PUBLIC KEY",
    "RSA PUBLIC KEY",
    "CERTIFICATE",
    "CERTIFICATE REQUEST",
    "X509 CRL",
];

/// `label` quoted when it is a known one, a placeholder otherwise.
fn shown(label: &str) -> String {
    if KNOWN_LABELS.contains(&label) {
        format!("{label:?}")
    } else {
        "(unrecognised label)".to_owned()
    }
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::InvalidKey {
        reason: reason.into(),
    }
}

/// The smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;

/// How to decrypt a key for import without writing it to disk in clear.
const DECRYPT_ON_A_PIPE: &str = "decrypt it on a pipe, so that no plain copy lands on disk: \
    `openssl pkey -in key.pem | dpop keys import - --label LABEL`";

/// Finds the one private key block in `pem` and decodes it.
pub fn parse_private_key_pem(pem: &[u8]) -> Result<PrivateKeyPem, Error> {
    if looks_like_der(pem) {
        return Err(invalid(
            "expected a PEM file (\"-----BEGIN PRIVATE KEY-----\"), but this looks like DER; \
             convert it on a pipe: `openssl pkey -inform DER -in key.der | dpop keys import - \
             --label LABEL`",
        ));
    }
    let text = std::str::from_utf8(pem).map_err(|_| invalid("not a PEM file (not UTF-8)"))?;
    let mut rest = text;
    let mut labels = Vec::new();
    let mut keys = Vec::new();
    while let Some(start) = rest.find("-----BEGIN ") {
        let block = &rest[start..];
        let label_end = block[11..]
            .find("-----")
            .ok_or_else(|| invalid("unterminated PEM header"))?;
        let label = &block[11..11 + label_end];
        let end_marker = format!("-----END {label}-----");
        let end = block
            .find(&end_marker)
            .ok_or_else(|| invalid(format!("PEM block {} has no END line", shown(label))))?
            + end_marker.len();
        let format = match label {
            "PRIVATE KEY" => Some(DerFormat::Pkcs8),
            "EC PRIVATE KEY" => Some(DerFormat::Sec1),
            "RSA PRIVATE KEY" => Some(DerFormat::Pkcs1),
            "ENCRYPTED PRIVATE KEY" => {
                return Err(invalid(format!(
                    "the PEM key is encrypted (ENCRYPTED PRIVATE KEY); {DECRYPT_ON_A_PIPE}"
                )));
            }
            _ => None,
        };
        match format {
            // OpenSSL's traditional encryption: headers inside an EC or RSA PRIVATE KEY block.
            Some(_) if block[..end].contains("Proc-Type:") => {
                return Err(invalid(format!(
                    "the PEM key is encrypted (Proc-Type: 4,ENCRYPTED); {DECRYPT_ON_A_PIPE}"
                )));
            }
            Some(format) => keys.push((format, &block.as_bytes()[..end])),
            None => labels.push(shown(label)),
        }
        rest = &block[end..];
    }
    match keys[..] {
        [(format, block)] => {
            let der = decode_block(block)?;
            let kind = detect_kind(format, &der)?;
            Ok(PrivateKeyPem { kind, format, der })
        }
        [] => Err(invalid(if labels.is_empty() {
            "no PEM block found".to_owned()
        } else {
            format!("no private key among the PEM blocks {}", labels.join(", "))
        })),
        // Taking the first would import a key the user may not have meant.
        _ => Err(invalid(format!(
            "the PEM file holds {} private keys; import one key per file",
            keys.len()
        ))),
    }
}

/// A DER private key starts with a SEQUENCE tag; a PEM file starts with text.
fn looks_like_der(bytes: &[u8]) -> bool {
    bytes.first() == Some(&0x30) && !bytes.windows(11).any(|w| w == b"-----BEGIN ")
}

/// Decodes one PEM block into a buffer that is wiped on drop, whatever happens.
fn decode_block(block: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
    let bad = |e: pem_rfc7468::Error| invalid(format!("bad PEM encoding: {e}"));
    let mut decoder = pem_rfc7468::Decoder::new(block).map_err(bad)?;
    let mut der = Zeroizing::new(vec![0u8; decoder.remaining_len()]);
    decoder.decode(&mut der).map_err(bad)?;
    if !decoder.is_finished() {
        return Err(invalid("bad PEM encoding: data after the key"));
    }
    Ok(der)
}

/// The size in bits of a PKCS#1 `RSAPrivateKey`'s modulus (its second integer).
fn rsa_modulus_bits(pkcs1: &[u8]) -> Result<usize, Error> {
    let read = || -> Result<usize, pkcs8::der::Error> {
        let mut reader = SliceReader::new(pkcs1)?;
        Header::decode(&mut reader)?;
        UintRef::decode(&mut reader)?;
        let modulus = UintRef::decode(&mut reader)?.as_bytes();
        Ok(match modulus.first() {
            Some(&top) => modulus.len() * 8 - top.leading_zeros() as usize,
            None => 0,
        })
    };
    read().map_err(|e| invalid(format!("bad PKCS#1 RSA key: {e}")))
}

/// Refuses RSA keys under [`MIN_RSA_BITS`].
fn check_rsa_size(pkcs1: &[u8]) -> Result<KeyKind, Error> {
    let bits = rsa_modulus_bits(pkcs1)?;
    if bits < MIN_RSA_BITS {
        return Err(invalid(format!(
            "the RSA key has {bits} bits; at least {MIN_RSA_BITS} are needed"
        )));
    }
    Ok(KeyKind::Rsa)
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
                RSA_ENCRYPTION => check_rsa_size(info.private_key.as_bytes()),
                ED25519 => Ok(KeyKind::Ed25519),
                other => Err(invalid(format!("unsupported key algorithm {other}"))),
            }
        }
        DerFormat::Sec1 => {
            let key = sec1::EcPrivateKey::from_der(der)
                .map_err(|e| invalid(format!("bad SEC1 EC key: {e}")))?;
            curve_kind(key.parameters.and_then(|p| p.named_curve()))
        }
        DerFormat::Pkcs1 => check_rsa_size(der),
    }
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};

    use super::*;

    fn ec_pkcs8() -> Vec<u8> {
        EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
            .unwrap()
            .to_pkcs8v1()
            .unwrap()
            .as_ref()
            .to_vec()
    }

    fn pem(label: &str, der: &[u8]) -> String {
        pem_rfc7468::encode_string(label, pem_rfc7468::LineEnding::LF, der).unwrap()
    }

    fn error(input: &[u8]) -> String {
        parse_private_key_pem(input).unwrap_err().to_string()
    }

    #[test]
    fn one_key_parses_beside_other_blocks() {
        let der = ec_pkcs8();
        let text = format!(
            "{}{}",
            pem("CERTIFICATE", b"not a key"),
            pem("PRIVATE KEY", &der)
        );
        let parsed = parse_private_key_pem(text.as_bytes()).unwrap();
        assert_eq!(
            (parsed.kind, parsed.format),
            (KeyKind::P256, DerFormat::Pkcs8)
        );
        assert_eq!(parsed.der.as_slice(), der);
    }

    #[test]
    fn errors_name_the_problem() {
        let der = ec_pkcs8();
        let message = error(&der);
        assert!(message.contains("looks like DER"), "{message}");
        assert!(message.contains("openssl pkey -inform DER"), "{message}");

        let two = format!(
            "{}{}",
            pem("PRIVATE KEY", &der),
            pem("PRIVATE KEY", &ec_pkcs8())
        );
        let message = error(two.as_bytes());
        assert!(message.contains("holds 2 private keys"), "{message}");

        let encrypted = "-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n\
                         DEK-Info: AES-128-CBC,00000000000000000000000000000000\n\nAAAA\n\
                         -----END EC PRIVATE KEY-----\n";
        let message = error(encrypted.as_bytes());
        assert!(message.contains("Proc-Type: 4,ENCRYPTED"), "{message}");
        assert!(message.contains("| dpop keys import -"), "{message}");

        let message = error(pem("ENCRYPTED PRIVATE KEY", b"x").as_bytes());
        assert!(message.contains("| dpop keys import -"), "{message}");

        // A broken block fails without panicking, its buffer wiped by Zeroizing.
        let broken = pem("PRIVATE KEY", &der).replace('M', "!");
        assert!(error(broken.as_bytes()).contains("bad PEM encoding"));
    }

    #[test]
    fn rsa_modulus_size_is_read_from_pkcs1() {
        // SEQUENCE { INTEGER 0, INTEGER (0x00 0x80 + 127 bytes: a 1024-bit modulus), ... }
        let mut modulus = vec![0x00, 0x80];
        modulus.extend([0u8; 127]);
        let mut der = vec![0x30, 0x81, 0x87, 0x02, 0x01, 0x00, 0x02, 0x81, 0x81];
        der.extend(&modulus);
        assert_eq!(rsa_modulus_bits(&der).unwrap(), 1024);
        let message = check_rsa_size(&der).unwrap_err().to_string();
        assert!(message.contains("1024 bits; at least 2048"), "{message}");
    }

    #[test]
    fn a_damaged_begin_line_is_not_echoed() {
        // Found by the agent_request fuzz target: the "label" ran into the key's base64,
        // which the error message then repeated to the client and the debug log.
        for pem in [
            "-----BEGIN PRIVATE m2ykUkehRANCAATDRxSgQmt3n7sPSdIPkAmssYPEocfb\n\
             -----END PRIVATE KEY-----\n",
            "-----BEGIN PRIVATE KE20hgLntS+QJ6OS6XCB4fm2ykUkehRANCAAARlZffQMGMTTLn-----END \
             PRIVATE KEY-----\n",
        ] {
            let message = parse_private_key_pem(pem.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(!message.contains("m2ykUkeh"), "{message}");
        }
        let message = parse_private_key_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n")
            .unwrap_err()
            .to_string();
        assert!(message.contains("\"CERTIFICATE\""), "{message}");
    }
}
