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
mod htu;
mod jwk;
mod proof;
mod verify;

pub use alg::Algorithm;
pub use b64::{b64url_decode, b64url_encode};
pub use error::Error;
pub use htu::{Htu, normalize_uri};
pub use jwk::Jwk;
pub use proof::{Claims, Method, ProofHeader, Signer, ath, new_jti, sign_proof};
pub use verify::{
    ExpectedRequest, LruReplayStore, NoncePolicy, ReplayStore, VerifiedProof, VerifyOptions, verify,
};

#[cfg(test)]
mod tests;
