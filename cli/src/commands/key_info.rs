//! `dpop jwk` and `dpop thumbprint`: a key's public JWK and its RFC 7638 thumbprint.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use serde_json::json;

use super::{JsonArg, KeyArg, connect, pick_key};
use crate::output::{outln, print_json};

/// The arguments of both commands: which key, and how to print.
#[derive(Args)]
pub(crate) struct KeyInfoArgs {
    #[command(flatten)]
    key: KeyArg,
    #[command(flatten)]
    out: JsonArg,
}

/// `dpop jwk`: the public JWK on one line (pretty with `--json`).
pub(crate) fn jwk(socket: Option<&Path>, args: KeyInfoArgs) -> Result<ExitCode> {
    let key = pick_key(&mut connect(socket)?, args.key.key.as_deref())?;
    if args.out.json {
        print_json(&key.jwk)?;
    } else {
        outln!("{}", serde_json::to_string(&key.jwk)?)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `dpop thumbprint`: the key's `jkt`.
pub(crate) fn thumbprint(socket: Option<&Path>, args: KeyInfoArgs) -> Result<ExitCode> {
    let key = pick_key(&mut connect(socket)?, args.key.key.as_deref())?;
    if args.out.json {
        print_json(&json!({ "label": key.label, "jkt": key.jkt }))?;
    } else {
        outln!("{}", key.jkt)?;
    }
    Ok(ExitCode::SUCCESS)
}
