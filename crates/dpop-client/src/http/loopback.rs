//! The loopback redirect of native apps (RFC 8252 section 7.3): listen on 127.0.0.1 on a
//! free port, and take the authorization response from the browser's redirect.

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use url::Url;
use zeroize::Zeroizing;

use super::Error;
use super::challenge::OAuthErrorBody;

const CALLBACK_PATH: &str = "/callback";

/// A listener for the authorization redirect on 127.0.0.1.
#[derive(Debug)]
pub struct LoopbackRedirect {
    listener: TcpListener,
    redirect_uri: String,
}

/// What the redirect carried: the code and the state.
pub struct Redirected {
    /// The authorization code.
    pub code: Zeroizing<String>,
    /// The `state` (compare with the request's).
    pub state: String,
    /// The `iss` the authorization server added (RFC 9207), if any.
    pub iss: Option<String>,
}

impl std::fmt::Debug for Redirected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redirected").finish_non_exhaustive()
    }
}

type Outcome = Result<Redirected, Error>;

impl LoopbackRedirect {
    /// Listens on 127.0.0.1 on a port the system picks.
    pub async fn bind() -> Result<LoopbackRedirect, Error> {
        LoopbackRedirect::bind_port(0).await
    }

    /// Listens on 127.0.0.1 on `port` (0: a port the system picks): the port of a redirect URI
    /// registered earlier, for a server that compares ports although RFC 8252 section 7.3 says
    /// a loopback redirect may use any.
    pub async fn bind_port(port: u16) -> Result<LoopbackRedirect, Error> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.map_err(|e| {
            Error::Authorization(format!("cannot listen on 127.0.0.1 port {port}: {e}"))
        })?;
        let port = listener
            .local_addr()
            .map_err(|e| Error::Authorization(e.to_string()))?
            .port();
        Ok(LoopbackRedirect {
            listener,
            redirect_uri: format!("http://127.0.0.1:{port}{CALLBACK_PATH}"),
        })
    }

    /// The `redirect_uri` to register and send.
    pub fn redirect_uri(&self) -> &str {
        &self.redirect_uri
    }

    /// Serves until the browser arrives at the callback with a code or an error and the
    /// `state` of this login; other paths (a favicon) get 404. A callback with another state
    /// gets a 400 page and the wait goes on: any local process or web page can reach the
    /// listener, and none of them must be able to end (abort) the login. The browser gets a
    /// short page saying to return to the terminal.
    pub async fn wait(self, state: &str) -> Result<Redirected, Error> {
        let state: Arc<str> = Arc::from(state);
        let (tx, mut rx) = mpsc::channel::<Outcome>(1);
        loop {
            tokio::select! {
                outcome = rx.recv() => {
                    return outcome.unwrap_or_else(|| Err(Error::Authorization("redirect listener stopped".into())));
                }
                accepted = self.listener.accept() => {
                    let (stream, _) = accepted
                        .map_err(|e| Error::Authorization(format!("accepting the redirect: {e}")))?;
                    let tx = tx.clone();
                    let state = state.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |request| {
                            let tx = tx.clone();
                            let state = state.clone();
                            async move { Ok::<_, Infallible>(answer(request, &state, &tx).await) }
                        });
                        // A browser that drops the connection costs only that connection.
                        // No keep-alive: a browser reusing this connection for a later login's
                        // callback (on the same port) would reach this login's answer and its
                        // state, long after the wait ended.
                        let _ = hyper::server::conn::http1::Builder::new()
                            .keep_alive(false)
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            }
        }
    }
}

async fn answer(
    request: Request<Incoming>,
    state: &str,
    tx: &mpsc::Sender<Outcome>,
) -> Response<Full<Bytes>> {
    let page = |status: StatusCode, text: &'static str| {
        let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
        *response.status_mut() = status;
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    };
    if request.uri().path() != CALLBACK_PATH {
        return page(StatusCode::NOT_FOUND, "not found\n");
    }
    // The URI of an origin-form request is a path and query; resolve it to read the pairs.
    let url =
        Url::parse("http://127.0.0.1/").and_then(|base| base.join(&request.uri().to_string()));
    let Ok(url) = url else {
        return page(StatusCode::BAD_REQUEST, "bad request\n");
    };
    let get = |name: &str| {
        url.query_pairs()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.into_owned())
    };
    // Only the login's own redirect (its unguessable state) may end the wait, with a code
    // or with an error; anything else is answered and forgotten.
    if get("state").as_deref() != Some(state) {
        return page(
            StatusCode::BAD_REQUEST,
            "dpop: this callback does not belong to the login in progress; ignored.\n",
        );
    }
    let outcome = match (get("code"), get("error")) {
        (_, Some(error)) => Err(Error::OAuth(OAuthErrorBody {
            error,
            error_description: get("error_description"),
            error_uri: get("error_uri"),
        })),
        (Some(code), None) => Ok(Redirected {
            code: Zeroizing::new(code),
            state: state.to_owned(),
            iss: get("iss"),
        }),
        (None, None) => Err(Error::Authorization(
            "the redirect carried neither a code nor an error".into(),
        )),
    };
    let ok = outcome.is_ok();
    let _ = tx.send(outcome).await;
    if ok {
        page(
            StatusCode::OK,
            "dpop: authorization received. You can close this window and return to the terminal.\n",
        )
    } else {
        page(
            StatusCode::BAD_REQUEST,
            "dpop: authorization failed; the terminal says why.\n",
        )
    }
}
