//! The RFC 7512 PKCS#11 URI parser never panics on any text.
#![no_main]

use dpop_keys::pkcs11::Pkcs11Uri;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|uri: &str| {
    let _ = Pkcs11Uri::parse(uri);
});
