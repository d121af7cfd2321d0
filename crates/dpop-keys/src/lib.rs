//! The key backends of dpop-agent behind one trait.
//!
//! A [`Backend`] lists, generates, imports and deletes keys and hands out a [`KeySigner`] per
//! key; a signer knows its algorithm and public JWK and signs bytes, returning the JWS form of
//! the signature (ECDSA `r||s`, never DER). Private keys never leave a backend: no call returns
//! them. The [`Keyring`] puts the backends together under unique labels.
//!
//! Backends, one cargo feature each (like Parsec's providers):
//! - [`software::SoftwareBackend`], always compiled: aws-lc-rs keys, kept as PKCS#8 files
//!   (0600) sealed under a key derived once per passphrase, or in memory only; secret bytes
//!   are zeroized.
//! - `pkcs11::Pkcs11Backend`, feature `pkcs11` (on by default, pulls in cryptoki): keys
//!   generated on, imported into or adopted from a PKCS#11 token (HSM, YubiKey, SoftHSM2),
//!   which signs; a pool of logged-in sessions.
//! - `tpm::TpmBackend`, feature `tpm` (off by default: links tpm2-tss): keys made in, imported
//!   into or adopted from a TPM 2.0, which signs; one worker thread owns the TPM context.
//!
//! [`BackendKind::compiled`] tells which backends a build has; asking the [`Keyring`] for one
//! that is not compiled in is [`Error::BackendNotCompiled`], which names the feature to build
//! with. Every backend files its key records in one store (`records`), and the mapping between
//! key kinds and algorithms is [`KeyKind`]'s alone.
//!
//! Errors are one [`Error`] for every backend: a refused PIN and a refused TPM auth value are
//! both [`Error::AuthFailed`], carrying the [`BackendKind`] whose words the message uses.
//! [`Error::kind`] sorts them into an [`ErrorKind`] that callers match exhaustively (the
//! agent maps it to wire codes). Messages never name a program's flags; the caller adds them.
//!
//! A new backend touches, in this crate: `BackendKind` (a variant, [`BackendKind::ALL`] and
//! its row in `BackendKind::traits`, which holds its name, feature, URI scheme and words),
//! a cargo feature in `Cargo.toml`, and its own module (`pub mod` here).
//!
//! ```
//! use std::sync::Arc;
//! use dpop_jose::{Algorithm, Claims, Htu, Method, sign_proof};
//! use dpop_keys::{Keyring, KeyLabel, BackendKind, software::SoftwareBackend};
//!
//! let keyring = Keyring::new(vec![Arc::new(SoftwareBackend::ephemeral())]);
//! let label = KeyLabel::new("demo")?;
//! let key = keyring.generate(BackendKind::Software, &label, Algorithm::ES256)?;
//! let claims = Claims::new(&Method::new("GET")?, &Htu::from_url("https://api.example.com/x")?, 1_700_000_000);
//! let proof = sign_proof(&*key, &claims)?;
//! assert_eq!(proof.split('.').count(), 3);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod error;
mod fsutil;
mod keyring;
mod kind;
mod label;
pub mod pem;
pub mod pkcs11;
pub mod records;
pub mod software;
mod store_key;
pub mod tpm;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub use dpop_jose::{Algorithm, Jwk, ProofHeader};
pub use error::{AdoptRefusal, Error, ErrorKind};
pub use fsutil::create_private_dir;
pub use keyring::Keyring;
pub use kind::KeyKind;
pub use label::KeyLabel;
use serde::{Deserialize, Serialize};
pub use store_key::SealingKey;

/// Which backend holds a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// aws-lc-rs keys in the agent's memory, encrypted at rest.
    Software,
    /// A PKCS#11 token (HSM, YubiKey, SoftHSM2).
    Pkcs11,
    /// A TPM 2.0.
    Tpm,
}

/// What differs between backends as plain data, one row per backend in
/// [`BackendKind::traits`]: a new backend's names, feature, URI scheme and the words its
/// messages use are written once, there.
struct Traits {
    /// The name on the wire, on the command line and in records (`pkcs11`).
    name: &'static str,
    /// How messages name the backend (`PKCS#11`).
    title: &'static str,
    /// The cargo feature of dpop-keys that compiles it in; `None`: always compiled.
    feature: Option<&'static str>,
    /// Whether this build has it (the feature's `cfg!`).
    compiled: bool,
    /// The scheme of the key URIs it adopts (`pkcs11` for `pkcs11:...`), if any.
    uri_scheme: Option<&'static str>,
    /// What holds the keys (`PKCS#11 token`).
    device: &'static str,
    /// What the secret that opens the keys is called (`PIN`).
    secret: &'static str,
    /// How a message says the device cannot be reached (`is not present`).
    unreachable: &'static str,
    /// The message when the device refuses every secret after too many wrong ones.
    locked: &'static str,
}

impl BackendKind {
    /// Every backend this version knows, compiled in or not.
    pub const ALL: [BackendKind; 3] =
        [BackendKind::Software, BackendKind::Pkcs11, BackendKind::Tpm];

    /// The one place that says how backends differ as data.
    const fn traits(self) -> &'static Traits {
        match self {
            BackendKind::Software => &Traits {
                name: "software",
                title: "software",
                feature: None,
                compiled: true,
                uri_scheme: None,
                device: "software key store",
                secret: "passphrase",
                unreachable: "is not available",
                locked: "the software key store is locked",
            },
            BackendKind::Pkcs11 => &Traits {
                name: "pkcs11",
                title: "PKCS#11",
                feature: Some("pkcs11"),
                compiled: cfg!(feature = "pkcs11"),
                uri_scheme: Some("pkcs11"),
                device: "PKCS#11 token",
                secret: "PIN",
                unreachable: "is not present",
                locked: "the PKCS#11 token's PIN is locked",
            },
            BackendKind::Tpm => &Traits {
                name: "tpm",
                title: "TPM",
                feature: Some("tpm"),
                compiled: cfg!(feature = "tpm"),
                uri_scheme: Some("tpm"),
                device: "TPM",
                secret: "auth value",
                unreachable: "is not available",
                locked: "the TPM is in dictionary attack lockout after too many wrong auth \
                         values; wait for its recovery time or reset the lockout \
                         (tpm2_dictionarylockout -c)",
            },
        }
    }

    /// The backends compiled into this build, in [`ALL`](Self::ALL) order (the agent reports
    /// them in `hello`).
    pub fn compiled() -> Vec<BackendKind> {
        Self::ALL.into_iter().filter(|k| k.is_compiled()).collect()
    }

    /// Whether this build has the backend.
    pub fn is_compiled(self) -> bool {
        self.traits().compiled
    }

    /// The cargo feature of dpop-keys that compiles the backend in; `None` for the software
    /// backend (always there).
    pub fn cargo_feature(self) -> Option<&'static str> {
        self.traits().feature
    }

    /// The scheme of the key URIs the backend adopts (`pkcs11`, `tpm`), if it adopts any.
    pub fn uri_scheme(self) -> Option<&'static str> {
        self.traits().uri_scheme
    }

    /// The backend a key URI names by its scheme, in any case: `pkcs11:` (RFC 7512) is
    /// PKCS#11, `tpm:` (`tpm:handle=0x81000001`) the TPM. Any other scheme, or none, is
    /// [`Error::UnknownUriScheme`].
    pub fn from_uri(uri: &str) -> Result<BackendKind, Error> {
        let scheme = uri.split_once(':').map_or("", |(scheme, _)| scheme);
        Self::ALL
            .into_iter()
            .find(|k| {
                k.uri_scheme()
                    .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
            })
            .ok_or_else(|| Error::UnknownUriScheme {
                scheme: scheme.chars().take(32).collect(),
            })
    }

    /// The name used on the wire and the command line.
    pub fn as_str(self) -> &'static str {
        self.traits().name
    }

    /// How messages name the backend: `software`, `PKCS#11`, `TPM`.
    pub fn title(self) -> &'static str {
        self.traits().title
    }

    /// What holds the backend's keys, for messages: `PKCS#11 token`, `TPM`.
    pub fn device(self) -> &'static str {
        self.traits().device
    }

    /// What the secret that opens the backend's keys is called: `PIN` for a token, `auth
    /// value` for TPM keys, `passphrase` for the software store.
    pub fn secret(self) -> &'static str {
        self.traits().secret
    }

    /// How a message says the device cannot be reached (`is not present`, `is not available`).
    pub(crate) fn unreachable(self) -> &'static str {
        self.traits().unreachable
    }

    /// The message for a device that refuses every secret after too many wrong ones.
    pub(crate) fn locked_message(self) -> &'static str {
        self.traits().locked
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl std::str::FromStr for BackendKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| Error::UnknownBackend { name: s.to_owned() })
    }
}

/// What is known about a key in public: never any private part.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    /// The unique name users type.
    pub label: KeyLabel,
    /// The signature algorithm.
    pub alg: Algorithm,
    /// The backend that holds it.
    pub backend: BackendKind,
    /// The public key.
    pub jwk: Jwk,
    /// RFC 7638 thumbprint of `jwk`.
    pub jkt: String,
    /// Whether the key survives an agent restart.
    pub persistent: bool,
    /// Where the backend keeps it (a PKCS#11 URI, a file), when that is worth showing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// For a key on a device whose keys may do more than sign (a PKCS#11 token): whether the
    /// device lets the private key only sign, as read back from it. `None` for backends whose
    /// keys are sign-only by construction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sign_only: Option<bool>,
    /// What else the device lets the private key do (`decrypt`, `unwrap`, `derive`,
    /// `sign_recover`); empty for a sign-only key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub other_uses: Vec<String>,
}

/// The public description and cached proof header of one key, built once when the key is
/// loaded, so that signing a proof never re-encodes the header. Also keeps how long the key's
/// signatures take, so callers can tell a fast token from a slow one.
#[derive(Debug)]
pub struct KeyMeta {
    info: KeyInfo,
    header: ProofHeader,
    /// Typical signing time in nanoseconds (see `observe_sign_time`); 0 until the first one.
    sign_nanos: AtomicU64,
}

impl Clone for KeyMeta {
    fn clone(&self) -> Self {
        KeyMeta {
            info: self.info.clone(),
            header: self.header.clone(),
            sign_nanos: AtomicU64::new(self.sign_nanos.load(Ordering::Relaxed)),
        }
    }
}

impl KeyMeta {
    /// Describes a key; fails when `jwk` cannot make `alg` signatures.
    pub fn new(
        label: KeyLabel,
        alg: Algorithm,
        backend: BackendKind,
        jwk: Jwk,
        persistent: bool,
        location: Option<String>,
    ) -> Result<KeyMeta, Error> {
        let header = ProofHeader::new(alg, &jwk)?;
        let jkt = jwk.thumbprint();
        Ok(KeyMeta {
            info: KeyInfo {
                label,
                alg,
                backend,
                jwk,
                jkt,
                persistent,
                location,
                sign_only: None,
                other_uses: Vec::new(),
            },
            header,
            sign_nanos: AtomicU64::new(0),
        })
    }

    /// Records how long one signature took. The estimate follows a faster signature at once
    /// and a slower one only slowly (1/1024 of the gap): it tracks what the key's device needs,
    /// not the queueing and preemption that load adds on top (which would otherwise feed on
    /// itself: a busy agent would think its token slow and hand signatures to more threads).
    pub fn observe_sign_time(&self, took: std::time::Duration) {
        let sample = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX).max(1);
        let old = self.sign_nanos.load(Ordering::Relaxed);
        let new = if old == 0 || sample < old {
            sample
        } else {
            old + (sample - old) / 1024
        };
        // A lost update under contention only delays the estimate a little.
        self.sign_nanos.store(new, Ordering::Relaxed);
    }

    /// The typical signing time so far, `None` before the first signature.
    pub fn typical_sign_time(&self) -> Option<std::time::Duration> {
        match self.sign_nanos.load(Ordering::Relaxed) {
            0 => None,
            n => Some(std::time::Duration::from_nanos(n)),
        }
    }

    /// Says what the device lets the private key do besides signing (`decrypt`, `unwrap`,
    /// ...; empty: nothing), for backends whose devices may allow more ([`KeyInfo::sign_only`]).
    pub fn with_other_uses(mut self, other_uses: &[&str]) -> KeyMeta {
        self.info.sign_only = Some(other_uses.is_empty());
        self.info.other_uses = other_uses.iter().map(|u| (*u).to_owned()).collect();
        self
    }

    /// The public description.
    pub fn info(&self) -> &KeyInfo {
        &self.info
    }

    /// The proof header.
    pub fn header(&self) -> &ProofHeader {
        &self.header
    }
}

/// One key that can sign. Implementations keep the private key to themselves.
pub trait KeySigner: Send + Sync + fmt::Debug {
    /// Public description and cached proof header.
    fn meta(&self) -> &KeyMeta;

    /// Signs `message`, returning the JWS signature (`r||s` for ECDSA).
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Error>;

    /// True when [`sign`](Self::sign) may block (a token or TPM round trip), so async callers
    /// should move it off their executor; false for in-memory keys, which sign in microseconds.
    fn is_blocking(&self) -> bool;

    /// For a signer that does its work on a thread of its own (a TPM): starts signing
    /// `message` and returns at once; the JWS signature arrives on the receiver, so an async
    /// caller awaits it instead of blocking a thread. `None`: call [`sign`](Self::sign).
    fn sign_detached(&self, message: &[u8]) -> Option<Result<SignReceiver, Error>> {
        let _ = message;
        None
    }

    /// For a key whose private part is in this process's memory (a software key): a stand-in
    /// that holds it sealed under `key` and cannot sign, for a locked agent. `None` for keys
    /// that never leave their hardware.
    fn sealed(&self, key: &SealingKey) -> Option<Result<SignerRef, Error>> {
        let _ = key;
        None
    }

    /// For a stand-in made by [`sealed`](Self::sealed): the signing key again. `None` for
    /// every other signer.
    fn unsealed(&self, key: &SealingKey) -> Option<Result<SignerRef, Error>> {
        let _ = key;
        None
    }
}

impl dpop_jose::Signer for dyn KeySigner {
    type Error = Error;

    fn header(&self) -> &ProofHeader {
        self.meta().header()
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
        KeySigner::sign(self, message)
    }
}

/// A shared signer.
pub type SignerRef = Arc<dyn KeySigner>;

/// Where a [`KeySigner::sign_detached`] signature arrives.
pub type SignReceiver = tokio::sync::oneshot::Receiver<Result<Vec<u8>, Error>>;

/// What an adoption may take beyond an ordinary signing key. The defaults are what a client
/// of the agent gets; more is for keys the agent's own configuration names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AdoptOptions {
    /// Allow a key that wants the PIN for each signature (`CKA_ALWAYS_AUTHENTICATE`): the
    /// agent then gives the PIN for every proof, which overrides the token's per-use policy,
    /// so only an explicit configuration may ask for it.
    pub always_authenticate: bool,
}

/// A store of keys: software, PKCS#11 token, TPM. All methods may block (disk, token, TPM).
pub trait Backend: Send + Sync {
    /// Which backend this is.
    fn kind(&self) -> BackendKind;

    /// Algorithms [`generate`](Self::generate) accepts.
    fn algorithms(&self) -> Vec<Algorithm>;

    /// Every key the backend holds, loaded and ready to sign.
    fn load(&self) -> Result<Vec<SignerRef>, Error>;

    /// Makes a new key inside the backend.
    fn generate(&self, label: &KeyLabel, alg: Algorithm) -> Result<SignerRef, Error>;

    /// Imports a PEM private key (PKCS#8, SEC1 or PKCS#1). `alg` picks between algorithms the
    /// key could serve (RS256 or PS256 for RSA); `None` takes the natural one.
    fn import_pem(
        &self,
        label: &KeyLabel,
        pem: &[u8],
        alg: Option<Algorithm>,
    ) -> Result<SignerRef, Error>;

    /// Adopts a key that already exists in the backend, named by a backend-specific URI. A
    /// key the backend serves already (under any label) is [`Error::KeyAlreadyManaged`]; one
    /// that `options` do not allow is [`Error::AdoptNotAllowed`].
    fn adopt(
        &self,
        uri: &str,
        label: &KeyLabel,
        alg: Option<Algorithm>,
        options: AdoptOptions,
    ) -> Result<SignerRef, Error> {
        let _ = (uri, label, alg, options);
        Err(Error::Unsupported {
            what: format!("adopting keys in the {} backend", self.kind()),
        })
    }

    /// Deletes a key. A failure leaves the key as it was.
    fn delete(&self, label: &KeyLabel) -> Result<(), Error>;

    /// The agent is locked: seal under `key` whatever secret the backend keeps in memory to
    /// open its keys (the software store's key-encryption key). Nothing by default.
    fn seal(&self, key: &SealingKey) -> Result<(), Error> {
        let _ = key;
        Ok(())
    }

    /// Undoes [`seal`](Self::seal).
    fn unseal(&self, key: &SealingKey) -> Result<(), Error> {
        let _ = key;
        Ok(())
    }
}
