//! One module per command, each with its clap arguments and the function that runs it; `main`
//! parses and dispatches. This module holds what several commands share: the `--key`,
//! `--json` and access-token arguments, the browser opener, and the way to the agent (blocking for the key and
//! proof commands, async on a one-thread runtime for the HTTP ones).

pub(crate) mod agent;
pub(crate) mod key_info;
pub(crate) mod keys;
pub(crate) mod mcp;
pub(crate) mod meta;
pub(crate) mod proof;
pub(crate) mod proxy;
pub(crate) mod request;
pub(crate) mod token;
pub(crate) mod tokens;
pub(crate) mod verify;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use dpop_client::blocking::Client;
use dpop_protocol::KeyDescription;
use zeroize::Zeroizing;

use crate::input::read_token_file;

/// A key named by `--key LABEL`; left out, the agent's only key.
#[derive(Args)]
pub(crate) struct KeyArg {
    /// Key label (may be left out when the agent has exactly one key).
    #[arg(long = "key", value_name = "LABEL")]
    pub(crate) key: Option<String>,
}

/// `--json`, which every command that prints data takes.
#[derive(Args)]
pub(crate) struct JsonArg {
    /// Machine-readable JSON output.
    #[arg(long)]
    pub(crate) json: bool,
}

/// The access token a proof is bound to (`ath`), for `proof` and `verify`.
#[derive(Args)]
pub(crate) struct AccessTokenArgs {
    /// Access token presented with the request (sets ath). Visible to other local users in
    /// the process list: prefer --access-token-file.
    #[arg(long, conflicts_with = "access_token_file", allow_hyphen_values = true)]
    access_token: Option<String>,
    /// File holding the access token ("-" for standard input).
    #[arg(long, value_name = "FILE")]
    access_token_file: Option<PathBuf>,
}

impl AccessTokenArgs {
    /// The token given on the command line or read from its file, if any.
    pub(crate) fn read(&self) -> Result<Option<Zeroizing<String>>> {
        if let Some(token) = &self.access_token {
            return Ok(Some(Zeroizing::new(token.clone())));
        }
        let Some(path) = &self.access_token_file else {
            return Ok(None);
        };
        read_token_file(path, "access token").map(Some)
    }
}

/// The blocking client, at `--socket` or where the environment says.
pub(crate) fn connect(socket: Option<&Path>) -> Result<Client> {
    Ok(match socket {
        Some(path) => Client::connect(path)?,
        None => Client::connect_env()?,
    })
}

/// The async client, for the commands that also speak HTTP.
pub(crate) async fn connect_async(socket: Option<&Path>) -> Result<dpop_client::Client> {
    Ok(match socket {
        Some(path) => dpop_client::Client::connect(path).await?,
        None => dpop_client::Client::connect_env().await?,
    })
}

/// The one-thread runtime the HTTP commands run on.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the HTTP runtime")
}

/// The key named `label`, or the agent's only key.
pub(crate) fn pick_key(client: &mut Client, label: Option<&str>) -> Result<KeyDescription> {
    choose_key(client.list_keys()?, label)
}

/// [`pick_key`] for the async client.
pub(crate) async fn pick_key_async(
    client: &mut dpop_client::Client,
    label: Option<&str>,
) -> Result<KeyDescription> {
    choose_key(client.list_keys().await?, label)
}

/// The key named `label`, or the only key.
fn choose_key(keys: Vec<KeyDescription>, label: Option<&str>) -> Result<KeyDescription> {
    match label {
        Some(label) => keys
            .into_iter()
            .find(|k| k.label == label)
            .with_context(|| format!("no key labelled {label:?}")),
        None => match keys.len() {
            1 => Ok(keys.into_iter().next().expect("one key")),
            0 => bail!("the agent has no keys; create one with: dpop keys generate --label NAME"),
            n => bail!("the agent has {n} keys; choose one with --key LABEL"),
        },
    }
}

/// Starts a browser when there is a display to show it on; the caller prints the URL on
/// standard error either way (standard output may belong to a protocol, as `dpop mcp`'s does).
pub(crate) fn open_browser(url: &str) {
    let graphical = ["DISPLAY", "WAYLAND_DISPLAY"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|d| !d.is_empty()));
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else if graphical {
        "xdg-open"
    } else {
        return;
    };
    // Detached and silent: a missing opener only means the user copies the URL.
    let _ = std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
}
