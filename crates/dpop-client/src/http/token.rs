//! Token requests through the `oauth2` crate, its HTTP hook being a [`DpopClient`]: the
//! proofs, the agent's nonces and the `use_dpop_nonce` retry apply to every grant. PAR (RFC
//! 9126) is not in `oauth2`: it is one form POST through the same client here.

use std::borrow::Cow;
use std::time::Duration;

use oauth2::basic::{BasicClient, BasicTokenResponse};
use oauth2::{
    AuthType, AuthorizationCode, ClientId, ClientSecret, CsrfToken, DeviceAuthorizationUrl,
    EndpointMaybeSet, EndpointNotSet, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl,
    RefreshToken, RequestTokenError, Scope, StandardDeviceAuthorizationResponse,
    TokenResponse as _, TokenUrl,
};
use serde::Deserialize;
use url::Url;
use zeroize::Zeroizing;

use super::challenge::OAuthErrorBody;
use super::{DpopClient, Error};

type Client = BasicClient<
    EndpointMaybeSet,
    EndpointMaybeSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
>;

/// How the client authenticates at the token endpoint.
#[derive(Clone)]
pub enum ClientAuth {
    /// A public client: `client_id` in the body, no secret.
    None,
    /// `client_secret_basic`: HTTP Basic with the secret.
    SecretBasic(Zeroizing<String>),
    /// `client_secret_post`: the secret in the form body.
    SecretPost(Zeroizing<String>),
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.method())
    }
}

impl ClientAuth {
    /// The RFC 8414 name of the method (`none`, `client_secret_basic`, `client_secret_post`).
    pub fn method(&self) -> &'static str {
        match self {
            ClientAuth::None => "none",
            ClientAuth::SecretBasic(_) => "client_secret_basic",
            ClientAuth::SecretPost(_) => "client_secret_post",
        }
    }
}

/// What a token request asks for beyond the grant.
#[derive(Clone, Debug, Default)]
pub struct TokenParams {
    /// Scopes (`scope`, space-separated on the wire).
    pub scopes: Vec<String>,
    /// Resource indicators (RFC 8707 `resource`, one parameter each).
    pub resources: Vec<String>,
    /// `audience` (used by Auth0 and others).
    pub audience: Option<String>,
    /// Accept a token whose `token_type` is not `DPoP` (a plain bearer token).
    pub allow_bearer: bool,
}

impl TokenParams {
    /// Adds a scope (or several, space-separated).
    pub fn scope(mut self, scope: &str) -> Self {
        self.scopes
            .extend(scope.split_whitespace().map(str::to_owned));
        self
    }

    /// Adds a resource indicator.
    pub fn resource(mut self, resource: &str) -> Self {
        self.resources.push(resource.to_owned());
        self
    }

    fn extra(&self) -> Vec<(&'static str, String)> {
        let mut extra: Vec<(&'static str, String)> = self
            .resources
            .iter()
            .map(|r| ("resource", r.clone()))
            .collect();
        if let Some(audience) = &self.audience {
            extra.push(("audience", audience.clone()));
        }
        extra
    }
}

/// An issued token. `Debug` never shows the token values.
#[derive(Clone)]
pub struct Token {
    access_token: Zeroizing<String>,
    /// `token_type` as issued (`DPoP` unless bearer tokens were allowed).
    pub token_type: String,
    /// Lifetime from the response (at most ten years, whatever the server says).
    pub expires_in: Option<Duration>,
    refresh_token: Option<Zeroizing<String>>,
    /// Granted scope, when the server says.
    pub scope: Option<String>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field("refresh_token", &self.refresh_token.is_some())
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl Token {
    /// The access token.
    pub fn access_token(&self) -> &str {
        &self.access_token
    }

    /// The refresh token, if one was issued.
    pub fn refresh_token(&self) -> Option<&str> {
        self.refresh_token.as_deref().map(String::as_str)
    }

    /// Whether `token_type` is `DPoP` (case-insensitive, RFC 6749 section 5.1).
    pub fn is_dpop(&self) -> bool {
        self.token_type.eq_ignore_ascii_case("DPoP")
    }

    fn from_response(response: BasicTokenResponse, allow_bearer: bool) -> Result<Token, Error> {
        let token_type = match response.token_type() {
            oauth2::basic::BasicTokenType::Bearer => "Bearer".to_owned(),
            oauth2::basic::BasicTokenType::Mac => "MAC".to_owned(),
            // oauth2 lower-cases the types it does not know; the type is case-insensitive.
            oauth2::basic::BasicTokenType::Extension(other)
                if other.eq_ignore_ascii_case("DPoP") =>
            {
                "DPoP".to_owned()
            }
            oauth2::basic::BasicTokenType::Extension(other) => other.clone(),
        };
        let token = Token {
            access_token: Zeroizing::new(response.access_token().secret().clone()),
            token_type,
            // Bounded where it enters: every later sum with a clock stays in range.
            expires_in: response.expires_in().map(super::bounded),
            refresh_token: response
                .refresh_token()
                .map(|r| Zeroizing::new(r.secret().clone())),
            scope: response
                .scopes()
                .map(|s| s.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ")),
        };
        if !token.is_dpop() && !allow_bearer {
            return Err(Error::NotDpop {
                token_type: token.token_type,
            });
        }
        Ok(token)
    }
}

/// A device authorization in progress (RFC 8628): show the user where to go and the code,
/// then [`OAuthClient::device_poll`].
pub struct DeviceAuthorization {
    response: StandardDeviceAuthorizationResponse,
}

impl std::fmt::Debug for DeviceAuthorization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceAuthorization")
            .field("verification_uri", &self.verification_uri())
            .finish_non_exhaustive()
    }
}

impl DeviceAuthorization {
    /// Where the user goes.
    pub fn verification_uri(&self) -> &str {
        self.response.verification_uri()
    }

    /// The verification URI with the code in it, when the server gives one.
    pub fn verification_uri_complete(&self) -> Option<&str> {
        self.response
            .verification_uri_complete()
            .map(|u| u.secret().as_str())
    }

    /// The code the user types.
    pub fn user_code(&self) -> &str {
        self.response.user_code().secret()
    }

    /// How long the code is valid (at most ten years, whatever the server says).
    pub fn expires_in(&self) -> Duration {
        super::bounded(self.response.expires_in())
    }
}

/// An authorization request ready for the browser: its URL, and what the code exchange needs.
#[derive(Debug)]
pub struct AuthorizationStart {
    /// The URL to open (after PAR: only `client_id` and `request_uri`).
    pub url: Url,
    /// The `state` the redirect must carry back.
    pub state: String,
    verifier: PkceCodeVerifier,
    redirect_uri: String,
}

/// A client of one authorization server.
#[derive(Clone, Debug)]
pub struct OAuthClient {
    client_id: String,
    auth: ClientAuth,
    token_url: Url,
    authorization_url: Option<Url>,
    device_authorization_url: Option<Url>,
    par_url: Option<Url>,
    require_par: bool,
}

/// The PAR response (RFC 9126 section 2.2).
#[derive(Deserialize)]
struct ParResponse {
    request_uri: String,
}

impl OAuthClient {
    /// A client of the token endpoint `token_url`.
    pub fn new(token_url: Url, client_id: impl Into<String>, auth: ClientAuth) -> OAuthClient {
        OAuthClient {
            client_id: client_id.into(),
            auth,
            token_url,
            authorization_url: None,
            device_authorization_url: None,
            par_url: None,
            require_par: false,
        }
    }

    /// A client of the endpoints in `metadata`.
    pub fn from_metadata(
        metadata: &super::ServerMetadata,
        client_id: impl Into<String>,
        auth: ClientAuth,
    ) -> Result<OAuthClient, Error> {
        let token_url = metadata.token_endpoint.clone().ok_or_else(|| {
            Error::Config(format!(
                "the metadata of {} has no token_endpoint",
                metadata.issuer
            ))
        })?;
        let mut client = OAuthClient::new(token_url, client_id, auth);
        client.authorization_url = metadata.authorization_endpoint.clone();
        client.device_authorization_url = metadata.device_authorization_endpoint.clone();
        client.par_url = metadata.pushed_authorization_request_endpoint.clone();
        client.require_par = metadata.require_pushed_authorization_requests;
        Ok(client)
    }

    /// Sets the authorization endpoint.
    pub fn authorization_url(mut self, url: Url) -> Self {
        self.authorization_url = Some(url);
        self
    }

    /// Sets the device authorization endpoint.
    pub fn device_authorization_url(mut self, url: Url) -> Self {
        self.device_authorization_url = Some(url);
        self
    }

    /// Sets the PAR endpoint; with `required`, every authorization request is pushed.
    pub fn par_url(mut self, url: Url, required: bool) -> Self {
        self.par_url = Some(url);
        self.require_par = required;
        self
    }

    /// The token endpoint.
    pub fn token_url(&self) -> &Url {
        &self.token_url
    }

    /// The client id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The client authentication.
    pub fn auth(&self) -> &ClientAuth {
        &self.auth
    }

    fn oauth2(&self) -> Client {
        let mut client = BasicClient::new(ClientId::new(self.client_id.clone()))
            .set_token_uri_option(Some(TokenUrl::from_url(self.token_url.clone())))
            .set_auth_uri_option(
                self.authorization_url
                    .clone()
                    .map(oauth2::AuthUrl::from_url),
            )
            .set_device_authorization_url_option(
                self.device_authorization_url
                    .clone()
                    .map(DeviceAuthorizationUrl::from_url),
            );
        match &self.auth {
            ClientAuth::None => {}
            ClientAuth::SecretBasic(secret) => {
                client = client
                    .set_client_secret(ClientSecret::new(secret.to_string()))
                    .set_auth_type(AuthType::BasicAuth);
            }
            ClientAuth::SecretPost(secret) => {
                client = client
                    .set_client_secret(ClientSecret::new(secret.to_string()))
                    .set_auth_type(AuthType::RequestBody);
            }
        }
        client
    }

    /// The `client_credentials` grant.
    pub async fn client_credentials(
        &self,
        http: &DpopClient,
        params: &TokenParams,
    ) -> Result<Token, Error> {
        let client = self.oauth2();
        let mut request = client.exchange_client_credentials().map_err(config)?;
        request = request.add_scopes(params.scopes.iter().cloned().map(Scope::new));
        for (name, value) in params.extra() {
            request = request.add_extra_param(name, value);
        }
        let response = request.request_async(http).await.map_err(token_error)?;
        Token::from_response(response, params.allow_bearer)
    }

    /// The `refresh_token` grant. The token returned holds the server's new refresh token,
    /// or, when it sent none (it does not rotate them), the one given.
    pub async fn refresh(
        &self,
        http: &DpopClient,
        refresh_token: &str,
        params: &TokenParams,
    ) -> Result<Token, Error> {
        let client = self.oauth2();
        let refresh_token = RefreshToken::new(refresh_token.to_owned());
        let mut request = client
            .exchange_refresh_token(&refresh_token)
            .map_err(config)?;
        request = request.add_scopes(params.scopes.iter().cloned().map(Scope::new));
        for (name, value) in params.extra() {
            request = request.add_extra_param(name, value);
        }
        let response = request.request_async(http).await.map_err(token_error)?;
        let mut token = Token::from_response(response, params.allow_bearer)?;
        // A server that does not rotate refresh tokens sends none: the old one stays good.
        if token.refresh_token.is_none() {
            token.refresh_token = Some(Zeroizing::new(refresh_token.secret().to_owned()));
        }
        Ok(token)
    }

    /// Starts the `authorization_code` grant with PKCE S256: the URL to open and what
    /// [`exchange_code`](Self::exchange_code) needs. `dpop_jkt` binds the code to the key
    /// (RFC 9449 section 10). The request is pushed (RFC 9126, with a DPoP proof) when the
    /// server requires it or `push` is set.
    pub async fn start_authorization(
        &self,
        http: &DpopClient,
        redirect_uri: &str,
        params: &TokenParams,
        dpop_jkt: Option<&str>,
        push: bool,
    ) -> Result<AuthorizationStart, Error> {
        let client = self
            .oauth2()
            .set_redirect_uri(RedirectUrl::new(redirect_uri.to_owned())?);
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = client
            .authorize_url(CsrfToken::new_random)
            .map_err(config)?
            .set_pkce_challenge(challenge);
        request = request.add_scopes(params.scopes.iter().cloned().map(Scope::new));
        for (name, value) in params.extra() {
            request = request.add_extra_param(name, value);
        }
        if let Some(jkt) = dpop_jkt {
            request = request.add_extra_param("dpop_jkt", jkt);
        }
        let (url, state) = request.url();
        let url = if push || self.require_par {
            self.push(http, &url).await?
        } else {
            url
        };
        Ok(AuthorizationStart {
            url,
            state: state.secret().clone(),
            verifier,
            redirect_uri: redirect_uri.to_owned(),
        })
    }

    /// Pushes the parameters of `authorize` to the PAR endpoint and returns the short URL.
    async fn push(&self, http: &DpopClient, authorize: &Url) -> Result<Url, Error> {
        let par_url = self.par_url.clone().ok_or_else(|| {
            Error::Config("pushed authorization requested, but no PAR endpoint is known".into())
        })?;
        let mut form: Vec<(Cow<'_, str>, Cow<'_, str>)> = authorize.query_pairs().collect();
        let mut builder = http.reqwest().post(par_url);
        match &self.auth {
            ClientAuth::None => {}
            ClientAuth::SecretBasic(secret) => {
                // RFC 6749 section 2.3.1: each part form-encoded before Basic.
                let enc = |s: &str| -> String {
                    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
                };
                builder = builder.basic_auth(enc(&self.client_id), Some(enc(secret)));
            }
            ClientAuth::SecretPost(secret) => {
                form.push(("client_secret".into(), secret.as_str().into()));
            }
        }
        let request = builder
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form)
            .build()?;
        let response = http.send(request, None).await?;
        let status = response.status();
        let (what, limit) = super::body_limit(status);
        let body = super::read_body(response, what, limit).await?;
        if !status.is_success() {
            return Err(match OAuthErrorBody::from_json(&body) {
                Some(e) => Error::OAuth(e),
                None => Error::BadResponse(format!("PAR endpoint answered HTTP {status}")),
            });
        }
        let par: ParResponse = serde_json::from_slice(&body)
            .map_err(|e| Error::BadResponse(format!("PAR response: {e}")))?;
        let mut url = self
            .authorization_url
            .clone()
            .ok_or_else(|| Error::Config("no authorization endpoint is known".into()))?;
        url.query_pairs_mut()
            .append_pair("client_id", &self.client_id)
            .append_pair("request_uri", &par.request_uri);
        Ok(url)
    }

    /// Ends the `authorization_code` grant: checks `state` and trades the code (with the PKCE
    /// verifier) for a token.
    pub async fn exchange_code(
        &self,
        http: &DpopClient,
        start: AuthorizationStart,
        code: &str,
        state: &str,
        params: &TokenParams,
    ) -> Result<Token, Error> {
        if state != start.state {
            return Err(Error::Authorization(
                "the redirect's state does not match the request's (a forged redirect?)".into(),
            ));
        }
        let client = self
            .oauth2()
            .set_redirect_uri(RedirectUrl::new(start.redirect_uri)?);
        let mut request = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(config)?
            .set_pkce_verifier(start.verifier);
        for (name, value) in params.extra() {
            request = request.add_extra_param(name, value);
        }
        let response = request.request_async(http).await.map_err(token_error)?;
        Token::from_response(response, params.allow_bearer)
    }

    /// Starts the device grant (RFC 8628).
    pub async fn device_authorization(
        &self,
        http: &DpopClient,
        params: &TokenParams,
    ) -> Result<DeviceAuthorization, Error> {
        let client = self.oauth2();
        let mut request = client.exchange_device_code().map_err(config)?;
        request = request.add_scopes(params.scopes.iter().cloned().map(Scope::new));
        for (name, value) in params.extra() {
            request = request.add_extra_param(name, value);
        }
        let response = request.request_async(http).await.map_err(token_error)?;
        Ok(DeviceAuthorization { response })
    }

    /// Polls the token endpoint until the user approves, refuses, or the code expires;
    /// `slow_down` lengthens the interval by 5 seconds as RFC 8628 says.
    pub async fn device_poll(
        &self,
        http: &DpopClient,
        device: &DeviceAuthorization,
        params: &TokenParams,
    ) -> Result<Token, Error> {
        let client = self.oauth2();
        let mut request = client
            .exchange_device_access_token(&device.response)
            .map_err(config)?;
        for (name, value) in params.extra() {
            request = request.add_extra_param(name, value);
        }
        let response = request
            .request_async(http, tokio::time::sleep, Some(device.expires_in()))
            .await
            .map_err(token_error)?;
        Token::from_response(response, params.allow_bearer)
    }
}

fn config(e: oauth2::ConfigurationError) -> Error {
    // "No token endpoint URL specified": say where one comes from.
    Error::Config(format!("{e} (give --issuer, or the endpoint's URL)"))
}

/// A failed token request: the server's OAuth error, or what kept it from answering. One
/// function for every grant (the device grant's errors have a type of their own).
fn token_error<T>(e: RequestTokenError<Error, oauth2::StandardErrorResponse<T>>) -> Error
where
    T: oauth2::ErrorResponseType + std::fmt::Display + 'static,
{
    match e {
        RequestTokenError::ServerResponse(e) => Error::OAuth(OAuthErrorBody {
            error: e.error().to_string(),
            error_description: e.error_description().cloned(),
            error_uri: e.error_uri().cloned(),
        }),
        RequestTokenError::Request(e) => e,
        RequestTokenError::Parse(e, _) => Error::BadResponse(format!("token response: {e}")),
        RequestTokenError::Other(e) => Error::BadResponse(e),
    }
}
