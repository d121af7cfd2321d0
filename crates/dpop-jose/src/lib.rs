//! DPoP proofs (RFC 9449) without I/O: the JOSE pieces a DPoP client and a DPoP server share.
//!
//! - [`Jwk`]: public keys (EC P-256/P-384, RSA, OKP Ed25519) and their RFC 7638
//!   [`thumbprint`](Jwk::thumbprint) (the `jkt`).
//! - [`Htu`]: the `htu` claim built from a request URL (scheme and host lower-cased, default port
//!   dropped, path kept byte for byte, query and fragment removed).
//! - [`ath`]: base64url(SHA-256(access token)).
//! - [`ProofHeader`] / [`Claims`] / [`sign_proof`]: a compact JWS over any [`Signer`], whose
//!   signatures are in the JWS form (`r||s` for ECDSA, never DER).
//! - [`verify()`]: every check of RFC 9449 section 4.3, with a [`ReplayStore`] and a
//!   [`NoncePolicy`] supplied by the server.
//!
//! Signature verification goes through aws-lc-rs, the provider rustls uses.
//!
//! # Features
//!
//! - `crypto` (default): everything that hashes, draws random numbers or verifies signatures
//!   ([`Jwk::thumbprint`], [`ath`], [`new_jti`], [`Claims::new`], [`verify()`]); pulls in
//!   aws-lc-rs. Turns on `htu`.
//! - `htu` (default): [`Htu`] and [`normalize_uri`] (fluent-uri).
//! - `lru` (default): [`LruReplayStore`]. Turns on `crypto`.
//!
//! With `default-features = false` the crate is only the shared data types ([`Algorithm`],
//! [`Jwk`] as data, [`Error`], [`Method`], [`Claims`], base64url helpers) and [`sign_proof`] over
//! a [`Signer`], and compiles no cryptography: the wire protocol and the agent's client use it
//! that way.
//!
//! ```
//! use dpop_jose::{ath, Htu, Jwk};
//!
//! let htu = Htu::from_url("HTTPS://Server.Example.COM:443/token?x=1#frag")?;
//! assert_eq!(htu.as_str(), "https://server.example.com/token");
//! assert_eq!(
//!     ath("Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU")?,
//!     "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"
//! );
//! let jwk: Jwk = serde_json::from_str(r#"{"kty":"EC","crv":"P-256",
//!     "x":"l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs",
//!     "y":"9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA"}"#).unwrap();
//! assert_eq!(jwk.thumbprint(), "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I");
//! # Ok::<(), dpop_jose::Error>(())
//! ```

mod alg;
mod b64;
mod error;
#[cfg(feature = "htu")]
mod htu;
mod jwk;
mod proof;
#[cfg(feature = "crypto")]
mod strict_json;
#[cfg(feature = "crypto")]
mod verify;

pub use alg::Algorithm;
pub use b64::{b64url_decode, b64url_encode};
pub use error::Error;
#[cfg(feature = "htu")]
pub use htu::{Htu, normalize_uri};
pub use jwk::Jwk;
pub use proof::{
    Claims, MAX_NONCE_LEN, Method, ProofHeader, Signer, check_nonce, finish_proof, sign_proof,
    signing_input,
};
#[cfg(feature = "crypto")]
pub use proof::{ath, new_jti};
#[cfg(feature = "crypto")]
pub use verify::{
    ExpectedRequest, MAX_JTI_LEN, NoncePolicy, ReplayStore, VerifiedProof, VerifyOptions, verify,
};
#[cfg(feature = "lru")]
pub use verify::{LruReplayStore, pair_hash};

#[cfg(all(test, feature = "lru"))]
mod tests;
