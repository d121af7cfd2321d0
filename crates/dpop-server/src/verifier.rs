//! The `Verifier`: options, replay store and nonce source in one value, and one call per
//! request.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dpop_jose::{Algorithm, ExpectedRequest, NoncePolicy, VerifiedProof, VerifyOptions};

use crate::{
    Challenge, ConfigError, Endpoint, Error, HmacNonces, NonceAge, PublicUrl, Rejection,
    ReplayError, ReplayStore,
};

/// Settings a verifier starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// RFC 9449's defaults: every DPoP algorithm, `iat` at most 60 s old and 5 s ahead,
    /// nonces only when a nonce source is set and [required](VerifierBuilder::require_nonces).
    Rfc9449,
    /// FAPI 2.0 Security Profile: PS256, ES256 and EdDSA only; `iat` at most 60 s old and
    /// 10 s ahead; nonces required (building fails without a nonce source).
    Fapi2,
}

/// The request as the verifier sees it.
#[derive(Clone, Copy, Debug)]
pub struct HttpRequest<'a> {
    /// The method (`GET`).
    pub method: &'a str,
    /// The full public URL of the request (see [`PublicUrl::request_url`]).
    pub url: &'a str,
    /// The `Authorization` header values (more than one is refused).
    pub authorization: &'a [&'a str],
    /// Every `DPoP` header value (more than one is refused).
    pub dpop: &'a [&'a str],
}

/// What the application's token check returns for an access token it accepts.
#[derive(Clone, Debug, Default)]
pub struct BoundToken {
    /// The token's `cnf.jkt`: the thumbprint of the key it is bound to; `None` for a token
    /// that is not DPoP-bound (refused with either scheme).
    pub jkt: Option<String>,
    /// Whatever the application wants to keep of the token (its claims).
    pub claims: serde_json::Value,
}

/// What [`TokenValidator::validate`] returns: the token, or why it is refused (the reason
/// goes into `error_description`, so it must not repeat the token).
pub type TokenFuture<'a> = Pin<Box<dyn Future<Output = Result<BoundToken, String>> + Send + 'a>>;

/// The application's access token check: signature, expiry, audience, whatever it needs;
/// the verifier then checks that the proof's key is the token's `cnf.jkt`.
pub trait TokenValidator: Send + Sync {
    /// Validates `access_token` and returns its binding.
    fn validate<'a>(&'a self, access_token: &'a str) -> TokenFuture<'a>;
}

/// Accepts no access token: for a token endpoint, where none is presented.
impl TokenValidator for () {
    fn validate<'a>(&'a self, _: &'a str) -> TokenFuture<'a> {
        Box::pin(std::future::ready(Err(
            "no access tokens are accepted here".to_owned(),
        )))
    }
}

/// A request whose proof (and token) passed every check.
#[derive(Clone, Debug)]
pub struct Verified {
    /// The proof key's thumbprint (the token's `cnf.jkt`).
    pub jkt: String,
    /// The proof: algorithm, key and claims.
    pub proof: VerifiedProof,
    /// The access token's binding and claims (`None` at a token endpoint).
    pub token: Option<BoundToken>,
    /// A nonce to send in `DPoP-Nonce` with the response: set when the proof's nonce is
    /// from the previous step, or missing, so the client moves on before it is refused.
    pub next_nonce: Option<String>,
}

/// What a replay store failure does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReplayFailure {
    /// Refuse the request (`503`): a proof that was not recorded could be replayed.
    #[default]
    Closed,
    /// Accept the proof unrecorded and log a warning: availability over replay protection.
    Open,
}

/// Builds a [`Verifier`].
#[must_use]
pub struct VerifierBuilder {
    preset: Preset,
    options: VerifyOptions,
    nonces: Option<HmacNonces>,
    require_nonces: bool,
    replay: Option<Arc<dyn ReplayStore>>,
    replay_failure: ReplayFailure,
    public_url: Option<PublicUrl>,
    endpoint: Endpoint,
    realm: Option<String>,
}

impl VerifierBuilder {
    /// Replaces the preset's algorithms.
    pub fn algorithms(mut self, algorithms: &[Algorithm]) -> Self {
        self.options.algorithms = algorithms.to_vec();
        self
    }

    /// Replaces the preset's `iat` window: at most `max_age` old, `max_future` ahead.
    pub fn iat_window(mut self, max_age: Duration, max_future: Duration) -> Self {
        self.options.max_age = secs(max_age);
        self.options.max_future = secs(max_future);
        self
    }

    /// The nonce source; nonces are then issued, and required if the preset or
    /// [`require_nonces`](Self::require_nonces) says so.
    pub fn nonces(mut self, nonces: HmacNonces) -> Self {
        self.nonces = Some(nonces);
        self
    }

    /// Refuse proofs without a current nonce (`use_dpop_nonce`).
    pub fn require_nonces(mut self, required: bool) -> Self {
        self.require_nonces = required;
        self
    }

    /// The replay store (default: in memory, 100 000 pairs).
    pub fn replay_store(mut self, store: Arc<dyn ReplayStore>) -> Self {
        self.replay = Some(store);
        self
    }

    /// What a replay store failure does (default: [`ReplayFailure::Closed`]).
    pub fn replay_failure(mut self, failure: ReplayFailure) -> Self {
        self.replay_failure = failure;
        self
    }

    /// How request URLs are rebuilt (required).
    pub fn public_url(mut self, url: PublicUrl) -> Self {
        self.public_url = Some(url);
        self
    }

    /// The kind of endpoint (default: [`Endpoint::Resource`]).
    pub fn endpoint(mut self, endpoint: Endpoint) -> Self {
        self.endpoint = endpoint;
        self
    }

    /// A `realm` for the challenges.
    pub fn realm(mut self, realm: &str) -> Self {
        self.realm = Some(realm.to_owned());
        self
    }

    /// The verifier, or what is missing.
    pub fn build(self) -> Result<Verifier, ConfigError> {
        let required = self.require_nonces || self.preset == Preset::Fapi2;
        if required && self.nonces.is_none() {
            return Err(ConfigError::NoncesRequired);
        }
        if self.options.algorithms.is_empty() {
            return Err(ConfigError::NoAlgorithms);
        }
        let public_url = self.public_url.ok_or(ConfigError::NoPublicUrl)?;
        let mut challenge = Challenge::new(&self.options.algorithms);
        if let Some(realm) = &self.realm {
            challenge = challenge.realm(realm);
        }
        let replay = self.replay.unwrap_or_else(|| {
            Arc::new(crate::MemoryReplayStore::new(
                std::num::NonZeroUsize::new(100_000).expect("non-zero"),
            ))
        });
        Ok(Verifier {
            options: self.options,
            nonces: self.nonces,
            require_nonces: required,
            replay,
            replay_failure: self.replay_failure,
            public_url,
            endpoint: self.endpoint,
            challenge: Arc::new(challenge),
        })
    }
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// Checks the DPoP proof (and, at a resource, the access token's binding) of one request
/// at a time; share it (`Arc`) between requests and tasks.
pub struct Verifier {
    options: VerifyOptions,
    nonces: Option<HmacNonces>,
    require_nonces: bool,
    replay: Arc<dyn ReplayStore>,
    replay_failure: ReplayFailure,
    public_url: PublicUrl,
    endpoint: Endpoint,
    challenge: Arc<Challenge>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("options", &self.options)
            .field("nonces", &self.nonces)
            .field("require_nonces", &self.require_nonces)
            .field("replay_failure", &self.replay_failure)
            .field("public_url", &self.public_url)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A builder starting from `preset`.
    pub fn builder(preset: Preset) -> VerifierBuilder {
        let options = match preset {
            Preset::Rfc9449 => VerifyOptions::default(),
            Preset::Fapi2 => VerifyOptions {
                algorithms: vec![Algorithm::PS256, Algorithm::ES256, Algorithm::EdDSA],
                max_age: 60,
                max_future: 10,
            },
        };
        VerifierBuilder {
            preset,
            options,
            nonces: None,
            require_nonces: false,
            replay: None,
            replay_failure: ReplayFailure::default(),
            public_url: None,
            endpoint: Endpoint::default(),
            realm: None,
        }
    }

    /// The checks' settings.
    pub fn options(&self) -> &VerifyOptions {
        &self.options
    }

    /// How request URLs are rebuilt.
    pub fn public_url(&self) -> &PublicUrl {
        &self.public_url
    }

    /// The nonce to hand out now, when nonces are configured.
    pub fn current_nonce(&self) -> Option<String> {
        self.nonces.as_ref().map(|n| n.nonce_at(unix_now()))
    }

    /// Checks one request now. See [`verify_at`](Self::verify_at).
    pub async fn verify(
        &self,
        request: &HttpRequest<'_>,
        tokens: &dyn TokenValidator,
    ) -> Result<Verified, Rejection> {
        self.verify_at(request, tokens, unix_now()).await
    }

    /// Checks one request at `now` (seconds since the epoch): at a resource, the
    /// `Authorization: DPoP` token through `tokens` and its binding to the proof key; always
    /// the single `DPoP` proof (RFC 9449 section 4.3), its nonce, and replay.
    pub async fn verify_at(
        &self,
        request: &HttpRequest<'_>,
        tokens: &dyn TokenValidator,
        now: i64,
    ) -> Result<Verified, Rejection> {
        self.check(request, tokens, now)
            .await
            .map_err(|e| self.reject_at(e, now))
    }

    async fn check(
        &self,
        request: &HttpRequest<'_>,
        tokens: &dyn TokenValidator,
        now: i64,
    ) -> Result<Verified, Error> {
        let (access_token, token) = match self.endpoint {
            Endpoint::Token => (None, None),
            Endpoint::Resource => {
                let (scheme, access_token) = authorization(request.authorization)?;
                let token = tokens
                    .validate(access_token)
                    .await
                    .map_err(Error::InvalidToken)?;
                match (scheme, &token.jkt) {
                    (Scheme::Bearer, Some(_)) => return Err(Error::BearerDowngrade),
                    (_, None) => {
                        return Err(Error::InvalidToken(
                            "the access token is not DPoP-bound (no cnf.jkt)".to_owned(),
                        ));
                    }
                    (Scheme::DPoP, Some(_)) => {}
                }
                (Some(access_token), Some(token))
            }
        };
        let proof = match request.dpop {
            [] => return Err(Error::MissingProof),
            [one] => *one,
            _ => return Err(Error::MultipleProofs),
        };
        let expected = ExpectedRequest {
            method: request.method,
            url: request.url,
            access_token,
            jkt: token.as_ref().and_then(|t| t.jkt.as_deref()),
        };
        let nonce_check = NonceCheck {
            verifier: self,
            now,
            age: std::cell::Cell::new(None),
        };
        // The replay check is async (Redis): dpop-jose does everything else, then the pair
        // is recorded here, still last, so invalid proofs never reach the store.
        let proof = dpop_jose::verify(
            proof,
            &expected,
            &self.options,
            &nonce_check,
            &Deferred,
            now,
        )?;
        let expires_at = proof.claims.iat + self.options.max_age + self.options.max_future;
        match self
            .replay
            .insert_if_new(&proof.jkt, &proof.claims.jti, expires_at, now)
            .await
        {
            Ok(true) => {}
            Ok(false) => return Err(Error::Proof(dpop_jose::Error::Replayed)),
            Err(e @ ReplayError::Unavailable { .. })
                if self.replay_failure == ReplayFailure::Open =>
            {
                tracing::warn!(error = %e, jkt = %proof.jkt, "accepting a DPoP proof unrecorded (replay store fails open)");
            }
            Err(e) => return Err(Error::Replay(e)),
        }
        // The nonce's age was found by check 10 (one HMAC per request, not two).
        let next_nonce = self.nonces.as_ref().and_then(|n| {
            (nonce_check.age.get() != Some(NonceAge::Current)).then(|| n.nonce_at(now))
        });
        Ok(Verified {
            jkt: proof.jkt.clone(),
            proof,
            token,
            next_nonce,
        })
    }

    /// The answer to a request refused for `error` now; for callers that find a problem
    /// before [`verify`](Self::verify) can run (a header that is not text).
    pub fn reject(&self, error: Error) -> Rejection {
        self.reject_at(error, unix_now())
    }

    fn reject_at(&self, error: Error, now: i64) -> Rejection {
        let nonce_error = matches!(
            error,
            Error::Proof(dpop_jose::Error::UseNonce | dpop_jose::Error::ReplayStoreFull)
                | Error::Replay(ReplayError::Full)
        );
        let nonce = if nonce_error {
            self.nonces.as_ref().map(|n| n.nonce_at(now))
        } else {
            None
        };
        let retry_after = match &error {
            Error::Replay(ReplayError::Unavailable { .. }) => Some(1),
            // Entries expire within the iat window.
            Error::Replay(ReplayError::Full) if nonce.is_none() => {
                Some((self.options.max_age + self.options.max_future).unsigned_abs())
            }
            _ => None,
        };
        if let Error::Replay(e) = &error {
            tracing::error!(error = %e, "refusing a DPoP proof: the replay store failed");
        }
        Rejection::new(
            error,
            self.endpoint,
            self.challenge.clone(),
            nonce,
            retry_after,
        )
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Scheme {
    DPoP,
    Bearer,
}

/// The scheme and token of the one `Authorization` header.
fn authorization<'a>(values: &[&'a str]) -> Result<(Scheme, &'a str), Error> {
    let value = match values {
        [] => return Err(Error::NoCredentials),
        [one] => *one,
        _ => {
            return Err(Error::MalformedAuthorization(
                "more than one Authorization header",
            ));
        }
    };
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    // Schemes are case-insensitive (RFC 9110 section 11.1).
    let scheme = if scheme.eq_ignore_ascii_case("DPoP") {
        Scheme::DPoP
    } else if scheme.eq_ignore_ascii_case("Bearer") {
        Scheme::Bearer
    } else {
        return Err(Error::NoCredentials);
    };
    let token = token.trim_matches(' ');
    if token.is_empty() {
        return Err(Error::MalformedAuthorization("no token after the scheme"));
    }
    // token68 (RFC 9110 section 11.2); ath() checks it again for DPoP.
    let token68 = token.trim_end_matches('=');
    if !token68
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b'+' | b'/'))
    {
        return Err(Error::MalformedAuthorization(
            "the token has characters outside token68",
        ));
    }
    Ok((scheme, token))
}

/// The nonce rule of this verifier, for dpop-jose's check 10. It keeps the age of the
/// proof's nonce, which also decides whether the answer carries a new one.
struct NonceCheck<'a> {
    verifier: &'a Verifier,
    now: i64,
    /// The proof's nonce's age, once checked (`None`: no nonce, or no nonces configured).
    age: std::cell::Cell<Option<NonceAge>>,
}

impl NoncePolicy for NonceCheck<'_> {
    fn check(&self, nonce: Option<&str>) -> Result<(), dpop_jose::Error> {
        let Some(nonces) = &self.verifier.nonces else {
            return Ok(());
        };
        let age = nonce.map(|v| nonces.age(v, self.now));
        self.age.set(age);
        match age {
            Some(NonceAge::Current | NonceAge::Previous) => Ok(()),
            _ if self.verifier.require_nonces => Err(dpop_jose::Error::UseNonce),
            _ => Ok(()),
        }
    }
}

/// Accepts every pair: the verifier records it afterwards, asynchronously.
struct Deferred;

impl dpop_jose::ReplayStore for Deferred {
    fn insert_if_new(&self, _: &str, _: &str, _: i64, _: i64) -> Result<bool, dpop_jose::Error> {
        Ok(true)
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(secs)
        .unwrap_or(0)
}
