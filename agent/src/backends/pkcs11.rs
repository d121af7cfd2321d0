//! A PKCS#11 token (an HSM, a YubiKey, SoftHSM2): its flags and keys, its PIN (from a
//! variable, a file or the terminal; asked once, never retried: tokens lock after a few
//! wrong PINs), opening it, and the `[[pkcs11_adopt]]` keys served from start-up.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Result, bail};
use dpop_keys::pkcs11::TokenSelector;
use dpop_keys::{AdoptOptions, Backend, BackendKind, KeyLabel, Keyring};
use secrecy::SecretString;
use serde::Deserialize;
use tracing::{info, warn};

use super::{ConfiguredBackend, PinPrompt};
use crate::options::{ConfigPath, Over};
use crate::secrets::{self, HandedSecrets, SecretFrom};

/// The PIN's name in the background start's hand-over.
const HANDED: &str = "pin";

/// PKCS#11 flags and keys.
#[derive(clap::Args, Deserialize, Debug, Default, Clone)]
#[serde(default)]
pub struct Pkcs11Options {
    /// PKCS#11 module to load (enables the pkcs11 backend).
    #[arg(long, value_name = "PATH", value_hint = clap::ValueHint::FilePath)]
    pub pkcs11_module: Option<ConfigPath>,

    /// PKCS#11 token label.
    #[arg(long, value_name = "LABEL")]
    pub pkcs11_token: Option<String>,

    /// PKCS#11 token serial number (instead of the label).
    #[arg(long, value_name = "SERIAL")]
    pub pkcs11_serial: Option<String>,

    /// Environment variable that holds the token PIN.
    #[arg(long, value_name = "VAR")]
    pub pkcs11_pin_env: Option<String>,

    /// File that holds the token PIN.
    #[arg(long, value_name = "FILE", value_hint = clap::ValueHint::FilePath)]
    pub pkcs11_pin_file: Option<ConfigPath>,

    /// Let clients adopt existing token keys by URI (`dpop keys adopt`); off by default, since
    /// a token key may belong to another application. `[[pkcs11_adopt]]` tables need no flag.
    #[arg(long)]
    pub pkcs11_allow_adopt: bool,

    /// Refuse token keys that can do more than sign (decrypt, unwrap, derive): a new key the
    /// token makes so is destroyed again, such a key is not adopted. Without it such keys are
    /// kept with a warning (some tokens, tpm2-pkcs11 for one, choose these flags themselves).
    #[arg(long)]
    pub pkcs11_require_sign_only: bool,

    /// Existing token keys to adopt at start-up: `[[pkcs11_adopt]]` tables, in the file only.
    #[arg(skip)]
    pub pkcs11_adopt: Vec<AdoptEntry>,
}

impl Over for Pkcs11Options {
    fn over(self, file: Self) -> Self {
        Pkcs11Options {
            pkcs11_module: self.pkcs11_module.over(file.pkcs11_module),
            pkcs11_token: self.pkcs11_token.over(file.pkcs11_token),
            pkcs11_serial: self.pkcs11_serial.over(file.pkcs11_serial),
            pkcs11_pin_env: self.pkcs11_pin_env.over(file.pkcs11_pin_env),
            pkcs11_pin_file: self.pkcs11_pin_file.over(file.pkcs11_pin_file),
            pkcs11_allow_adopt: self.pkcs11_allow_adopt.over(file.pkcs11_allow_adopt),
            pkcs11_require_sign_only: self
                .pkcs11_require_sign_only
                .over(file.pkcs11_require_sign_only),
            pkcs11_adopt: self.pkcs11_adopt.over(file.pkcs11_adopt),
        }
    }
}

/// A `[[pkcs11_adopt]]` table: an existing token key (a YubiKey's PIV key, say) to serve
/// under `label`, as `dpop keys adopt` would.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct AdoptEntry {
    /// The label to serve it under.
    pub label: String,
    /// Its RFC 7512 PKCS#11 URI.
    pub uri: String,
    /// For RSA keys: RS256 (default) or PS256.
    pub alg: Option<dpop_jose::Algorithm>,
    /// Adopt it even though it wants the PIN for each signature (`CKA_ALWAYS_AUTHENTICATE`):
    /// the agent then gives the PIN for every proof.
    #[serde(default)]
    pub always_authenticate: bool,
}

/// What the PKCS#11 backend runs with.
#[derive(Debug, Clone)]
pub struct Pkcs11Settings {
    pub module: PathBuf,
    /// The token, by label or else by serial.
    pub token: TokenSelector,
    pub pin: SecretFrom,
    pub adopt: Vec<AdoptEntry>,
    /// Whether clients may adopt token keys (`--pkcs11-allow-adopt`).
    pub allow_adopt: bool,
    /// Whether keys that can do more than sign are refused (`--pkcs11-require-sign-only`).
    pub require_sign_only: bool,
}

impl Pkcs11Options {
    /// The token's settings (`None` without a module); a PIN in a variable is read now.
    pub fn resolve(self, handed: &mut HandedSecrets) -> Result<Option<Pkcs11Settings>> {
        let Some(module) = self.pkcs11_module else {
            if !self.pkcs11_adopt.is_empty() {
                bail!("[[pkcs11_adopt]] needs pkcs11_module and pkcs11_token (or pkcs11_serial)")
            }
            return Ok(None);
        };
        let token = match (self.pkcs11_token, self.pkcs11_serial) {
            (Some(label), _) => TokenSelector::Label(label),
            (None, Some(serial)) => TokenSelector::Serial(serial),
            (None, None) => {
                bail!("--pkcs11-module needs --pkcs11-token LABEL or --pkcs11-serial SERIAL")
            }
        };
        let (env, file) = (self.pkcs11_pin_env, self.pkcs11_pin_file);
        if env.is_some() && file.is_some() {
            bail!("give either --pkcs11-pin-env or --pkcs11-pin-file, not both");
        }
        // Without a variable or a file, the terminal.
        let pin = secrets::secret_from(
            env.as_deref(),
            file.as_deref(),
            true,
            handed.take(HANDED),
            BackendKind::Pkcs11,
        )?
        .expect("prompt is the default");
        Ok(Some(Pkcs11Settings {
            module: module.into_path_buf(),
            token,
            pin,
            adopt: self.pkcs11_adopt,
            allow_adopt: self.pkcs11_allow_adopt,
            require_sign_only: self.pkcs11_require_sign_only,
        }))
    }
}

impl ConfiguredBackend for Pkcs11Settings {
    fn kind(&self) -> BackendKind {
        BackendKind::Pkcs11
    }

    fn name(&self) -> &'static str {
        "PKCS#11"
    }

    /// The PIN, asked for now if it comes from the terminal.
    fn hand_over(&self, handed: &mut HandedSecrets) -> Result<()> {
        handed.put(HANDED, self.pin.for_child(|| prompt(&self.token))?);
        Ok(())
    }

    fn check_line(&self) -> Result<String> {
        if !self.module.is_file() {
            bail!("pkcs11_module {} is not a file", self.module.display());
        }
        if let SecretFrom::Source(dpop_keys::pkcs11::PinSource::File(path)) = &self.pin
            && !path.is_file()
        {
            bail!("pkcs11_pin_file {} is not a file", path.display());
        }
        Ok(format!(
            "pkcs11: module {}, {}, {} key(s) to adopt at start{}",
            self.module.display(),
            self.token,
            self.adopt.len(),
            if self.require_sign_only {
                ", sign-only keys required"
            } else {
                ""
            }
        ))
    }

    /// Opens the token once. A refused PIN is reported and never retried: tokens lock after
    /// a few wrong PINs.
    #[cfg(feature = "pkcs11")]
    fn open(&self, data_dir: &Path, prompt_with: PinPrompt) -> Result<Arc<dyn Backend>> {
        use anyhow::Context;
        use dpop_keys::pkcs11::{Pkcs11Backend, Pkcs11Config};

        let token = &self.token;
        let pin = self
            .pin
            .read(BackendKind::Pkcs11, prompt_with.is_terminal(), || {
                prompt(token)
            })?;
        dpop_keys::create_private_dir(data_dir)?;
        let config = Pkcs11Config {
            // The agent is the module's only user in its process.
            reinitialize_module: true,
            ..Pkcs11Config::new(&self.module, token.clone(), pin, data_dir.join("pkcs11"))
        };
        // dpop-keys' errors name the module file themselves; saying it here too printed it
        // twice.
        let backend = Pkcs11Backend::open(config)
            .with_context(|| format!("opening the PKCS#11 {token}"))?
            .require_sign_only(self.require_sign_only);
        info!(module = %backend.module_path().display(), "PKCS#11 {token} ready");
        Ok(Arc::new(backend))
    }

    /// Built without the backend: say so before asking for a PIN.
    #[cfg(not(feature = "pkcs11"))]
    fn open(&self, _: &Path, _: PinPrompt) -> Result<Arc<dyn Backend>> {
        let missing = dpop_keys::Error::BackendNotCompiled {
            backend: BackendKind::Pkcs11,
        };
        bail!(
            "cannot use {}: {}",
            self.module.display(),
            crate::wire_error::describe(&missing)
        )
    }

    fn allow_client_adopt(&self) -> bool {
        self.allow_adopt
    }

    /// Adopts the `[[pkcs11_adopt]]` keys that are not served yet. A key that cannot be
    /// adopted is reported and the agent starts without it.
    fn loaded(&self, keyring: &Keyring) {
        for entry in &self.adopt {
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
                    warn!(
                        "[[pkcs11_adopt]] {label}: a key with this label exists in another backend"
                    );
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
}

/// Asks for the token's PIN at the terminal.
fn prompt(token: &TokenSelector) -> Result<SecretString> {
    secrets::prompt(
        &format!("PIN for the PKCS#11 {token}: "),
        "PIN",
        "--pkcs11-pin-env / --pkcs11-pin-file",
    )
}
