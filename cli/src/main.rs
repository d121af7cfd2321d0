//! `dpop`: the command line of dpop-agent. Manages the agent's keys, prints proofs and checks
//! them, never touching private key material itself. Every command that prints data takes
//! `--json`.
//!
//! This file parses and dispatches; each command lives in `commands/` with its arguments,
//! what it reads in `input.rs` and how it prints in `output.rs`.

// The doc comments of the clap types are the --help text, read in a terminal, where a URL
// stays bare (rustdoc would have it in <>).
#![allow(rustdoc::bare_urls)]

mod commands;
mod input;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use commands::{
    JsonArg, agent, key_info, keys, mcp, meta, proof, proxy, request, token, tokens, verify,
};
use output::StdoutError;

/// dpop: DPoP (RFC 9449) proofs from keys that stay in dpop-agent.
#[derive(Parser)]
#[command(name = "dpop", version, about, long_about = None, after_help = EXAMPLES)]
struct Cli {
    /// Agent socket (default: $DPOP_AUTH_SOCK, else $XDG_RUNTIME_DIR/dpop-agent/agent.sock).
    #[arg(long, global = true, value_name = "SOCKET")]
    socket: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

const EXAMPLES: &str = "Examples:
  eval \"$(dpop-agent)\"
  dpop keys generate --key api --allow-origin https://api.example.com
  dpop proof -X GET --url https://api.example.com/v1/items
  dpop token --issuer https://as.example.com --client-id app --client-secret-env SECRET --save api
  dpop request https://api.example.com/v1/items --token api";

/// Every command, with the line `dpop help` shows for it; the arguments are in its module.
#[derive(Subcommand)]
enum Command {
    /// Manage the agent's keys.
    #[command(subcommand, after_help = "Example:\n  dpop keys list")]
    Keys(keys::KeysCommand),
    /// Print a key's public JWK.
    #[command(after_help = "Example:\n  dpop jwk --key api")]
    Jwk(key_info::KeyInfoArgs),
    /// Print a key's RFC 7638 thumbprint (jkt).
    #[command(after_help = "Example:\n  dpop thumbprint --key api")]
    Thumbprint(key_info::KeyInfoArgs),
    /// Print a DPoP proof for one request, alone on one line.
    #[command(
        after_help = "Example:\n  dpop proof --key api -X GET --url https://api.example.com/v1/items --access-token-file tok"
    )]
    Proof(proof::ProofArgs),
    /// Check a proof as a resource server would (RFC 9449 section 4.3).
    #[command(
        after_help = "Example:\n  dpop verify --proof \"$P\" -X GET --url https://api.example.com/v1/items --access-token-file tok"
    )]
    Verify(verify::VerifyArgs),
    /// Get an OAuth access token bound to a key (client_credentials, refresh_token,
    /// authorization_code with PKCE, device_code). Prints the access token on standard output,
    /// or with --save NAME keeps it for `dpop request --token NAME` and prints nothing.
    #[command(
        after_help = "Examples:\n  dpop token --key api --issuer https://as.example.com --client-id app --client-secret-env SECRET --save api\n  dpop token --key api --grant authorization_code --issuer https://as.example.com --client-id app --save me"
    )]
    Token(Box<token::TokenArgs>),
    /// Call an API like curl, with a DPoP proof (and `Authorization: DPoP` with a token) per
    /// request; a use_dpop_nonce challenge is retried once. Exits 22 on HTTP >= 400.
    #[command(
        after_help = "Examples:\n  dpop request https://api.example.com/v1/items --token api\n  dpop request -X POST https://api.example.com/v1/items --token api -H 'Content-Type: application/json' -d '{\"name\":\"x\"}'"
    )]
    Request(Box<request::RequestArgs>),
    /// A stdio MCP server that bridges to the remote MCP server at URL, with DPoP.
    ///
    /// Every JSON-RPC message from standard input goes unchanged to URL (Streamable HTTP),
    /// each request with a proof from the agent and the token the server's authorization
    /// gave; the server's messages come out on standard output, which carries only the
    /// protocol.
    #[command(
        after_help = "Example (an MCP client's configuration):\n  \"command\": \"dpop\", \"args\": [\"mcp\", \"https://mcp.example.com/mcp\"]"
    )]
    Mcp(Box<mcp::McpArgs>),
    /// A local reverse proxy that adds DPoP: plain HTTP in (a Unix socket, or loopback TCP,
    /// for this user only), each request forwarded to the upstream with the token and a fresh
    /// proof; use_dpop_nonce retried once, answers streamed back. Runs until SIGINT or SIGTERM.
    #[command(
        after_help = "Examples:\n  dpop proxy --upstream https://api.example.com --token api\n  curl --unix-socket \"$XDG_RUNTIME_DIR/dpop-agent/proxy.sock\" http://localhost/v1/items\n  dpop proxy --config ~/.config/dpop/proxy.toml --listen 127.0.0.1:8080"
    )]
    Proxy(Box<proxy::ProxyArgs>),
    /// Manage saved tokens (never prints their values).
    #[command(
        subcommand,
        after_help = "Examples:\n  dpop tokens list\n  dpop tokens delete api"
    )]
    Tokens(tokens::TokensCommand),
    /// The agent's pid, version, backends, lock state and key count.
    #[command(after_help = "Example:\n  dpop status")]
    Status(JsonArg),
    /// Lock the agent: it refuses every signature and key change until `dpop unlock`. The
    /// passphrase is read from the terminal (twice), or from standard input.
    #[command(after_help = "Example:\n  dpop lock")]
    Lock,
    /// Unlock the agent with the passphrase `dpop lock` was given (terminal or standard input).
    #[command(after_help = "Example:\n  dpop unlock")]
    Unlock,
    /// Print shell completions for dpop.
    #[command(
        after_help = "Example:\n  dpop completions bash > ~/.local/share/bash-completion/completions/dpop"
    )]
    Completions(meta::CompletionsArgs),
    /// Print dpop's man page (roff).
    #[command(after_help = "Example:\n  dpop man > ~/.local/share/man/man1/dpop.1")]
    Man,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e)
            if e.downcast_ref::<StdoutError>()
                .is_some_and(StdoutError::is_closed_pipe) =>
        {
            exit_on_closed_pipe()
        }
        Err(e) => {
            // Errors carry servers' text (OAuth errors, metadata): escaped, whatever the path.
            eprintln!("dpop: {}", output::printable(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let socket = cli.socket.as_deref();
    match cli.command {
        Command::Keys(cmd) => keys::exec(socket, cmd),
        Command::Jwk(args) => key_info::jwk(socket, args),
        Command::Thumbprint(args) => key_info::thumbprint(socket, args),
        Command::Proof(args) => proof::exec(socket, args),
        Command::Verify(args) => verify::exec(args),
        Command::Token(args) => token::exec(socket, *args),
        Command::Request(args) => request::exec(socket, *args),
        Command::Mcp(args) => mcp::exec(socket, *args),
        Command::Proxy(args) => proxy::exec(socket, *args),
        Command::Tokens(cmd) => tokens::exec(cmd),
        Command::Status(out) => agent::status(socket, out),
        Command::Lock => agent::lock(socket),
        Command::Unlock => agent::unlock(socket),
        Command::Completions(args) => meta::completions(args),
        Command::Man => meta::man(),
    }
}

/// The reader of our output went away: end as coreutils do, by the SIGPIPE that Rust's
/// runtime ignores for us (the shell sees "killed by SIGPIPE" and says nothing). Resetting
/// SIGPIPE at start instead would also kill us on a write to an agent that closed the socket,
/// where the agent's refusal must be shown.
fn exit_on_closed_pipe() -> ExitCode {
    #[cfg(unix)]
    // SAFETY: restores the default action of one signal and raises it in this process.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::raise(libc::SIGPIPE);
    }
    // Not reached on Unix; elsewhere the conventional status of a SIGPIPE death.
    ExitCode::from(141)
}
