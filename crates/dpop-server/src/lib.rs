//! The server side of DPoP (RFC 9449) for resource servers and token endpoints, around
//! [`dpop_jose::verify`]:
//!
//! - [`Verifier`]: the `verify` options (from a [`Preset`]: RFC 9449 or FAPI 2.0), the
//!   replay store and the nonce source in one value, and one call
//!   ([`Verifier::verify`]) that takes the request's method, URL, `Authorization` and `DPoP`
//!   headers and returns the proof key's `jkt` and the claims, or a [`Rejection`] that knows
//!   its status, `WWW-Authenticate` challenge, `DPoP-Nonce` and JSON body.
//! - [`HmacNonces`]: stateless nonces (HMAC-SHA-256 over a time step) that every instance
//!   sharing the secret accepts.
//! - [`Challenge`]: `WWW-Authenticate: DPoP` values.
//! - [`ReplayStore`]: replay state, in memory ([`MemoryReplayStore`]) or in Redis
//!   (`RedisReplayStore`, feature `redis`: one Redis, a Redis Cluster or a Sentinel-managed
//!   primary, `RedisTarget`) for a fleet, which refuses a Redis that may evict replay records;
//!   failing closed by default.
//! - [`PublicUrl`]: the request URL `htu` is compared with, from a configured public base URL
//!   or from a trusted proxy's headers of the one family chosen ([`ProxyHeaders`]: `Forwarded`
//!   or `X-Forwarded-*`), optionally limited to allowed hosts.
//! - `DpopLayer` and `Dpop` (feature `axum`): a tower layer and an axum extractor; the
//!   application checks its access tokens through a [`TokenValidator`].
//!
//! Without features the crate needs no web framework, no Redis client and no runtime.
//!
//! ```
//! use std::time::Duration;
//! use dpop_server::{HmacNonces, HttpRequest, Preset, PublicUrl, Verifier};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let verifier = Verifier::builder(Preset::Fapi2)
//!     .public_url(PublicUrl::new("https://api.example.com")?)
//!     .nonces(HmacNonces::new(&[7; 32], Duration::from_secs(60))?)
//!     .build()?;
//! let request = HttpRequest {
//!     method: "GET",
//!     url: "https://api.example.com/items",
//!     authorization: &["DPoP some-token"],
//!     dpop: &[],
//! };
//! // The application's token check; here: none accepted.
//! let refused = verifier.verify(&request, &()).await.unwrap_err();
//! assert_eq!(refused.status(), 401);
//! assert_eq!(refused.error_code(), Some("invalid_token"));
//! # Ok(()) }
//! ```

mod challenge;
mod error;
#[cfg(feature = "axum")]
mod layer;
mod nonce;
#[cfg(feature = "redis")]
mod redis_store;
mod replay;
mod url;
mod verifier;

pub use challenge::Challenge;
pub use error::{ConfigError, Endpoint, Error, Rejection};
#[cfg(feature = "axum")]
pub use layer::{Dpop, DpopLayer, DpopService};
pub use nonce::{HmacNonces, MIN_NONCE_SECRET_LEN, NonceAge};
#[cfg(feature = "redis")]
pub use redis_store::{RedisConnectError, RedisOptions, RedisReplayStore, RedisTarget};
pub use replay::{MemoryReplayStore, ReplayError, ReplayFuture, ReplayStore, pair_key};
pub use url::{ForwardedError, ProxyHeaders, PublicUrl};
pub use verifier::{
    BoundToken, HttpRequest, Preset, ReplayFailure, TokenFuture, TokenValidator, Verified,
    Verifier, VerifierBuilder,
};

/// The `DPoP-Nonce` response header (RFC 9449 section 8).
pub const DPOP_NONCE: http::HeaderName = http::HeaderName::from_static("dpop-nonce");

#[cfg(test)]
mod tests;
