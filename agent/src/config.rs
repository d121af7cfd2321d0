//! The agent's settings, each declared once (see [`crate::options`]): the flags of
//! [`Args`], whose settings ([`Options`]: the general ones here, each backend's in its file
//! under [`crate::backends`]) are also the keys of the TOML file, merged into [`Settings`].
//! Each flag has a config key of the same name (`--data-dir` is `data_dir`); the command line
//! wins.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use serde::Deserialize;

use crate::backends::{BackendOptions, BackendSettings};
use crate::options::{ConfigPath, Over, check_keys, env_path, read_group};
use crate::secrets::HandedSecrets;
#[cfg(unix)]
use crate::transport::SocketLocation;

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

    /// TOML configuration file (default: $XDG_CONFIG_HOME/dpop-agent/config.toml if present;
    /// %APPDATA%\dpop-agent\config.toml on Windows).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Set by the background start: report readiness on standard output, then detach
    /// standard error and output from the parent.
    #[arg(long, hide = true)]
    pub detached: bool,

    /// Set by the background start: the socket path in the private directory that it made
    /// (no runtime directory); the agent removes both when it stops.
    #[arg(long, hide = true, value_name = "SOCKET")]
    pub private_socket: Option<PathBuf>,

    /// The settings, each also a key of the config file.
    #[command(flatten)]
    pub options: Options,
}

/// Every setting: a flag and a key of the config file each.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct Options {
    #[command(flatten)]
    pub general: GeneralOptions,
    #[command(flatten)]
    pub backends: BackendOptions,
}

impl Options {
    /// Reads the config file: the keys of every group, and no other key. Errors name their
    /// line.
    pub fn from_toml(text: &str) -> Result<Options, toml::de::Error> {
        let mut known = Vec::new();
        let options = Options::read(text, &mut known)?;
        check_keys(text, &known)?;
        Ok(options)
    }

    /// Reads every group's keys, adding them to `known` (see [`read_group`]).
    fn read(text: &str, known: &mut Vec<&'static str>) -> Result<Options, toml::de::Error> {
        Ok(Options {
            general: read_group(text, known)?,
            backends: BackendOptions::read(text, known)?,
        })
    }
}

impl Over for Options {
    fn over(self, file: Self) -> Self {
        Options {
            general: self.general.over(file.general),
            backends: self.backends.over(file.backends),
        }
    }
}

/// The settings that are not a backend's.
// The field docs are clap's --help text, read in a terminal: `<pid>` there is a placeholder,
// not an HTML tag.
#[allow(rustdoc::invalid_html_tags)]
#[derive(clap::Args, Deserialize, Debug, Default, Clone)]
#[serde(default)]
pub struct GeneralOptions {
    /// Bind the socket at this path (default: $XDG_RUNTIME_DIR/dpop-agent/agent.sock, or
    /// $TMPDIR/dpop-XXXXXXXXXX/agent.<pid> without a runtime directory; on Windows a pipe,
    /// \\.\pipe\dpop-agent-<SID>).
    // Help text, which clap prints as it is: no HTML.
    #[allow(rustdoc::invalid_html_tags)]
    #[arg(short = 'a', long = "socket", value_name = "SOCKET", value_hint = clap::ValueHint::AnyPath)]
    pub socket: Option<ConfigPath>,

    /// Where keys and key records live (default: $XDG_DATA_HOME/dpop-agent;
    /// %LOCALAPPDATA%\dpop-agent on Windows).
    #[arg(long, value_name = "DIR", value_hint = clap::ValueHint::DirPath)]
    pub data_dir: Option<ConfigPath>,

    /// Default lifetime of keys added without one, like ssh-agent's -t: 600, 10m, 8h, 1h30m.
    /// After it, the key refuses to sign (`key_expired`); a saved key stays on disk.
    #[arg(short = 't', long = "lifetime", value_name = "LIFE")]
    pub lifetime: Option<String>,

    /// In the background, append logs to this file (default: discard them); created 0600, a
    /// symbolic link is refused.
    #[arg(long, value_name = "FILE", value_hint = clap::ValueHint::FilePath)]
    pub log_file: Option<ConfigPath>,
}

impl Over for GeneralOptions {
    fn over(self, file: Self) -> Self {
        GeneralOptions {
            socket: self.socket.over(file.socket),
            data_dir: self.data_dir.over(file.data_dir),
            lifetime: self.lifetime.over(file.lifetime),
            log_file: self.log_file.over(file.log_file),
        }
    }
}

/// Everything the agent runs with.
#[derive(Debug)]
pub struct Settings {
    /// The configuration file read, if any.
    pub config_file: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub data_dir: PathBuf,
    pub log_file: Option<PathBuf>,
    /// `-t`: the lifetime of keys added without one, in seconds.
    pub default_lifetime: Option<u64>,
    /// The confirm-on-use program: `DPOP_ASKPASS`, else `SSH_ASKPASS`.
    pub askpass: Option<PathBuf>,
    /// See [`Args::private_socket`].
    pub private_socket: Option<PathBuf>,
    /// Each backend's.
    pub backends: BackendSettings,
}

#[cfg(not(windows))]
fn home_sub(sub: &str) -> Option<PathBuf> {
    crate::options::home().map(|h| h.join(sub))
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

impl Settings {
    /// Merges flags over the config file and reads the passphrase and the secrets held in
    /// variables; `handed` (from the background start) wins over both. Secrets read from the
    /// environment are wiped from it, so no child inherits them and `/proc/<pid>/environ`
    /// does not show them: call this while single-threaded.
    pub fn load(args: &Args, mut handed: HandedSecrets) -> Result<Settings> {
        let config_path = args.config.clone().or_else(|| {
            let p = config_home()?.join("dpop-agent").join("config.toml");
            p.exists().then_some(p)
        });
        let file = match &config_path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                Options::from_toml(&text)
                    .with_context(|| format!("parsing config file {}", path.display()))?
            }
            None => Options::default(),
        };
        let Options { general, backends } = args.options.clone().over(file);

        let data_dir = general
            .data_dir
            .map(ConfigPath::into_path_buf)
            .or_else(|| Some(data_home()?.join("dpop-agent")))
            .context("no data directory: pass --data-dir or set HOME")?;
        let backends = backends.resolve(&mut handed)?;
        handed.check_all_taken()?;
        Ok(Settings {
            config_file: config_path,
            socket: general.socket.map(ConfigPath::into_path_buf),
            data_dir,
            log_file: general.log_file.map(ConfigPath::into_path_buf),
            default_lifetime: match general.lifetime {
                Some(text) => Some(
                    dpop_protocol::parse_lifetime(&text)
                        .map_err(|e| anyhow::anyhow!("-t / lifetime: {e}"))?,
                ),
                None => None,
            },
            askpass: env_path("DPOP_ASKPASS").or_else(|| env_path("SSH_ASKPASS")),
            private_socket: args.private_socket.clone(),
            backends,
        })
    }

    /// What `--check-config` prints, after checking the files the settings name; never a
    /// secret.
    pub fn check_lines(&self) -> Result<Vec<String>> {
        let mut lines = vec![
            match &self.config_file {
                Some(path) => format!("config file: {}", path.display()),
                None => "config file: none (flags and defaults only)".into(),
            },
            format!("socket: {}", self.socket_summary()),
            format!("data directory: {}", self.data_dir.display()),
        ];
        lines.extend(self.backends.check_lines()?);
        if let Some(path) = &self.log_file {
            lines.push(format!("log file (background): {}", path.display()));
        }
        if let Some(seconds) = self.default_lifetime {
            lines.push(format!("default key lifetime: {seconds} s"));
        }
        lines.push(match &self.askpass {
            Some(path) => format!("confirm-on-use asks with: {}", path.display()),
            None => "confirm-on-use: no DPOP_ASKPASS or SSH_ASKPASS (confirm keys refuse)".into(),
        });
        Ok(lines)
    }

    /// Where the socket goes: the configured path, the private directory the background
    /// start made, or the default location (which may create a private directory: call this
    /// once).
    #[cfg(unix)]
    pub fn socket_location(&self) -> Result<SocketLocation> {
        match (&self.socket, &self.private_socket) {
            (Some(path), _) => Ok(SocketLocation::Given(path.clone())),
            (None, Some(path)) => Ok(SocketLocation::Private(path.clone())),
            (None, None) => crate::transport::default_location(),
        }
    }

    /// Where the agent would listen, for `--check-config`.
    #[cfg(unix)]
    pub fn socket_summary(&self) -> String {
        match &self.socket {
            Some(path) => path.display().to_string(),
            None => match crate::transport::default_socket_path() {
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
    use std::any::TypeId;

    use clap::CommandFactory;

    use super::*;

    /// Flags that are actions or the background start's, not settings: no config key.
    const NOT_SETTINGS: &[&str] = &[
        "foreground",
        "kill",
        "csh",
        "sh",
        "reuse",
        "check_config",
        "completions",
        "man",
        "config",
        "detached",
        "private_socket",
        "help",
        "version",
    ];

    /// Config keys that are tables, not flags.
    const FILE_ONLY: &[&str] = &["pkcs11_adopt"];

    /// Every setting's flag.
    fn setting_args() -> Vec<clap::Arg> {
        let command = Args::command();
        let args: Vec<_> = command
            .get_arguments()
            .filter(|a| !NOT_SETTINGS.contains(&a.get_id().as_str()))
            .cloned()
            .collect();
        assert!(args.len() > 10, "the settings are found");
        args
    }

    /// The config keys the file reads.
    fn config_keys() -> Vec<&'static str> {
        let mut known = Vec::new();
        Options::read("", &mut known).unwrap();
        known
    }

    #[test]
    fn every_flag_has_a_config_key_and_every_key_a_flag() {
        let keys = config_keys();
        let mut document = String::new();
        for arg in setting_args() {
            let long = arg.get_long().expect("every setting has a long flag");
            let key = long.replace('-', "_");
            assert_eq!(arg.get_id().as_str(), key, "--{long}");
            assert!(
                keys.contains(&key.as_str()),
                "--{long} has no config key {key}"
            );
            let value = match arg.get_action().takes_values() {
                true => "\"x\"",
                false => "true",
            };
            document.push_str(&format!("{key} = {value}\n"));
        }
        // Every flag's key is read, with the flag's type.
        Options::from_toml(&document).unwrap();
        let flags: Vec<String> = setting_args()
            .iter()
            .map(|a| a.get_id().to_string())
            .collect();
        for key in keys {
            assert!(
                flags.iter().any(|f| f == key) || FILE_ONLY.contains(&key),
                "config key {key} has no flag"
            );
        }
        for not_a_setting in NOT_SETTINGS {
            let err = Options::from_toml(&format!("{not_a_setting} = true\n"));
            assert!(err.is_err(), "{not_a_setting} is not a config key");
        }
    }

    #[test]
    fn unknown_keys_are_errors_that_name_the_line() {
        let err = Options::from_toml("data_dir = \"/d\"\n\ndata-dir = \"/e\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("data-dir"), "{err}");
        let err = Options::from_toml("ephemeral = \"yes\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn every_path_setting_expands_home() {
        let home = crate::options::home().expect("HOME is set in tests");
        let paths: Vec<clap::Arg> = setting_args()
            .into_iter()
            .filter(|a| a.get_value_parser().type_id() == TypeId::of::<ConfigPath>())
            .collect();
        let ids: Vec<&str> = paths.iter().map(|a| a.get_id().as_str()).collect();
        assert!(ids.contains(&"tpm_auth_file"), "{ids:?}");
        assert!(ids.contains(&"data_dir"), "{ids:?}");
        for arg in setting_args() {
            assert!(
                arg.get_value_parser().type_id() != TypeId::of::<PathBuf>(),
                "--{} is a PathBuf: make it a ConfigPath",
                arg.get_id()
            );
        }
        for arg in &paths {
            let key = arg.get_id().as_str();
            assert!(
                matches!(
                    arg.get_value_hint(),
                    clap::ValueHint::AnyPath | clap::ValueHint::FilePath | clap::ValueHint::DirPath
                ),
                "--{key} completes as a path"
            );
            let probe = format!("probe-{key}");
            let options = Options::from_toml(&format!("{key} = \"~/{probe}\"\n")).unwrap();
            let seen = format!("{options:?}");
            let expanded = format!("{:?}", home.join(&probe));
            assert!(seen.contains(&expanded), "{key}: {seen}");
            assert!(!seen.contains('~'), "{key}: {seen}");
        }
    }

    #[test]
    fn flags_win_over_the_file() {
        let file =
            Options::from_toml("data_dir = \"/file\"\nlifetime = \"8h\"\nephemeral = true\n")
                .unwrap();
        let args = Args::try_parse_from(["dpop-agent", "--data-dir", "/flag"]).unwrap();
        let merged = args.options.over(file);
        assert_eq!(
            merged.general.data_dir.as_deref(),
            Some(std::path::Path::new("/flag"))
        );
        assert_eq!(merged.general.lifetime.as_deref(), Some("8h"));
        assert!(merged.backends.software.ephemeral);
    }

    #[test]
    fn the_example_config_is_valid() {
        let options = Options::from_toml(include_str!("../config.example.toml")).unwrap();
        assert!(options.general.data_dir.is_some());
    }
}
