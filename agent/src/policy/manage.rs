//! Managing a key that has a policy: what a client may do without asking, and the question
//! it needs otherwise.
//!
//! [`changes`] compares a key's policy with a proposed one, field by field, and says which
//! changes loosen it (let through some request the old policy refused). Tightening is free;
//! a loosening (a wider or removed origin or client list, `confirm` dropped, a longer or no
//! lifetime, a longer remembered yes), and deleting a key that has a policy, need the user's
//! yes through the askpass; a key with allowed clients may be managed at all only by those
//! programs, or with that yes. Without an askpass the request is refused and told why.

use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use dpop_protocol::{ErrorCode, KeyPolicy, WireError, printable};
use tracing::info;

use super::confirm::NO_ASKPASS;
use super::origin::OriginPattern;
use super::{Policies, changed_client};
use crate::lock::Lock;
use crate::peer::{Peer, same_executable};

/// One field that differs between two policies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// What changes, as the user reads it: `allow-client: /usr/bin/foo -> (any)`.
    pub text: String,
    /// Whether it lets through some request that the old policy refused.
    pub loosens: bool,
}

/// What differs from `old` to `new`, field by field (nothing when they are the same). Client
/// paths are compared as given: both sides are resolved before (see `Policies::prepare`).
pub fn changes(old: &KeyPolicy, new: &KeyPolicy) -> Vec<Change> {
    let mut out = Vec::new();
    let mut change = |field: &str, from: String, to: String, loosens: bool| {
        out.push(Change {
            text: format!("{field}: {from} -> {to}"),
            loosens,
        });
    };
    if old.allow_origins != new.allow_origins {
        let loosens = !old.allow_origins.is_empty()
            && (new.allow_origins.is_empty()
                || !new
                    .allow_origins
                    .iter()
                    .all(|o| origin_covered(o, &old.allow_origins)));
        change(
            "allow-origin",
            list(&old.allow_origins),
            list(&new.allow_origins),
            loosens,
        );
    }
    if old.allow_clients != new.allow_clients {
        let loosens = !old.allow_clients.is_empty()
            && (new.allow_clients.is_empty()
                || !new.allow_clients.iter().all(|c| {
                    old.allow_clients
                        .iter()
                        .any(|o| same_executable(Path::new(o), Path::new(c)))
                }));
        change(
            "allow-client",
            list(&old.allow_clients),
            list(&new.allow_clients),
            loosens,
        );
    }
    if old.expires_at != new.expires_at {
        let loosens = match (old.expires_at, new.expires_at) {
            (Some(_), None) => true,
            (Some(before), Some(after)) => after > before,
            (None, _) => false,
        };
        change(
            "expires",
            expiry(old.expires_at),
            expiry(new.expires_at),
            loosens,
        );
    }
    if old.confirm != new.confirm {
        change(
            "confirm",
            on_off(old.confirm),
            on_off(new.confirm),
            old.confirm && !new.confirm,
        );
    }
    // A remembered yes only means something with `confirm`; without it, nothing is asked.
    let remember = |p: &KeyPolicy| p.confirm.then(|| p.confirm_remember_secs.unwrap_or(0));
    if let (Some(before), Some(after)) = (remember(old), remember(new))
        && before != after
    {
        change(
            "confirm-remember",
            format!("{before} s"),
            format!("{after} s"),
            after > before,
        );
    }
    out
}

/// Whether every origin `pattern` allows, one of `old` allows too. A pattern that does not
/// parse is not covered (the caller refused it before anyway).
fn origin_covered(pattern: &str, old: &[String]) -> bool {
    let Ok(new) = OriginPattern::parse(pattern) else {
        return false;
    };
    old.iter()
        .filter_map(|o| OriginPattern::parse(o).ok())
        .any(|old| match (&old, &new) {
            (_, OriginPattern::Exact(origin)) => old.matches(origin),
            (
                OriginPattern::Subdomains { prefix, suffix },
                OriginPattern::Subdomains {
                    prefix: new_prefix,
                    suffix: new_suffix,
                },
            ) => {
                // `*.svc.example.com` is within `*.example.com`: suffixes start with a dot,
                // so the comparison is label by label (ports included).
                prefix == new_prefix && new_suffix.ends_with(suffix.as_str())
            }
            (OriginPattern::Exact(_), OriginPattern::Subdomains { .. }) => false,
        })
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "(any)".to_owned()
    } else {
        printable(&items.join(", ")).into_owned()
    }
}

fn on_off(on: bool) -> String {
    if on { "on" } else { "off" }.to_owned()
}

/// An expiry as an HTTP date (`Thu, 03 Dec 2026 16:40:00 GMT`), `(never)` without one.
fn expiry(at: Option<i64>) -> String {
    let Some(at) = at else {
        return "(never)".to_owned();
    };
    match u64::try_from(at) {
        Ok(secs) => httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs)),
        // Not something the agent writes; shown as it is rather than guessed at.
        Err(_) => format!("{at} s since 1970"),
    }
}

/// A request that changes a key's policy or deletes the key.
pub enum Manage<'a> {
    /// `set_policy` from `old` (the key's policy now) to `new` (prepared: paths resolved).
    SetPolicy {
        old: &'a KeyPolicy,
        new: &'a KeyPolicy,
    },
    /// `delete_key` of a key whose policy is `old`.
    Delete { old: &'a KeyPolicy },
}

impl Manage<'_> {
    fn old(&self) -> &KeyPolicy {
        match self {
            Manage::SetPolicy { old, .. } | Manage::Delete { old } => old,
        }
    }
}

impl Policies {
    /// Whether `peer` may make `change` to key `label`: free when it tightens (or changes
    /// nothing) and the peer is one of the key's allowed clients (or the key has none);
    /// otherwise only with the user's yes through the askpass, refused without one. Hold
    /// [`managing`](Self::managing) from before the old policy is read until the change is
    /// made, so that the user approves what happens.
    pub async fn authorize(
        &self,
        label: &str,
        peer: &Peer,
        lock: &Lock,
        change: &Manage<'_>,
    ) -> Result<(), WireError> {
        let old = change.old();
        let (op, what, loosening) = match change {
            Manage::SetPolicy { new, .. } => {
                let found = changes(old, new);
                if found.is_empty() {
                    return Ok(());
                }
                let text = found
                    .iter()
                    .map(|c| c.text.as_str())
                    .collect::<Vec<_>>()
                    .join("; ");
                let loosens = found.iter().any(|c| c.loosens);
                (
                    "set_policy",
                    format!(
                        "change the policy of DPoP key \"{}\": {text}",
                        printable(label)
                    ),
                    loosens,
                )
            }
            Manage::Delete { old } => {
                if old.is_empty() {
                    return Ok(());
                }
                (
                    "delete_key",
                    format!(
                        "delete DPoP key \"{}\", which has a policy ({})",
                        printable(label),
                        summary(old)
                    ),
                    true,
                )
            }
        };
        // Who asks, if its process still runs the program that connected.
        let exe = if old.allow_clients.is_empty() && !loosening {
            None
        } else {
            peer.verified_exe().map_err(|e| {
                let refused = changed_client(&e);
                audit_refused(op, label, peer, &refused);
                refused
            })?
        };
        let allowed_client = old.allow_clients.is_empty()
            || exe.is_some_and(|exe| {
                old.allow_clients
                    .iter()
                    .any(|c| same_executable(Path::new(c), exe))
            });
        if allowed_client && !loosening {
            return Ok(());
        }
        let program = exe.map_or_else(
            || "an unknown program".to_owned(),
            |p| printable(&p.to_string_lossy()).into_owned(),
        );
        let why = if !allowed_client {
            format!(
                "key \"{}\" may be managed only by {} or with the user's yes",
                printable(label),
                list(&old.allow_clients)
            )
        } else {
            format!("{what}: this loosens the key's policy and needs the user's yes")
        };
        if self.askpass.is_none() {
            let code = if allowed_client {
                ErrorCode::ConfirmDenied
            } else {
                ErrorCode::ClientNotAllowed
            };
            let refused = WireError::new(code, format!("{why}, but {NO_ASKPASS}"));
            audit_refused(op, label, peer, &refused);
            return Err(refused);
        }
        let question = || {
            format!(
                "Allow {program} (pid {}) to {what}?",
                peer.pid.map_or("?".into(), |p| p.to_string())
            )
        };
        let yes = self
            .ask_user(lock, question, || false)
            .await
            .inspect_err(|e| audit_refused(op, label, peer, e))?;
        if !yes {
            let refused = WireError::new(
                ErrorCode::ConfirmDenied,
                format!("the user did not allow this: {what}"),
            );
            audit_refused(op, label, peer, &refused);
            return Err(refused);
        }
        info!(target: "audit", key = %label, pid = peer.pid.unwrap_or(0), exe = %program, "{op} confirmed by the user");
        Ok(())
    }
}

/// A policy in one line, for the question before a key is deleted.
fn summary(policy: &KeyPolicy) -> String {
    let mut parts = Vec::new();
    if !policy.allow_origins.is_empty() {
        parts.push(format!("allow-origin {}", list(&policy.allow_origins)));
    }
    if !policy.allow_clients.is_empty() {
        parts.push(format!("allow-client {}", list(&policy.allow_clients)));
    }
    if policy.expires_at.is_some() {
        parts.push(format!("expires {}", expiry(policy.expires_at)));
    }
    if policy.confirm {
        parts.push("confirm".to_owned());
    }
    parts.join("; ")
}

fn audit_refused(op: &str, label: &str, peer: &Peer, refused: &WireError) {
    let exe = peer.exe().map_or_else(
        || "unknown".to_owned(),
        |p| printable(&p.to_string_lossy()).into_owned(),
    );
    info!(
        target: "audit",
        key = %label, pid = peer.pid.unwrap_or(0), exe = %exe,
        code = %refused.code, reason = %refused.message,
        "{op} refused"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loosens(old: &KeyPolicy, new: &KeyPolicy) -> bool {
        changes(old, new).iter().any(|c| c.loosens)
    }

    fn origins(list: &[&str]) -> KeyPolicy {
        KeyPolicy {
            allow_origins: list.iter().map(|s| (*s).to_owned()).collect(),
            ..KeyPolicy::default()
        }
    }

    fn clients(list: &[&str]) -> KeyPolicy {
        KeyPolicy {
            allow_clients: list.iter().map(|s| (*s).to_owned()).collect(),
            ..KeyPolicy::default()
        }
    }

    #[test]
    fn the_same_policy_changes_nothing() {
        let p = KeyPolicy {
            confirm: true,
            confirm_remember_secs: Some(60),
            expires_at: Some(100),
            ..origins(&["https://a.example"])
        };
        assert!(changes(&p, &p.clone()).is_empty());
        assert!(changes(&KeyPolicy::default(), &KeyPolicy::default()).is_empty());
    }

    #[test]
    fn origins_widened_or_removed_loosen() {
        let one = origins(&["https://api.example.com"]);
        let any = KeyPolicy::default();
        assert!(loosens(&one, &any));
        assert_eq!(
            changes(&one, &any)[0].text,
            "allow-origin: https://api.example.com -> (any)"
        );
        assert!(loosens(&one, &origins(&["https://evil.example"])));
        assert!(loosens(
            &one,
            &origins(&["https://api.example.com", "https://b.example"])
        ));
        assert!(loosens(&one, &origins(&["https://*.example.com"])));
        let sub = origins(&["https://*.example.com"]);
        assert!(loosens(&sub, &origins(&["https://*.com"])));
        assert!(loosens(&sub, &origins(&["https://example.com"])));
        assert!(loosens(&sub, &origins(&["http://a.example.com"])));
        // Narrower: free.
        assert!(!loosens(&any, &one));
        assert!(!loosens(&sub, &origins(&["https://api.example.com"])));
        assert!(!loosens(&sub, &origins(&["https://*.svc.example.com"])));
        assert!(!loosens(
            &origins(&["https://a.example", "https://b.example"]),
            &origins(&["https://b.example"])
        ));
        // Spelled differently, same origin (case, default port).
        assert!(!loosens(&one, &origins(&["https://API.example.com:443"])));
        // Not a subdomain at a label boundary.
        assert!(loosens(&sub, &origins(&["https://*.badexample.com"])));
    }

    #[test]
    fn clients_widened_or_removed_loosen() {
        let foo = clients(&["/usr/bin/foo"]);
        assert!(loosens(&foo, &KeyPolicy::default()));
        assert_eq!(
            changes(&foo, &KeyPolicy::default())[0].text,
            "allow-client: /usr/bin/foo -> (any)"
        );
        assert!(loosens(&foo, &clients(&["/usr/bin/bar"])));
        assert!(loosens(&foo, &clients(&["/usr/bin/foo", "/usr/bin/bar"])));
        assert!(!loosens(&KeyPolicy::default(), &foo));
        assert!(!loosens(&clients(&["/usr/bin/foo", "/usr/bin/bar"]), &foo));
        assert!(!loosens(
            &clients(&["/usr/bin/foo", "/usr/bin/bar"]),
            &clients(&["/usr/bin/bar", "/usr/bin/foo"])
        ));
    }

    #[test]
    fn a_longer_or_no_lifetime_loosens() {
        let at = |t: Option<i64>| KeyPolicy {
            expires_at: t,
            ..KeyPolicy::default()
        };
        assert!(loosens(&at(Some(100)), &at(None)));
        assert!(loosens(&at(Some(100)), &at(Some(101))));
        assert!(!loosens(&at(Some(100)), &at(Some(99))));
        assert!(!loosens(&at(None), &at(Some(100))));
        assert_eq!(
            changes(&at(Some(1_764_780_000)), &at(None))[0].text,
            "expires: Wed, 03 Dec 2025 16:40:00 GMT -> (never)"
        );
    }

    #[test]
    fn dropping_confirm_loosens() {
        let confirm = KeyPolicy {
            confirm: true,
            ..KeyPolicy::default()
        };
        assert!(loosens(&confirm, &KeyPolicy::default()));
        assert_eq!(
            changes(&confirm, &KeyPolicy::default())[0].text,
            "confirm: on -> off"
        );
        assert!(!loosens(&KeyPolicy::default(), &confirm));
    }

    #[test]
    fn remembering_longer_loosens() {
        let remember = |secs: Option<u64>| KeyPolicy {
            confirm: true,
            confirm_remember_secs: secs,
            ..KeyPolicy::default()
        };
        assert!(loosens(&remember(None), &remember(Some(60))));
        assert!(loosens(&remember(Some(60)), &remember(Some(61))));
        assert!(!loosens(&remember(Some(60)), &remember(Some(10))));
        assert!(!loosens(&remember(Some(60)), &remember(None)));
        assert_eq!(
            changes(&remember(None), &remember(Some(600)))[0].text,
            "confirm-remember: 0 s -> 600 s"
        );
        // Adding confirm with a remembered yes still asks more than before.
        assert!(!loosens(&KeyPolicy::default(), &remember(Some(600))));
    }

    #[test]
    fn one_loosening_among_tightenings_loosens() {
        let old = KeyPolicy {
            expires_at: Some(100),
            ..origins(&["https://a.example"])
        };
        let new = KeyPolicy {
            confirm: true,
            expires_at: Some(50),
            ..KeyPolicy::default()
        };
        let found = changes(&old, &new);
        assert_eq!(found.len(), 3, "{found:?}");
        assert_eq!(found.iter().filter(|c| c.loosens).count(), 1);
    }

    #[test]
    fn control_characters_in_a_change_are_escaped() {
        let found = changes(&clients(&["/tmp/x\ny"]), &KeyPolicy::default());
        assert_eq!(found[0].text, "allow-client: /tmp/x\\ny -> (any)");
    }

    #[test]
    fn dates() {
        assert_eq!(expiry(Some(0)), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(expiry(Some(951_782_400)), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(expiry(Some(-1)), "-1 s since 1970");
    }
}
