//! `dpop verify`: checks a proof as a resource server would (RFC 9449 section 4.3), with
//! dpop-jose and no agent. Exits 1 when the proof is refused.

use std::num::NonZeroUsize;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use dpop_jose::{ExpectedRequest, LruReplayStore, VerifyOptions};
use serde_json::json;

use super::{AccessTokenArgs, JsonArg};
use crate::output::{outln, print_json, unix_now};

#[derive(Args)]
pub(crate) struct VerifyArgs {
    /// The proof JWT.
    #[arg(long, allow_hyphen_values = true)]
    proof: String,
    /// The request method.
    #[arg(long, short = 'X')]
    method: String,
    /// The request URL.
    #[arg(long)]
    url: String,
    #[command(flatten)]
    token: AccessTokenArgs,
    /// The token's cnf.jkt the proof key must match.
    #[arg(long, allow_hyphen_values = true)]
    jkt: Option<String>,
    /// The nonce the server expects.
    #[arg(long, allow_hyphen_values = true)]
    nonce: Option<String>,
    /// How old iat may be, in seconds.
    #[arg(long, default_value_t = 60)]
    max_age: i64,
    #[command(flatten)]
    out: JsonArg,
}

pub(crate) fn exec(args: VerifyArgs) -> Result<ExitCode> {
    let token = args.token.read()?;
    let options = VerifyOptions {
        max_age: args.max_age,
        ..VerifyOptions::default()
    };
    let request = ExpectedRequest {
        method: &args.method,
        url: &args.url,
        access_token: token.as_deref().map(String::as_str),
        jkt: args.jkt.as_deref(),
    };
    // One proof, checked once: the replay store only has to exist.
    let replay = LruReplayStore::new(NonZeroUsize::MIN);
    let now = unix_now();
    let result = match &args.nonce {
        Some(n) => dpop_jose::verify(&args.proof, &request, &options, &n.as_str(), &replay, now),
        None => dpop_jose::verify(&args.proof, &request, &options, &(), &replay, now),
    };
    match result {
        Ok(valid) => {
            if args.out.json {
                print_json(&json!({
                    "valid": true,
                    "alg": valid.alg,
                    "jkt": valid.jkt,
                    "jwk": valid.jwk,
                    "claims": valid.claims,
                }))?;
            } else {
                outln!("valid: {} proof by key {}", valid.alg, valid.jkt)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            if args.out.json {
                print_json(
                    &json!({ "valid": false, "error": e.oauth_error(), "reason": e.to_string() }),
                )?;
            } else {
                eprintln!("invalid: {e}");
            }
            Ok(ExitCode::FAILURE)
        }
    }
}
