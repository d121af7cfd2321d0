//! MCP authorization (MCP specification 2025-11-25, "Authorization"): a client of a protected
//! resource (an MCP server) that answers its `401` and `403 insufficient_scope` challenges by
//! itself: protected resource metadata (RFC 9728), authorization server metadata (RFC 8414 /
//! OpenID Connect discovery, in the MCP order), client registration (pre-registered, a Client
//! ID Metadata Document, or dynamic registration, RFC 7591), and the authorization code grant
//! with PKCE S256, `state`, `resource` (RFC 8707) and the `iss` response parameter (RFC 9207).
//! Every token request carries a DPoP proof from the agent, and the tokens are DPoP-bound and
//! kept in the [`TokenCache`].
//!
//! The order of things in a flow (each step stops it with an error when it fails, before the
//! next one sends anything):
//! 1. the challenge (`DPoP` or `Bearer`, [`Challenge::from_headers`]) names the metadata
//!    (`resource_metadata`), else `/.well-known/oauth-protected-resource/<path>`, then
//!    `/.well-known/oauth-protected-resource`; its `resource` must be the resource's
//!    canonical URI;
//! 2. its first authorization server's metadata ([`discover_mcp`], exact issuer), which must
//!    list `S256` and, when it lists DPoP algorithms, the key's;
//! 3. the client: [`AuthorizerOptions::client_id`]; else
//!    [`AuthorizerOptions::client_metadata_url`] when the server supports Client ID Metadata
//!    Documents; else the registration made earlier at this issuer, or a new one (RFC 7591:
//!    a native public client, `redirect_uris` `http://127.0.0.1:PORT/callback`,
//!    `dpop_bound_access_tokens`), kept in the cache directory. The port of a remembered
//!    registration is bound again when free, else any port (RFC 8252 section 7.3 lets a
//!    loopback redirect use any);
//! 4. the code grant: PKCE S256, `state`, `resource`, `scope`, `dpop_jkt`, the URL handed to
//!    the caller's `open_url`, `iss` checked (RFC 9207), the code traded with a DPoP proof;
//!    a token that is not DPoP-bound is refused unless [`AuthorizerOptions::allow_bearer`].
//!
//! Over 600 lines: about 75 of them are these docs, and most of the rest is one flow, the
//! steps above as methods of [`ResourceAuthorizer`] sharing its options and state; what
//! stands alone already lives beside it (`metadata.rs`: RFC 9728 documents and resource
//! matching; `registration.rs`: client registration).
//!
//! ```no_run
//! use dpop_client::http::{AuthorizerOptions, DpopClient, ResourceAuthorizer, TokenCache, Url};
//!
//! # async fn demo() -> Result<(), dpop_client::http::Error> {
//! let http = DpopClient::new(dpop_client::Client::connect_env().await?, "mcp-key")?;
//! let options = AuthorizerOptions::new(TokenCache::default_location()?, "mcp-example");
//! let authorizer = ResourceAuthorizer::new(
//!     Url::parse("https://mcp.example.com/mcp")?,
//!     options,
//!     Box::new(|url: &Url| eprintln!("Open this URL in a browser to authorize:\n{url}")),
//! );
//! let body = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
//! let mut retried = false;
//! let response = loop {
//!     let token = authorizer.token(&http).await?;
//!     let request = http
//!         .reqwest()
//!         .post("https://mcp.example.com/mcp")
//!         .body(body)
//!         .build()?;
//!     let response = http.send(request, token.as_deref().map(String::as_str)).await?;
//!     let (status, headers) = (response.status(), response.headers().clone());
//!     if retried || !authorizer.on_challenge(&http, status, &headers).await? {
//!         break response;
//!     }
//!     retried = true;
//! };
//! println!("{}", response.status());
//! # Ok(()) }
//! ```
//!
//! Over 600 lines with its tests: this file is the flow in order (the steps above, the
//! concurrency guard, step-up); what each step reads lives in `metadata.rs` and
//! `registration.rs`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dpop_protocol::KeyDescription;
use secrecy::{ExposeSecret, SecretString};
use url::Url;
use zeroize::Zeroizing;

use super::{
    CachedToken, Challenge, ClientAuth, ClientSecretSource, DpopClient, Error, LoopbackRedirect,
    OAuthClient, ServerMetadata, TokenCache, TokenParams, discover_mcp, printable,
};

mod metadata;
mod registration;

pub use metadata::{ProtectedResourceMetadata, protected_resource_metadata};

/// A sink for progress lines (discovery, registration, challenges answered; never a token).
pub type Progress = Box<dyn Fn(&str) + Send + Sync>;

/// What a [`ResourceAuthorizer`] is given besides the resource. Build it with
/// [`AuthorizerOptions::new`] and set the public fields.
#[non_exhaustive]
pub struct AuthorizerOptions {
    /// A pre-registered client id: used as is, no registration.
    pub client_id: Option<String>,
    /// The secret of the pre-registered client (`client_secret_basic`, or
    /// `client_secret_post` when the server lists only that); none: a public client. A
    /// token got with it alone cannot be refreshed by the cache (which keeps where a secret
    /// is, never the secret): when it expires, the next challenge starts a new flow. Give
    /// [`client_secret_source`](Self::client_secret_source) instead for refreshing.
    pub client_secret: Option<SecretString>,
    /// Where the pre-registered client's secret is read from (an environment variable or a
    /// file), for the flow and, saved with the token, for refreshing it. Used when
    /// [`client_secret`](Self::client_secret) is none.
    pub client_secret_source: Option<ClientSecretSource>,
    /// The URL of this client's Client ID Metadata Document, used as its `client_id` when the
    /// authorization server says `client_id_metadata_document_supported`. The document's
    /// `redirect_uris` should list `http://127.0.0.1/callback`: the listener takes a free
    /// port, which a server accepts for a loopback redirect (RFC 8252 section 7.3).
    pub client_metadata_url: Option<Url>,
    /// The scope to ask for; none: the challenge's `scope`, else the resource metadata's
    /// `scopes_supported`, else no scope.
    pub scope: Option<String>,
    /// Accept a token whose `token_type` is not `DPoP`.
    pub allow_bearer: bool,
    /// Where the token (and a dynamic registration) is kept.
    pub cache: TokenCache,
    /// The name of the token in the cache.
    pub cache_name: String,
    /// How many times a `403 insufficient_scope` may start a new authorization (step-up),
    /// over the authorizer's life.
    pub max_step_up: u32,
    /// How long to wait for the browser to come back with the authorization code.
    pub authorization_timeout: Duration,
    /// Where progress lines go (`-v`); none: nowhere.
    pub progress: Option<Progress>,
}

impl std::fmt::Debug for AuthorizerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorizerOptions")
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret.is_some())
            .field("client_secret_source", &self.client_secret_source)
            .field("client_metadata_url", &self.client_metadata_url)
            .field("scope", &self.scope)
            .field("allow_bearer", &self.allow_bearer)
            .field("cache", &self.cache)
            .field("cache_name", &self.cache_name)
            .field("max_step_up", &self.max_step_up)
            .finish_non_exhaustive()
    }
}

impl AuthorizerOptions {
    /// Options with the token kept in `cache` as `cache_name`, no pre-registered client, no
    /// scope of its own, DPoP tokens only, two step-ups, five minutes for the browser.
    pub fn new(cache: TokenCache, cache_name: impl Into<String>) -> AuthorizerOptions {
        AuthorizerOptions {
            client_id: None,
            client_secret: None,
            client_secret_source: None,
            client_metadata_url: None,
            scope: None,
            allow_bearer: false,
            cache,
            cache_name: cache_name.into(),
            max_step_up: 2,
            authorization_timeout: Duration::from_secs(300),
            progress: None,
        }
    }
}

/// Authorizes requests to one protected resource (an MCP server): hands out the saved token,
/// and answers the resource's challenges with the whole MCP authorization flow. Only one flow
/// runs at a time; requests that are challenged meanwhile wait for it and use its token.
pub struct ResourceAuthorizer {
    resource: Url,
    options: AuthorizerOptions,
    open_url: Box<dyn Fn(&Url) + Send + Sync>,
    flow: tokio::sync::Mutex<FlowState>,
    /// Bumped when a flow has saved a token: a request challenged before that retries with
    /// the new token instead of starting another flow.
    generation: AtomicU64,
}

/// What the flows so far left behind (guarded by the flow lock).
#[derive(Default)]
struct FlowState {
    /// Step-ups done.
    step_ups: u32,
    /// The scopes the last flow asked for (a step-up asks for these and the new ones).
    scopes: Vec<String>,
}

impl std::fmt::Debug for ResourceAuthorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResourceAuthorizer")
            .field("resource", &self.resource.as_str())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl ResourceAuthorizer {
    /// An authorizer for the resource at `resource` (the MCP server's URL). `open_url` is
    /// called with the authorization URL the user must open (open a browser, or print it; on
    /// stderr for a stdio MCP server, whose stdout is the protocol).
    pub fn new(
        resource: Url,
        options: AuthorizerOptions,
        open_url: Box<dyn Fn(&Url) + Send + Sync>,
    ) -> Self {
        ResourceAuthorizer {
            resource,
            options,
            open_url,
            flow: tokio::sync::Mutex::new(FlowState::default()),
            generation: AtomicU64::new(0),
        }
    }

    /// The resource's URL.
    pub fn resource(&self) -> &Url {
        &self.resource
    }

    /// The token to send now: the cached one (refreshed under the cache lock when near
    /// expiry), or None before the first challenge. A saved token that cannot be used any
    /// more (expired without a refresh token, refused on refresh, for another resource or a
    /// key that changed) is None too: the resource's challenge then starts a new flow.
    pub async fn token(&self, http: &DpopClient) -> Result<Option<Zeroizing<String>>, Error> {
        match self
            .options
            .cache
            .fresh_token(&self.options.cache_name, http)
            .await
        {
            Ok(token)
                if token
                    .resources
                    .iter()
                    .any(|r| metadata::covers(r, &self.resource)) =>
            {
                Ok(Some(Zeroizing::new(token.access_token().to_owned())))
            }
            Ok(_) => Ok(None),
            Err(
                e @ (Error::NoSuchToken(_)
                | Error::Expired(_)
                | Error::KeyGone { .. }
                | Error::KeyReplaced { .. }
                | Error::OAuth(_)
                | Error::EarlierRefreshUnsaved { .. }
                | Error::Config(_)),
            ) => {
                if !matches!(e, Error::NoSuchToken(_)) {
                    self.progress(&format!("saved token not used: {e}"));
                }
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Called with a 401 or 403 answer of the resource: runs discovery, registration and the
    /// code flow (401, or 403 insufficient_scope for step-up with the union of scopes, at most
    /// max_step_up times), saves the token, and says whether to send the request again.
    ///
    /// Only one flow runs at a time: a call that waited for another's flow returns `true` at
    /// once (its token is saved). Send a request again at most once per `true`: a resource
    /// that refuses a fresh token again would otherwise start flow after flow. Any other
    /// status, a 403 of another kind, a step-up beyond the limit and a 401 `use_dpop_nonce`
    /// (which [`DpopClient::send`] answers once itself) give `false` (pass the answer on).
    pub async fn on_challenge(
        &self,
        http: &DpopClient,
        status: reqwest::StatusCode,
        headers: &reqwest::header::HeaderMap,
    ) -> Result<bool, Error> {
        let seen = self.generation.load(Ordering::Acquire);
        let challenge = Challenge::from_headers(headers);
        let error = challenge
            .as_ref()
            .and_then(Challenge::oauth_error)
            .map(|e| e.error);
        let step_up = match status {
            // DpopClient::send has answered one already: a second is not about the token.
            reqwest::StatusCode::UNAUTHORIZED if error.as_deref() == Some("use_dpop_nonce") => {
                return Ok(false);
            }
            reqwest::StatusCode::UNAUTHORIZED => false,
            reqwest::StatusCode::FORBIDDEN if error.as_deref() == Some("insufficient_scope") => {
                true
            }
            _ => return Ok(false),
        };
        let mut state = self.flow.lock().await;
        if self.generation.load(Ordering::Acquire) != seen {
            return Ok(true);
        }
        let challenge_scope = challenge.as_ref().and_then(Challenge::scope);
        let scopes = if step_up {
            if state.step_ups >= self.options.max_step_up {
                self.progress(&format!(
                    "403 insufficient_scope again after {} step-up(s): giving up",
                    state.step_ups
                ));
                return Ok(false);
            }
            state.step_ups += 1;
            let mut scopes = state.scopes.clone();
            if let Ok(saved) = self.options.cache.load(&self.options.cache_name) {
                scopes.extend(saved.scopes.iter().cloned());
                scopes.extend(saved.scope.iter().flat_map(|s| split_scope(s)));
            }
            scopes.extend(challenge_scope.map(split_scope).unwrap_or_default());
            dedup(scopes)
        } else {
            Vec::new()
        };
        self.progress(&format!(
            "HTTP {status} from {}{}: authorizing",
            self.resource,
            error
                .map(|e| format!(" ({})", printable(&e)))
                .unwrap_or_default()
        ));
        let scopes = self
            .authorize(http, challenge.as_ref(), scopes, step_up)
            .await?;
        state.scopes = scopes;
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(true)
    }

    fn progress(&self, line: &str) {
        if let Some(progress) = &self.options.progress {
            progress(line);
        }
    }

    /// The whole flow: metadata, registration, code grant, token saved. Returns the scopes
    /// asked for.
    async fn authorize(
        &self,
        http: &DpopClient,
        challenge: Option<&Challenge>,
        step_up_scopes: Vec<String>,
        step_up: bool,
    ) -> Result<Vec<String>, Error> {
        let named = challenge
            .and_then(Challenge::resource_metadata)
            .map(|u| Url::parse(u).map_err(Error::from))
            .transpose()?;
        if let Some(url) = &named
            && !matches!(url.scheme(), "https" | "http")
        {
            return Err(Error::BadUrl {
                url: url.to_string(),
                reason: "resource metadata is fetched over http(s)",
            });
        }
        let prm =
            protected_resource_metadata(http.reqwest(), &self.resource, named.as_ref()).await?;
        let issuer = &prm.authorization_servers[0];
        self.progress(&format!(
            "resource metadata: authorization server {}",
            printable(issuer)
        ));
        metadata::check_secure(&Url::parse(issuer)?)?;
        let server = discover_mcp(http.reqwest(), issuer).await?;
        for endpoint in [
            &server.authorization_endpoint,
            &server.token_endpoint,
            &server.registration_endpoint,
        ]
        .into_iter()
        .flatten()
        {
            metadata::check_secure(endpoint)?;
        }
        let pkce = server
            .code_challenge_methods_supported
            .as_ref()
            .is_some_and(|m| m.iter().any(|m| m == "S256"));
        if !pkce {
            return Err(Error::Discovery {
                issuer: issuer.clone(),
                reason: "its metadata does not list S256 in code_challenge_methods_supported \
                         (PKCE), which the MCP authorization spec requires"
                    .into(),
            });
        }
        let key = key_description(http).await?;
        server.check_alg(&key.label, &key.alg.to_string())?;
        let scopes = if step_up {
            step_up_scopes
        } else if let Some(scope) = &self.options.scope {
            split_scope(scope)
        } else if let Some(scope) = challenge.and_then(Challenge::scope) {
            split_scope(scope)
        } else {
            prm.scopes_supported.clone().unwrap_or_default()
        };
        let (oauth, secret, redirect, registered) = self.client(http, &server).await?;
        // The resource identifier exactly as the metadata publishes it (it may be a prefix
        // of the URL: see `metadata::covers`), as RFC 8707 and the MCP spec want it sent.
        let params = TokenParams {
            scopes: scopes.clone(),
            resources: vec![prm.resource.clone()],
            audience: None,
            allow_bearer: self.options.allow_bearer,
        };
        let token = match self
            .code_grant(http, &server, &oauth, redirect, &params, &key)
            .await
        {
            Ok(token) => token,
            Err(Error::OAuth(e))
                if registered
                    && matches!(e.error.as_str(), "invalid_client" | "unauthorized_client") =>
            {
                // The server no longer knows (or never accepted) the registration: the next
                // flow registers anew.
                let _lock = self
                    .options
                    .cache
                    .lock(&registration::cache_name(&server.issuer))
                    .await?;
                registration::forget(&self.options.cache, &server.issuer)?;
                self.progress("client: the server refused the registration; forgot it");
                return Err(Error::OAuth(e));
            }
            Err(e) => return Err(e),
        };
        let record = CachedToken::new(
            &self.options.cache_name,
            &token,
            &key,
            &oauth,
            secret,
            &params,
        )?;
        let _lock = self.options.cache.lock(&self.options.cache_name).await?;
        self.options.cache.save(&record)?;
        self.progress(&format!(
            "authorized: {} token{} saved as {}",
            printable(&token.token_type),
            token
                .scope
                .as_deref()
                .map(|s| format!(" for scope {:?}", printable(s)))
                .unwrap_or_default(),
            self.options.cache_name
        ));
        Ok(scopes)
    }

    /// The browser part and the code exchange.
    async fn code_grant(
        &self,
        http: &DpopClient,
        server: &ServerMetadata,
        oauth: &OAuthClient,
        redirect: LoopbackRedirect,
        params: &TokenParams,
        key: &KeyDescription,
    ) -> Result<super::Token, Error> {
        let start = oauth
            .start_authorization(http, redirect.redirect_uri(), params, Some(&key.jkt), false)
            .await?;
        (self.open_url)(&start.url);
        let redirected = tokio::time::timeout(
            self.options.authorization_timeout,
            redirect.wait(&start.state),
        )
        .await
        .map_err(|_| {
            Error::Authorization(format!(
                "no authorization came back within {} seconds",
                self.options.authorization_timeout.as_secs()
            ))
        })??;
        check_iss(server, redirected.iss.as_deref())?;
        let state = redirected.state.clone();
        oauth
            .exchange_code(http, start, &redirected.code, &state, params)
            .await
    }

    /// The client to use at `server`, in the MCP spec's order: the pre-registered one, a
    /// Client ID Metadata Document, a dynamic registration (remembered per issuer). With
    /// where its secret comes from when refreshing, the redirect listener, and whether it is
    /// a dynamic registration.
    async fn client(
        &self,
        http: &DpopClient,
        server: &ServerMetadata,
    ) -> Result<
        (
            OAuthClient,
            Option<ClientSecretSource>,
            LoopbackRedirect,
            bool,
        ),
        Error,
    > {
        if let Some(client_id) = &self.options.client_id {
            let (secret, source) = match (
                &self.options.client_secret,
                &self.options.client_secret_source,
            ) {
                (Some(secret), _) => (
                    Some(Zeroizing::new(secret.expose_secret().to_owned())),
                    None,
                ),
                (None, Some(source)) => (Some(source.read()?), Some(source.clone())),
                (None, None) => (None, None),
            };
            let auth = match secret {
                None => ClientAuth::None,
                Some(secret) => {
                    let methods = server.token_endpoint_auth_methods_supported.as_deref();
                    let post_only = methods.is_some_and(|m| {
                        m.iter().any(|m| m == "client_secret_post")
                            && !m.iter().any(|m| m == "client_secret_basic")
                    });
                    if post_only {
                        ClientAuth::SecretPost(secret)
                    } else {
                        ClientAuth::SecretBasic(secret)
                    }
                }
            };
            self.progress(&format!("client: pre-registered {}", printable(client_id)));
            let oauth = OAuthClient::from_metadata(server, client_id, auth)?;
            return Ok((oauth, source, LoopbackRedirect::bind().await?, false));
        }
        if let Some(url) = &self.options.client_metadata_url
            && server.client_id_metadata_document_supported
        {
            self.progress(&format!("client: metadata document {url}"));
            let oauth = OAuthClient::from_metadata(server, url.as_str(), ClientAuth::None)?;
            return Ok((oauth, None, LoopbackRedirect::bind().await?, false));
        }
        let Some(endpoint) = &server.registration_endpoint else {
            return Err(Error::Config(format!(
                "the authorization server {} has no registration endpoint{}: give a \
                 pre-registered client id",
                printable(&server.issuer),
                if self.options.client_metadata_url.is_some() {
                    " and does not take Client ID Metadata Documents"
                } else {
                    ""
                }
            )));
        };
        let issuer = &server.issuer;
        let cache = &self.options.cache;
        // Also creates and checks the cache directory.
        let _lock = cache.lock(&registration::cache_name(issuer)).await?;
        let (registration, redirect) = match registration::load(cache, issuer)? {
            Some(registration) => {
                let port = Url::parse(&registration.redirect_uri)
                    .ok()
                    .and_then(|u| u.port())
                    .unwrap_or(0);
                // RFC 8252 section 7.3: any port will do for a loopback redirect; the
                // registered one is tried first for servers that compare it anyway.
                let redirect = match LoopbackRedirect::bind_port(port).await {
                    Ok(redirect) => redirect,
                    Err(_) => LoopbackRedirect::bind().await?,
                };
                self.progress(&format!(
                    "client: registered earlier as {}",
                    printable(&registration.client_id)
                ));
                (registration, redirect)
            }
            None => {
                let redirect = LoopbackRedirect::bind().await?;
                let registration = registration::register(
                    http.reqwest(),
                    cache,
                    issuer,
                    endpoint,
                    redirect.redirect_uri(),
                )
                .await?;
                self.progress(&format!(
                    "client: registered at {endpoint} as {}",
                    printable(&registration.client_id)
                ));
                (registration, redirect)
            }
        };
        let (auth, secret) = match registration.token_endpoint_auth_method.as_str() {
            "none" => (ClientAuth::None, None),
            method => {
                let source = registration::secret_source(cache, issuer);
                let secret = source.read()?;
                let auth = if method == "client_secret_post" {
                    ClientAuth::SecretPost(secret)
                } else {
                    ClientAuth::SecretBasic(secret)
                };
                (auth, Some(source))
            }
        };
        let oauth = OAuthClient::from_metadata(server, &registration.client_id, auth)?;
        Ok((oauth, secret, redirect, true))
    }
}

/// The description of `http`'s key (its algorithm and thumbprint).
async fn key_description(http: &DpopClient) -> Result<KeyDescription, Error> {
    let keys = http
        .with_agent(async |agent| agent.list_keys().await)
        .await?;
    keys.into_iter()
        .find(|k| k.label == http.key())
        .ok_or_else(|| Error::Config(format!("the agent has no key {:?}", http.key())))
}

/// RFC 9207: an `iss` in the authorization response must be the issuer, and a server that
/// says it sends one must have sent it (else the response may come from another server).
fn check_iss(server: &ServerMetadata, iss: Option<&str>) -> Result<(), Error> {
    match iss {
        Some(iss) if iss != server.issuer => Err(Error::Authorization(format!(
            "the authorization response names issuer {:?}, not {:?} (a mix-up attack?)",
            printable(iss),
            printable(&server.issuer)
        ))),
        None if server.authorization_response_iss_parameter_supported => {
            Err(Error::Authorization(format!(
                "{} says it adds iss to its authorization responses, and this one has none",
                printable(&server.issuer)
            )))
        }
        _ => Ok(()),
    }
}

fn split_scope(scope: &str) -> Vec<String> {
    scope.split_whitespace().map(str::to_owned).collect()
}

/// `scopes` without repeats, in their first order.
fn dedup(scopes: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(scopes.len());
    for scope in scopes {
        if !out.contains(&scope) {
            out.push(scope);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(iss_supported: bool) -> ServerMetadata {
        serde_json::from_value(serde_json::json!({
            "issuer": "https://as.example.com",
            "authorization_response_iss_parameter_supported": iss_supported,
        }))
        .unwrap()
    }

    #[test]
    fn iss_must_match_and_be_present_when_promised() {
        check_iss(&server(true), Some("https://as.example.com")).unwrap();
        assert!(check_iss(&server(true), None).is_err());
        assert!(check_iss(&server(false), Some("https://evil.example")).is_err());
        check_iss(&server(false), None).unwrap();
    }

    #[test]
    fn step_up_scopes_are_a_union_without_repeats() {
        let mut scopes = split_scope("a b");
        scopes.extend(split_scope(" b  c "));
        assert_eq!(dedup(scopes), ["a", "b", "c"]);
    }
}
