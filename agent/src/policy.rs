//! Per-key policies, enforced here for every signature (never only in a client): allowed
//! origins, allowed client executables, expiry, and confirm-on-use through an askpass program.
//!
//! A policy lives with its key: for a key that survives restarts, in a 0600 record under
//! `<data dir>/policies/<label>.json` that names the key's `jkt`, so a new key under the same
//! label never inherits an old key's policy; for a memory-only key, in memory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use dpop_jose::Htu;
use dpop_keys::records::{Record, RecordStore};
use dpop_keys::{KeyLabel, Keyring};
use dpop_protocol::{ErrorCode, KeyPolicy, WireError};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::peer::{Peer, same_executable};

/// How long the askpass program has to answer; no answer is a no.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(60);

/// An allowed origin.
#[derive(Clone, Debug, PartialEq, Eq)]
enum OriginPattern {
    /// `https://api.example.com` (normalised as `htu` origins are).
    Exact(String),
    /// `https://*.example.com`: `prefix` is `https://`, `suffix` `.example.com` plus any port.
    Subdomains { prefix: String, suffix: String },
}

impl OriginPattern {
    fn parse(pattern: &str) -> Result<OriginPattern, WireError> {
        let invalid = |why: &str| {
            WireError::new(
                ErrorCode::InvalidPolicy,
                format!("allowed origin {pattern:?}: {why}"),
            )
        };
        // A wildcard stands for at least one label; a placeholder label lets the URL parser
        // normalise the rest (case, default port) exactly as it does for requests.
        const PLACEHOLDER: &str = "dpop-agent-wildcard";
        let (wildcard, url) = match pattern.split_once("://*.") {
            Some((scheme, rest)) => (true, format!("{scheme}://{PLACEHOLDER}.{rest}")),
            None => (false, pattern.to_owned()),
        };
        if url.contains('*') {
            return Err(invalid(
                "a wildcard is only allowed as the first label (https://*.example.com)",
            ));
        }
        let htu = Htu::from_url(&url).map_err(|e| invalid(&e.to_string()))?;
        if htu.as_str().len() != htu.origin().len() + 1 {
            return Err(invalid("an origin has no path (https://api.example.com)"));
        }
        let origin = htu.origin();
        if !wildcard {
            return Ok(OriginPattern::Exact(origin.to_owned()));
        }
        let (prefix, rest) = origin
            .split_once(PLACEHOLDER)
            .ok_or_else(|| invalid("cannot read the wildcard"))?;
        Ok(OriginPattern::Subdomains {
            prefix: prefix.to_owned(),
            suffix: rest.to_owned(),
        })
    }

    fn matches(&self, origin: &str) -> bool {
        match self {
            OriginPattern::Exact(allowed) => allowed == origin,
            OriginPattern::Subdomains { prefix, suffix } => origin
                .strip_prefix(prefix.as_str())
                .and_then(|rest| rest.strip_suffix(suffix.as_str()))
                // At least one label, and no port or user info smuggled into it.
                .is_some_and(|sub| {
                    !sub.is_empty()
                        && sub
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                        && !sub.starts_with('.')
                        && !sub.ends_with('.')
                }),
        }
    }
}

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
            let canonical = crate::peer::canonical_executable(path).map_err(|e| {
                WireError::new(
                    ErrorCode::InvalidPolicy,
                    format!("allowed client {client:?}: {e}"),
                )
            })?;
            *client = canonical.to_string_lossy().into_owned();
            clients.push(canonical);
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
pub struct Request<'a> {
    pub label: &'a str,
    pub jkt: &'a str,
    pub origin: &'a str,
    pub peer: &'a Peer,
    pub now: i64,
}

/// Every key's policy.
pub struct Policies {
    store: Option<RecordStore>,
    by_label: RwLock<HashMap<String, Arc<Checked>>>,
    /// Whether any key has a policy: lets every signature of an agent without policies skip
    /// the lock.
    any: AtomicBool,
    /// Yes answers remembered: (label, client pid, client executable) until when.
    confirmed: Mutex<HashMap<(String, i32, PathBuf), Instant>>,
    /// One question on the screen at a time.
    asking: tokio::sync::Mutex<()>,
    askpass: Option<PathBuf>,
}

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
            asking: tokio::sync::Mutex::new(()),
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
            let record: PolicyRecord = store.read(&path)?;
            let Ok(key) = keyring.get(record.label.as_str()) else {
                continue;
            };
            let jkt = &key.meta().info().jkt;
            if *jkt != record.jkt {
                warn!(path = %path.display(), "policy for another key under this label: not applied");
                continue;
            }
            let checked = Checked::new(record.policy, jkt)
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
        let checked = Checked::new(policy, jkt)?;
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

    /// `label`'s policy, for `list_keys` (empty: none).
    pub fn get(&self, label: &str) -> KeyPolicy {
        self.read_map()
            .get(label)
            .map(|c| c.wire.clone())
            .unwrap_or_default()
    }

    /// Whether `request` may be signed: expiry, origin, client, then confirmation.
    pub async fn check(&self, request: &Request<'_>) -> Result<(), WireError> {
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
            let allowed = request
                .peer
                .exe()
                .is_some_and(|exe| policy.clients.iter().any(|c| same_executable(c, exe)));
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

    async fn confirm(&self, request: &Request<'_>, remember: Option<u64>) -> Result<(), WireError> {
        let exe = request
            .peer
            .exe()
            .map_or_else(|| PathBuf::from("?"), Path::to_owned);
        let remembered_key = (
            request.label.to_owned(),
            request.peer.pid.unwrap_or(0),
            exe.clone(),
        );
        let remembered = |this: &Policies| {
            this.confirmed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&remembered_key)
                .is_some_and(|until| Instant::now() < *until)
        };
        if remembered(self) {
            return Ok(());
        }
        let Some(askpass) = self.askpass.clone() else {
            return Err(WireError::new(
                ErrorCode::ConfirmDenied,
                "key needs confirmation, but the agent has no DPOP_ASKPASS or SSH_ASKPASS to ask with",
            ));
        };
        let _one_at_a_time = self.asking.lock().await;
        // Asked meanwhile by the same client?
        if remembered(self) {
            return Ok(());
        }
        let question = format!(
            "Allow a DPoP proof with key \"{}\" for {}, asked by {} (pid {})?",
            request.label,
            request.origin,
            exe.display(),
            request.peer.pid.map_or("?".into(), |p| p.to_string()),
        );
        let yes = ask(&askpass, &question).await;
        if !yes {
            return Err(WireError::new(
                ErrorCode::ConfirmDenied,
                "the user did not confirm the signature",
            ));
        }
        if let Some(secs) = remember {
            self.confirmed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(remembered_key, Instant::now() + Duration::from_secs(secs));
        }
        Ok(())
    }
}

/// Runs the askpass program as ssh-agent does for a confirmation (`SSH_ASKPASS_PROMPT=confirm`,
/// the question as its argument): exit status 0 is yes; anything else, or no answer within
/// [`CONFIRM_TIMEOUT`], is no.
async fn ask(askpass: &Path, question: &str) -> bool {
    let child = tokio::process::Command::new(askpass)
        .arg(question)
        .env("SSH_ASKPASS_PROMPT", "confirm")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            warn!(askpass = %askpass.display(), error = %e, "could not run the askpass program");
            return false;
        }
    };
    match tokio::time::timeout(CONFIRM_TIMEOUT, child.wait()).await {
        Ok(Ok(status)) => status.success(),
        Ok(Err(e)) => {
            warn!(error = %e, "waiting for the askpass program");
            false
        }
        Err(_) => {
            warn!("no answer from the askpass program within {CONFIRM_TIMEOUT:?}: not signing");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_patterns() {
        let exact = OriginPattern::parse("https://API.example.com:443").unwrap();
        assert!(exact.matches("https://api.example.com"));
        assert!(!exact.matches("https://api.example.com:8443"));
        assert!(!exact.matches("http://api.example.com"));

        let sub = OriginPattern::parse("https://*.Example.com").unwrap();
        for yes in ["https://a.example.com", "https://a.b.example.com"] {
            assert!(sub.matches(yes), "{yes}");
        }
        for no in [
            "https://example.com",
            "https://aexample.com",
            "http://a.example.com",
            "https://a.example.com:8443",
            "https://a.example.com.evil.org",
        ] {
            assert!(!sub.matches(no), "{no}");
        }
        let port = OriginPattern::parse("http://*.local.test:8080").unwrap();
        assert!(port.matches("http://x.local.test:8080"));
        assert!(!port.matches("http://x.local.test"));

        for bad in [
            "api.example.com",
            "https://api.example.com/path",
            "https://a.*.example.com",
            "https://*example.com",
            "ftp://x.example.com",
        ] {
            let err = OriginPattern::parse(bad).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidPolicy, "{bad}");
        }
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
