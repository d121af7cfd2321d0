//! A DPoP-protected MCP resource server for the `dpop mcp` tests: the project's own verifier
//! (dpop-server's `DpopLayer`) in front of an MCP server (tests/interop/mcp/server.mjs),
//! forwarding what it accepts, answers streamed (`text/event-stream` included).
//!
//! - `/mcp`: every request needs `Authorization: DPoP <token>` and a proof (nonces required
//!   unless `--no-nonce`); the token is checked by RFC 7662 introspection at the authorization
//!   server (active, bound: its `cnf.jkt` must be the proof key's). A refusal is dpop-server's
//!   `Rejection` with `resource_metadata="..."` (RFC 9728 section 5.1) added to its
//!   `WWW-Authenticate: DPoP` challenge.
//! - `/.well-known/oauth-protected-resource` and `/.well-known/oauth-protected-resource/mcp`:
//!   the RFC 9728 metadata, naming the authorization server (`--issuer`).
//!
//! Usage: `dpop-test-mcp-rs --upstream URL --issuer URL --introspection URL [--no-nonce]
//! [--scope S]...` (`--scope`: listed in the metadata's `scopes_supported`)
//! with the introspection credentials in `DPOP_TEST_RS_CLIENT_ID` and `DPOP_TEST_RS_SECRET`.
//! It listens on a free port of 127.0.0.1 and prints one JSON line when it does: `{"port",
//! "url", "resource_metadata"}`. Started by `dpop_tests::mcp::ProtectedMcpServer`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::serve::ListenerExt;
use dpop_server::{
    BoundToken, DpopLayer, HmacNonces, Preset, PublicUrl, TokenFuture, TokenValidator, Verifier,
};
use serde_json::{Value, json};

/// The headers that belong to one hop (RFC 9110 section 7.6.1) or to the verifier, not sent on.
const NOT_FORWARDED: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "upgrade",
    "content-length",
    "authorization",
    "dpop",
];

struct Args {
    upstream: String,
    issuer: String,
    introspection: String,
    require_nonce: bool,
    scopes: Vec<String>,
}

fn parse_args() -> Args {
    let mut args = std::env::args().skip(1);
    let (mut upstream, mut issuer, mut introspection, mut require_nonce) = (None, None, None, true);
    let mut scopes = Vec::new();
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--upstream" => upstream = Some(value()),
            "--issuer" => issuer = Some(value()),
            "--introspection" => introspection = Some(value()),
            "--no-nonce" => require_nonce = false,
            "--scope" => scopes.push(value()),
            other => panic!("unknown argument {other}"),
        }
    }
    Args {
        upstream: upstream.expect("--upstream URL"),
        issuer: issuer.expect("--issuer URL"),
        introspection: introspection.expect("--introspection URL"),
        require_nonce,
        scopes,
    }
}

/// Access tokens checked by introspection at the authorization server.
struct Introspection {
    http: reqwest::Client,
    url: String,
    client_id: String,
    secret: String,
}

impl TokenValidator for Introspection {
    fn validate<'a>(&'a self, access_token: &'a str) -> TokenFuture<'a> {
        Box::pin(async move {
            let answer: Value = self
                .http
                .post(&self.url)
                .basic_auth(&self.client_id, Some(&self.secret))
                .form(&[("token", access_token)])
                .send()
                .await
                .map_err(|e| format!("introspection failed: {e}"))?
                .json()
                .await
                .map_err(|e| format!("introspection answer: {e}"))?;
            if answer["active"] != json!(true) {
                return Err("the access token is not active".to_owned());
            }
            Ok(BoundToken {
                jkt: answer["cnf"]["jkt"].as_str().map(str::to_owned),
                claims: answer,
            })
        })
    }
}

struct Shared {
    http: reqwest::Client,
    upstream: String,
    metadata: Value,
    resource_metadata: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = parse_args();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding 127.0.0.1:0");
    let port = listener.local_addr().expect("local address").port();
    let base = format!("http://127.0.0.1:{port}");
    let resource = format!("{base}/mcp");
    let resource_metadata = format!("{base}/.well-known/oauth-protected-resource/mcp");

    let mut secret = [0u8; 32];
    aws_lc_rs::rand::fill(&mut secret).expect("random nonce secret");
    let verifier = Verifier::builder(Preset::Rfc9449)
        .public_url(PublicUrl::new(&base).expect("public URL"))
        .nonces(HmacNonces::new(&secret, Duration::from_secs(60)).expect("nonce source"))
        .require_nonces(args.require_nonce)
        .build()
        .expect("verifier");
    let algs: Vec<&str> = verifier
        .options()
        .algorithms
        .iter()
        .map(|a| a.as_str())
        .collect();
    let http = reqwest::Client::new();
    let tokens = Introspection {
        http: http.clone(),
        url: args.introspection,
        client_id: std::env::var("DPOP_TEST_RS_CLIENT_ID").expect("DPOP_TEST_RS_CLIENT_ID"),
        secret: std::env::var("DPOP_TEST_RS_SECRET").expect("DPOP_TEST_RS_SECRET"),
    };
    let shared = Arc::new(Shared {
        http,
        upstream: args.upstream,
        metadata: {
            let mut metadata = json!({
                "resource": resource,
                "authorization_servers": [args.issuer],
                "bearer_methods_supported": ["header"],
                "dpop_signing_alg_values_supported": algs,
                "dpop_bound_access_tokens_required": true,
            });
            if !args.scopes.is_empty() {
                metadata["scopes_supported"] = json!(args.scopes);
            }
            metadata
        },
        resource_metadata: resource_metadata.clone(),
    });

    let protected = Router::new()
        .route("/mcp", any(forward))
        .layer(DpopLayer::new(Arc::new(verifier), Arc::new(tokens)))
        .layer(axum::middleware::map_response_with_state(
            shared.clone(),
            add_resource_metadata,
        ));
    let app = Router::new()
        .route("/.well-known/oauth-protected-resource", get(metadata))
        .route("/.well-known/oauth-protected-resource/mcp", get(metadata))
        .merge(protected)
        .with_state(shared);

    println!(
        "{}",
        json!({"port": port, "url": resource, "resource_metadata": resource_metadata})
    );
    // Without TCP_NODELAY a streamed answer (headers, then each SSE event) waits out the
    // client's delayed ACK: ~40 ms per request.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await.expect("serving");
}

async fn metadata(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(shared.metadata.clone()).into_response()
}

/// RFC 9728 section 5.1: the challenge says where the resource's metadata is, so a client
/// finds its authorization server from the first 401.
async fn add_resource_metadata(
    State(shared): State<Arc<Shared>>,
    mut response: Response,
) -> Response {
    if let Some(challenge) = response
        .headers()
        .get(header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
    {
        let separator = if challenge == "DPoP" { " " } else { ", " };
        let value = format!(
            "{challenge}{separator}resource_metadata=\"{}\"",
            shared.resource_metadata
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_str(&value).expect("a header value"),
        );
    }
    response
}

/// Sends an accepted request on to the MCP server and streams its answer back.
async fn forward(
    State(shared): State<Arc<Shared>>,
    request: Request,
) -> Result<Response, Infallible> {
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, 4 << 20).await {
        Ok(body) => body,
        Err(e) => return Ok((StatusCode::BAD_REQUEST, e.to_string()).into_response()),
    };
    let mut upstream = shared
        .http
        .request(parts.method, &shared.upstream)
        .body(body);
    for (name, value) in &parts.headers {
        if !NOT_FORWARDED.contains(&name.as_str()) {
            upstream = upstream.header(name, value);
        }
    }
    let answer = match upstream.send().await {
        Ok(answer) => answer,
        Err(e) => return Ok((StatusCode::BAD_GATEWAY, e.to_string()).into_response()),
    };
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if !NOT_FORWARDED.contains(&name.as_str()) {
            response = response.header(name, value);
        }
    }
    Ok(response
        .body(Body::from_stream(answer.bytes_stream()))
        .expect("a response"))
}
