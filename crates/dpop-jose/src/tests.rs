//! Sign-then-verify tests over real aws-lc-rs keys, every RFC 9449 section 4.3 check, and
//! property tests: every proof we sign verifies, and any single changed byte makes it fail.

use std::num::NonZeroUsize;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::*;

const NOW: i64 = 1_800_000_000;
const URL: &str = "https://server.example.com/token";

enum TestKey {
    Ec(EcdsaKeyPair, ProofHeader),
    Ed(Ed25519KeyPair, ProofHeader),
    Rsa(RsaKeyPair, &'static dyn signature::RsaEncoding, ProofHeader),
}

#[derive(Debug)]
struct Never;
impl std::fmt::Display for Never {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("never")
    }
}
impl std::error::Error for Never {}

impl TestKey {
    fn new(alg: Algorithm) -> TestKey {
        match alg {
            Algorithm::ES256 | Algorithm::ES384 => {
                let ec = if alg == Algorithm::ES256 {
                    &signature::ECDSA_P256_SHA256_FIXED_SIGNING
                } else {
                    &signature::ECDSA_P384_SHA384_FIXED_SIGNING
                };
                let k = EcdsaKeyPair::generate(ec).unwrap();
                let jwk = Jwk::from_ec_point(k.public_key().as_ref()).unwrap();
                TestKey::Ec(k, ProofHeader::new(alg, &jwk).unwrap())
            }
            Algorithm::EdDSA => {
                let k = Ed25519KeyPair::generate().unwrap();
                let jwk = Jwk::from_ed25519(k.public_key().as_ref().try_into().unwrap());
                TestKey::Ed(k, ProofHeader::new(alg, &jwk).unwrap())
            }
            Algorithm::RS256 | Algorithm::PS256 => {
                let k = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
                let p = k.public_key();
                let jwk = Jwk::from_rsa(
                    p.modulus().big_endian_without_leading_zero(),
                    p.exponent().big_endian_without_leading_zero(),
                );
                let enc: &'static dyn signature::RsaEncoding = if alg == Algorithm::PS256 {
                    &signature::RSA_PSS_SHA256
                } else {
                    &signature::RSA_PKCS1_SHA256
                };
                TestKey::Rsa(k, enc, ProofHeader::new(alg, &jwk).unwrap())
            }
        }
    }

    fn raw_sign(&self, message: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match self {
            TestKey::Ec(k, _) => k.sign(&rng, message).unwrap().as_ref().to_vec(),
            TestKey::Ed(k, _) => k.sign(message).as_ref().to_vec(),
            TestKey::Rsa(k, enc, _) => {
                let mut sig = vec![0; k.public_modulus_len()];
                k.sign(*enc, &rng, message, &mut sig).unwrap();
                sig
            }
        }
    }

    fn jwk(&self) -> Value {
        let h = b64url_decode(self.header().encoded()).unwrap();
        serde_json::from_slice::<Value>(&h).unwrap()["jwk"].clone()
    }

    /// Signs arbitrary header and claims JSON, for proofs our builder would never make.
    fn sign_raw(&self, header: &Value, claims: &Value) -> String {
        self.sign_text(&header.to_string(), &claims.to_string())
    }

    /// Signs header and claims given as JSON text (which may repeat member names).
    fn sign_text(&self, header: &str, claims: &str) -> String {
        let input = format!("{}.{}", b64url_encode(header), b64url_encode(claims));
        let sig = self.raw_sign(input.as_bytes());
        format!("{input}.{}", b64url_encode(sig))
    }
}

impl Signer for TestKey {
    type Error = Never;
    fn header(&self) -> &ProofHeader {
        match self {
            TestKey::Ec(_, h) | TestKey::Ed(_, h) | TestKey::Rsa(_, _, h) => h,
        }
    }
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Never> {
        Ok(self.raw_sign(message))
    }
}

fn claims(method: &str, url: &str) -> Claims {
    Claims::new(
        &Method::new(method).unwrap(),
        &Htu::from_url(url).unwrap(),
        NOW,
    )
}

fn store() -> LruReplayStore {
    LruReplayStore::new(NonZeroUsize::new(1000).unwrap())
}

fn request<'a>(method: &'a str, url: &'a str) -> ExpectedRequest<'a> {
    ExpectedRequest {
        method,
        url,
        access_token: None,
        jkt: None,
    }
}

fn check(proof: &str, req: &ExpectedRequest<'_>) -> Result<VerifiedProof, Error> {
    verify(proof, req, &VerifyOptions::default(), &(), &store(), NOW)
}

#[test]
fn every_algorithm_signs_and_verifies() {
    for alg in Algorithm::ALL {
        let key = TestKey::new(alg);
        let c = claims("POST", URL).with_access_token("tok").unwrap();
        let proof = sign_proof(&key, &c).unwrap();
        let req = ExpectedRequest {
            access_token: Some("tok"),
            ..request("POST", URL)
        };
        let ok = check(&proof, &req).unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(ok.alg, alg);
        assert_eq!(ok.claims, c);
        assert_eq!(ok.jkt, ok.jwk.thumbprint());
    }
}

#[test]
fn header_checks() {
    let key = TestKey::new(Algorithm::ES256);
    let c = serde_json::to_value(claims("GET", URL)).unwrap();
    let jwk = key.jwk();
    let cases = [
        (json!({"typ":"JWT","alg":"ES256","jwk":jwk}), "typ"),
        (json!({"alg":"ES256","jwk":jwk}), "typ"),
        (json!({"typ":"dpop+jwt","alg":"none","jwk":jwk}), "alg"),
        (json!({"typ":"dpop+jwt","alg":"HS256","jwk":jwk}), "alg"),
        (json!({"typ":"dpop+jwt","alg":"RS256","jwk":jwk}), "alg/key"),
        (json!({"typ":"dpop+jwt","alg":"ES256"}), "jwk"),
        (json!({"typ":"dpop+jwt","alg":"ES256","jwk":"x"}), "jwk"),
    ];
    for (header, what) in cases {
        let proof = key.sign_raw(&header, &c);
        assert!(
            check(&proof, &request("GET", URL)).is_err(),
            "{what}: {header}"
        );
    }
    // A private member in the jwk is refused by name.
    let mut with_d = jwk.clone();
    with_d["d"] = json!("AAAA");
    let proof = key.sign_raw(&json!({"typ":"dpop+jwt","alg":"ES256","jwk":with_d}), &c);
    assert!(matches!(
        check(&proof, &request("GET", URL)),
        Err(Error::PrivateKeyInJwk { member }) if member == "d"
    ));
    // A different key's jwk: the signature no longer verifies.
    let other = TestKey::new(Algorithm::ES256).jwk();
    let proof = key.sign_raw(&json!({"typ":"dpop+jwt","alg":"ES256","jwk":other}), &c);
    assert!(matches!(
        check(&proof, &request("GET", URL)),
        Err(Error::BadSignature)
    ));
    // The algorithm allow-list is honoured.
    let proof = sign_proof(&key, &claims("GET", URL)).unwrap();
    let opts = VerifyOptions {
        algorithms: vec![Algorithm::EdDSA],
        ..VerifyOptions::default()
    };
    assert!(matches!(
        verify(&proof, &request("GET", URL), &opts, &(), &store(), NOW),
        Err(Error::UnsupportedAlgorithm { .. })
    ));
}

#[test]
fn structure_checks() {
    let key = TestKey::new(Algorithm::ES256);
    let proof = sign_proof(&key, &claims("GET", URL)).unwrap();
    let req = request("GET", URL);
    for bad in [
        String::new(),
        "a.b".to_owned(),
        format!("{proof}.x"),
        format!("{proof}="),
        proof.replace('.', ".."),
        "x".repeat(17 * 1024),
    ] {
        assert!(check(&bad, &req).is_err(), "accepted {bad:.40}");
    }
}

#[test]
fn claim_checks() {
    let key = TestKey::new(Algorithm::ES256);
    let header = json!({"typ":"dpop+jwt","alg":"ES256","jwk":key.jwk()});
    let good = serde_json::to_value(claims("GET", URL)).unwrap();
    for (field, value) in [
        ("jti", json!(null)),
        ("jti", json!("")),
        ("htm", json!(7)),
        ("htu", json!(null)),
        ("iat", json!("now")),
        ("iat", json!(1.5)),
    ] {
        let mut c = good.clone();
        if value.is_null() {
            c.as_object_mut().unwrap().remove(field);
        } else {
            c[field] = value;
        }
        let proof = key.sign_raw(&header, &c);
        assert!(
            matches!(check(&proof, &request("GET", URL)), Err(Error::BadClaim(_))),
            "{field} accepted"
        );
    }
}

#[test]
fn request_binding() {
    let key = TestKey::new(Algorithm::ES256);
    let proof = sign_proof(&key, &claims("GET", "https://Server.Example.com:443/a/b")).unwrap();
    // Normalized forms of the same URI match; query and fragment are ignored.
    for url in [
        "https://server.example.com/a/b",
        "HTTPS://SERVER.example.com/a/./c/../b?q=1#f",
        "https://server.example.com:443/%61/b",
    ] {
        check(&proof, &request("GET", url)).unwrap_or_else(|e| panic!("{url}: {e}"));
    }
    for url in [
        "https://server.example.com/a/b/",
        "https://server.example.com/a/B",
        "http://server.example.com/a/b",
        "https://server.example.com:8443/a/b",
        "https://other.example.com/a/b",
    ] {
        assert!(
            matches!(
                check(&proof, &request("GET", url)),
                Err(Error::UrlMismatch { .. })
            ),
            "{url} accepted"
        );
    }
    assert!(matches!(
        check(&proof, &request("POST", "https://server.example.com/a/b")),
        Err(Error::MethodMismatch { .. })
    ));
}

#[test]
fn iat_window() {
    let key = TestKey::new(Algorithm::ES256);
    let req = request("GET", URL);
    let opts = VerifyOptions::default();
    let at = |iat: i64| {
        let c = Claims {
            iat,
            ..claims("GET", URL)
        };
        let proof = sign_proof(&key, &c).unwrap();
        verify(&proof, &req, &opts, &(), &store(), NOW)
    };
    assert!(at(NOW).is_ok());
    assert!(at(NOW - 60).is_ok());
    assert!(at(NOW + 5).is_ok());
    assert!(matches!(at(NOW - 61), Err(Error::IatOutOfWindow { .. })));
    assert!(matches!(at(NOW + 6), Err(Error::IatOutOfWindow { .. })));
}

#[test]
fn nonce_ath_jkt_and_replay() {
    let key = TestKey::new(Algorithm::ES256);
    let opts = VerifyOptions::default();
    let nonce = "eyJ7S_zG.eyJH0-Z.HX4w-7v";
    let with_nonce =
        sign_proof(&key, &claims("GET", URL).with_nonce(Some(nonce)).unwrap()).unwrap();
    let without = sign_proof(&key, &claims("GET", URL)).unwrap();
    let req = request("GET", URL);
    let expect: &dyn NoncePolicy = &nonce;
    assert!(verify(&with_nonce, &req, &opts, expect, &store(), NOW).is_ok());
    let err = verify(&without, &req, &opts, expect, &store(), NOW).unwrap_err();
    assert_eq!(err.oauth_error(), "use_dpop_nonce");
    let stale: &dyn NoncePolicy = &"other";
    assert!(matches!(
        verify(&with_nonce, &req, &opts, stale, &store(), NOW),
        Err(Error::UseNonce)
    ));

    // ath: required with a token, and must hash that token.
    let token_req = ExpectedRequest {
        access_token: Some("Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"),
        ..req
    };
    assert!(matches!(
        check(&without, &token_req),
        Err(Error::AthMissing)
    ));
    let other_token =
        sign_proof(&key, &claims("GET", URL).with_access_token("x").unwrap()).unwrap();
    assert!(matches!(
        check(&other_token, &token_req),
        Err(Error::AthMismatch)
    ));

    // jkt binding.
    let jkt = key.header().encoded().to_owned(); // anything but the real thumbprint
    let bound = ExpectedRequest {
        jkt: Some(&jkt),
        ..req
    };
    assert!(matches!(
        check(&without, &bound),
        Err(Error::JktMismatch { .. })
    ));
    let real = check(&without, &req).unwrap().jkt;
    let bound = ExpectedRequest {
        jkt: Some(&real),
        ..req
    };
    assert!(check(&without, &bound).is_ok());

    // Replay: the second use of the same proof fails, a fresh proof passes.
    let replay = store();
    assert!(verify(&without, &req, &opts, &(), &replay, NOW).is_ok());
    assert!(matches!(
        verify(&without, &req, &opts, &(), &replay, NOW),
        Err(Error::Replayed)
    ));
    let fresh = sign_proof(&key, &claims("GET", URL)).unwrap();
    assert!(verify(&fresh, &req, &opts, &(), &replay, NOW).is_ok());
}

#[test]
fn invalid_proofs_do_not_fill_the_replay_store() {
    let key = TestKey::new(Algorithm::ES256);
    let proof = sign_proof(&key, &claims("GET", URL)).unwrap();
    let replay = store();
    let opts = VerifyOptions::default();
    // Rejected for the wrong method first, then accepted: it was never recorded.
    assert!(verify(&proof, &request("PUT", URL), &opts, &(), &replay, NOW).is_err());
    assert!(verify(&proof, &request("GET", URL), &opts, &(), &replay, NOW).is_ok());
}

#[test]
fn signer_with_der_signature_is_refused() {
    struct DerSigner(TestKey);
    impl Signer for DerSigner {
        type Error = Never;
        fn header(&self) -> &ProofHeader {
            self.0.header()
        }
        fn sign(&self, m: &[u8]) -> Result<Vec<u8>, Never> {
            let mut s = self.0.raw_sign(m);
            s.insert(0, 0x30); // 65 bytes: not r||s
            Ok(s)
        }
    }
    let signer = DerSigner(TestKey::new(Algorithm::ES256));
    assert!(matches!(
        sign_proof(&signer, &claims("GET", URL)),
        Err(Error::SignatureLength {
            got: 65,
            expected: 64,
            ..
        })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn signed_proofs_verify_and_any_changed_byte_fails(
        method in "(GET|POST|PUT|DELETE|PATCH|PROPFIND)",
        host in "[a-z][a-z0-9-]{0,20}\\.example",
        path in "(/([A-Za-z0-9._~!$&'()*+,;=:@-]|%[0-9A-Fa-f]{2}){0,12}){0,4}",
        token in proptest::option::of("[A-Za-z0-9._~+/-]{1,64}"),
        nonce in proptest::option::of("[!#-\\[\\]-~]{1,32}"),
        position in any::<prop::sample::Index>(),
        replacement in any::<u8>(),
    ) {
        let key = TestKey::new(Algorithm::ES256);
        let url = format!("https://{host}{path}");
        let mut c = claims(&method, &url).with_nonce(nonce.as_deref()).unwrap();
        if let Some(t) = &token {
            c = c.with_access_token(t).unwrap();
        }
        let proof = sign_proof(&key, &c).unwrap();
        let req = ExpectedRequest { method: &method, url: &url, access_token: token.as_deref(), jkt: None };
        let opts = VerifyOptions::default();
        let verified = verify(&proof, &req, &opts, &(), &store(), NOW);
        prop_assert!(verified.is_ok(), "{:?}", verified.err());
        prop_assert_eq!(verified.unwrap().claims.nonce, nonce.clone());

        let mut bytes = proof.clone().into_bytes();
        let i = position.index(bytes.len());
        prop_assume!(bytes[i] != replacement);
        bytes[i] = replacement;
        let mutated = String::from_utf8_lossy(&bytes).into_owned();
        prop_assert!(
            verify(&mutated, &req, &opts, &(), &store(), NOW).is_err(),
            "byte {} changed to {:#x} still verifies", i, replacement
        );
    }
}

#[test]
fn property_test_keys_cover_every_algorithm() {
    // The single-byte property above uses ES256 for speed; the same check, exhaustively over
    // every byte position, for one proof of each other algorithm.
    for alg in [
        Algorithm::ES384,
        Algorithm::EdDSA,
        Algorithm::PS256,
        Algorithm::RS256,
    ] {
        let key = TestKey::new(alg);
        let proof = sign_proof(&key, &claims("GET", URL)).unwrap();
        let req = request("GET", URL);
        let opts = VerifyOptions::default();
        assert!(verify(&proof, &req, &opts, &(), &store(), NOW).is_ok());
        let bytes = proof.as_bytes();
        for i in (0..bytes.len()).step_by(7) {
            let mut m = bytes.to_vec();
            m[i] ^= 0x01;
            let m = String::from_utf8_lossy(&m).into_owned();
            assert!(
                verify(&m, &req, &opts, &(), &store(), NOW).is_err(),
                "{alg}: flipping byte {i} still verifies"
            );
        }
    }
}

#[test]
fn claims_refuse_a_bad_nonce_or_ath() {
    let c = || claims("GET", URL);
    for bad in ["", "a\"b", "sp ace", "back\\slash", "é"] {
        assert!(
            matches!(c().with_nonce(Some(bad)), Err(Error::InvalidNonce)),
            "{bad:?}"
        );
    }
    assert!(matches!(
        c().with_nonce(Some(&"n".repeat(1025))),
        Err(Error::InvalidNonce)
    ));
    assert!(c().with_nonce(Some("!#[]~")).is_ok());
    let good = crate::ath("tok").unwrap();
    assert_eq!(c().with_ath(good.clone()).unwrap().ath, Some(good));
    for bad in ["short", "", "not base64 at all!"] {
        assert!(
            matches!(c().with_ath(bad.into()), Err(Error::InvalidAth)),
            "{bad:?}"
        );
    }
}

// ---- issue 12, finding 4: a replay store that cannot be flushed ----

#[test]
fn replay_store_cannot_be_flushed() {
    // A server's store of 1,024 pairs; a victim's proof is used once and captured.
    let replay = LruReplayStore::new(NonZeroUsize::new(1024).unwrap());
    let opts = VerifyOptions::default();
    let req = request("GET", URL);
    let victim = TestKey::new(Algorithm::ES256);
    let captured = sign_proof(&victim, &claims("GET", URL)).unwrap();
    verify(&captured, &req, &opts, &(), &replay, NOW).unwrap();
    // The attacker sends 1,024 valid proofs of its own key: the store fills up and then
    // refuses, it does not forget the victim's proof.
    let attacker = TestKey::new(Algorithm::ES256);
    let mut full = 0;
    for _ in 0..1024 {
        let proof = sign_proof(&attacker, &claims("GET", URL)).unwrap();
        match verify(&proof, &req, &opts, &(), &replay, NOW) {
            Ok(_) => {}
            Err(Error::ReplayStoreFull) => full += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(full, 1, "the 1,025th pair is refused");
    assert!(matches!(
        verify(&captured, &req, &opts, &(), &replay, NOW),
        Err(Error::Replayed)
    ));
}

#[test]
fn full_replay_store_refuses_with_a_clear_error() {
    let replay = LruReplayStore::new(NonZeroUsize::new(2).unwrap());
    let opts = VerifyOptions::default();
    let req = request("GET", URL);
    let key = TestKey::new(Algorithm::ES256);
    let proofs: Vec<String> = (0..3)
        .map(|_| sign_proof(&key, &claims("GET", URL)).unwrap())
        .collect();
    verify(&proofs[0], &req, &opts, &(), &replay, NOW).unwrap();
    verify(&proofs[1], &req, &opts, &(), &replay, NOW).unwrap();
    let err = verify(&proofs[2], &req, &opts, &(), &replay, NOW).unwrap_err();
    assert!(matches!(err, Error::ReplayStoreFull), "{err}");
    assert_eq!(err.oauth_error(), "use_dpop_nonce");
    assert_eq!(replay.len(), 2);
    // A replay is still told apart from a full store.
    assert!(matches!(
        verify(&proofs[0], &req, &opts, &(), &replay, NOW),
        Err(Error::Replayed)
    ));
}

#[test]
fn expired_replay_entries_are_reclaimed() {
    let replay = LruReplayStore::new(NonZeroUsize::new(1).unwrap());
    let opts = VerifyOptions::default();
    let req = request("GET", URL);
    let key = TestKey::new(Algorithm::ES256);
    let at = |iat: i64| {
        sign_proof(
            &key,
            &Claims {
                iat,
                ..claims("GET", URL)
            },
        )
        .unwrap()
    };
    let first = at(NOW);
    verify(&first, &req, &opts, &(), &replay, NOW).unwrap();
    // Remembered as long as a proof with that iat is accepted (iat + max_age + max_future).
    let window = opts.max_age + opts.max_future;
    assert!(matches!(
        verify(&at(NOW + window), &req, &opts, &(), &replay, NOW + window),
        Err(Error::ReplayStoreFull)
    ));
    // Then it expires and its room is reused.
    let later = NOW + window + 1;
    verify(&at(later), &req, &opts, &(), &replay, later).unwrap();
    assert_eq!(replay.len(), 1);
}

#[test]
fn replay_store_keeps_pairs_until_they_expire() {
    let replay = LruReplayStore::new(NonZeroUsize::new(4).unwrap());
    assert!(replay.insert_if_new("jkt", "a", NOW + 10, NOW).unwrap());
    assert!(
        !replay
            .insert_if_new("jkt", "a", NOW + 20, NOW + 10)
            .unwrap()
    );
    // Another key's identical jti is another pair.
    assert!(replay.insert_if_new("other", "a", NOW + 10, NOW).unwrap());
    // Expired: the same pair is new again, with its new expiry.
    assert!(
        replay
            .insert_if_new("jkt", "a", NOW + 30, NOW + 11)
            .unwrap()
    );
    assert!(
        !replay
            .insert_if_new("jkt", "a", NOW + 40, NOW + 30)
            .unwrap()
    );
    assert_eq!(
        replay.len(),
        1,
        "the other key's pair expired and was reclaimed"
    );
}

#[test]
fn long_jti_is_refused() {
    let key = TestKey::new(Algorithm::ES256);
    let req = request("GET", URL);
    let with_jti = |jti: String| {
        sign_proof(
            &key,
            &Claims {
                jti,
                ..claims("GET", URL)
            },
        )
        .unwrap()
    };
    check(&with_jti("j".repeat(MAX_JTI_LEN)), &req).unwrap();
    assert!(matches!(
        check(&with_jti("j".repeat(MAX_JTI_LEN + 1)), &req),
        Err(Error::JtiTooLong { len: 257, max: 256 })
    ));
}

// ---- issue 12, finding 7: crit, small-order Ed25519 keys, repeated members ----

#[test]
fn any_crit_header_is_refused() {
    let key = TestKey::new(Algorithm::ES256);
    let jwk = key.jwk();
    let c = serde_json::to_value(claims("GET", URL)).unwrap();
    for header in [
        json!({"typ":"dpop+jwt","alg":"ES256","jwk":jwk,"crit":["exp"],"exp":NOW + 60}),
        json!({"typ":"dpop+jwt","alg":"ES256","jwk":jwk,"crit":["b64"],"b64":false}),
        json!({"typ":"dpop+jwt","alg":"ES256","jwk":jwk,"crit":5}),
        json!({"typ":"dpop+jwt","alg":"ES256","jwk":jwk,"crit":[]}),
    ] {
        let proof = key.sign_raw(&header, &c);
        assert!(
            matches!(
                check(&proof, &request("GET", URL)),
                Err(Error::CriticalHeader)
            ),
            "{header}"
        );
    }
    // Unknown members that are not critical are still ignored, as RFC 7515 says.
    let header = json!({"typ":"dpop+jwt","alg":"ES256","jwk":jwk,"kid":"x"});
    check(&key.sign_raw(&header, &c), &request("GET", URL)).unwrap();
}

/// Every encoding of a small-order Ed25519 point: the seven y values with either sign bit.
fn small_order_ed25519_keys() -> Vec<[u8; 32]> {
    let y8 = "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05";
    let minus_y8 = "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a";
    let p_minus = |last: &str| format!("{last}{}7f", "ff".repeat(30));
    let ys = [
        "00".repeat(32),
        format!("01{}", "00".repeat(31)),
        y8.to_owned(),
        minus_y8.to_owned(),
        p_minus("ec"),
        p_minus("ed"),
        p_minus("ee"),
    ];
    let hex = |s: &str| -> [u8; 32] {
        let v: Vec<u8> = (0..64)
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect();
        v.try_into().unwrap()
    };
    ys.iter()
        .flat_map(|y| {
            let y = hex(y);
            let mut negative = y;
            negative[31] |= 0x80;
            [y, negative]
        })
        .collect()
}

#[test]
fn small_order_ed25519_keys_are_refused() {
    let c = serde_json::to_value(claims("GET", URL)).unwrap();
    // The identity as the key and R = identity, S = 0 as the "signature": it verifies for any
    // claims with a plain Ed25519 check.
    let identity = small_order_ed25519_keys()[2]; // y = 1, x = 0
    let header = json!({"typ":"dpop+jwt","alg":"EdDSA","jwk":Jwk::from_ed25519(&identity)});
    let input = format!(
        "{}.{}",
        b64url_encode(header.to_string()),
        b64url_encode(c.to_string())
    );
    let mut forged = identity.to_vec();
    forged.extend_from_slice(&[0; 32]);
    let proof = format!("{input}.{}", b64url_encode(&forged));
    assert!(
        matches!(
            check(&proof, &request("GET", URL)),
            Err(Error::InvalidJwk { ref reason }) if reason.contains("small-order")
        ),
        "the forged proof is not refused for its key"
    );
    // Every small-order encoding is refused, whatever the signature.
    let key = TestKey::new(Algorithm::EdDSA);
    for point in small_order_ed25519_keys() {
        let header = json!({"typ":"dpop+jwt","alg":"EdDSA","jwk":Jwk::from_ed25519(&point)});
        let proof = key.sign_raw(&header, &c);
        assert!(
            matches!(
                check(&proof, &request("GET", URL)),
                Err(Error::InvalidJwk { ref reason }) if reason.contains("small-order")
            ),
            "{point:02x?}"
        );
    }
}

#[test]
fn repeated_member_names_are_refused() {
    let key = TestKey::new(Algorithm::ES256);
    let jwk = key.jwk().to_string();
    let good_header = format!(r#"{{"typ":"dpop+jwt","alg":"ES256","jwk":{jwk}}}"#);
    let good_claims = serde_json::to_value(claims("GET", URL))
        .unwrap()
        .to_string();
    let body = |c: &str| c.trim_start_matches('{').trim_end_matches('}').to_owned();
    check(
        &key.sign_text(&good_header, &good_claims),
        &request("GET", URL),
    )
    .unwrap();
    let x = key.jwk()["x"].to_string();
    let cases = [
        // The last typ would win in serde_json.
        (
            format!(r#"{{"typ":"JWT","typ":"dpop+jwt","alg":"ES256","jwk":{jwk}}}"#),
            good_claims.clone(),
            "header",
        ),
        // A repeat spelled with an escape.
        (
            format!(r#"{{"typ":"dpop+jwt","alg":"ES256","jwk":{jwk},"typ":"dpop+jwt"}}"#),
            good_claims.clone(),
            "header",
        ),
        // Inside the jwk.
        (
            format!(
                r#"{{"typ":"dpop+jwt","alg":"ES256","jwk":{{{},"x":{x}}}}}"#,
                body(&jwk)
            ),
            good_claims.clone(),
            "header",
        ),
        // In the payload: the request's URL first, another one last.
        (
            good_header.clone(),
            format!(
                r#"{{"htu":"{URL}",{}}}"#,
                body(&good_claims).replace(URL, "https://elsewhere.example/")
            ),
            "payload",
        ),
        (
            good_header.clone(),
            format!(r#"{{{},"jti":"again"}}"#, body(&good_claims)),
            "payload",
        ),
    ];
    for (header, claims, part) in cases {
        let proof = key.sign_text(&header, &claims);
        let got = check(&proof, &request("GET", URL));
        assert!(
            matches!(got, Err(Error::DuplicateMember { part: p }) if p == part),
            "{header} / {claims}: {got:?}"
        );
    }
}
