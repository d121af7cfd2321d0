//! MCP authorization (MCP specification 2025-11-25, "Authorization"): a client of a protected
//! resource (an MCP server) that answers its `401` and `403 insufficient_scope` challenges by
//! itself: protected resource metadata (RFC 9728), authorization server metadata (RFC 8414 /
//! OpenID Connect discovery, in the MCP order), client registration (pre-registered, a Client
//! ID Metadata Document, or dynamic registration, RFC 7591), and the authorization code grant
//! with PKCE S256, `state`, `resource` (RFC 8707) and the `iss` response parameter (RFC 9207).
//! Every token request carries a DPoP proof from the agent, and the tokens are DPoP-bound and
//! kept in the [`TokenCache`].

use std::time::Duration;

use secrecy::SecretString;
use url::Url;
use zeroize::Zeroizing;

use super::{DpopClient, Error, TokenCache};

mod metadata;

pub use metadata::{ProtectedResourceMetadata, protected_resource_metadata};

/// What a [`ResourceAuthorizer`] is given besides the resource. Build it with
/// [`AuthorizerOptions::new`] and set the public fields.
#[derive(Debug)]
#[non_exhaustive]
pub struct AuthorizerOptions {
    /// A pre-registered client id: used as is, no registration.
    pub client_id: Option<String>,
    /// The secret of the pre-registered client (`client_secret_basic`, or
    /// `client_secret_post` when the server lists only that); none: a public client.
    pub client_secret: Option<SecretString>,
    /// The URL of this client's Client ID Metadata Document, used as its `client_id` when the
    /// authorization server says `client_id_metadata_document_supported`.
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
    /// How many times a `403 insufficient_scope` may start a new authorization (step-up).
    pub max_step_up: u32,
    /// How long to wait for the browser to come back with the authorization code.
    pub authorization_timeout: Duration,
}

impl AuthorizerOptions {
    /// Options with the token kept in `cache` as `cache_name`, no pre-registered client, no
    /// scope of its own, DPoP tokens only, two step-ups, five minutes for the browser.
    pub fn new(cache: TokenCache, cache_name: impl Into<String>) -> AuthorizerOptions {
        AuthorizerOptions {
            client_id: None,
            client_secret: None,
            client_metadata_url: None,
            scope: None,
            allow_bearer: false,
            cache,
            cache_name: cache_name.into(),
            max_step_up: 2,
            authorization_timeout: Duration::from_secs(300),
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
}

/// What the flows so far left behind (guarded by the flow lock).
#[derive(Default)]
struct FlowState {
    /// Bumped by every finished flow.
    generation: u64,
    /// Step-ups done.
    step_ups: u32,
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
        }
    }

    /// The resource's URL.
    pub fn resource(&self) -> &Url {
        &self.resource
    }

    /// The token to send now: the cached one (refreshed under the cache lock when near
    /// expiry), or None before the first challenge.
    pub async fn token(&self, http: &DpopClient) -> Result<Option<Zeroizing<String>>, Error> {
        let _ = http;
        Ok(None)
    }

    /// Called with a 401 or 403 answer of the resource: runs discovery, registration and the
    /// code flow (401, or 403 insufficient_scope for step-up with the union of scopes, at most
    /// max_step_up times), saves the token, and says whether to send the request again.
    pub async fn on_challenge(
        &self,
        http: &DpopClient,
        status: reqwest::StatusCode,
        headers: &reqwest::header::HeaderMap,
    ) -> Result<bool, Error> {
        let _ = (http, status, headers, &self.open_url, &self.flow);
        Err(Error::Config(
            "MCP authorization is not implemented yet".into(),
        ))
    }
}
