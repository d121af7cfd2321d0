//! Confirm-on-use: before a key with `confirm` signs, the agent asks the user through an
//! askpass program, as ssh-agent does for `ssh-add -c` keys; a yes may be remembered for a
//! while for the same client.
//!
//! At most [`MAX_WAITING`] signatures wait for an answer at a time (one is asked, the others
//! queue); one more is refused with `busy`. A `lock` ends every wait with `locked` and kills the
//! askpass program on the screen.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dpop_protocol::{ErrorCode, WireError};
use tracing::{info, warn};

use super::{Policies, SignContext};

/// How long the askpass program has to answer; no answer is a no.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(60);

/// How many signatures may wait for confirmation at once.
pub(super) const MAX_WAITING: usize = 8;

/// The longest a yes may be remembered: a year.
pub(super) const MAX_REMEMBER_SECS: u64 = 365 * 24 * 60 * 60;

impl Policies {
    /// Asks the user whether `request` may be signed (unless a yes for its client is
    /// remembered); remembers a yes for `remember` seconds.
    pub(super) async fn confirm(
        &self,
        request: &SignContext<'_>,
        remember: Option<u64>,
    ) -> Result<(), WireError> {
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
        let Ok(_waiting) = self.waiting.try_acquire() else {
            return Err(WireError::new(
                ErrorCode::Busy,
                format!(
                    "{MAX_WAITING} signatures already wait for the user's confirmation; try again later"
                ),
            ));
        };
        let locked = request.lock.until_locked();
        let asked = async {
            let _one_at_a_time = self.asking.lock().await;
            // Asked meanwhile by the same client?
            if remembered(self) {
                return true;
            }
            let question = format!(
                "Allow a DPoP proof with key \"{}\" for {}, asked by {} (pid {})?",
                request.label,
                escape_controls(request.origin),
                escape_controls(&exe.to_string_lossy()),
                request.peer.pid.map_or("?".into(), |p| p.to_string()),
            );
            ask(&askpass, &question).await
        };
        // A lock meanwhile drops `asked`, and with it the askpass (killed on drop).
        let yes = tokio::select! {
            biased;
            () = locked => {
                info!(key = %request.label, "agent locked: the confirmation is cancelled");
                return Err(WireError::new(
                    ErrorCode::Locked,
                    "the agent was locked while the signature waited for confirmation",
                ));
            }
            yes = asked => yes,
        };
        if !yes {
            return Err(WireError::new(
                ErrorCode::ConfirmDenied,
                "the user did not confirm the signature",
            ));
        }
        // Locked while the user answered: no signature. Only a confirmation waits, so only it
        // checks again; every other signature was checked just before its policy.
        request.lock.check()?;
        // Policies bound `remember`; a clock near its end forgets instead of overflowing.
        if let Some(until) = remember.and_then(|secs| {
            Instant::now().checked_add(Duration::from_secs(secs.min(MAX_REMEMBER_SECS)))
        }) {
            self.confirmed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(remembered_key, until);
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

/// `text` with every control character (a newline, an escape sequence) written as an escape,
/// so a program path or origin cannot make the question say something else.
fn escape_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape_controls("/usr/bin/ok"), "/usr/bin/ok");
        assert_eq!(
            escape_controls("/tmp/x\nAllow /usr/bin/ssh\u{1b}[2K"),
            "/tmp/x\\nAllow /usr/bin/ssh\\u{1b}[2K"
        );
        assert_eq!(escape_controls("caf\u{e9}\t"), "caf\u{e9}\\t");
    }
}
