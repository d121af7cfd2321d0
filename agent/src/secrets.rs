//! Secrets on their way into the agent, never through its command line or its environment:
//! where a backend's secret comes from ([`SecretFrom`], resolved by [`secret_from`]: a variable
//! read once and wiped, a file, the terminal), and the hand-over from the background start to
//! its detached child over the child's standard input (a pipe), so that no secret is ever in
//! the child's environment (`/proc/<pid>/environ`).
//!
//! The hand-over is, for each secret, a line `NAME LENGTH` and then `LENGTH` bytes of the
//! secret; then a line `end`. Lengths rather than lines, so that any byte may be in a secret.
//! Each backend names its own secret (`passphrase`, `pin`, `tpm_auth`); the names are taken
//! out by the backends' settings, and one nobody takes fails the start.

use std::io::{Read, Write};
use std::path::Path;

use anyhow::{Context, Result, bail};
use dpop_keys::BackendKind;
use dpop_keys::pkcs11::PinSource;
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

/// The most the hand-over may hold (far more than a passphrase and a PIN need).
const MAX_HAND_OVER: usize = 64 * 1024;

/// Where a backend's secret (a PKCS#11 PIN, a TPM auth value) comes from.
#[derive(Debug, Clone)]
pub enum SecretFrom {
    /// A file, read when the backend opens.
    Source(PinSource),
    /// The terminal.
    Prompt,
    /// Read already: from the variable (then wiped from our environment), or handed over by
    /// the background start.
    Read(SecretString),
    /// Read once and dropped after the backend opened with it ([`SecretFrom::forget`]).
    Forgotten,
}

impl SecretFrom {
    /// The secret for a child started in the background: one read already, or asked now at
    /// the terminal (which the detached child does not have); a file the child reads itself.
    pub fn for_child(
        &self,
        ask: impl FnOnce() -> Result<SecretString>,
    ) -> Result<Option<SecretString>> {
        match self {
            SecretFrom::Read(secret) => Ok(Some(secret.clone())),
            SecretFrom::Prompt => ask().map(Some),
            SecretFrom::Source(_) | SecretFrom::Forgotten => Ok(None),
        }
    }

    /// Drops a secret held here (the backend holds its own copy, sealed while the agent is
    /// locked; this one would outlive every lock). A file or prompt holds nothing.
    pub fn forget(&mut self) {
        if let SecretFrom::Read(_) = self {
            *self = SecretFrom::Forgotten;
        }
    }

    /// The secret, when the backend opens: `ask` at the terminal for [`SecretFrom::Prompt`]
    /// unless `terminal` is false (the background start should have handed it over).
    pub fn read(
        &self,
        backend: BackendKind,
        terminal: bool,
        ask: impl FnOnce() -> Result<SecretString>,
    ) -> Result<SecretString> {
        match self {
            SecretFrom::Source(source) => Ok(source.resolve_for(backend)?),
            SecretFrom::Read(secret) => Ok(secret.clone()),
            SecretFrom::Prompt if terminal => ask(),
            SecretFrom::Prompt => bail!(
                "the background start passed no {} {}",
                backend.title(),
                backend.secret()
            ),
            SecretFrom::Forgotten => bail!(
                "the {} {} was read at start-up and is no longer held",
                backend.title(),
                backend.secret()
            ),
        }
    }
}

/// Where a backend's secret comes from, given its settings (at most one of them; the caller
/// refuses several): the secret the background start handed over wins; a variable is read
/// now and wiped from the environment, failed or not; a file is read when the backend opens;
/// `prompt` asks at the terminal. `None`: no secret.
///
/// Call it only while this process has a single thread (the environment is not thread-safe).
pub fn secret_from(
    env: Option<&str>,
    file: Option<&Path>,
    prompt: bool,
    handed: Option<SecretString>,
    backend: BackendKind,
) -> Result<Option<SecretFrom>> {
    if let Some(secret) = handed {
        if let Some(var) = env {
            wipe_env_var(var);
        }
        return Ok(Some(SecretFrom::Read(secret)));
    }
    Ok(match (env, file) {
        (Some(var), _) => {
            let secret = PinSource::Env(var.to_owned()).resolve_for(backend);
            // Failed or not, the variable goes (and an unusable value with it).
            wipe_env_var(var);
            Some(SecretFrom::Read(secret?))
        }
        (None, Some(path)) => Some(SecretFrom::Source(PinSource::File(path.to_owned()))),
        (None, None) if prompt => Some(SecretFrom::Prompt),
        (None, None) => None,
    })
}

/// Asks for a secret at the terminal, without echo. `what` names it in messages;
/// `instead` says which settings avoid the prompt.
pub fn prompt(question: &str, what: &str, instead: &str) -> Result<SecretString> {
    let secret = rpassword::prompt_password(question)
        .with_context(|| format!("reading the {what} from the terminal (or use {instead})"))?;
    if secret.is_empty() {
        bail!("empty {what}");
    }
    Ok(SecretString::from(secret))
}

/// Reads a secret from a file, dropping one trailing newline. A file that group or others may
/// read gets a warning, as the PIN file does.
pub fn read_secret_file(path: &Path, what: &str) -> Result<SecretString> {
    let mut text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path)
            .with_context(|| format!("reading the {what} file {}", path.display()))?,
    );
    #[cfg(unix)]
    if let Ok(meta) = std::fs::metadata(path)
        && std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o077 != 0
    {
        tracing::warn!(path = %path.display(), "the {what} file is readable by group or others; chmod 600 it");
    }
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.is_empty() {
        bail!("the {what} file {} is empty", path.display());
    }
    Ok(SecretString::from(text.as_str()))
}

/// Reads the secret in environment variable `name`, then removes it from the environment with
/// its bytes overwritten (see `wipe_env_var`).
///
/// Call it only while this process has a single thread (the environment is not thread-safe).
pub fn take_env_secret(name: &str) -> Option<SecretString> {
    let value = std::env::var(name).ok().map(zeroize::Zeroizing::new);
    wipe_env_var(name);
    value
        .filter(|v| !v.is_empty())
        .map(|v| SecretString::from(v.as_str()))
}

/// Removes `name` from the environment after overwriting its value with zeros where it lies.
/// `remove_var` only unlinks the entry: the bytes stay in the block that the kernel shows in
/// `/proc/<pid>/environ`, for the process's whole life.
///
/// Call it only while this process has a single thread (the environment is not thread-safe).
#[cfg(unix)]
fn wipe_env_var(name: &str) {
    use zeroize::Zeroize;
    unsafe extern "C" {
        static mut environ: *mut *mut std::ffi::c_char;
    }
    let prefix_len = name.len() + 1;
    // SAFETY: single-threaded (see above), so nothing changes the environment meanwhile;
    // `environ` is a NULL-terminated array of NUL-terminated strings, and we write only inside
    // the value of each matching entry, before its terminating NUL.
    unsafe {
        let mut entry = environ;
        while !entry.is_null() && !(*entry).is_null() {
            let bytes = std::ffi::CStr::from_ptr(*entry).to_bytes();
            if bytes.len() >= prefix_len
                && bytes.starts_with(name.as_bytes())
                && bytes[name.len()] == b'='
            {
                let len = bytes.len() - prefix_len;
                std::slice::from_raw_parts_mut((*entry).add(prefix_len).cast::<u8>(), len)
                    .zeroize();
            }
            entry = entry.add(1);
        }
        std::env::remove_var(name);
    }
}

/// Removes `name` from the environment. Windows keeps the environment block in memory that
/// other users cannot read; the value is not overwritten there.
///
/// Call it only while this process has a single thread (the environment is not thread-safe).
#[cfg(windows)]
fn wipe_env_var(name: &str) {
    // SAFETY: single-threaded (see above).
    unsafe { std::env::remove_var(name) };
}

/// Secrets that the background start read (from its environment or the terminal) and handed
/// to its child over the child's standard input, so that they are never in the child's
/// environment; by name, each backend's own.
#[derive(Debug, Default)]
pub struct HandedSecrets(Vec<(String, SecretString)>);

impl HandedSecrets {
    /// Adds `name`'s secret, when there is one.
    pub fn put(&mut self, name: &str, secret: Option<SecretString>) {
        if let Some(secret) = secret {
            self.0.push((name.to_owned(), secret));
        }
    }

    /// Takes `name`'s secret out.
    pub fn take(&mut self, name: &str) -> Option<SecretString> {
        let i = self.0.iter().position(|(n, _)| n == name)?;
        Some(self.0.remove(i).1)
    }

    /// Fails on a secret that no backend took (a start from another version of the agent).
    pub fn check_all_taken(&self) -> Result<()> {
        match self.0.first() {
            Some((name, _)) => {
                bail!("unknown secret {name:?} in the background start's hand-over")
            }
            None => Ok(()),
        }
    }
}

/// Writes `secrets` for the child to [`receive`], in one write.
pub fn hand_over(mut out: impl Write, secrets: &HandedSecrets) -> std::io::Result<()> {
    let size = secrets
        .0
        .iter()
        .map(|(name, s)| name.len() + s.expose_secret().len() + 24)
        .sum::<usize>();
    // Sized up front: growing the buffer would leave copies of the secrets behind.
    let mut message = Zeroizing::new(Vec::with_capacity(size + 8));
    for (name, secret) in &secrets.0 {
        let bytes = secret.expose_secret().as_bytes();
        writeln!(message, "{name} {}", bytes.len())?;
        message.extend_from_slice(bytes);
    }
    message.extend_from_slice(b"end\n");
    out.write_all(&message)?;
    out.flush()
}

/// In the detached child: its secrets, from the pipe on its standard input (read unbuffered,
/// so no copy stays in a buffer we cannot wipe); standard input is /dev/null afterwards.
#[cfg(unix)]
pub fn receive_on_stdin() -> Result<HandedSecrets> {
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: descriptor 0 is open for the process's life; ManuallyDrop never closes it.
    let stdin = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(0) });
    let handed = receive(&*stdin)?;
    let null = std::fs::File::open("/dev/null")?;
    // SAFETY: dup2 onto standard input from a file we own.
    unsafe { libc::dup2(null.as_raw_fd(), 0) };
    Ok(handed)
}

/// Reads what [`hand_over`] wrote, up to the end of the pipe.
pub fn receive(input: impl Read) -> Result<HandedSecrets> {
    let mut message = Zeroizing::new(Vec::with_capacity(MAX_HAND_OVER + 1));
    input
        .take(MAX_HAND_OVER as u64 + 1)
        .read_to_end(&mut message)
        .context("reading the secrets from the background start")?;
    if message.len() > MAX_HAND_OVER {
        bail!("the background start handed over more than {MAX_HAND_OVER} bytes");
    }
    parse(&message)
}

fn parse(mut rest: &[u8]) -> Result<HandedSecrets> {
    let mut secrets = HandedSecrets::default();
    loop {
        let newline = rest
            .iter()
            .position(|&b| b == b'\n')
            .context("the background start's hand-over ends early")?;
        let header = std::str::from_utf8(&rest[..newline])
            .context("malformed hand-over from the background start")?;
        rest = &rest[newline + 1..];
        if header == "end" {
            return Ok(secrets);
        }
        let (name, len) = header
            .split_once(' ')
            .and_then(|(name, len)| Some((name, len.parse::<usize>().ok()?)))
            .context("malformed hand-over from the background start")?;
        if len > rest.len() {
            bail!("the background start's hand-over ends early");
        }
        let secret = std::str::from_utf8(&rest[..len])
            .map(SecretString::from)
            .with_context(|| format!("the handed-over {name} is not valid UTF-8"))?;
        rest = &rest[len..];
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            bail!("malformed secret name {name:?} in the background start's hand-over");
        }
        if secrets.0.iter().any(|(n, _)| n == name) {
            bail!("the background start handed over {name} twice");
        }
        secrets.0.push((name.to_owned(), secret));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_over_round_trip() {
        let mut sent = HandedSecrets::default();
        sent.put(
            "passphrase",
            Some(SecretString::from("pass\nphrase with end\n")),
        );
        sent.put("pin", Some(SecretString::from("12 34")));
        sent.put("tpm_auth", Some(SecretString::from("tpm\0auth")));
        sent.put("none", None);
        let mut pipe = Vec::new();
        hand_over(&mut pipe, &sent).unwrap();
        let mut got = receive(pipe.as_slice()).unwrap();
        assert_eq!(
            got.take("passphrase").unwrap().expose_secret(),
            "pass\nphrase with end\n"
        );
        assert_eq!(got.take("pin").unwrap().expose_secret(), "12 34");
        assert!(got.check_all_taken().is_err(), "tpm_auth is left");
        assert_eq!(got.take("tpm_auth").unwrap().expose_secret(), "tpm\0auth");
        assert!(got.take("none").is_none());
        got.check_all_taken().unwrap();

        let mut pipe = Vec::new();
        hand_over(&mut pipe, &HandedSecrets::default()).unwrap();
        let none = receive(pipe.as_slice()).unwrap();
        assert!(none.0.is_empty());
    }

    #[test]
    fn truncated_or_malformed_hand_over_is_refused() {
        for bad in [
            &b""[..],
            b"pin 10\n123",
            b"pin x\n",
            b"Key 1\nx\nend\n",
            b"pin 1\nxpin 1\nyend\n",
            b"pin 1\nx",
        ] {
            assert!(receive(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        // A name no backend takes is refused once the backends took theirs.
        let unknown = receive(&b"key 1\nxend\n"[..]).unwrap();
        let err = unknown.check_all_taken().unwrap_err().to_string();
        assert!(err.contains("unknown secret \"key\""), "{err}");
    }
}
