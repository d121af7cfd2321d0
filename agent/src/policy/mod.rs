//! Per-key policies, enforced here for every signature (never only in a client): allowed
//! origins, allowed client executables, expiry, and confirm-on-use through an askpass program.
//!
//! A policy lives with its key: for a key that survives restarts, in a 0600 record under
//! `<data dir>/policies/<label>.json` that names the key's `jkt`, so a new key under the same
//! label never inherits an old key's policy; for a memory-only key, in memory.
//!
//! A policy binds clients too: tightening it is free, but loosening or clearing it, and deleting
//! a key that has one, needs the user's yes through the askpass program, and a key with
//! allowed clients is managed only by those programs (or with that yes). A client the policy
//! refuses therefore cannot undo it.
//!
//! `origin.rs`: the allowed-origin patterns; `confirm.rs`: confirm-on-use through askpass;
//! `manage.rs`: which policy changes loosen, and the yes they need.

mod confirm;
mod manage;
mod origin;

pub use manage::{Change, Manage, changes};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use dpop_keys::records::{Record, RecordStore};
use dpop_keys::{KeyLabel, Keyring};
use dpop_protocol::{ErrorCode, KeyPolicy, WireError, printable};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::lock::Lock;
use crate::peer::{Changed, Peer, Process, same_executable};

use origin::OriginPattern;

/// A policy checked once, ready for the hot path.
#[derive(Clone, Debug)]
struct Checked {
    wire: KeyPolicy,
    jkt: String,
    origins: Vec<OriginPattern>,
    clients: Vec<PathBuf>,
}

impl Checked {
    fn new(policy: KeyPolicy, jkt: &str) -> Result<Checked, WireError> {
        Checked::make(policy, jkt, None)
    }

    /// A policy read back at start-up for key `label`: an allowed program that is gone
    /// (uninstalled, or upgraded to another path) stays in the list as it was saved, with a
    /// warning. Only this key is affected: no running program has that path, so the key
    /// refuses it until it is back; the agent and its other keys start as usual.
    fn stored(policy: KeyPolicy, jkt: &str, label: &str) -> Result<Checked, WireError> {
        Checked::make(policy, jkt, Some(label))
    }

    fn make(policy: KeyPolicy, jkt: &str, stored: Option<&str>) -> Result<Checked, WireError> {
        let origins = policy
            .allow_origins
            .iter()
            .map(|o| OriginPattern::parse(o))
            .collect::<Result<_, _>>()?;
        let mut clients = Vec::with_capacity(policy.allow_clients.len());
        let mut wire = policy;
        for client in &mut wire.allow_clients {
            let path = Path::new(client.as_str());
            if !path.is_absolute() {
                return Err(WireError::new(
                    ErrorCode::InvalidPolicy,
                    format!("allowed client {client:?}: give the executable's absolute path"),
                ));
            }
            // The kernel names the peer's executable with every link resolved.
            let canonical = match (crate::peer::canonical_executable(path), stored) {
                (Ok(canonical), _) => canonical,
                (Err(e), Some(label)) => {
                    warn!(
                        key = %label,
                        client = %printable(client),
                        "the key's allowed client program is missing ({e}): the key refuses it until it is back"
                    );
                    path.to_owned()
                }
                (Err(e), None) => {
                    return Err(WireError::new(
                        ErrorCode::InvalidPolicy,
                        format!("allowed client {client:?}: {e}"),
                    ));
                }
            };
            *client = canonical.to_string_lossy().into_owned();
            clients.push(canonical);
        }
        if let Some(secs) = wire.confirm_remember_secs
            && secs > confirm::MAX_REMEMBER_SECS
        {
            return Err(WireError::new(
                ErrorCode::InvalidPolicy,
                format!(
                    "confirm_remember_secs {secs} is too long: at most {} (a year)",
                    confirm::MAX_REMEMBER_SECS
                ),
            ));
        }
        if wire.confirm_remember_secs.is_some() && !wire.confirm {
            return Err(WireError::new(
                ErrorCode::InvalidPolicy,
                "confirm_remember_secs needs confirm",
            ));
        }
        Ok(Checked {
            wire,
            jkt: jkt.to_owned(),
            origins,
            clients,
        })
    }
}

/// `<data dir>/policies/<label>.json`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyRecord {
    label: KeyLabel,
    /// The key the policy belongs to.
    jkt: String,
    policy: KeyPolicy,
}

impl Record for PolicyRecord {
    fn label(&self) -> &KeyLabel {
        &self.label
    }
}

/// What [`Policies::check`] needs to know about one signing request.
pub struct SignContext<'a> {
    pub label: &'a str,
    pub jkt: &'a str,
    pub origin: &'a str,
    pub peer: &'a Peer,
    pub now: i64,
    /// A lock ends a wait for confirmation.
    pub lock: &'a Lock,
}

/// Every key's policy.
pub struct Policies {
    store: Option<RecordStore>,
    by_label: RwLock<HashMap<String, Arc<Checked>>>,
    /// Whether any key has a policy: lets every signature of an agent without policies skip
    /// the lock.
    any: AtomicBool,
    /// Yes answers remembered: (label, client pid and start time, client executable) until
    /// when, for that process (forgotten once it has exited).
    confirmed: Mutex<HashMap<Remembered, (Instant, Arc<Process>)>>,
    /// One policy change or key deletion at a time, from its check through the user's
    /// answer to its end, so that what the user approved is what changes.
    managing: tokio::sync::Mutex<()>,
    /// One question on the screen at a time.
    asking: tokio::sync::Mutex<()>,
    /// Room for the signatures that wait for confirmation: bounded, so waiting clients cannot
    /// pile up without end.
    waiting: tokio::sync::Semaphore,
    askpass: Option<PathBuf>,
}

/// What a remembered yes is for: (label, (client pid, start time), client executable).
type Remembered = (String, (i32, u64), PathBuf);

fn internal(what: &str, e: impl std::fmt::Display) -> WireError {
    WireError::new(ErrorCode::Internal, format!("{what}: {e}"))
}

impl Policies {
    /// Policies kept under `dir` for persistent keys (`None`: memory only), asking through
    /// `askpass` for confirm-on-use.
    pub fn open(dir: Option<PathBuf>, askpass: Option<PathBuf>) -> anyhow::Result<Policies> {
        let store = dir.map(RecordStore::open).transpose()?;
        Ok(Policies {
            store,
            by_label: RwLock::new(HashMap::new()),
            any: AtomicBool::new(false),
            confirmed: Mutex::new(HashMap::new()),
            managing: tokio::sync::Mutex::new(()),
            asking: tokio::sync::Mutex::new(()),
            waiting: tokio::sync::Semaphore::new(confirm::MAX_WAITING),
            askpass,
        })
    }

    /// Loads the stored policies of the keys `keyring` serves. A record for another key under
    /// the same label is left on disk, unused, with a warning.
    pub fn load(&self, keyring: &Keyring) -> anyhow::Result<()> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let mut loaded = 0;
        for path in store.list()? {
            let mut record: PolicyRecord = store.read(&path)?;
            let Ok(key) = keyring.get(record.label.as_str()) else {
                continue;
            };
            let jkt = &key.meta().info().jkt;
            if *jkt != record.jkt {
                warn!(path = %path.display(), "policy for another key under this label: not applied");
                continue;
            }
            // Saved by an older agent that took any length: the bound applies from now on.
            if let Some(secs) = &mut record.policy.confirm_remember_secs
                && *secs > confirm::MAX_REMEMBER_SECS
            {
                warn!(path = %path.display(), "confirm_remember_secs longer than a year: shortened");
                *secs = confirm::MAX_REMEMBER_SECS;
            }
            let checked = Checked::stored(record.policy, jkt, record.label.as_str())
                .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.message))?;
            self.change_map(|map| map.insert(record.label.to_string(), Arc::new(checked)));
            loaded += 1;
        }
        if loaded > 0 {
            info!("{loaded} key policy(ies) loaded");
        }
        Ok(())
    }

    /// Changes the map and keeps [`any`](Self::any) in step with it.
    fn change_map<T>(&self, change: impl FnOnce(&mut HashMap<String, Arc<Checked>>) -> T) -> T {
        let mut map = self.by_label.write().unwrap_or_else(|p| p.into_inner());
        let result = change(&mut map);
        self.any.store(!map.is_empty(), Ordering::Release);
        result
    }

    fn read_map(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Checked>>> {
        self.by_label.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks `policy` without setting it (before a key is made for it).
    pub fn validate(policy: &KeyPolicy) -> Result<(), WireError> {
        Checked::new(policy.clone(), "").map(|_| ())
    }

    /// Sets `label`'s policy (an empty one removes it), saved when the key is persistent.
    pub fn set(
        &self,
        label: &KeyLabel,
        jkt: &str,
        persistent: bool,
        policy: KeyPolicy,
    ) -> Result<KeyPolicy, WireError> {
        self.apply(label, persistent, Prepared(Checked::new(policy, jkt)?))
    }

    /// `policy` checked for key `jkt`, its client paths resolved, ready to compare with the
    /// key's policy now ([`changes`]) and to [`apply`](Self::apply).
    pub fn prepare(policy: KeyPolicy, jkt: &str) -> Result<Prepared, WireError> {
        Checked::new(policy, jkt).map(Prepared)
    }

    /// Sets a prepared policy as `label`'s.
    pub fn apply(
        &self,
        label: &KeyLabel,
        persistent: bool,
        prepared: Prepared,
    ) -> Result<KeyPolicy, WireError> {
        let checked = prepared.0;
        let jkt = checked.jkt.as_str();
        if let (Some(store), true) = (&self.store, persistent) {
            if checked.wire.is_empty() {
                if store.path(label).exists() {
                    store
                        .remove(label)
                        .map_err(|e| internal("removing the policy", e))?;
                }
            } else {
                let record = PolicyRecord {
                    label: label.clone(),
                    jkt: jkt.to_owned(),
                    policy: checked.wire.clone(),
                };
                let saved = if store.path(label).exists() {
                    store.replace(&record)
                } else {
                    store.write_new(&record)
                };
                saved.map_err(|e| internal("saving the policy", e))?;
            }
        }
        let wire = checked.wire.clone();
        self.change_map(|map| {
            if wire.is_empty() {
                map.remove(label.as_str());
            } else {
                map.insert(label.to_string(), Arc::new(checked));
            }
        });
        self.forget_confirmations(label.as_str());
        Ok(wire)
    }

    /// Drops a deleted key's policy (and its record).
    pub fn forget(&self, label: &KeyLabel) {
        self.change_map(|map| map.remove(label.as_str()));
        self.forget_confirmations(label.as_str());
        if let Some(store) = &self.store
            && store.path(label).exists()
            && let Err(e) = store.remove(label)
        {
            warn!(error = %e, "could not remove the policy record of a deleted key");
        }
    }

    fn forget_confirmations(&self, label: &str) {
        self.confirmed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(l, _, _), _| l != label);
    }

    /// A connection closed: drops the remembered answers of client processes that have
    /// exited (and those that expired), so that nothing keeps them, let alone a later process
    /// under the same pid.
    pub fn connection_closed(&self) {
        let now = Instant::now();
        self.confirmed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, (until, process)| now < *until && !process.exited());
    }

    /// `label`'s policy, for `list_keys` (empty: none).
    pub fn get(&self, label: &str) -> KeyPolicy {
        self.read_map()
            .get(label)
            .map(|c| c.wire.clone())
            .unwrap_or_default()
    }

    /// The policy that applies to key `jkt` under `label` (empty: none).
    pub fn get_for(&self, label: &str, jkt: &str) -> KeyPolicy {
        self.read_map()
            .get(label)
            .filter(|c| c.jkt == jkt)
            .map(|c| c.wire.clone())
            .unwrap_or_default()
    }

    /// Held across a policy change or key deletion (see [`authorize`](Self::authorize)).
    pub async fn managing(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.managing.lock().await
    }

    /// Whether `request` may be signed: expiry, origin, client, then confirmation.
    pub async fn check(&self, request: &SignContext<'_>) -> Result<(), WireError> {
        if !self.any.load(Ordering::Acquire) {
            return Ok(());
        }
        let policy = match self.read_map().get(request.label) {
            // A policy set for another key under this label does not apply (defensive: set
            // and load bind it to the jkt).
            Some(p) if p.jkt == request.jkt => p.clone(),
            _ => return Ok(()),
        };
        if let Some(expires_at) = policy.wire.expires_at
            && request.now >= expires_at
        {
            return Err(WireError::new(
                ErrorCode::KeyExpired,
                format!("key {:?}'s lifetime is over", request.label),
            ));
        }
        if !policy.origins.is_empty() && !policy.origins.iter().any(|o| o.matches(request.origin)) {
            return Err(WireError::new(
                ErrorCode::OriginNotAllowed,
                format!(
                    "key {:?} does not sign for {}; its policy allows {}",
                    request.label,
                    request.origin,
                    policy.wire.allow_origins.join(", ")
                ),
            ));
        }
        if !policy.clients.is_empty() {
            // The program that connected, if the process still runs it.
            let exe = request
                .peer
                .verified_exe()
                .map_err(|e| changed_client(&e))?;
            let allowed =
                exe.is_some_and(|exe| policy.clients.iter().any(|c| same_executable(c, exe)));
            if !allowed {
                return Err(WireError::new(
                    ErrorCode::ClientNotAllowed,
                    format!(
                        "key {:?} is not for {}; its policy allows {}",
                        request.label,
                        request
                            .peer
                            .exe()
                            .map_or("an unknown program".into(), |p| p.display().to_string()),
                        policy.wire.allow_clients.join(", ")
                    ),
                ));
            }
        }
        if policy.wire.confirm {
            self.confirm(request, policy.wire.confirm_remember_secs)
                .await?;
        }
        Ok(())
    }
}

/// A policy checked by [`Policies::prepare`].
pub struct Prepared(Checked);

impl Prepared {
    /// The policy as it will be set (client paths resolved).
    pub fn policy(&self) -> &KeyPolicy {
        &self.0.wire
    }
}

/// The refusal of a request whose client process is no longer the one that connected.
fn changed_client(changed: &Changed) -> WireError {
    WireError::new(ErrorCode::ClientNotAllowed, changed.to_string())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_in_a_stored_policy_is_kept_not_fatal() {
        let policy = KeyPolicy {
            allow_clients: vec!["/nonexistent/python3.12".into(), "/bin/sh".into()],
            ..KeyPolicy::default()
        };
        assert!(Checked::new(policy.clone(), "j").is_err());
        let stored = Checked::stored(policy, "j", "k").unwrap();
        assert_eq!(stored.clients[0], Path::new("/nonexistent/python3.12"));
        assert_eq!(stored.clients[1], std::fs::canonicalize("/bin/sh").unwrap());
    }

    #[test]
    fn client_paths_are_absolute_and_resolved() {
        let policy = |client: &str| KeyPolicy {
            allow_clients: vec![client.into()],
            ..KeyPolicy::default()
        };
        assert!(Checked::new(policy("sh"), "j").is_err());
        assert!(Checked::new(policy("/nonexistent/program"), "j").is_err());
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("real");
        std::fs::write(&target, b"#!/bin/sh\n").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let checked = Checked::new(policy(link.to_str().unwrap()), "j").unwrap();
        assert_eq!(checked.clients, [std::fs::canonicalize(&target).unwrap()]);
        assert_eq!(
            checked.wire.allow_clients,
            [std::fs::canonicalize(&target)
                .unwrap()
                .to_string_lossy()
                .into_owned()]
        );
    }
}
