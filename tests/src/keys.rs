//! Key material made by openssl, as users make it, for import tests.

use std::path::Path;
use std::process::Command;

use crate::run_ok;

/// Writes a fresh EC P-256 key to `path` as `openssl ecparam -genkey -noout` does (SEC1 PEM).
pub fn openssl_ec_pem(path: &Path) {
    run_ok(
        Command::new("openssl")
            .args([
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
            ])
            .arg(path),
    );
}

/// Writes a fresh EC P-256 key to `path` as `openssl genpkey` does (PKCS#8 PEM).
pub fn openssl_pkcs8_ec_pem(path: &Path) {
    run_ok(
        Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
            ])
            .arg(path),
    );
}

/// Writes a fresh RSA 2048 key to `path` as `openssl genpkey` does (PKCS#8 PEM).
pub fn openssl_rsa_pem(path: &Path) {
    run_ok(
        Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(path),
    );
}

/// A field of `openssl pkey -text -noout` (`priv`, `pub`, `privateExponent`, `prime1`,
/// `modulus`) for the key in `pem`: the bytes of the colon-separated hex lines under `name:`,
/// without leading zero bytes. Panics when the field is missing or shorter than 16 bytes.
pub fn openssl_key_field(pem: &Path, name: &str) -> Vec<u8> {
    let text = String::from_utf8(
        run_ok(
            Command::new("openssl")
                .args(["pkey", "-text", "-noout", "-in"])
                .arg(pem),
        )
        .stdout,
    )
    .expect("openssl prints text");
    let mut lines = text.lines().skip_while(|l| *l != format!("{name}:"));
    assert!(lines.next().is_some(), "no {name}: in openssl's output");
    let hex: String = lines
        .take_while(|l| l.starts_with(' '))
        .flat_map(|l| l.trim().split(':'))
        .collect();
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect();
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    assert!(bytes.len() - start >= 16, "{name} is too short: {text}");
    bytes[start..].to_vec()
}
