//! `dpop mcp URL`: a stdio MCP server that bridges every JSON-RPC message to the remote MCP
//! server at URL over Streamable HTTP, each request with a DPoP proof from the agent.
//!
//! - `stdio`: the client's side, newline-delimited JSON-RPC on standard input and output.
//! - `transport`: the server's side, the Streamable HTTP client (POST per message, JSON or SSE
//!   answers, the session, the GET stream, resumption, DELETE at the end).
//!
//! Authorization is dpop-client's [`ResourceAuthorizer`]: each request carries its token,
//! and a 401 or 403 goes to it, after which the request is sent once more if it says so.
//!
//! Messages from standard input are sent concurrently, each as soon as it is read, except the
//! `initialize` request: its answer carries the session id every later request needs, so
//! the next message waits for it. The bridge ends at the end of standard input (after the
//! answers still due, for at most [`EOF_GRACE`], and a DELETE of the session), on SIGTERM or
//! SIGINT (a DELETE at once: a client that stops its servers sends SIGTERM after closing
//! stdin), when the server ends the session (404), or when standard output is closed.

mod message;
mod stdio;
mod transport;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use dpop_client::http::{
    AuthorizerOptions, ClientSecretSource, DpopClient, ResourceAuthorizer, TokenCache, Url,
};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::{connect_async, open_browser, pick_key_async, runtime};
use crate::output::printable;
use message::Outgoing;
use stdio::Output;
use transport::{Stop, Transport};

/// How long answers still due are awaited after standard input ends.
const EOF_GRACE: Duration = Duration::from_secs(10);

/// `dpop mcp`'s arguments.
#[derive(Args)]
pub(crate) struct McpArgs {
    /// The remote MCP server's endpoint (Streamable HTTP).
    url: Url,
    /// Key label (may be left out when the agent has exactly one key).
    #[arg(long, value_name = "LABEL")]
    key: Option<String>,
    /// A client id registered with the authorization server beforehand (otherwise a Client
    /// ID Metadata Document or dynamic registration).
    #[arg(long, value_name = "ID")]
    client_id: Option<String>,
    /// Environment variable holding the pre-registered client's secret.
    #[arg(
        long,
        value_name = "VAR",
        conflicts_with = "client_secret_file",
        requires = "client_id"
    )]
    client_secret_env: Option<String>,
    /// File holding the pre-registered client's secret.
    #[arg(long, value_name = "FILE", requires = "client_id")]
    client_secret_file: Option<PathBuf>,
    /// URL of this client's Client ID Metadata Document, used as client id where the
    /// authorization server supports such documents.
    #[arg(long, value_name = "URL")]
    client_metadata_url: Option<Url>,
    /// Scope to ask for (default: the server's challenge, else its scopes_supported).
    #[arg(long, value_name = "SCOPE")]
    scope: Option<String>,
    /// Accept a token that is not DPoP-bound from a server without DPoP.
    #[arg(long)]
    allow_bearer: bool,
    /// Name of the saved token (default: derived from the URL, e.g. mcp-example.com-mcp).
    #[arg(long, value_name = "NAME")]
    token: Option<String>,
    /// Show the flow on standard error: messages sent (method, id), answers (status, type),
    /// the session, nonce retries and stream reconnections. Never a token.
    #[arg(short = 'v', long)]
    verbose: bool,
}

impl McpArgs {
    /// Where the pre-registered client's secret is: the authorizer reads it for the flow,
    /// and the token cache keeps where it is (never the secret) for refreshing.
    fn client_secret_source(&self) -> Option<ClientSecretSource> {
        match (&self.client_secret_env, &self.client_secret_file) {
            (Some(var), _) => Some(ClientSecretSource::Env(var.clone())),
            // Absolute: a later run from another directory refreshes with it.
            (None, Some(file)) => Some(ClientSecretSource::File(
                std::path::absolute(file).unwrap_or_else(|_| file.clone()),
            )),
            (None, None) => None,
        }
    }

    /// The saved token's place: the cache and the name.
    fn saved_token(&self) -> Result<(TokenCache, String)> {
        let name = match &self.token {
            Some(name) => name.clone(),
            None => cache_name(&self.url),
        };
        Ok((TokenCache::default_location()?, name))
    }

    fn authorizer(&self) -> Result<ResourceAuthorizer> {
        let (cache, cache_name) = self.saved_token()?;
        let mut options = AuthorizerOptions::new(cache, cache_name);
        options.client_id = self.client_id.clone();
        options.client_secret_source = self.client_secret_source();
        options.client_metadata_url = self.client_metadata_url.clone();
        options.scope = self.scope.clone();
        options.allow_bearer = self.allow_bearer;
        if self.verbose {
            options.progress = Some(Box::new(|line: &str| {
                eprintln!("dpop mcp: {}", printable(line));
            }));
        }
        Ok(ResourceAuthorizer::new(
            self.url.clone(),
            options,
            Box::new(|url: &Url| {
                // Standard output is the protocol's: the URL goes to standard error.
                eprintln!("dpop mcp: open this URL in a browser to authorize:\n{url}");
                open_browser(url.as_str());
            }),
        ))
    }
}

pub(crate) fn exec(socket: Option<&Path>, args: McpArgs) -> Result<ExitCode> {
    runtime()?.block_on(run(socket, args))
}

async fn run(socket: Option<&Path>, args: McpArgs) -> Result<ExitCode> {
    if !matches!(args.url.scheme(), "https" | "http") {
        anyhow::bail!("the MCP server's URL must be https (or http on loopback)");
    }
    let mut agent = connect_async(socket).await?;
    let key = pick_key_async(&mut agent, args.key.as_deref()).await?;
    let http = DpopClient::new(agent, key.label.clone())?;
    let auth = args.authorizer()?;
    // Only with --allow-bearer can the saved token be a Bearer one, to be sent as such.
    let bearer_check = if args.allow_bearer {
        Some(args.saved_token()?)
    } else {
        None
    };

    let (stop_tx, mut stop) = watch::channel(Stop::Running);
    let output = Output::start({
        let stop_tx = stop_tx.clone();
        move || {
            stop_tx.send_replace(Stop::ClientGone);
        }
    });
    let signal_stop = stop_tx.clone();
    let transport = Arc::new(Transport::new(
        http,
        args.url.clone(),
        auth,
        bearer_check,
        output.sender(),
        stop_tx,
        args.verbose,
    ));
    tokio::spawn({
        let stop_tx = signal_stop;
        async move {
            terminated().await;
            stop_tx.send_if_modified(|stop| {
                let first = matches!(stop, Stop::Running);
                if first {
                    *stop = Stop::Terminated;
                }
                first
            });
        }
    });
    if args.verbose {
        eprintln!("dpop mcp: bridging to {} with key {}", args.url, key.label);
    }

    let mut lines = stdio::read_lines();
    let mut in_flight = JoinSet::new();
    let mut listening = false;
    let end = loop {
        tokio::select! {
            line = lines.recv() => {
                let Some(line) = line else { break Stop::Running };
                let message = Outgoing::peek(&line);
                if message.is_initialize() {
                    // Everything after it needs the session it opens.
                    tokio::select! {
                        _ = transport.clone().post(line, message) => {}
                        _ = stop.changed() => break *stop.borrow(),
                    }
                    continue;
                }
                // The GET stream opens once the server has taken the initialized
                // notification, as the SDKs do.
                let open_stream = !listening && message.is_initialized_notification();
                listening |= open_stream;
                let transport = transport.clone();
                in_flight.spawn(async move {
                    let accepted = transport.clone().post(line, message).await;
                    if open_stream && accepted {
                        tokio::spawn(transport.listen());
                    }
                });
            }
            _ = stop.changed() => break *stop.borrow(),
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
        }
    };
    match end {
        Stop::Running => {
            // End of standard input: the answers still due, then the session's end.
            let drained = async { while in_flight.join_next().await.is_some() {} };
            tokio::select! {
                _ = tokio::time::timeout(EOF_GRACE, drained) => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() != Stop::SessionEnded {
                transport.delete_session().await;
            }
        }
        Stop::ClientGone | Stop::Terminated => transport.delete_session().await,
        Stop::SessionEnded | Stop::Closing => {}
    }
    in_flight.abort_all();
    output.finish();
    Ok(ExitCode::SUCCESS)
}

/// Resolves at SIGTERM or SIGINT (Ctrl-C elsewhere); never when the handlers cannot be set.
async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => std::future::pending().await,
        }
    }
    #[cfg(not(unix))]
    {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The saved token's name for the server at `url`: `mcp-` and the host, port and path with
/// every character a file name may not hold replaced by `_`; a name longer than the cache
/// allows (64) is cut and ends with a hash of the whole, so two URLs never share a token.
fn cache_name(url: &Url) -> String {
    let mut name = format!("mcp-{}", url.host_str().unwrap_or("local"));
    if let Some(port) = url.port() {
        name.push_str(&format!("-{port}"));
    }
    let path = url.path().trim_matches('/');
    if !path.is_empty() {
        name.push('-');
        name.push_str(path);
    }
    if let Some(query) = url.query() {
        name.push('-');
        name.push_str(query);
    }
    let mut name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.len() > 64 {
        // FNV-1a: stable across Rust versions, unlike std's hasher.
        let hash = url
            .as_str()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
            });
        name.truncate(47);
        name.push_str(&format!("-{hash:016x}"));
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_names_follow_the_url() {
        let name = |u: &str| cache_name(&Url::parse(u).unwrap());
        assert_eq!(
            name("https://mcp.example.com/mcp"),
            "mcp-mcp.example.com-mcp"
        );
        assert_eq!(name("https://mcp.example.com/"), "mcp-mcp.example.com");
        assert_eq!(
            name("http://127.0.0.1:8123/v1/mcp?tenant=a b"),
            "mcp-127.0.0.1-8123-v1_mcp-tenant_a_20b"
        );
        assert_eq!(name("http://[::1]:80/x"), "mcp-___1_-x");
        let long = format!("https://mcp.example.com/{}", "p".repeat(100));
        let other = format!("https://mcp.example.com/{}q", "p".repeat(100));
        assert_eq!(name(&long).len(), 64);
        assert_ne!(name(&long), name(&other));
        assert_eq!(name(&long), name(&long));
    }
}
