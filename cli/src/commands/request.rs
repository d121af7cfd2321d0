//! `dpop request`: curl for DPoP APIs. Each request carries a proof from the agent (and
//! `Authorization: DPoP` with a token); a `use_dpop_nonce` challenge is retried once; HTTP
//! errors exit 22, as `curl --fail` does.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use dpop_client::http::reqwest::header::{
    AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue, WWW_AUTHENTICATE,
};
use dpop_client::http::reqwest::{Method, Request, Response, StatusCode};
use dpop_client::http::{Challenge, DpopClient, OAuthErrorBody, TokenCache, Url};
use zeroize::Zeroizing;

use super::{connect_async, pick_key_async, runtime};
use crate::input::{read_body, read_token_file};
use crate::output::{StdoutError, printable};

/// `dpop request`'s arguments.
#[derive(Args)]
pub(crate) struct RequestArgs {
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

pub(crate) fn exec(socket: Option<&Path>, cmd: RequestArgs) -> Result<ExitCode> {
    runtime()?.block_on(run(socket, cmd))
}

async fn run(socket: Option<&Path>, cmd: RequestArgs) -> Result<ExitCode> {
    let mut agent = connect_async(socket).await?;
    let (key_label, saved) = match &cmd.token {
        Some(name) => {
            let saved = TokenCache::default_location()?.load(name)?;
            (saved.key.clone(), Some(name.clone()))
        }
        None => (
            pick_key_async(&mut agent, cmd.key.as_deref()).await?.label,
            None,
        ),
    };
    let http = DpopClient::new(agent, key_label)?;
    // A refresh whose result could not be saved: its token is still good for this request,
    // and the error is reported after it.
    let mut unsaved = None;
    let access_token: Option<Zeroizing<String>> = match (&saved, &cmd.access_token_file) {
        (Some(name), _) => {
            let token = match TokenCache::default_location()?
                .fresh_token(name, &http)
                .await
            {
                Ok(token) => token,
                Err(e) => match e.unsaved_token() {
                    Some(token) => {
                        let token = token.clone();
                        unsaved = Some(e);
                        token
                    }
                    None => return Err(e.into()),
                },
            };
            Some(Zeroizing::new(token.access_token().to_owned()))
        }
        (None, Some(file)) => Some(read_token_file(file, "access token")?),
        (None, None) => None,
    };

    let request = cmd.build(&http)?;
    if cmd.verbose {
        eprintln!("> {} {}", request.method(), request.url());
        for (name, value) in request.headers() {
            eprintln!(
                "> {}: {}",
                name,
                printable(&String::from_utf8_lossy(value.as_bytes()))
            );
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
        // Header values may hold any byte above 0x7f, C1 controls among them.
        for line in head.lines() {
            eprintln!("< {}", printable(line));
        }
    }
    let error = (status.as_u16() >= 400).then(|| describe_failure(&response));
    let body = response
        .bytes()
        .await
        .context("reading the response body")?;
    let error = error.map(|e| e(&body));
    cmd.write_response(&head, &body)?;
    if let Some(message) = &error {
        eprintln!("dpop: {}", printable(message));
    }
    if let Some(e) = unsaved {
        // The request went out; the saved token is what is broken now.
        return Err(e.into());
    }
    Ok(if error.is_some() {
        ExitCode::from(22)
    } else {
        ExitCode::SUCCESS
    })
}

impl RequestArgs {
    /// The request the flags describe: method, URL, headers and body (the proof and the
    /// token are added when it is sent).
    fn build(&self, http: &DpopClient) -> Result<Request> {
        let (body, form) = match (&self.data, &self.data_binary) {
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
        let method = match &self.method {
            Some(m) => {
                Method::from_bytes(m.as_bytes()).with_context(|| format!("invalid method {m:?}"))?
            }
            None if body.is_some() => Method::POST,
            None => Method::GET,
        };
        let mut builder = http.reqwest().request(method, self.url.clone());
        let mut has_content_type = false;
        for header in &self.headers {
            let (name, value) = header
                .split_once(':')
                .with_context(|| format!("header {header:?} is not 'Name: value'"))?;
            let name = HeaderName::from_bytes(name.trim().as_bytes())
                .with_context(|| format!("invalid header name in {header:?}"))?;
            if name == "dpop" || name == AUTHORIZATION {
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
        Ok(builder.build()?)
    }

    /// Writes the body (after the head with `-i`) to standard output or the `-o` file; a body
    /// without a final newline gets one on a terminal.
    fn write_response(&self, head: &str, body: &[u8]) -> Result<()> {
        let mut out: Box<dyn Write> = match &self.output {
            Some(path) => Box::new(
                std::fs::File::create(path)
                    .with_context(|| format!("creating {}", path.display()))?,
            ),
            None => Box::new(std::io::stdout().lock()),
        };
        let to_stdout = self.output.is_none();
        let wrap = |e: std::io::Error| -> anyhow::Error {
            if to_stdout {
                StdoutError(e).into()
            } else {
                anyhow::Error::new(e).context("writing the body")
            }
        };
        if self.include {
            out.write_all(head.as_bytes()).map_err(wrap)?;
            out.write_all(b"\n").map_err(wrap)?;
        }
        out.write_all(body).map_err(wrap)?;
        out.flush().map_err(wrap)?;
        if to_stdout
            && !body.ends_with(b"\n")
            && !body.is_empty()
            && std::io::stdout().is_terminal()
        {
            out.write_all(b"\n").map_err(wrap)?;
        }
        Ok(())
    }
}

/// The status line and headers, as `-i` and `-v` show them.
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
        .get_all(WWW_AUTHENTICATE)
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
