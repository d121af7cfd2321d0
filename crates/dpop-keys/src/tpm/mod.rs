//! The TPM 2.0 backend: keys that only this machine's TPM can use. Needs the cargo feature
//! `tpm` (off by default: it links tpm2-tss, `libtss2-dev`); its configuration
//! ([`TpmConfig`], [`DEFAULT_TCTI`]) is always compiled, so that a program can parse its
//! settings and say what is missing.
//!
//! Keys are made under the storage root key (SRK) from the well-known ECC P-256 template,
//! which the TPM derives again from its owner seed whenever it is made, so no persistent
//! handle and no owner auth beyond the default (empty) are needed. Generated keys are
//! fixedTPM, fixedParent, sensitiveDataOrigin, userWithAuth and sign-only (not decrypt, not
//! restricted): ES256 (P-256), ES384 (P-384), RS256 and PS256 (RSA 2048; PS256 only when the
//! TPM's PSS salt is the hash length, checked with each new key). The TPM returns a public
//! area and a private blob wrapped by the SRK; both go to the key's record in
//! `metadata_dir` (the crate's one record store, 0600). A persistent key can be adopted by
//! its handle (`tpm:handle=0x81000001`); an EC PEM key can be imported (not fixedTPM: see
//! `import`). Keys may have an auth value (the backend's [`TpmConfig::auth`]).
//!
//! The tss-esapi context lives on one worker thread (`worker`); signers send it jobs. Keys
//! stay loaded; after a lost connection or a TPM reset the worker reconnects, makes the SRK
//! again, reloads and retries once. A refused auth value is never sent again
//! ([`Error::AuthFailed`](crate::Error::AuthFailed)), so the TPM's dictionary attack
//! counter does not run into lockout.
//!
//! ```no_run
//! # #[cfg(feature = "tpm")] {
//! use dpop_keys::tpm::{TpmBackend, TpmConfig, DEFAULT_TCTI};
//! use dpop_keys::{Backend, KeyLabel, Algorithm};
//!
//! let backend = TpmBackend::open(TpmConfig::new(DEFAULT_TCTI, "/home/me/.local/share/dpop-agent/tpm"))?;
//! let key = backend.generate(&KeyLabel::new("api")?, Algorithm::ES256)?;
//! # }
//! # Ok::<(), dpop_keys::Error>(())
//! ```
//!
//! One file per concern:
//! - `config`: TCTI, auth value, record directory ([`TpmConfig`]);
//! - `worker`: the thread that owns the context, reconnects and reloads;
//! - `error`: TPM response codes sorted into what the backend does about them;
//! - `templates`: the SRK and key templates, public areas to JWKs, signatures to JWS;
//! - `record`: the per-key record; `import`: PEM keys as TPM2_Import duplicates;
//! - `backend`: `TpmBackend`: keys as records in the store and slots in the worker;
//! - `signer`: `TpmSigner`, which hashes here and signs on the worker.

mod config;
pub use config::{DEFAULT_TCTI, TpmConfig};

#[cfg(feature = "tpm")]
mod backend;
#[cfg(feature = "tpm")]
mod error;
#[cfg(feature = "tpm")]
mod import;
#[cfg(feature = "tpm")]
mod record;
#[cfg(feature = "tpm")]
mod signer;
#[cfg(feature = "tpm")]
mod templates;
#[cfg(feature = "tpm")]
mod worker;

#[cfg(feature = "tpm")]
pub use backend::TpmBackend;
#[cfg(feature = "tpm")]
pub use signer::TpmSigner;
