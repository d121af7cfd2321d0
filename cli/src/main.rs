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
use dpop_protocol::KeyDescription;
use serde_json::json;
use zeroize::Zeroizing;

/// dpop: DPoP (RFC 9449) proofs from keys that stay in dpop-agent.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Agent socket (default: $DPOP_AUTH_SOCK).
    #[arg(long, global = true, value_name = "SOCKET")]
    socket: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Manage the agent's keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Print a key's public JWK.
    Jwk {
        /// Key label (may be left out when the agent has exactly one key).
        #[arg(long)]
        key: Option<String>,
        #[command(flatten)]
        out: Output,
    },
    /// Print a key's RFC 7638 thumbprint (jkt).
    Thumbprint {
        /// Key label (may be left out when the agent has exactly one key).
        #[arg(long)]
        key: Option<String>,
        #[command(flatten)]
        out: Output,
    },
    /// Print a DPoP proof for one request, alone on one line.
    Proof {
        /// Key label.
        #[arg(long)]
        key: String,
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
    Token(Box<web::TokenCommand>),
    /// Call an API like curl, with a DPoP proof (and `Authorization: DPoP` with a token) per
    /// request; a use_dpop_nonce challenge is retried once. Exits 22 on HTTP >= 400.
    Request(Box<web::RequestCommand>),
    /// Manage saved tokens (never prints their values).
    #[command(subcommand)]
    Tokens(web::TokensCommand),
}

#[derive(Subcommand)]
enum KeysCommand {
    /// List keys.
    List {
        #[command(flatten)]
        out: Output,
    },
    /// Generate a key inside a backend.
    Generate {
        /// The new key's label.
        #[arg(long)]
        label: String,
        /// software, pkcs11 or tpm.
        #[arg(long, default_value = "software")]
        backend: String,
        /// ES256, ES384, RS256, PS256 or EdDSA.
        #[arg(long, default_value = "ES256")]
        alg: Algorithm,
        #[command(flatten)]
        out: Output,
    },
    /// Import a PEM private key (PKCS#8, SEC1 or PKCS#1; "-" reads standard input).
    Import {
        /// The PEM file.
        file: PathBuf,
        /// The new key's label.
        #[arg(long)]
        label: String,
        /// software or pkcs11.
        #[arg(long, default_value = "software")]
        backend: String,
        /// For RSA keys: RS256 (default) or PS256.
        #[arg(long)]
        alg: Option<Algorithm>,
        #[command(flatten)]
        out: Output,
    },
    /// Adopt an existing PKCS#11 key by RFC 7512 URI, or a persistent TPM key by handle.
    Adopt {
        /// pkcs11:token=...;object=...;type=private, or tpm:handle=0x81000001
        uri: String,
        /// The label to file it under.
        #[arg(long)]
        label: String,
        /// For RSA keys: RS256 (default) or PS256.
        #[arg(long)]
        alg: Option<Algorithm>,
        #[command(flatten)]
        out: Output,
    },
    /// Delete a key (an adopted key is only forgotten).
    Delete {
        /// The key's label.
        label: String,
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
        let text = read_input(path, "access token")?;
        let token = text.trim();
        if token.is_empty() {
            bail!("the access token file {} is empty", path.display());
        }
        Ok(Some(Zeroizing::new(token.to_owned())))
    }
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
            let key = pick_key(&mut connect(&cli.socket)?, key.as_deref())?;
            if out.json {
                print_json(&key.jwk)?;
            } else {
                outln!("{}", serde_json::to_string(&key.jwk)?)?;
            }
        }
        Command::Thumbprint { key, out } => {
            let key = pick_key(&mut connect(&cli.socket)?, key.as_deref())?;
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
            let proof = connect(&cli.socket)?.sign_proof(&key, &request)?;
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
    }
    Ok(ExitCode::SUCCESS)
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
                outln!(
                    "{:<24} {:<6} {:<9} {:<10} JKT",
                    "LABEL",
                    "ALG",
                    "BACKEND",
                    "STORED"
                )?;
                for k in keys {
                    let stored = if k.persistent { "yes" } else { "memory" };
                    outln!(
                        "{:<24} {:<6} {:<9} {:<10} {}",
                        k.label,
                        k.alg,
                        k.backend,
                        stored,
                        k.jkt
                    )?;
                }
            }
        }
        KeysCommand::Generate {
            label,
            backend,
            alg,
            out,
        } => print_key(
            &client.generate_key(&label, Some(&backend), Some(alg))?,
            out.json,
            "generated",
        )?,
        KeysCommand::Import {
            file,
            label,
            backend,
            alg,
            out,
        } => {
            let pem = read_input(&file, "private key")?;
            print_key(
                &client.import_key(&label, Some(&backend), &pem, alg)?,
                out.json,
                "imported",
            )?
        }
        KeysCommand::Adopt {
            uri,
            label,
            alg,
            out,
        } => print_key(&client.adopt_key(&uri, &label, alg)?, out.json, "adopted")?,
        KeysCommand::Delete { label, out } => {
            print_key(&client.delete_key(&label)?, out.json, "deleted")?
        }
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
