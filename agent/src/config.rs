//! Command line and TOML configuration, merged into [`Settings`]. Each flag has a config key of
//! the same name (`--data-dir` is `data_dir`); the command line wins.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Parser;
use dpop_keys::pkcs11::PinSource;
use secrecy::SecretString;
use serde::Deserialize;

use crate::socket::SocketLocation;

/// dpop-agent: keeps DPoP private keys where they cannot leave and signs proofs for local
/// clients over a Unix socket.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
pub struct Args {
    /// Stay in the foreground (do not fork); logs go to standard error.
    #[arg(short = 'D', long = "foreground")]
    pub foreground: bool,

    /// Stop the agent named by DPOP_AUTH_SOCK (or DPOP_AGENT_PID).
    #[arg(short = 'k', long = "kill")]
    pub kill: bool,

    /// Bind the socket at this path (default: $XDG_RUNTIME_DIR/dpop-agent/agent.sock).
    #[arg(short = 'a', long = "socket", value_name = "SOCKET")]
    pub socket: Option<PathBuf>,

    /// TOML configuration file (default: $XDG_CONFIG_HOME/dpop-agent/config.toml if present).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Where keys and key records live (default: $XDG_DATA_HOME/dpop-agent).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Read the software-key passphrase from this file (else DPOP_AGENT_PASSPHRASE).
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,

    /// Keep software keys in memory only, even with a passphrase.
    #[arg(long)]
    pub ephemeral: bool,

    /// PKCS#11 module to load (enables the pkcs11 backend).
    #[arg(long, value_name = "PATH")]
    pub pkcs11_module: Option<PathBuf>,

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
    #[arg(long, value_name = "FILE")]
    pub pkcs11_pin_file: Option<PathBuf>,

    /// Let clients adopt existing token keys by URI (`dpop keys adopt`); off by default, since
    /// a token key may belong to another application. `[[pkcs11_adopt]]` tables need no flag.
    #[arg(long)]
    pub pkcs11_allow_adopt: bool,

    /// In the background, append logs to this file (default: discard them).
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,

    /// Set by the background start: report readiness on standard output, then detach
    /// standard error and output from the parent.
    #[arg(long, hide = true)]
    pub detached: bool,

    /// TPM TCTI (reserved for the tpm backend).
    #[arg(long, value_name = "TCTI")]
    pub tpm_tcti: Option<String>,
}

/// The TOML file; keys are the long flag names with `_`.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    socket: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    passphrase_file: Option<PathBuf>,
    ephemeral: Option<bool>,
    pkcs11_module: Option<PathBuf>,
    pkcs11_token: Option<String>,
    pkcs11_serial: Option<String>,
    pkcs11_pin_env: Option<String>,
    pkcs11_pin_file: Option<PathBuf>,
    pkcs11_allow_adopt: Option<bool>,
    tpm_tcti: Option<String>,
    log_file: Option<PathBuf>,
    /// Existing token keys to adopt at start-up (`[[pkcs11_adopt]]` tables).
    #[serde(default)]
    pkcs11_adopt: Vec<AdoptEntry>,
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

/// Where the PKCS#11 PIN comes from; never the command line in clear.
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "pkcs11"), allow(dead_code))]
pub enum PinFrom {
    /// An environment variable or a file.
    Source(dpop_keys::pkcs11::PinSource),
    /// The terminal.
    Prompt,
}

/// PKCS#11 settings.
#[derive(Debug, Clone)]
pub struct Pkcs11Settings {
    pub module: PathBuf,
    pub token: Option<String>,
    pub serial: Option<String>,
    pub pin: PinFrom,
    pub adopt: Vec<AdoptEntry>,
    /// Whether clients may adopt token keys (`--pkcs11-allow-adopt`).
    pub allow_adopt: bool,
}

/// Everything the agent runs with.
#[derive(Debug)]
pub struct Settings {
    pub socket: Option<PathBuf>,
    pub data_dir: PathBuf,
    pub passphrase: Option<SecretString>,
    pub pkcs11: Option<Pkcs11Settings>,
    pub tpm_tcti: Option<String>,
    pub log_file: Option<PathBuf>,
}

fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn home_sub(sub: &str) -> Option<PathBuf> {
    env_path("HOME").map(|h| h.join(sub))
}

/// Reads a secret from a file, dropping one trailing newline.
pub fn read_secret_file(path: &Path, what: &str) -> Result<SecretString> {
    let mut text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the {what} file {}", path.display()))?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.is_empty() {
        bail!("the {what} file {} is empty", path.display());
    }
    Ok(SecretString::from(text))
}

/// What [`Settings::load`] does with secrets it reads from the environment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnvSecrets {
    /// Remove them, so that no child process inherits them (the agent itself).
    Consume,
    /// Leave them for the child that will read them (the background start).
    Keep,
}

impl Settings {
    /// Merges flags over the config file and reads the passphrase.
    pub fn load(args: &Args, env_secrets: EnvSecrets) -> Result<Settings> {
        let config_path = args.config.clone().or_else(|| {
            let p = env_path("XDG_CONFIG_HOME")
                .or_else(|| home_sub(".config"))?
                .join("dpop-agent/config.toml");
            p.exists().then_some(p)
        });
        let file = match &config_path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .with_context(|| format!("parsing config file {}", path.display()))?
            }
            None => FileConfig::default(),
        };

        let data_dir = args
            .data_dir
            .clone()
            .or(file.data_dir)
            .or_else(|| {
                Some(
                    env_path("XDG_DATA_HOME")
                        .or_else(|| home_sub(".local/share"))?
                        .join("dpop-agent"),
                )
            })
            .context("no data directory: pass --data-dir or set HOME")?;

        let env_passphrase = std::env::var("DPOP_AGENT_PASSPHRASE").ok();
        if env_secrets == EnvSecrets::Consume {
            // SAFETY: called from main before any other thread exists.
            unsafe { std::env::remove_var("DPOP_AGENT_PASSPHRASE") };
        }
        let ephemeral = args.ephemeral || file.ephemeral.unwrap_or(false);
        let passphrase = match args.passphrase_file.clone().or(file.passphrase_file) {
            Some(path) => Some(read_secret_file(&path, "passphrase")?),
            None => env_passphrase
                .filter(|p| !p.is_empty())
                .map(SecretString::from),
        };
        let passphrase = if ephemeral { None } else { passphrase };

        let pkcs11 = match args.pkcs11_module.clone().or(file.pkcs11_module) {
            None if !file.pkcs11_adopt.is_empty() => {
                bail!("[[pkcs11_adopt]] needs pkcs11_module and pkcs11_token (or pkcs11_serial)")
            }
            None => None,
            Some(module) => {
                let token = args.pkcs11_token.clone().or(file.pkcs11_token);
                let serial = args.pkcs11_serial.clone().or(file.pkcs11_serial);
                if token.is_none() && serial.is_none() {
                    bail!("--pkcs11-module needs --pkcs11-token LABEL or --pkcs11-serial SERIAL");
                }
                let pin = match (
                    args.pkcs11_pin_env.clone().or(file.pkcs11_pin_env),
                    args.pkcs11_pin_file.clone().or(file.pkcs11_pin_file),
                ) {
                    (Some(_), Some(_)) => {
                        bail!("give either --pkcs11-pin-env or --pkcs11-pin-file, not both")
                    }
                    (Some(var), None) => PinFrom::Source(PinSource::Env(var)),
                    (None, Some(path)) => PinFrom::Source(PinSource::File(path)),
                    (None, None) => PinFrom::Prompt,
                };
                Some(Pkcs11Settings {
                    module,
                    token,
                    serial,
                    pin,
                    adopt: file.pkcs11_adopt.clone(),
                    allow_adopt: args.pkcs11_allow_adopt
                        || file.pkcs11_allow_adopt.unwrap_or(false),
                })
            }
        };
        Ok(Settings {
            socket: args.socket.clone().or(file.socket),
            data_dir,
            passphrase,
            pkcs11,
            tpm_tcti: args.tpm_tcti.clone().or(file.tpm_tcti),
            log_file: args.log_file.clone().or(file.log_file),
        })
    }

    /// Where the socket goes: the configured path, or the default one.
    pub fn socket_location(&self) -> SocketLocation {
        match &self.socket {
            Some(path) => SocketLocation::Given(path.clone()),
            None => SocketLocation::Default(crate::socket::default_path()),
        }
    }
}
