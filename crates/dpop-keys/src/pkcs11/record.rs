//! The record the PKCS#11 backend files for each key in the shared record store
//! ([`crate::records`]): where the key is on the token and how it got there. No secrets.
//! The JSON is what earlier versions wrote, field for field.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::objects::Locator;
pub(crate) use crate::records::Origin;
use crate::records::Record;
use crate::{Algorithm, Error, Jwk, KeyLabel};

/// One key's record in `metadata_dir`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct KeyRecord {
    pub version: u32,
    pub label: KeyLabel,
    pub alg: Algorithm,
    /// `CKA_ID`, hex.
    pub id: String,
    /// `CKA_LABEL` to match as well (adopted keys named by `object=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    pub origin: Origin,
    pub token_label: String,
    pub token_serial: String,
    /// The public key when the record was written; used when the token shows none.
    pub jwk: Jwk,
}

impl KeyRecord {
    pub(crate) fn locator(&self, path: &Path) -> Result<Locator, Error> {
        Ok(Locator {
            id: hex_decode(&self.id).ok_or_else(|| Error::CorruptStore {
                path: path.to_owned(),
                reason: "id is not hex".into(),
            })?,
            object: self.object.clone(),
        })
    }
}

pub(crate) fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Record for KeyRecord {
    fn label(&self) -> &KeyLabel {
        &self.label
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex() {
        assert_eq!(hex_encode(&[0, 0xab, 0x10]), "00ab10");
        assert_eq!(hex_decode("00ab10").unwrap(), [0, 0xab, 0x10]);
        assert_eq!(hex_decode("").unwrap(), Vec::<u8>::new());
        assert!(hex_decode("0").is_none() && hex_decode("zz").is_none());
    }

    /// A record as the first versions wrote it (pretty JSON, these fields in this order)
    /// still loads, and is written back byte for byte.
    #[test]
    fn records_keep_their_format() {
        let written = r#"{
  "version": 1,
  "label": "api",
  "alg": "EdDSA",
  "id": "00ab10",
  "origin": "generated",
  "token_label": "dpop",
  "token_serial": "1234",
  "jwk": {
    "kty": "OKP",
    "crv": "Ed25519",
    "x": "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc"
  }
}"#;
        let record: KeyRecord = serde_json::from_str(written).unwrap();
        assert_eq!(record.origin, Origin::Generated);
        assert_eq!(record.jwk, Jwk::from_ed25519(&[7; 32]));
        assert_eq!(
            record.locator(Path::new("api.json")).unwrap().id,
            [0, 0xab, 0x10]
        );
        assert_eq!(serde_json::to_string_pretty(&record).unwrap(), written);
    }
}
