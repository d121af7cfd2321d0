//! Confirm-on-use: before a key with `confirm` signs, the agent asks the user through an
//! askpass program, as ssh-agent does for `ssh-add -c` keys; a yes may be remembered for a
//! while for the same client.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dpop_protocol::{ErrorCode, WireError};
use tracing::warn;

use super::{Policies, SignContext};

/// How long the askpass program has to answer; no answer is a no.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(60);

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
