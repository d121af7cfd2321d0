//! Secrets on their way into the agent without its environment: the PKCS#11 PIN asked at the
//! terminal, and the hand-over from the background start to its detached child over the
//! child's standard input (a pipe), so that no secret is ever in the child's environment
//! (`/proc/<pid>/environ`).
//!
//! The hand-over is, for each secret, a line `NAME LENGTH` and then `LENGTH` bytes of the
//! secret; then a line `end`. Lengths rather than lines, so that any byte may be in a secret.

use std::io::{Read, Write};

use anyhow::{Context, Result, bail};
use dpop_keys::pkcs11::TokenSelector;
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use crate::config::HandedSecrets;

/// The most the hand-over may hold (far more than a passphrase and a PIN need).
const MAX_HAND_OVER: usize = 64 * 1024;

/// Asks at the terminal, without echo.
pub fn prompt(token: &TokenSelector) -> Result<SecretString> {
    let pin = rpassword::prompt_password(format!("PIN for the PKCS#11 {token}: ")).context(
        "reading the PIN from the terminal (or use --pkcs11-pin-env / --pkcs11-pin-file)",
    )?;
    if pin.is_empty() {
        bail!("empty PIN");
    }
    Ok(SecretString::from(pin))
}

/// Asks for the TPM keys' auth value at the terminal, without echo.
pub fn prompt_tpm_auth() -> Result<SecretString> {
    let auth = rpassword::prompt_password("Auth value for the TPM keys: ").context(
        "reading the TPM auth value from the terminal (or use --tpm-auth-env / --tpm-auth-file)",
    )?;
    if auth.is_empty() {
        bail!("empty TPM auth value");
    }
    Ok(SecretString::from(auth))
}

/// Writes `secrets` for the child to [`receive`], in one write.
pub fn hand_over(mut out: impl Write, secrets: &HandedSecrets) -> std::io::Result<()> {
    let fields = [
        ("passphrase", &secrets.passphrase),
        ("pin", &secrets.pin),
        ("tpm_auth", &secrets.tpm_auth),
    ];
    let size = fields
        .iter()
        .filter_map(|(_, s)| s.as_ref())
        .map(|s| s.expose_secret().len() + 32)
        .sum::<usize>();
    // Sized up front: growing the buffer would leave copies of the secrets behind.
    let mut message = Zeroizing::new(Vec::with_capacity(size + 8));
    for (name, secret) in fields {
        if let Some(secret) = secret {
            let bytes = secret.expose_secret().as_bytes();
            writeln!(message, "{name} {}", bytes.len())?;
            message.extend_from_slice(bytes);
        }
    }
    message.extend_from_slice(b"end\n");
    out.write_all(&message)?;
    out.flush()
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
        match name {
            "passphrase" => secrets.passphrase = Some(secret),
            "pin" => secrets.pin = Some(secret),
            "tpm_auth" => secrets.tpm_auth = Some(secret),
            other => bail!("unknown secret {other:?} in the background start's hand-over"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_over_round_trip() {
        let sent = HandedSecrets {
            passphrase: Some(SecretString::from("pass\nphrase with end\n")),
            pin: Some(SecretString::from("12 34")),
            tpm_auth: Some(SecretString::from("tpm\0auth")),
        };
        let mut pipe = Vec::new();
        hand_over(&mut pipe, &sent).unwrap();
        let got = receive(pipe.as_slice()).unwrap();
        assert_eq!(
            got.passphrase.unwrap().expose_secret(),
            "pass\nphrase with end\n"
        );
        assert_eq!(got.pin.unwrap().expose_secret(), "12 34");
        assert_eq!(got.tpm_auth.unwrap().expose_secret(), "tpm\0auth");

        let mut pipe = Vec::new();
        hand_over(&mut pipe, &HandedSecrets::default()).unwrap();
        let none = receive(pipe.as_slice()).unwrap();
        assert!(none.passphrase.is_none() && none.pin.is_none() && none.tpm_auth.is_none());
    }

    #[test]
    fn truncated_or_malformed_hand_over_is_refused() {
        for bad in [
            &b""[..],
            b"pin 10\n123",
            b"pin x\n",
            b"key 1\nx\nend\n",
            b"pin 1\nx",
        ] {
            assert!(receive(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
