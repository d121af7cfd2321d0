//! `dpop status`, `dpop lock` and `dpop unlock`: the agent itself.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use super::{JsonArg, connect};
use crate::input::read_passphrase;
use crate::output::{outln, print_json};

/// `dpop status`: the agent's pid, version, backends, lock state and key count.
pub(crate) fn status(socket: Option<&Path>, out: JsonArg) -> Result<ExitCode> {
    let status = connect(socket)?.status()?;
    if out.json {
        print_json(&status)?;
    } else {
        outln!("agent:    {} (pid {})", status.agent, status.pid)?;
        outln!("protocol: {}", status.protocol)?;
        outln!("backends: {}", status.backends.join(", "))?;
        outln!("locked:   {}", if status.locked { "yes" } else { "no" })?;
        outln!(
            "keys:     {} ({})",
            status.keys,
            if status.software_persistent {
                "software keys saved"
            } else {
                "software keys in memory only"
            }
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `dpop lock`: the passphrase is asked twice at a terminal, so that a typo cannot lock the
/// agent for good.
pub(crate) fn lock(socket: Option<&Path>) -> Result<ExitCode> {
    let passphrase = read_passphrase("Lock passphrase: ", true)?;
    connect(socket)?.lock(&passphrase)?;
    eprintln!("agent locked");
    Ok(ExitCode::SUCCESS)
}

/// `dpop unlock`.
pub(crate) fn unlock(socket: Option<&Path>) -> Result<ExitCode> {
    let passphrase = read_passphrase("Unlock passphrase: ", false)?;
    connect(socket)?.unlock(&passphrase)?;
    eprintln!("agent unlocked");
    Ok(ExitCode::SUCCESS)
}
