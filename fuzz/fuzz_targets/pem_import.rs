//! PEM import: the block finder and the PKCS#8 / SEC1 / PKCS#1 decoders never panic, and a key
//! they accept loads into the software backend (or is refused with an error, never a panic).
#![no_main]

use std::sync::OnceLock;

use dpop_keys::pem::parse_private_key_pem;
use dpop_keys::software::SoftwareBackend;
use dpop_keys::{BackendKind, KeyLabel, Keyring};
use libfuzzer_sys::fuzz_target;

fn keyring() -> &'static Keyring {
    static KEYRING: OnceLock<Keyring> = OnceLock::new();
    KEYRING.get_or_init(|| Keyring::new(vec![std::sync::Arc::new(SoftwareBackend::ephemeral())]))
}

fuzz_target!(|pem: &[u8]| {
    if parse_private_key_pem(pem).is_ok() {
        // The full import path, as `import_key` runs it; forget the key again so that the
        // keyring stays small.
        let label = KeyLabel::new("fuzz").expect("valid label");
        if keyring()
            .import_pem(BackendKind::Software, &label, pem, None)
            .is_ok()
        {
            keyring()
                .delete("fuzz")
                .expect("an imported key can be deleted");
        }
    }
});
