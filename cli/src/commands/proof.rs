//! `dpop proof`: a DPoP proof for one request, signed by the agent, alone on one line.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use dpop_client::ProofRequest;
use serde_json::json;

use super::{AccessTokenArgs, JsonArg, KeyArg, connect, pick_key};
use crate::output::{outln, print_json};

#[derive(Args)]
pub(crate) struct ProofArgs {
    #[command(flatten)]
    key: KeyArg,
    /// HTTP method, upper-case (GET, POST, ...).
    #[arg(long, short = 'X')]
    method: String,
    /// Request URL.
    #[arg(long)]
    url: String,
    #[command(flatten)]
    token: AccessTokenArgs,
    /// Server-provided DPoP-Nonce.
    #[arg(long, allow_hyphen_values = true)]
    nonce: Option<String>,
    #[command(flatten)]
    out: JsonArg,
}

pub(crate) fn exec(socket: Option<&Path>, args: ProofArgs) -> Result<ExitCode> {
    let token = args.token.read()?;
    let mut request = ProofRequest::new(&args.method, &args.url);
    if let Some(token) = &token {
        request = request.access_token(token);
    }
    if let Some(nonce) = &args.nonce {
        request = request.nonce(nonce);
    }
    let mut client = connect(socket)?;
    let key = match args.key.key {
        Some(label) => label,
        None => pick_key(&mut client, None)?.label,
    };
    let proof = client.sign_proof(&key, &request)?;
    if args.out.json {
        print_json(&json!({ "proof": proof }))?;
    } else {
        outln!("{proof}")?;
    }
    Ok(ExitCode::SUCCESS)
}
