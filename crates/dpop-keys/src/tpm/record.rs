//! The per-key record in `metadata_dir`: the key's public area and wrapped private blob (or
//! the persistent handle of an adopted key), base64url. The private blob is encrypted by the
//! TPM under the SRK: it is useless without this TPM, but kept 0600 like every record.

use dpop_jose::{b64url_decode, b64url_encode};
use serde::{Deserialize, Serialize};
use tss_esapi::structures::{Private, Public};
use tss_esapi::traits::{Marshall, UnMarshall};

use super::worker::KeySource;
pub(crate) use crate::records::Origin;
use crate::records::Record;
use crate::{Algorithm, Error, Jwk, KeyLabel};

/// One key's record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct TpmRecord {
    pub version: u32,
    pub label: KeyLabel,
    pub alg: Algorithm,
    pub origin: Origin,
    /// The marshalled `TPMT_PUBLIC`, base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public: Option<String>,
    /// The `TPM2B_PRIVATE` buffer (wrapped by the SRK), base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private: Option<String>,
    /// The persistent handle of an adopted key, `0x81......`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle: Option<String>,
    /// Whether the key has an auth value (the agent's, when it was made or adopted).
    pub auth: bool,
    /// The public key, for listing without the TPM.
    pub jwk: Jwk,
}

impl Record for TpmRecord {
    fn label(&self) -> &KeyLabel {
        &self.label
    }
}

/// A persistent handle written as `0x81000001`.
pub(crate) fn handle_text(handle: u32) -> String {
    format!("{handle:#010x}")
}

/// Parses `0x81000001` (or decimal); only persistent handles (`0x81......`) pass.
pub(crate) fn parse_handle(text: &str) -> Option<u32> {
    let value = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).ok()?,
        None => text.parse().ok()?,
    };
    (value >> 24 == 0x81).then_some(value)
}

impl TpmRecord {
    /// A record for a key made from blobs.
    pub(crate) fn with_blobs(
        label: &KeyLabel,
        alg: Algorithm,
        origin: Origin,
        public: &Public,
        private: &Private,
        auth: bool,
        jwk: Jwk,
    ) -> Result<TpmRecord, Error> {
        let public = public
            .marshall()
            .map_err(|e| super::error::wrapper("marshalling the public area", e))?;
        Ok(TpmRecord {
            version: 1,
            label: label.clone(),
            alg,
            origin,
            public: Some(b64url_encode(public)),
            private: Some(b64url_encode(private.value())),
            handle: None,
            auth,
            jwk,
        })
    }

    /// Where the worker loads the key from.
    pub(crate) fn source(&self, path: &std::path::Path) -> Result<KeySource, Error> {
        let corrupt = |reason: &str| Error::CorruptStore {
            path: path.to_owned(),
            reason: reason.to_owned(),
        };
        if self.origin == Origin::Adopted {
            let handle = self
                .handle
                .as_deref()
                .and_then(parse_handle)
                .ok_or_else(|| corrupt("an adopted key's record has no persistent handle"))?;
            return Ok(KeySource::Persistent(handle));
        }
        let decode = |field: &Option<String>, name: &str| {
            field
                .as_deref()
                .and_then(b64url_decode)
                .ok_or_else(|| corrupt(&format!("the {name} blob is missing or not base64url")))
        };
        let public = Public::unmarshall(&decode(&self.public, "public")?)
            .map_err(|_| corrupt("the public blob is not a TPM public area"))?;
        let private = Private::try_from(decode(&self.private, "private")?)
            .map_err(|_| corrupt("the private blob is too long for a TPM private area"))?;
        Ok(KeySource::Blob { public, private })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persistent_handles_only() {
        assert_eq!(parse_handle("0x81000001"), Some(0x8100_0001));
        assert_eq!(parse_handle(&handle_text(0x8101_00ff)), Some(0x8101_00ff));
        assert_eq!(parse_handle("2164260865"), Some(0x8100_0001));
        assert_eq!(parse_handle("0x80000001"), None);
        assert_eq!(parse_handle("0x4000000b"), None);
        assert_eq!(parse_handle("zz"), None);
    }
}
