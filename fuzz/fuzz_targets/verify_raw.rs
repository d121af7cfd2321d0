//! `dpop_jose::verify` on raw bytes (seeded with valid proofs for `GET
//! https://server.example.com/token` at a fixed time): never panics, and a proof that verifies
//! once is a replay the second time.
#![no_main]

use std::num::NonZeroUsize;

use dpop_jose::{Error, ExpectedRequest, LruReplayStore, VerifyOptions, verify};
use libfuzzer_sys::fuzz_target;

const NOW: i64 = 1_800_000_000;

fuzz_target!(|proof: &str| {
    let request = ExpectedRequest {
        method: "GET",
        url: "https://server.example.com/token",
        access_token: None,
        jkt: None,
    };
    let replay = LruReplayStore::new(NonZeroUsize::new(2).unwrap());
    let options = VerifyOptions::default();
    if verify(proof, &request, &options, &(), &replay, NOW).is_ok() {
        assert!(matches!(
            verify(proof, &request, &options, &(), &replay, NOW),
            Err(Error::Replayed)
        ));
    }
});
