//! `dpop tokens list | delete`: the tokens `dpop token --save` kept (never their values).

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use dpop_client::http::TokenCache;
use serde_json::json;

use crate::output::{outln, print_json, unix_now};

/// `dpop tokens` subcommands.
#[derive(Subcommand)]
pub(crate) enum TokensCommand {
    /// List saved tokens (never their values).
    List {
        /// Machine-readable JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Delete a saved token.
    Delete {
        /// The token's name.
        name: String,
        /// Machine-readable JSON output.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) fn exec(cmd: TokensCommand) -> Result<ExitCode> {
    let cache = TokenCache::default_location()?;
    match cmd {
        TokensCommand::List { json } => {
            let tokens = cache.list()?;
            if json {
                let list: Vec<_> = tokens
                    .iter()
                    .map(|t| {
                        json!({
                            "name": t.name,
                            "token_type": t.token_type,
                            "expires_at": t.expires_at,
                            "refreshable": t.has_refresh_token(),
                            "key": t.key,
                            "jkt": t.jkt,
                            "token_url": t.token_url,
                            "client_id": t.client_id,
                            "scope": t.scope,
                            // A refresh whose result was never saved: the refresh token
                            // may be spent.
                            "refresh_unsaved_since": t.refresh_started_at,
                        })
                    })
                    .collect();
                print_json(&list)?;
            } else if tokens.is_empty() {
                outln!("no saved tokens")?;
            } else {
                let now = unix_now();
                outln!("{:<20} {:<16} {:<14} TOKEN URL", "NAME", "KEY", "EXPIRES")?;
                for t in &tokens {
                    let expires = match t.expires_at {
                        _ if t.refresh_started_at.is_some() => "refresh unsaved".to_owned(),
                        None => "unknown".to_owned(),
                        Some(at) if at <= now => "expired".to_owned(),
                        Some(at) => format!("in {}s", at - now),
                    };
                    outln!(
                        "{:<20} {:<16} {:<14} {}",
                        t.name,
                        t.key,
                        expires,
                        t.token_url
                    )?;
                }
            }
        }
        TokensCommand::Delete { name, json } => {
            cache.delete(&name)?;
            if json {
                print_json(&json!({ "deleted": name }))?;
            } else {
                outln!("deleted token {name}")?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
