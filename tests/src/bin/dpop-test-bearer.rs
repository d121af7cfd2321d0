//! `dpop-test-bearer`: the Bearer baseline of the `server_load` bench. A plain axum handler
//! that accepts `Authorization: Bearer <JWT>` checked by the example resource server's own
//! JWT code (its `jwt.rs`, compiled in here, not copied: the example is a binary crate,
//! which cannot be a dependency), on the same runtime, with the same `TCP_NODELAY` and the
//! same kind of JSON answer as `dpop-resource-server`, but without DPoP.
//!
//! `dpop-test-bearer --listen ADDR --jwks FILE --issuer ISS --audience AUD`; prints
//! `listening on ADDR` once it listens, as the example server does.

#[path = "../../../examples/resource-server/src/jwt.rs"]
mod jwt;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use dpop_server::TokenValidator;
use serde_json::json;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (mut listen, mut jwks, mut issuer, mut audience) = (None, None, None, None);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => listen = Some(value.parse::<SocketAddr>().expect("--listen ADDR")),
            "--jwks" => jwks = Some(value),
            "--issuer" => issuer = Some(value),
            "--audience" => audience = Some(value),
            other => panic!("unknown argument {other}"),
        }
    }
    let jwks = std::fs::read(jwks.expect("--jwks FILE")).expect("reading the JWKS");
    let tokens = jwt::JwtTokens::from_jwks(&jwks, issuer, audience).expect("a usable JWKS");
    let app = axum::Router::new()
        .fallback(resource)
        .with_state(Arc::new(tokens));
    let listener = tokio::net::TcpListener::bind(listen.expect("--listen ADDR"))
        .await
        .expect("listening");
    println!(
        "listening on {}",
        listener.local_addr().expect("bound address")
    );
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await.expect("serving");
}

/// Every path answers with what the token says, as the example server's handler does.
async fn resource(
    State(tokens): State<Arc<jwt::JwtTokens>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let refused = |error: &'static str| {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, error)],
        )
            .into_response()
    };
    let Some(token) = token else {
        return refused("Bearer");
    };
    match tokens.validate(token).await {
        Ok(bound) => Json(json!({
            "method": method.as_str(),
            "path": uri.path(),
            "jkt": bound.jkt,
            "sub": bound.claims["sub"],
        }))
        .into_response(),
        Err(_) => refused("Bearer error=\"invalid_token\""),
    }
}
