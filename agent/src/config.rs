//! Command line and TOML configuration, merged into [`Settings`]. Each flag has a config key of
//! the same name (`--data-dir` is `data_dir`); the command line wins.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Parser;
use dpop_keys::pkcs11::PinSource;
use secrecy::SecretString;
use serde::Deserialize;

#[cfg(unix)]
use crate::socket::SocketLocation;

const EXAMPLES: &str = "Examples:
  eval \"$(dpop-agent)\"                 start in the background (sh; -c for csh)
  out=$(dpop-agent) && eval \"$out\"     the same, failing a CI job when the start fails
  eval \"$(dpop-agent --reuse)\"         reuse a live agent, or start one
  dpop-agent -t 8h                       keys added without a lifetime expire after 8 hours
  dpop-agent -D --pkcs11-module /usr/lib/softhsm/libsofthsm2.so --pkcs11-token dpop
  eval \"$(dpop-agent -k)\"              stop it";

/// dpop-agent: keeps DPoP private keys where they cannot leave and signs proofs for local
/// clients over a Unix socket (a named pipe on Windows).
#[derive(Parser, Debug)]
#[command(name = "dpop-agent", version, about, long_about = None, after_help = EXAMPLES)]
pub struct Args {
    /// Stay in the foreground (do not fork); logs go to standard error.
    #[arg(short = 'D', long = "foreground")]
    pub foreground: bool,

    /// Stop the agent named by DPOP_AUTH_SOCK (or DPOP_AGENT_PID), wait until it is gone, and
    /// print the shell commands that forget it.
    #[arg(short = 'k', long = "kill")]
    pub kill: bool,

    /// Print C shell commands (`setenv`); the default when $SHELL ends in csh.
    #[arg(short = 'c', conflicts_with = "sh")]
    pub csh: bool,

    /// Print Bourne shell commands (`VAR=value; export VAR;`); the default otherwise.
    #[arg(short = 's')]
    pub sh: bool,

    /// When an agent of ours already listens on DPOP_AUTH_SOCK or on the configured (or
    /// default) socket, print its environment and exit instead of starting another: for shell
    /// profiles and CI jobs that may run twice.
    #[arg(long, conflicts_with_all = ["foreground", "kill"])]
    pub reuse: bool,

    /// Check the configuration file and flags, print what the agent would use (never a
    /// secret), and exit.
    #[arg(long, conflicts_with = "kill")]
    pub check_config: bool,

    /// Print shell completions for dpop-agent (bash, zsh, fish, elvish, powershell) and exit.
    #[arg(long, value_name = "SHELL")]
    pub completions: Option<clap_complete::Shell>,

    /// Print dpop-agent's man page (roff) and exit.
    #[arg(long)]
    pub man: bool,

    /// Bind the socket at this path (default: $XDG_RUNTIME_DIR/dpop-agent/agent.sock, or
    /// $TMPDIR/dpop-XXXXXXXXXX/agent.<pid> without a runtime directory; on Windows a pipe,
    /// \\.\pipe\dpop-agent-<SID>).
    #[arg(short = 'a', long = "socket", value_name = "SOCKET")]
    pub socket: Option<PathBuf>,

    /// TOML configuration file (default: $XDG_CONFIG_HOME/dpop-agent/config.toml if present;
    /// %APPDATA%\dpop-agent\config.toml on Windows).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Where keys and key records live (default: $XDG_DATA_HOME/dpop-agent;
    /// %LOCALAPPDATA%\dpop-agent on Windows).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Read the software-key passphrase from this file (else DPOP_AGENT_PASSPHRASE).
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,

    /// Keep software keys in memory only, even with a passphrase.
    #[arg(long)]
    pub ephemeral: bool,

    /// Default lifetime of keys added without one, like ssh-agent's -t: 600, 10m, 8h, 1h30m.
    /// After it, the key refuses to sign (`key_expired`); a saved key stays on disk.
    #[arg(short = 't', long = "lifetime", value_name = "LIFE")]
    pub lifetime: Option<String>,

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

    /// In the background, append logs to this file (default: discard them); created 0600, a
    /// symbolic link is refused.
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,

    /// Set by the background start: report readiness on standard output, then detach
    /// standard error and output from the parent.
    #[arg(long, hide = true)]
    pub detached: bool,

    /// Set by the background start: the socket path in the private directory that it made
    /// (no runtime directory); the agent removes both when it stops.
    #[arg(long, hide = true, value_name = "SOCKET")]
    pub private_socket: Option<PathBuf>,

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
    #[arg(long, value_name = "FILE")]
    pub tpm_auth_file: Option<PathBuf>,

    /// Ask for the TPM keys' auth value on the terminal at start-up.
    #[arg(long)]
    pub tpm_auth_prompt: bool,

    /// Let clients adopt persistent TPM keys by handle (`dpop keys adopt tpm:handle=0x81..`).
    #[arg(long)]
    pub tpm_allow_adopt: bool,
}

/// The TOML file; keys are the long flag names with `_`.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    socket: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    passphrase_file: Option<PathBuf>,
    ephemeral: Option<bool>,
    lifetime: Option<String>,
    pkcs11_module: Option<PathBuf>,
    pkcs11_token: Option<String>,
    pkcs11_serial: Option<String>,
    pkcs11_pin_env: Option<String>,
    pkcs11_pin_file: Option<PathBuf>,
    pkcs11_allow_adopt: Option<bool>,
    tpm: Option<bool>,
    tpm_tcti: Option<String>,
    tpm_auth_env: Option<String>,
    tpm_auth_file: Option<PathBuf>,
    tpm_auth_prompt: Option<bool>,
    tpm_allow_adopt: Option<bool>,
    log_file: Option<PathBuf>,
    /// Existing token keys to adopt at start-up (`[[pkcs11_adopt]]` tables).
    #[serde(default)]
    pkcs11_adopt: Vec<AdoptEntry>,
}

impl FileConfig {
    /// Expands a leading `~/` in every path to `$HOME` (the shell does it for flags, nobody
    /// does it for a TOML file).
    fn expand_home(mut self) -> Result<FileConfig> {
        for path in [
            &mut self.socket,
            &mut self.data_dir,
            &mut self.passphrase_file,
            &mut self.pkcs11_module,
            &mut self.pkcs11_pin_file,
            &mut self.log_file,
        ]
        .into_iter()
        .flatten()
        {
            *path = expand_home(path)?;
        }
        Ok(self)
    }
}

/// `~` or `~/rest` with `$HOME`; other paths as they are. `~user` is refused rather than
/// taken as a relative directory named `~user`.
fn expand_home(path: &Path) -> Result<PathBuf> {
    let Ok(rest) = path.strip_prefix("~") else {
        if path.to_string_lossy().starts_with('~') {
            bail!(
                "{}: only ~ and ~/ are expanded (to $HOME), not ~user",
                path.display()
            );
        }
        return Ok(path.to_owned());
    };
    let home = home().context("a path starts with ~ but HOME is not set")?;
    Ok(home.join(rest))
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
    /// Read already: from the variable (then wiped from our environment), or handed over by
    /// the background start.
    Read(SecretString),
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

/// TPM settings.
#[derive(Debug, Clone)]
pub struct TpmSettings {
    /// The TCTI (`device:/dev/tpmrm0` unless configured).
    pub tcti: String,
    /// Where the keys' auth value comes from; `None`: keys without one.
    pub auth: Option<PinFrom>,
    /// Whether clients may adopt persistent TPM keys (`--tpm-allow-adopt`).
    pub allow_adopt: bool,
}

/// Everything the agent runs with.
#[derive(Debug)]
pub struct Settings {
    /// The configuration file read, if any.
    pub config_file: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub data_dir: PathBuf,
    pub passphrase: Option<SecretString>,
    /// The file the passphrase was read from (`None`: the environment, or none at all).
    pub passphrase_file: Option<PathBuf>,
    pub pkcs11: Option<Pkcs11Settings>,
    pub tpm: Option<TpmSettings>,
    pub log_file: Option<PathBuf>,
    /// `-t`: the lifetime of keys added without one, in seconds.
    pub default_lifetime: Option<u64>,
    /// The confirm-on-use program: `DPOP_ASKPASS`, else `SSH_ASKPASS`.
    pub askpass: Option<PathBuf>,
    /// See [`Args::private_socket`].
    pub private_socket: Option<PathBuf>,
}

fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The home directory: `$HOME` (on Windows, else `%USERPROFILE%`).
fn home() -> Option<PathBuf> {
    let home = env_path("HOME");
    #[cfg(windows)]
    let home = home.or_else(|| env_path("USERPROFILE"));
    home
}

#[cfg(not(windows))]
fn home_sub(sub: &str) -> Option<PathBuf> {
    home().map(|h| h.join(sub))
}

/// Where the default configuration file's directory goes.
#[cfg(not(windows))]
fn config_home() -> Option<PathBuf> {
    env_path("XDG_CONFIG_HOME").or_else(|| home_sub(".config"))
}

/// Where the default configuration file's directory goes (the roaming profile).
#[cfg(windows)]
fn config_home() -> Option<PathBuf> {
    env_path("APPDATA")
}

/// Where the default data directory goes.
#[cfg(not(windows))]
fn data_home() -> Option<PathBuf> {
    env_path("XDG_DATA_HOME").or_else(|| home_sub(".local/share"))
}

/// Where the default data directory goes: the local profile (keys do not roam), whose ACL
/// keeps other users out.
#[cfg(windows)]
fn data_home() -> Option<PathBuf> {
    env_path("LOCALAPPDATA")
}

/// Reads a secret from a file, dropping one trailing newline. A file that group or others may
/// read gets a warning, as the PIN file does.
pub fn read_secret_file(path: &Path, what: &str) -> Result<SecretString> {
    let mut text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path)
            .with_context(|| format!("reading the {what} file {}", path.display()))?,
    );
    #[cfg(unix)]
    if let Ok(meta) = std::fs::metadata(path)
        && std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o077 != 0
    {
        tracing::warn!(path = %path.display(), "the {what} file is readable by group or others; chmod 600 it");
    }
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.is_empty() {
        bail!("the {what} file {} is empty", path.display());
    }
    Ok(SecretString::from(text.as_str()))
}

/// Reads the secret in environment variable `name`, then removes it from the environment with
/// its bytes overwritten (see [`wipe_env_var`]).
///
/// Call it only while this process has a single thread (the environment is not thread-safe).
fn take_env_secret(name: &str) -> Option<SecretString> {
    let value = std::env::var(name).ok().map(zeroize::Zeroizing::new);
    wipe_env_var(name);
    value
        .filter(|v| !v.is_empty())
        .map(|v| SecretString::from(v.as_str()))
}

/// Removes `name` from the environment after overwriting its value with zeros where it lies.
/// `remove_var` only unlinks the entry: the bytes stay in the block that the kernel shows in
/// `/proc/<pid>/environ`, for the process's whole life.
///
/// Call it only while this process has a single thread (the environment is not thread-safe).
#[cfg(unix)]
fn wipe_env_var(name: &str) {
    use zeroize::Zeroize;
    unsafe extern "C" {
        static mut environ: *mut *mut std::ffi::c_char;
    }
    let prefix_len = name.len() + 1;
    // SAFETY: single-threaded (see above), so nothing changes the environment meanwhile;
    // `environ` is a NULL-terminated array of NUL-terminated strings, and we write only inside
    // the value of each matching entry, before its terminating NUL.
    unsafe {
        let mut entry = environ;
        while !entry.is_null() && !(*entry).is_null() {
            let bytes = std::ffi::CStr::from_ptr(*entry).to_bytes();
            if bytes.len() >= prefix_len
                && bytes.starts_with(name.as_bytes())
                && bytes[name.len()] == b'='
            {
                let len = bytes.len() - prefix_len;
                std::slice::from_raw_parts_mut((*entry).add(prefix_len).cast::<u8>(), len)
                    .zeroize();
            }
            entry = entry.add(1);
        }
        std::env::remove_var(name);
    }
}

/// Removes `name` from the environment. Windows keeps the environment block in memory that
/// other users cannot read; the value is not overwritten there.
///
/// Call it only while this process has a single thread (the environment is not thread-safe).
#[cfg(windows)]
fn wipe_env_var(name: &str) {
    // SAFETY: single-threaded (see above).
    unsafe { std::env::remove_var(name) };
}

/// Secrets that the background start read (from its environment or the terminal) and handed
/// to its child over the child's standard input, so that they are never in the child's
/// environment; see [`crate::pin`] for the format.
#[derive(Debug, Default)]
pub struct HandedSecrets {
    /// The software-key passphrase (from `DPOP_AGENT_PASSPHRASE`).
    pub passphrase: Option<SecretString>,
    /// The PKCS#11 PIN (from `--pkcs11-pin-env`'s variable or the prompt).
    pub pin: Option<SecretString>,
    /// The TPM keys' auth value (from `--tpm-auth-env`'s variable or the prompt).
    pub tpm_auth: Option<SecretString>,
}

impl Settings {
    /// Merges flags over the config file and reads the passphrase and a PIN held in a
    /// variable; `handed` (from the background start) wins over both. Secrets read from the
    /// environment are wiped from it ([`take_env_secret`]), so no child inherits them and
    /// `/proc/<pid>/environ` does not show them: call this while single-threaded.
    pub fn load(args: &Args, handed: HandedSecrets) -> Result<Settings> {
        let config_path = args.config.clone().or_else(|| {
            let p = config_home()?.join("dpop-agent").join("config.toml");
            p.exists().then_some(p)
        });
        let file = match &config_path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .with_context(|| format!("parsing config file {}", path.display()))?
                    .expand_home()
                    .with_context(|| format!("in config file {}", path.display()))?
            }
            None => FileConfig::default(),
        };

        let data_dir = args
            .data_dir
            .clone()
            .or(file.data_dir)
            .or_else(|| Some(data_home()?.join("dpop-agent")))
            .context("no data directory: pass --data-dir or set HOME")?;

        let env_passphrase = take_env_secret("DPOP_AGENT_PASSPHRASE");
        let ephemeral = args.ephemeral || file.ephemeral.unwrap_or(false);
        let passphrase_file = args.passphrase_file.clone().or(file.passphrase_file);
        let passphrase = match (handed.passphrase, &passphrase_file) {
            (Some(handed), _) => Some(handed),
            (None, Some(path)) => Some(read_secret_file(path, "passphrase")?),
            (None, None) => env_passphrase,
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
                    (Some(_), None) if handed.pin.is_some() => {
                        PinFrom::Read(handed.pin.expect("checked"))
                    }
                    (Some(var), None) => {
                        let pin = PinSource::Env(var.clone()).resolve();
                        // Failed or not, the variable goes (and an unusable value with it).
                        wipe_env_var(&var);
                        PinFrom::Read(pin?)
                    }
                    (None, Some(path)) => PinFrom::Source(PinSource::File(path)),
                    (None, None) => match handed.pin {
                        Some(pin) => PinFrom::Read(pin),
                        None => PinFrom::Prompt,
                    },
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
        let tpm_tcti = args.tpm_tcti.clone().or(file.tpm_tcti);
        let tpm = if tpm_tcti.is_some() || args.tpm || file.tpm.unwrap_or(false) {
            let prompt = args.tpm_auth_prompt || file.tpm_auth_prompt.unwrap_or(false);
            let auth = match (
                args.tpm_auth_env.clone().or(file.tpm_auth_env),
                args.tpm_auth_file.clone().or(file.tpm_auth_file),
                prompt,
            ) {
                (Some(_), Some(_), _) | (Some(_), _, true) | (_, Some(_), true) => bail!(
                    "give one of --tpm-auth-env, --tpm-auth-file and --tpm-auth-prompt, not several"
                ),
                (_, _, _) if handed.tpm_auth.is_some() => {
                    Some(PinFrom::Read(handed.tpm_auth.expect("checked")))
                }
                (Some(var), None, false) => {
                    let auth = PinSource::Env(var.clone()).resolve_for(dpop_keys::BackendKind::Tpm);
                    wipe_env_var(&var);
                    Some(PinFrom::Read(auth?))
                }
                (None, Some(path), false) => Some(PinFrom::Source(PinSource::File(path))),
                (None, None, true) => Some(PinFrom::Prompt),
                (None, None, false) => None,
            };
            Some(TpmSettings {
                tcti: tpm_tcti.unwrap_or_else(|| dpop_keys::tpm::DEFAULT_TCTI.to_owned()),
                auth,
                allow_adopt: args.tpm_allow_adopt || file.tpm_allow_adopt.unwrap_or(false),
            })
        } else {
            if args.tpm_auth_env.is_some() || args.tpm_auth_file.is_some() || args.tpm_auth_prompt {
                bail!("--tpm-auth-* needs --tpm or --tpm-tcti");
            }
            None
        };
        Ok(Settings {
            config_file: config_path,
            socket: args.socket.clone().or(file.socket),
            data_dir,
            passphrase,
            passphrase_file,
            pkcs11,
            tpm,
            log_file: args.log_file.clone().or(file.log_file),
            default_lifetime: match args.lifetime.clone().or(file.lifetime) {
                Some(text) => Some(
                    dpop_protocol::parse_lifetime(&text)
                        .map_err(|e| anyhow::anyhow!("-t / lifetime: {e}"))?,
                ),
                None => None,
            },
            askpass: env_path("DPOP_ASKPASS").or_else(|| env_path("SSH_ASKPASS")),
            private_socket: args.private_socket.clone(),
        })
    }

    /// Where the socket goes: the configured path, the private directory the background
    /// start made, or the default location (which may create a private directory: call this
    /// once).
    #[cfg(unix)]
    pub fn socket_location(&self) -> Result<SocketLocation> {
        match (&self.socket, &self.private_socket) {
            (Some(path), _) => Ok(SocketLocation::Given(path.clone())),
            (None, Some(path)) => Ok(SocketLocation::Private(path.clone())),
            (None, None) => crate::socket::default_location(),
        }
    }

    /// Where the agent would listen, for `--check-config`.
    #[cfg(unix)]
    pub fn socket_summary(&self) -> String {
        match &self.socket {
            Some(path) => path.display().to_string(),
            None => match crate::socket::default_socket_path() {
                Some(path) => format!("{} (default)", path.display()),
                None => "a new private directory under $TMPDIR (default)".into(),
            },
        }
    }

    /// Where the agent would listen, for `--check-config`.
    #[cfg(windows)]
    pub fn socket_summary(&self) -> String {
        match (&self.socket, self.pipe_name()) {
            (Some(path), _) => path.display().to_string(),
            (None, Ok(name)) => format!("{name} (default)"),
            (None, Err(e)) => format!("{e:#}"),
        }
    }

    /// The pipe to create: the configured one, or this user's default,
    /// `\\.\pipe\dpop-agent-<SID>`.
    #[cfg(windows)]
    pub fn pipe_name(&self) -> Result<String> {
        match &self.socket {
            Some(path) => Ok(path.to_string_lossy().into_owned()),
            None => dpop_protocol::pipe::default_pipe_name()
                .context("naming the default pipe (this user's SID)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_errors_that_name_the_line() {
        let err = toml::from_str::<FileConfig>("data_dir = \"/d\"\n\ndata-dir = \"/e\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("data-dir"), "{err}");
    }

    #[test]
    fn home_is_expanded_in_paths() {
        let home = env_path("HOME").expect("HOME is set in tests");
        assert_eq!(expand_home(Path::new("~/keys")).unwrap(), home.join("keys"));
        assert_eq!(expand_home(Path::new("~")).unwrap(), home);
        assert_eq!(
            expand_home(Path::new("/etc/~x")).unwrap(),
            PathBuf::from("/etc/~x")
        );
        let err = expand_home(Path::new("~root/keys"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("~user"), "{err}");
        let file: FileConfig = toml::from_str("log_file = \"~/agent.log\"").unwrap();
        assert_eq!(
            file.expand_home().unwrap().log_file,
            Some(home.join("agent.log"))
        );
    }
}
