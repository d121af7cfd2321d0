//! Software keys: encrypted key files under the data directory when the agent has a
//! passphrase, memory only otherwise (or with `--ephemeral`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use dpop_keys::software::SoftwareBackend;
use dpop_keys::{Backend, BackendKind};
use secrecy::SecretString;
use serde::Deserialize;
use tracing::warn;

use super::{ConfiguredBackend, PinPrompt};
use crate::options::{ConfigPath, Over};
use crate::secrets::{HandedSecrets, read_secret_file, take_env_secret};

/// The variable that holds the passphrase (wiped from the environment once read).
pub const PASSPHRASE_VAR: &str = "DPOP_AGENT_PASSPHRASE";

/// The passphrase's name in the background start's hand-over.
const HANDED: &str = "passphrase";

/// Software-key flags and keys.
#[derive(clap::Args, Deserialize, Debug, Default, Clone)]
#[serde(default)]
pub struct SoftwareOptions {
    /// Read the software-key passphrase from this file (else DPOP_AGENT_PASSPHRASE).
    #[arg(long, value_name = "FILE", value_hint = clap::ValueHint::FilePath)]
    pub passphrase_file: Option<ConfigPath>,

    /// Keep software keys in memory only, even with a passphrase.
    #[arg(long)]
    pub ephemeral: bool,
}

impl Over for SoftwareOptions {
    fn over(self, file: Self) -> Self {
        SoftwareOptions {
            passphrase_file: self.passphrase_file.over(file.passphrase_file),
            ephemeral: self.ephemeral.over(file.ephemeral),
        }
    }
}

/// What the software backend runs with.
#[derive(Debug)]
pub struct SoftwareSettings {
    /// `None`: keys in memory only.
    pub passphrase: Option<SecretString>,
    /// The file the passphrase was read from (`None`: the environment, or none at all).
    pub passphrase_file: Option<PathBuf>,
}

impl SoftwareOptions {
    /// Reads the passphrase: handed over by the background start, else from the file, else
    /// from [`PASSPHRASE_VAR`] (which is wiped from the environment in any case).
    pub fn resolve(self, handed: &mut HandedSecrets) -> Result<SoftwareSettings> {
        let from_env = take_env_secret(PASSPHRASE_VAR);
        let passphrase_file = self.passphrase_file.map(ConfigPath::into_path_buf);
        let passphrase = match (handed.take(HANDED), &passphrase_file) {
            (Some(handed), _) => Some(handed),
            (None, Some(path)) => Some(read_secret_file(path, "passphrase")?),
            (None, None) => from_env,
        };
        Ok(SoftwareSettings {
            passphrase: if self.ephemeral { None } else { passphrase },
            passphrase_file,
        })
    }
}

impl ConfiguredBackend for SoftwareSettings {
    fn kind(&self) -> BackendKind {
        BackendKind::Software
    }

    fn name(&self) -> &'static str {
        "software"
    }

    /// The passphrase, unless the child reads a file itself (and warns about its mode in its
    /// own log).
    fn hand_over(&self, handed: &mut HandedSecrets) -> Result<()> {
        if self.passphrase_file.is_none() {
            handed.put(HANDED, self.passphrase.clone());
        }
        Ok(())
    }

    fn check_line(&self) -> Result<String> {
        Ok(match (&self.passphrase, &self.passphrase_file) {
            (Some(_), Some(file)) => {
                format!("software keys: saved, passphrase from {}", file.display())
            }
            (Some(_), None) => format!("software keys: saved, passphrase from {PASSPHRASE_VAR}"),
            (None, _) => "software keys: memory only (no passphrase)".into(),
        })
    }

    /// The key store under `data_dir`, or memory only, saying what that means.
    fn open(&self, data_dir: &Path, _: PinPrompt) -> Result<Arc<dyn Backend>> {
        let dir = data_dir.join("software");
        if let Some(passphrase) = &self.passphrase {
            dpop_keys::create_private_dir(data_dir)?;
            return Ok(Arc::new(SoftwareBackend::persistent(
                dir,
                passphrase.clone(),
            )?));
        }
        let backend = SoftwareBackend::ephemeral_beside(dir.clone());
        warn!(
            "no passphrase ({PASSPHRASE_VAR} or --passphrase-file): software keys are kept in \
             memory only and lost when the agent stops"
        );
        let unloaded = backend.unloaded_key_files();
        if unloaded > 0 {
            warn!(
                "{unloaded} software key file(s) in {} not loaded without the passphrase",
                dir.display()
            );
        }
        Ok(Arc::new(backend))
    }
}
