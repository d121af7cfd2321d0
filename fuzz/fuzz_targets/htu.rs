//! htu rules: `Htu::from_url` and `normalize_uri` never panic, and what they return is stable:
//! an `Htu` parses again to itself, and normalizing is idempotent.
#![no_main]

use dpop_jose::{Htu, normalize_uri};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|url: &str| {
    if let Ok(htu) = Htu::from_url(url) {
        let again = Htu::from_url(htu.as_str()).expect("an htu is a valid URL");
        assert_eq!(again, htu, "from_url is not idempotent");
        let origin = htu.origin();
        assert!(htu.as_str().starts_with(origin));
    }
    if let Ok(normalized) = normalize_uri(url) {
        let again = normalize_uri(&normalized).expect("a normalized URI is a valid URL");
        assert_eq!(again, normalized, "normalize_uri is not idempotent");
    }
});
