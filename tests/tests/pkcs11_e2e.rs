//! The PKCS#11 backend end to end: the real agent and `dpop` against a real SoftHSM2, each test
//! with a throw-away token of its own ([`SoftHsmToken`]: own directory, own `SOFTHSM2_CONF`),
//! so the tests run in parallel.
//!
//! - keys generated on the token (ES256, RS256, PS256, ES384, EdDSA) and PEMs imported into
//!   it sign proofs that `dpop verify` and Python's jwcrypto accept;
//! - imported keys have the thumbprint openssl and the software backend give the same PEM, and
//!   no file of the agent holds the private key;
//! - keys adopted by RFC 7512 URI, forgotten (not destroyed) on delete; bad URIs;
//! - keys survive an agent restart; deleted keys leave the token;
//! - 16 concurrent clients on one token key;
//! - wrong, missing and empty PINs; the PIN never shows in logs or output;
//! - the token deleted and brought back under a running agent;
//! - the token refuses to reveal every private key the agent made or imported;
//! - the SoftHSM2 recipes of `softhsm/README.md` and `README.md`, run as written.
//!
//! The token is inspected from outside with `dpop-test-pkcs11` (this package's helper binary,
//! raw cryptoki in a process of its own) and OpenSC's `pkcs11-tool`. A process can initialise
//! SoftHSM2 only once and sees only the tokens that existed then; a fresh process per question
//! can look at any test's token, including tokens deleted and restored meanwhile.
//!
//! Needs SoftHSM2 (`/usr/lib/softhsm/libsofthsm2.so`, or `DPOP_TEST_PKCS11_MODULE`),
//! `softhsm2-util`, `pkcs11-tool` (OpenSC), `openssl` and `python3` with jwcrypto; fails,
//! never skips, without them.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use base64::Engine;
use dpop_client::Error as ClientError;
use dpop_protocol::{ErrorCode, KeyDescription};
use dpop_tests::{
    AgentOptions, SoftHsmToken, TestAgent, binaries, jwcrypto_verify, new_temp_dir, pkcs11_module,
    process_gone, require_tool, run_ok, send_signal, verify_proof, wait_timeout, workspace_root,
    write_private_file,
};
use serde_json::Value;

const URL: &str = "https://API.example.com:443/v1/items?page=2#top";
const HTU: &str = "https://api.example.com/v1/items";
const ACCESS_TOKEN: &str = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU";

/// Token PINs, distinctive enough that finding one in a log means it leaked.
const PIN: &str = "pin-Qx83Zt7w";
const SO_PIN: &str = "so-Mf92Lk4v";
const WRONG_PIN: &str = "wrong-Kd5xR1";

fn token(label: &str) -> SoftHsmToken {
    SoftHsmToken::create(label, PIN, SO_PIN)
}

fn start(token: &SoftHsmToken) -> TestAgent {
    TestAgent::start(AgentOptions::new().pkcs11(token))
}

fn parse_key(json: &str) -> KeyDescription {
    serde_json::from_str(json).unwrap_or_else(|e| panic!("not a key description ({e}): {json}"))
}

fn list(agent: &TestAgent) -> Vec<KeyDescription> {
    serde_json::from_str(&agent.dpop_ok(&["keys", "list", "--json"]))
        .expect("dpop keys list --json prints a JSON array of keys")
}

fn listed(agent: &TestAgent, label: &str) -> Option<KeyDescription> {
    list(agent).into_iter().find(|k| k.label == label)
}

/// `dpop keys generate --backend pkcs11`, checked to describe a token key.
fn generate(agent: &TestAgent, token: &SoftHsmToken, label: &str, alg: &str) -> KeyDescription {
    let key = parse_key(&agent.dpop_ok(&[
        "keys",
        "generate",
        "--label",
        label,
        "--backend",
        "pkcs11",
        "--alg",
        alg,
        "--json",
    ]));
    assert_token_key(&key, token, label, alg);
    key
}

/// A P-256 key pair made on the token by pkcs11-tool, as another application would, with
/// `extra` options for the key.
fn pkcs11_tool_keypair(token: &SoftHsmToken, label: &str, id_hex: &str, extra: &[&str]) {
    run_ok(
        token
            .pkcs11_tool()
            .args([
                "--login",
                "--pin",
                PIN,
                "--keypairgen",
                "--key-type",
                "EC:prime256v1",
                "--label",
                label,
                "--id",
                id_hex,
            ])
            .args(extra),
    );
}

/// `dpop keys import FILE --label LABEL --backend BACKEND [--alg ALG] --json`.
fn import_with(
    agent: &TestAgent,
    pem: &Path,
    label: &str,
    backend: &str,
    alg: Option<&str>,
) -> KeyDescription {
    let mut args: Vec<&OsStr> = vec![
        "keys".as_ref(),
        "import".as_ref(),
        pem.as_os_str(),
        "--label".as_ref(),
        label.as_ref(),
        "--backend".as_ref(),
        backend.as_ref(),
        "--json".as_ref(),
    ];
    if let Some(alg) = alg {
        args.extend([OsStr::new("--alg"), OsStr::new(alg)]);
    }
    parse_key(&agent.dpop_ok(&args))
}

/// `dpop keys import FILE --backend pkcs11 [--alg ALG]`, checked to be a token key.
fn import(
    agent: &TestAgent,
    token: &SoftHsmToken,
    pem: &Path,
    label: &str,
    alg: Option<&str>,
    expected_alg: &str,
) -> KeyDescription {
    let key = import_with(agent, pem, label, "pkcs11", alg);
    assert_token_key(&key, token, label, expected_alg);
    key
}

fn assert_token_key(key: &KeyDescription, token: &SoftHsmToken, label: &str, alg: &str) {
    assert_eq!(key.label, label);
    assert_eq!(key.backend, "pkcs11", "{label}: {key:?}");
    assert_eq!(key.alg.to_string(), alg, "{label}: {key:?}");
    assert!(key.persistent, "{label}: a token key is persistent");
    let location = key.location.as_deref().unwrap_or_else(|| {
        panic!("{label}: a pkcs11 key shows its pkcs11: URI as location: {key:?}")
    });
    assert!(
        location.starts_with("pkcs11:")
            && location.contains(&format!("token={}", token.label()))
            && location.contains("id="),
        "{label}: location {location:?} is not an RFC 7512 URI of the token with an id"
    );
}

/// The `CKA_ID` (hex) in a key's `pkcs11:` location: the `id` path attribute, percent-decoded
/// (RFC 7512 allows unreserved characters unencoded).
fn key_id(key: &KeyDescription) -> String {
    let location = key.location.as_deref().expect("pkcs11 key has a location");
    let path = location
        .strip_prefix("pkcs11:")
        .expect("location is a pkcs11: URI");
    let path = path.split('?').next().unwrap_or_default();
    let value = path
        .split(';')
        .find_map(|attr| attr.strip_prefix("id="))
        .unwrap_or_else(|| panic!("no id in {location}"));
    let bytes = value.as_bytes();
    let mut id = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("ASCII");
            id.push(u8::from_str_radix(hex, 16).expect("percent-encoding is hex"));
            i += 3;
        } else {
            id.push(bytes[i]);
            i += 1;
        }
    }
    assert!(!id.is_empty(), "empty id in {location}");
    hex(&id)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `dpop proof` for `URL`, with or without the access token.
fn proof(agent: &TestAgent, label: &str, method: &str, token: Option<&str>) -> String {
    let mut args = vec!["proof", "--key", label, "-X", method, "--url", URL];
    if let Some(token) = token {
        args.extend(["--access-token", token]);
    }
    let out = agent.dpop_ok(&args);
    let proof = out.trim_end().to_owned();
    assert!(!proof.contains('\n'), "dpop proof prints one line: {out:?}");
    proof
}

/// `dpop verify --json` with the key's jkt; panics unless it says valid.
fn dpop_verify(agent: &TestAgent, proof: &str, method: &str, token: Option<&str>, jkt: &str) {
    // `--jkt=` because a thumbprint may begin with '-', which clap takes for an option.
    let jkt_arg = format!("--jkt={jkt}");
    let mut args = vec![
        "verify", "--proof", proof, "-X", method, "--url", URL, &jkt_arg, "--json",
    ];
    if let Some(token) = token {
        args.extend(["--access-token", token]);
    }
    let out: Value = serde_json::from_str(&agent.dpop_ok(&args)).expect("dpop verify --json");
    assert_eq!(out["valid"], Value::Bool(true), "dpop verify: {out}");
    assert_eq!(out["jkt"], jkt, "dpop verify: {out}");
}

/// Two proofs by `key` through `dpop proof` (POST with an access token, GET without), each
/// accepted by `dpop verify` and by jwcrypto, bound to the key's jkt.
fn assert_signs(agent: &TestAgent, key: &KeyDescription) {
    let alg = key.alg.to_string();
    for (method, token) in [("POST", Some(ACCESS_TOKEN)), ("GET", None)] {
        let proof = proof(agent, &key.label, method, token);
        dpop_verify(agent, &proof, method, token, &key.jkt);
        jwcrypto_verify(&proof, &alg, method, HTU, &key.jkt, token);
    }
}

/// A quicker check (in-process verification only), for keys already checked with
/// [`assert_signs`].
fn assert_still_signs(agent: &TestAgent, key: &KeyDescription) {
    let proof = proof(agent, &key.label, "GET", None);
    let verified = verify_proof(&proof, "GET", URL, None);
    assert_eq!(
        verified.jkt, key.jkt,
        "{}: signed by another key",
        key.label
    );
}

/// Runs the `dpop-test-pkcs11` helper on `token` (logged in with the token's PIN).
fn inspect(token: &SoftHsmToken, args: &[&str]) -> Value {
    let out = token
        .command(env!("CARGO_BIN_EXE_dpop-test-pkcs11"))
        .arg(token.module())
        .arg(token.label())
        .args(args)
        .env(dpop_tests::PKCS11_PIN_VAR, token.pin())
        .output()
        .expect("running dpop-test-pkcs11");
    assert!(
        out.status.success(),
        "dpop-test-pkcs11 {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("dpop-test-pkcs11 prints JSON")
}

/// The key's private and public objects on the token: (private keys described, public count).
fn objects_of(token: &SoftHsmToken, key: &KeyDescription) -> (Vec<Value>, u64) {
    let found = inspect(token, &["private-key", &key_id(key)]);
    (
        found["private_keys"].as_array().expect("array").clone(),
        found["public_keys"].as_u64().expect("count"),
    )
}

/// The token keeps `key`'s private half to itself: exactly one private key object under the
/// key's `CKA_ID`, whose secret parts (`CKA_VALUE`; for RSA `CKA_PRIVATE_EXPONENT` and the CRT
/// values) the token refuses to return (`CKR_ATTRIBUTE_SENSITIVE`), marked sensitive, private,
/// not extractable, and (when made on the token) never extractable and always sensitive.
fn assert_stays_on_token(token: &SoftHsmToken, key: &KeyDescription, generated: bool) {
    let name = &key.label;
    let (private, public) = objects_of(token, key);
    let [private] = &private[..] else {
        panic!(
            "{name}: {} private key objects with its CKA_ID",
            private.len()
        )
    };
    assert_eq!(public, 1, "{name}: one public key object with its CKA_ID");
    let key_type = private["key_type"].as_str().unwrap_or_default();
    let expected_type = match key.alg.to_string().as_str() {
        "RS256" | "PS256" => "CKK_RSA",
        "EdDSA" => "CKK_EC_EDWARDS",
        _ => "CKK_EC",
    };
    assert_eq!(key_type, expected_type, "{name}: {private}");
    let secrets = private["secrets"].as_object().expect("secrets");
    let wanted: &[&str] = if expected_type == "CKK_RSA" {
        &[
            "CKA_PRIVATE_EXPONENT",
            "CKA_PRIME_1",
            "CKA_PRIME_2",
            "CKA_EXPONENT_1",
            "CKA_EXPONENT_2",
            "CKA_COEFFICIENT",
        ]
    } else {
        &["CKA_VALUE"]
    };
    for part in wanted {
        assert_eq!(
            secrets.get(*part).and_then(Value::as_str),
            Some("sensitive"),
            "{name}: the token must refuse {part} with CKR_ATTRIBUTE_SENSITIVE: {private}"
        );
    }
    assert_eq!(
        private["read"],
        Value::Array(vec![]),
        "{name}: a plain read of the secret parts returned some: {private}"
    );
    let flags = &private["flags"];
    let mut want = vec![
        ("token", true),
        ("private", true),
        ("sensitive", true),
        ("extractable", false),
        ("sign", true),
    ];
    if generated {
        want.extend([("always_sensitive", true), ("never_extractable", true)]);
    }
    for (flag, value) in want {
        assert_eq!(
            flags[flag],
            Value::Bool(value),
            "{name}: CKA_{} should be {value}: {private}",
            flag.to_uppercase()
        );
    }
    assert_eq!(private["label"], key.label.as_str(), "{name}: CKA_LABEL");
}

/// The wire error code of a failed client call.
fn code(result: Result<impl std::fmt::Debug, ClientError>) -> (ErrorCode, String) {
    match result {
        Err(ClientError::Agent(e)) => (e.code, e.message),
        other => panic!("expected an error reply from the agent, got {other:?}"),
    }
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn openssl(args: &[&str], out: &Path) {
    run_ok(Command::new("openssl").args(args).arg("-out").arg(out));
}

/// A fresh RSA 2048 key as `openssl genpkey` writes it (PKCS#8 PEM).
fn rsa_pem(path: &Path) {
    openssl(
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ],
        path,
    );
}

/// A field of `openssl pkey -text -noout` (`priv`, `privateExponent`, `prime1`, `modulus`):
/// the bytes of the colon-separated hex lines under `name:`, without leading zero bytes.
fn openssl_field(pem: &Path, name: &str) -> Vec<u8> {
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

fn jwk_member(key: &KeyDescription, name: &str) -> Vec<u8> {
    let jwk = serde_json::to_value(&key.jwk).expect("JWK serializes");
    let value = jwk[name]
        .as_str()
        .unwrap_or_else(|| panic!("JWK of {} has no {name}: {jwk}", key.label));
    dpop_jose::b64url_decode(value).expect("JWK members are base64url")
}

/// Every regular file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let entry = entry.expect("directory entry");
            let kind = entry.file_type().expect("file type");
            if kind.is_dir() {
                todo.push(entry.path());
            } else if kind.is_file() {
                files.push(entry.path());
            }
        }
    }
    files
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

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
    rsa_pem(&rsa);
    rsa_pem(&pss);
    let cases = [
        (&ec, "imp-ec", None, "ES256"),
        (&rsa, "imp-rsa", None, "RS256"),
        (&pss, "imp-pss", Some("PS256"), "PS256"),
    ];

    let reference = TestAgent::start(AgentOptions::new());
    let mut keys = Vec::new();
    for (pem, label, alg, expected) in cases {
        let key = import(&agent, &token, pem, label, alg, expected);
        let software = import_with(&reference, pem, label, "software", alg);
        assert_eq!(software.backend, "software");
        assert_eq!(
            (&key.jwk, &key.jkt),
            (&software.jwk, &software.jkt),
            "{label}: the token and the software backend see different public keys in one PEM"
        );
        // And openssl agrees.
        if expected == "ES256" {
            let point = openssl_field(pem, "pub");
            let jwk_point = [vec![4], jwk_member(&key, "x"), jwk_member(&key, "y")].concat();
            assert_eq!(jwk_point, point, "{label}: EC point differs from openssl's");
        } else {
            assert_eq!(
                jwk_member(&key, "n"),
                openssl_field(pem, "modulus"),
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
            let raw = openssl_field(pem, field);
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
    let agent = start(&token);
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
    agent.dpop_ok(&["keys", "delete", "adopted"]);
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
    let out = run_ok(token.pkcs11_tool().args([
        "--login",
        "--pin",
        PIN,
        "--list-objects",
        "--type",
        "privkey",
    ]));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("label:      adoptme"),
        "pkcs11-tool does not list the adopted key after delete: {}",
        String::from_utf8_lossy(&out.stdout)
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
        let (got, message) = code(client.adopt_key(&uri, "bad", None));
        assert_eq!(got, expected_code, "{uri}: {message}");
    }
    assert_eq!(listed(&agent, "bad"), None);
}

/// Generated, imported and adopted token keys come back after a restart with the same jkt and
/// location, and still sign.
#[test]
fn a_key_that_wants_the_pin_for_every_signature_signs() {
    let token = token("alwaysauth");
    let agent = start(&token);
    // As a YubiKey's PIV slot 9c key, or one made with PIN policy "always".
    pkcs11_tool_keypair(&token, "pinned", "0a", &["--always-auth"]);
    let described = inspect(&token, &["private-key", "0a"]);
    assert_eq!(
        described["private_keys"][0]["flags"]["always_authenticate"], true,
        "{described}"
    );
    // The token insists: C_SignInit then C_Sign, with no login for the operation, is refused.
    let plain = inspect(&token, &["sign", "0a"]);
    assert_eq!(plain["error"], "UserNotLoggedIn", "{plain}");

    let uri = format!("pkcs11:token={};id=%0a;type=private", token.label());
    let key = parse_key(&agent.dpop_ok(&["keys", "adopt", &uri, "--label", "pinned", "--json"]));
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

#[test]
fn token_keys_survive_a_restart() {
    let token = token("restart");
    // Made before the agent starts: SoftHSM2 2.6 misses objects that another process creates
    // while this one runs if this one writes to the token before looking again (each process
    // tracks a generation counter, and its own write bumps past the other's change).
    pkcs11_tool_keypair(&token, "theirs", "a1b2", &[]);
    let mut agent = start(&token);
    let pem = agent.dir().join("import-me.pem");
    dpop_tests::openssl_ec_pem(&pem);
    let generated = [
        generate(&agent, &token, "r-es256", "ES256"),
        generate(&agent, &token, "r-eddsa", "EdDSA"),
    ];
    let imported = import(&agent, &token, &pem, "r-imported", None, "ES256");
    std::fs::remove_file(&pem).expect("removing the imported PEM");
    let adopted = parse_key(&agent.dpop_ok(&[
        "keys",
        "adopt",
        "pkcs11:object=theirs;type=private",
        "--label",
        "r-adopted",
        "--json",
    ]));
    let software = agent.client().generate_key("r-soft", None, None).unwrap();
    let before = list(&agent);
    assert_eq!(before.len(), 5, "{before:?}");

    agent.restart();
    let after = list(&agent);
    let token_keys: Vec<&KeyDescription> =
        before.iter().filter(|k| k.backend == "pkcs11").collect();
    assert_eq!(token_keys.len(), 4);
    for key in &token_keys {
        assert!(
            after.contains(key),
            "{} changed or vanished across the restart: {after:?}",
            key.label
        );
        assert_still_signs(&agent, key);
    }
    // The software key was memory-only (no passphrase), as the agent warned.
    assert!(!after.iter().any(|k| k.label == software.label));
    for key in &generated {
        assert_stays_on_token(&token, key, true);
    }
    assert_stays_on_token(&token, &imported, false);
    assert_signs(&agent, &adopted);
}

/// Deleting a generated or imported key destroys its objects on the token; other keys stay.
#[test]
fn delete_destroys_the_token_objects() {
    let token = token("delete");
    let agent = start(&token);
    let pem = agent.dir().join("k.pem");
    rsa_pem(&pem);
    let gone = generate(&agent, &token, "gone", "ES256");
    let imported = import(&agent, &token, &pem, "gone-imported", None, "RS256");
    let kept = generate(&agent, &token, "kept", "ES256");
    assert_stays_on_token(&token, &gone, true);
    assert_stays_on_token(&token, &imported, false);
    assert_stays_on_token(&token, &kept, true);
    for key in [&gone, &imported] {
        let deleted = parse_key(&agent.dpop_ok(&["keys", "delete", &key.label, "--json"]));
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
    let out = run_ok(
        token
            .pkcs11_tool()
            .args(["--login", "--pin", PIN, "--list-objects"]),
    );
    let objects = String::from_utf8_lossy(&out.stdout);
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
        .generate_key("shared-ec", Some("pkcs11"), Some("ES256".parse().unwrap()))
        .await
        .unwrap();
    let rsa = client
        .generate_key("shared-rsa", Some("pkcs11"), Some("PS256".parse().unwrap()))
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

/// A wrong PIN: the agent refuses to start, says the token refused the PIN, never shows it,
/// tries it once (the token is not locked), and starts with the right PIN afterwards.
#[test]
fn wrong_pin_is_refused_once_and_never_shown() {
    let token = token("wrongpin");
    let failure = TestAgent::try_start(
        AgentOptions::new()
            .pkcs11_pin_env(&token, WRONG_PIN)
            .env("RUST_LOG", "debug"),
    )
    .expect_err("the agent started with a wrong PIN");
    assert!(
        failure.status.is_some_and(|s| !s.success()),
        "the agent should exit non-zero: {:?}\n{}",
        failure.status,
        failure.stderr
    );
    assert!(
        failure.stderr.contains("refused the PIN"),
        "the message does not say the token refused the PIN:\n{}",
        failure.stderr
    );
    assert!(
        failure.stderr.contains(&format!("\"{}\"", token.label())),
        "the message does not name the token:\n{}",
        failure.stderr
    );
    let info = inspect(&token, &["token-info"]);
    assert_eq!(info["user_pin_locked"], false, "{info}");
    assert_eq!(info["user_pin_final_try"], false, "{info}");
    assert_eq!(
        info["user_pin_count_low"], true,
        "the token saw no failed login: {info}"
    );

    let agent = TestAgent::try_start_in(
        failure.dir,
        AgentOptions::new().pkcs11(&token).env("RUST_LOG", "debug"),
    )
    .unwrap_or_else(|f| panic!("the right PIN should work after a wrong one:\n{}", f.stderr));
    let info = inspect(&token, &["token-info"]);
    assert_eq!(info["user_pin_count_low"], false, "{info}");
    let key = generate(&agent, &token, "after-wrong-pin", "ES256");
    assert_signs(&agent, &key);
    assert_stays_on_token(&token, &key, true);
    let log = agent.stderr_log();
    for pin in [WRONG_PIN, PIN] {
        assert!(!log.contains(pin), "a PIN is in the agent's log:\n{log}");
    }
}

/// A missing environment variable, an empty one, an empty or missing PIN file: the agent
/// refuses to start and names the source, without trying to log in.
#[test]
fn missing_or_empty_pin_is_a_clear_error() {
    let token = token("nopin");
    let empty_file = token.dir().join("empty-pin");
    write_private_file(&empty_file, b"\n");
    let missing_file = token.dir().join("no-such-pin-file");
    let cases = [
        (
            "unset variable",
            AgentOptions::new()
                .pkcs11_no_pin(&token)
                .arg("--pkcs11-pin-env")
                .arg("DPOP_TEST_UNSET_PIN_VARIABLE"),
            vec!["DPOP_TEST_UNSET_PIN_VARIABLE", "not set"],
        ),
        (
            "empty variable",
            AgentOptions::new().pkcs11_pin_env(&token, ""),
            vec![dpop_tests::PKCS11_PIN_VAR, "empty"],
        ),
        (
            "empty file",
            AgentOptions::new()
                .pkcs11_no_pin(&token)
                .arg("--pkcs11-pin-file")
                .arg(&empty_file),
            vec![empty_file.to_str().unwrap(), "empty"],
        ),
        (
            "missing file",
            AgentOptions::new()
                .pkcs11_no_pin(&token)
                .arg("--pkcs11-pin-file")
                .arg(&missing_file),
            vec![missing_file.to_str().unwrap()],
        ),
    ];
    for (what, options, named) in cases {
        let failure = TestAgent::try_start(options.env("RUST_LOG", "debug"))
            .err()
            .unwrap_or_else(|| panic!("{what}: the agent started without a PIN"));
        assert!(
            failure.status.is_some_and(|s| !s.success()),
            "{what}: {:?}",
            failure.status
        );
        assert!(
            failure.stderr.contains("PIN"),
            "{what}: the message does not say it is about the PIN:\n{}",
            failure.stderr
        );
        for name in named {
            assert!(
                failure.stderr.contains(name),
                "{what}: the message does not name {name:?}:\n{}",
                failure.stderr
            );
        }
    }
    let info = inspect(&token, &["token-info"]);
    assert_eq!(
        info["user_pin_count_low"], false,
        "no login should have been tried: {info}"
    );
}

/// The agent configured by TOML (`pkcs11_module`, `pkcs11_serial`, `pkcs11_pin_file`) with
/// debug logging: through key generation, import, proofs, listing, a refused `pin-value` URI
/// carrying the PIN, and deletion, the PIN appears in no output and not in the agent's log.
#[test]
fn pin_never_appears_in_logs_or_output() {
    let token = token("quiet");
    let serial = inspect(&token, &["token-info"])["serial"]
        .as_str()
        .expect("serial")
        .to_owned();
    let pin_file = token.dir().join("pin");
    write_private_file(&pin_file, format!("{PIN}\n").as_bytes());
    let config = token.dir().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "pkcs11_module = {:?}\npkcs11_serial = {serial:?}\npkcs11_pin_file = {:?}\n",
            token.module().display().to_string(),
            pin_file.display().to_string()
        ),
    )
    .unwrap();
    let agent = TestAgent::start(
        AgentOptions::new()
            .arg("--config")
            .arg(&config)
            .env("SOFTHSM2_CONF", token.conf())
            .env("RUST_LOG", "debug"),
    );
    let pem = agent.dir().join("k.pem");
    dpop_tests::openssl_ec_pem(&pem);
    let mut outputs: Vec<Output> = Vec::new();
    let mut run = |args: &[&str]| {
        let out = agent.dpop(args);
        outputs.push(out.clone());
        out
    };
    let key = run(&[
        "keys",
        "generate",
        "--label",
        "quiet",
        "--backend",
        "pkcs11",
        "--json",
    ]);
    assert!(key.status.success(), "{}", stderr_of(&key));
    let key = parse_key(&String::from_utf8_lossy(&key.stdout));
    assert_token_key(&key, &token, "quiet", "ES256");
    assert!(
        key.location
            .as_deref()
            .is_some_and(|l| l.contains(&format!("serial={serial}"))),
        "{key:?}"
    );
    let imported = run(&[
        "keys",
        "import",
        pem.to_str().unwrap(),
        "--label",
        "quiet-imported",
        "--backend",
        "pkcs11",
    ]);
    assert!(imported.status.success(), "{}", stderr_of(&imported));
    let signed = run(&["proof", "--key", "quiet", "-X", "GET", "--url", URL]);
    assert!(signed.status.success(), "{}", stderr_of(&signed));
    verify_proof(
        String::from_utf8_lossy(&signed.stdout).trim(),
        "GET",
        URL,
        None,
    );
    assert!(run(&["keys", "list"]).status.success());
    assert!(run(&["keys", "list", "--json"]).status.success());
    let refused = run(&[
        "keys",
        "adopt",
        &format!("pkcs11:object=quiet;type=private?pin-value={PIN}"),
        "--label",
        "with-pin",
    ]);
    assert!(!refused.status.success(), "a pin-value URI was accepted");
    assert!(
        stderr_of(&refused).contains("pin-value"),
        "the refusal does not name pin-value: {}",
        stderr_of(&refused)
    );
    assert!(run(&["keys", "delete", "quiet-imported"]).status.success());
    let mut agent = agent;
    agent.stop();
    let log = agent.stderr_log();
    assert!(log.contains("DEBUG"), "debug logging is on:\n{log}");
    assert!(!log.contains(PIN), "the PIN is in the agent's log:\n{log}");
    for out in &outputs {
        for stream in [&out.stdout, &out.stderr] {
            assert!(
                !String::from_utf8_lossy(stream).contains(PIN),
                "the PIN is in dpop's output: {}",
                String::from_utf8_lossy(stream)
            );
        }
    }
}

/// The token deleted under a running agent (`softhsm2-util --delete-token`, the closest thing
/// to unplugging it): token key proofs fail with token_not_present while the agent keeps
/// serving hello, software keys and the list; a delete then fails and loses nothing. Then the
/// token comes back (its storage restored, same serial and objects). SoftHSM2 2.6 never shows
/// a running process a token that appeared after its `C_Initialize` (its slot list is built
/// once, and a token whose directory vanished stays invalid in that process), so an agent
/// recovers without restart only where the module allows; either way a restart brings every
/// key back with the same jkt.
#[test]
fn token_removed_and_back() {
    let token = token("removal");
    let mut agent = start(&token);
    let pem = agent.dir().join("k.pem");
    dpop_tests::openssl_ec_pem(&pem);
    let generated = generate(&agent, &token, "hsm-generated", "ES256");
    let imported = import(&agent, &token, &pem, "hsm-imported", None, "ES256");
    let mut client = agent.client();
    let software = client.generate_key("soft", None, None).unwrap();
    assert_still_signs(&agent, &generated);
    assert_stays_on_token(&token, &generated, true);
    assert_stays_on_token(&token, &imported, false);

    let backup = token.dir().join("unplugged");
    run_ok(
        Command::new("cp")
            .arg("-a")
            .arg(token.tokens_dir())
            .arg(&backup),
    );
    token.delete();
    assert_eq!(
        std::fs::read_dir(token.tokens_dir()).unwrap().count(),
        0,
        "softhsm2-util removed the token's storage"
    );

    let out = agent.dpop(&["proof", "--key", "hsm-generated", "-X", "GET", "--url", URL]);
    assert!(!out.status.success(), "a proof without the token");
    let stderr = stderr_of(&out);
    assert!(
        stderr.contains("token is not present") && stderr.contains("\"removal\""),
        "dpop proof does not say that the token \"removal\" is not present: {stderr}"
    );
    for key in [&generated, &imported] {
        for _ in 0..2 {
            let (got, message) =
                code(client.sign_proof(&key.label, &dpop_client::ProofRequest::new("GET", URL)));
            assert_eq!(got, ErrorCode::TokenNotPresent, "{}: {message}", key.label);
        }
    }
    // The agent carries on with everything else.
    let hello = client.hello().expect("hello without the token");
    assert!(hello.backends.iter().any(|b| b == "pkcs11"), "{hello:?}");
    assert_still_signs(&agent, &software);
    let listed = list(&agent);
    assert!(listed.iter().any(|k| k.label == "soft"), "{listed:?}");
    // A delete without the token fails and keeps the key.
    let (got, message) = code(client.delete_key("hsm-generated"));
    assert_eq!(got, ErrorCode::TokenNotPresent, "{message}");

    // The token comes back.
    for entry in std::fs::read_dir(&backup).unwrap() {
        let entry = entry.unwrap();
        run_ok(
            Command::new("cp")
                .arg("-a")
                .arg(entry.path())
                .arg(token.tokens_dir()),
        );
    }
    // The agent looks again (re-initialising the module, at most every 2 s, since SoftHSM2
    // builds its slot list only then) and recovers without a restart.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let proof = loop {
        match client.sign_proof("hsm-generated", &dpop_client::ProofRequest::new("GET", URL)) {
            Ok(proof) => break proof,
            Err(ClientError::Agent(e)) if e.code == ErrorCode::TokenNotPresent => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the agent did not find the token again within 10 s: {}\n{}",
                    e.message,
                    agent.stderr_log()
                );
                std::thread::sleep(std::time::Duration::from_millis(250));
            }
            Err(e) => panic!("after the token came back: {e}"),
        }
    };
    assert_eq!(verify_proof(&proof, "GET", URL, None).jkt, generated.jkt);
    assert_still_signs(&agent, &imported);
    assert_still_signs(&agent, &software);
    drop(client);

    agent.restart();
    let after = list(&agent);
    for key in [&generated, &imported] {
        assert!(
            after.contains(key),
            "{} did not come back after the restart: {after:?}\n{}",
            key.label,
            agent.stderr_log()
        );
        assert_still_signs(&agent, key);
        assert_stays_on_token(&token, key, key.label == "hsm-generated");
    }
}

/// A command from a README code block, run by `sh`; `/tmp/hsm` becomes `hsm_dir` and the
/// SoftHSM2 module path the module under test.
fn readme_block(readme: &str, first_line_contains: &str) -> Vec<String> {
    let path = workspace_root().join(readme);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{readme}: {e}"));
    let mut in_block = false;
    let mut block = Vec::new();
    for line in text.lines() {
        if line.starts_with("```") {
            if in_block
                && block
                    .iter()
                    .any(|l: &String| l.contains(first_line_contains))
            {
                return block;
            }
            in_block = line == "```sh";
            block.clear();
        } else if in_block {
            block.push(line.to_owned());
        }
    }
    panic!("{readme} has no sh block with {first_line_contains:?}")
}

/// The environment of a README recipe: binaries on PATH, HOME and XDG directories inside
/// `home`, no agent of the caller's.
fn recipe_command(home: &Path, script: &str) -> Command {
    let bins = binaries();
    let bin_dir = bins.agent.parent().expect("binary directory");
    assert_eq!(
        bins.dpop.parent(),
        Some(bin_dir),
        "dpop and dpop-agent side by side"
    );
    let run = home.join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::set_permissions(&run, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(script)
        .current_dir(workspace_root())
        .env("PATH", path)
        .env("HOME", home)
        .env("XDG_RUNTIME_DIR", &run)
        .env("XDG_DATA_HOME", home.join("data"))
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env_remove("SOFTHSM2_CONF")
        .env_remove("DPOP_AUTH_SOCK")
        .env_remove("DPOP_AGENT_PID")
        .env_remove("DPOP_AGENT_PASSPHRASE")
        .env_remove("RUST_LOG")
        .env_remove("PIN")
        .stdin(Stdio::null());
    command
}

fn adapt_recipe(lines: &[String], hsm_dir: &Path) -> Vec<String> {
    let module = pkcs11_module();
    lines
        .iter()
        .filter(|l| !l.trim_start().starts_with("sudo "))
        .map(|l| {
            l.replace("/tmp/hsm", &hsm_dir.display().to_string())
                .replace(
                    "/usr/lib/softhsm/libsofthsm2.so",
                    &module.display().to_string(),
                )
        })
        .collect()
}

/// softhsm/README.md's recipe as written (token by make-token.sh, SOFTHSM2_CONF exported, the
/// agent in the foreground with the documented flags, PIN=1234 in its environment): a token
/// key's proof verifies.
#[test]
fn softhsm_readme_recipe_works() {
    require_tool("softhsm2-util", &["--version"], "softhsm2");
    let home = new_temp_dir();
    let hsm = home.path().join("hsm");
    let recipe = adapt_recipe(&readme_block("softhsm/README.md", "make-token.sh"), &hsm);
    assert_eq!(
        recipe.len(),
        2,
        "make the token, start the agent: {recipe:?}"
    );
    assert!(recipe[1].starts_with("dpop-agent -D "), "{recipe:?}");
    // The agent runs in front: `exec` it so that this test can stop it by its pid.
    let script = format!("set -e\n{}\nexec {}\n", recipe[0], recipe[1]);
    let log = std::fs::File::create(home.path().join("agent.log")).unwrap();
    let mut child = recipe_command(home.path(), &script)
        .env("PIN", "1234")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("running sh");
    struct Stop(u32);
    impl Drop for Stop {
        fn drop(&mut self) {
            if !process_gone(self.0) {
                send_signal(self.0, libc::SIGTERM);
            }
        }
    }
    let _stop = Stop(child.id());
    let socket = home.path().join("run/dpop-agent/agent.sock");
    let deadline = std::time::Instant::now() + dpop_tests::PROCESS_TIMEOUT;
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the recipe's agent exited ({status}):\n{}",
                std::fs::read_to_string(home.path().join("agent.log")).unwrap_or_default()
            );
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the recipe's agent is not listening on {}",
            socket.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let dpop = |args: &[&str]| {
        let out = Command::new(&binaries().dpop)
            .args(args)
            .env("DPOP_AUTH_SOCK", &socket)
            .output()
            .unwrap();
        assert!(out.status.success(), "dpop {args:?}: {}", stderr_of(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let key = parse_key(&dpop(&[
        "keys",
        "generate",
        "--label",
        "dev",
        "--backend",
        "pkcs11",
        "--alg",
        "ES256",
        "--json",
    ]));
    assert_eq!(key.backend, "pkcs11");
    assert!(
        key.location
            .as_deref()
            .is_some_and(|l| l.starts_with("pkcs11:token=dpop;")),
        "{key:?}"
    );
    let proof = dpop(&["proof", "--key", "dev", "-X", "GET", "--url", URL]);
    let verified = verify_proof(proof.trim(), "GET", URL, None);
    assert_eq!(verified.jkt, key.jkt);
    send_signal(child.id(), libc::SIGTERM);
    let status = wait_timeout(&mut child, dpop_tests::PROCESS_TIMEOUT).expect("agent stops");
    assert!(
        status.success(),
        "the agent exited with {status} on SIGTERM"
    );
}

/// README.md's three-line CI recipe as written (make-token.sh, `export PIN=1234`, the agent
/// started in the background by `eval "$(dpop-agent ...)"`), then a token key and a proof
/// through `dpop`, and `dpop-agent -k`.
#[test]
fn readme_ci_recipe_works() {
    require_tool("softhsm2-util", &["--version"], "softhsm2");
    let home = new_temp_dir();
    let hsm = home.path().join("hsm");
    let recipe = adapt_recipe(&readme_block("README.md", "make-token.sh"), &hsm);
    assert_eq!(recipe.len(), 3, "three lines: {recipe:?}");
    let out_dir = home.path();
    // Run from the workspace root (the recipe calls softhsm/make-token.sh); results go to
    // `out_dir`.
    let script = format!(
        "set -e\n{recipe}\necho \"$DPOP_AGENT_PID\" > '{out}/agent.pid'\n\
         trap 'dpop-agent -k > /dev/null' EXIT\n\
         dpop keys generate --label ci --backend pkcs11 --alg ES256 --json > '{out}/key.json'\n\
         dpop proof --key ci -X GET --url '{URL}' > '{out}/proof'\n",
        recipe = recipe.join("\n"),
        out = out_dir.display(),
    );
    let out = recipe_command(out_dir, &script)
        .output()
        .expect("running sh");
    // Whatever happened, no agent is left behind (`-k` signals it and does not wait).
    if let Ok(pid) = std::fs::read_to_string(out_dir.join("agent.pid"))
        && let Ok(pid) = pid.trim().parse::<u32>()
    {
        let deadline = std::time::Instant::now() + dpop_tests::PROCESS_TIMEOUT;
        while !process_gone(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        if !process_gone(pid) {
            send_signal(pid, libc::SIGKILL);
            panic!("dpop-agent -k left the agent {pid} running");
        }
    }
    assert!(
        out.status.success(),
        "the README recipe failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        stderr_of(&out)
    );
    let read = |name: &str| std::fs::read_to_string(out_dir.join(name)).expect("recipe output");
    let key = parse_key(&read("key.json"));
    assert_eq!(key.backend, "pkcs11");
    assert!(
        key.location
            .as_deref()
            .is_some_and(|l| l.starts_with("pkcs11:token=dpop;")),
        "{key:?}"
    );
    let verified = verify_proof(read("proof").trim(), "GET", URL, None);
    assert_eq!(verified.jkt, key.jkt);
}

#[test]
fn config_file_adopts_token_keys_at_start() {
    let token = token("cfgadopt");
    // Made before the agent starts (SoftHSM2 hides other processes' later objects).
    pkcs11_tool_keypair(&token, "piv-9a", "9a", &[]);
    let config = token.dir().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[[pkcs11_adopt]]\nlabel = \"yubikey\"\nuri = \"pkcs11:token={};id=%9a;type=private\"\n\n\
             [[pkcs11_adopt]]\nlabel = \"missing\"\nuri = \"pkcs11:token={};object=nothing-here;type=private\"\n",
            token.label(),
            token.label()
        ),
    )
    .expect("writing the config file");
    let mut agent = TestAgent::start(
        AgentOptions::new()
            .pkcs11(&token)
            .arg("--config")
            .arg(&config),
    );
    let key = listed(&agent, "yubikey").expect("the configured key is adopted at start-up");
    assert_token_key(&key, &token, "yubikey", "ES256");
    assert_eq!(key_id(&key), "9a", "{key:?}");
    assert_signs(&agent, &key);
    // A configured key that is not on the token is reported, and the agent serves the rest.
    assert_eq!(listed(&agent, "missing"), None);
    let log = agent.stderr_log();
    assert!(
        log.contains("missing") && log.contains("pkcs11_adopt"),
        "the unadoptable entry is reported:\n{log}"
    );
    // On restart the recorded key is loaded, not adopted twice.
    agent.restart();
    assert_eq!(listed(&agent, "yubikey").as_ref(), Some(&key));
    assert_still_signs(&agent, &key);
}

/// Runs `command` under a pseudo-terminal (`script`), types `pin` once the agent asks for it,
/// and returns the `script` process and everything it printed up to the prompt.
fn with_terminal(command: &str, token: &SoftHsmToken, pin: &str) -> (std::process::Child, String) {
    use std::io::{Read, Write};
    require_tool("script", &["--version"], "bsdutils");
    let mut child = Command::new("script")
        .args(["-q", "-e", "-c", command, "/dev/null"])
        .env("SOFTHSM2_CONF", token.conf())
        .env_remove("DPOP_AUTH_SOCK")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("running script(1)");
    let mut stdout = child.stdout.take().expect("piped");
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains("PIN for the PKCS#11") {
        let n = stdout.read(&mut buf).expect("reading the terminal");
        assert!(n > 0, "no PIN prompt: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    let stdin = child.stdin.as_mut().expect("piped");
    stdin
        .write_all(format!("{pin}\n").as_bytes())
        .expect("typing the PIN");
    stdin.flush().expect("typing the PIN");
    // Keep reading in the background so the terminal never blocks the agent.
    let rest = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stdout.read_to_end(&mut text);
        text
    });
    drop(rest); // detached: it ends when the terminal closes
    (child, String::from_utf8_lossy(&seen).into_owned())
}

fn quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

fn wait_for_socket(socket: &Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(socket).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "no agent listening on {} after the PIN was typed",
            socket.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn pin_prompt_on_the_terminal() {
    let token = token("prompt");
    let dir = new_temp_dir();
    let agent = dpop_tests::binaries().agent.clone();
    let common = format!(
        "--data-dir {} --pkcs11-module {} --pkcs11-token {}",
        quote(&dir.path().join("data")),
        quote(&pkcs11_module()),
        token.label()
    );

    // Foreground: the agent itself asks on its terminal (the PIN is not echoed back).
    let socket = dir.path().join("fg.sock");
    let command = format!("{} -D -a {} {common}", quote(&agent), quote(&socket));
    let (mut child, prompt) = with_terminal(&command, &token, PIN);
    assert!(
        prompt.contains(token.label()),
        "the prompt names the token: {prompt}"
    );
    wait_for_socket(&socket);
    let mut client = dpop_client::blocking::Client::connect(&socket).expect("connect");
    let key = client
        .generate_key("prompted", Some("pkcs11"), None)
        .expect("a token key after the PIN was typed");
    let proof = client
        .sign_proof("prompted", &dpop_client::ProofRequest::new("GET", URL))
        .expect("proof");
    assert_eq!(verify_proof(&proof, "GET", URL, None).jkt, key.jkt);
    drop(client);
    let _ = child.kill();
    let _ = child.wait();
    // The foreground agent shares script's session: make sure it is gone before going on.
    let _ = Command::new("pkill")
        .arg("-f")
        .arg(socket.to_string_lossy().as_ref())
        .status();

    // Background start: the launcher asks, then hands the PIN to the detached agent.
    let socket = dir.path().join("bg.sock");
    let command = format!("{} -a {} {common}", quote(&agent), quote(&socket));
    let (mut child, _) = with_terminal(&command, &token, PIN);
    let status = child.wait().expect("the launcher exits");
    assert!(status.success(), "the launcher failed: {status}");
    wait_for_socket(&socket);
    let mut client = dpop_client::blocking::Client::connect(&socket).expect("connect");
    let keys = client.list_keys().expect("list");
    assert!(
        keys.iter()
            .any(|k| k.label == "prompted" && k.jkt == key.jkt),
        "the background agent logged in and loaded the token key: {keys:?}"
    );
    let proof = client
        .sign_proof("prompted", &dpop_client::ProofRequest::new("GET", URL))
        .expect("proof");
    assert_eq!(verify_proof(&proof, "GET", URL, None).jkt, key.jkt);
    drop(client);
    let stopped = Command::new(&agent)
        .arg("-k")
        .env("DPOP_AUTH_SOCK", &socket)
        .output()
        .expect("dpop-agent -k");
    assert!(
        stopped.status.success(),
        "{}",
        String::from_utf8_lossy(&stopped.stderr)
    );
}
