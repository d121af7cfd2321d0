//! What the commands read: secrets from files or standard input (wiped when dropped), request
//! bodies, passphrases and yes/no answers at the terminal.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::Path;

use anyhow::{Context, Result, bail};
use zeroize::Zeroizing;

/// A token (access or refresh) from a file or `-`, without surrounding white space; an empty
/// one is refused.
pub(crate) fn read_token_file(path: &Path, what: &str) -> Result<Zeroizing<String>> {
    let text = read_input(path, what)?;
    let token = text.trim();
    if token.is_empty() {
        bail!("the {what} file {} is empty", path.display());
    }
    Ok(Zeroizing::new(token.to_owned()))
}

/// Reads a secret (a private key, an access token) from a file or `-` (standard input) into
/// a buffer that is wiped when dropped. A file is read into a buffer of its size, so that no
/// reallocation leaves a partial copy behind.
pub(crate) fn read_input(path: &Path, what: &str) -> Result<Zeroizing<String>> {
    let mut bytes = Zeroizing::new(Vec::new());
    let source = if path.as_os_str() == "-" {
        std::io::stdin()
            .read_to_end(&mut bytes)
            .with_context(|| format!("reading the {what} from standard input"))?;
        "standard input".to_owned()
    } else {
        let mut file = std::fs::File::open(path)
            .with_context(|| format!("reading the {what} from {}", path.display()))?;
        let size = file.metadata().map_or(0, |m| m.len());
        bytes.reserve_exact(usize::try_from(size).unwrap_or(0).saturating_add(1));
        file.read_to_end(&mut bytes)
            .with_context(|| format!("reading the {what} from {}", path.display()))?;
        path.display().to_string()
    };
    match String::from_utf8(std::mem::take(&mut *bytes)) {
        Ok(text) => Ok(Zeroizing::new(text)),
        Err(e) => {
            drop(Zeroizing::new(e.into_bytes()));
            let hint = match what {
                "private key" => {
                    ": expected PEM (a binary DER key converts with: openssl pkey -inform DER \
                     -in KEY.der | dpop keys import - --label L)"
                }
                _ => "",
            };
            bail!("the {what} from {source} is not UTF-8 text{hint}")
        }
    }
}

/// The body of -d / --data-binary: the text itself, `@FILE`, or `@-` for standard input.
pub(crate) fn read_body(arg: &str, what: &str) -> Result<Vec<u8>> {
    match arg.strip_prefix('@') {
        Some("-") => {
            let mut body = Vec::new();
            std::io::stdin()
                .read_to_end(&mut body)
                .with_context(|| format!("reading the {what} from standard input"))?;
            Ok(body)
        }
        Some(path) => {
            std::fs::read(path).with_context(|| format!("reading the {what} from {path}"))
        }
        None => Ok(arg.as_bytes().to_vec()),
    }
}

/// A passphrase from the terminal (asked twice to lock, so a typo does not lock the agent
/// for good), or the first line of standard input when it is not a terminal.
pub(crate) fn read_passphrase(prompt: &str, confirm: bool) -> Result<Zeroizing<String>> {
    if !std::io::stdin().is_terminal() {
        let mut line = Zeroizing::new(String::new());
        std::io::stdin()
            .read_line(&mut line)
            .context("reading the passphrase from standard input")?;
        let passphrase = Zeroizing::new(line.trim_end_matches(['\r', '\n']).to_owned());
        if passphrase.is_empty() {
            bail!("no passphrase on standard input");
        }
        return Ok(passphrase);
    }
    let first =
        Zeroizing::new(rpassword::prompt_password(prompt).context("reading the passphrase")?);
    if confirm {
        let again = Zeroizing::new(
            rpassword::prompt_password("Again: ").context("reading the passphrase")?,
        );
        if *again != *first {
            bail!("the passphrases differ; the agent stays unlocked");
        }
    }
    if first.is_empty() {
        bail!("an empty passphrase");
    }
    Ok(first)
}

/// Whether a person can be asked: standard input is a terminal.
pub(crate) fn interactive() -> bool {
    std::io::stdin().is_terminal()
}

/// Asks `question` on standard error and reads the answer from standard input: true for
/// `y`, `Y` or `yes`, false for anything else (the default is no).
pub(crate) fn confirm(question: &str) -> Result<bool> {
    eprint!("{question} [y/N] ");
    std::io::stderr().flush().ok();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}
