//! DPoP over HTTP (feature `http`): token requests and API calls whose proofs come from the
//! agent.
//!
//! - [`DpopClient`] wraps a [`reqwest::Client`]: every request gets a fresh `DPoP` proof from
//!   the agent (and `Authorization: DPoP <token>` with `ath` when a token is given), every
//!   `DPoP-Nonce` a server sends is reported to the agent, which keeps it for the key and the
//!   origin and puts it in the next proof, and a `use_dpop_nonce` challenge (a 400 JSON error
//!   from a token endpoint, a 401 `WWW-Authenticate: DPoP error="use_dpop_nonce"` from a
//!   resource server) is answered by exactly one retry with a fresh proof. Redirects are
//!   followed only within the same origin, with a new proof per hop.
//! - [`OAuthClient`] requests tokens with the `oauth2` crate, its HTTP going through the same
//!   [`DpopClient`]: `client_credentials`, `refresh_token`, `authorization_code` with PKCE S256
//!   (optionally pushed, RFC 9126, and with `dpop_jkt`) and `device_code` (RFC 8628).
//! - [`discover`] reads RFC 8414 / OpenID Connect metadata and [`ServerMetadata::check_alg`]
//!   refuses a key whose algorithm the server does not accept.
//! - [`TokenSource`] keeps a token in memory and renews it (refresh token, or a new
//!   `client_credentials` request) when it expires.
//! - [`TokenCache`] keeps tokens in 0600 files bound to their key's thumbprint and refreshes
//!   them; [`LoopbackRedirect`] receives the authorization code on 127.0.0.1 (RFC 8252).
//! - [`ResourceAuthorizer`] is the client side of MCP authorization (2025-11-25): it answers a
//!   protected resource's 401 and `403 insufficient_scope` challenges with resource metadata
//!   (RFC 9728), authorization server discovery in the MCP order ([`discover_mcp`]), client
//!   registration and the code grant, and keeps the DPoP-bound token in a [`TokenCache`].
//!
//! ```no_run
//! use dpop_client::http::{ClientAuth, DpopClient, OAuthClient, TokenParams, discover};
//!
//! # async fn demo() -> Result<(), dpop_client::http::Error> {
//! let http = DpopClient::new(dpop_client::Client::connect_env().await?, "api")?;
//! let metadata = discover(http.reqwest(), "https://as.example.com").await?;
//! metadata.check_alg("api", "ES256")?;
//! let oauth = OAuthClient::from_metadata(&metadata, "my-client", ClientAuth::None)?;
//! let token = oauth
//!     .client_credentials(&http, &TokenParams::default().scope("read"))
//!     .await?;
//! let request = http.reqwest().get("https://api.example.com/v1/items").build()?;
//! let response = http.send(request, Some(token.access_token())).await?;
//! println!("{}", response.status());
//! # Ok(()) }
//! ```

mod cache;
mod challenge;
mod client;
mod discovery;
mod loopback;
mod resource_auth;
mod source;
mod token;

pub use cache::{CachedToken, ClientSecretSource, TokenCache, TokenLock};
pub use challenge::{Challenge, OAuthErrorBody, printable};
pub use client::{DpopClient, Sent};
pub use discovery::{ServerMetadata, discover, discover_mcp};
pub use loopback::{LoopbackRedirect, Redirected};
pub use resource_auth::{
    AuthorizerOptions, Progress, ProtectedResourceMetadata, ResourceAuthorizer,
    protected_resource_metadata,
};
pub use source::TokenSource;
pub use token::{
    AuthorizationStart, ClientAuth, DeviceAuthorization, OAuthClient, Token, TokenParams,
};

pub use reqwest;
pub use url::Url;

use std::path::PathBuf;

/// What can go wrong on the HTTP side.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Talking to the agent failed.
    #[error(transparent)]
    Agent(#[from] crate::Error),
    /// The HTTP request failed (connection, TLS, timeout, body).
    #[error("HTTP request failed")]
    Http(#[from] reqwest::Error),
    /// A URL is not valid.
    #[error("invalid URL")]
    Url(#[from] url::ParseError),
    /// A URL is valid but not usable here.
    #[error("invalid URL {url}: {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// Why.
        reason: &'static str,
    },
    /// A header value could not be built or read.
    #[error("invalid header value: {0}")]
    Header(String),
    /// The server asked for a retry with a nonce, and the request body is a stream that
    /// cannot be sent twice.
    #[error("the server asked for a DPoP nonce, and the request body cannot be sent again")]
    BodyNotReplayable,
    /// A redirect to another origin: a proof and token are never sent there.
    #[error("refusing to follow a redirect from {from} to another origin ({to})")]
    CrossOriginRedirect {
        /// Origin of the request.
        from: String,
        /// Where the server pointed.
        to: String,
    },
    /// More than 10 redirects.
    #[error("more than {0} redirects")]
    TooManyRedirects(usize),
    /// The authorization server answered with an OAuth error.
    #[error("{0}")]
    OAuth(OAuthErrorBody),
    /// The authorization server's answer is not what OAuth says.
    #[error("unexpected answer from the authorization server: {0}")]
    BadResponse(String),
    /// The client configuration lacks an endpoint the grant needs.
    #[error("{0}")]
    Config(String),
    /// The token is not DPoP-bound (`token_type` is not `DPoP`).
    #[error(
        "the authorization server issued a {token_type:?} token, not a DPoP-bound one \
         (it may not support DPoP for this client)"
    )]
    NotDpop {
        /// The `token_type` it answered.
        token_type: String,
    },
    /// Metadata discovery failed.
    #[error("discovery at {issuer}: {reason}")]
    Discovery {
        /// The issuer.
        issuer: String,
        /// Why.
        reason: String,
    },
    /// The server does not accept proofs of this key's algorithm.
    #[error(
        "the server accepts DPoP proofs signed with {supported} only, and key {key:?} is {alg}: \
         use a key of one of those algorithms (dpop keys generate --alg ...)"
    )]
    AlgorithmNotSupported {
        /// The key.
        key: String,
        /// Its algorithm.
        alg: String,
        /// What the server lists in `dpop_signing_alg_values_supported`.
        supported: String,
    },
    /// The authorization redirect did not come back as expected.
    #[error("authorization failed: {0}")]
    Authorization(String),
    /// Reading or writing the token cache failed.
    #[error("token cache {path}: {source}")]
    Cache {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The token cache's directory is not private to this user: tokens are not read from or
    /// written to a directory someone else could put files in or swap.
    #[error(
        "token cache directory {path} is {reason}: refusing to use it (make it yours and \
         0700, e.g. chmod 700)"
    )]
    CacheDirUnsafe {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A cached token file is damaged.
    #[error("token cache {path} is damaged: {reason}")]
    CacheFormat {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// No cached token of that name.
    #[error("no saved token named {0:?} (dpop tokens list shows the saved ones)")]
    NoSuchToken(String),
    /// A token name that cannot be a file name.
    #[error("invalid token name {0:?}: use letters, digits, '.', '_' and '-'")]
    BadTokenName(String),
    /// The cached token's key is no longer in the agent.
    #[error("saved token {name:?} is bound to key {key:?}, which the agent no longer has")]
    KeyGone {
        /// The token's name.
        name: String,
        /// The key label.
        key: String,
    },
    /// The cached token's key label now names another key.
    #[error(
        "saved token {name:?} is bound to key {key:?} with thumbprint {saved}, but that label \
         now names a different key ({now}): the token would be refused, not sending it"
    )]
    KeyReplaced {
        /// The token's name.
        name: String,
        /// The key label.
        key: String,
        /// The thumbprint the token is bound to.
        saved: String,
        /// The thumbprint of the key with that label now.
        now: String,
    },
    /// A [`TokenSource`]'s token expired, has no refresh token and came from a grant that
    /// cannot be repeated without the user.
    #[error("the access token expired and has no refresh token")]
    SourceExpired,
    /// A response body is larger than this client reads into memory (an OAuth error is a
    /// few hundred bytes, a token response a few KiB): reading stopped at the limit.
    #[error(
        "the {what} from {url} is larger than {}: stopped reading it at that limit",
        size(*limit)
    )]
    BodyTooLarge {
        /// What was read: `error body`, `token response`, ...
        what: &'static str,
        /// Where from.
        url: String,
        /// The limit, bytes.
        limit: usize,
    },
    /// The cached token expired and cannot be refreshed.
    #[error("saved token {0:?} expired and has no refresh token: get a new one with dpop token")]
    Expired(String),
    /// Another process held a saved token's lock (it refreshes the token) for longer than
    /// this process waits.
    #[error(
        "the saved token's lock {path} is still held after {}s: another process has been \
         refreshing that token since (or hangs; end it, or try again)",
        waited.as_secs()
    )]
    LockTimeout {
        /// The lock file.
        path: PathBuf,
        /// How long this process waited.
        waited: std::time::Duration,
    },
    /// A saved token was refreshed, and the result could not be saved. The refreshed token
    /// is here (its access token works; when `rotated`, its refresh token is the only valid
    /// one, the file's being spent): keep it elsewhere, or use it and get a new one later.
    /// The file is marked (`refresh_started_at`), so later runs say what happened.
    #[error(
        "saved token {:?} was refreshed, but the result was not saved to {}: {cause}; {}",
        token.name,
        path.display(),
        if *rotated {
            "the refresh token in that file is spent (the server rotated it) and the new one \
             is lost when this process ends: get a new token with dpop token --save"
        } else {
            "the file still holds a valid refresh token, marked as being refreshed"
        }
    )]
    RefreshNotSaved {
        /// The token's file.
        path: PathBuf,
        /// Whether the server sent a new refresh token (the file's one is then spent).
        rotated: bool,
        /// Why saving failed (shown in the message, so not also a `source`).
        cause: Box<Error>,
        /// The refreshed token.
        token: Box<CachedToken>,
    },
    /// The server refused a refresh, and an earlier refresh of the same saved token never
    /// saved its result: its refresh token was most likely spent then.
    #[error(
        "saved token {name:?}: an earlier refresh (started at Unix time {since}) did not save \
         its result, so the saved refresh token was probably spent then, and the server now \
         refuses it ({cause}): get a new token with dpop token --save {name}"
    )]
    EarlierRefreshUnsaved {
        /// The token's name.
        name: String,
        /// When the earlier refresh started, seconds since the epoch.
        since: i64,
        /// The server's refusal (shown in the message).
        cause: Box<Error>,
    },
}

impl Error {
    /// The refreshed token of an [`Error::RefreshNotSaved`].
    pub fn unsaved_token(&self) -> Option<&CachedToken> {
        match self {
            Error::RefreshNotSaved { token, .. } => Some(token),
            _ => None,
        }
    }
}

/// The longest lifetime taken from a server (ten years): an `expires_in` beyond it is read
/// as this, so that adding it to a clock can neither overflow nor wrap.
pub(crate) const MAX_LIFETIME: std::time::Duration =
    std::time::Duration::from_secs(10 * 366 * 24 * 3600);

/// `lifetime` from a server, bounded by [`MAX_LIFETIME`].
pub(crate) fn bounded(lifetime: std::time::Duration) -> std::time::Duration {
    lifetime.min(MAX_LIFETIME)
}

/// Largest error body read into memory (an OAuth error is a small JSON object).
pub(crate) const MAX_ERROR_BODY: usize = 64 * 1024;
/// Largest successful JSON body (token, PAR or metadata) read into memory.
pub(crate) const MAX_JSON_BODY: usize = 1024 * 1024;

fn size(bytes: usize) -> String {
    if bytes >= 1024 * 1024 && bytes.is_multiple_of(1024 * 1024) {
        format!("{} MiB", bytes / (1024 * 1024))
    } else {
        format!("{} KiB", bytes / 1024)
    }
}

/// Reads `response`'s body chunk by chunk, failing as soon as it passes `limit` bytes (a
/// declared Content-Length over it fails before reading): a server that sends no length, or
/// a body that does not end, costs at most `limit` bytes of memory.
pub(crate) async fn read_body(
    mut response: reqwest::Response,
    what: &'static str,
    limit: usize,
) -> Result<Vec<u8>, Error> {
    let too_large = |response: &reqwest::Response| Error::BodyTooLarge {
        what,
        url: response.url().to_string(),
        limit,
    };
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_large(&response));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > limit {
            return Err(too_large(&response));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The limit for a response of `status`: small for errors, larger for answers.
pub(crate) fn body_limit(status: reqwest::StatusCode) -> (&'static str, usize) {
    if status.is_success() {
        ("response body", MAX_JSON_BODY)
    } else {
        ("error body", MAX_ERROR_BODY)
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
