//! Confirm-on-use: before a key with `confirm` signs, the agent asks the user through an
//! askpass program, as ssh-agent does for `ssh-add -c` keys; a yes may be remembered for a
//! while for the same client process (never for a later process under the same pid).
//! [`Policies::ask_user`] is the one way the agent asks anything: also for the policy
//! changes and deletions that need the user's yes (`manage.rs`).
//!
//! At most [`MAX_WAITING`] signatures wait for an answer at a time (one is asked, the others
//! queue); one more is refused with `busy`. A `lock` ends every wait with `locked` and kills the
//! askpass program on the screen.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dpop_protocol::{ErrorCode, WireError, printable};
use tracing::{info, warn};

use super::{Policies, SignContext};
use crate::lock::Lock;

/// How long the askpass program has to answer; no answer is a no.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(60);

/// How many signatures may wait for confirmation at once.
pub(super) const MAX_WAITING: usize = 8;

/// The longest a yes may be remembered: a year (the CLI checks the same bound).
pub(super) const MAX_REMEMBER_SECS: u64 = dpop_protocol::MAX_CONFIRM_REMEMBER_SECS;

/// The refusal when a question cannot be asked: no askpass program is configured.
pub(super) const NO_ASKPASS: &str = "the agent has no DPOP_ASKPASS or SSH_ASKPASS to ask with";

impl Policies {
    /// Asks the user whether `request` may be signed (unless a yes for its client is
    /// remembered); remembers a yes for `remember` seconds, for that client process only.
    pub(super) async fn confirm(
        &self,
        request: &SignContext<'_>,
        remember: Option<u64>,
    ) -> Result<(), WireError> {
        // The program that connected, if the process still runs it: a yes is for it.
        let exe = request
            .peer
            .verified_exe()
            .map_err(|e| super::changed_client(&e))?
            .map_or_else(|| PathBuf::from("?"), Path::to_owned);
        let process = request.peer.process();
        let remembered_key = (request.label.to_owned(), process.key(), exe.clone());
        let remembered = |this: &Policies| {
            this.confirmed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&remembered_key)
                // Only while the process it was given to lives: a later process under its pid
                // has another start time, and the one that got the yes has exited.
                .is_some_and(|(until, who)| Instant::now() < *until && !who.exited())
        };
        if remembered(self) {
            return Ok(());
        }
        if self.askpass.is_none() {
            return Err(WireError::new(
                ErrorCode::ConfirmDenied,
                format!("key needs confirmation, but {NO_ASKPASS}"),
            ));
        }
        let question = || {
            format!(
                "Allow a DPoP proof with key \"{}\" for {}, asked by {} (pid {})?",
                printable(request.label),
                printable(request.origin),
                printable(&exe.to_string_lossy()),
                request.peer.pid.map_or("?".into(), |p| p.to_string()),
            )
        };
        let yes = self
            .ask_user(request.lock, question, || remembered(self))
            .await?;
        if !yes {
            return Err(WireError::new(
                ErrorCode::ConfirmDenied,
                "the user did not confirm the signature",
            ));
        }
        // Policies bound `remember`; a clock near its end forgets instead of overflowing.
        if let Some(until) = remember.and_then(|secs| {
            Instant::now().checked_add(Duration::from_secs(secs.min(MAX_REMEMBER_SECS)))
        }) {
            let now = Instant::now();
            let mut confirmed = self.confirmed.lock().unwrap_or_else(|p| p.into_inner());
            // Room for the new answer: none kept for processes gone or answers expired.
            confirmed.retain(|_, (until, who)| now < *until && !who.exited());
            confirmed.insert(remembered_key, (until, process.clone()));
        }
        Ok(())
    }

    /// Asks the user `question` through the askpass program (which must be configured): one
    /// question on the screen at a time, at most [`MAX_WAITING`] waiting (one more is `busy`),
    /// a `lock` meanwhile ends the wait with `locked` and kills the askpass. `answered`
    /// says, once it is this question's turn, whether the answer is known already (a yes
    /// remembered meanwhile). True for yes; after a yes the lock is checked again.
    pub(super) async fn ask_user(
        &self,
        lock: &Lock,
        question: impl FnOnce() -> String,
        answered: impl FnOnce() -> bool,
    ) -> Result<bool, WireError> {
        let Some(askpass) = self.askpass.clone() else {
            return Err(WireError::new(ErrorCode::ConfirmDenied, NO_ASKPASS));
        };
        let Ok(_waiting) = self.waiting.try_acquire() else {
            return Err(WireError::new(
                ErrorCode::Busy,
                format!(
                    "{MAX_WAITING} requests already wait for the user's confirmation; try again later"
                ),
            ));
        };
        let locked = lock.until_locked();
        let asked = async {
            let _one_at_a_time = self.asking.lock().await;
            if answered() {
                return true;
            }
            ask(&askpass, &question()).await
        };
        // A lock meanwhile drops `asked`, and with it the askpass (killed on drop).
        let yes = tokio::select! {
            biased;
            () = locked => {
                info!("agent locked: the confirmation is cancelled");
                return Err(WireError::new(
                    ErrorCode::Locked,
                    "the agent was locked while the request waited for confirmation",
                ));
            }
            yes = asked => yes,
        };
        // Locked while the user answered: nothing is done. Only a confirmation waits, so only
        // it checks again; every other request was checked just before its policy.
        if yes {
            lock.check()?;
        }
        Ok(yes)
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
