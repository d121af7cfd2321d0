//! A test authorization server and resource server over real HTTP on loopback (axum), strict
//! about DPoP: every proof is checked with [`dpop_jose::verify`] (method, URL, `iat`, `jti`
//! replay, `ath`, and the nonce), both servers require their own nonce and rotate it, tokens are
//! bound to the proof key (`cnf.jkt`, kept server-side: tokens are opaque), and the
//! authorization code to `dpop_jkt`. Counters let tests see what went over the wire.
//!
//! The authorization server serves RFC 8414 metadata, `/token` (client_credentials,
//! refresh_token, authorization_code with PKCE S256, device_code with one `slow_down`),
//! `/authorize` (approves at once and redirects), `/par` (RFC 9126) and
//! `/device_authorization`; the test approves a device code with [`OAuthServer::approve`].
//! The resource server answers `/api/...` with a JSON echo, `/api/hop` redirects within its
//! origin and `/api/away` to another. Modes make the authorization server revoke a grant whose
//! rotated refresh token comes back, answer refreshes slowly, or send control characters in
//! its errors ([`OAuthOptions`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use dpop_jose::{ExpectedRequest, LruReplayStore, VerifyOptions};
use serde_json::{Value, json};

use crate::unix_now;

/// How the servers behave.
#[derive(Clone, Debug)]
pub struct OAuthOptions {
    /// Lifetime of access tokens, seconds.
    pub token_lifetime: i64,
    /// `token_type` issued (`DPoP`; `Bearer` to test refusal).
    pub token_type: String,
    /// Both servers answer `use_dpop_nonce` to every request, whatever nonce it carries.
    pub always_use_nonce: bool,
    /// The resource server's `use_dpop_nonce` challenge carries no `DPoP-Nonce`.
    pub challenge_without_nonce: bool,
    /// A nonce is replaced after this many accepted proofs (the new one goes out with the
    /// answer that used the old one up).
    pub nonce_uses: u32,
    /// Metadata says PAR is required, and `/authorize` refuses unpushed requests.
    pub require_par: bool,
    /// `dpop_signing_alg_values_supported` in the metadata.
    pub algs: Vec<String>,
    /// Client secrets by client id (`None`: a public client).
    pub clients: HashMap<String, Option<String>>,
    /// The resource server also takes tokens of another authorization server, asking its
    /// RFC 7662 introspection endpoint.
    pub introspection: Option<Introspection>,
    /// A refresh answer carries a new refresh token and retires the old one (`false`: it
    /// carries none, and the old one stays good, as many servers do).
    pub rotate_refresh_tokens: bool,
    /// The `expires_in` sent with tokens instead of `token_lifetime` (a huge one, to test
    /// the client's arithmetic).
    pub expires_in: Option<u64>,
    /// The device authorization's `user_code`, `verification_uri` and
    /// `verification_uri_complete` carry terminal control characters (escape sequences, a
    /// bell, CR LF); the user code is [`HOSTILE_USER_CODE`].
    pub hostile_device_strings: bool,
    /// A refresh token used again after it was rotated revokes its whole grant, every access
    /// and refresh token issued from it (RFC 9700 section 4.14.2), as servers that detect
    /// refresh token reuse do.
    pub revoke_on_reuse: bool,
    /// The token endpoint takes this long to answer a refresh (a slow server: parallel
    /// clients then overlap), counted in [`Counts::token_requests`] on arrival.
    pub refresh_delay: std::time::Duration,
    /// The token endpoint refuses every request, and the resource server's `/api/refused`
    /// answers 403, with an OAuth error whose `error`, `error_description` and `error_uri`
    /// carry terminal control characters (see [`HOSTILE_DESCRIPTION`]); every resource
    /// server answer also has an `X-Hostile` header with a C1 control in it.
    pub hostile_errors: bool,
}

/// The `error_description` of [`OAuthOptions::hostile_errors`]: a screen clear, a colour, a
/// bell and a line break that would forge a line of the client's own output.
pub const HOSTILE_DESCRIPTION: &str = "denied\u{1b}[2J\u{1b}[32m\u{7}\r\ndpop: all good";

/// The `user_code` of [`OAuthOptions::hostile_device_strings`]: an ANSI colour, a title
/// change ending in a bell, and a line break that would forge a second line.
pub const HOSTILE_USER_CODE: &str = "\u{1b}[31mABCD\u{1b}]0;pwned\u{7}\r\nEFGH\u{9b}2J";

/// An introspection endpoint and the resource server's credentials there (Basic).
#[derive(Clone, Debug)]
pub struct Introspection {
    /// The endpoint.
    pub url: String,
    /// The resource server's client id.
    pub client_id: String,
    /// Its secret.
    pub secret: String,
}

impl Default for OAuthOptions {
    fn default() -> Self {
        OAuthOptions {
            token_lifetime: 300,
            token_type: "DPoP".into(),
            always_use_nonce: false,
            challenge_without_nonce: false,
            nonce_uses: 3,
            require_par: false,
            algs: vec![
                "ES256".into(),
                "ES384".into(),
                "EdDSA".into(),
                "PS256".into(),
                "RS256".into(),
            ],
            clients: HashMap::from([
                ("public".to_owned(), None),
                (
                    "confidential".to_owned(),
                    Some("s3cret:with&odd=chars".to_owned()),
                ),
            ]),
            introspection: None,
            rotate_refresh_tokens: true,
            expires_in: None,
            hostile_device_strings: false,
            revoke_on_reuse: false,
            refresh_delay: std::time::Duration::ZERO,
            hostile_errors: false,
        }
    }
}

/// What the servers saw, for assertions.
#[derive(Clone, Debug, Default)]
pub struct Counts {
    /// Requests at `/token`, by grant type.
    pub token_requests: HashMap<String, u32>,
    /// `use_dpop_nonce` answers of the authorization server.
    pub as_nonce_challenges: u32,
    /// Requests at the resource server.
    pub rs_requests: u32,
    /// `use_dpop_nonce` answers of the resource server.
    pub rs_nonce_challenges: u32,
    /// Pushed authorization requests accepted.
    pub par_requests: u32,
    /// Authorization requests approved.
    pub authorizations: u32,
    /// `slow_down` answers.
    pub slow_downs: u32,
    /// `dpop_jkt` values seen at `/authorize` (directly or pushed).
    pub dpop_jkts: Vec<String>,
    /// Every client authentication seen at `/token`: `none`, `client_secret_basic`,
    /// `client_secret_post`.
    pub client_auth: Vec<String>,
    /// Every `resource` parameter (RFC 8707) seen at `/token`.
    pub resources: Vec<String>,
    /// Every `audience` parameter seen at `/token`.
    pub audiences: Vec<String>,
    /// Refresh requests answered with a new token.
    pub refreshes: u32,
    /// Grants revoked because a rotated refresh token came back.
    pub reuse_revocations: u32,
}

struct Nonce {
    value: String,
    uses: u32,
}

impl Nonce {
    fn new() -> Nonce {
        Nonce {
            value: dpop_jose::new_jti(),
            uses: 0,
        }
    }
}

#[derive(Clone)]
struct Grant {
    jkt: Option<String>,
    scope: String,
    /// The grant every token refreshed from the same first one belongs to.
    family: u64,
}

struct Code {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    dpop_jkt: Option<String>,
    scope: String,
}

struct Device {
    client_id: String,
    user_code: String,
    approved: bool,
    polls: u32,
    scope: String,
}

struct Inner {
    options: OAuthOptions,
    as_base: String,
    rs_base: String,
    as_nonce: Nonce,
    rs_nonce: Nonce,
    access: HashMap<String, (Grant, i64)>,
    refresh: HashMap<String, Grant>,
    /// Rotated refresh tokens, with their grant family.
    spent: HashMap<String, u64>,
    next_family: u64,
    codes: HashMap<String, Code>,
    pushed: HashMap<String, HashMap<String, String>>,
    devices: HashMap<String, Device>,
    counts: Counts,
}

type Shared = Arc<(Mutex<Inner>, LruReplayStore)>;

/// A running authorization server and resource server, each on its own loopback port;
/// stopped when dropped.
pub struct OAuthServer {
    shared: Shared,
    runtime: Option<tokio::runtime::Runtime>,
    /// The authorization server's origin (`http://127.0.0.1:PORT`), also its issuer.
    pub issuer: String,
    /// The resource server's origin.
    pub resource: String,
}

impl std::fmt::Debug for OAuthServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthServer")
            .field("issuer", &self.issuer)
            .field("resource", &self.resource)
            .finish_non_exhaustive()
    }
}

impl Drop for OAuthServer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl OAuthServer {
    /// Starts both servers.
    pub fn start(options: OAuthOptions) -> OAuthServer {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("test server runtime");
        let (as_listener, rs_listener) = runtime.block_on(async {
            (
                tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind AS"),
                tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind RS"),
            )
        });
        let base = |l: &tokio::net::TcpListener| {
            let addr: SocketAddr = l.local_addr().expect("local address");
            format!("http://{addr}")
        };
        let (issuer, resource) = (base(&as_listener), base(&rs_listener));
        let shared: Shared = Arc::new((
            Mutex::new(Inner {
                options,
                as_base: issuer.clone(),
                rs_base: resource.clone(),
                as_nonce: Nonce::new(),
                rs_nonce: Nonce::new(),
                access: HashMap::new(),
                refresh: HashMap::new(),
                spent: HashMap::new(),
                next_family: 0,
                codes: HashMap::new(),
                pushed: HashMap::new(),
                devices: HashMap::new(),
                counts: Counts::default(),
            }),
            LruReplayStore::new(NonZeroUsize::new(100_000).expect("non-zero")),
        ));
        let as_app = Router::new()
            .route("/.well-known/oauth-authorization-server", get(metadata))
            .route("/token", post(token))
            .route("/authorize", get(authorize))
            .route("/par", post(par))
            .route("/device_authorization", post(device_authorization))
            .with_state(shared.clone());
        let rs_app = Router::new()
            .route("/api/{*rest}", any(api))
            .with_state(shared.clone());
        runtime.spawn(async move { axum::serve(as_listener, as_app).await });
        runtime.spawn(async move { axum::serve(rs_listener, rs_app).await });
        OAuthServer {
            shared,
            runtime: Some(runtime),
            issuer,
            resource,
        }
    }

    /// The token endpoint.
    pub fn token_url(&self) -> String {
        format!("{}/token", self.issuer)
    }

    /// What the servers saw so far.
    pub fn counts(&self) -> Counts {
        self.shared.0.lock().expect("server state").counts.clone()
    }

    /// Approves the device authorization with this user code; false when there is none.
    pub fn approve(&self, user_code: &str) -> bool {
        let mut inner = self.shared.0.lock().expect("server state");
        match inner
            .devices
            .values_mut()
            .find(|d| d.user_code == user_code)
        {
            Some(device) => {
                device.approved = true;
                true
            }
            None => false,
        }
    }

    /// Makes both servers answer `use_dpop_nonce` to everything from now on (or stop).
    pub fn set_always_use_nonce(&self, on: bool) {
        self.shared
            .0
            .lock()
            .expect("server state")
            .options
            .always_use_nonce = on;
    }

    /// The current nonce of the authorization server.
    pub fn as_nonce(&self) -> String {
        self.shared
            .0
            .lock()
            .expect("server state")
            .as_nonce
            .value
            .clone()
    }

    /// Replaces both servers' nonces now (as a server does on its own schedule).
    pub fn rotate_nonces(&self) {
        let mut inner = self.shared.0.lock().expect("server state");
        inner.as_nonce = Nonce::new();
        inner.rs_nonce = Nonce::new();
    }

    /// The key thumbprint an access token is bound to (None: unknown token or unbound).
    pub fn token_jkt(&self, access_token: &str) -> Option<String> {
        let inner = self.shared.0.lock().expect("server state");
        inner
            .access
            .get(access_token)
            .and_then(|(g, _)| g.jkt.clone())
    }

    /// Whether this is a refresh token the server issued and has not rotated away.
    pub fn knows_refresh_token(&self, refresh_token: &str) -> bool {
        self.shared
            .0
            .lock()
            .expect("server state")
            .refresh
            .contains_key(refresh_token)
    }
}

fn json_response(status: StatusCode, body: Value, nonce: Option<&str>) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    if let Some(nonce) = nonce {
        response.headers_mut().insert(
            "DPoP-Nonce",
            nonce.parse().expect("nonce is a header value"),
        );
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, "no-store".parse().expect("header"));
    response
}

fn oauth_error(error: &str, description: &str, nonce: Option<&str>) -> Response {
    json_response(
        StatusCode::BAD_REQUEST,
        json!({ "error": error, "error_description": description }),
        nonce,
    )
}

/// The answer of [`OAuthOptions::hostile_errors`]: control characters in every member.
fn hostile_error(status: StatusCode) -> Response {
    json_response(
        status,
        json!({
            "error": "invalid_grant\u{1b}[5m",
            "error_description": HOSTILE_DESCRIPTION,
            "error_uri": "https://as.example/e\u{1b}]8;;https://evil.example\u{7}rr\n",
        }),
        None,
    )
}

async fn metadata(State(shared): State<Shared>) -> Response {
    let inner = shared.0.lock().expect("server state");
    let base = &inner.as_base;
    json_response(
        StatusCode::OK,
        json!({
            "issuer": base,
            "token_endpoint": format!("{base}/token"),
            "authorization_endpoint": format!("{base}/authorize"),
            "pushed_authorization_request_endpoint": format!("{base}/par"),
            "require_pushed_authorization_requests": inner.options.require_par,
            "device_authorization_endpoint": format!("{base}/device_authorization"),
            "dpop_signing_alg_values_supported": inner.options.algs,
            "token_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post"],
            "code_challenge_methods_supported": ["S256"],
        }),
        None,
    )
}

/// The outcome of checking a request's DPoP header at one server.
enum ProofCheck {
    Ok {
        jkt: String,
        fresh_nonce: Option<String>,
    },
    Refused(Response),
}

/// Checks the request's single DPoP proof against the server's current nonce; on success
/// counts the nonce's use and rotates it when used up (the new one to be sent back).
#[allow(clippy::too_many_arguments)]
fn check_proof(
    shared: &Shared,
    headers: &HeaderMap,
    method: &str,
    url: &str,
    access_token: Option<&str>,
    jkt: Option<&str>,
    at_resource: bool,
) -> ProofCheck {
    let mut inner = shared.0.lock().expect("server state");
    let proofs: Vec<_> = headers.get_all("dpop").iter().collect();
    let refuse = |inner: &mut Inner, error: &str, description: String, nonce: Option<String>| {
        if at_resource {
            let mut challenge =
                format!("DPoP error=\"{error}\", error_description=\"{description}\"");
            if error == "use_dpop_nonce" {
                inner.counts.rs_nonce_challenges += 1;
            } else {
                challenge.push_str(", algs=\"ES256\"");
            }
            let mut response = (StatusCode::UNAUTHORIZED, "").into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                challenge.parse().expect("challenge"),
            );
            if let Some(nonce) = nonce {
                response
                    .headers_mut()
                    .insert("DPoP-Nonce", nonce.parse().expect("nonce"));
            }
            ProofCheck::Refused(response)
        } else {
            if error == "use_dpop_nonce" {
                inner.counts.as_nonce_challenges += 1;
            }
            ProofCheck::Refused(oauth_error(error, &description, nonce.as_deref()))
        }
    };
    if proofs.len() != 1 {
        let n = proofs.len();
        return refuse(
            &mut inner,
            "invalid_dpop_proof",
            format!("{n} DPoP headers"),
            None,
        );
    }
    let Ok(proof) = proofs[0].to_str() else {
        return refuse(&mut inner, "invalid_dpop_proof", "not ASCII".into(), None);
    };
    let expected = ExpectedRequest {
        method,
        url,
        access_token,
        jkt,
    };
    let current = if at_resource {
        inner.rs_nonce.value.clone()
    } else {
        inner.as_nonce.value.clone()
    };
    let challenge_nonce = || -> Option<String> { Some(current.clone()) };
    if inner.options.always_use_nonce {
        let nonce = challenge_nonce();
        return refuse(&mut inner, "use_dpop_nonce", "nonce required".into(), nonce);
    }
    match dpop_jose::verify(
        proof,
        &expected,
        &VerifyOptions::default(),
        &current.as_str(),
        &shared.1,
        unix_now(),
    ) {
        Ok(valid) => {
            let options_uses = inner.options.nonce_uses;
            let slot = if at_resource {
                &mut inner.rs_nonce
            } else {
                &mut inner.as_nonce
            };
            slot.uses += 1;
            let fresh_nonce = if slot.uses >= options_uses {
                *slot = Nonce::new();
                Some(slot.value.clone())
            } else {
                None
            };
            ProofCheck::Ok {
                jkt: valid.jkt,
                fresh_nonce,
            }
        }
        Err(e) => {
            let error = e.oauth_error();
            let nonce = if error == "use_dpop_nonce" {
                if at_resource && inner.options.challenge_without_nonce {
                    None
                } else {
                    challenge_nonce()
                }
            } else {
                None
            };
            refuse(&mut inner, error, e.to_string().replace('"', "'"), nonce)
        }
    }
}

/// Every value of a repeatable form parameter.
fn form_all(body: &Bytes, name: &str) -> Vec<String> {
    url::form_urlencoded::parse(body)
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.into_owned())
        .collect()
}

fn form_map(body: &Bytes) -> HashMap<String, String> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

fn invalid_client() -> Response {
    json_response(
        StatusCode::UNAUTHORIZED,
        json!({ "error": "invalid_client" }),
        None,
    )
}

/// RFC 6749 section 2.3.1: Basic with form-encoded id and secret, or both in the body, or
/// a public client's id alone. The client id and the method, or None when it fails.
fn authenticate(
    inner: &Inner,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Option<(String, &'static str)> {
    let (id, secret, method) = if let Some(basic) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
    {
        let decoded = base64_std_decode(basic)?;
        let (id, secret) = decoded.split_once(':')?;
        let dec = |s: &str| -> String {
            url::form_urlencoded::parse(format!("x={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        (dec(id), Some(dec(secret)), "client_secret_basic")
    } else {
        let id = form.get("client_id").cloned()?;
        match form.get("client_secret") {
            Some(secret) => (id, Some(secret.clone()), "client_secret_post"),
            None => (id, None, "none"),
        }
    };
    (inner.options.clients.get(&id) == Some(&secret)).then_some((id, method))
}

fn base64_std_decode(s: &str) -> Option<String> {
    // The standard alphabet, as Basic uses it: map to base64url and reuse dpop-jose's decoder.
    let url_safe: String = s
        .trim()
        .trim_end_matches('=')
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect();
    String::from_utf8(dpop_jose::b64url_decode(&url_safe)?).ok()
}

async fn token(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let form = form_map(&body);
    let grant_type = form.get("grant_type").cloned().unwrap_or_default();
    let url = format!("{}/token", shared.0.lock().expect("state").as_base);
    {
        let mut inner = shared.0.lock().expect("state");
        *inner
            .counts
            .token_requests
            .entry(grant_type.clone())
            .or_default() += 1;
    }
    let (delay, hostile) = {
        let inner = shared.0.lock().expect("state");
        (inner.options.refresh_delay, inner.options.hostile_errors)
    };
    if hostile {
        return hostile_error(StatusCode::BAD_REQUEST);
    }
    if grant_type == "refresh_token" && !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let (jkt, fresh_nonce) = match check_proof(&shared, &headers, "POST", &url, None, None, false) {
        ProofCheck::Ok { jkt, fresh_nonce } => (jkt, fresh_nonce),
        ProofCheck::Refused(response) => return response,
    };
    let nonce = fresh_nonce.as_deref();
    let mut inner = shared.0.lock().expect("state");
    let Some((client_id, method)) = authenticate(&inner, &headers, &form) else {
        return invalid_client();
    };
    inner.counts.client_auth.push(method.to_owned());
    inner.counts.resources.extend(form_all(&body, "resource"));
    inner.counts.audiences.extend(form_all(&body, "audience"));
    let scope_of = |form: &HashMap<String, String>| form.get("scope").cloned().unwrap_or_default();
    let (scope, with_refresh) = match grant_type.as_str() {
        "client_credentials" => (scope_of(&form), false),
        "refresh_token" => {
            let rotate = inner.options.rotate_refresh_tokens;
            let presented = form.get("refresh_token").cloned().unwrap_or_default();
            let old = if rotate {
                inner.refresh.remove(&presented)
            } else {
                inner.refresh.get(&presented).cloned()
            };
            let Some(old) = old else {
                if let Some(family) = inner.spent.get(&presented).copied()
                    && inner.options.revoke_on_reuse
                {
                    // Reuse of a rotated token: someone else may hold it; end the grant.
                    inner.refresh.retain(|_, g| g.family != family);
                    inner.access.retain(|_, (g, _)| g.family != family);
                    inner.counts.reuse_revocations += 1;
                    return oauth_error(
                        "invalid_grant",
                        "refresh token reused: the grant is revoked",
                        nonce,
                    );
                }
                return oauth_error("invalid_grant", "unknown refresh token", nonce);
            };
            if old.jkt.as_deref() != Some(jkt.as_str()) {
                return oauth_error("invalid_grant", "refresh token bound to another key", nonce);
            }
            if rotate {
                inner.spent.insert(presented, old.family);
            }
            inner.counts.refreshes += 1;
            (old.scope, rotate)
        }
        "authorization_code" => {
            let Some(code) = form.get("code").and_then(|c| inner.codes.remove(c)) else {
                return oauth_error("invalid_grant", "unknown code", nonce);
            };
            let verifier = form.get("code_verifier").cloned().unwrap_or_default();
            let s256 = dpop_jose::ath(&verifier).unwrap_or_default();
            if code.client_id != client_id
                || form.get("redirect_uri") != Some(&code.redirect_uri)
                || s256 != code.challenge
            {
                return oauth_error(
                    "invalid_grant",
                    "code, client, redirect_uri or PKCE mismatch",
                    nonce,
                );
            }
            if code.dpop_jkt.as_ref().is_some_and(|j| *j != jkt) {
                return oauth_error(
                    "invalid_dpop_proof",
                    "dpop_jkt does not match the proof key",
                    nonce,
                );
            }
            (code.scope, true)
        }
        "urn:ietf:params:oauth:grant-type:device_code" => {
            let device_code = form.get("device_code").cloned().unwrap_or_default();
            let Some(device) = inner.devices.get_mut(&device_code) else {
                return oauth_error("invalid_grant", "unknown device code", nonce);
            };
            if device.client_id != client_id {
                return oauth_error("invalid_grant", "device code of another client", nonce);
            }
            device.polls += 1;
            if device.polls == 1 {
                inner.counts.slow_downs += 1;
                return oauth_error("slow_down", "poll less often", nonce);
            }
            if !device.approved {
                return oauth_error("authorization_pending", "not yet", nonce);
            }
            let device = inner.devices.remove(&device_code).expect("present");
            (device.scope, true)
        }
        other => return oauth_error("unsupported_grant_type", other, nonce),
    };
    let family = match grant_type.as_str() {
        // A refresh continues the grant of the token it replaces.
        "refresh_token" => form
            .get("refresh_token")
            .and_then(|r| inner.spent.get(r).copied())
            .or_else(|| {
                form.get("refresh_token")
                    .and_then(|r| inner.refresh.get(r))
                    .map(|g| g.family)
            })
            .unwrap_or_default(),
        _ => {
            inner.next_family += 1;
            inner.next_family
        }
    };
    let access = dpop_jose::new_jti();
    let expires = unix_now() + inner.options.token_lifetime;
    let token_type = inner.options.token_type.clone();
    inner.access.insert(
        access.clone(),
        (
            Grant {
                jkt: Some(jkt.clone()),
                scope: scope.clone(),
                family,
            },
            expires,
        ),
    );
    let mut body = json!({
        "access_token": access,
        "token_type": token_type,
        "expires_in": inner.options.token_lifetime,
    });
    if let Some(expires_in) = inner.options.expires_in {
        body["expires_in"] = json!(expires_in);
    }
    if !scope.is_empty() {
        body["scope"] = json!(scope);
    }
    if with_refresh {
        let refresh = dpop_jose::new_jti();
        inner.refresh.insert(
            refresh.clone(),
            Grant {
                jkt: Some(jkt),
                scope,
                family,
            },
        );
        body["refresh_token"] = json!(refresh);
    }
    json_response(StatusCode::OK, body, nonce)
}

async fn par(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let form = form_map(&body);
    let url = format!("{}/par", shared.0.lock().expect("state").as_base);
    // RFC 9449 section 10.1: a proof at the PAR endpoint binds the code like dpop_jkt.
    let (jkt, fresh_nonce) = match check_proof(&shared, &headers, "POST", &url, None, None, false) {
        ProofCheck::Ok { jkt, fresh_nonce } => (jkt, fresh_nonce),
        ProofCheck::Refused(response) => return response,
    };
    let mut inner = shared.0.lock().expect("state");
    if authenticate(&inner, &headers, &form).is_none() {
        return invalid_client();
    }
    if form.get("dpop_jkt").is_some_and(|j| *j != jkt) {
        return oauth_error(
            "invalid_dpop_proof",
            "dpop_jkt is not the proof key",
            fresh_nonce.as_deref(),
        );
    }
    let mut params = form;
    params.remove("client_secret");
    params.insert("dpop_jkt".into(), jkt);
    let request_uri = format!("urn:ietf:params:oauth:request_uri:{}", dpop_jose::new_jti());
    inner.pushed.insert(request_uri.clone(), params);
    inner.counts.par_requests += 1;
    json_response(
        StatusCode::CREATED,
        json!({ "request_uri": request_uri, "expires_in": 60 }),
        fresh_nonce.as_deref(),
    )
}

async fn authorize(
    State(shared): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let mut inner = shared.0.lock().expect("state");
    let params = match query.get("request_uri") {
        Some(uri) => match inner.pushed.remove(uri) {
            Some(p) if query.get("client_id") == p.get("client_id") => p,
            _ => return (StatusCode::BAD_REQUEST, "unknown request_uri").into_response(),
        },
        None if inner.options.require_par => {
            return (
                StatusCode::BAD_REQUEST,
                "pushed authorization requests only",
            )
                .into_response();
        }
        None => query,
    };
    let get = |name: &str| params.get(name).cloned().unwrap_or_default();
    let client_id = get("client_id");
    if !inner.options.clients.contains_key(&client_id)
        || get("response_type") != "code"
        || get("code_challenge_method") != "S256"
        || get("code_challenge").is_empty()
        || !get("redirect_uri").starts_with("http://127.0.0.1:")
    {
        return (StatusCode::BAD_REQUEST, "bad authorization request").into_response();
    }
    let code = dpop_jose::new_jti();
    let dpop_jkt = params.get("dpop_jkt").cloned();
    if let Some(jkt) = &dpop_jkt {
        inner.counts.dpop_jkts.push(jkt.clone());
    }
    inner.codes.insert(
        code.clone(),
        Code {
            client_id,
            redirect_uri: get("redirect_uri"),
            challenge: get("code_challenge"),
            dpop_jkt,
            scope: get("scope"),
        },
    );
    inner.counts.authorizations += 1;
    let mut target = url::Url::parse(&get("redirect_uri")).expect("checked above");
    target
        .query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &get("state"));
    (StatusCode::FOUND, [(header::LOCATION, target.to_string())]).into_response()
}

async fn device_authorization(
    State(shared): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = form_map(&body);
    let mut inner = shared.0.lock().expect("state");
    let Some((client_id, _)) = authenticate(&inner, &headers, &form) else {
        return invalid_client();
    };
    let device_code = dpop_jose::new_jti();
    let hostile = inner.options.hostile_device_strings;
    let user_code = if hostile {
        HOSTILE_USER_CODE.to_owned()
    } else {
        dpop_jose::new_jti()[..8].to_ascii_uppercase()
    };
    inner.devices.insert(
        device_code.clone(),
        Device {
            client_id,
            user_code: user_code.clone(),
            approved: false,
            polls: 0,
            scope: form.get("scope").cloned().unwrap_or_default(),
        },
    );
    let base = inner.as_base.clone();
    let mut body = json!({
        "device_code": device_code,
        "user_code": user_code,
        "verification_uri": format!("{base}/device"),
        "expires_in": 120,
        "interval": 1,
    });
    if hostile {
        body["verification_uri"] = json!(format!("{base}/device\u{1b}[2J\nfake-line"));
        body["verification_uri_complete"] =
            json!(format!("{base}/device?code=X\u{1b}[8m\u{85}hidden"));
    }
    json_response(StatusCode::OK, body, None)
}

/// Asks the other server about `token`: its `cnf.jkt`, scope and expiry when active.
async fn introspect(
    endpoint: &Introspection,
    token: &str,
) -> Option<(Option<String>, String, i64)> {
    let response = reqwest::Client::new()
        .post(&endpoint.url)
        .basic_auth(&endpoint.client_id, Some(&endpoint.secret))
        .form(&[("token", token)])
        .send()
        .await
        .ok()?;
    let answer: Value = response.json().await.ok()?;
    if answer["active"] != json!(true) {
        return None;
    }
    Some((
        answer["cnf"]["jkt"].as_str().map(str::to_owned),
        answer["scope"].as_str().unwrap_or_default().to_owned(),
        answer["exp"].as_i64().unwrap_or(i64::MAX),
    ))
}

async fn api(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    if path == "/api/refused" && shared.0.lock().expect("state").options.hostile_errors {
        let mut response = hostile_error(StatusCode::FORBIDDEN);
        // Bytes a header may carry (obs-text): U+009B, the one-byte CSI, in UTF-8.
        response.headers_mut().insert(
            "x-hostile",
            header::HeaderValue::from_bytes(b"a\xc2\x9b2Jb").expect("obs-text"),
        );
        return response;
    }
    let url = format!("{}{}", shared.0.lock().expect("state").rs_base, uri);
    shared.0.lock().expect("state").counts.rs_requests += 1;
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("DPoP "))
        .map(str::to_owned);
    let Some(token) = token else {
        let mut response = (StatusCode::UNAUTHORIZED, "").into_response();
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            "DPoP algs=\"ES256\"".parse().expect("header"),
        );
        return response;
    };
    let (bound, introspection) = {
        let inner = shared.0.lock().expect("state");
        (
            inner
                .access
                .get(&token)
                .map(|(g, exp)| (g.jkt.clone(), g.scope.clone(), *exp)),
            inner.options.introspection.clone(),
        )
    };
    let bound = match (bound, introspection) {
        (None, Some(endpoint)) => introspect(&endpoint, &token).await,
        (bound, _) => bound,
    };
    let invalid_token = |description: &str| {
        let mut response = (StatusCode::UNAUTHORIZED, "").into_response();
        let challenge =
            format!("DPoP error=\"invalid_token\", error_description=\"{description}\"");
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, challenge.parse().expect("header"));
        response
    };
    let Some((jkt, scope, expires)) = bound else {
        return invalid_token("unknown access token");
    };
    if expires <= unix_now() {
        return invalid_token("the access token expired");
    }
    let fresh_nonce = match check_proof(
        &shared,
        &headers,
        method.as_str(),
        &url,
        Some(&token),
        jkt.as_deref(),
        true,
    ) {
        ProofCheck::Ok { fresh_nonce, .. } => fresh_nonce,
        ProofCheck::Refused(response) => return response,
    };
    if path == "/api/hop" {
        return (StatusCode::FOUND, [(header::LOCATION, "/api/landed?x=1")]).into_response();
    }
    if path == "/api/away" {
        return (
            StatusCode::FOUND,
            [(header::LOCATION, "http://localhost:9/api/x")],
        )
            .into_response();
    }
    json_response(
        StatusCode::OK,
        json!({
            "method": method.as_str(),
            "path": path,
            "query": uri.query(),
            "scope": scope,
            "body": String::from_utf8_lossy(&body),
            "content_type": headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()),
        }),
        fresh_nonce.as_deref(),
    )
}

/// A token endpoint that answers every request with a JSON body that does not end: sent in
/// chunks without Content-Length, up to [`FloodServer::CAP`] bytes, counting what the client
/// took. Plain HTTP/1.1 on a raw socket, so nothing in between buffers or limits it.
pub struct FloodServer {
    /// The endpoint's URL.
    pub url: String,
    sent: Arc<std::sync::atomic::AtomicU64>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for FloodServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FloodServer")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Drop for FloodServer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl FloodServer {
    /// The most it sends on one connection.
    pub const CAP: u64 = 128 << 20;

    /// Starts it, answering with `status` (400: an OAuth error; 200: a token response).
    pub fn start(status: u16) -> FloodServer {
        use std::sync::atomic::{AtomicU64, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("flood server runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind flood server");
        let url = format!(
            "http://{}/token",
            listener.local_addr().expect("local address")
        );
        let sent = Arc::new(AtomicU64::new(0));
        let counter = sent.clone();
        runtime.spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    // The request head (its small form body is left unread).
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let (reason, start) = if status == 200 {
                        ("OK", r#"{"token_type":"DPoP","access_token":""#)
                    } else {
                        (
                            "Bad Request",
                            r#"{"error":"invalid_request","error_description":""#,
                        )
                    };
                    let head = format!(
                        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n\
                         Cache-Control: no-store\r\nTransfer-Encoding: chunked\r\n\r\n"
                    );
                    let chunk = |data: &[u8]| {
                        let mut c = format!("{:x}\r\n", data.len()).into_bytes();
                        c.extend_from_slice(data);
                        c.extend_from_slice(b"\r\n");
                        c
                    };
                    if stream.write_all(head.as_bytes()).await.is_err()
                        || stream.write_all(&chunk(start.as_bytes())).await.is_err()
                    {
                        return;
                    }
                    let filler = chunk(&[b'x'; 64 * 1024]);
                    let mut total = 0u64;
                    while total < FloodServer::CAP {
                        if stream.write_all(&filler).await.is_err() {
                            return;
                        }
                        total += 64 * 1024;
                        counter.fetch_add(64 * 1024, Ordering::Relaxed);
                    }
                    let _ = stream.write_all(&chunk(b"\"}")).await;
                    let _ = stream.write_all(b"0\r\n\r\n").await;
                });
            }
        });
        FloodServer {
            url,
            sent,
            runtime: Some(runtime),
        }
    }

    /// The filler bytes written to clients so far (socket buffers included).
    pub fn sent(&self) -> u64 {
        self.sent.load(std::sync::atomic::Ordering::Relaxed)
    }
}
