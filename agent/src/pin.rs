//! The PKCS#11 PIN when no file or variable holds it: asked at the terminal, or, in a detached
//! agent, read from the pipe that the background start wrote it to.

use std::io::BufRead;

use anyhow::{Context, Result, bail};
use dpop_keys::pkcs11::TokenSelector;
use secrecy::SecretString;

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

/// Reads the one line the background start passed on standard input.
pub fn read_line(mut input: impl BufRead) -> Result<SecretString> {
    let mut line = zeroize::Zeroizing::new(String::new());
    input.read_line(&mut line)?;
    let pin = line.trim_end_matches(['\r', '\n']);
    if pin.is_empty() {
        bail!("no PIN was passed to the background agent");
    }
    Ok(SecretString::from(pin))
}
