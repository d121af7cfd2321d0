//! The key backends as the agent configures and opens them, one file per backend, each owning
//! its flags and keys (an options struct, see [`crate::options`]), its settings and secret,
//! opening it, and its `--check-config` line: [`software`], [`pkcs11`], [`tpm`]. This file
//! lists them once: the flags of all of them ([`BackendOptions`]), what they run with
//! ([`BackendSettings`]), and one [`Keyring`] of every configured backend ([`open`]), with
//! the config file's `[[pkcs11_adopt]]` keys. A TPM that cannot be opened is reported and the
//! agent serves the other backends.
//!
//! A new backend: its file here, a field in [`BackendOptions`] and [`BackendSettings`]
//! (the compiler then points at each place that lists the backends, all in this file).

pub mod pkcs11;
pub mod software;
pub mod tpm;

use std::path::Path;
use std::sync::Arc;

use anyhow::{Result, bail};
use dpop_keys::{Backend, BackendKind, Keyring};
use tracing::{info, warn};

use crate::options::{Over, read_group};
use crate::secrets::HandedSecrets;

/// Where a PIN that no file or variable holds comes from.
#[derive(Clone, Copy, Debug)]
pub enum PinPrompt {
    /// Ask at the terminal (a foreground agent).
    Terminal,
    /// No terminal: the background start asked for us and handed the PIN over.
    LaunchPipe,
}

impl PinPrompt {
    /// Whether a secret may be asked for at the terminal.
    pub fn is_terminal(self) -> bool {
        matches!(self, PinPrompt::Terminal)
    }
}

/// Every backend's flags and keys.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct BackendOptions {
    #[command(flatten)]
    pub software: software::SoftwareOptions,
    #[command(flatten, next_help_heading = "PKCS#11 token")]
    pub pkcs11: pkcs11::Pkcs11Options,
    #[command(flatten, next_help_heading = "TPM 2.0")]
    pub tpm: tpm::TpmOptions,
}

impl BackendOptions {
    /// Reads every backend's keys from the config file (see [`read_group`]).
    pub fn read(text: &str, known: &mut Vec<&'static str>) -> Result<Self, toml::de::Error> {
        Ok(BackendOptions {
            software: read_group(text, known)?,
            pkcs11: read_group(text, known)?,
            tpm: read_group(text, known)?,
        })
    }

    /// Each backend's settings; secrets in variables are read (and wiped) now, `handed`
    /// ones taken. Call it while single-threaded (it changes the environment).
    pub fn resolve(self, handed: &mut HandedSecrets) -> Result<BackendSettings> {
        Ok(BackendSettings {
            software: self.software.resolve(handed)?,
            pkcs11: self.pkcs11.resolve(handed)?,
            tpm: self.tpm.resolve(handed)?,
        })
    }
}

impl Over for BackendOptions {
    fn over(self, file: Self) -> Self {
        BackendOptions {
            software: self.software.over(file.software),
            pkcs11: self.pkcs11.over(file.pkcs11),
            tpm: self.tpm.over(file.tpm),
        }
    }
}

/// What the backends run with; `None`: not configured.
#[derive(Debug)]
pub struct BackendSettings {
    pub software: software::SoftwareSettings,
    pub pkcs11: Option<pkcs11::Pkcs11Settings>,
    pub tpm: Option<tpm::TpmSettings>,
}

impl BackendSettings {
    /// The secrets the background start hands to its child (asking at the terminal now for
    /// those that come from it: the child has none).
    pub fn hand_over(&self) -> Result<HandedSecrets> {
        let mut handed = HandedSecrets::default();
        self.software.hand_over(&mut handed);
        if let Some(p11) = &self.pkcs11 {
            p11.hand_over(&mut handed)?;
        }
        if let Some(tpm) = &self.tpm {
            tpm.hand_over(&mut handed)?;
        }
        Ok(handed)
    }

    /// `--check-config`'s lines, after checking the files they name.
    pub fn check_lines(&self) -> Result<Vec<String>> {
        let mut lines = vec![self.software.check_line()];
        if let Some(p11) = &self.pkcs11 {
            lines.push(p11.check_line()?);
        }
        if let Some(tpm) = &self.tpm {
            lines.push(tpm.check_line()?);
        }
        Ok(lines)
    }
}

/// Opens every configured backend and loads its keys. A wrong passphrase stops the start:
/// going on would encrypt new keys under a different one.
pub fn open(settings: &BackendSettings, data_dir: &Path, prompt: PinPrompt) -> Result<Keyring> {
    let mut backends: Vec<Arc<dyn Backend>> = vec![Arc::new(settings.software.open(data_dir)?)];
    if let Some(p11) = &settings.pkcs11 {
        backends.push(p11.open(data_dir, prompt)?);
    }
    if let Some(tpm) = &settings.tpm {
        match tpm.open(data_dir, prompt) {
            Ok(backend) => backends.push(backend),
            // The other backends still serve; requests for TPM keys say it is not configured.
            Err(e) => tracing::error!("TPM backend not started: {e:#}"),
        }
    }
    let keyring = Keyring::new(backends)
        .allow_client_adopt_in(
            BackendKind::Pkcs11,
            settings.pkcs11.as_ref().is_some_and(|p| p.allow_adopt),
        )
        .allow_client_adopt_in(
            BackendKind::Tpm,
            settings.tpm.as_ref().is_some_and(|t| t.allow_adopt),
        );
    for (backend, problem) in keyring.load() {
        if matches!(problem, dpop_keys::Error::WrongPassphrase { .. }) {
            bail!("{problem}; not starting");
        }
        warn!("{backend} backend: {problem}");
    }
    if let Some(p11) = &settings.pkcs11 {
        p11.adopt_configured(&keyring);
    }
    info!("{} key(s) loaded", keyring.len());
    Ok(keyring)
}
