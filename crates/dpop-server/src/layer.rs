//! A tower layer that checks DPoP on every request of an axum service, and the extractor
//! that hands the result to handlers.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::{DPOP_NONCE, Error, HttpRequest, Rejection, TokenValidator, Verified, Verifier};

/// Checks every request with a [`Verifier`] and the application's [`TokenValidator`]:
/// refused requests are answered from the [`Rejection`]; accepted ones reach the service with
/// the [`Verified`] result in their extensions (take it with the [`Dpop`] extractor), and their
/// response gets a `DPoP-Nonce` header when the client should move to a new nonce.
///
/// The peer address for [trusted proxies](crate::PublicUrl::trust_proxies) comes from axum's
/// `ConnectInfo<SocketAddr>` (serve with `into_make_service_with_connect_info`); without it
/// no peer is trusted.
#[derive(Clone)]
pub struct DpopLayer {
    verifier: Arc<Verifier>,
    tokens: Arc<dyn TokenValidator>,
}

impl DpopLayer {
    /// A layer that checks with `verifier` and validates access tokens with `tokens`.
    pub fn new(verifier: Arc<Verifier>, tokens: Arc<dyn TokenValidator>) -> DpopLayer {
        DpopLayer { verifier, tokens }
    }
}

impl<S> tower::Layer<S> for DpopLayer {
    type Service = DpopService<S>;

    fn layer(&self, inner: S) -> DpopService<S> {
        DpopService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`DpopLayer`] wraps around another.
#[derive(Clone)]
pub struct DpopService<S> {
    inner: S,
    layer: DpopLayer,
}

impl<S> tower::Service<Request<Body>> for DpopService<S>
where
    S: tower::Service<Request<Body>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        // The clone that was polled ready serves this request (tower's usual swap).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            // The body is not `Sync`: only the head is looked at across the await.
            let (mut parts, body) = request.into_parts();
            let verified = match check(&layer, &parts).await {
                Ok(verified) => verified,
                Err(rejection) => return Ok(rejection.into_response()),
            };
            let nonce = verified.next_nonce.clone();
            parts.extensions.insert(verified);
            let request = Request::from_parts(parts, body);
            let mut response = inner.call(request).await?;
            if let Some(value) = nonce.and_then(|n| HeaderValue::from_str(&n).ok()) {
                response.headers_mut().insert(DPOP_NONCE, value);
            }
            Ok(response)
        })
    }
}

async fn check(layer: &DpopLayer, request: &Parts) -> Result<Verified, Rejection> {
    let verifier = &layer.verifier;
    let headers = &request.headers;
    let peer = request
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let url = verifier
        .public_url()
        .request_url(request.uri.path(), headers, peer)
        .map_err(|e| verifier.reject(Error::Forwarded(e)))?;
    let authorization =
        header_strs(request, axum::http::header::AUTHORIZATION.as_str()).map_err(|_| {
            verifier.reject(Error::MalformedAuthorization(
                "the Authorization header is not ASCII",
            ))
        })?;
    let dpop = header_strs(request, "dpop").map_err(|_| verifier.reject(Error::ProofNotAscii))?;
    verifier
        .verify(
            &HttpRequest {
                method: request.method.as_str(),
                url: &url,
                authorization: &authorization,
                dpop: &dpop,
            },
            &*layer.tokens,
        )
        .await
}

fn header_strs<'r>(request: &'r Parts, name: &str) -> Result<Vec<&'r str>, ()> {
    request
        .headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().map_err(|_| ()))
        .collect()
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let (parts, body) = self.to_response().into_parts();
        Response::from_parts(parts, Body::from(body))
    }
}

/// The [`Verified`] result of [`DpopLayer`] for a handler:
/// `async fn handler(Dpop(verified): Dpop) -> ...`.
#[derive(Clone, Debug)]
pub struct Dpop(pub Verified);

impl<S: Send + Sync> FromRequestParts<S> for Dpop {
    type Rejection = (StatusCode, &'static str);

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Dpop, Self::Rejection> {
        parts
            .extensions
            .get::<Verified>()
            .cloned()
            .map(Dpop)
            .ok_or((
                StatusCode::INTERNAL_SERVER_ERROR,
                "the Dpop extractor needs DpopLayer in front of this route",
            ))
    }
}
