//! The TPM 2.0 (an agent built with the cargo feature `tpm`): its flags and keys, the keys'
//! auth value (from a variable, a file or the terminal), and opening it. A TPM that cannot be
//! reached is no error at start-up: its keys answer `token_not_present` until it is back.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Result, bail};
use dpop_keys::{Backend, BackendKind};
use secrecy::SecretString;
use serde::Deserialize;

use super::{ConfiguredBackend, PinPrompt};
use crate::options::{ConfigPath, Over};
use crate::secrets::{self, HandedSecrets, SecretFrom};

/// The auth value's name in the background start's hand-over.
const HANDED: &str = "tpm_auth";

/// What a TPM key's auth value is called in messages.
pub const TPM_AUTH: &str = "TPM auth value";

/// TPM flags and keys.
#[derive(clap::Args, Deserialize, Debug, Default, Clone)]
#[serde(default)]
pub struct TpmOptions {
    /// Use the TPM 2.0 at the default TCTI (device:/dev/tpmrm0, the kernel's resource
    /// manager); --tpm-tcti names another.
    #[arg(long)]
    pub tpm: bool,

    /// TPM TCTI (enables the tpm backend): device:/dev/tpmrm0, tabrmd:, or
    /// swtpm:host=H,port=P.
    #[arg(long, value_name = "TCTI")]
    pub tpm_tcti: Option<String>,

    /// Environment variable that holds the TPM keys' auth value (new keys get it; keys made
    /// with one need it).
    #[arg(long, value_name = "VAR")]
    pub tpm_auth_env: Option<String>,

    /// File that holds the TPM keys' auth value.
    #[arg(long, value_name = "FILE", value_hint = clap::ValueHint::FilePath)]
    pub tpm_auth_file: Option<ConfigPath>,

    /// Ask for the TPM keys' auth value on the terminal at start-up.
    #[arg(long)]
    pub tpm_auth_prompt: bool,

    /// Let clients adopt persistent TPM keys by handle (`dpop keys adopt tpm:handle=0x81..`).
    #[arg(long)]
    pub tpm_allow_adopt: bool,
}

impl Over for TpmOptions {
    fn over(self, file: Self) -> Self {
        TpmOptions {
            tpm: self.tpm.over(file.tpm),
            tpm_tcti: self.tpm_tcti.over(file.tpm_tcti),
            tpm_auth_env: self.tpm_auth_env.over(file.tpm_auth_env),
            tpm_auth_file: self.tpm_auth_file.over(file.tpm_auth_file),
            tpm_auth_prompt: self.tpm_auth_prompt.over(file.tpm_auth_prompt),
            tpm_allow_adopt: self.tpm_allow_adopt.over(file.tpm_allow_adopt),
        }
    }
}

/// What the TPM backend runs with.
#[derive(Debug, Clone)]
pub struct TpmSettings {
    /// The TCTI (`device:/dev/tpmrm0` unless configured).
    pub tcti: String,
    /// Where the keys' auth value comes from; `None`: keys without one.
    pub auth: Option<SecretFrom>,
    /// Whether clients may adopt persistent TPM keys (`--tpm-allow-adopt`).
    pub allow_adopt: bool,
}

impl TpmOptions {
    /// The TPM's settings (`None` without `--tpm` or a TCTI); an auth value in a variable is
    /// read now.
    pub fn resolve(self, handed: &mut HandedSecrets) -> Result<Option<TpmSettings>> {
        let (env, file, prompt) = (self.tpm_auth_env, self.tpm_auth_file, self.tpm_auth_prompt);
        if self.tpm_tcti.is_none() && !self.tpm {
            if env.is_some() || file.is_some() || prompt {
                bail!("--tpm-auth-* needs --tpm or --tpm-tcti");
            }
            return Ok(None);
        }
        if usize::from(env.is_some()) + usize::from(file.is_some()) + usize::from(prompt) > 1 {
            bail!("give one of --tpm-auth-env, --tpm-auth-file and --tpm-auth-prompt, not several");
        }
        let auth = secrets::secret_from(
            env.as_deref(),
            file.as_deref(),
            prompt,
            handed.take(HANDED),
            BackendKind::Tpm,
        )?;
        Ok(Some(TpmSettings {
            tcti: self
                .tpm_tcti
                .unwrap_or_else(|| dpop_keys::tpm::DEFAULT_TCTI.to_owned()),
            auth,
            allow_adopt: self.tpm_allow_adopt,
        }))
    }
}

impl ConfiguredBackend for TpmSettings {
    fn kind(&self) -> BackendKind {
        BackendKind::Tpm
    }

    fn name(&self) -> &'static str {
        "TPM"
    }

    /// The auth value, asked for now if it comes from the terminal.
    fn hand_over(&self, handed: &mut HandedSecrets) -> Result<()> {
        if let Some(auth) = &self.auth {
            handed.put(HANDED, auth.for_child(prompt)?);
        }
        Ok(())
    }

    /// After checking the auth value's file.
    fn check_line(&self) -> Result<String> {
        if let Some(SecretFrom::Source(dpop_keys::pkcs11::PinSource::File(path))) = &self.auth
            && !path.is_file()
        {
            bail!("tpm_auth_file {} is not a file", path.display());
        }
        Ok(format!("tpm: {}", self.tcti))
    }

    /// Opens the TPM backend. An unreachable TPM is no error here (keys answer
    /// `token_not_present` until it is back); a bad TCTI or auth source is.
    #[cfg(feature = "tpm")]
    fn open(&self, data_dir: &Path, prompt_with: PinPrompt) -> Result<Arc<dyn Backend>> {
        use dpop_keys::tpm::{TpmBackend, TpmConfig};

        let auth = match &self.auth {
            Some(from) => Some(from.read(BackendKind::Tpm, prompt_with.is_terminal(), prompt)?),
            None => None,
        };
        dpop_keys::create_private_dir(data_dir)?;
        let config = TpmConfig {
            auth,
            ..TpmConfig::new(&self.tcti, data_dir.join("tpm"))
        };
        let backend = TpmBackend::open(config)?;
        tracing::info!(tcti = %backend.tcti(), "TPM backend ready");
        Ok(Arc::new(backend))
    }

    /// Built without the backend: say so.
    #[cfg(not(feature = "tpm"))]
    fn open(&self, _: &Path, _: PinPrompt) -> Result<Arc<dyn Backend>> {
        let missing = dpop_keys::Error::BackendNotCompiled {
            backend: BackendKind::Tpm,
        };
        bail!(
            "cannot use the TPM at {}: {}",
            self.tcti,
            crate::wire_error::describe(&missing)
        )
    }

    /// The agent serves the other backends while the TPM cannot be opened.
    fn required(&self) -> bool {
        false
    }

    fn allow_client_adopt(&self) -> bool {
        self.allow_adopt
    }
}

/// Asks for the TPM keys' auth value at the terminal.
fn prompt() -> Result<SecretString> {
    secrets::prompt(
        "Auth value for the TPM keys: ",
        TPM_AUTH,
        "--tpm-auth-env / --tpm-auth-file",
    )
}
