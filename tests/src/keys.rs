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
