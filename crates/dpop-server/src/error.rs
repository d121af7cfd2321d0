//! Why a request is refused, and the HTTP answer for it (RFC 9449 sections 7.1 and 8,
//! RFC 6750 section 3).

use std::sync::Arc;

use http::{HeaderValue, StatusCode};
use serde_json::json;

use crate::{Challenge, ReplayError};

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No `Authorization` header, or one with a scheme other than `DPoP` and `Bearer`.
    #[error("the request has no DPoP access token (Authorization: DPoP <token>)")]
    NoCredentials,
    /// An `Authorization` header that cannot be parsed, or more than one.
    #[error("malformed Authorization header: {0}")]
    MalformedAuthorization(&'static str),
    /// More than one `DPoP` header (RFC 9449 section 4.3, check 1).
    #[error("the request has more than one DPoP header")]
    MultipleProofs,
    /// No `DPoP` header.
    #[error("the request has no DPoP header")]
    MissingProof,
    /// A `DPoP` header value that is not visible ASCII.
    #[error("the DPoP header is not ASCII")]
    ProofNotAscii,
    /// A DPoP-bound access token presented with the `Bearer` scheme (RFC 9449 section 7.2).
    #[error("the access token is DPoP-bound; present it with Authorization: DPoP, not Bearer")]
    BearerDowngrade,
    /// The application's token check refused the access token, or the token is not
    /// DPoP-bound (no `cnf.jkt`).
    #[error("invalid access token: {0}")]
    InvalidToken(String),
    /// The proof fails a check of RFC 9449 section 4.3.
    #[error(transparent)]
    Proof(#[from] dpop_jose::Error),
    /// The replay store failed (and the verifier fails closed).
    #[error(transparent)]
    Replay(ReplayError),
    /// The request URL cannot be rebuilt from a trusted proxy's headers.
    #[error(transparent)]
    Forwarded(#[from] crate::ForwardedError),
}

/// Which kind of endpoint answers: errors look different at each (RFC 9449 sections 5 and 7).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Endpoint {
    /// A protected resource: `401` with `WWW-Authenticate: DPoP error=...`.
    #[default]
    Resource,
    /// An authorization server's token endpoint: `400` with a JSON body; `Authorization`
    /// is client authentication there and is not looked at.
    Token,
}

/// A refused request with everything its answer needs: [`status`](Self::status),
/// [`www_authenticate`](Self::www_authenticate), [`dpop_nonce`](Self::dpop_nonce) and a
/// JSON [`body`](Self::body).
#[derive(Debug)]
pub struct Rejection {
    error: Error,
    endpoint: Endpoint,
    challenge: Arc<Challenge>,
    nonce: Option<String>,
    retry_after: Option<u64>,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for Rejection {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl Rejection {
    pub(crate) fn new(
        error: Error,
        endpoint: Endpoint,
        challenge: Arc<Challenge>,
        nonce: Option<String>,
        retry_after: Option<u64>,
    ) -> Rejection {
        Rejection {
            error,
            endpoint,
            challenge,
            nonce,
            retry_after,
        }
    }

    /// Why the request was refused.
    pub fn error(&self) -> &Error {
        &self.error
    }

    /// The OAuth error code: `invalid_dpop_proof`, `use_dpop_nonce`, `invalid_token`,
    /// `invalid_request` or `temporarily_unavailable`; `None` when the request carried no
    /// credentials at all (RFC 6750 section 3.1: then the challenge names no error).
    pub fn error_code(&self) -> Option<&'static str> {
        Some(match &self.error {
            Error::NoCredentials => return None,
            Error::MalformedAuthorization(_) | Error::Forwarded(_) => "invalid_request",
            Error::BearerDowngrade | Error::InvalidToken(_) => "invalid_token",
            Error::Proof(dpop_jose::Error::JktMismatch { .. })
            | Error::Proof(dpop_jose::Error::InvalidAccessToken { .. }) => "invalid_token",
            Error::Proof(dpop_jose::Error::ReplayStoreFull) | Error::Replay(ReplayError::Full)
                if self.nonce.is_none() =>
            {
                "temporarily_unavailable"
            }
            Error::Proof(e) => e.oauth_error(),
            Error::Replay(ReplayError::Full) => "use_dpop_nonce",
            Error::Replay(_) => "temporarily_unavailable",
            Error::MultipleProofs | Error::MissingProof | Error::ProofNotAscii => {
                "invalid_dpop_proof"
            }
        })
    }

    /// The HTTP status: `401` at a resource (`400` for a malformed request), `400` at a
    /// token endpoint, `503` when the replay store cannot record the proof.
    pub fn status(&self) -> StatusCode {
        match self.error_code() {
            Some("temporarily_unavailable") => StatusCode::SERVICE_UNAVAILABLE,
            Some("invalid_request") => StatusCode::BAD_REQUEST,
            _ if self.endpoint == Endpoint::Token => StatusCode::BAD_REQUEST,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    /// The `WWW-Authenticate` value, at a resource for `401` and `400` answers.
    pub fn www_authenticate(&self) -> Option<String> {
        if self.endpoint == Endpoint::Token || self.status() == StatusCode::SERVICE_UNAVAILABLE {
            return None;
        }
        let mut challenge = (*self.challenge).clone();
        if let Some(code) = self.error_code() {
            challenge = challenge.error(code).description(&self.error.to_string());
        }
        Some(challenge.to_header_value())
    }

    /// A fresh nonce for the `DPoP-Nonce` header (with `use_dpop_nonce`).
    pub fn dpop_nonce(&self) -> Option<&str> {
        self.nonce.as_deref()
    }

    /// Seconds for `Retry-After` (with `503`).
    pub fn retry_after(&self) -> Option<u64> {
        self.retry_after
    }

    /// The JSON body: `{"error": code, "error_description": message}` (no `error` member
    /// when the request carried no credentials).
    pub fn body(&self) -> serde_json::Value {
        match self.error_code() {
            Some(code) => json!({"error": code, "error_description": self.error.to_string()}),
            None => json!({"error_description": self.error.to_string()}),
        }
    }

    /// The answer as an [`http::Response`] with a JSON body.
    pub fn to_response(&self) -> http::Response<String> {
        let mut response = http::Response::new(self.body().to_string());
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        // Errors and nonces are never cached (RFC 9449 section 8 for nonces).
        headers.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        );
        if let Some(value) = self
            .www_authenticate()
            .and_then(|v| HeaderValue::from_str(&v).ok())
        {
            headers.insert(http::header::WWW_AUTHENTICATE, value);
        }
        if let Some(value) = self
            .dpop_nonce()
            .and_then(|n| HeaderValue::from_str(n).ok())
        {
            headers.insert(crate::DPOP_NONCE, value);
        }
        if let Some(secs) = self.retry_after {
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// A verifier configuration that cannot work.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The nonce secret is too short to be a secret.
    #[error("nonce secret is {len} bytes; at least {min} are needed")]
    NonceSecretTooShort {
        /// Its length.
        len: usize,
        /// The minimum.
        min: usize,
    },
    /// The nonce rotation interval is under a second.
    #[error("nonce rotation interval must be at least one second")]
    NonceInterval,
    /// Nonces are required (the FAPI 2.0 preset, or asked for) but no nonce source is set.
    #[error("nonces are required but no nonce secret is configured")]
    NoncesRequired,
    /// No public base URL; the verifier never guesses one from client headers.
    #[error("no public base URL configured (e.g. https://api.example.com)")]
    NoPublicUrl,
    /// The public base URL cannot be used.
    #[error("invalid public base URL {url:?}: {reason}")]
    PublicUrl {
        /// As given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An entry of the allowed hosts that cannot be used.
    #[error("invalid allowed host {host:?}: {reason}")]
    AllowedHost {
        /// As given.
        host: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An algorithm list with nothing in it.
    #[error("no signature algorithm allowed")]
    NoAlgorithms,
}

#[cfg(test)]
mod tests {
    use super::*;
    use dpop_jose::Error as Jose;

    fn rejection(error: Error, endpoint: Endpoint, nonce: Option<&str>) -> Rejection {
        let challenge = Arc::new(Challenge::new(&[dpop_jose::Algorithm::ES256]));
        Rejection::new(error, endpoint, challenge, nonce.map(str::to_owned), None)
    }

    #[test]
    fn every_error_maps_to_its_code_and_status() {
        let proof_errors = [
            Jose::MalformedProof("x"),
            Jose::DuplicateMember { part: "header" },
            Jose::CriticalHeader,
            Jose::WrongType,
            Jose::UnsupportedAlgorithm {
                alg: "HS256".into(),
            },
            Jose::PrivateKeyInJwk { member: "d".into() },
            Jose::InvalidJwk { reason: "x".into() },
            Jose::BadSignature,
            Jose::BadClaim("jti"),
            Jose::JtiTooLong { len: 300, max: 256 },
            Jose::MethodMismatch {
                expected: "GET".into(),
                got: "POST".into(),
            },
            Jose::UrlMismatch {
                expected: "a".into(),
                got: "b".into(),
            },
            Jose::IatOutOfWindow { iat: 0, now: 100 },
            Jose::AthMissing,
            Jose::AthMismatch,
            Jose::Replayed,
        ];
        for e in proof_errors {
            let text = e.to_string();
            let r = rejection(Error::Proof(e), Endpoint::Resource, None);
            assert_eq!(r.error_code(), Some("invalid_dpop_proof"), "{text}");
            assert_eq!(r.status(), 401, "{text}");
        }
        let cases: [(Error, Option<&str>, Option<&str>, u16); 12] = [
            (Error::NoCredentials, None, None, 401),
            (
                Error::MalformedAuthorization("x"),
                None,
                Some("invalid_request"),
                400,
            ),
            (Error::MultipleProofs, None, Some("invalid_dpop_proof"), 401),
            (Error::MissingProof, None, Some("invalid_dpop_proof"), 401),
            (Error::ProofNotAscii, None, Some("invalid_dpop_proof"), 401),
            (Error::BearerDowngrade, None, Some("invalid_token"), 401),
            (
                Error::InvalidToken("x".into()),
                None,
                Some("invalid_token"),
                401,
            ),
            (
                Error::Proof(Jose::JktMismatch {
                    expected: "a".into(),
                    got: "b".into(),
                }),
                None,
                Some("invalid_token"),
                401,
            ),
            (
                Error::Proof(Jose::UseNonce),
                Some("n"),
                Some("use_dpop_nonce"),
                401,
            ),
            (
                Error::Replay(ReplayError::Full),
                Some("n"),
                Some("use_dpop_nonce"),
                401,
            ),
            (
                Error::Replay(ReplayError::Full),
                None,
                Some("temporarily_unavailable"),
                503,
            ),
            (
                Error::Replay(ReplayError::Unavailable {
                    reason: "down".into(),
                }),
                None,
                Some("temporarily_unavailable"),
                503,
            ),
        ];
        for (error, nonce, code, status) in cases {
            let text = error.to_string();
            let r = rejection(error, Endpoint::Resource, nonce);
            assert_eq!(r.error_code(), code, "{text}");
            assert_eq!(r.status(), status, "{text}");
            assert_eq!(r.www_authenticate().is_some(), status != 503, "{text}");
        }
    }

    #[test]
    fn a_token_endpoint_answers_400_without_a_challenge() {
        let r = rejection(Error::Proof(Jose::BadSignature), Endpoint::Token, None);
        assert_eq!(r.status(), 400);
        assert_eq!(r.www_authenticate(), None);
        assert_eq!(r.body()["error"], "invalid_dpop_proof");
        let response = r.to_response();
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(response.headers()["cache-control"], "no-store");
    }
}
