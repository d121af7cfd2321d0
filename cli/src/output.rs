//! What the commands print: JSON, tables, one key per line, short durations; and the
//! [`StdoutError`] that a closed output pipe turns into, so that `main` ends quietly then.

use std::time::{SystemTime, UNIX_EPOCH};

use dpop_protocol::{KeyDescription, KeyPolicy};

/// A failed write to standard output, kept apart from the agent socket's I/O errors so that
/// only a closed *output* pipe ends the command quietly.
#[derive(Debug, thiserror::Error)]
#[error("writing to standard output")]
pub(crate) struct StdoutError(#[source] pub(crate) std::io::Error);

impl StdoutError {
    pub(crate) fn is_closed_pipe(&self) -> bool {
        self.0.kind() == std::io::ErrorKind::BrokenPipe
    }
}

/// `println!` that returns a [`StdoutError`] instead of panicking when standard output is
/// gone (`dpop keys list | head -c1`).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*).map_err($crate::output::StdoutError)
    }};
}
pub(crate) use outln;

pub(crate) fn print_json(value: &impl serde::Serialize) -> Result<(), StdoutError> {
    outln!(
        "{}",
        serde_json::to_string_pretty(value).expect("JSON output serializes")
    )
}

/// `text` from a server, made safe for a terminal: control characters (C0, DEL and C1:
/// escape sequences, CR LF that forge a line, a bell) are shown as Rust escapes (`\u{1b}`,
/// `\n`), everything else as is. The one that OAuth errors are shown with.
pub(crate) use dpop_client::http::printable;

/// One key after a change: `{verb} LABEL (BACKEND ALG, jkt JKT)`, or the key as JSON. A key
/// that its token lets do more than sign gets a warning on standard error, which names what.
pub(crate) fn print_key(key: &KeyDescription, json: bool, verb: &str) -> Result<(), StdoutError> {
    if key.sign_only == Some(false) && verb != "deleted" {
        eprintln!(
            "dpop: warning: the token lets key {} also {}, not only sign: any program with the \
             token's PIN can use it so (the agent option --pkcs11-require-sign-only refuses \
             such keys)",
            key.label,
            printable(&key.other_uses.join(", "))
        );
    }
    if json {
        print_json(key)
    } else {
        outln!(
            "{verb} {} ({} {}, jkt {})",
            key.label,
            key.backend,
            key.alg,
            key.jkt
        )
    }
}

/// Prints rows under a header, each column as wide as its widest cell; the last column is not
/// padded.
pub(crate) fn print_table(header: &[&str], rows: &[Vec<String>]) -> Result<(), StdoutError> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len() - 1;
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == last {
                    (*c).to_owned()
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    outln!("{}", line(header.to_vec()))?;
    for row in rows {
        outln!("{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

/// The `SIGN-ONLY` cell of `keys list`: `yes`, `no (decrypt, unwrap)`, or `-` where the
/// backend makes every key sign-only or the token could not say.
pub(crate) fn sign_only_summary(key: &KeyDescription) -> String {
    match key.sign_only {
        Some(true) => "yes".to_owned(),
        Some(false) => format!("no ({})", printable(&key.other_uses.join(", "))),
        None => "-".to_owned(),
    }
}

/// A short summary of a policy for `keys list` and `keys policy`.
pub(crate) fn policy_summary(policy: &KeyPolicy) -> String {
    let mut parts = Vec::new();
    if !policy.allow_origins.is_empty() {
        parts.push(format!("origins={}", policy.allow_origins.join(",")));
    }
    if !policy.allow_clients.is_empty() {
        parts.push(format!("clients={}", policy.allow_clients.len()));
    }
    if let Some(at) = policy.expires_at {
        let left = at - unix_now();
        parts.push(if left <= 0 {
            "expired".to_owned()
        } else {
            format!("expires in {}", human_duration(left))
        });
    }
    if policy.confirm {
        parts.push("confirm".to_owned());
    }
    if parts.is_empty() {
        "-".to_owned()
    } else {
        parts.join(" ")
    }
}

/// `90s`, `5m`, `3h`, `2d`: the largest unit that leaves at least two of it.
pub(crate) fn human_duration(seconds: i64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// Seconds since the Unix epoch, the clock of policy expiries, tokens and proofs.
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(printable("ABCD-1234"), "ABCD-1234");
        assert_eq!(printable("é\u{1b}[2J\r\n\u{9b}x"), r"é\u{1b}[2J\r\n\u{9b}x");
    }
}
