//! Opening a token: which module and token, where the PIN comes from, how many sessions.

use std::fs;
#[cfg(unix)]
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use secrecy::SecretString;
use zeroize::Zeroizing;

use crate::{BackendKind, Error};

/// Default number of sessions kept open per token.
pub const DEFAULT_MAX_SESSIONS: usize = 8;

/// Which token to use: by label (`CK_TOKEN_INFO.label`) or serial number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSelector {
    /// The token label, e.g. `dpop` or `YubiKey PIV #12345678`.
    Label(String),
    /// The token serial number.
    Serial(String),
}

impl std::fmt::Display for TokenSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSelector::Label(l) => write!(f, "token labelled {l:?}"),
            TokenSelector::Serial(s) => write!(f, "token with serial {s:?}"),
        }
    }
}

/// Where the user PIN comes from, other than a prompt (the agent prompts itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PinSource {
    /// An environment variable.
    Env(String),
    /// A file; one trailing newline is removed.
    File(PathBuf),
}

impl PinSource {
    /// Reads the PIN. Errors name the source, never the PIN.
    pub fn resolve(&self) -> Result<SecretString, Error> {
        self.resolve_for(BackendKind::Pkcs11)
    }

    /// Reads a secret of `backend` kept the way a PIN is (the TPM keys' auth value); errors
    /// call it what the backend calls it.
    pub fn resolve_for(&self, backend: BackendKind) -> Result<SecretString, Error> {
        match self {
            PinSource::Env(var) => {
                let unavailable = |reason: &str| Error::SecretUnavailable {
                    backend,
                    from: format!("environment variable {var}"),
                    reason: reason.to_owned(),
                };
                let value = std::env::var_os(var).ok_or_else(|| unavailable("it is not set"))?;
                let value = Zeroizing::new(
                    value
                        .into_string()
                        .map_err(|_| unavailable("it is not valid UTF-8"))?,
                );
                if value.is_empty() {
                    return Err(unavailable("it is empty"));
                }
                Ok(SecretString::from(value.as_str()))
            }
            PinSource::File(path) => {
                let unavailable = |reason: String| Error::SecretUnavailable {
                    backend,
                    from: format!("file {}", path.display()),
                    reason,
                };
                let bytes = Zeroizing::new(fs::read(path).map_err(|e| unavailable(e.to_string()))?);
                #[cfg(unix)]
                if let Ok(meta) = fs::metadata(path)
                    && meta.permissions().mode() & 0o077 != 0
                {
                    tracing::warn!(path = %path.display(), "the PIN file is readable by group or others; chmod 600 it");
                }
                let text = std::str::from_utf8(&bytes)
                    .map_err(|_| unavailable("it is not valid UTF-8".into()))?;
                let text = text
                    .strip_suffix("\r\n")
                    .or_else(|| text.strip_suffix('\n'))
                    .unwrap_or(text);
                if text.is_empty() {
                    return Err(unavailable("it is empty".into()));
                }
                Ok(SecretString::from(text))
            }
        }
    }

    /// The source an RFC 7512 `pin-source` names: `file:/path` or a plain path, or `env:VAR`
    /// (a common extension).
    pub fn from_uri_pin_source(value: &str) -> Result<PinSource, Error> {
        if let Some(var) = value.strip_prefix("env:") {
            return Ok(PinSource::Env(var.to_owned()));
        }
        let path = value
            .strip_prefix("file://")
            .or_else(|| value.strip_prefix("file:"));
        let path = path.unwrap_or(value);
        if path.starts_with('/') {
            Ok(PinSource::File(PathBuf::from(path)))
        } else {
            Err(Error::InvalidUri {
                backend: BackendKind::Pkcs11,
                reason: format!(
                    "pin-source {value:?} is neither file:/absolute/path nor env:VARIABLE"
                ),
            })
        }
    }
}

/// How to open a token.
#[derive(Clone, Debug)]
pub struct Pkcs11Config {
    /// The PKCS#11 module (shared library) file.
    pub module: PathBuf,
    /// Which token.
    pub token: TokenSelector,
    /// The user PIN (`CKU_USER`).
    pub pin: SecretString,
    /// A directory, created 0700, for the per-key records.
    pub metadata_dir: PathBuf,
    /// At most this many sessions are open at once (signing requests beyond it wait).
    pub max_sessions: usize,
    /// While the token is missing, re-initialise the module (`C_Finalize`, `C_Initialize`,
    /// at most every 2 s) so that modules which list slots only at start-up, SoftHSM2 among
    /// them, see it come back. Only for processes where nothing else uses the module: it ends
    /// every session on it. Off by default; the agent, which owns its process, turns it on.
    pub reinitialize_module: bool,
}

impl Pkcs11Config {
    /// A configuration with [`DEFAULT_MAX_SESSIONS`].
    pub fn new(
        module: impl Into<PathBuf>,
        token: TokenSelector,
        pin: SecretString,
        metadata_dir: impl Into<PathBuf>,
    ) -> Pkcs11Config {
        Pkcs11Config {
            module: module.into(),
            token,
            pin,
            metadata_dir: metadata_dir.into(),
            max_sessions: DEFAULT_MAX_SESSIONS,
            reinitialize_module: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn pin_file_trims_one_newline_and_errors_hide_the_pin() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pin");
        fs::write(&path, "12 34\n\n").unwrap();
        let pin = PinSource::File(path.clone()).resolve().unwrap();
        assert_eq!(pin.expose_secret(), "12 34\n");
        fs::write(&path, "5678\r\n").unwrap();
        assert_eq!(
            PinSource::File(path.clone())
                .resolve()
                .unwrap()
                .expose_secret(),
            "5678"
        );
        fs::write(&path, "\n").unwrap();
        let err = PinSource::File(path.clone())
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(err.contains("empty"), "{err}");
        fs::write(&path, b"\xff9999\n").unwrap();
        let err = PinSource::File(path.clone())
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(err.contains("UTF-8") && !err.contains("9999"), "{err}");
        let missing = PinSource::File(dir.path().join("nope"))
            .resolve()
            .unwrap_err();
        assert!(missing.to_string().contains("nope"), "{missing}");
        let env = PinSource::Env("DPOP_TEST_SURELY_UNSET_PIN_VAR".into())
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(env.contains("DPOP_TEST_SURELY_UNSET_PIN_VAR") && env.contains("not set"));
        assert!(!format!("{:?}", pin).contains("12 34"));
    }

    #[test]
    fn config_debug_hides_the_pin() {
        let config = Pkcs11Config::new(
            "/m.so",
            TokenSelector::Label("t".into()),
            SecretString::from("314159"),
            "/d",
        );
        let debug = format!("{config:?}");
        assert!(
            !debug.contains("314159") && debug.contains("/m.so"),
            "{debug}"
        );
    }

    #[test]
    fn pin_source_from_uri() {
        assert_eq!(
            PinSource::from_uri_pin_source("file:/etc/token_pin").unwrap(),
            PinSource::File("/etc/token_pin".into())
        );
        assert_eq!(
            PinSource::from_uri_pin_source("/run/pin").unwrap(),
            PinSource::File("/run/pin".into())
        );
        assert_eq!(
            PinSource::from_uri_pin_source("env:PIN").unwrap(),
            PinSource::Env("PIN".into())
        );
        assert!(PinSource::from_uri_pin_source("|/bin/askpass").is_err());
    }
}
