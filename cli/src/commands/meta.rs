//! `dpop completions` and `dpop man`: dpop describing itself, from the same clap definition
//! that parses its command line.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, CommandFactory};

use crate::Cli;
use crate::output::StdoutError;

#[derive(Args)]
pub(crate) struct CompletionsArgs {
    /// bash, zsh, fish, elvish or powershell.
    shell: clap_complete::Shell,
}

/// `dpop completions SHELL`: the completion script on standard output.
pub(crate) fn completions(args: CompletionsArgs) -> Result<ExitCode> {
    clap_complete::generate(
        args.shell,
        &mut Cli::command(),
        "dpop",
        &mut std::io::stdout(),
    );
    Ok(ExitCode::SUCCESS)
}

/// `dpop man`: the man page, in roff.
pub(crate) fn man() -> Result<ExitCode> {
    clap_mangen::Man::new(Cli::command())
        .render(&mut std::io::stdout())
        .map_err(StdoutError)?;
    Ok(ExitCode::SUCCESS)
}
