//! Opening a TPM: which TCTI, the optional auth value of the keys, where records go. Plain
//! data, compiled without the `tpm` feature too, so that a program can parse its settings and
//! say what is missing.

use std::path::PathBuf;

use secrecy::SecretString;

/// The TCTI used when none is configured: the kernel's resource manager, which lets several
/// programs share the TPM (`/dev/tpm0` would be this process's alone).
pub const DEFAULT_TCTI: &str = "device:/dev/tpmrm0";

/// How to open a TPM.
#[derive(Clone, Debug)]
pub struct TpmConfig {
    /// The TCTI, as tpm2-tss writes it: `device:/dev/tpmrm0`, `tabrmd:`,
    /// `swtpm:host=127.0.0.1,port=2321`, `mssim:host=..,port=..`.
    pub tcti: String,
    /// The auth value that keys made (generated, imported) or adopted from now on get, and
    /// that keys recorded with one are used with; `None`: keys without one. Never logged.
    pub auth: Option<SecretString>,
    /// A directory, created 0700, for the per-key records (public and wrapped private blobs).
    pub metadata_dir: PathBuf,
}

impl TpmConfig {
    /// A configuration for `tcti`, keys without an auth value.
    pub fn new(tcti: impl Into<String>, metadata_dir: impl Into<PathBuf>) -> TpmConfig {
        TpmConfig {
            tcti: tcti.into(),
            auth: None,
            metadata_dir: metadata_dir.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_debug_hides_the_auth_value() {
        let config = TpmConfig {
            auth: Some(SecretString::from("s3cret-auth")),
            ..TpmConfig::new(DEFAULT_TCTI, "/d")
        };
        let debug = format!("{config:?}");
        assert!(
            !debug.contains("s3cret-auth") && debug.contains("tpmrm0"),
            "{debug}"
        );
    }
}
