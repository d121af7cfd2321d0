//! `dpop keys list | generate | import | adopt | delete | policy`: the agent's keys and their
//! policies.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use dpop_client::blocking::Client;
use dpop_client::{AdoptKey, ImportKey, NewKey};
use dpop_jose::Algorithm;
use dpop_protocol::{KeyDescription, KeyPolicy};
use serde_json::json;

use super::{JsonArg, KeyArg, connect, pick_key};
use crate::input::{confirm, interactive, read_input};
use crate::output::{
    outln, policy_summary, print_json, print_key, print_table, sign_only_summary, unix_now,
};

#[derive(Subcommand)]
pub(crate) enum KeysCommand {
    /// List keys, with their policies.
    #[command(after_help = "Example:\n  dpop keys list")]
    List(JsonArg),
    /// Generate a key inside a backend.
    #[command(
        after_help = "Examples:\n  dpop keys generate --key api\n  dpop keys generate --key hsm --backend pkcs11 --alg ES384 --allow-origin https://*.example.com --lifetime 8h"
    )]
    Generate(GenerateArgs),
    /// Import a PEM private key (PKCS#8, SEC1 or PKCS#1; "-" reads standard input).
    #[command(after_help = "Example:\n  dpop keys import key.pem --key imported --backend pkcs11")]
    Import(ImportArgs),
    /// Adopt an existing PKCS#11 key by RFC 7512 URI, or a persistent TPM key by handle.
    #[command(
        after_help = "Example:\n  dpop keys adopt 'pkcs11:token=dpop;object=my-key;type=private' --key adopted"
    )]
    Adopt(AdoptArgs),
    /// Delete a key (an adopted key is only forgotten). A key on a token or TPM is destroyed
    /// there: asked for on a terminal, else --yes is needed.
    #[command(after_help = "Example:\n  dpop keys delete --key old")]
    Delete(DeleteArgs),
    /// Show or replace a key's policy (the flags given replace the whole policy; --clear
    /// removes it).
    #[command(
        after_help = "Examples:\n  dpop keys policy --key api\n  dpop keys policy --key api --allow-origin https://api.example.com --allow-client /usr/bin/curl --confirm --confirm-remember 10m"
    )]
    Policy(PolicyCommandArgs),
}

pub(crate) fn exec(socket: Option<&Path>, cmd: KeysCommand) -> Result<ExitCode> {
    let mut client = connect(socket)?;
    match cmd {
        KeysCommand::List(out) => list(&mut client, &out)?,
        KeysCommand::Generate(args) => args.run(&mut client)?,
        KeysCommand::Import(args) => args.run(&mut client)?,
        KeysCommand::Adopt(args) => args.run(&mut client)?,
        KeysCommand::Delete(args) => args.run(&mut client)?,
        KeysCommand::Policy(args) => args.run(&mut client)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// A key's policy, enforced by the agent.
#[derive(Args)]
pub(crate) struct PolicyArgs {
    /// An origin the key may sign for (repeatable): https://api.example.com, or
    /// https://*.example.com for every subdomain. Others are refused (origin_not_allowed).
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    allow_origin: Vec<String>,
    /// A program that may use the key (repeatable; absolute path). Others are refused
    /// (client_not_allowed).
    #[arg(long = "allow-client", value_name = "PROGRAM")]
    allow_client: Vec<PathBuf>,
    /// How long the key signs: 600, 10m, 8h, 1h30m, 2d (then key_expired).
    #[arg(long, value_name = "LIFE")]
    lifetime: Option<String>,
    /// Ask before each signature, through $DPOP_ASKPASS / $SSH_ASKPASS as the agent found it.
    #[arg(long)]
    confirm: bool,
    /// With --confirm: a yes holds this long for the same client process (10m, 1h; at most a
    /// year).
    #[arg(long, value_name = "LIFE", requires = "confirm", value_parser = remember_secs)]
    confirm_remember: Option<u64>,
}

/// `--confirm-remember`: a lifetime the agent takes, checked while the command line is read,
/// so that nothing is sent that the agent would refuse.
fn remember_secs(text: &str) -> Result<u64, String> {
    let secs = dpop_protocol::parse_lifetime(text)?;
    if secs > dpop_protocol::MAX_CONFIRM_REMEMBER_SECS {
        return Err(format!(
            "{text} is longer than a year: the agent remembers a yes for at most {} seconds",
            dpop_protocol::MAX_CONFIRM_REMEMBER_SECS
        ));
    }
    Ok(secs)
}

impl PolicyArgs {
    /// The policy the flags describe, or `None` when none was given (the request then carries
    /// no policy, and the agent applies its default).
    fn requested(&self) -> Result<Option<KeyPolicy>> {
        let given = !self.allow_origin.is_empty()
            || !self.allow_client.is_empty()
            || self.lifetime.is_some()
            || self.confirm;
        if !given {
            return Ok(None);
        }
        let lifetime = |text: &str| dpop_protocol::parse_lifetime(text).map_err(anyhow::Error::msg);
        Ok(Some(KeyPolicy {
            allow_origins: self.allow_origin.clone(),
            allow_clients: self
                .allow_client
                .iter()
                .map(|p| std::path::absolute(p).map(|p| p.to_string_lossy().into_owned()))
                .collect::<Result<_, _>>()?,
            expires_at: match &self.lifetime {
                Some(text) => Some(unix_now().saturating_add_unsigned(lifetime(text)?)),
                None => None,
            },
            confirm: self.confirm,
            confirm_remember_secs: self.confirm_remember,
        }))
    }
}

fn list(client: &mut Client, out: &JsonArg) -> Result<()> {
    let keys = client.list_keys()?;
    if out.json {
        print_json(&keys)?;
    } else if keys.is_empty() {
        outln!("no keys")?;
    } else {
        let rows: Vec<Vec<String>> = keys
            .iter()
            .map(|k| {
                vec![
                    k.label.clone(),
                    k.alg.to_string(),
                    k.backend.clone(),
                    if k.persistent { "yes" } else { "memory" }.to_owned(),
                    sign_only_summary(k),
                    policy_summary(&k.policy),
                    k.jkt.clone(),
                ]
            })
            .collect();
        print_table(
            &[
                "LABEL",
                "ALG",
                "BACKEND",
                "STORED",
                "SIGN-ONLY",
                "POLICY",
                "JKT",
            ],
            &rows,
        )?;
    }
    Ok(())
}

#[derive(Args)]
pub(crate) struct GenerateArgs {
    /// The new key's label.
    #[arg(long = "key", visible_alias = "label", value_name = "LABEL")]
    key: String,
    /// software, pkcs11 or tpm.
    #[arg(long, default_value = "software")]
    backend: String,
    /// ES256, ES384, RS256, PS256 or EdDSA.
    #[arg(long, default_value = "ES256")]
    alg: Algorithm,
    #[command(flatten)]
    policy: PolicyArgs,
    #[command(flatten)]
    out: JsonArg,
}

impl GenerateArgs {
    fn run(self, client: &mut Client) -> Result<()> {
        let policy = self.policy.requested()?;
        let mut key = NewKey::new(&self.key).backend(&self.backend).alg(self.alg);
        if let Some(policy) = &policy {
            key = key.policy(policy);
        }
        print_key(&client.generate_key(key)?, self.out.json, "generated")?;
        Ok(())
    }
}

#[derive(Args)]
pub(crate) struct ImportArgs {
    /// The PEM file.
    file: PathBuf,
    /// The new key's label.
    #[arg(long = "key", visible_alias = "label", value_name = "LABEL")]
    key: String,
    /// software or pkcs11.
    #[arg(long, default_value = "software")]
    backend: String,
    /// For RSA keys: RS256 (default) or PS256.
    #[arg(long)]
    alg: Option<Algorithm>,
    #[command(flatten)]
    policy: PolicyArgs,
    #[command(flatten)]
    out: JsonArg,
}

impl ImportArgs {
    fn run(self, client: &mut Client) -> Result<()> {
        let pem = read_input(&self.file, "private key")?;
        let policy = self.policy.requested()?;
        let mut key = ImportKey::new(&self.key, &pem).backend(&self.backend);
        if let Some(alg) = self.alg {
            key = key.alg(alg);
        }
        if let Some(policy) = &policy {
            key = key.policy(policy);
        }
        print_key(&client.import_key(key)?, self.out.json, "imported")?;
        Ok(())
    }
}

#[derive(Args)]
pub(crate) struct AdoptArgs {
    /// pkcs11:token=...;object=...;type=private, or tpm:handle=0x81000001
    uri: String,
    /// The label to file it under.
    #[arg(long = "key", visible_alias = "label", value_name = "LABEL")]
    key: String,
    /// For RSA keys: RS256 (default) or PS256.
    #[arg(long)]
    alg: Option<Algorithm>,
    #[command(flatten)]
    policy: PolicyArgs,
    #[command(flatten)]
    out: JsonArg,
}

impl AdoptArgs {
    fn run(self, client: &mut Client) -> Result<()> {
        let policy = self.policy.requested()?;
        let mut key = AdoptKey::new(&self.key, &self.uri);
        if let Some(alg) = self.alg {
            key = key.alg(alg);
        }
        if let Some(policy) = &policy {
            key = key.policy(policy);
        }
        print_key(&client.adopt_key(key)?, self.out.json, "adopted")?;
        Ok(())
    }
}

#[derive(Args)]
pub(crate) struct DeleteArgs {
    #[command(flatten)]
    key: KeyArg,
    /// The key's label (as --key).
    #[arg(value_name = "LABEL", conflicts_with = "key")]
    label: Option<String>,
    /// Do not ask before deleting a key on a token or TPM.
    #[arg(long, short = 'y')]
    yes: bool,
    #[command(flatten)]
    out: JsonArg,
}

impl DeleteArgs {
    fn run(self, client: &mut Client) -> Result<()> {
        let key = pick_key(client, self.key.key.as_deref().or(self.label.as_deref()))?;
        if key.backend != "software" && !self.yes {
            confirm_delete(&key)?;
        }
        print_key(&client.delete_key(&key.label)?, self.out.json, "deleted")?;
        Ok(())
    }
}

/// Deleting a key on a token or TPM destroys it there (unless it was adopted): ask on a
/// terminal, refuse without `--yes` elsewhere.
fn confirm_delete(key: &KeyDescription) -> Result<()> {
    if !interactive() {
        bail!(
            "key {:?} is on the {} backend, where deleting destroys it (an adopted key is only \
             forgotten); add --yes to delete it",
            key.label,
            key.backend
        );
    }
    let question = format!(
        "Delete key {:?} from the {} backend? It cannot be undone (an adopted key is only forgotten).",
        key.label, key.backend
    );
    if !confirm(&question)? {
        bail!("not deleted");
    }
    Ok(())
}

#[derive(Args)]
pub(crate) struct PolicyCommandArgs {
    #[command(flatten)]
    key: KeyArg,
    #[command(flatten)]
    policy: PolicyArgs,
    /// Remove the policy.
    #[arg(long, conflicts_with_all = ["allow_origin", "allow_client", "lifetime", "confirm"])]
    clear: bool,
    #[command(flatten)]
    out: JsonArg,
}

impl PolicyCommandArgs {
    fn run(self, client: &mut Client) -> Result<()> {
        let key = pick_key(client, self.key.key.as_deref())?;
        let key = if self.clear {
            client.set_policy(&key.label, &KeyPolicy::default())?
        } else if let Some(policy) = self.policy.requested()? {
            client.set_policy(&key.label, &policy)?
        } else {
            key
        };
        if self.out.json {
            print_json(&json!({ "label": key.label, "policy": key.policy }))?;
        } else {
            outln!("{}: {}", key.label, policy_summary(&key.policy))?;
            for origin in &key.policy.allow_origins {
                outln!("  allow origin  {origin}")?;
            }
            for client in &key.policy.allow_clients {
                outln!("  allow client  {client}")?;
            }
        }
        Ok(())
    }
}
