//! The key backends as the agent configures and opens them, one file per backend, each owning
//! its flags and keys (an options struct, see [`crate::options`]), its settings and secret,
//! opening it, and its `--check-config` line: [`software`], [`pkcs11`], [`tpm`]. This file
//! lists them once: the flags of all of them ([`BackendOptions`]), what they run with
//! ([`BackendSettings`]), and one [`Keyring`] of every configured backend ([`open`]), with
//! the config file's `[[pkcs11_adopt]]` keys. A TPM that cannot be opened is reported and the
//! agent serves the other backends.
//!
//! A new backend: its file here (options, settings, and [`ConfiguredBackend`] for them), a
//! field in [`BackendOptions`] and [`BackendSettings`]; the compiler then points at the four
//! places in this file that list the backends.

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

/// What the agent does with a configured backend; implemented by each backend's settings.
pub trait ConfiguredBackend {
    /// The backend, as the keyring knows it.
    fn kind(&self) -> BackendKind;

    /// Its name in start-up messages.
    fn name(&self) -> &'static str;

    /// Puts the secret the background start's child cannot read itself in `handed`, asking
    /// for it at the terminal now if it comes from there.
    fn hand_over(&self, handed: &mut HandedSecrets) -> Result<()>;

    /// `--check-config`'s line, after checking the files the settings name.
    fn check_line(&self) -> Result<String>;

    /// Opens the backend (its keys are loaded later, by the keyring).
    fn open(&self, data_dir: &Path, prompt: PinPrompt) -> Result<Arc<dyn Backend>>;

    /// Whether the agent refuses to start without it (a TPM that is down is reported, and the
    /// other backends serve).
    fn required(&self) -> bool {
        true
    }

    /// Whether clients may adopt its existing keys (`dpop keys adopt`).
    fn allow_client_adopt(&self) -> bool {
        false
    }

    /// Once the keyring holds the stored keys: keys the configuration adopts at start-up.
    fn loaded(&self, _keyring: &Keyring) {}
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
    /// Drops the settings' copies of secrets read at start-up (the passphrase, and a PIN or
    /// auth value from a variable or the background start's hand-over) once the backends are
    /// open: each backend keeps its own, sealed while the agent is locked, and these copies
    /// would otherwise stay in memory for the agent's whole life.
    pub fn forget_secrets(&mut self) {
        self.software.passphrase = None;
        if let Some(pkcs11) = &mut self.pkcs11 {
            pkcs11.pin.forget();
        }
        if let Some(auth) = self.tpm.as_mut().and_then(|tpm| tpm.auth.as_mut()) {
            auth.forget();
        }
    }

    /// The configured backends, in the order they are opened.
    fn configured(&self) -> Vec<&dyn ConfiguredBackend> {
        let BackendSettings {
            software,
            pkcs11,
            tpm,
        } = self;
        let mut configured: Vec<&dyn ConfiguredBackend> = vec![software];
        configured.extend(pkcs11.as_ref().map(|b| b as &dyn ConfiguredBackend));
        configured.extend(tpm.as_ref().map(|b| b as &dyn ConfiguredBackend));
        configured
    }

    /// The secrets the background start hands to its child (asking at the terminal now for
    /// those that come from it: the child has none).
    pub fn hand_over(&self) -> Result<HandedSecrets> {
        let mut handed = HandedSecrets::default();
        for backend in self.configured() {
            backend.hand_over(&mut handed)?;
        }
        Ok(handed)
    }

    /// `--check-config`'s lines, after checking the files they name.
    pub fn check_lines(&self) -> Result<Vec<String>> {
        self.configured().iter().map(|b| b.check_line()).collect()
    }
}

/// Opens every configured backend and loads its keys. A wrong passphrase stops the start:
/// going on would encrypt new keys under a different one.
pub fn open(settings: &BackendSettings, data_dir: &Path, prompt: PinPrompt) -> Result<Keyring> {
    let configured = settings.configured();
    let mut backends = Vec::with_capacity(configured.len());
    for backend in &configured {
        match backend.open(data_dir, prompt) {
            Ok(opened) => backends.push(opened),
            Err(e) if backend.required() => return Err(e),
            // Requests for its keys say it is not configured.
            Err(e) => tracing::error!("{} backend not started: {e:#}", backend.name()),
        }
    }
    let mut keyring = Keyring::new(backends);
    for backend in &configured {
        keyring = keyring.allow_client_adopt_in(backend.kind(), backend.allow_client_adopt());
    }
    for (backend, problem) in keyring.load() {
        if matches!(problem, dpop_keys::Error::WrongPassphrase { .. }) {
            bail!("{problem}; not starting");
        }
        warn!("{backend} backend: {problem}");
    }
    for backend in &configured {
        backend.loaded(&keyring);
    }
    info!("{} key(s) loaded", keyring.len());
    Ok(keyring)
}
