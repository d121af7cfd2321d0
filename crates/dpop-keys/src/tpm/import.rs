//! Import of a PEM key: TPM2_Import of an unwrapped duplicate (the key's sensitive area
//! marshalled as it is, no inner or outer wrapping) under the SRK. The TPM then wraps it like
//! a key it made. Such a key cannot be fixedTPM or fixedParent (TPM2_Import refuses them:
//! the key existed outside this TPM, so a copy may exist elsewhere) and is not
//! sensitiveDataOrigin. EC P-256 and P-384 keys only.

use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair};
use pkcs8::der::Decode;
use tss_esapi::structures::{
    Auth, Digest, EccParameter, EccPoint, Public, Sensitive, SensitiveBuffer,
};
use tss_esapi::traits::Marshall;
use zeroize::Zeroizing;

use super::error::wrapper;
use super::templates;
use crate::pem::{DerFormat, parse_private_key_pem};
use crate::{Algorithm, Error};

fn invalid(reason: impl Into<String>) -> Error {
    Error::InvalidKey {
        reason: reason.into(),
    }
}

/// The algorithm, public template and duplicate blob (secret) for importing `pem`.
pub(super) fn duplicate(
    pem: &[u8],
    alg: Option<Algorithm>,
    auth: Option<Auth>,
) -> Result<(Algorithm, Public, Zeroizing<Vec<u8>>), Error> {
    let parsed = parse_private_key_pem(pem)?;
    let alg = parsed.kind.alg_for(alg)?;
    let Some(signing) = parsed.kind.ecdsa_signing() else {
        return Err(Error::Unsupported {
            what: format!(
                "importing {:?} keys into the TPM (EC P-256 and P-384 keys import; generate \
                 RSA keys in the TPM instead; TPM 2.0 has no Ed25519)",
                parsed.kind
            ),
        });
    };
    let len = parsed
        .kind
        .field_len()
        .expect("EC kinds have a field length");
    let pair = EcdsaKeyPair::from_private_key_der(signing, &parsed.der)
        .map_err(|e| invalid(format!("key rejected: {e}")))?;
    let point = pair.public_key().as_ref();
    let coordinate =
        |bytes: &[u8]| EccParameter::try_from(bytes).map_err(|e| wrapper("TPM2_Import", e));
    let unique = EccPoint::new(
        coordinate(&point[1..1 + len])?,
        coordinate(&point[1 + len..])?,
    );
    let scalar = scalar(parsed.format, &parsed.der, len)?;
    let public = templates::key(alg, false, Some(unique))?;
    let sensitive = Sensitive::Ecc {
        auth_value: auth.unwrap_or_default(),
        seed_value: Digest::default(),
        sensitive: EccParameter::try_from(scalar.as_slice())
            .map_err(|e| wrapper("TPM2_Import", e))?,
    };
    let buffer = SensitiveBuffer::try_from(sensitive).map_err(|e| wrapper("TPM2_Import", e))?;
    let duplicate = Zeroizing::new(buffer.marshall().map_err(|e| wrapper("TPM2_Import", e))?);
    Ok((alg, public, duplicate))
}

/// The private scalar of an EC key, `len` bytes.
fn scalar(format: DerFormat, der: &[u8], len: usize) -> Result<Zeroizing<Vec<u8>>, Error> {
    let sec1_der: &[u8] = match format {
        DerFormat::Sec1 => der,
        DerFormat::Pkcs8 => pkcs8::PrivateKeyInfoRef::from_der(der)
            .map_err(|e| invalid(format!("bad PKCS#8 structure: {e}")))?
            .private_key
            .as_bytes(),
        DerFormat::Pkcs1 => return Err(invalid("a PKCS#1 block holds an RSA key")),
    };
    let key = sec1::EcPrivateKey::from_der(sec1_der)
        .map_err(|e| invalid(format!("bad SEC1 EC key: {e}")))?;
    let bytes = key.private_key;
    if bytes.len() > len {
        return Err(invalid("the EC private scalar is longer than the curve"));
    }
    let mut out = Zeroizing::new(vec![0; len - bytes.len()]);
    out.extend_from_slice(bytes);
    Ok(out)
}
