//! Stateless nonces (RFC 9449 section 8): an HMAC over a time step, so every instance that
//! shares the secret issues and accepts the same nonces without talking to the others.

use std::time::Duration;

use aws_lc_rs::hmac;
use dpop_jose::{b64url_decode, b64url_encode};

use crate::ConfigError;

/// Shortest secret accepted: 256 bits, the HMAC-SHA-256 key size.
pub const MIN_NONCE_SECRET_LEN: usize = 32;

/// Separates these MACs from any other use of the same secret.
const DOMAIN: &[u8] = b"dpop-server nonce v1\0";

/// Issues and checks nonces: `base64url(step || HMAC-SHA-256(secret, step))`, where `step`
/// is the number of whole rotation intervals since the epoch (8 bytes, big-endian). A nonce
/// of the current or the previous step is accepted, so one lives between one and two
/// intervals. The 54-character result is within `1*NQCHAR`.
#[derive(Clone)]
pub struct HmacNonces {
    key: hmac::Key,
    step: i64,
}

impl std::fmt::Debug for HmacNonces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs.
        f.debug_struct("HmacNonces")
            .field("step_seconds", &self.step)
            .finish_non_exhaustive()
    }
}

/// How a nonce relates to the current step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonceAge {
    /// Issued in the current step.
    Current,
    /// Issued in the previous step: still accepted, and the client should get a new one.
    Previous,
    /// Older, from the future, not made with this secret, or not a nonce at all.
    Invalid,
}

impl HmacNonces {
    /// A nonce source with `secret` (at least [`MIN_NONCE_SECRET_LEN`] bytes; random, and the
    /// same on every instance) rotating every `interval` (at least one second).
    pub fn new(secret: &[u8], interval: Duration) -> Result<HmacNonces, ConfigError> {
        if secret.len() < MIN_NONCE_SECRET_LEN {
            return Err(ConfigError::NonceSecretTooShort {
                len: secret.len(),
                min: MIN_NONCE_SECRET_LEN,
            });
        }
        let step = i64::try_from(interval.as_secs()).unwrap_or(i64::MAX);
        if step < 1 {
            return Err(ConfigError::NonceInterval);
        }
        Ok(HmacNonces {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            step,
        })
    }

    /// The rotation interval.
    pub fn interval(&self) -> Duration {
        Duration::from_secs(self.step.unsigned_abs())
    }

    /// The nonce of the step that holds `now` (seconds since the epoch).
    pub fn nonce_at(&self, now: i64) -> String {
        let step = now.div_euclid(self.step).to_be_bytes();
        let mut bytes = Vec::with_capacity(40);
        bytes.extend_from_slice(&step);
        bytes.extend_from_slice(self.mac(&step).as_ref());
        b64url_encode(&bytes)
    }

    /// How `nonce` relates to the step that holds `now`.
    pub fn age(&self, nonce: &str, now: i64) -> NonceAge {
        let Some(bytes) = b64url_decode(nonce).filter(|b| b.len() == 40) else {
            return NonceAge::Invalid;
        };
        let (step_bytes, tag) = bytes.split_at(8);
        let step = i64::from_be_bytes(step_bytes.try_into().expect("8 bytes"));
        let current = now.div_euclid(self.step);
        let age = if step == current {
            NonceAge::Current
        } else if step == current - 1 {
            NonceAge::Previous
        } else {
            return NonceAge::Invalid;
        };
        let mut message = Vec::with_capacity(DOMAIN.len() + 8);
        message.extend_from_slice(DOMAIN);
        message.extend_from_slice(step_bytes);
        // Constant-time comparison.
        match hmac::verify(&self.key, &message, tag) {
            Ok(()) => age,
            Err(_) => NonceAge::Invalid,
        }
    }

    fn mac(&self, step: &[u8; 8]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(DOMAIN);
        ctx.update(step);
        ctx.sign()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8; 32] = b"0123456789abcdef0123456789abcdef";

    fn nonces() -> HmacNonces {
        HmacNonces::new(SECRET, Duration::from_secs(30)).unwrap()
    }

    #[test]
    fn current_and_previous_step_are_accepted_older_and_newer_are_not() {
        let n = nonces();
        let nonce = n.nonce_at(1_000_000_000);
        assert_eq!(n.age(&nonce, 1_000_000_000), NonceAge::Current);
        assert_eq!(n.age(&nonce, 1_000_000_000 + 30), NonceAge::Previous);
        assert_eq!(n.age(&nonce, 1_000_000_000 + 60), NonceAge::Invalid);
        assert_eq!(n.age(&nonce, 1_000_000_000 - 30), NonceAge::Invalid);
    }

    #[test]
    fn another_secret_or_a_changed_nonce_is_invalid() {
        let nonce = nonces().nonce_at(1_000_000_000);
        let other = HmacNonces::new(&[7; 32], Duration::from_secs(30)).unwrap();
        assert_eq!(other.age(&nonce, 1_000_000_000), NonceAge::Invalid);
        let mut bytes = b64url_decode(&nonce).unwrap();
        bytes[20] ^= 1;
        assert_eq!(
            nonces().age(&b64url_encode(&bytes), 1_000_000_000),
            NonceAge::Invalid
        );
        assert_eq!(
            nonces().age("not a nonce!", 1_000_000_000),
            NonceAge::Invalid
        );
    }

    #[test]
    fn instances_with_the_same_secret_agree_and_nonces_are_nqchar() {
        let a = nonces();
        let b = nonces();
        let nonce = a.nonce_at(1_700_000_123);
        assert_eq!(b.age(&nonce, 1_700_000_124), NonceAge::Current);
        assert_eq!(nonce.len(), 54);
        // RFC 9449 section 8: NQCHAR = %x21 / %x23-5B / %x5D-7E.
        assert!(
            nonce
                .bytes()
                .all(|c| c == 0x21 || (0x23..=0x5b).contains(&c) || (0x5d..=0x7e).contains(&c))
        );
    }

    #[test]
    fn short_secrets_and_zero_intervals_are_refused() {
        assert!(matches!(
            HmacNonces::new(&[1; 16], Duration::from_secs(30)),
            Err(ConfigError::NonceSecretTooShort { len: 16, min: 32 })
        ));
        assert!(matches!(
            HmacNonces::new(SECRET, Duration::from_millis(500)),
            Err(ConfigError::NonceInterval)
        ));
    }
}
