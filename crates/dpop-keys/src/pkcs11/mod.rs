//! The PKCS#11 backend: keys that live on a token (an HSM, a YubiKey through its PKCS#11
//! module, SoftHSM2) and sign there. The backend needs the cargo feature `pkcs11` (on by
//! default); its configuration types ([`TokenSelector`], [`PinSource`], [`Pkcs11Config`]) are
//! always compiled, so that a program can parse its settings and say what is missing.
//!
//! Keys are generated on the token (`CKA_TOKEN`, `CKA_PRIVATE`, `CKA_SENSITIVE`, not
//! `CKA_EXTRACTABLE`), imported from PEM into such an object, or adopted from an RFC 7512 URI
//! ([`Pkcs11Uri`]). The token holds the keys; the agent keeps one small record per key in
//! `metadata_dir` (`<label>.json`: algorithm, `CKA_ID`, origin, token label and serial; the
//! crate's one record store) so that labels survive restarts. Records hold no secrets.
//!
//! Faults: a wrong PIN is reported once ([`Error::AuthFailed`](crate::Error::AuthFailed))
//! and never tried again by this backend; a removed token gives
//! [`Error::DeviceUnavailable`](crate::Error::DeviceUnavailable) and is looked up again (by
//! label or serial, since slot IDs change) on the next request, so the agent recovers when
//! the token comes back.
//!
//! ```no_run
//! # #[cfg(feature = "pkcs11")] {
//! use dpop_keys::pkcs11::{Pkcs11Backend, Pkcs11Config, PinSource, TokenSelector};
//! use dpop_keys::{Backend, KeyLabel, Algorithm};
//!
//! let pin = PinSource::Env("DPOP_PKCS11_PIN".into()).resolve()?;
//! let backend = Pkcs11Backend::open(Pkcs11Config::new(
//!     "/usr/lib/softhsm/libsofthsm2.so",
//!     TokenSelector::Label("dpop".into()),
//!     pin,
//!     "/home/me/.local/share/dpop-agent/pkcs11",
//! ))?;
//! let key = backend.generate(&KeyLabel::new("api")?, Algorithm::ES256)?;
//! # }
//! # Ok::<(), dpop_keys::Error>(())
//! ```
//!
//! One file per concern:
//! - `config`: which module and token, PIN sources ([`PinSource`]), [`Pkcs11Config`];
//! - `module`: loading modules once per process ([`load_module`]) and finding the token;
//! - `pool`: the token's logged-in session pool, re-login and token loss;
//! - `error`: cryptoki errors as the specification names them;
//! - `manage`: generating, importing, adopting, loading and deleting keys (generate and
//!   import share one create-on-token path; every new key, adopted too, is filed by one);
//! - `templates`: the objects we create; `objects`: reading the token's objects back;
//! - `record`: the per-key record; `signer`: [`Pkcs11Signer`]; `mechanisms`: which mechanism
//!   signs, combined (the token hashes) or raw (the agent hashes);
//! - `uri`: RFC 7512 URIs; `raw` and `locking`: the two calls cryptoki cannot make for us.

// Which token and where its PIN comes from is plain data that the agent parses even when the
// backend itself is not compiled in; everything below it needs cryptoki.
mod config;
#[cfg(feature = "pkcs11")]
mod error;
#[cfg(feature = "pkcs11")]
mod locking;
#[cfg(feature = "pkcs11")]
mod manage;
#[cfg(feature = "pkcs11")]
mod mechanisms;
#[cfg(feature = "pkcs11")]
mod module;
#[cfg(feature = "pkcs11")]
mod objects;
#[cfg(feature = "pkcs11")]
mod pool;
#[cfg(feature = "pkcs11")]
mod raw;
#[cfg(feature = "pkcs11")]
mod record;
#[cfg(feature = "pkcs11")]
mod signer;
#[cfg(feature = "pkcs11")]
mod templates;
#[cfg(feature = "pkcs11")]
mod uri;

pub use config::{DEFAULT_MAX_SESSIONS, PinSource, Pkcs11Config, TokenSelector};
#[cfg(feature = "pkcs11")]
mod backend;
#[cfg(feature = "pkcs11")]
pub use backend::Pkcs11Backend;
#[cfg(feature = "pkcs11")]
pub use module::load_module;
#[cfg(feature = "pkcs11")]
pub use signer::Pkcs11Signer;
#[cfg(feature = "pkcs11")]
pub use uri::{ObjectType, Pkcs11Uri};
