//! Opens the backends that the settings ask for and puts them in one [`Keyring`]: software
//! always, the PKCS#11 token when a module is configured (its PIN asked once, never retried),
//! the TPM when a TCTI is configured, and the config file's `[[pkcs11_adopt]]` keys. A TPM
//! that cannot be opened is reported and the agent serves the other backends.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Result, bail};
use dpop_keys::pkcs11::TokenSelector;
use dpop_keys::software::SoftwareBackend;
use dpop_keys::{AdoptOptions, Backend, BackendKind, KeyLabel, Keyring};
use tracing::{info, warn};

use crate::config::{AdoptEntry, Pkcs11Settings, Settings, TpmSettings};

/// Where a PIN that no file or variable holds comes from.
#[derive(Clone, Copy, Debug)]
pub enum PinPrompt {
    /// Ask at the terminal (a foreground agent).
    Terminal,
    /// No terminal: the background start asked for us and handed the PIN over.
    LaunchPipe,
}

/// Opens every configured backend and loads its keys. A wrong passphrase stops the start:
/// going on would encrypt new keys under a different one.
pub fn open(settings: &Settings, prompt: PinPrompt) -> Result<Keyring> {
    let mut backends: Vec<Arc<dyn Backend>> = vec![Arc::new(software(settings)?)];
    if let Some(p11) = &settings.pkcs11 {
        backends.push(pkcs11(p11, &settings.data_dir, prompt)?);
    }
    if let Some(tpm_settings) = &settings.tpm {
        match tpm(tpm_settings, &settings.data_dir, prompt) {
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
        adopt_configured(&keyring, &p11.adopt);
    }
    info!("{} key(s) loaded", keyring.len());
    Ok(keyring)
}

fn software(settings: &Settings) -> Result<SoftwareBackend> {
    let dir = settings.data_dir.join("software");
    if let Some(passphrase) = &settings.passphrase {
        dpop_keys::create_private_dir(&settings.data_dir)?;
        return Ok(SoftwareBackend::persistent(dir, passphrase.clone())?);
    }
    let backend = SoftwareBackend::ephemeral_beside(dir.clone());
    warn!(
        "no passphrase (DPOP_AGENT_PASSPHRASE or --passphrase-file): software keys are kept in \
         memory only and lost when the agent stops"
    );
    let unloaded = backend.unloaded_key_files();
    if unloaded > 0 {
        warn!(
            "{unloaded} software key file(s) in {} not loaded without the passphrase",
            dir.display()
        );
    }
    Ok(backend)
}

/// The token the settings name (by label, else by serial).
pub fn token_selector(p11: &Pkcs11Settings) -> TokenSelector {
    match (&p11.token, &p11.serial) {
        (Some(label), _) => TokenSelector::Label(label.clone()),
        (None, Some(serial)) => TokenSelector::Serial(serial.clone()),
        (None, None) => unreachable!("Settings::load requires a token label or serial"),
    }
}

/// Opens the token once. A refused PIN is reported and never retried: tokens lock after a
/// few wrong PINs.
#[cfg(feature = "pkcs11")]
fn pkcs11(p11: &Pkcs11Settings, data_dir: &Path, prompt: PinPrompt) -> Result<Arc<dyn Backend>> {
    use anyhow::Context;
    use dpop_keys::pkcs11::{Pkcs11Backend, Pkcs11Config};

    use crate::{config::PinFrom, pin};

    let token = token_selector(p11);
    let pin = match (&p11.pin, prompt) {
        (PinFrom::Source(source), _) => source.resolve()?,
        (PinFrom::Read(pin), _) => pin.clone(),
        // The background start asks and hands the PIN over (as `PinFrom::Read`).
        (PinFrom::Prompt, PinPrompt::LaunchPipe) => bail!("the background start passed no PIN"),
        (PinFrom::Prompt, PinPrompt::Terminal) => pin::prompt(&token)?,
    };
    dpop_keys::create_private_dir(data_dir)?;
    let config = Pkcs11Config {
        // The agent is the module's only user in its process.
        reinitialize_module: true,
        ..Pkcs11Config::new(&p11.module, token.clone(), pin, data_dir.join("pkcs11"))
    };
    // dpop-keys' errors name the module file themselves; saying it here too printed it twice.
    let backend =
        Pkcs11Backend::open(config).with_context(|| format!("opening the PKCS#11 {token}"))?;
    info!(module = %backend.module_path().display(), "PKCS#11 {token} ready");
    Ok(Arc::new(backend))
}

/// Built without the backend: say so before asking for a PIN.
#[cfg(not(feature = "pkcs11"))]
fn pkcs11(p11: &Pkcs11Settings, _: &Path, _: PinPrompt) -> Result<Arc<dyn Backend>> {
    let missing = dpop_keys::Error::BackendNotCompiled {
        backend: BackendKind::Pkcs11,
    };
    bail!(
        "cannot use {}: {}",
        p11.module.display(),
        crate::wire_error::describe(&missing)
    )
}

/// Opens the TPM backend. An unreachable TPM is no error here (keys answer
/// `token_not_present` until it is back); a bad TCTI or auth source is.
#[cfg(feature = "tpm")]
fn tpm(settings: &TpmSettings, data_dir: &Path, prompt: PinPrompt) -> Result<Arc<dyn Backend>> {
    use dpop_keys::tpm::{TpmBackend, TpmConfig};

    use crate::config::PinFrom;
    use crate::pin;

    let auth = match (&settings.auth, prompt) {
        (None, _) => None,
        (Some(PinFrom::Source(source)), _) => Some(source.resolve_for(BackendKind::Tpm)?),
        (Some(PinFrom::Read(auth)), _) => Some(auth.clone()),
        (Some(PinFrom::Prompt), PinPrompt::LaunchPipe) => {
            bail!("the background start passed no TPM auth value")
        }
        (Some(PinFrom::Prompt), PinPrompt::Terminal) => Some(pin::prompt_tpm_auth()?),
    };
    dpop_keys::create_private_dir(data_dir)?;
    let config = TpmConfig {
        auth,
        ..TpmConfig::new(&settings.tcti, data_dir.join("tpm"))
    };
    let backend = TpmBackend::open(config)?;
    info!(tcti = %backend.tcti(), "TPM backend ready");
    Ok(Arc::new(backend))
}

/// Built without the backend: say so.
#[cfg(not(feature = "tpm"))]
fn tpm(settings: &TpmSettings, _: &Path, _: PinPrompt) -> Result<Arc<dyn Backend>> {
    let missing = dpop_keys::Error::BackendNotCompiled {
        backend: BackendKind::Tpm,
    };
    bail!(
        "cannot use the TPM at {}: {}",
        settings.tcti,
        crate::wire_error::describe(&missing)
    )
}

/// Adopts the config file's `[[pkcs11_adopt]]` keys that are not served yet. A key that
/// cannot be adopted is reported and the agent starts without it.
fn adopt_configured(keyring: &Keyring, entries: &[AdoptEntry]) {
    for entry in entries {
        let label = match KeyLabel::new(&entry.label) {
            Ok(label) => label,
            Err(e) => {
                warn!("[[pkcs11_adopt]] {:?}: {e}", entry.label);
                continue;
            }
        };
        match keyring.get(label.as_str()) {
            Ok(key) if key.meta().info().backend == BackendKind::Pkcs11 => continue,
            Ok(_) => {
                warn!("[[pkcs11_adopt]] {label}: a key with this label exists in another backend");
                continue;
            }
            Err(_) => {}
        }
        let options = AdoptOptions {
            always_authenticate: entry.always_authenticate,
        };
        match keyring.adopt_configured(
            Some(BackendKind::Pkcs11),
            &entry.uri,
            &label,
            entry.alg,
            options,
        ) {
            Ok(key) => {
                info!(label = %label, jkt = %key.meta().info().jkt, "adopted from the config file")
            }
            Err(e) => warn!(
                "[[pkcs11_adopt]] {label}: {}",
                crate::wire_error::describe(&e)
            ),
        }
    }
}
