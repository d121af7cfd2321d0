//! The PKCS#11 backend against a real SoftHSM2 (see `common`): generate, import, adopt,
//! delete, reload, concurrent signing, wrong PIN, token loss and recovery, and that the token
//! never hands out private key material. Every signature is checked by building a DPoP proof
//! and running `dpop_jose::verify` on it.

mod common;

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::process::Command;
use std::sync::Arc;

use common::{PIN, TestToken};
use cryptoki::object::{
    Attribute, AttributeInfo, AttributeType, KeyType, ObjectClass, ObjectHandle,
};
use cryptoki::session::{Session, SessionState};
use cryptoki::types::AuthPin;
use dpop_jose::{Claims, ExpectedRequest, Htu, LruReplayStore, Method, VerifyOptions};
use dpop_keys::pkcs11::{DEFAULT_MAX_SESSIONS, Pkcs11Backend, Pkcs11Uri, TokenSelector};
use dpop_keys::software::SoftwareBackend;
use dpop_keys::{
    AdoptOptions, AdoptRefusal, Algorithm, Backend, Error, KeyLabel, KeySigner, SignerRef,
};

fn label(s: &str) -> KeyLabel {
    KeyLabel::new(s).unwrap()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Signs a proof with `key` and checks it as a server would, bound to the key's jkt.
fn assert_signs(key: &SignerRef) {
    let url = "https://api.example.com/resource";
    let claims = Claims::new(
        &Method::new("POST").unwrap(),
        &Htu::from_url(url).unwrap(),
        now(),
    );
    let proof = dpop_jose::sign_proof(&**key as &dyn KeySigner, &claims)
        .unwrap_or_else(|e| panic!("{}: signing: {e}", key.meta().info().label));
    let info = key.meta().info();
    let verified = dpop_jose::verify(
        &proof,
        &ExpectedRequest {
            method: "POST",
            url,
            access_token: None,
            jkt: Some(&info.jkt),
        },
        &VerifyOptions::default(),
        &(),
        &LruReplayStore::new(NonZeroUsize::new(16).unwrap()),
        now(),
    )
    .unwrap_or_else(|e| panic!("{} ({}): proof does not verify: {e}", info.label, info.alg));
    assert_eq!(verified.alg, info.alg);
    assert_eq!(verified.jwk, info.jwk);
}

/// The `CKA_ID` of a key, from the URI the backend shows as its location.
fn key_id(key: &SignerRef) -> Vec<u8> {
    let location = key.meta().info().location.as_deref().expect("location");
    Pkcs11Uri::parse(location)
        .unwrap()
        .id
        .expect("id in location")
}

fn find(session: &Session, class: ObjectClass, id: &[u8]) -> Vec<ObjectHandle> {
    session
        .find_objects(&[Attribute::Class(class), Attribute::Id(id.to_vec())])
        .unwrap()
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is needed to make test keys");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn ec_pem() -> Vec<u8> {
    openssl(&["ecparam", "-name", "prime256v1", "-genkey", "-noout"])
}

fn rsa_pem() -> Vec<u8> {
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
    ])
}

fn records(token: &TestToken) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(token.metadata.path().join("pkcs11"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn has_eddsa(token: &TestToken) -> bool {
    common::raw()
        .get_mechanism_list(token.slot())
        .unwrap()
        .contains(&cryptoki::mechanism::MechanismType::EDDSA)
}

#[test]
fn generate_and_sign_every_algorithm() {
    let token = common::token("generate");
    let backend = token.open();
    let algorithms = backend.algorithms();
    for alg in [
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::RS256,
        Algorithm::PS256,
    ] {
        assert!(
            algorithms.contains(&alg),
            "{alg} missing from {algorithms:?}"
        );
    }
    let mut algs = vec![
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::RS256,
        Algorithm::PS256,
    ];
    // SoftHSM2 2.6 lists CKM_EDDSA; a module without it must say so clearly.
    if has_eddsa(&token) {
        assert!(algorithms.contains(&Algorithm::EdDSA));
        algs.push(Algorithm::EdDSA);
    } else {
        let err = backend
            .generate(&label("ed"), Algorithm::EdDSA)
            .unwrap_err();
        assert!(
            matches!(&err, Error::UnsupportedAlgorithm { alg: Algorithm::EdDSA, by } if by.starts_with("this token")),
            "{err:?}"
        );
    }
    for alg in algs {
        let key = backend
            .generate(&label(&format!("gen-{alg}")), alg)
            .unwrap_or_else(|e| panic!("generating {alg}: {e}"));
        let info = key.meta().info();
        assert_eq!(info.alg, alg);
        assert!(info.persistent);
        assert!(key.is_blocking());
        let location = info.location.as_deref().unwrap();
        assert!(
            location.starts_with("pkcs11:token=generate;serial=") && location.contains(";id=%"),
            "{location}"
        );
        assert_eq!(key_id(&key).len(), 16);
        for _ in 0..3 {
            assert_signs(&key);
        }
    }
    // The label is taken now.
    let err = backend
        .generate(&label("gen-ES256"), Algorithm::ES256)
        .unwrap_err();
    assert!(matches!(err, Error::KeyExists { .. }), "{err:?}");
}

#[test]
fn import_pem_keys() {
    let token = common::token("import");
    let backend = token.open();
    let software = SoftwareBackend::ephemeral();
    let mut cases = vec![
        ("ec-sec1", ec_pem(), None, Algorithm::ES256),
        (
            "ec-pkcs8",
            openssl(&[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ]),
            None,
            Algorithm::ES256,
        ),
        (
            "ec-p384",
            openssl(&["ecparam", "-name", "secp384r1", "-genkey", "-noout"]),
            None,
            Algorithm::ES384,
        ),
        ("rsa-pkcs8", rsa_pem(), None, Algorithm::RS256),
        (
            "rsa-pss",
            rsa_pem(),
            Some(Algorithm::PS256),
            Algorithm::PS256,
        ),
        (
            "rsa-pkcs1",
            openssl(&["genrsa", "-traditional", "2048"]),
            None,
            Algorithm::RS256,
        ),
    ];
    if has_eddsa(&token) {
        cases.push((
            "ed25519",
            openssl(&["genpkey", "-algorithm", "ed25519"]),
            None,
            Algorithm::EdDSA,
        ));
    }
    for (name, pem, wanted, alg) in cases {
        let key = backend
            .import_pem(&label(name), &pem, wanted)
            .unwrap_or_else(|e| panic!("importing {name}: {e}"));
        assert_eq!(key.meta().info().alg, alg, "{name}");
        // The public key the token reports is the PEM's.
        let reference = software.import_pem(&label(name), &pem, wanted).unwrap();
        assert_eq!(key.meta().info().jwk, reference.meta().info().jwk, "{name}");
        assert_signs(&key);
    }
    let err = backend
        .import_pem(&label("ec-as-rsa"), &ec_pem(), Some(Algorithm::RS256))
        .unwrap_err();
    assert!(matches!(err, Error::InvalidKey { .. }), "{err:?}");
    let err = backend
        .import_pem(&label("small-rsa"), &openssl(&["genrsa", "1024"]), None)
        .unwrap_err();
    assert!(err.to_string().contains("2048"), "{err}");
    // Only records in the metadata directory, and none holds private material.
    for name in records(&token) {
        assert!(name.ends_with(".json"), "{name}");
        let text =
            std::fs::read_to_string(token.metadata.path().join("pkcs11").join(&name)).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        for private in ["d", "p", "q", "dp", "dq", "qi"] {
            assert!(json["jwk"].get(private).is_none(), "{name}: {text}");
        }
        assert!(!text.contains("PRIVATE"), "{name}: {text}");
    }
}

/// Creates a key pair directly on the token, as another tool would (pkcs11-tool, a YubiKey's
/// PIV applet).
fn raw_key_pair(session: &Session, alg: Algorithm, id: &[u8], object: &str) -> ObjectHandle {
    let (mechanism, mut public, mut private) = match alg {
        Algorithm::ES256 => (
            cryptoki::mechanism::Mechanism::EccKeyPairGen,
            vec![Attribute::EcParams(vec![
                0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
            ])],
            vec![],
        ),
        Algorithm::RS256 => (
            cryptoki::mechanism::Mechanism::RsaPkcsKeyPairGen,
            vec![
                Attribute::ModulusBits(2048.into()),
                Attribute::PublicExponent(vec![1, 0, 1]),
            ],
            vec![],
        ),
        Algorithm::EdDSA => (
            cryptoki::mechanism::Mechanism::EccEdwardsKeyPairGen,
            vec![Attribute::EcParams(vec![0x06, 0x03, 0x2b, 0x65, 0x70])],
            vec![],
        ),
        other => panic!("no raw template for {other}"),
    };
    public.extend([
        Attribute::Token(true),
        Attribute::Verify(true),
        Attribute::Id(id.to_vec()),
        Attribute::Label(object.as_bytes().to_vec()),
    ]);
    private.extend([
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Sign(true),
        Attribute::Id(id.to_vec()),
        Attribute::Label(object.as_bytes().to_vec()),
    ]);
    session
        .generate_key_pair(&mechanism, &public, &private)
        .unwrap()
        .1
}

#[test]
fn adopt_by_uri() {
    let token = common::token("adopt");
    let backend = token.open();
    let serial = token.serial();
    let module = common::hsm().module().display().to_string();
    let raw = token.raw_session();
    raw_key_pair(&raw, Algorithm::ES256, &[1, 2], "existing-ec");
    raw_key_pair(&raw, Algorithm::RS256, &[3], "existing-rsa");
    raw_key_pair(&raw, Algorithm::ES256, &[5], "dup");
    raw_key_pair(&raw, Algorithm::ES256, &[6], "dup");
    let eddsa = has_eddsa(&token);
    if eddsa {
        raw_key_pair(&raw, Algorithm::EdDSA, &[4], "existing-ed");
    }

    let ec = backend
        .adopt(
            "pkcs11:token=adopt;id=%01%02;type=private",
            &label("ec"),
            None,
            AdoptOptions::default(),
        )
        .unwrap();
    assert_eq!(ec.meta().info().alg, Algorithm::ES256);
    assert_signs(&ec);
    let rsa = backend
        .adopt(
            &format!("pkcs11:object=existing-rsa;type=private?module-path={module}"),
            &label("rsa"),
            Some(Algorithm::PS256),
            AdoptOptions::default(),
        )
        .unwrap();
    assert_eq!(rsa.meta().info().alg, Algorithm::PS256);
    assert_signs(&rsa);
    // The same object under a second label is refused, whatever the URI looks like: deleting
    // one label would otherwise break the other.
    let rsa_by_serial =
        format!("pkcs11:token=adopt;serial={serial};object=existing-rsa?module-name=softhsm2");
    let err = backend
        .adopt(
            &rsa_by_serial,
            &label("rsa-pkcs1"),
            None,
            AdoptOptions::default(),
        )
        .unwrap_err();
    assert!(
        matches!(&err, Error::KeyAlreadyManaged { label, .. } if label == "rsa"),
        "{err:?}"
    );
    assert!(err.to_string().contains("\"rsa\""), "{err}");
    backend.delete(&label("rsa")).unwrap();
    let rsa_pkcs1 = backend
        .adopt(
            &rsa_by_serial,
            &label("rsa-pkcs1"),
            None,
            AdoptOptions::default(),
        )
        .unwrap();
    assert_eq!(rsa_pkcs1.meta().info().alg, Algorithm::RS256);
    assert_signs(&rsa_pkcs1);
    if eddsa {
        let ed = backend
            .adopt(
                &format!("pkcs11:serial={serial};id=%04"),
                &label("ed"),
                None,
                AdoptOptions::default(),
            )
            .unwrap();
        assert_eq!(ed.meta().info().alg, Algorithm::EdDSA);
        assert_signs(&ed);
    }

    // Errors that name the problem.
    let cases: Vec<(String, Option<Algorithm>, &str)> = vec![
        (
            "pkcs11:token=other;id=%01%02".into(),
            None,
            "token \"other\"",
        ),
        (
            "pkcs11:serial=0000;id=%01%02".into(),
            None,
            "serial \"0000\"",
        ),
        (
            "pkcs11:id=%01%02?module-path=/usr/lib/nonexistent.so".into(),
            None,
            "module-path",
        ),
        (
            "pkcs11:id=%01%02?module-name=opensc-pkcs11".into(),
            None,
            "module-name",
        ),
        (
            "pkcs11:object=dup;type=private".into(),
            None,
            "does not name exactly one private signing key",
        ),
        (
            "pkcs11:id=%FF".into(),
            None,
            "does not name exactly one private signing key",
        ),
        (
            "pkcs11:id=%01%02?pin-value=4321".into(),
            None,
            "pin-value is refused",
        ),
        ("pkcs11:id=%01%02;type=public".into(), None, "type=public"),
        (
            "pkcs11:id=%01%02".into(),
            Some(Algorithm::RS256),
            "cannot make RS256",
        ),
        ("pkcs11:id=%zz".into(), None, "two hex digits"),
        ("file:///key.pem".into(), None, "pkcs11:"),
    ];
    for (uri, alg, expected) in cases {
        let err = backend
            .adopt(&uri, &label("bad"), alg, AdoptOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{uri}: {err:?} lacks {expected:?}");
        assert!(!err.contains(PIN), "{err}");
    }
    let err = backend
        .adopt(
            "pkcs11:id=%01%02",
            &label("ec"),
            None,
            AdoptOptions::default(),
        )
        .unwrap_err();
    assert!(matches!(err, Error::KeyExists { .. }), "{err:?}");

    // An EC private key without a public key object: the public key cannot be known.
    let pem = ec_pem();
    let parsed = dpop_keys::pem::parse_private_key_pem(&pem).unwrap();
    let sec1 = <sec1::EcPrivateKey as sec1::der::Decode>::from_der(&parsed.der).unwrap();
    raw.create_object(&[
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::KeyType(KeyType::EC),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Sign(true),
        Attribute::EcParams(vec![
            0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
        ]),
        Attribute::Value(sec1.private_key.to_vec()),
        Attribute::Id(vec![7]),
    ])
    .unwrap();
    let err = backend
        .adopt(
            "pkcs11:id=%07",
            &label("lonely"),
            None,
            AdoptOptions::default(),
        )
        .unwrap_err();
    assert!(err.to_string().contains("no public key object"), "{err}");

    // Deleting an adopted key forgets it; the token keeps it.
    assert!(records(&token).contains(&"ec.json".to_owned()));
    backend.delete(&label("ec")).unwrap();
    assert!(!records(&token).contains(&"ec.json".to_owned()));
    assert_eq!(find(&raw, ObjectClass::PRIVATE_KEY, &[1, 2]).len(), 1);
    assert_eq!(find(&raw, ObjectClass::PUBLIC_KEY, &[1, 2]).len(), 1);
    // And it can be adopted again.
    let again = backend
        .adopt(
            "pkcs11:id=%01%02",
            &label("ec"),
            None,
            AdoptOptions::default(),
        )
        .unwrap();
    assert_eq!(again.meta().info().jkt, ec.meta().info().jkt);

    // A key that wants the PIN for each signature needs the explicit option.
    raw_always_auth_key_pair(&raw, &[8], "pinned");
    let err = backend
        .adopt(
            "pkcs11:id=%08",
            &label("pinned"),
            None,
            AdoptOptions::default(),
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::AdoptNotAllowed {
                refusal: AdoptRefusal::PerUseAuth,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("wants the PIN for each signature"),
        "{err}"
    );
    let pinned = backend
        .adopt(
            "pkcs11:id=%08",
            &label("pinned"),
            None,
            AdoptOptions {
                always_authenticate: true,
            },
        )
        .unwrap();
    assert_signs(&pinned);
}

/// A P-256 key pair with `CKA_ALWAYS_AUTHENTICATE` on the private key.
fn raw_always_auth_key_pair(session: &Session, id: &[u8], object: &str) {
    let common = [
        Attribute::Token(true),
        Attribute::Id(id.to_vec()),
        Attribute::Label(object.as_bytes().to_vec()),
    ];
    let mut public = vec![
        Attribute::EcParams(vec![
            0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
        ]),
        Attribute::Verify(true),
    ];
    public.extend(common.clone());
    let mut private = vec![
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Sign(true),
        Attribute::AlwaysAuthenticate(true),
    ];
    private.extend(common);
    session
        .generate_key_pair(
            &cryptoki::mechanism::Mechanism::EccKeyPairGen,
            &public,
            &private,
        )
        .unwrap();
}

#[test]
fn delete_destroys_only_what_we_made() {
    let token = common::token("delete");
    let backend = token.open();
    let raw = token.raw_session();
    let generated = backend.generate(&label("gen"), Algorithm::ES256).unwrap();
    let imported = backend.import_pem(&label("imp"), &rsa_pem(), None).unwrap();
    let keep = backend.generate(&label("keep"), Algorithm::ES256).unwrap();
    for key in [&generated, &imported] {
        let id = key_id(key);
        assert_eq!(find(&raw, ObjectClass::PRIVATE_KEY, &id).len(), 1);
        assert_eq!(find(&raw, ObjectClass::PUBLIC_KEY, &id).len(), 1);
        backend.delete(&key.meta().info().label).unwrap();
        assert!(find(&raw, ObjectClass::PRIVATE_KEY, &id).is_empty());
        assert!(find(&raw, ObjectClass::PUBLIC_KEY, &id).is_empty());
        let err = key.sign(b"after delete").unwrap_err();
        assert!(matches!(err, Error::KeyNotFound { .. }), "{err:?}");
    }
    assert_eq!(records(&token), ["keep.json"]);
    let err = backend.delete(&label("gen")).unwrap_err();
    assert!(matches!(err, Error::KeyNotFound { .. }), "{err:?}");
    assert_signs(&keep);
}

#[test]
fn load_after_reopen() {
    let token = common::token("reload");
    let mut expected = BTreeMap::new();
    {
        let backend = token.open();
        let raw = token.raw_session();
        raw_key_pair(&raw, Algorithm::ES256, b"theirs", "theirs");
        let keys = [
            backend.generate(&label("a-ec"), Algorithm::ES256).unwrap(),
            backend.generate(&label("b-ps"), Algorithm::PS256).unwrap(),
            backend
                .import_pem(&label("c-imported"), &ec_pem(), None)
                .unwrap(),
            backend
                .adopt(
                    "pkcs11:object=theirs",
                    &label("d-adopted"),
                    None,
                    AdoptOptions::default(),
                )
                .unwrap(),
        ];
        for key in keys {
            let info = key.meta().info().clone();
            expected.insert(info.label.to_string(), info);
        }
        assert!(backend.load().unwrap().len() == 4);
    }
    let backend = token.open();
    let loaded = backend.load().unwrap();
    let got: BTreeMap<_, _> = loaded
        .iter()
        .map(|k| (k.meta().info().label.to_string(), k.meta().info().clone()))
        .collect();
    assert_eq!(got, expected);
    for key in &loaded {
        assert_signs(key);
    }

    // A key whose object vanished is skipped (and reported), its record kept.
    let raw = token.raw_session();
    let gone = &loaded[0];
    let id = key_id(gone);
    for class in [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY] {
        for o in find(&raw, class, &id) {
            raw.destroy_object(o).unwrap();
        }
    }
    // A record that is not JSON is skipped too.
    std::fs::write(token.metadata.path().join("pkcs11/zz-broken.json"), "{").unwrap();
    let reloaded = backend.load().unwrap();
    let labels: Vec<String> = reloaded
        .iter()
        .map(|k| k.meta().info().label.to_string())
        .collect();
    assert_eq!(labels, ["b-ps", "c-imported", "d-adopted"]);
    assert!(records(&token).contains(&"a-ec.json".to_owned()));
}

#[test]
fn concurrent_signing() {
    let token = common::token("concurrent");
    let backend = token.open();
    let ec = backend.generate(&label("ec"), Algorithm::ES256).unwrap();
    let rsa = backend.generate(&label("rsa"), Algorithm::RS256).unwrap();
    let started = std::time::Instant::now();
    let threads: Vec<_> = (0..24)
        .map(|i| {
            let key = if i % 3 == 0 { rsa.clone() } else { ec.clone() };
            std::thread::spawn(move || {
                for _ in 0..5 {
                    assert_signs(&key);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a signing thread failed");
    }
    eprintln!("120 concurrent proofs in {:?}", started.elapsed());
    let info = common::raw().get_token_info(token.slot()).unwrap();
    if let Some(open) = info.session_count() {
        assert!(open <= DEFAULT_MAX_SESSIONS as u64, "{open} sessions open");
    }
}

#[test]
fn wrong_pin_at_open_is_reported_once() {
    let token = common::token("wrong-pin");
    let err = Pkcs11Backend::open(token.config_with_pin("99999")).unwrap_err();
    assert!(matches!(err, Error::AuthFailed { .. }), "{err:?}");
    assert!(!format!("{err} {err:?}").contains("99999"));
    let info = common::raw().get_token_info(token.slot()).unwrap();
    assert!(
        info.user_pin_count_low(),
        "the failed login should show on the token"
    );
    assert!(!info.user_pin_locked());
    // The right PIN still works (SoftHSM2 does not lock), and clears the failure flag.
    let backend = token.open();
    assert!(
        !common::raw()
            .get_token_info(token.slot())
            .unwrap()
            .user_pin_count_low()
    );
    assert_signs(&backend.generate(&label("k"), Algorithm::ES256).unwrap());
}

#[test]
fn refused_pin_is_never_retried() {
    let token = common::token("pin-retry");
    let backend = token.open();
    let key = backend.generate(&label("k"), Algorithm::ES256).unwrap();
    assert_signs(&key);
    // Logged out behind our back: the backend logs in again with its PIN and carries on.
    token.raw_session().logout().unwrap();
    assert_signs(&key);
    // Someone changes the PIN and the token logs us out (C_Logout acts on the whole
    // application). The backend logs in again with its PIN, which is wrong now.
    {
        let raw = token.raw_session();
        raw.set_pin(&AuthPin::from(PIN), &AuthPin::from("1111"))
            .unwrap();
        raw.logout().unwrap();
    }
    let err = key.sign(b"x").unwrap_err();
    assert!(matches!(err, Error::AuthFailed { .. }), "{err:?}");
    assert!(
        common::raw()
            .get_token_info(token.slot())
            .unwrap()
            .user_pin_count_low()
    );
    // The PIN is changed back: a backend that tried again would now get in. It must not try.
    {
        let raw = common::raw().open_rw_session(token.slot()).unwrap();
        raw.set_pin(&AuthPin::from("1111"), &AuthPin::from(PIN))
            .unwrap();
    }
    // (SoftHSM2 clears CKF_USER_PIN_COUNT_LOW when C_SetPIN verifies the old PIN.)
    let flag_before = common::raw()
        .get_token_info(token.slot())
        .unwrap()
        .user_pin_count_low();
    for _ in 0..3 {
        let err = key.sign(b"x").unwrap_err();
        assert!(matches!(err, Error::AuthFailed { .. }), "{err:?}");
    }
    let err = backend
        .generate(&label("k2"), Algorithm::ES256)
        .unwrap_err();
    assert!(matches!(err, Error::AuthFailed { .. }), "{err:?}");
    let probe = common::raw().open_ro_session(token.slot()).unwrap();
    assert!(
        matches!(
            probe.get_session_info().unwrap().session_state(),
            SessionState::RoPublic
        ),
        "nobody logged in"
    );
    assert_eq!(
        common::raw()
            .get_token_info(token.slot())
            .unwrap()
            .user_pin_count_low(),
        flag_before,
        "no login attempt, failed or not, since the PIN was refused"
    );
    drop(probe);
    // Reopening is how the agent gets a new PIN.
    let reopened = token.open();
    let keys = reopened.load().unwrap();
    assert_eq!(keys.len(), 1);
    assert_signs(&keys[0]);
}

#[test]
fn token_removed_and_back() {
    let token = common::token("removal");
    let backend = token.open();
    let pem = ec_pem();
    let key = backend.import_pem(&label("k"), &pem, None).unwrap();
    let other = backend.generate(&label("other"), Algorithm::ES256).unwrap();
    assert_signs(&key);
    let id = key_id(&key);
    let old_slot = token.slot();

    token.delete();
    for _ in 0..2 {
        let err = key.sign(b"x").unwrap_err();
        assert!(matches!(err, Error::DeviceUnavailable { .. }), "{err:?}");
        assert!(err.to_string().contains("removal"), "{err}");
    }
    let err = backend.load().unwrap_err();
    assert!(matches!(err, Error::DeviceUnavailable { .. }), "{err:?}");
    // A delete while the token is away fails and changes nothing.
    let err = backend.delete(&label("other")).unwrap_err();
    assert!(matches!(err, Error::DeviceUnavailable { .. }), "{err:?}");
    assert_eq!(records(&token), ["k.json", "other.json"]);

    // The token comes back (in another slot), holding the key under the same CKA_ID.
    token.recreate();
    assert_ne!(token.slot(), old_slot);
    let raw = token.raw_session();
    let parsed = dpop_keys::pem::parse_private_key_pem(&pem).unwrap();
    let sec1 = <sec1::EcPrivateKey as sec1::der::Decode>::from_der(&parsed.der).unwrap();
    let point = sec1.public_key.expect("openssl writes the public key");
    let mut wrapped = vec![0x04, point.len() as u8];
    wrapped.extend_from_slice(point);
    let params = vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    raw.create_object(&[
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::KeyType(KeyType::EC),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Sign(true),
        Attribute::EcParams(params.clone()),
        Attribute::Value(sec1.private_key.to_vec()),
        Attribute::Id(id.clone()),
    ])
    .unwrap();
    raw.create_object(&[
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::KeyType(KeyType::EC),
        Attribute::Token(true),
        Attribute::Verify(true),
        Attribute::EcParams(params),
        Attribute::EcPoint(wrapped),
        Attribute::Id(id),
    ])
    .unwrap();
    drop(raw);
    // The same backend and signer work again, no reopen.
    assert_signs(&key);
    let err = other.sign(b"x").unwrap_err();
    assert!(matches!(err, Error::KeyNotFound { .. }), "{err:?}");
    let loaded = backend.load().unwrap();
    assert_eq!(loaded.len(), 1, "only the key that came back loads");
    assert_signs(&loaded[0]);
}

#[test]
fn private_keys_never_leave_the_token() {
    let token = common::token("sensitive");
    let backend = token.open();
    let mut keys = vec![
        (
            backend.generate(&label("g-ec"), Algorithm::ES256).unwrap(),
            true,
        ),
        (
            backend.generate(&label("g-rsa"), Algorithm::RS256).unwrap(),
            true,
        ),
        (
            backend.import_pem(&label("i-ec"), &ec_pem(), None).unwrap(),
            false,
        ),
        (
            backend
                .import_pem(&label("i-rsa"), &rsa_pem(), None)
                .unwrap(),
            false,
        ),
    ];
    if has_eddsa(&token) {
        keys.push((
            backend.generate(&label("g-ed"), Algorithm::EdDSA).unwrap(),
            true,
        ));
    }
    // A separate session of our own, logged in.
    let raw = token.raw_session();
    for (key, generated) in &keys {
        let name = key.meta().info().label.to_string();
        let objects = find(&raw, ObjectClass::PRIVATE_KEY, &key_id(key));
        let [private] = objects[..] else {
            panic!("{name}: {} private objects", objects.len())
        };
        let secret_parts: &[AttributeType] = match key.meta().info().alg {
            Algorithm::RS256 | Algorithm::PS256 => &[
                AttributeType::PrivateExponent,
                AttributeType::Prime1,
                AttributeType::Prime2,
                AttributeType::Exponent1,
                AttributeType::Exponent2,
                AttributeType::Coefficient,
            ],
            _ => &[AttributeType::Value],
        };
        for info in raw.get_attribute_info(private, secret_parts).unwrap() {
            assert!(matches!(info, AttributeInfo::Sensitive), "{name}: {info:?}");
        }
        // And a direct read returns nothing.
        assert!(
            raw.get_attributes(private, secret_parts)
                .unwrap()
                .is_empty(),
            "{name}"
        );
        let flags = raw
            .get_attributes(
                private,
                &[
                    AttributeType::Token,
                    AttributeType::Private,
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::Sign,
                    AttributeType::AlwaysSensitive,
                    AttributeType::NeverExtractable,
                    AttributeType::Label,
                ],
            )
            .unwrap();
        let mut want = vec![
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
        ];
        if *generated {
            // Made on the token: sensitive and unextractable from the start.
            want.push(Attribute::AlwaysSensitive(true));
            want.push(Attribute::NeverExtractable(true));
        }
        want.push(Attribute::Label(name.as_bytes().to_vec()));
        for w in want {
            assert!(flags.contains(&w), "{name}: {w:?} not in {flags:?}");
        }
        assert_eq!(
            find(&raw, ObjectClass::PUBLIC_KEY, &key_id(key)).len(),
            1,
            "{name}"
        );
    }
}

#[test]
fn token_selection() {
    let token = common::token("selection");
    let serial = token.serial();
    let mut config = token.config();
    config.token = TokenSelector::Serial(serial.clone());
    let backend = Pkcs11Backend::open(config).unwrap();
    assert_eq!(
        backend.token_label_and_serial().unwrap(),
        ("selection".to_owned(), serial)
    );
    assert_signs(&backend.generate(&label("k"), Algorithm::ES256).unwrap());
    // Two backends on one module share it (SoftHSM2 can be initialised once per process).
    let second = Arc::new(token.open());
    assert_eq!(second.load().unwrap().len(), 1);

    let mut config = token.config();
    config.token = TokenSelector::Label("no-such-token".into());
    let err = Pkcs11Backend::open(config).unwrap_err();
    assert!(
        matches!(&err, Error::DeviceUnavailable { detail, .. } if detail.contains("no-such-token")),
        "{err:?}"
    );
    let mut config = token.config();
    config.module = "/nonexistent/libpkcs11.so".into();
    let err = Pkcs11Backend::open(config).unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/libpkcs11.so"),
        "{err}"
    );
}
