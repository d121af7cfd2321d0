//! `dpop token`, `dpop request` and `dpop tokens`: OAuth tokens and API calls over HTTP, the
//! proofs signed by the agent, through dpop-client's `http` module on a one-thread runtime.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use dpop_client::http::reqwest::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use dpop_client::http::reqwest::{Method, Response, StatusCode};
use dpop_client::http::{
    CachedToken, Challenge, ClientAuth, ClientSecretSource, DpopClient, LoopbackRedirect,
    OAuthClient, OAuthErrorBody, Token, TokenCache, TokenParams, Url, discover,
};
use dpop_protocol::KeyDescription;
use serde_json::json;
use zeroize::Zeroizing;

use crate::{StdoutError, print_json, read_token_file};

/// How long `dpop token --grant authorization_code` waits for the browser.
const AUTHORIZATION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub(crate) enum Grant {
    ClientCredentials,
    RefreshToken,
    AuthorizationCode,
    DeviceCode,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub(crate) enum AuthMethod {
    None,
    ClientSecretBasic,
    ClientSecretPost,
}

/// `dpop token`'s arguments.
#[derive(Args)]
pub(crate) struct TokenCommand {
    /// Key label (may be left out when the agent has exactly one key).
    #[arg(long)]
    key: Option<String>,
    /// The grant.
    #[arg(long, value_enum, default_value = "client_credentials")]
    grant: Grant,
    /// Authorization server issuer: endpoints and accepted algorithms are discovered from its
    /// metadata (RFC 8414, then OpenID Connect).
    #[arg(long, required_unless_present = "token_url")]
    issuer: Option<String>,
    /// Token endpoint, instead of discovery.
    #[arg(long)]
    token_url: Option<Url>,
    /// Authorization endpoint (authorization_code without --issuer).
    #[arg(long)]
    authorization_url: Option<Url>,
    /// Device authorization endpoint (device_code without --issuer).
    #[arg(long)]
    device_authorization_url: Option<Url>,
    /// Pushed authorization request endpoint (RFC 9126).
    #[arg(long)]
    par_url: Option<Url>,
    /// Push the authorization request (done anyway when the server requires it).
    #[arg(long)]
    par: bool,
    /// The client id.
    #[arg(long)]
    client_id: String,
    /// Client authentication (default: client_secret_basic with a secret, none without).
    #[arg(long, value_enum)]
    client_auth: Option<AuthMethod>,
    /// Environment variable holding the client secret.
    #[arg(long, value_name = "VAR", conflicts_with = "client_secret_file")]
    client_secret_env: Option<String>,
    /// File holding the client secret.
    #[arg(long, value_name = "FILE")]
    client_secret_file: Option<PathBuf>,
    /// Scope to ask for (repeatable, or space-separated).
    #[arg(long)]
    scope: Vec<String>,
    /// Resource indicator, RFC 8707 (repeatable).
    #[arg(long)]
    resource: Vec<String>,
    /// Audience (for servers that use an `audience` parameter).
    #[arg(long)]
    audience: Option<String>,
    /// File holding the refresh token (refresh_token grant; "-" for standard input).
    #[arg(long, value_name = "FILE")]
    refresh_token_file: Option<PathBuf>,
    /// Do not send dpop_jkt with the authorization request (RFC 9449 section 10).
    #[arg(long)]
    no_dpop_jkt: bool,
    /// Print the authorization URL only; never start a browser.
    #[arg(long)]
    no_browser: bool,
    /// Accept a token that is not DPoP-bound (token_type other than DPoP).
    #[arg(long)]
    allow_bearer: bool,
    /// Save the token (0600, under $XDG_STATE_HOME/dpop/tokens) for dpop request --token
    /// NAME; the token is then not printed unless --print.
    #[arg(long, value_name = "NAME")]
    save: Option<String>,
    /// Print the access token even with --save.
    #[arg(long, requires = "save")]
    print: bool,
    /// Print the whole token response as JSON (access and refresh tokens included).
    #[arg(long)]
    json: bool,
    /// Say on standard error how many use_dpop_nonce challenges were answered.
    #[arg(short = 'v', long)]
    verbose: bool,
}

/// `dpop request`'s arguments.
#[derive(Args)]
pub(crate) struct RequestCommand {
    /// The URL.
    url: Url,
    /// Method (default GET, or POST with a body).
    #[arg(short = 'X', long)]
    method: Option<String>,
    /// Key label, when no --token names it (may be left out when the agent has one key).
    #[arg(long, conflicts_with = "token")]
    key: Option<String>,
    /// Saved token to send (refreshed when expired).
    #[arg(long, value_name = "NAME", conflicts_with = "access_token_file")]
    token: Option<String>,
    /// File holding the access token to send ("-" for standard input).
    #[arg(long, value_name = "FILE")]
    access_token_file: Option<PathBuf>,
    /// Extra header, 'Name: value' (repeatable).
    #[arg(short = 'H', long = "header", value_name = "HEADER")]
    headers: Vec<String>,
    /// Body; @FILE reads a file, @- standard input (form content type unless -H sets one).
    #[arg(
        short = 'd',
        long,
        conflicts_with = "data_binary",
        allow_hyphen_values = true
    )]
    data: Option<String>,
    /// Body sent as is; @FILE reads a file, @- standard input.
    #[arg(long, allow_hyphen_values = true)]
    data_binary: Option<String>,
    /// Put the status line and headers before the body on standard output.
    #[arg(short = 'i', long)]
    include: bool,
    /// Show the request and the response status and headers on standard error.
    #[arg(short = 'v', long)]
    verbose: bool,
    /// Write the body to FILE instead of standard output.
    #[arg(short = 'o', long, value_name = "FILE")]
    output: Option<PathBuf>,
}

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

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the HTTP runtime")
}

async fn connect(socket: &Option<PathBuf>) -> Result<dpop_client::Client> {
    Ok(match socket {
        Some(path) => dpop_client::Client::connect(path).await?,
        None => dpop_client::Client::connect_env().await?,
    })
}

async fn pick_key(agent: &mut dpop_client::Client, label: Option<&str>) -> Result<KeyDescription> {
    let keys = agent.list_keys().await?;
    crate::choose_key(keys, label)
}

impl TokenCommand {
    fn secret_source(&self) -> Option<ClientSecretSource> {
        match (&self.client_secret_env, &self.client_secret_file) {
            (Some(var), _) => Some(ClientSecretSource::Env(var.clone())),
            (None, Some(file)) => Some(ClientSecretSource::File(
                std::path::absolute(file).unwrap_or_else(|_| file.clone()),
            )),
            (None, None) => None,
        }
    }

    fn client_auth(&self) -> Result<ClientAuth> {
        let source = self.secret_source();
        let method = self.client_auth.unwrap_or(if source.is_some() {
            AuthMethod::ClientSecretBasic
        } else {
            AuthMethod::None
        });
        let secret = || -> Result<Zeroizing<String>> {
            let source = source.as_ref().context(
                "this client authentication needs --client-secret-env or --client-secret-file",
            )?;
            Ok(source.read()?)
        };
        Ok(match method {
            AuthMethod::None => {
                if source.is_some() {
                    bail!("--client-auth none takes no client secret");
                }
                ClientAuth::None
            }
            AuthMethod::ClientSecretBasic => ClientAuth::SecretBasic(secret()?),
            AuthMethod::ClientSecretPost => ClientAuth::SecretPost(secret()?),
        })
    }

    fn params(&self) -> TokenParams {
        let mut params = TokenParams {
            allow_bearer: self.allow_bearer,
            audience: self.audience.clone(),
            ..TokenParams::default()
        };
        for scope in &self.scope {
            params = params.scope(scope);
        }
        for resource in &self.resource {
            params = params.resource(resource);
        }
        params
    }
}

pub(crate) fn token(socket: &Option<PathBuf>, cmd: TokenCommand) -> Result<ExitCode> {
    runtime()?.block_on(token_async(socket, cmd))
}

async fn token_async(socket: &Option<PathBuf>, cmd: TokenCommand) -> Result<ExitCode> {
    let mut agent = connect(socket).await?;
    let key = pick_key(&mut agent, cmd.key.as_deref()).await?;
    let http = DpopClient::new(agent, key.label.clone())?;
    let auth = cmd.client_auth()?;
    let mut client = match (&cmd.token_url, &cmd.issuer) {
        (Some(token_url), _) => OAuthClient::new(token_url.clone(), &cmd.client_id, auth),
        (None, Some(issuer)) => {
            let metadata = discover(http.reqwest(), issuer).await?;
            metadata.check_alg(&key.label, &key.alg.to_string())?;
            OAuthClient::from_metadata(&metadata, &cmd.client_id, auth)?
        }
        (None, None) => bail!("give --issuer or --token-url"),
    };
    if let Some(url) = &cmd.authorization_url {
        client = client.authorization_url(url.clone());
    }
    if let Some(url) = &cmd.device_authorization_url {
        client = client.device_authorization_url(url.clone());
    }
    if let Some(url) = &cmd.par_url {
        client = client.par_url(url.clone(), cmd.par);
    }
    let params = cmd.params();
    let token = match cmd.grant {
        Grant::ClientCredentials => client
            .client_credentials(&http, &params)
            .await
            .map_err(explain)?,
        Grant::RefreshToken => {
            let file = cmd
                .refresh_token_file
                .as_ref()
                .context("the refresh_token grant needs --refresh-token-file")?;
            let refresh = read_token_file(file, "refresh token")?;
            client
                .refresh(&http, &refresh, &params)
                .await
                .map_err(explain)?
        }
        Grant::AuthorizationCode => {
            let redirect = LoopbackRedirect::bind().await?;
            let jkt = (!cmd.no_dpop_jkt).then_some(key.jkt.as_str());
            let start = client
                .start_authorization(&http, redirect.redirect_uri(), &params, jkt, cmd.par)
                .await
                .map_err(explain)?;
            eprintln!("Open this URL in a browser to authorize:\n{}", start.url);
            if !cmd.no_browser {
                open_browser(start.url.as_str());
            }
            let redirected = tokio::time::timeout(AUTHORIZATION_TIMEOUT, redirect.wait())
                .await
                .map_err(|_| {
                    anyhow::anyhow!(
                        "no authorization came back within {} minutes",
                        AUTHORIZATION_TIMEOUT.as_secs() / 60
                    )
                })??;
            let state = redirected.state.clone();
            client
                .exchange_code(&http, start, &redirected.code, &state, &params)
                .await
                .map_err(explain)?
        }
        Grant::DeviceCode => {
            let device = client
                .device_authorization(&http, &params)
                .await
                .map_err(explain)?;
            match device.verification_uri_complete() {
                Some(complete) => eprintln!(
                    "To authorize, open {complete}\n(or open {} and enter the code {})",
                    device.verification_uri(),
                    device.user_code()
                ),
                None => eprintln!(
                    "To authorize, open {} and enter the code {}",
                    device.verification_uri(),
                    device.user_code()
                ),
            }
            client
                .device_poll(&http, &device, &params)
                .await
                .map_err(explain)?
        }
    };
    if cmd.verbose {
        eprintln!(
            "* answered {} use_dpop_nonce challenge(s) with the server's DPoP-Nonce",
            http.nonce_retries()
        );
    }
    if let Some(name) = &cmd.save {
        let record = CachedToken::new(name, &token, &key, &client, cmd.secret_source(), &params)?;
        let path = TokenCache::default_location()?.save(&record)?;
        eprintln!(
            "saved token {name} ({}, key {}{}) in {}",
            token.token_type,
            key.label,
            token
                .expires_in
                .map(|d| format!(", expires in {}s", d.as_secs()))
                .unwrap_or_default(),
            path.display()
        );
        if !cmd.print && !cmd.json {
            return Ok(ExitCode::SUCCESS);
        }
    }
    print_token(&token, cmd.json, cmd.save.is_some() && !cmd.print)?;
    Ok(ExitCode::SUCCESS)
}

/// A token endpoint's refusal, with what a `use_dpop_nonce` at this point means.
fn explain(e: dpop_client::http::Error) -> anyhow::Error {
    let nonce_refused =
        matches!(&e, dpop_client::http::Error::OAuth(body) if body.error == "use_dpop_nonce");
    let e = anyhow::Error::new(e);
    if nonce_refused {
        e.context("the authorization server refused the nonce it had just sent, after one retry")
    } else {
        e
    }
}

fn print_token(token: &Token, json: bool, without_secrets: bool) -> Result<(), StdoutError> {
    if json {
        let mut value = json!({
            "token_type": token.token_type,
            "expires_in": token.expires_in.map(|d| d.as_secs()),
            "scope": token.scope,
        });
        if !without_secrets {
            value["access_token"] = json!(token.access_token());
            if let Some(refresh) = token.refresh_token() {
                value["refresh_token"] = json!(refresh);
            }
        }
        print_json(&value)
    } else {
        outln!("{}", token.access_token())
    }
}

/// Starts a browser when there is a display to show it on; the URL is printed either way.
fn open_browser(url: &str) {
    let graphical = ["DISPLAY", "WAYLAND_DISPLAY"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|d| !d.is_empty()));
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else if graphical {
        "xdg-open"
    } else {
        return;
    };
    // Detached and silent: a missing opener only means the user copies the URL.
    let _ = std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
}

pub(crate) fn tokens(cmd: TokensCommand) -> Result<()> {
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
                        })
                    })
                    .collect();
                print_json(&list)?;
            } else if tokens.is_empty() {
                outln!("no saved tokens")?;
            } else {
                let now = crate::unix_now();
                outln!("{:<20} {:<16} {:<14} TOKEN URL", "NAME", "KEY", "EXPIRES")?;
                for t in &tokens {
                    let expires = match t.expires_at {
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
    Ok(())
}

pub(crate) fn request(socket: &Option<PathBuf>, cmd: RequestCommand) -> Result<ExitCode> {
    runtime()?.block_on(request_async(socket, cmd))
}

/// The body of -d / --data-binary: the text itself, `@FILE`, or `@-` for standard input.
fn read_body(arg: &str, what: &str) -> Result<Vec<u8>> {
    match arg.strip_prefix('@') {
        Some("-") => {
            let mut body = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut body)
                .with_context(|| format!("reading the {what} from standard input"))?;
            Ok(body)
        }
        Some(path) => {
            std::fs::read(path).with_context(|| format!("reading the {what} from {path}"))
        }
        None => Ok(arg.as_bytes().to_vec()),
    }
}

async fn request_async(socket: &Option<PathBuf>, cmd: RequestCommand) -> Result<ExitCode> {
    let mut agent = connect(socket).await?;
    let (key_label, saved) = match &cmd.token {
        Some(name) => {
            let saved = TokenCache::default_location()?.load(name)?;
            (saved.key.clone(), Some(name.clone()))
        }
        None => (pick_key(&mut agent, cmd.key.as_deref()).await?.label, None),
    };
    let http = DpopClient::new(agent, key_label)?;
    let access_token: Option<Zeroizing<String>> = match (&saved, &cmd.access_token_file) {
        (Some(name), _) => {
            let token = TokenCache::default_location()?
                .fresh_token(name, &http)
                .await?;
            Some(Zeroizing::new(token.access_token().to_owned()))
        }
        (None, Some(file)) => Some(read_token_file(file, "access token")?),
        (None, None) => None,
    };

    let (body, form) = match (&cmd.data, &cmd.data_binary) {
        (Some(data), _) => {
            // As curl -d: line breaks of a file are dropped.
            let mut bytes = read_body(data, "request body")?;
            if data.starts_with('@') {
                bytes.retain(|&b| b != b'\n' && b != b'\r');
            }
            (Some(bytes), true)
        }
        (None, Some(data)) => (Some(read_body(data, "request body")?), false),
        (None, None) => (None, false),
    };
    let method = match &cmd.method {
        Some(m) => {
            Method::from_bytes(m.as_bytes()).with_context(|| format!("invalid method {m:?}"))?
        }
        None if body.is_some() => Method::POST,
        None => Method::GET,
    };
    let mut builder = http.reqwest().request(method.clone(), cmd.url.clone());
    let mut has_content_type = false;
    for header in &cmd.headers {
        let (name, value) = header
            .split_once(':')
            .with_context(|| format!("header {header:?} is not 'Name: value'"))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .with_context(|| format!("invalid header name in {header:?}"))?;
        if name == "dpop" || name == dpop_client::http::reqwest::header::AUTHORIZATION {
            bail!("dpop request sets the {name} header itself");
        }
        has_content_type |= name == CONTENT_TYPE;
        let value = HeaderValue::from_str(value.trim())
            .with_context(|| format!("invalid header value in {header:?}"))?;
        builder = builder.header(name, value);
    }
    if let Some(body) = body {
        if form && !has_content_type {
            builder = builder.header(CONTENT_TYPE, "application/x-www-form-urlencoded");
        }
        builder = builder.body(body);
    }
    let request = builder.build()?;
    if cmd.verbose {
        eprintln!("> {} {}", request.method(), request.url());
        for (name, value) in request.headers() {
            eprintln!("> {}: {}", name, value.to_str().unwrap_or("<binary>"));
        }
        if access_token.is_some() {
            eprintln!("> authorization: DPoP <redacted>");
        }
        eprintln!("> dpop: <proof from key {}>", http.key());
    }
    let response = http
        .send(request, access_token.as_deref().map(String::as_str))
        .await?;
    let status = response.status();
    let head = format_head(&response);
    if cmd.verbose && http.nonce_retries() > 0 {
        eprintln!("* use_dpop_nonce: retried once with the server's DPoP-Nonce");
    }
    if cmd.verbose {
        for line in head.lines() {
            eprintln!("< {line}");
        }
    }
    let error = (status.as_u16() >= 400).then(|| describe_failure(&response));
    let body = response
        .bytes()
        .await
        .context("reading the response body")?;
    let error = error.map(|e| e(&body));
    {
        let mut out: Box<dyn Write> = match &cmd.output {
            Some(path) => Box::new(
                std::fs::File::create(path)
                    .with_context(|| format!("creating {}", path.display()))?,
            ),
            None => Box::new(std::io::stdout().lock()),
        };
        let to_stdout = cmd.output.is_none();
        let wrap = |e: std::io::Error| -> anyhow::Error {
            if to_stdout {
                StdoutError(e).into()
            } else {
                anyhow::Error::new(e).context("writing the body")
            }
        };
        if cmd.include {
            out.write_all(head.as_bytes()).map_err(wrap)?;
            out.write_all(b"\n").map_err(wrap)?;
        }
        out.write_all(&body).map_err(wrap)?;
        out.flush().map_err(wrap)?;
        if to_stdout
            && !body.ends_with(b"\n")
            && !body.is_empty()
            && std::io::stdout().is_terminal()
        {
            out.write_all(b"\n").map_err(wrap)?;
        }
    }
    match error {
        Some(message) => {
            eprintln!("dpop: {message}");
            Ok(ExitCode::from(22))
        }
        None => Ok(ExitCode::SUCCESS),
    }
}

fn format_head(response: &Response) -> String {
    let mut head = format!("{:?} {}\n", response.version(), response.status());
    for (name, value) in response.headers() {
        head.push_str(&format!(
            "{}: {}\n",
            name,
            String::from_utf8_lossy(value.as_bytes())
        ));
    }
    head
}

/// What to say about a failed request: the status, the OAuth error from the
/// `WWW-Authenticate` challenge or the JSON body, and what a nonce problem means.
fn describe_failure(response: &Response) -> impl FnOnce(&[u8]) -> String + use<> {
    let status = response.status();
    let challenge_error = response
        .headers()
        .get_all(dpop_client::http::reqwest::header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Challenge::parse_all)
        .find_map(|c| c.oauth_error());
    let has_nonce = response.headers().contains_key("dpop-nonce");
    move |body: &[u8]| {
        let error = challenge_error.or_else(|| OAuthErrorBody::from_json(body));
        let mut message = format!("HTTP {}", status.as_u16());
        if let Some(reason) = status.canonical_reason() {
            message.push_str(&format!(" {reason}"));
        }
        if let Some(error) = &error {
            message.push_str(&format!(": {error}"));
            if error.error == "use_dpop_nonce" {
                message.push_str(if has_nonce {
                    " (the server refused the nonce it had just sent, after one retry)"
                } else {
                    " (the server asks for a DPoP nonce but sent no DPoP-Nonce header to use)"
                });
            }
        } else if status == StatusCode::UNAUTHORIZED {
            message.push_str(" (no WWW-Authenticate error from the server)");
        }
        message
    }
}
