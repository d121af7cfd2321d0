//! `dpop`: the command line of dpop-agent. Manages the agent's keys, prints proofs and checks
//! them, never touching private key material itself. Every command that prints data takes
//! `--json`.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use dpop_client::ProofRequest;
use dpop_client::blocking::Client;
use dpop_jose::{Algorithm, ExpectedRequest, LruReplayStore, VerifyOptions};
use dpop_protocol::{KeyDescription, KeyPolicy};
use serde_json::json;
use zeroize::Zeroizing;

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

#[derive(Subcommand)]
enum Command {
    /// Manage the agent's keys.
    #[command(subcommand, after_help = "Example:\n  dpop keys list")]
    Keys(KeysCommand),
    /// Print a key's public JWK.
    #[command(after_help = "Example:\n  dpop jwk --key api")]
    Jwk {
        #[command(flatten)]
        key: KeyArg,
        #[command(flatten)]
        out: Output,
    },
    /// Print a key's RFC 7638 thumbprint (jkt).
    #[command(after_help = "Example:\n  dpop thumbprint --key api")]
    Thumbprint {
        #[command(flatten)]
        key: KeyArg,
        #[command(flatten)]
        out: Output,
    },
    /// Print a DPoP proof for one request, alone on one line.
    #[command(
        after_help = "Example:\n  dpop proof --key api -X GET --url https://api.example.com/v1/items --access-token-file tok"
    )]
    Proof {
        #[command(flatten)]
        key: KeyArg,
        /// HTTP method, upper-case (GET, POST, ...).
        #[arg(long, short = 'X')]
        method: String,
        /// Request URL.
        #[arg(long)]
        url: String,
        #[command(flatten)]
        token: TokenArgs,
        /// Server-provided DPoP-Nonce.
        #[arg(long, allow_hyphen_values = true)]
        nonce: Option<String>,
        #[command(flatten)]
        out: Output,
    },
    /// Check a proof as a resource server would (RFC 9449 section 4.3).
    #[command(
        after_help = "Example:\n  dpop verify --proof \"$P\" -X GET --url https://api.example.com/v1/items --access-token-file tok"
    )]
    Verify {
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
        token: TokenArgs,
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
        out: Output,
    },
    /// Get an OAuth access token bound to a key (client_credentials, refresh_token,
    /// authorization_code with PKCE, device_code). Prints the access token on standard output,
    /// or with --save NAME keeps it for `dpop request --token NAME` and prints nothing.
    #[command(
        after_help = "Examples:\n  dpop token --key api --issuer https://as.example.com --client-id app --client-secret-env SECRET --save api\n  dpop token --key api --grant authorization_code --issuer https://as.example.com --client-id app --save me"
    )]
    Token(Box<web::TokenCommand>),
    /// Call an API like curl, with a DPoP proof (and `Authorization: DPoP` with a token) per
    /// request; a use_dpop_nonce challenge is retried once. Exits 22 on HTTP >= 400.
    #[command(
        after_help = "Examples:\n  dpop request https://api.example.com/v1/items --token api\n  dpop request -X POST https://api.example.com/v1/items --token api -H 'Content-Type: application/json' -d '{\"name\":\"x\"}'"
    )]
    Request(Box<web::RequestCommand>),
    /// Manage saved tokens (never prints their values).
    #[command(
        subcommand,
        after_help = "Examples:\n  dpop tokens list\n  dpop tokens delete api"
    )]
    Tokens(web::TokensCommand),
    /// The agent's pid, version, backends, lock state and key count.
    #[command(after_help = "Example:\n  dpop status")]
    Status {
        #[command(flatten)]
        out: Output,
    },
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
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print dpop's man page (roff).
    #[command(after_help = "Example:\n  dpop man > ~/.local/share/man/man1/dpop.1")]
    Man,
}

/// A key named by `--key LABEL`; left out, the agent's only key.
#[derive(Args)]
struct KeyArg {
    /// Key label (may be left out when the agent has exactly one key).
    #[arg(long = "key", value_name = "LABEL")]
    key: Option<String>,
}

/// A key's policy, enforced by the agent.
#[derive(Args, Default)]
struct PolicyArgs {
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
    /// With --confirm: a yes holds this long for the same client process (10m, 1h).
    #[arg(long, value_name = "LIFE", requires = "confirm")]
    confirm_remember: Option<String>,
}

impl PolicyArgs {
    fn given(&self) -> bool {
        !self.allow_origin.is_empty()
            || !self.allow_client.is_empty()
            || self.lifetime.is_some()
            || self.confirm
    }

    fn to_policy(&self) -> Result<KeyPolicy> {
        let lifetime = |text: &str| dpop_protocol::parse_lifetime(text).map_err(anyhow::Error::msg);
        Ok(KeyPolicy {
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
            confirm_remember_secs: self.confirm_remember.as_deref().map(lifetime).transpose()?,
        })
    }
}

#[derive(Subcommand)]
enum KeysCommand {
    /// List keys, with their policies.
    #[command(after_help = "Example:\n  dpop keys list")]
    List {
        #[command(flatten)]
        out: Output,
    },
    /// Generate a key inside a backend.
    #[command(
        after_help = "Examples:\n  dpop keys generate --key api\n  dpop keys generate --key hsm --backend pkcs11 --alg ES384 --allow-origin https://*.example.com --lifetime 8h"
    )]
    Generate {
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
        out: Output,
    },
    /// Import a PEM private key (PKCS#8, SEC1 or PKCS#1; "-" reads standard input).
    #[command(after_help = "Example:\n  dpop keys import key.pem --key imported --backend pkcs11")]
    Import {
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
        out: Output,
    },
    /// Adopt an existing PKCS#11 key by RFC 7512 URI, or a persistent TPM key by handle.
    #[command(
        after_help = "Example:\n  dpop keys adopt 'pkcs11:token=dpop;object=my-key;type=private' --key adopted"
    )]
    Adopt {
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
        out: Output,
    },
    /// Delete a key (an adopted key is only forgotten). A key on a token or TPM is destroyed
    /// there: asked for on a terminal, else --yes is needed.
    #[command(after_help = "Example:\n  dpop keys delete --key old")]
    Delete {
        #[command(flatten)]
        key: KeyArg,
        /// The key's label (as --key).
        #[arg(value_name = "LABEL", conflicts_with = "key")]
        label: Option<String>,
        /// Do not ask before deleting a key on a token or TPM.
        #[arg(long, short = 'y')]
        yes: bool,
        #[command(flatten)]
        out: Output,
    },
    /// Show or replace a key's policy (the flags given replace the whole policy; --clear
    /// removes it).
    #[command(
        after_help = "Examples:\n  dpop keys policy --key api\n  dpop keys policy --key api --allow-origin https://api.example.com --allow-client /usr/bin/curl --confirm --confirm-remember 10m"
    )]
    Policy {
        #[command(flatten)]
        key: KeyArg,
        #[command(flatten)]
        policy: PolicyArgs,
        /// Remove the policy.
        #[arg(long, conflicts_with_all = ["allow_origin", "allow_client", "lifetime", "confirm"])]
        clear: bool,
        #[command(flatten)]
        out: Output,
    },
}

#[derive(Args)]
struct Output {
    /// Machine-readable JSON output.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct TokenArgs {
    /// Access token presented with the request (sets ath). Visible to other local users in
    /// the process list: prefer --access-token-file.
    #[arg(long, conflicts_with = "access_token_file", allow_hyphen_values = true)]
    access_token: Option<String>,
    /// File holding the access token ("-" for standard input).
    #[arg(long, value_name = "FILE")]
    access_token_file: Option<PathBuf>,
}

impl TokenArgs {
    fn read(&self) -> Result<Option<Zeroizing<String>>> {
        if let Some(token) = &self.access_token {
            return Ok(Some(Zeroizing::new(token.clone())));
        }
        let Some(path) = &self.access_token_file else {
            return Ok(None);
        };
        read_token_file(path, "access token").map(Some)
    }
}

/// A token (access or refresh) from a file or `-`, without surrounding white space; an empty
/// one is refused.
fn read_token_file(path: &std::path::Path, what: &str) -> Result<Zeroizing<String>> {
    let text = read_input(path, what)?;
    let token = text.trim();
    if token.is_empty() {
        bail!("the {what} file {} is empty", path.display());
    }
    Ok(Zeroizing::new(token.to_owned()))
}

/// Reads a secret (a private key, an access token) from a file or `-` (standard input) into
/// a buffer that is wiped when dropped. A file is read into a buffer of its size, so that no
/// reallocation leaves a partial copy behind.
fn read_input(path: &std::path::Path, what: &str) -> Result<Zeroizing<String>> {
    let mut bytes = Zeroizing::new(Vec::new());
    let source = if path.as_os_str() == "-" {
        std::io::stdin()
            .read_to_end(&mut bytes)
            .with_context(|| format!("reading the {what} from standard input"))?;
        "standard input".to_owned()
    } else {
        let mut file = std::fs::File::open(path)
            .with_context(|| format!("reading the {what} from {}", path.display()))?;
        let size = file.metadata().map_or(0, |m| m.len());
        bytes.reserve_exact(usize::try_from(size).unwrap_or(0).saturating_add(1));
        file.read_to_end(&mut bytes)
            .with_context(|| format!("reading the {what} from {}", path.display()))?;
        path.display().to_string()
    };
    match String::from_utf8(std::mem::take(&mut *bytes)) {
        Ok(text) => Ok(Zeroizing::new(text)),
        Err(e) => {
            drop(Zeroizing::new(e.into_bytes()));
            let hint = match what {
                "private key" => {
                    ": expected PEM (a binary DER key converts with: openssl pkey -inform DER \
                     -in KEY.der | dpop keys import - --label L)"
                }
                _ => "",
            };
            bail!("the {what} from {source} is not UTF-8 text{hint}")
        }
    }
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
            eprintln!("dpop: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A failed write to standard output, kept apart from the agent socket's I/O errors so that
/// only a closed *output* pipe ends the command quietly.
#[derive(Debug, thiserror::Error)]
#[error("writing to standard output")]
struct StdoutError(#[source] std::io::Error);

impl StdoutError {
    fn is_closed_pipe(&self) -> bool {
        self.0.kind() == std::io::ErrorKind::BrokenPipe
    }
}

/// `println!` that returns a [`StdoutError`] instead of panicking when standard output is
/// gone (`dpop keys list | head -c1`).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*).map_err(StdoutError)
    }};
}

/// The reader of our output went away: end as coreutils do, by the SIGPIPE that Rust's
/// runtime ignores for us (the shell sees "killed by SIGPIPE" and says nothing). Resetting
/// SIGPIPE at start instead would also kill us on a write to an agent that closed the socket,
/// where the agent's refusal must be shown.
mod web;

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

fn connect(socket: &Option<PathBuf>) -> Result<Client> {
    Ok(match socket {
        Some(path) => Client::connect(path)?,
        None => Client::connect_env()?,
    })
}

fn print_json(value: &impl serde::Serialize) -> Result<(), StdoutError> {
    outln!(
        "{}",
        serde_json::to_string_pretty(value).expect("JSON output serializes")
    )
}

fn print_key(key: &KeyDescription, json: bool, verb: &str) -> Result<(), StdoutError> {
    if json {
        print_json(key)
    } else {
        outln!(
            "{verb} {} ({} {}, jkt {})",
            key.label,
            key.backend,
            key.alg,
            key.jkt
        )
    }
}

fn pick_key(client: &mut Client, label: Option<&str>) -> Result<KeyDescription> {
    choose_key(client.list_keys()?, label)
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

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Keys(cmd) => keys(&cli.socket, cmd)?,
        Command::Jwk { key, out } => {
            let key = pick_key(&mut connect(&cli.socket)?, key.key.as_deref())?;
            if out.json {
                print_json(&key.jwk)?;
            } else {
                outln!("{}", serde_json::to_string(&key.jwk)?)?;
            }
        }
        Command::Thumbprint { key, out } => {
            let key = pick_key(&mut connect(&cli.socket)?, key.key.as_deref())?;
            if out.json {
                print_json(&json!({ "label": key.label, "jkt": key.jkt }))?;
            } else {
                outln!("{}", key.jkt)?;
            }
        }
        Command::Proof {
            key,
            method,
            url,
            token,
            nonce,
            out,
        } => {
            let token = token.read()?;
            let mut request = ProofRequest::new(&method, &url);
            if let Some(token) = &token {
                request = request.access_token(token);
            }
            if let Some(nonce) = &nonce {
                request = request.nonce(nonce);
            }
            let mut client = connect(&cli.socket)?;
            let key = match key.key {
                Some(label) => label,
                None => pick_key(&mut client, None)?.label,
            };
            let proof = client.sign_proof(&key, &request)?;
            if out.json {
                print_json(&json!({ "proof": proof }))?;
            } else {
                outln!("{proof}")?;
            }
        }
        Command::Verify {
            proof,
            method,
            url,
            token,
            jkt,
            nonce,
            max_age,
            out,
        } => return verify(&proof, &method, &url, &token, jkt, nonce, max_age, out.json),
        Command::Token(cmd) => return web::token(&cli.socket, *cmd),
        Command::Request(cmd) => return web::request(&cli.socket, *cmd),
        Command::Tokens(cmd) => web::tokens(cmd)?,
        Command::Status { out } => {
            let status = connect(&cli.socket)?.status()?;
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
        }
        Command::Lock => {
            let passphrase = read_passphrase("Lock passphrase: ", true)?;
            connect(&cli.socket)?.lock(&passphrase)?;
            eprintln!("agent locked");
        }
        Command::Unlock => {
            let passphrase = read_passphrase("Unlock passphrase: ", false)?;
            connect(&cli.socket)?.unlock(&passphrase)?;
            eprintln!("agent unlocked");
        }
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "dpop", &mut std::io::stdout());
        }
        Command::Man => {
            clap_mangen::Man::new(<Cli as clap::CommandFactory>::command())
                .render(&mut std::io::stdout())
                .map_err(StdoutError)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A passphrase from the terminal (asked twice to lock, so a typo does not lock the agent
/// for good), or the first line of standard input when it is not a terminal.
fn read_passphrase(prompt: &str, confirm: bool) -> Result<Zeroizing<String>> {
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        let mut line = Zeroizing::new(String::new());
        std::io::stdin()
            .read_line(&mut line)
            .context("reading the passphrase from standard input")?;
        let passphrase = Zeroizing::new(line.trim_end_matches(['\r', '\n']).to_owned());
        if passphrase.is_empty() {
            bail!("no passphrase on standard input");
        }
        return Ok(passphrase);
    }
    let first =
        Zeroizing::new(rpassword::prompt_password(prompt).context("reading the passphrase")?);
    if confirm {
        let again = Zeroizing::new(
            rpassword::prompt_password("Again: ").context("reading the passphrase")?,
        );
        if *again != *first {
            bail!("the passphrases differ; the agent stays unlocked");
        }
    }
    if first.is_empty() {
        bail!("an empty passphrase");
    }
    Ok(first)
}

/// A short summary of a policy for `keys list`.
fn policy_summary(policy: &KeyPolicy) -> String {
    let mut parts = Vec::new();
    if !policy.allow_origins.is_empty() {
        parts.push(format!("origins={}", policy.allow_origins.join(",")));
    }
    if !policy.allow_clients.is_empty() {
        parts.push(format!("clients={}", policy.allow_clients.len()));
    }
    if let Some(at) = policy.expires_at {
        let left = at - unix_now();
        parts.push(if left <= 0 {
            "expired".to_owned()
        } else {
            format!("expires in {}", human_duration(left))
        });
    }
    if policy.confirm {
        parts.push("confirm".to_owned());
    }
    if parts.is_empty() {
        "-".to_owned()
    } else {
        parts.join(" ")
    }
}

fn human_duration(seconds: i64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// Prints rows under a header, each column as wide as its widest cell; the last column is not
/// padded.
fn print_table(header: &[&str], rows: &[Vec<String>]) -> Result<(), StdoutError> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len() - 1;
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == last {
                    (*c).to_owned()
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    outln!("{}", line(header.to_vec()))?;
    for row in rows {
        outln!("{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

fn keys(socket: &Option<PathBuf>, cmd: KeysCommand) -> Result<()> {
    let mut client = connect(socket)?;
    match cmd {
        KeysCommand::List { out } => {
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
                            policy_summary(&k.policy),
                            k.jkt.clone(),
                        ]
                    })
                    .collect();
                print_table(
                    &["LABEL", "ALG", "BACKEND", "STORED", "POLICY", "JKT"],
                    &rows,
                )?;
            }
        }
        KeysCommand::Generate {
            key,
            backend,
            alg,
            policy,
            out,
        } => {
            let made = if policy.given() {
                client.generate_key_with_policy(
                    &key,
                    Some(&backend),
                    Some(alg),
                    &policy.to_policy()?,
                )?
            } else {
                client.generate_key(&key, Some(&backend), Some(alg))?
            };
            print_key(&made, out.json, "generated")?
        }
        KeysCommand::Import {
            file,
            key,
            backend,
            alg,
            policy,
            out,
        } => {
            let pem = read_input(&file, "private key")?;
            let made = if policy.given() {
                client.import_key_with_policy(
                    &key,
                    Some(&backend),
                    &pem,
                    alg,
                    &policy.to_policy()?,
                )?
            } else {
                client.import_key(&key, Some(&backend), &pem, alg)?
            };
            print_key(&made, out.json, "imported")?
        }
        KeysCommand::Adopt {
            uri,
            key,
            alg,
            policy,
            out,
        } => {
            let made = if policy.given() {
                client.adopt_key_with_policy(&uri, &key, alg, &policy.to_policy()?)?
            } else {
                client.adopt_key(&uri, &key, alg)?
            };
            print_key(&made, out.json, "adopted")?
        }
        KeysCommand::Delete {
            key,
            label,
            yes,
            out,
        } => {
            let key = pick_key(&mut client, key.key.as_deref().or(label.as_deref()))?;
            if key.backend != "software" && !yes {
                confirm_delete(&key)?;
            }
            print_key(&client.delete_key(&key.label)?, out.json, "deleted")?
        }
        KeysCommand::Policy {
            key,
            policy,
            clear,
            out,
        } => {
            let key = pick_key(&mut client, key.key.as_deref())?;
            let key = if clear {
                client.set_policy(&key.label, &KeyPolicy::default())?
            } else if policy.given() {
                client.set_policy(&key.label, &policy.to_policy()?)?
            } else {
                key
            };
            if out.json {
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
        }
    }
    Ok(())
}

/// Deleting a key on a token or TPM destroys it there (unless it was adopted): ask on a
/// terminal, refuse without `--yes` elsewhere.
fn confirm_delete(key: &KeyDescription) -> Result<()> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        bail!(
            "key {:?} is on the {} backend, where deleting destroys it (an adopted key is only \
             forgotten); add --yes to delete it",
            key.label,
            key.backend
        );
    }
    eprint!(
        "Delete key {:?} from the {} backend? It cannot be undone (an adopted key is only forgotten). [y/N] ",
        key.label, key.backend
    );
    std::io::stderr().flush().ok();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if !matches!(answer.trim(), "y" | "Y" | "yes") {
        bail!("not deleted");
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn verify(
    proof: &str,
    method: &str,
    url: &str,
    token: &TokenArgs,
    jkt: Option<String>,
    nonce: Option<String>,
    max_age: i64,
    json: bool,
) -> Result<ExitCode> {
    let token = token.read()?;
    let now = unix_now();
    let options = VerifyOptions {
        max_age,
        ..VerifyOptions::default()
    };
    let request = ExpectedRequest {
        method,
        url,
        access_token: token.as_deref().map(String::as_str),
        jkt: jkt.as_deref(),
    };
    let replay = LruReplayStore::new(std::num::NonZeroUsize::new(1).expect("non-zero"));
    let result = match &nonce {
        Some(n) => dpop_jose::verify(proof, &request, &options, &n.as_str(), &replay, now),
        None => dpop_jose::verify(proof, &request, &options, &(), &replay, now),
    };
    match result {
        Ok(valid) => {
            if json {
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
            if json {
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

/// Seconds since the Unix epoch.
fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
