//! Server nonces (`DPoP-Nonce`, RFC 9449 section 8), kept per key and per origin.
//!
//! The agent is the one place on the machine that remembers them, so a process benefits from
//! a nonce another one received: its first proof already carries it and the server needs no
//! extra round trip. A nonce is public (servers send it in a header) and only ever goes into
//! proofs for the origin that sent it. The store is bounded: when full, the nonce reported
//! longest ago goes, which costs at most one `use_dpop_nonce` retry later.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Origins with a stored nonce per key.
pub const MAX_ORIGINS_PER_KEY: usize = 64;
/// Stored nonces in all.
pub const MAX_NONCES: usize = 4096;

/// Nonces by key label, then by origin (`scheme://host[:port]`, as [`dpop_jose::Htu::origin`]
/// normalises it).
#[derive(Default)]
pub struct Nonces {
    inner: Mutex<Inner>,
    /// Lets `sign_proof` skip the lock while no nonce is stored at all (most agents).
    count: AtomicUsize,
}

#[derive(Default)]
struct Inner {
    by_key: HashMap<String, HashMap<String, Entry>>,
    /// Counts reports, to find the oldest entry when the store is full.
    clock: u64,
}

struct Entry {
    nonce: String,
    reported: u64,
}

impl Nonces {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The map stays consistent even if a holder panicked: every change is one insert or
        // remove.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// An empty store.
    pub fn new() -> Nonces {
        Nonces::default()
    }

    /// Stores `nonce` for `key` at `origin`, replacing the one before. The caller checked
    /// the nonce's syntax and normalised the origin.
    pub fn report(&self, key: &str, origin: &str, nonce: &str) {
        let mut inner = self.lock();
        inner.clock += 1;
        let reported = inner.clock;
        let entry = Entry {
            nonce: nonce.to_owned(),
            reported,
        };
        let origins = inner.by_key.entry(key.to_owned()).or_default();
        if let Some(old) = origins.get_mut(origin) {
            *old = entry;
            return;
        }
        if origins.len() >= MAX_ORIGINS_PER_KEY {
            evict_oldest(origins);
            self.count.fetch_sub(1, Ordering::Relaxed);
        }
        origins.insert(origin.to_owned(), entry);
        if self.count.fetch_add(1, Ordering::Relaxed) + 1 > MAX_NONCES {
            inner.evict_oldest_anywhere();
            self.count.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The nonce stored for `key` at `origin`.
    pub fn get(&self, key: &str, origin: &str) -> Option<String> {
        if self.count.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let inner = self.lock();
        Some(inner.by_key.get(key)?.get(origin)?.nonce.clone())
    }

    /// The origins with a nonce for `key`, sorted.
    pub fn origins(&self, key: &str) -> Vec<String> {
        if self.count.load(Ordering::Relaxed) == 0 {
            return Vec::new();
        }
        let inner = self.lock();
        let mut origins: Vec<String> = inner
            .by_key
            .get(key)
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        origins.sort();
        origins
    }

    /// Drops every nonce of a deleted key, so a new key under the same label starts clean.
    pub fn forget_key(&self, key: &str) {
        let mut inner = self.lock();
        if let Some(origins) = inner.by_key.remove(key) {
            self.count.fetch_sub(origins.len(), Ordering::Relaxed);
        }
    }
}

fn evict_oldest(origins: &mut HashMap<String, Entry>) {
    if let Some(oldest) = origins
        .iter()
        .min_by_key(|(_, e)| e.reported)
        .map(|(o, _)| o.clone())
    {
        origins.remove(&oldest);
    }
}

impl Inner {
    fn evict_oldest_anywhere(&mut self) {
        let oldest = self
            .by_key
            .iter()
            .flat_map(|(key, origins)| origins.iter().map(move |(o, e)| (e.reported, key, o)))
            .min_by_key(|(reported, _, _)| *reported)
            .map(|(_, key, origin)| (key.clone(), origin.clone()));
        if let Some((key, origin)) = oldest {
            let origins = self.by_key.get_mut(&key).expect("key just seen");
            origins.remove(&origin);
            if origins.is_empty() {
                self.by_key.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_key_and_origin_latest_wins() {
        let nonces = Nonces::new();
        assert_eq!(nonces.get("a", "https://as.example"), None);
        nonces.report("a", "https://as.example", "n1");
        nonces.report("a", "https://as.example", "n2");
        nonces.report("a", "https://rs.example", "r1");
        assert_eq!(nonces.get("a", "https://as.example").as_deref(), Some("n2"));
        assert_eq!(nonces.get("b", "https://as.example"), None);
        assert_eq!(
            nonces.origins("a"),
            ["https://as.example", "https://rs.example"]
        );
        nonces.forget_key("a");
        assert_eq!(nonces.get("a", "https://as.example"), None);
        assert!(nonces.origins("a").is_empty());
        assert_eq!(nonces.count.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn bounded_per_key_and_in_all() {
        let nonces = Nonces::new();
        for i in 0..MAX_ORIGINS_PER_KEY + 5 {
            nonces.report("a", &format!("https://h{i}.example"), "n");
        }
        let origins = nonces.origins("a");
        assert_eq!(origins.len(), MAX_ORIGINS_PER_KEY);
        // The first reported went first.
        assert!(!origins.contains(&"https://h0.example".to_owned()));
        assert!(origins.contains(&format!("https://h{}.example", MAX_ORIGINS_PER_KEY + 4)));

        let nonces = Nonces::new();
        let keys = MAX_NONCES / MAX_ORIGINS_PER_KEY + 2;
        for k in 0..keys {
            for i in 0..MAX_ORIGINS_PER_KEY {
                nonces.report(&format!("k{k}"), &format!("https://h{i}.example"), "n");
            }
        }
        let total: usize = (0..keys)
            .map(|k| nonces.origins(&format!("k{k}")).len())
            .sum();
        assert_eq!(total, MAX_NONCES);
        assert_eq!(nonces.count.load(Ordering::Relaxed), MAX_NONCES);
        assert!(
            nonces.origins("k0").is_empty(),
            "the oldest key's nonces go first"
        );
        assert_eq!(
            nonces.origins(&format!("k{}", keys - 1)).len(),
            MAX_ORIGINS_PER_KEY
        );
    }
}
