//! [`DpopClient`]: reqwest with proofs from the agent, nonces kept by the agent, one retry on
//! `use_dpop_nonce`, and same-origin redirects.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};

use reqwest::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, LOCATION};
use reqwest::{Method, Request, Response, StatusCode};
use tokio::sync::Mutex;
use url::Url;

use super::challenge::{Challenge, OAuthErrorBody};
use super::{Error, MAX_ERROR_BODY, body_limit, read_body};
use crate::ProofRequest;

/// Redirects followed before giving up (reqwest's default is 10 too).
const MAX_REDIRECTS: usize = 10;

/// An HTTP client whose requests carry DPoP proofs signed by one key of the agent.
///
/// Each request gets a fresh proof; the agent fills in the nonce it keeps for the URL's origin
/// (reported from earlier responses, by this process or any other of the same user), so a
/// nonce learnt once serves every later request. Answers to a `use_dpop_nonce` challenge are
/// retried exactly once. Redirects are followed only to the same origin, each hop with a new
/// proof (the inner reqwest client must not follow redirects itself: [`DpopClient::new`]
/// builds one that does not).
pub struct DpopClient {
    http: reqwest::Client,
    agent: Mutex<crate::Client>,
    key: String,
    nonce_retries: AtomicU32,
}

impl std::fmt::Debug for DpopClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DpopClient")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl DpopClient {
    /// A client signing with `key`, over a new reqwest client (rustls, no redirects).
    pub fn new(agent: crate::Client, key: impl Into<String>) -> Result<DpopClient, Error> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("dpop-client/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(DpopClient::with_reqwest(http, agent, key))
    }

    /// A client over your own reqwest client. Build it with
    /// `redirect(reqwest::redirect::Policy::none())`: a client that follows redirects itself
    /// would send the proof and token of one URL to another.
    pub fn with_reqwest(
        http: reqwest::Client,
        agent: crate::Client,
        key: impl Into<String>,
    ) -> DpopClient {
        DpopClient {
            http,
            agent: Mutex::new(agent),
            key: key.into(),
            nonce_retries: AtomicU32::new(0),
        }
    }

    /// The key's label.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// How many `use_dpop_nonce` challenges this client has answered with a retry.
    pub fn nonce_retries(&self) -> u32 {
        self.nonce_retries.load(Ordering::Relaxed)
    }

    /// The inner reqwest client, to build requests for [`send`](Self::send).
    pub fn reqwest(&self) -> &reqwest::Client {
        &self.http
    }

    /// Runs `f` with the agent connection (to list keys, say).
    pub async fn with_agent<T>(
        &self,
        f: impl AsyncFnOnce(&mut crate::Client) -> Result<T, crate::Error>,
    ) -> Result<T, crate::Error> {
        let mut agent = self.agent.lock().await;
        f(&mut agent).await
    }

    /// Sends `request` with a DPoP proof, and with `Authorization: DPoP <access_token>` when a
    /// token is given (the proof then carries its `ath`). A `DPoP` header already on the
    /// request is replaced, and so is `Authorization` when a token is given.
    ///
    /// A `use_dpop_nonce` answer is retried once with a fresh proof; if the server refuses
    /// again, that answer is returned. A request with a streaming body cannot be retried
    /// ([`Error::BodyNotReplayable`]). Redirects within the request's origin are followed
    /// (303, and 301/302 after a POST, continue as GET without a body); a redirect to another
    /// origin is an error ([`Error::CrossOriginRedirect`]).
    pub async fn send(
        &self,
        request: Request,
        access_token: Option<&str>,
    ) -> Result<Response, Error> {
        let mut request = request;
        for _ in 0..=MAX_REDIRECTS {
            let url = request.url().clone();
            let method = request.method().clone();
            let next = request.try_clone();
            let response = self.send_with_retry(request, access_token).await?;
            let status = response.status();
            if !status.is_redirection() || status == StatusCode::NOT_MODIFIED {
                return Ok(response);
            }
            let Some(location) = response.headers().get(LOCATION) else {
                return Ok(response);
            };
            let location = location
                .to_str()
                .map_err(|_| Error::Header("Location is not visible ASCII".into()))?;
            let target = url.join(location)?;
            if target.origin() != url.origin() {
                return Err(Error::CrossOriginRedirect {
                    from: url.origin().ascii_serialization(),
                    to: target.origin().ascii_serialization(),
                });
            }
            let keep_method = matches!(
                status,
                StatusCode::TEMPORARY_REDIRECT | StatusCode::PERMANENT_REDIRECT
            ) || (status != StatusCode::SEE_OTHER && method != Method::POST);
            request = if keep_method {
                let mut again = next.ok_or(Error::BodyNotReplayable)?;
                *again.url_mut() = target;
                again
            } else {
                let mut get = next.unwrap_or_else(|| Request::new(Method::GET, target.clone()));
                *get.method_mut() = if method == Method::HEAD {
                    Method::HEAD
                } else {
                    Method::GET
                };
                *get.url_mut() = target;
                *get.body_mut() = None;
                get.headers_mut().remove(CONTENT_TYPE);
                get.headers_mut().remove(CONTENT_LENGTH);
                get
            };
        }
        Err(Error::TooManyRedirects(MAX_REDIRECTS))
    }

    /// Sends `request` as [`send`](Self::send) does (proof, token, nonces reported, one retry
    /// on `use_dpop_nonce`), for a caller that relays the answer to someone else, as a proxy
    /// does: a redirect is returned, never followed, and when the body is a stream that cannot
    /// be sent again, the `use_dpop_nonce` challenge itself is returned (its nonce reported,
    /// so the next request carries it) instead of [`Error::BodyNotReplayable`].
    pub async fn send_unfollowed(
        &self,
        request: Request,
        access_token: Option<&str>,
    ) -> Result<Sent, Error> {
        self.send_with_retry_or(request, access_token, false).await
    }

    /// One request, and one retry when the answer is a `use_dpop_nonce` challenge.
    async fn send_with_retry(
        &self,
        request: Request,
        access_token: Option<&str>,
    ) -> Result<Response, Error> {
        Ok(self
            .send_with_retry_or(request, access_token, true)
            .await?
            .response)
    }

    /// [`send_with_retry`](Self::send_with_retry); with `must_retry` false, a challenge that
    /// cannot be retried (streamed body) is returned rather than an error.
    async fn send_with_retry_or(
        &self,
        request: Request,
        access_token: Option<&str>,
        must_retry: bool,
    ) -> Result<Sent, Error> {
        let retry = request.try_clone();
        let url = request.url().clone();
        let response = self.send_signed(request, access_token, None).await?;
        let nonce = self.report_nonce(&url, &response).await?;
        let (response, challenged) = use_dpop_nonce(response).await?;
        // Without a new nonce a retry would be refused the same way.
        let (true, Some(nonce)) = (challenged, nonce) else {
            return Ok(Sent::first(response));
        };
        let retry = match retry {
            Some(retry) => retry,
            None if must_retry => return Err(Error::BodyNotReplayable),
            None => return Ok(Sent::first(response)),
        };
        self.nonce_retries.fetch_add(1, Ordering::Relaxed);
        // The nonce just received, explicitly: the answer to this challenge, whatever another
        // process may have reported for the origin meanwhile.
        let response = self.send_signed(retry, access_token, Some(&nonce)).await?;
        self.report_nonce(&url, &response).await?;
        Ok(Sent {
            response,
            nonce_retried: true,
        })
    }

    async fn send_signed(
        &self,
        mut request: Request,
        access_token: Option<&str>,
        nonce: Option<&str>,
    ) -> Result<Response, Error> {
        let proof = {
            let mut proof_request =
                ProofRequest::new(request.method().as_str(), request.url().as_str());
            if let Some(token) = access_token {
                proof_request = proof_request.access_token(token);
            }
            if let Some(nonce) = nonce {
                proof_request = proof_request.nonce(nonce);
            }
            let mut agent = self.agent.lock().await;
            agent.sign_proof(&self.key, &proof_request).await?
        };
        let headers = request.headers_mut();
        headers.insert(
            "DPoP",
            HeaderValue::from_str(&proof).map_err(|e| Error::Header(e.to_string()))?,
        );
        // Without a token the request's own Authorization (client authentication at a
        // token endpoint) stays.
        if let Some(token) = access_token {
            let mut value = HeaderValue::from_str(&format!("DPoP {token}")).map_err(|_| {
                Error::Header("the access token is not a valid header value".into())
            })?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        Ok(self.http.execute(request).await?)
    }

    /// Hands a `DPoP-Nonce` of `response` to the agent, and returns it.
    async fn report_nonce(&self, url: &Url, response: &Response) -> Result<Option<String>, Error> {
        let Some(nonce) = response.headers().get("DPoP-Nonce") else {
            return Ok(None);
        };
        let Ok(nonce) = nonce.to_str() else {
            // Not even visible ASCII: not a nonce (RFC 9449 section 8 syntax), ignored.
            return Ok(None);
        };
        let mut agent = self.agent.lock().await;
        // The agent keeps nonces per origin; the path and query are none of its business.
        let origin = url.origin().ascii_serialization();
        match agent.report_nonce(&self.key, &origin, nonce).await {
            Ok(()) => Ok(Some(nonce.to_owned())),
            // A nonce outside the syntax is the server's fault; a proof could not carry it.
            Err(e) if e.code() == Some(dpop_protocol::ErrorCode::InvalidNonce) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// The answer of [`DpopClient::send_unfollowed`].
#[derive(Debug)]
#[non_exhaustive]
pub struct Sent {
    /// The server's answer (to the retry, when there was one).
    pub response: Response,
    /// Whether a `use_dpop_nonce` challenge was answered with a retry.
    pub nonce_retried: bool,
}

impl Sent {
    fn first(response: Response) -> Sent {
        Sent {
            response,
            nonce_retried: false,
        }
    }
}

/// Whether `response` is a `use_dpop_nonce` challenge: a 401 whose DPoP challenge says so, or
/// a 400 whose JSON error does. A 400 body is read to tell, and the response rebuilt.
async fn use_dpop_nonce(response: Response) -> Result<(Response, bool), Error> {
    match response.status() {
        StatusCode::UNAUTHORIZED => {
            let challenged = response
                .headers()
                .get_all(reqwest::header::WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(Challenge::parse_all)
                .any(|c| c.is_dpop() && c.param("error") == Some("use_dpop_nonce"));
            Ok((response, challenged))
        }
        // Only a small JSON body can be an OAuth error; anything else is left unread.
        StatusCode::BAD_REQUEST
            if is_json(&response)
                && response
                    .content_length()
                    .is_none_or(|n| n <= MAX_ERROR_BODY as u64) =>
        {
            let status = response.status();
            let version = response.version();
            let headers = response.headers().clone();
            // Chunked bodies have no length: read only up to the limit.
            let body = read_body(response, "error body", MAX_ERROR_BODY).await?;
            let challenged =
                OAuthErrorBody::from_json(&body).is_some_and(|e| e.error == "use_dpop_nonce");
            let mut rebuilt = http::Response::new(body);
            *rebuilt.status_mut() = status;
            *rebuilt.version_mut() = version;
            *rebuilt.headers_mut() = headers;
            Ok((Response::from(rebuilt), challenged))
        }
        _ => Ok((response, false)),
    }
}

fn is_json(response: &Response) -> bool {
    response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| {
            let media = media.trim().to_ascii_lowercase();
            media == "application/json" || media.ends_with("+json")
        })
}

/// The oauth2 crate's HTTP hook: token, device and PAR requests go through the proofs, the
/// nonce store and the retry.
impl<'c> oauth2::AsyncHttpClient<'c> for DpopClient {
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<oauth2::HttpResponse, Error>> + Send + 'c>>;

    fn call(&'c self, request: oauth2::HttpRequest) -> Self::Future {
        Box::pin(async move {
            let request = Request::try_from(request)?;
            let response = self.send(request, None).await?;
            let mut out = http::Response::builder().status(response.status());
            if let Some(headers) = out.headers_mut() {
                *headers = response.headers().clone();
            }
            let (what, limit) = body_limit(response.status());
            let body = read_body(response, what, limit).await?;
            out.body(body)
                .map_err(|e| Error::BadResponse(e.to_string()))
        })
    }
}
