//! One request, upstream and back: the route is found, the local program's own
//! `Authorization` or `DPoP` is refused, hop-by-hop headers are dropped both ways, the body is
//! buffered up to the retry limit (so a `use_dpop_nonce` challenge can be answered by sending
//! it again) and streamed beyond it, the token and a fresh proof are added by
//! [`DpopClient::send_unfollowed`], and the answer is streamed back as it arrives, a redirect
//! into the route mapped back under it. One access-log line per request, without query,
//! token or proof.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use dpop_client::http::reqwest;
use dpop_client::http::{DpopClient, Url};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::header::{
    AUTHORIZATION, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, EXPECT, HOST, HeaderMap, HeaderName,
    HeaderValue, LOCATION, ORIGIN, TRANSFER_ENCODING,
};
use hyper::{Request, Response, StatusCode};

use super::credentials::{Credential, Signer};
use super::routes::{self, Route};
use crate::output::printable;

/// The answer's body: the proxy's own short message, or the upstream's, streamed.
pub(crate) type ProxyBody = Either<Full<Bytes>, reqwest::Body>;

/// A route with what it needs to forward.
pub(crate) struct Target {
    /// The route.
    pub(crate) route: Route,
    /// Its key's agent connections.
    pub(crate) signer: Arc<Signer>,
    /// Its token.
    pub(crate) credential: Credential,
}

/// Everything a request needs.
pub(crate) struct Proxy {
    /// The routes.
    pub(crate) targets: Vec<Target>,
    /// Bodies up to this many bytes are buffered, so a nonce challenge can be retried.
    pub(crate) body_retry_limit: usize,
    /// Loopback TCP: the `Host` must be a loopback name (DNS rebinding).
    pub(crate) check_host: bool,
}

/// Headers that concern one connection only (RFC 9110 section 7.6.1), never forwarded.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes the hop-by-hop headers, and those the `Connection` header names.
pub(crate) fn drop_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// What happened, for the access log.
struct Outcome {
    response: Response<ProxyBody>,
    upstream: Option<String>,
    note: Option<String>,
}

impl Outcome {
    fn local(status: StatusCode, message: String) -> Outcome {
        Outcome {
            response: plain(status, &message),
            upstream: None,
            note: Some(message),
        }
    }
}

/// A short plain-text answer from the proxy itself.
fn plain(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let mut response = Response::new(Either::Left(Full::new(Bytes::from(format!(
        "dpop proxy: {message}\n"
    )))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

impl Proxy {
    /// Answers one request, and logs it.
    pub(crate) async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let start = Instant::now();
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let outcome = self.forward(request).await;
        let mut line = format!(
            "dpop proxy: {method} {path} {} {:.1} ms",
            outcome.response.status().as_u16(),
            start.elapsed().as_secs_f64() * 1e3
        );
        if let Some(upstream) = &outcome.upstream {
            line.push_str(&format!(" upstream {upstream}"));
        }
        if let Some(note) = &outcome.note {
            line.push_str(&format!(" ({note})"));
        }
        log!("{}", printable(&line));
        Ok(outcome.response)
    }

    async fn forward(&self, request: Request<Incoming>) -> Outcome {
        if let Some(refusal) = self.refuse_browser(&request) {
            return Outcome::local(StatusCode::FORBIDDEN, refusal);
        }
        let path = request.uri().path();
        let Some((target, rest)) = routes::find(&self.targets, |t| &t.route, path) else {
            return Outcome::local(StatusCode::NOT_FOUND, format!("no route for {path}"));
        };
        for name in [AUTHORIZATION, HeaderName::from_static("dpop")] {
            if request.headers().contains_key(&name) {
                return Outcome::local(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "the request has its own {name} header: the proxy adds the token and \
                         proof itself, and never forwards a client's; remove it"
                    ),
                );
            }
        }
        let url = match routes::upstream_url(&target.route, rest, request.uri().query()) {
            Ok(url) => url,
            Err(e) => return Outcome::local(StatusCode::BAD_REQUEST, format!("{e:#}")),
        };
        let upstream = Some(target.route.upstream.as_str().to_owned());
        let failed = |status, message: String| Outcome {
            response: plain(status, &message),
            upstream: upstream.clone(),
            note: Some(message),
        };
        let token = match target.credential.token(&target.signer).await {
            Ok(token) => token,
            Err(e) => return failed(StatusCode::BAD_GATEWAY, format!("{e:#}")),
        };
        let (parts, body) = request.into_parts();
        let mut headers = parts.headers;
        drop_hop_by_hop(&mut headers);
        // The upstream's host comes from its URL; 100-continue is this hop's business
        // (hyper answers it when the body is read).
        headers.remove(HOST);
        headers.remove(EXPECT);
        let body = match request_body(body, &headers, self.body_retry_limit).await {
            Ok(body) => body,
            Err(e) => {
                return failed(
                    StatusCode::BAD_REQUEST,
                    format!("reading the request body: {e}"),
                );
            }
        };
        let mut outgoing = reqwest::Request::new(parts.method, url.clone());
        *outgoing.headers_mut() = headers;
        *outgoing.body_mut() = body;
        let client: &DpopClient = target.signer.client();
        let sent = match client.send_unfollowed(outgoing, Some(token.as_str())).await {
            Ok(sent) => sent,
            Err(e) => {
                // reqwest names the URL, query and all: the log gets it without the query.
                let message = format!("{:#}", anyhow::Error::new(e))
                    .replace(url.as_str(), without_query(&url).as_str());
                return failed(StatusCode::BAD_GATEWAY, message);
            }
        };
        let note = sent.nonce_retried.then(|| "nonce retry".to_owned());
        let mut response: Response<reqwest::Body> = sent.response.into();
        drop_hop_by_hop(response.headers_mut());
        if response.status().is_redirection()
            && let Some(location) = response.headers().get(LOCATION)
            && let Ok(location) = location.to_str()
            && let Some(mapped) = routes::map_location(&target.route, &url, location)
            && let Ok(mapped) = HeaderValue::from_str(&mapped)
        {
            response.headers_mut().insert(LOCATION, mapped);
        }
        Outcome {
            response: response.map(Either::Right),
            upstream,
            note,
        }
    }
}

impl Proxy {
    /// Why a request that a web page made is refused. A browser of this user passes the uid
    /// check, and any page it shows can send requests to a loopback port (a form post, a
    /// no-cors fetch) or, after DNS rebinding, read the answers: the proxy would add the
    /// token to them. Browsers mark such requests with `Origin` or `Sec-Fetch-Site`, and a
    /// rebound name arrives in `Host`; the programs the proxy is for send none of that.
    fn refuse_browser(&self, request: &Request<Incoming>) -> Option<String> {
        let headers = request.headers();
        if let Some(name) = [ORIGIN.as_str(), "sec-fetch-site"]
            .into_iter()
            .find(|name| headers.contains_key(*name))
        {
            return Some(format!(
                "the request has a {name} header: requests from web pages are refused"
            ));
        }
        if self.check_host {
            let host = headers
                .get(HOST)
                .and_then(|v| v.to_str().ok())
                .or_else(|| request.uri().authority().map(|a| a.as_str()));
            if !host.is_some_and(is_loopback_host) {
                return Some(format!(
                    "Host {:?} is not a loopback name (127.0.0.1, [::1], localhost)",
                    host.unwrap_or("")
                ));
            }
        }
        None
    }
}

/// `127.0.0.1`, `[::1]`, `localhost` (any case), each with an optional port.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if !name.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn without_query(url: &Url) -> Url {
    let mut url = url.clone();
    url.set_query(None);
    url
}

/// The body to send upstream: none; all of it in memory when it ends within `limit` bytes
/// (so it can be sent again for a nonce retry); else streamed, what was read first included.
async fn request_body(
    mut body: Incoming,
    headers: &HeaderMap,
    limit: usize,
) -> Result<Option<reqwest::Body>, hyper::Error> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Ok(Some(reqwest::Body::wrap(body)));
    }
    let mut chunks = VecDeque::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            // Trailers: not forwarded (they are hop-by-hop in practice).
            continue;
        };
        total += data.len();
        chunks.push_back(data);
        if total > limit {
            return Ok(Some(reqwest::Body::wrap(Prefixed { chunks, rest: body })));
        }
    }
    if total == 0 && declared.is_none() && !headers.contains_key(TRANSFER_ENCODING) {
        return Ok(None);
    }
    let mut all = Vec::with_capacity(total);
    for chunk in chunks {
        all.extend_from_slice(&chunk);
    }
    Ok(Some(reqwest::Body::from(all)))
}

/// A body whose first chunks were already read.
struct Prefixed {
    chunks: VecDeque<Bytes>,
    rest: Incoming,
}

impl Body for Prefixed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if let Some(chunk) = self.chunks.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let read: u64 = self.chunks.iter().map(|c| c.len() as u64).sum();
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + read);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + read);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_host_names() {
        for host in [
            "127.0.0.1:8080",
            "127.0.0.1",
            "[::1]:80",
            "[::1]",
            "localhost:1",
            "LOCALHOST",
            "127.1.2.3:9",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "evil.example:8080",
            "evil.example",
            "10.0.0.1:80",
            "localhost.evil.example",
            "[::2]:80",
            "",
            ":80",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_dropped() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, X-Secret-Hop"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("trailer", "x"),
            ("accept", "application/json"),
            ("x-kept", "yes"),
        ] {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        drop_hop_by_hop(&mut headers);
        let left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["accept", "x-kept"]);
    }
}
