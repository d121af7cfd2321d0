//! `dpop token`: an OAuth access token bound to a key (client_credentials, refresh_token,
//! authorization_code with PKCE, device_code), through dpop-client's `http` module; the
//! proofs are signed by the agent.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use dpop_client::http::{
    CachedToken, ClientAuth, ClientSecretSource, DpopClient, LoopbackRedirect, OAuthClient, Token,
    TokenCache, TokenParams, Url, discover,
};
use dpop_protocol::KeyDescription;
use serde_json::json;
use zeroize::Zeroizing;

use super::{connect_async, open_browser, pick_key_async, runtime};
use crate::input::read_token_file;
use crate::output::{StdoutError, outln, print_json, printable};

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
pub(crate) struct TokenArgs {
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

impl TokenArgs {
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

    /// The authorization server: from `--token-url` and the other endpoint flags, or
    /// discovered from `--issuer` (which must accept the key's algorithm).
    async fn oauth_client(&self, http: &DpopClient, key: &KeyDescription) -> Result<OAuthClient> {
        let auth = self.client_auth()?;
        let mut client = match (&self.token_url, &self.issuer) {
            (Some(token_url), _) => OAuthClient::new(token_url.clone(), &self.client_id, auth),
            (None, Some(issuer)) => {
                let metadata = discover(http.reqwest(), issuer).await?;
                metadata.check_alg(&key.label, &key.alg.to_string())?;
                OAuthClient::from_metadata(&metadata, &self.client_id, auth)?
            }
            (None, None) => bail!("give --issuer or --token-url"),
        };
        if let Some(url) = &self.authorization_url {
            client = client.authorization_url(url.clone());
        }
        if let Some(url) = &self.device_authorization_url {
            client = client.device_authorization_url(url.clone());
        }
        if let Some(url) = &self.par_url {
            client = client.par_url(url.clone(), self.par);
        }
        Ok(client)
    }

    /// The authorization_code grant with PKCE: the user authorizes in a browser, which
    /// comes back to a loopback listener with the code.
    async fn authorization_code(
        &self,
        client: &OAuthClient,
        http: &DpopClient,
        key: &KeyDescription,
        params: &TokenParams,
    ) -> Result<Token> {
        let redirect = LoopbackRedirect::bind().await?;
        let jkt = (!self.no_dpop_jkt).then_some(key.jkt.as_str());
        let start = client
            .start_authorization(http, redirect.redirect_uri(), params, jkt, self.par)
            .await
            .map_err(explain)?;
        eprintln!("Open this URL in a browser to authorize:\n{}", start.url);
        if !self.no_browser {
            open_browser(start.url.as_str());
        }
        let redirected = tokio::time::timeout(AUTHORIZATION_TIMEOUT, redirect.wait(&start.state))
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "no authorization came back within {} minutes",
                    AUTHORIZATION_TIMEOUT.as_secs() / 60
                )
            })??;
        let state = redirected.state.clone();
        client
            .exchange_code(http, start, &redirected.code, &state, params)
            .await
            .map_err(explain)
    }
}

pub(crate) fn exec(socket: Option<&Path>, cmd: TokenArgs) -> Result<ExitCode> {
    runtime()?.block_on(run(socket, cmd))
}

async fn run(socket: Option<&Path>, cmd: TokenArgs) -> Result<ExitCode> {
    let mut agent = connect_async(socket).await?;
    let key = pick_key_async(&mut agent, cmd.key.as_deref()).await?;
    let http = DpopClient::new(agent, key.label.clone())?;
    let client = cmd.oauth_client(&http, &key).await?;
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
            cmd.authorization_code(&client, &http, &key, &params)
                .await?
        }
        Grant::DeviceCode => device_code(&client, &http, &params).await?,
    };
    if cmd.verbose {
        eprintln!(
            "* answered {} use_dpop_nonce challenge(s) with the server's DPoP-Nonce",
            http.nonce_retries()
        );
    }
    if let Some(name) = &cmd.save {
        let record = CachedToken::new(name, &token, &key, &client, cmd.secret_source(), &params)?;
        let cache = TokenCache::default_location()?;
        // Not in the middle of another process's refresh of the same name.
        let lock = cache.lock(name).await?;
        let path = cache.save(&record)?;
        drop(lock);
        eprintln!(
            "saved token {name} ({}, key {}{}) in {}",
            printable(&token.token_type),
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

/// The device_code grant: the user authorizes on another device while we poll.
async fn device_code(
    client: &OAuthClient,
    http: &DpopClient,
    params: &TokenParams,
) -> Result<Token> {
    let device = client
        .device_authorization(http, params)
        .await
        .map_err(explain)?;
    // What the server sent goes to the terminal: no escape sequence or line break of its own.
    let (uri, code) = (
        printable(device.verification_uri()),
        printable(device.user_code()),
    );
    match device.verification_uri_complete() {
        Some(complete) => eprintln!(
            "To authorize, open {}\n(or open {uri} and enter the code {code})",
            printable(complete)
        ),
        None => eprintln!("To authorize, open {uri} and enter the code {code}"),
    }
    client
        .device_poll(http, &device, params)
        .await
        .map_err(explain)
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
