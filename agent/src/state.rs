//! What every connection shares: the keyring, the servers' nonces, the lock and the keys'
//! policies.

use std::sync::Arc;

use dpop_keys::{KeyInfo, Keyring};
use dpop_protocol::{KeyDescription, KeyPolicy};

use crate::lock::Lock;
use crate::nonces::Nonces;
use crate::policy::Policies;

/// What every connection shares.
pub struct State {
    pub keyring: Arc<Keyring>,
    pub software_persistent: bool,
    /// Servers' `DPoP-Nonce` values, per key and origin.
    pub nonces: Nonces,
    /// `lock` / `unlock`.
    pub lock: Lock,
    /// Every key's policy.
    pub policies: Policies,
    /// `-t`: the lifetime of keys added without one (seconds).
    pub default_lifetime: Option<u64>,
}

impl State {
    /// The shared state of an agent serving `keyring`, with policies kept in memory only and
    /// no askpass program (see [`State::with_policies`]).
    pub fn new(keyring: Arc<Keyring>, software_persistent: bool) -> State {
        State {
            keyring,
            software_persistent,
            nonces: Nonces::new(),
            lock: Lock::new(),
            policies: Policies::open(None, None).expect("memory-only policies"),
            default_lifetime: None,
        }
    }

    /// With these policies and default key lifetime.
    pub fn with_policies(mut self, policies: Policies, default_lifetime: Option<u64>) -> State {
        self.policies = policies;
        self.default_lifetime = default_lifetime;
        self
    }

    /// A key's public description with its policy.
    pub fn describe(&self, info: &KeyInfo) -> KeyDescription {
        KeyDescription {
            policy: self.policies.get(info.label.as_str()),
            ..key_description(info)
        }
    }
}

/// A key's public description, without its policy and nonces.
pub fn key_description(info: &KeyInfo) -> KeyDescription {
    KeyDescription {
        label: info.label.to_string(),
        alg: info.alg,
        backend: info.backend.to_string(),
        jwk: info.jwk.clone(),
        jkt: info.jkt.clone(),
        persistent: info.persistent,
        location: info.location.clone(),
        sign_only: info.sign_only,
        other_uses: info.other_uses.clone(),
        nonce_origins: Vec::new(),
        policy: KeyPolicy::default(),
    }
}
