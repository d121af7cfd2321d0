//! Helpers of the PKCS#11 end-to-end tests (the `pkcs11_*` modules of the `e2e` test binary):
//! a throw-away token per test, on SoftHSM2 ([`SoftHsmToken`]: own directory, own
//! `SOFTHSM2_CONF`, so the tests run in parallel) or on tpm2-pkcs11
//! ([`Tpm2Token`](crate::tpm2_pkcs11::Tpm2Token): own TPM, broker and store), both behind
//! [`Pkcs11Token`]; keys made through `dpop`, proofs checked by `dpop verify`, jwcrypto and
//! dpop-jose, and the token inspected from outside.
//!
//! The token is inspected with `dpop-test-pkcs11` ([`inspect`]: this package's helper binary,
//! raw cryptoki in a process of its own) and OpenSC's `pkcs11-tool`. A process can initialise
//! SoftHSM2 only once and sees only the tokens that existed then; a fresh process per question
//! can look at any test's token, including tokens deleted and restored meanwhile.
//!
//! Needs SoftHSM2 (`/usr/lib/softhsm/libsofthsm2.so`, or `DPOP_TEST_PKCS11_MODULE`),
//! `softhsm2-util`, `pkcs11-tool` (OpenSC), `openssl` and `python3` with jwcrypto; fails,
//! never skips, without them.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use dpop_client::Error as ClientError;
use dpop_protocol::{ErrorCode, KeyDescription};
use serde_json::Value;

use crate::{
    AgentOptions, SoftHsmToken, TestAgent, jwcrypto_verify, require_command, run_ok, verify_proof,
};

/// A token the PKCS#11 tests run on, whichever module holds it: what an agent and an outside
/// process (`pkcs11-tool`, `dpop-test-pkcs11`) need to reach it.
pub trait Pkcs11Token {
    /// The PKCS#11 module.
    fn module(&self) -> &Path;
    /// The token label.
    fn label(&self) -> &str;
    /// The user PIN.
    fn pin(&self) -> &str;
    /// A directory of the token's own (PIN files go there).
    fn dir(&self) -> &Path;
    /// The environment the module needs to find the token (`SOFTHSM2_CONF`; tpm2-pkcs11's
    /// store, TCTI and bus).
    fn env(&self) -> Vec<(OsString, OsString)>;

    /// `program` with [`env`](Self::env).
    fn command(&self, program: impl AsRef<OsStr>) -> Command
    where
        Self: Sized,
    {
        let mut command = Command::new(program);
        command.envs(self.env());
        command
    }

    /// OpenSC's `pkcs11-tool` on this token (`--module`, `--token-label`); panics, naming the
    /// package, when it is not installed.
    fn pkcs11_tool(&self) -> Command
    where
        Self: Sized,
    {
        require_command(
            self.command("pkcs11-tool")
                .arg("--module")
                .arg(self.module())
                .arg("--show-info"),
            "pkcs11-tool",
            "opensc",
        );
        let mut command = self.command("pkcs11-tool");
        command
            .arg("--module")
            .arg(self.module())
            .arg("--token-label")
            .arg(self.label());
        command
    }
}

/// The URL the proofs are for, as a client would write it; [`HTU`] is its normalised form.
pub const URL: &str = "https://API.example.com:443/v1/items?page=2#top";
/// The `htu` of [`URL`].
pub const HTU: &str = "https://api.example.com/v1/items";
/// The access token of the `ath` checks.
pub const ACCESS_TOKEN: &str = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU";

/// The user PIN of every test token. The PINs are distinctive enough that finding one in a
/// log means it leaked.
pub const PIN: &str = "pin-Qx83Zt7w";
/// The security officer PIN of every test token.
pub const SO_PIN: &str = "so-Mf92Lk4v";
/// A PIN no token has.
pub const WRONG_PIN: &str = "wrong-Kd5xR1";

/// A throw-away token `label` with [`PIN`] (and a security officer PIN), in a configuration of
/// its own.
pub fn token(label: &str) -> SoftHsmToken {
    SoftHsmToken::create(label, PIN, SO_PIN)
}

/// An agent on `token`, its PIN from the environment.
pub fn start(token: &impl Pkcs11Token) -> TestAgent {
    TestAgent::start(AgentOptions::new().pkcs11(token))
}

/// A key description printed by `dpop ... --json`.
pub fn parse_key(json: &str) -> KeyDescription {
    serde_json::from_str(json).unwrap_or_else(|e| panic!("not a key description ({e}): {json}"))
}

/// `dpop keys list --json`.
pub fn list(agent: &TestAgent) -> Vec<KeyDescription> {
    serde_json::from_str(&agent.dpop_ok(&["keys", "list", "--json"]))
        .expect("dpop keys list --json prints a JSON array of keys")
}

/// The key `label` in `dpop keys list`, if listed.
pub fn listed(agent: &TestAgent, label: &str) -> Option<KeyDescription> {
    list(agent).into_iter().find(|k| k.label == label)
}

/// `dpop keys generate --backend pkcs11`, checked to describe a token key.
pub fn generate(
    agent: &TestAgent,
    token: &impl Pkcs11Token,
    label: &str,
    alg: &str,
) -> KeyDescription {
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
pub fn pkcs11_tool_keypair(token: &impl Pkcs11Token, label: &str, id_hex: &str, extra: &[&str]) {
    run_ok(
        token
            .pkcs11_tool()
            .args([
                "--login",
                "--pin",
                token.pin(),
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
pub fn import_with(
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
pub fn import(
    agent: &TestAgent,
    token: &impl Pkcs11Token,
    pem: &Path,
    label: &str,
    alg: Option<&str>,
    expected_alg: &str,
) -> KeyDescription {
    let key = import_with(agent, pem, label, "pkcs11", alg);
    assert_token_key(&key, token, label, expected_alg);
    key
}

/// `key` is the token key `label` as the agent describes it: pkcs11 backend, `alg`,
/// persistent, located by an RFC 7512 URI naming the token and the key's `CKA_ID`.
pub fn assert_token_key(key: &KeyDescription, token: &impl Pkcs11Token, label: &str, alg: &str) {
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
pub fn key_id(key: &KeyDescription) -> String {
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

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `dpop proof` for `URL`, with or without the access token.
pub fn proof(agent: &TestAgent, label: &str, method: &str, token: Option<&str>) -> String {
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
pub fn assert_signs(agent: &TestAgent, key: &KeyDescription) {
    let alg = key.alg.to_string();
    for (method, token) in [("POST", Some(ACCESS_TOKEN)), ("GET", None)] {
        let proof = proof(agent, &key.label, method, token);
        dpop_verify(agent, &proof, method, token, &key.jkt);
        jwcrypto_verify(&proof, &alg, method, HTU, &key.jkt, token);
    }
}

/// A quicker check (in-process verification only), for keys already checked with
/// [`assert_signs`].
pub fn assert_still_signs(agent: &TestAgent, key: &KeyDescription) {
    let proof = proof(agent, &key.label, "GET", None);
    let verified = verify_proof(&proof, "GET", URL, None);
    assert_eq!(
        verified.jkt, key.jkt,
        "{}: signed by another key",
        key.label
    );
}

/// Runs the `dpop-test-pkcs11` helper on `token` (logged in with the token's PIN).
pub fn inspect(token: &impl Pkcs11Token, args: &[&str]) -> Value {
    let out = token
        .command(helper())
        .arg(token.module())
        .arg(token.label())
        .args(args)
        .env(crate::PKCS11_PIN_VAR, token.pin())
        .output()
        .expect("running dpop-test-pkcs11");
    assert!(
        out.status.success(),
        "dpop-test-pkcs11 {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("dpop-test-pkcs11 prints JSON")
}

/// The `dpop-test-pkcs11` helper binary. Cargo builds a package's binaries for its integration
/// tests and puts them next to the test executables' `deps/` directory (the path it gives as
/// `CARGO_BIN_EXE_dpop-test-pkcs11`, which a library does not get).
pub(crate) fn helper() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the running test executable");
    let mut dir = exe.parent().expect("executable has a directory").to_owned();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let helper = dir.join("dpop-test-pkcs11");
    assert!(
        helper.is_file(),
        "{} not found: run the tests with cargo test -p dpop-tests, which builds it",
        helper.display()
    );
    helper
}

/// The key's private and public objects on the token: (private keys described, public count).
pub fn objects_of(token: &impl Pkcs11Token, key: &KeyDescription) -> (Vec<Value>, u64) {
    let found = inspect(token, &["private-key", &key_id(key)]);
    (
        found["private_keys"].as_array().expect("array").clone(),
        found["public_keys"].as_u64().expect("count"),
    )
}

/// The token keeps `key`'s private half to itself: exactly one private key object under the
/// key's `CKA_ID`, whose secret parts (`CKA_VALUE`; for RSA `CKA_PRIVATE_EXPONENT` and the CRT
/// values) the token refuses to return (`CKR_ATTRIBUTE_SENSITIVE`) or does not have (a TPM
/// holds them: `CKR_ATTRIBUTE_TYPE_INVALID`), marked sensitive, private,
/// not extractable, and (when made on the token) never extractable and always sensitive.
pub fn assert_stays_on_token(token: &impl Pkcs11Token, key: &KeyDescription, generated: bool) {
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
        // A token that keeps the key in a TPM (tpm2-pkcs11) has no such attribute at all.
        let answer = secrets.get(*part).and_then(Value::as_str);
        assert!(
            matches!(answer, Some("sensitive" | "type_invalid")),
            "{name}: the token must refuse {part} with CKR_ATTRIBUTE_SENSITIVE (or not have \
             it): {private}"
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
pub fn code(result: Result<impl std::fmt::Debug, ClientError>) -> (ErrorCode, String) {
    match result {
        Err(ClientError::Agent(e)) => (e.code, e.message),
        other => panic!("expected an error reply from the agent, got {other:?}"),
    }
}

/// A command's standard error, as text.
pub fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The bytes of a base64url member (`x`, `y`, `n`) of the key's public JWK.
pub fn jwk_member(key: &KeyDescription, name: &str) -> Vec<u8> {
    let jwk = serde_json::to_value(&key.jwk).expect("JWK serializes");
    let value = jwk[name]
        .as_str()
        .unwrap_or_else(|| panic!("JWK of {} has no {name}: {jwk}", key.label));
    dpop_jose::b64url_decode(value).expect("JWK members are base64url")
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
