//! Token keys through the real agent and `dpop`, each test on a SoftHSM2 token of its own
//! (see `dpop_tests::pkcs11`):
//!
//! - keys generated on the token (ES256, RS256, PS256, ES384, EdDSA) and PEMs imported into
//!   it sign proofs that `dpop verify` and Python's jwcrypto accept;
//! - imported keys have the thumbprint openssl and the software backend give the same PEM, and
//!   no file of the agent holds the private key;
//! - keys adopted by RFC 7512 URI, forgotten (not destroyed) on delete; bad URIs;
//! - a key that wants the PIN for every signature;
//! - deleted keys leave the token;
//! - 16 concurrent clients on one token key;
//! - the token refuses to reveal every private key the agent made or imported.

use std::collections::HashSet;
use std::sync::Arc;

use base64::Engine;
use dpop_protocol::ErrorCode;
use dpop_tests::pkcs11::*;
use dpop_tests::{
    AgentOptions, TestAgent, files_under, new_temp_dir, openssl_key_field, openssl_rsa_pem, run_ok,
    verify_proof,
};

/// The token check is no rubber stamp: a private key stored readable and extractable (by
/// the helper, not the agent) shows as such.
#[test]
fn the_token_check_tells_an_exposed_key_apart() {
    let token = token("exposed");
    inspect(&token, &["create-exposed-ec-key", "e0"]);
    let found = inspect(&token, &["private-key", "e0"]);
    let key = &found["private_keys"][0];
    assert_eq!(key["secrets"]["CKA_VALUE"], "available:32", "{found}");
    assert_eq!(key["read"], serde_json::json!(["CKA_VALUE"]), "{found}");
    assert_eq!(key["flags"]["sensitive"], false, "{found}");
    assert_eq!(key["flags"]["extractable"], true, "{found}");
    assert_eq!(found["public_keys"], 0, "{found}");
}

/// Generate ES256, RS256, PS256, ES384 and EdDSA keys on the token through the agent: proofs
/// verify with `dpop verify` and jwcrypto, the list shows them as pkcs11 keys with their URIs,
/// and the token refuses to reveal any of them.
#[test]
fn generated_keys_sign_and_never_leave_the_token() {
    let token = token("gen");
    let agent = start(&token);
    let mut keys = Vec::new();
    for alg in ["ES256", "RS256", "PS256", "ES384", "EdDSA"] {
        let key = generate(&agent, &token, &format!("gen-{}", alg.to_lowercase()), alg);
        assert_signs(&agent, &key);
        keys.push(key);
    }
    let listed = list(&agent);
    for key in &keys {
        let shown = listed
            .iter()
            .find(|k| k.label == key.label)
            .unwrap_or_else(|| panic!("{} missing from dpop keys list: {listed:?}", key.label));
        assert_eq!(shown, key, "dpop keys list shows the key as generated");
    }
    assert_eq!(listed.len(), keys.len(), "{listed:?}");
    let ids: HashSet<String> = keys.iter().map(key_id).collect();
    assert_eq!(ids.len(), keys.len(), "every key has its own CKA_ID");
    for key in &keys {
        assert_stays_on_token(&token, key, true);
    }
    // The agent's records hold no private JWK members.
    for file in files_under(&agent.data_dir()) {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        for member in [
            "\"d\"", "\"p\"", "\"q\"", "\"dp\"", "\"dq\"", "\"qi\"", "PRIVATE",
        ] {
            assert!(!text.contains(member), "{}: {text}", file.display());
        }
    }
}

/// openssl-made EC and RSA PEMs imported into the token: the same public key (and jkt) as
/// openssl and the software backend of another agent see in the PEM, proofs verify, the token
/// refuses to reveal them, and no file of the agent holds the private key in any encoding.
#[test]
fn imported_pems_match_openssl_and_leave_no_copy_behind() {
    let token = token("imp");
    let agent = start(&token);
    // The PEMs live outside the agent's directory, which is searched for them afterwards.
    let pems = new_temp_dir();
    let ec = pems.path().join("ec.pem");
    let rsa = pems.path().join("rsa.pem");
    let pss = pems.path().join("rsa-pss.pem");
    dpop_tests::openssl_ec_pem(&ec);
    openssl_rsa_pem(&rsa);
    openssl_rsa_pem(&pss);
    let cases = [
        (&ec, "imp-ec", None, "ES256"),
        (&rsa, "imp-rsa", None, "RS256"),
        (&pss, "imp-pss", Some("PS256"), "PS256"),
    ];

    let reference = TestAgent::start(AgentOptions::new());
    let mut keys = Vec::new();
    for (pem, label, alg, expected) in cases {
        let key = import(&agent, &token, pem, label, alg, expected);
        // Judged by the flags read back from the token: sign-only.
        assert_eq!(key.sign_only, Some(true), "{label}: {key:?}");
        let software = import_with(&reference, pem, label, "software", alg);
        assert_eq!(software.backend, "software");
        // A software key is sign-only by construction and says nothing.
        assert_eq!(software.sign_only, None, "{label}: {software:?}");
        assert_eq!(
            (&key.jwk, &key.jkt),
            (&software.jwk, &software.jkt),
            "{label}: the token and the software backend see different public keys in one PEM"
        );
        // And openssl agrees.
        if expected == "ES256" {
            let point = openssl_key_field(pem, "pub");
            let jwk_point = [vec![4], jwk_member(&key, "x"), jwk_member(&key, "y")].concat();
            assert_eq!(jwk_point, point, "{label}: EC point differs from openssl's");
        } else {
            assert_eq!(
                jwk_member(&key, "n"),
                openssl_key_field(pem, "modulus"),
                "{label}: RSA modulus differs from openssl's"
            );
        }
        assert_signs(&agent, &key);
        assert_stays_on_token(&token, &key, false);
        keys.push(key);
    }

    // What must not be in any file: each PEM's base64 lines, and the private scalars (EC d,
    // RSA d, p, q) raw, in hex and in base64/base64url.
    let mut secrets: Vec<(String, Vec<u8>)> = Vec::new();
    for (pem, label, _, expected) in cases {
        let text = std::fs::read_to_string(pem).expect("reading the PEM");
        for (n, line) in text.lines().enumerate() {
            if !line.starts_with("-----") && line.len() >= 16 {
                secrets.push((format!("{label} PEM line {n}"), line.as_bytes().to_vec()));
            }
        }
        let fields: &[&str] = if expected == "ES256" {
            &["priv"]
        } else {
            &["privateExponent", "prime1", "prime2"]
        };
        for field in fields {
            let raw = openssl_key_field(pem, field);
            let b64 = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&raw);
            let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw);
            secrets.push((format!("{label} {field} (raw)"), raw.clone()));
            secrets.push((format!("{label} {field} (hex)"), hex(&raw).into_bytes()));
            secrets.push((
                format!("{label} {field} (HEX)"),
                hex(&raw).to_uppercase().into_bytes(),
            ));
            secrets.push((format!("{label} {field} (base64)"), b64.into_bytes()));
            secrets.push((format!("{label} {field} (base64url)"), b64url.into_bytes()));
        }
    }
    let mut agent = agent;
    agent.stop();
    let files = files_under(agent.dir());
    assert!(
        files.iter().any(|f| f.starts_with(agent.data_dir())),
        "the agent wrote its key records into its data directory: {files:?}"
    );
    for file in files {
        let bytes = std::fs::read(&file).expect("reading an agent file");
        for (what, secret) in &secrets {
            assert!(
                !contains(&bytes, secret),
                "{} holds the imported private key ({what})",
                file.display()
            );
        }
    }
}

/// A key pair made on the token by pkcs11-tool, adopted by RFC 7512 URI: it signs, delete only
/// forgets it, and it can be adopted again. Bad URIs fail with errors that name the problem.
#[test]
fn adopt_by_uri() {
    let token = token("adopt");
    let agent = TestAgent::start(
        AgentOptions::new()
            .pkcs11(&token)
            .arg("--pkcs11-allow-adopt"),
    );
    // Made while the agent runs, as another application would (before the agent writes to
    // the token: see token_keys_survive_a_restart).
    pkcs11_tool_keypair(&token, "adoptme", "01", &[]);
    let uri = format!("pkcs11:token={};object=adoptme;type=private", token.label());
    let key = parse_key(&agent.dpop_ok(&["keys", "adopt", &uri, "--label", "adopted", "--json"]));
    assert_token_key(&key, &token, "adopted", "ES256");
    assert_eq!(key_id(&key), "01", "{key:?}");
    // The public key is the one pkcs11-tool reads from the token.
    let pubkey = token.dir().join("adoptme.pub.der");
    run_ok(
        token
            .pkcs11_tool()
            .args(["--read-object", "--type", "pubkey", "--id", "01", "-o"])
            .arg(&pubkey),
    );
    let der = std::fs::read(&pubkey).expect("pkcs11-tool wrote the public key");
    let point = [vec![4], jwk_member(&key, "x"), jwk_member(&key, "y")].concat();
    assert!(
        der.ends_with(&point),
        "the adopted key's JWK is not the token's public key {}",
        hex(&der)
    );
    assert_signs(&agent, &key);
    assert_eq!(listed(&agent, "adopted").as_ref(), Some(&key));

    // Delete forgets it; the token keeps the key pair.
    agent.dpop_ok(&["keys", "delete", "adopted", "--yes"]);
    assert_eq!(listed(&agent, "adopted"), None);
    let objects = inspect(&token, &["objects"]);
    for class in ["private", "public"] {
        assert!(
            objects
                .as_array()
                .expect("array")
                .iter()
                .any(|o| o["class"] == class && o["id"] == "01" && o["label"] == "adoptme"),
            "the adopted {class} key is gone from the token after dpop keys delete: {objects}"
        );
    }
    let private_keys = token.list_objects(PIN, Some("privkey"));
    assert!(
        private_keys.contains("label:      adoptme"),
        "pkcs11-tool does not list the adopted key after delete: {private_keys}"
    );
    // Adopted again, by id this time, it is the same key.
    let again = parse_key(&agent.dpop_ok(&[
        "keys",
        "adopt",
        &format!("pkcs11:token={};id=%01", token.label()),
        "--label",
        "again",
        "--json",
    ]));
    assert_eq!(again.jkt, key.jkt);
    assert_still_signs(&agent, &again);

    // Bad URIs: non-zero exit and a message naming the problem; the wire code says which.
    let mut client = agent.client();
    for (uri, expected_code, named) in [
        (
            "pkcs11:token=adopt;id=%zz".to_owned(),
            ErrorCode::InvalidUri,
            "\"id\": '%' must be followed by two hex digits",
        ),
        (
            "file:///etc/key.pem".to_owned(),
            ErrorCode::InvalidUri,
            "pkcs11:",
        ),
        (
            "pkcs11:token=another-token;object=adoptme".to_owned(),
            ErrorCode::InvalidUri,
            "another-token",
        ),
        (
            "pkcs11:object=adoptme?module-path=/usr/lib/nonexistent-pkcs11.so".to_owned(),
            ErrorCode::InvalidUri,
            "module-path",
        ),
        (
            format!("pkcs11:token={};object=nosuch;type=private", token.label()),
            ErrorCode::KeyNotFound,
            "nosuch",
        ),
    ] {
        let out = agent.dpop(&["keys", "adopt", &uri, "--label", "bad"]);
        let stderr = stderr_of(&out);
        assert!(
            !out.status.success(),
            "dpop keys adopt {uri} succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            stderr.contains(named),
            "dpop keys adopt {uri}: the message does not name {named:?}: {stderr}"
        );
        let (got, message) = code(client.adopt_key(dpop_client::AdoptKey::new("bad", &uri)));
        assert_eq!(got, expected_code, "{uri}: {message}");
    }
    assert_eq!(listed(&agent, "bad"), None);
}

/// A key made with CKA_ALWAYS_AUTHENTICATE (as a YubiKey's PIV slot 9c key), adopted: every
/// proof logs in for the operation, one after another and from clients at once, and the PIN
/// stays out of the log.
#[test]
fn a_key_that_wants_the_pin_for_every_signature_signs() {
    let token = token("alwaysauth");
    // As a YubiKey's PIV slot 9c key, or one made with PIN policy "always"; made before the
    // agent starts, which adopts it from its config file (a client may not adopt such a key).
    pkcs11_tool_keypair(&token, "pinned", "0a", &["--always-auth"]);
    let described = inspect(&token, &["private-key", "0a"]);
    assert_eq!(
        described["private_keys"][0]["flags"]["always_authenticate"], true,
        "{described}"
    );
    // The token insists: C_SignInit then C_Sign, with no login for the operation, is refused.
    let plain = inspect(&token, &["sign", "0a"]);
    assert_eq!(plain["error"], "UserNotLoggedIn", "{plain}");

    let config = token.dir().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[[pkcs11_adopt]]\nlabel = \"pinned\"\nuri = \"pkcs11:token={};id=%0a;type=private\"\n\
             always_authenticate = true\n",
            token.label()
        ),
    )
    .expect("writing the config file");
    let agent = TestAgent::start(
        AgentOptions::new()
            .pkcs11(&token)
            .arg("--config")
            .arg(&config),
    );
    let key = listed(&agent, "pinned").expect("the configured key is adopted at start-up");
    assert_token_key(&key, &token, "pinned", "ES256");
    // Each proof needs its own login for the operation; several in a row, and from clients
    // at once, all verify.
    for _ in 0..3 {
        assert_signs(&agent, &key);
    }
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| assert_signs(&agent, &key));
        }
    });
    let log = agent.stderr_log();
    assert!(
        log.contains("wants the PIN for each signature"),
        "the agent does not say the key wants the PIN each time:\n{log}"
    );
    assert!(!log.contains(PIN), "the PIN is in the agent's log:\n{log}");
}

/// Deleting a generated or imported key destroys its objects on the token; other keys stay.
#[test]
fn delete_destroys_the_token_objects() {
    let token = token("delete");
    let agent = start(&token);
    let pem = agent.dir().join("k.pem");
    openssl_rsa_pem(&pem);
    let gone = generate(&agent, &token, "gone", "ES256");
    let imported = import(&agent, &token, &pem, "gone-imported", None, "RS256");
    let kept = generate(&agent, &token, "kept", "ES256");
    assert_stays_on_token(&token, &gone, true);
    assert_stays_on_token(&token, &imported, false);
    assert_stays_on_token(&token, &kept, true);
    for key in [&gone, &imported] {
        let deleted = parse_key(&agent.dpop_ok(&["keys", "delete", &key.label, "--json", "--yes"]));
        assert_eq!(deleted.jkt, key.jkt);
        assert_eq!(
            listed(&agent, &key.label),
            None,
            "{} still listed",
            key.label
        );
        assert_eq!(
            objects_of(&token, key),
            (vec![], 0),
            "{}: objects left on the token after delete",
            key.label
        );
        let mut client = agent.client();
        let (got, message) =
            code(client.sign_proof(&key.label, &dpop_client::ProofRequest::new("GET", URL)));
        assert_eq!(got, ErrorCode::KeyNotFound, "{message}");
        let (got, message) = code(client.delete_key(&key.label));
        assert_eq!(got, ErrorCode::KeyNotFound, "{message}");
    }
    let objects = token.list_objects(PIN, None);
    assert!(
        !objects.contains("gone"),
        "pkcs11-tool still lists a deleted key: {objects}"
    );
    assert!(objects.contains("kept"), "{objects}");
    assert_still_signs(&agent, &kept);
    assert_eq!(list(&agent), vec![kept]);
}

/// 16 clients at once, each signing many proofs with the same token key (and a few with an
/// RSA key): every proof verifies, and no two share a jti.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_clients_sign_with_one_token_key() {
    const CLIENTS: usize = 16;
    const PROOFS: usize = 25;
    let token = token("concurrent");
    let agent = Arc::new(start(&token));
    let mut client = agent.async_client().await;
    let ec = client
        .generate_key(
            dpop_client::NewKey::new("shared-ec")
                .backend("pkcs11")
                .alg("ES256".parse().unwrap()),
        )
        .await
        .unwrap();
    let rsa = client
        .generate_key(
            dpop_client::NewKey::new("shared-rsa")
                .backend("pkcs11")
                .alg("PS256".parse().unwrap()),
        )
        .await
        .unwrap();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let agent = agent.clone();
            let key = if i % 4 == 3 { rsa.clone() } else { ec.clone() };
            tokio::spawn(async move {
                let mut client = agent.async_client().await;
                let mut jtis = Vec::new();
                for n in 0..PROOFS {
                    let url = format!("https://api.example.com/v1/items/{i}/{n}");
                    let proof = client
                        .sign_proof(
                            &key.label,
                            &dpop_client::ProofRequest::new("POST", &url)
                                .access_token(ACCESS_TOKEN),
                        )
                        .await
                        .unwrap_or_else(|e| panic!("client {i}, proof {n}: {e}"));
                    let verified = verify_proof(&proof, "POST", &url, Some(ACCESS_TOKEN));
                    assert_eq!(verified.jkt, key.jkt, "client {i}, proof {n}");
                    jtis.push(verified.claims.jti);
                }
                jtis
            })
        })
        .collect();
    let mut jtis = HashSet::new();
    for task in tasks {
        for jti in task.await.expect("a client task panicked") {
            assert!(jtis.insert(jti.clone()), "jti {jti} used twice");
        }
    }
    assert_eq!(jtis.len(), CLIENTS * PROOFS);
    assert_stays_on_token(&token, &ec, true);
    assert_stays_on_token(&token, &rsa, true);
}
