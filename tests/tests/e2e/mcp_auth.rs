//! MCP authorization in dpop-client (`ResourceAuthorizer`, issue 23) over real HTTP on
//! loopback. The full flow runs against node oidc-provider (tests/interop/oidc-provider: DPoP
//! with nonces required, open dynamic registration, resource indicators, interactions that
//! log "alice" in and consent without a user): a small axum MCP-like resource here serves its
//! protected resource metadata and checks every token by introspection at oidc-provider
//! (active, DPoP-bound to the test key, for this resource, with the scope it needs). The
//! "browser" is an HTTP client that follows redirects and keeps cookies. Discovery order and
//! refusals are checked against an axum server serving documents at chosen paths.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use dpop_client::http::{
    AuthorizerOptions, ClientSecretSource, DpopClient, ResourceAuthorizer, TokenCache, Url,
    protected_resource_metadata,
};
use dpop_tests::{AgentOptions, OIDC_CLIENT_SECRET, OIDC_RS_SECRET, OidcProvider, TestAgent};
use serde_json::{Value, json};

/// The MCP-like resource: its URL, the scope it wants now, and what it saw.
struct Resource {
    base: String,
    issuer: String,
    jkt: String,
    required: Mutex<Vec<String>>,
    seen: Mutex<Vec<String>>,
}

impl Resource {
    fn url(&self) -> String {
        format!("{}/mcp", self.base)
    }
    fn metadata_url(&self) -> String {
        format!("{}/.well-known/oauth-protected-resource/mcp", self.base)
    }
}

async fn resource_metadata(State(r): State<Arc<Resource>>) -> Json<Value> {
    Json(json!({
        "resource": r.url(),
        "authorization_servers": [r.issuer],
        "scopes_supported": ["mcp:tools"],
    }))
}

fn challenge(r: &Resource, status: StatusCode, extra: &str) -> Response {
    let value = format!(
        "DPoP algs=\"ES256\"{extra}, Bearer resource_metadata=\"{}\"{extra}",
        r.metadata_url()
    );
    let mut response = status.into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_str(&value).unwrap(),
    );
    response
}

/// Answers 401 without a valid DPoP-bound token for this resource, 403 insufficient_scope
/// without the scope it wants now, 200 otherwise.
async fn mcp(State(r): State<Arc<Resource>>, headers: HeaderMap) -> Response {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Some(token) = auth.strip_prefix("DPoP ") else {
        r.seen.lock().unwrap().push("no token".into());
        return challenge(&r, StatusCode::UNAUTHORIZED, "");
    };
    assert!(
        headers.contains_key("dpop"),
        "a DPoP proof comes with the token"
    );
    let introspection: Value = reqwest::Client::new()
        .post(format!("{}/token/introspection", r.issuer))
        .basic_auth("resource-server", Some(OIDC_RS_SECRET))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    if introspection["active"] != true {
        r.seen.lock().unwrap().push("inactive".into());
        return challenge(&r, StatusCode::UNAUTHORIZED, ", error=\"invalid_token\"");
    }
    assert_eq!(
        introspection["cnf"]["jkt"],
        r.jkt.as_str(),
        "{introspection}"
    );
    assert_eq!(introspection["aud"], r.url().as_str(), "{introspection}");
    let scope = introspection["scope"].as_str().unwrap_or("").to_owned();
    let required = r.required.lock().unwrap().clone();
    r.seen.lock().unwrap().push(format!("scope {scope}"));
    if !required.iter().all(|s| scope.split(' ').any(|g| g == s)) {
        let extra = format!(
            ", error=\"insufficient_scope\", scope=\"{}\"",
            required.join(" ")
        );
        return challenge(&r, StatusCode::FORBIDDEN, &extra);
    }
    (StatusCode::OK, "ok").into_response()
}

/// Starts the resource on a free loopback port.
async fn start_resource(issuer: &str, jkt: &str) -> Arc<Resource> {
    // The resource names itself in its metadata: bind first, to know the port.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let resource = Arc::new(Resource {
        base,
        issuer: issuer.to_owned(),
        jkt: jkt.to_owned(),
        required: Mutex::new(vec!["mcp:tools".into()]),
        seen: Mutex::new(Vec::new()),
    });
    let router = Router::new()
        .route(
            "/.well-known/oauth-protected-resource/mcp",
            get(resource_metadata),
        )
        .route("/mcp", post(mcp))
        .with_state(resource.clone());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    resource
}

/// Marks the saved token `name` as expired (its file rewritten), returning its access token.
fn expire(cache: &TokenCache, name: &str) -> String {
    let path = cache.dir().join(format!("{name}.json"));
    let mut record: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let before = record["access_token"].as_str().unwrap().to_owned();
    record["expires_at"] = json!(1);
    std::fs::write(&path, serde_json::to_vec(&record).unwrap()).unwrap();
    before
}

/// Plays the browser: GETs `url` and follows every redirect, sending back every cookie it was
/// given (oidc-provider's interaction cookies), until a page that is not a redirect.
async fn browse(url: Url, pages: Arc<Mutex<Vec<String>>>) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut cookies: Vec<String> = Vec::new();
    let mut url = url;
    for _ in 0..20 {
        let mut request = client.get(url.clone());
        if !cookies.is_empty() {
            request = request.header(header::COOKIE, cookies.join("; "));
        }
        let response = request.send().await.unwrap();
        for set in response.headers().get_all(header::SET_COOKIE) {
            let pair = set.to_str().unwrap().split(';').next().unwrap().to_owned();
            let name = pair.split('=').next().unwrap().to_owned();
            cookies.retain(|c| !c.starts_with(&format!("{name}=")));
            cookies.push(pair);
        }
        let status = response.status();
        if status.is_redirection() {
            let location = response.headers()[header::LOCATION].to_str().unwrap();
            url = url.join(location).unwrap();
            continue;
        }
        let body = response.text().await.unwrap_or_default();
        pages.lock().unwrap().push(format!(
            "{status} {}{} {body}",
            url.origin().ascii_serialization(),
            url.path()
        ));
        return;
    }
    panic!("more than 20 redirects");
}

struct Flow {
    authorizer: ResourceAuthorizer,
    pages: Arc<Mutex<Vec<String>>>,
    progress: Arc<Mutex<Vec<String>>>,
}

fn authorizer(resource: &str, cache: &TokenCache, name: &str, max_step_up: u32) -> Flow {
    authorizer_with(resource, cache, name, |o| o.max_step_up = max_step_up)
}

fn authorizer_with(
    resource: &str,
    cache: &TokenCache,
    name: &str,
    tune: impl FnOnce(&mut AuthorizerOptions),
) -> Flow {
    let pages = Arc::new(Mutex::new(Vec::new()));
    let progress = Arc::new(Mutex::new(Vec::new()));
    let mut options = AuthorizerOptions::new(cache.clone(), name);
    tune(&mut options);
    let lines = progress.clone();
    options.progress = Some(Box::new(move |line: &str| {
        lines.lock().unwrap().push(line.to_owned())
    }));
    let seen = pages.clone();
    let authorizer = ResourceAuthorizer::new(
        Url::parse(resource).unwrap(),
        options,
        Box::new(move |url: &Url| {
            tokio::spawn(browse(url.clone(), seen.clone()));
        }),
    );
    Flow {
        authorizer,
        pages,
        progress,
    }
}

/// Sends a request to the resource the way the bridge does: the saved token if any, and on a
/// challenge the authorizer, then once more.
async fn call(flow: &Flow, http: &DpopClient, url: &str) -> StatusCode {
    let token = flow.authorizer.token(http).await.unwrap();
    let request = http.reqwest().post(url).body("{}").build().unwrap();
    let response = http
        .send(request, token.as_deref().map(|t| t.as_str()))
        .await
        .unwrap();
    let status = response.status();
    if !matches!(status.as_u16(), 401 | 403) {
        return status;
    }
    let again = flow
        .authorizer
        .on_challenge(http, status, response.headers())
        .await
        .unwrap();
    if !again {
        return status;
    }
    let token = flow
        .authorizer
        .token(http)
        .await
        .unwrap()
        .expect("a token after the flow");
    let request = http.reqwest().post(url).body("{}").build().unwrap();
    http.send(request, Some(&token)).await.unwrap().status()
}

#[test]
fn oidc_provider_registration_code_flow_step_up_and_concurrent_challenges() {
    let provider = OidcProvider::start();
    let agent = TestAgent::start(AgentOptions::new());
    let key = agent.client().generate_key("k").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = TokenCache::new(dir.path().join("tokens"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let resource = start_resource(&provider.issuer, &key.jkt).await;
        let agent = dpop_client::Client::connect(agent.socket()).await.unwrap();
        let http = DpopClient::new(agent, "k").unwrap();
        let url = resource.url();

        // First call: 401, discovery, dynamic registration, code flow, the call again.
        let flow = authorizer(&url, &cache, "mcp", 1);
        assert!(flow.authorizer.token(&http).await.unwrap().is_none());
        assert_eq!(call(&flow, &http, &url).await, StatusCode::OK);
        let progress = flow.progress.lock().unwrap().join("\n");
        assert!(progress.contains("client: registered at"), "{progress}");
        assert!(progress.contains("authorized: DPoP token"), "{progress}");
        let pages = flow.pages.lock().unwrap().clone();
        assert_eq!(pages.len(), 1, "{pages:?}");
        assert!(
            pages[0].starts_with("200 OK http://127.0.0.1:") && pages[0].contains("/callback"),
            "{pages:?}"
        );
        assert_eq!(
            *resource.seen.lock().unwrap(),
            ["no token", "scope mcp:tools"],
            "the token carries the PRM's scopes_supported"
        );
        let saved = cache.load("mcp").unwrap();
        assert!(saved.token_type.eq_ignore_ascii_case("DPoP"));
        assert_eq!(saved.jkt, key.jkt);
        assert_eq!(saved.resources, std::slice::from_ref(&url));
        assert_eq!(saved.client_auth, "none");
        let registrations: Vec<_> = std::fs::read_dir(cache.dir())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "registration"))
            .collect();
        assert_eq!(registrations.len(), 1, "{registrations:?}");
        let registration: Value =
            serde_json::from_slice(&std::fs::read(&registrations[0]).unwrap()).unwrap();
        assert_eq!(registration["client_id"], saved.client_id.as_str());
        assert_eq!(registration["issuer"], provider.issuer.as_str());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&registrations[0])
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        // The saved token is used as is: no challenge, no flow.
        assert_eq!(call(&flow, &http, &url).await, StatusCode::OK);
        assert_eq!(flow.pages.lock().unwrap().len(), 1);

        // Near expiry, the saved token is refreshed (with a proof, oidc-provider's nonce and
        // the resource) and saved again, without a browser.
        assert!(saved.has_refresh_token());
        let before = expire(&cache, "mcp");
        assert_eq!(call(&flow, &http, &url).await, StatusCode::OK);
        assert_eq!(flow.pages.lock().unwrap().len(), 1, "no new flow");
        let refreshed = cache.load("mcp").unwrap();
        assert_ne!(refreshed.access_token(), before);
        assert!(refreshed.expires_at.unwrap() > 1);

        // Step-up: the resource now wants mcp:admin too; one new flow with the union of scopes,
        // with the registration remembered.
        resource.required.lock().unwrap().push("mcp:admin".into());
        assert_eq!(call(&flow, &http, &url).await, StatusCode::OK);
        assert_eq!(flow.pages.lock().unwrap().len(), 2);
        let progress = flow.progress.lock().unwrap().join("\n");
        assert!(
            progress.contains("client: registered earlier as"),
            "{progress}"
        );
        let scope = cache.load("mcp").unwrap().scope.clone().unwrap_or_default();
        assert!(
            scope.contains("mcp:tools") && scope.contains("mcp:admin"),
            "{scope}"
        );
        // A scope the server never grants: the one allowed step-up is spent, the 403 stays.
        resource.required.lock().unwrap().push("mcp:other".into());
        assert_eq!(call(&flow, &http, &url).await, StatusCode::FORBIDDEN);
        assert_eq!(
            flow.pages.lock().unwrap().len(),
            2,
            "no flow beyond max_step_up"
        );
        *resource.required.lock().unwrap() = vec!["mcp:tools".into()];

        // A new authorizer (another cache name): three requests challenged at once share one
        // flow and one browser visit.
        let flow = authorizer(&url, &cache, "mcp2", 1);
        let (a, b, c) = tokio::join!(
            call(&flow, &http, &url),
            call(&flow, &http, &url),
            call(&flow, &http, &url)
        );
        assert_eq!([a, b, c], [StatusCode::OK; 3]);
        assert_eq!(
            flow.pages.lock().unwrap().len(),
            1,
            "one flow for three challenges"
        );
    });
}

#[test]
fn oidc_provider_pre_registered_client_with_a_secret() {
    let provider = OidcProvider::start();
    let agent = TestAgent::start(AgentOptions::new());
    let key = agent.client().generate_key("k").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = TokenCache::new(dir.path().join("tokens"));
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, format!("{OIDC_CLIENT_SECRET}\n")).unwrap();
    runtime().block_on(async {
        let resource = start_resource(&provider.issuer, &key.jkt).await;
        let agent = dpop_client::Client::connect(agent.socket()).await.unwrap();
        let http = DpopClient::new(agent, "k").unwrap();
        let url = resource.url();

        // The secret from a file: the token is saved with where the secret is, and refreshed.
        let flow = authorizer_with(&url, &cache, "pre", |o| {
            o.client_id = Some("mcp-client".into());
            o.client_secret_source = Some(ClientSecretSource::File(secret_file.clone()));
        });
        assert_eq!(call(&flow, &http, &url).await, StatusCode::OK);
        let progress = flow.progress.lock().unwrap().join("\n");
        assert!(
            progress.contains("client: pre-registered mcp-client"),
            "{progress}"
        );
        let saved = cache.load("pre").unwrap();
        assert_eq!(saved.client_id, "mcp-client");
        assert_eq!(saved.client_auth, "client_secret_basic");
        assert!(
            !std::fs::read_to_string(cache.dir().join("pre.json"))
                .unwrap()
                .contains(OIDC_CLIENT_SECRET)
        );
        let before = expire(&cache, "pre");
        assert_eq!(call(&flow, &http, &url).await, StatusCode::OK);
        assert_ne!(cache.load("pre").unwrap().access_token(), before);
        assert_eq!(
            flow.pages.lock().unwrap().len(),
            1,
            "refreshed, no new flow"
        );

        // The secret in memory only: the expired token cannot be refreshed, and the next
        // challenge gets a new one through the browser.
        let flow = authorizer_with(&url, &cache, "pre-mem", |o| {
            o.client_id = Some("mcp-client".into());
            o.client_secret = Some(OIDC_CLIENT_SECRET.to_owned().into());
        });
        assert_eq!(call(&flow, &http, &url).await, StatusCode::OK);
        expire(&cache, "pre-mem");
        assert_eq!(call(&flow, &http, &url).await, StatusCode::OK);
        assert_eq!(flow.pages.lock().unwrap().len(), 2);
        let progress = flow.progress.lock().unwrap().join("\n");
        assert!(progress.contains("saved token not used"), "{progress}");
    });
}

/// A server of JSON documents at chosen paths (built from its base URL) that records every
/// path asked for. Its `/authorize` plays an authorization endpoint of another issuer: it
/// records the query and redirects at once to the `redirect_uri` with a code, the `state`
/// and `iss=https://evil.example` (a mix-up); for client `forgotten`, with
/// `error=unauthorized_client` instead.
async fn documents(
    build: impl FnOnce(&str) -> Vec<(String, Value)>,
) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let docs = Arc::new(build(&base));
    let asked = Arc::new(Mutex::new(Vec::new()));
    let log = asked.clone();
    let router = Router::new().fallback(move |uri: axum::http::Uri| {
        let docs = docs.clone();
        let log = log.clone();
        async move {
            log.lock().unwrap().push(uri.path().to_owned());
            if uri.path() == "/authorize" {
                let query = uri.query().unwrap_or("").to_owned();
                log.lock().unwrap().push(query.clone());
                let url = Url::parse(&format!("http://x/?{query}")).unwrap();
                let get = |n: &str| {
                    url.query_pairs()
                        .find(|(k, _)| k == n)
                        .map(|(_, v)| v.into_owned())
                        .unwrap_or_default()
                };
                let mut back = Url::parse(&get("redirect_uri")).unwrap();
                if get("client_id") == "forgotten" {
                    back.query_pairs_mut()
                        .append_pair("error", "unauthorized_client")
                        .append_pair("state", &get("state"));
                } else {
                    back.query_pairs_mut()
                        .append_pair("code", "c")
                        .append_pair("state", &get("state"))
                        .append_pair("iss", "https://evil.example");
                }
                return axum::response::Redirect::to(back.as_str()).into_response();
            }
            match docs.iter().find(|(p, _)| *p == uri.path()) {
                Some((_, doc)) => Json(doc.clone()).into_response(),
                None => StatusCode::NOT_FOUND.into_response(),
            }
        }
    });
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (base, asked)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn resource_metadata_fallback_order_named_url_and_resource_check() {
    runtime().block_on(async {
        let http = reqwest::Client::new();
        // Only the root document: path-based first (404), then root.
        let (base, asked) = documents(|base| {
            vec![(
                "/.well-known/oauth-protected-resource".into(),
                json!({"resource": format!("{base}/public/mcp"), "authorization_servers": [base]}),
            )]
        })
        .await;
        let resource = Url::parse(&format!("{base}/public/mcp")).unwrap();
        let prm = protected_resource_metadata(&http, &resource, None)
            .await
            .unwrap();
        assert_eq!(prm.authorization_servers, std::slice::from_ref(&base));
        assert_eq!(
            *asked.lock().unwrap(),
            [
                "/.well-known/oauth-protected-resource/public/mcp",
                "/.well-known/oauth-protected-resource"
            ]
        );
        // A URL named by a challenge: that one only.
        asked.lock().unwrap().clear();
        let named = Url::parse(&format!("{base}/.well-known/oauth-protected-resource")).unwrap();
        protected_resource_metadata(&http, &resource, Some(&named))
            .await
            .unwrap();
        assert_eq!(
            *asked.lock().unwrap(),
            ["/.well-known/oauth-protected-resource"]
        );
        // Metadata of another resource is refused (RFC 9728 section 3.3).
        let other = Url::parse(&format!("{base}/other")).unwrap();
        let err = protected_resource_metadata(&http, &other, Some(&named))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("describes the resource"), "{err}");
    });
}

/// An authorizer's flow against documents served here, up to its first refusal.
async fn refused_flow(
    agent: &TestAgent,
    authorization_server: impl Fn(&str) -> Value,
    as_path: &str,
    issuer_path: &str,
) -> (String, Vec<String>) {
    let (err, asked) =
        refused_flow_with(agent, authorization_server, as_path, issuer_path, |_| {}).await;
    assert!(
        !asked.iter().any(|p| p == "/register"),
        "nothing registered: {asked:?}"
    );
    (err, asked)
}

/// [`refused_flow`] with `options` changed by `tune`; asserts no browser was opened only
/// when the flow did not get as far as `/authorize`.
async fn refused_flow_with(
    agent: &TestAgent,
    authorization_server: impl Fn(&str) -> Value,
    as_path: &str,
    issuer_path: &str,
    tune: impl FnOnce(&mut AuthorizerOptions),
) -> (String, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let cache = TokenCache::new(dir.path().join("tokens"));
    refused_flow_in(
        agent,
        authorization_server,
        as_path,
        issuer_path,
        tune,
        &cache,
        vec![],
    )
    .await
}

/// [`refused_flow_with`] with its cache and more documents.
async fn refused_flow_in(
    agent: &TestAgent,
    authorization_server: impl Fn(&str) -> Value,
    as_path: &str,
    issuer_path: &str,
    tune: impl FnOnce(&mut AuthorizerOptions),
    cache: &TokenCache,
    more: Vec<(String, Value)>,
) -> (String, Vec<String>) {
    let as_path = as_path.to_owned();
    let issuer_path = issuer_path.to_owned();
    let (base, asked) = documents(move |base| {
        let issuer = format!("{base}{issuer_path}");
        let mut doc = authorization_server(&issuer);
        doc["registration_endpoint"] = json!(format!("{base}/register"));
        vec![
            (
                "/.well-known/oauth-protected-resource/mcp".into(),
                json!({"resource": format!("{base}/mcp"), "authorization_servers": [issuer]}),
            ),
            (as_path, doc),
        ]
        .into_iter()
        .chain(more)
        .collect()
    })
    .await;
    let client = dpop_client::Client::connect(agent.socket()).await.unwrap();
    let http = DpopClient::new(client, "k").unwrap();
    let flow = authorizer_with(&format!("{base}/mcp"), cache, "x", tune);
    let mut headers = HeaderMap::new();
    headers.insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("DPoP algs=\"ES256\""),
    );
    let err = flow
        .authorizer
        .on_challenge(&http, StatusCode::UNAUTHORIZED, &headers)
        .await
        .unwrap_err();
    let asked = asked.lock().unwrap().clone();
    if !asked.iter().any(|p| p == "/authorize") {
        assert!(flow.pages.lock().unwrap().is_empty(), "no browser opened");
    }
    (err.to_string(), asked)
}

#[test]
fn authorization_server_discovery_order_and_refusals_before_anything_is_sent() {
    let agent = TestAgent::start(AgentOptions::new());
    agent.client().generate_key("k").unwrap();
    runtime().block_on(async {
        // An issuer with a path: found at the second MCP place (OpenID, path inserted), and
        // refused for lacking S256.
        let (err, asked) = refused_flow(
            &agent,
            |issuer| json!({"issuer": issuer, "authorization_endpoint": format!("{issuer}/a"), "token_endpoint": format!("{issuer}/t")}),
            "/.well-known/openid-configuration/tenant1",
            "/tenant1",
        )
        .await;
        assert!(err.contains("S256"), "{err}");
        assert_eq!(
            asked,
            [
                "/.well-known/oauth-protected-resource/mcp",
                "/.well-known/oauth-authorization-server/tenant1",
                "/.well-known/openid-configuration/tenant1",
            ]
        );
        // The key's algorithm is not among the server's DPoP algorithms.
        let (err, _) = refused_flow(
            &agent,
            |issuer| json!({"issuer": issuer, "authorization_endpoint": format!("{issuer}/a"), "token_endpoint": format!("{issuer}/t"), "code_challenge_methods_supported": ["S256"], "dpop_signing_alg_values_supported": ["PS256"]}),
            "/.well-known/oauth-authorization-server",
            "",
        )
        .await;
        assert!(err.contains("PS256 only"), "{err}");
        // An endpoint in clear text off loopback is refused before anything is sent there.
        let (err, _) = refused_flow(
            &agent,
            |issuer| json!({"issuer": issuer, "authorization_endpoint": format!("{issuer}/a"), "token_endpoint": "http://as.example.com/token", "code_challenge_methods_supported": ["S256"]}),
            "/.well-known/oauth-authorization-server",
            "",
        )
        .await;
        assert!(err.contains("over https"), "{err}");
        // A nonce challenge left over after DpopClient's retry is not an authorization one.
        let (base, asked) = documents(|_| vec![]).await;
        let client = dpop_client::Client::connect(agent.socket()).await.unwrap();
        let http = DpopClient::new(client, "k").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let flow = authorizer(
            &format!("{base}/mcp"),
            &TokenCache::new(dir.path().join("t")),
            "n",
            1,
        );
        let mut headers = HeaderMap::new();
        headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("DPoP error=\"use_dpop_nonce\""),
        );
        let again = flow
            .authorizer
            .on_challenge(&http, StatusCode::UNAUTHORIZED, &headers)
            .await
            .unwrap();
        assert!(!again);
        assert!(asked.lock().unwrap().is_empty(), "no discovery");
        // An issuer that differs (a trailing slash) is refused: the check is exact.
        let (err, asked) = refused_flow(
            &agent,
            |issuer| json!({"issuer": format!("{issuer}/"), "code_challenge_methods_supported": ["S256"]}),
            "/.well-known/oauth-authorization-server",
            "",
        )
        .await;
        assert!(err.contains("not this one"), "{err}");
        assert_eq!(
            asked,
            [
                "/.well-known/oauth-protected-resource/mcp",
                "/.well-known/oauth-authorization-server",
            ]
        );
    });
}

/// The authorization request the flow sends, and the `iss` check of the answer.
fn authorize_query(asked: &[String]) -> Vec<(String, String)> {
    let at = asked
        .iter()
        .position(|p| p == "/authorize")
        .expect("authorize reached");
    Url::parse(&format!("http://x/?{}", asked[at + 1]))
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

#[test]
fn client_id_choice_request_parameters_and_iss_mix_up() {
    let agent = TestAgent::start(AgentOptions::new());
    let key = agent.client().generate_key("k").unwrap();
    let server = |cimd: bool| {
        move |issuer: &str| {
            let base = issuer.to_owned();
            json!({
                "issuer": issuer,
                "authorization_endpoint": format!("{base}/authorize"),
                "token_endpoint": format!("{base}/token"),
                "code_challenge_methods_supported": ["S256"],
                "client_id_metadata_document_supported": cimd,
            })
        }
    };
    let cimd_url = "https://client.example/dpop-mcp.json";
    runtime().block_on(async {
        // A Client ID Metadata Document when the server takes them: no registration. The
        // request carries PKCE S256, state, the resource, dpop_jkt; the answer's iss names
        // another issuer and is refused.
        let (err, asked) = refused_flow_with(
            &agent,
            server(true),
            "/.well-known/oauth-authorization-server",
            "",
            |o| {
                o.client_metadata_url = Some(Url::parse(cimd_url).unwrap());
                o.scope = Some("tools:read".into());
            },
        )
        .await;
        assert!(err.contains("mix-up"), "{err}");
        let query = authorize_query(&asked);
        let get = |n: &str| {
            query
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        assert_eq!(get("client_id"), cimd_url);
        assert_eq!(get("response_type"), "code");
        assert_eq!(get("code_challenge_method"), "S256");
        assert_eq!(get("code_challenge").len(), 43);
        assert!(get("state").len() >= 16);
        assert_eq!(get("scope"), "tools:read");
        assert_eq!(get("dpop_jkt"), key.jkt);
        let resource = get("resource");
        assert!(resource.starts_with("http://127.0.0.1:") && resource.ends_with("/mcp"));
        assert!(get("redirect_uri").starts_with("http://127.0.0.1:"));
        assert!(get("redirect_uri").ends_with("/callback"));
        // Without the server's support the document URL is not used: dynamic registration is
        // next (the refusal then comes from the registration endpoint, which is not there).
        let (_, asked) = refused_flow_with(
            &agent,
            server(false),
            "/.well-known/oauth-authorization-server",
            "",
            |o| o.client_metadata_url = Some(Url::parse(cimd_url).unwrap()),
        )
        .await;
        assert!(!asked.iter().any(|p| p == "/authorize"), "{asked:?}");
        assert!(asked.iter().any(|p| p == "/register"), "{asked:?}");
        // A pre-registered client id comes first, whatever the server supports.
        let (_, asked) = refused_flow_with(
            &agent,
            server(true),
            "/.well-known/oauth-authorization-server",
            "",
            |o| {
                o.client_id = Some("pre-registered".into());
                o.client_metadata_url = Some(Url::parse(cimd_url).unwrap());
            },
        )
        .await;
        assert!(!asked.iter().any(|p| p == "/register"), "{asked:?}");
        let query = authorize_query(&asked);
        assert!(
            query.contains(&("client_id".into(), "pre-registered".into())),
            "{query:?}"
        );
        // No scope anywhere (option, challenge, scopes_supported): none sent.
        assert!(!query.iter().any(|(k, _)| k == "scope"), "{query:?}");
    });
}

#[test]
fn a_registration_the_server_refuses_is_forgotten() {
    let agent = TestAgent::start(AgentOptions::new());
    agent.client().generate_key("k").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = TokenCache::new(dir.path().join("tokens"));
    let registrations = || {
        std::fs::read_dir(cache.dir())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "registration")
            })
            .count()
    };
    let server = |issuer: &str| {
        json!({
            "issuer": issuer,
            "authorization_endpoint": format!("{issuer}/authorize"),
            "token_endpoint": format!("{issuer}/token"),
            "code_challenge_methods_supported": ["S256"],
        })
    };
    runtime().block_on(async {
        let register = || vec![("/register".to_owned(), json!({"client_id": "forgotten"}))];
        let (err, asked) = refused_flow_in(
            &agent,
            server,
            "/.well-known/oauth-authorization-server",
            "",
            |_| {},
            &cache,
            register(),
        )
        .await;
        assert!(err.contains("unauthorized_client"), "{err}");
        assert!(asked.iter().any(|p| p == "/register"), "{asked:?}");
        assert_eq!(registrations(), 0, "the refused registration is forgotten");
    });
}
