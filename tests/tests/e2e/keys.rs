//! Key life cycle against the real agent and CLI: generate, import openssl-made PEMs, proofs
//! through `dpop proof` and the client crate, `dpop verify`, delete, persistence across
//! restarts, wrong passphrase, memory-only mode.

use std::path::Path;
use std::process::Command;

use dpop_protocol::{ErrorCode, KeyDescription};
use dpop_tests::{AgentOptions, TestAgent, decode_jws, run_ok, try_verify_proof, verify_proof};

const URL: &str = "https://api.example.com/v1/items?page=2#top";
const HTU: &str = "https://api.example.com/v1/items";
const TOKEN: &str = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU";

fn parse_key(json: &str) -> KeyDescription {
    serde_json::from_str(json).unwrap_or_else(|e| panic!("not a key description ({e}): {json}"))
}

fn list(agent: &TestAgent) -> Vec<KeyDescription> {
    serde_json::from_str(&agent.dpop_ok(&["keys", "list", "--json"]))
        .expect("dpop keys list --json prints a JSON array of keys")
}

/// The uncompressed EC point (0x04 || x || y) of a PEM private key, as openssl sees it.
fn openssl_public_point(pem: &Path) -> Vec<u8> {
    let der = run_ok(
        Command::new("openssl")
            .args(["pkey", "-pubout", "-outform", "DER", "-in"])
            .arg(pem),
    )
    .stdout;
    // SubjectPublicKeyInfo for P-256 ends with the 65-byte point.
    assert!(der.len() > 65, "openssl printed a SubjectPublicKeyInfo");
    der[der.len() - 65..].to_vec()
}

fn jwk_point(key: &KeyDescription) -> Vec<u8> {
    let jwk = serde_json::to_value(&key.jwk).expect("JWK serializes");
    let coord = |name: &str| {
        dpop_jose::b64url_decode(jwk[name].as_str().expect("EC JWK has x and y"))
            .expect("coordinates are base64url")
    };
    [vec![4u8], coord("x"), coord("y")].concat()
}

fn proof_by_cli(
    agent: &TestAgent,
    key: &str,
    method: &str,
    url: &str,
    token: Option<&str>,
) -> String {
    let mut args = vec!["proof", "--key", key, "--method", method, "--url", url];
    if let Some(token) = token {
        args.extend(["--access-token", token]);
    }
    let out = agent.dpop_ok(&args);
    let proof = out.strip_suffix('\n').expect("dpop proof ends its line");
    assert!(
        !proof.contains('\n'),
        "dpop proof prints the proof alone on one line: {out:?}"
    );
    proof.to_owned()
}

fn dpop_verify(
    agent: &TestAgent,
    proof: &str,
    method: &str,
    url: &str,
    extra: &[&str],
) -> std::process::Output {
    let mut args = vec!["verify", "--proof", proof, "--method", method, "--url", url];
    args.extend(extra);
    agent.dpop(&args)
}

#[test]
fn generate_proof_verify_delete_with_the_cli() {
    let agent = TestAgent::start(AgentOptions::new());
    let key = parse_key(&agent.dpop_ok(&["keys", "generate", "--label", "cli-key", "--json"]));
    assert_eq!(key.label, "cli-key", "generate returns the label asked for");
    assert_eq!(
        key.alg,
        dpop_jose::Algorithm::ES256,
        "ES256 is the default algorithm"
    );
    assert_eq!(key.backend, "software", "software is the default backend");
    assert_eq!(
        key.jkt,
        key.jwk.thumbprint(),
        "jkt is the RFC 7638 thumbprint of the JWK"
    );
    let jwk_json = serde_json::to_value(&key.jwk).unwrap();
    assert!(
        jwk_json.get("d").is_none(),
        "the JWK has no private part: {jwk_json}"
    );

    assert_eq!(
        list(&agent),
        vec![key.clone()],
        "keys list shows exactly the new key"
    );
    assert_eq!(
        agent.dpop_ok(&["thumbprint", "--key", "cli-key"]).trim(),
        key.jkt,
        "dpop thumbprint prints the jkt"
    );
    let printed_jwk: serde_json::Value =
        serde_json::from_str(&agent.dpop_ok(&["jwk"])).expect("dpop jwk prints JSON");
    assert_eq!(
        printed_jwk, jwk_json,
        "dpop jwk (only key, no --key) prints the public JWK"
    );

    let proof = proof_by_cli(&agent, "cli-key", "POST", URL, Some(TOKEN));
    let (header, claims) = decode_jws(&proof);
    assert_eq!(header["typ"], "dpop+jwt", "proof typ");
    assert_eq!(header["alg"], "ES256", "proof alg");
    assert_eq!(
        header["jwk"], jwk_json,
        "proof header carries the key's public JWK"
    );
    assert_eq!(claims["htm"], "POST", "htm is the method");
    assert_eq!(claims["htu"], HTU, "htu drops query and fragment");
    assert_eq!(
        claims["ath"],
        dpop_jose::ath(TOKEN).unwrap(),
        "ath is the token hash"
    );
    assert!(claims.get("nonce").is_none(), "no nonce unless asked");

    let verified = verify_proof(&proof, "POST", URL, Some(TOKEN));
    assert_eq!(
        verified.jkt, key.jkt,
        "dpop_jose::verify sees the agent's key"
    );

    let ok = dpop_verify(
        &agent,
        &proof,
        "POST",
        URL,
        &["--access-token", TOKEN, "--jkt", &key.jkt, "--json"],
    );
    assert!(
        ok.status.success(),
        "dpop verify accepts the proof: {}",
        String::from_utf8_lossy(&ok.stdout)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&ok.stdout).expect("dpop verify --json prints JSON");
    assert_eq!(report["valid"], true, "dpop verify --json says valid");
    assert_eq!(
        report["jkt"],
        key.jkt.as_str(),
        "dpop verify reports the key's jkt"
    );

    for (what, method, url, extra) in [
        ("wrong method", "GET", URL, vec!["--access-token", TOKEN]),
        (
            "wrong url",
            "POST",
            "https://api.example.com/v1/other",
            vec!["--access-token", TOKEN],
        ),
        (
            "wrong host",
            "POST",
            "https://evil.example.com/v1/items",
            vec!["--access-token", TOKEN],
        ),
        (
            "wrong access token",
            "POST",
            URL,
            vec!["--access-token", "another-token"],
        ),
        (
            "wrong jkt",
            "POST",
            URL,
            vec![
                "--access-token",
                TOKEN,
                "--jkt",
                "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I",
            ],
        ),
        (
            "nonce expected but absent",
            "POST",
            URL,
            vec!["--access-token", TOKEN, "--nonce", "n-1"],
        ),
    ] {
        let out = dpop_verify(&agent, &proof, method, url, &extra);
        assert!(
            !out.status.success(),
            "dpop verify must reject the proof for a {what}"
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("invalid"),
            "dpop verify says why the proof is invalid ({what}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let tampered = {
        let (head, sig) = proof.rsplit_once('.').unwrap();
        let flipped = if sig.starts_with('A') { 'B' } else { 'A' };
        format!("{head}.{flipped}{}", &sig[1..])
    };
    assert!(
        !dpop_verify(&agent, &tampered, "POST", URL, &["--access-token", TOKEN])
            .status
            .success(),
        "dpop verify rejects a changed signature"
    );

    let nonce_proof = agent.dpop_ok(&[
        "proof",
        "--key",
        "cli-key",
        "-X",
        "GET",
        "--url",
        URL,
        "--nonce",
        "server-nonce-1",
    ]);
    assert_eq!(
        decode_jws(nonce_proof.trim()).1["nonce"],
        "server-nonce-1",
        "--nonce lands in the proof"
    );
    assert!(
        dpop_verify(
            &agent,
            nonce_proof.trim(),
            "GET",
            URL,
            &["--nonce", "server-nonce-1"]
        )
        .status
        .success(),
        "dpop verify accepts the expected nonce"
    );

    let deleted = parse_key(&agent.dpop_ok(&["keys", "delete", "cli-key", "--json"]));
    assert_eq!(deleted.jkt, key.jkt, "delete returns the deleted key");
    assert!(list(&agent).is_empty(), "no keys after delete");
    let gone = agent.dpop(&["proof", "--key", "cli-key", "-X", "GET", "--url", URL]);
    assert!(!gone.status.success(), "a proof with a deleted key fails");
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("(key_not_found)"),
        "the CLI reports key_not_found: {}",
        String::from_utf8_lossy(&gone.stderr)
    );
    let again = agent.dpop(&["keys", "delete", "cli-key"]);
    assert!(!again.status.success(), "deleting a deleted key fails");
}

#[test]
fn import_openssl_pems_and_sign_with_the_client_crate() {
    let agent = TestAgent::start(AgentOptions::new());
    let sec1 = agent.dir().join("sec1.pem");
    let pkcs8 = agent.dir().join("pkcs8.pem");
    dpop_tests::openssl_ec_pem(&sec1);
    dpop_tests::openssl_pkcs8_ec_pem(&pkcs8);
    assert!(
        std::fs::read_to_string(&sec1)
            .unwrap()
            .contains("BEGIN EC PRIVATE KEY"),
        "openssl ecparam writes SEC1"
    );
    assert!(
        std::fs::read_to_string(&pkcs8)
            .unwrap()
            .contains("BEGIN PRIVATE KEY"),
        "openssl genpkey writes PKCS#8"
    );

    let mut client = agent.client();
    for (label, pem) in [("sec1", &sec1), ("pkcs8", &pkcs8)] {
        let key = parse_key(&agent.dpop_ok(&[
            "keys".as_ref(),
            "import".as_ref(),
            pem.as_os_str(),
            "--label".as_ref(),
            label.as_ref(),
            "--json".as_ref(),
        ]));
        assert_eq!(
            key.alg,
            dpop_jose::Algorithm::ES256,
            "{label}: a P-256 key imports as ES256"
        );
        assert_eq!(
            jwk_point(&key),
            openssl_public_point(pem),
            "{label}: the agent's public key is openssl's"
        );

        let proof = client
            .sign_proof(
                label,
                &dpop_client::ProofRequest::new("DELETE", "https://api.example.com/v1/items/7")
                    .access_token(TOKEN),
            )
            .expect("the blocking client gets a proof");
        let verified = verify_proof(
            &proof,
            "DELETE",
            "https://api.example.com/v1/items/7",
            Some(TOKEN),
        );
        assert_eq!(
            verified.jkt, key.jkt,
            "{label}: the proof is signed by the imported key"
        );
    }

    // The same PEM again: a second label is fine, the same label is not.
    let dup = agent.dpop(&[
        "keys".as_ref(),
        "import".as_ref(),
        sec1.as_os_str(),
        "--label".as_ref(),
        "sec1".as_ref(),
    ]);
    assert!(
        !dup.status.success(),
        "importing under an existing label fails"
    );
    assert!(
        String::from_utf8_lossy(&dup.stderr).contains("(key_exists)"),
        "the CLI reports key_exists: {}",
        String::from_utf8_lossy(&dup.stderr)
    );
    let err = client
        .import_key(dpop_client::ImportKey::new(
            "junk",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        ))
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(ErrorCode::InvalidKey),
        "garbage PEM is invalid_key: {err}"
    );

    // Import from standard input ("-").
    let mut command = agent.dpop_command();
    command
        .args(["keys", "import", "-", "--label", "stdin", "--json"])
        .stdin(std::fs::File::open(&pkcs8).unwrap());
    let key = parse_key(&String::from_utf8(run_ok(&mut command).stdout).unwrap());
    assert_eq!(
        jwk_point(&key),
        openssl_public_point(&pkcs8),
        "a PEM from standard input imports the same key"
    );

    let labels: Vec<String> = client
        .list_keys()
        .unwrap()
        .into_iter()
        .map(|k| k.label)
        .collect();
    assert_eq!(
        labels,
        ["pkcs8", "sec1", "stdin"],
        "list_keys is sorted by label"
    );
}

#[tokio::test]
async fn async_client_proofs_verify() {
    let agent = TestAgent::start(AgentOptions::new());
    let mut client = agent.async_client().await;
    let hello = client.hello().await.expect("hello");
    assert!(
        hello.backends.contains(&"software".to_owned()),
        "software backend configured: {hello:?}"
    );
    let key = client
        .generate_key(dpop_client::NewKey::new("async").alg(dpop_jose::Algorithm::ES384))
        .await
        .expect("generate ES384");
    assert_eq!(key.alg, dpop_jose::Algorithm::ES384, "generate honours alg");
    let proof = client
        .sign_proof(
            "async",
            &dpop_client::ProofRequest::new("PATCH", URL).nonce("abc"),
        )
        .await
        .expect("proof");
    let verified = verify_proof(&proof, "PATCH", URL, None);
    assert_eq!(
        verified.jkt, key.jkt,
        "async proof signed by the generated key"
    );
    assert_eq!(
        verified.claims.nonce.as_deref(),
        Some("abc"),
        "nonce passed through"
    );
    assert!(
        verified.claims.ath.is_none(),
        "no ath without an access token"
    );
    let err = client
        .sign_proof("nope", &dpop_client::ProofRequest::new("GET", URL))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(ErrorCode::KeyNotFound),
        "unknown key: {err}"
    );
    // The connection still works after an error reply.
    assert_eq!(
        client.list_keys().await.unwrap().len(),
        1,
        "the client keeps working after an error"
    );
}

#[test]
fn keys_persist_across_restart_with_a_passphrase() {
    let mut agent = TestAgent::start(AgentOptions::new().passphrase_env("persist-passphrase-1"));
    let hello = agent.client().hello().unwrap();
    assert!(
        hello.software_persistent,
        "with a passphrase, software keys are persistent"
    );
    let generated = parse_key(&agent.dpop_ok(&["keys", "generate", "--label", "gen", "--json"]));
    assert!(
        generated.persistent,
        "a generated key is persistent with a passphrase"
    );
    let pem = agent.dir().join("k.pem");
    dpop_tests::openssl_ec_pem(&pem);
    let imported = parse_key(&agent.dpop_ok(&[
        "keys".as_ref(),
        "import".as_ref(),
        pem.as_os_str(),
        "--label".as_ref(),
        "imp".as_ref(),
        "--json".as_ref(),
    ]));
    let doomed = parse_key(&agent.dpop_ok(&["keys", "generate", "--label", "doomed", "--json"]));
    agent.dpop_ok(&["keys", "delete", "doomed"]);

    for label in ["gen", "imp"] {
        let file = agent
            .data_dir()
            .join("software")
            .join(format!("{label}.json"));
        let meta = std::fs::metadata(&file)
            .unwrap_or_else(|e| panic!("key file {} exists: {e}", file.display()));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            meta.permissions().mode() & 0o777,
            0o600,
            "key file {} is 0600",
            file.display()
        );
        let text = std::fs::read_to_string(&file).unwrap();
        let record: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(
            record["sealed"].is_string() && !text.contains("PRIVATE KEY"),
            "key file holds its PKCS#8 sealed under the store key, nothing in clear: {}",
            file.display()
        );
    }
    let store = agent.data_dir().join("software/store.scrypt");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&store).unwrap().permissions().mode() & 0o777,
        0o600,
        "the store file (salt, scrypt parameters, check value) is 0600"
    );
    assert!(
        !agent.data_dir().join("software/doomed.json").exists(),
        "delete removes the key file"
    );

    agent.restart();
    let keys = list(&agent);
    assert_eq!(
        keys,
        vec![generated.clone(), imported.clone()],
        "after restart the same keys (labels, jkts) are back, the deleted one is not: {keys:?}"
    );
    let proof = proof_by_cli(&agent, "imp", "GET", URL, None);
    assert_eq!(
        verify_proof(&proof, "GET", URL, None).jkt,
        imported.jkt,
        "the reloaded imported key signs with the same key"
    );
    let proof = proof_by_cli(&agent, "gen", "GET", URL, None);
    assert_eq!(
        verify_proof(&proof, "GET", URL, None).jkt,
        generated.jkt,
        "the reloaded generated key signs with the same key"
    );
    assert_ne!(
        doomed.jkt, generated.jkt,
        "distinct keys have distinct thumbprints"
    );
}

#[test]
fn passphrase_file_persistence_and_memory_only_start_without_it() {
    let mut agent = TestAgent::start(AgentOptions::new().passphrase_file("file passphrase 2"));
    let key = agent.client().generate_key("filekey").unwrap();
    assert!(key.persistent, "persistent with --passphrase-file");

    // Without the passphrase the key file stays on disk, unloaded, and the log says so.
    agent.restart_with(AgentOptions::new());
    assert!(
        agent.client().list_keys().unwrap().is_empty(),
        "without the passphrase no key is loaded"
    );
    let log = agent.stderr_log();
    assert!(
        log.contains("not loaded without the passphrase"),
        "the agent says key files were left unloaded:\n{log}"
    );
    assert!(
        agent.data_dir().join("software/filekey.json").exists(),
        "the key file is untouched"
    );
    // Its label stays taken: a memory-only key of the same name would shadow the saved one.
    let file_before = std::fs::read(agent.data_dir().join("software/filekey.json")).unwrap();
    let err = agent
        .client()
        .generate_key("filekey")
        .expect_err("the label of an unloaded key file is refused");
    assert_eq!(err.code(), Some(ErrorCode::KeyExists), "{err}");
    assert!(err.to_string().contains("key file"), "{err}");
    assert_eq!(
        std::fs::read(agent.data_dir().join("software/filekey.json")).unwrap(),
        file_before,
        "the refused generate left the key file alone"
    );

    agent.restart_with(AgentOptions::new().passphrase_file("file passphrase 2"));
    let keys = agent.client().list_keys().unwrap();
    assert_eq!(keys, vec![key], "with the passphrase again the key is back");
}

#[test]
fn wrong_passphrase_refuses_to_start_and_leaves_key_files_alone() {
    let mut agent = TestAgent::start(AgentOptions::new().passphrase_env("the right passphrase"));
    let key = agent.client().generate_key("precious").unwrap();
    let file = agent.data_dir().join("software/precious.json");
    let before = std::fs::read(&file).expect("key file written");
    let listing = |dir: &Path| -> Vec<(std::ffi::OsString, Vec<u8>)> {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name(), std::fs::read(e.path()).unwrap())
            })
            .collect();
        files.sort();
        files
    };
    let software = agent.data_dir().join("software");
    // The key file and the store file (salt, scrypt parameters, check value).
    let files_before = listing(&software);
    assert_eq!(files_before.len(), 2);
    agent.stop();
    let log_before = agent.stderr_log().len();

    let (status, log) = agent
        .try_restart_with(AgentOptions::new().passphrase_env("a wrong passphrase"))
        .expect_err("the agent must refuse to start with a wrong passphrase");
    let status = status.expect("the agent exits by itself (does not hang)");
    assert!(
        !status.success(),
        "the agent exits non-zero with a wrong passphrase, got {status}"
    );
    let new_log = &log[log_before..];
    assert!(
        new_log.contains("passphrase") && new_log.contains("not starting"),
        "the agent explains that the passphrase is wrong and it is not starting:\n{new_log}"
    );
    assert!(
        !new_log.contains("a wrong passphrase"),
        "the log does not contain the passphrase itself:\n{new_log}"
    );
    assert!(
        !agent.socket().exists(),
        "no socket is left after a refused start"
    );
    assert_eq!(
        std::fs::read(&file).unwrap(),
        before,
        "the key file is byte-for-byte unchanged"
    );
    assert!(
        listing(&software) == files_before,
        "no file in the key directory appeared or changed"
    );

    agent.restart_with(AgentOptions::new().passphrase_env("the right passphrase"));
    assert_eq!(
        agent.client().list_keys().unwrap(),
        vec![key],
        "the right passphrase still opens the key"
    );
}

#[test]
fn without_passphrase_keys_are_memory_only() {
    let mut agent = TestAgent::start(AgentOptions::new());
    let log = agent.stderr_log();
    assert!(
        log.contains("kept in memory only"),
        "the agent warns that keys are memory-only:\n{log}"
    );
    let mut client = agent.client();
    assert!(
        !client.hello().unwrap().software_persistent,
        "hello reports software keys as not persistent"
    );
    let key = client.generate_key("ephemeral").unwrap();
    assert!(
        !key.persistent,
        "a key without passphrase is not persistent"
    );
    let listed = agent.dpop_ok(&["keys", "list"]);
    assert!(
        listed.contains("ephemeral") && listed.contains("memory"),
        "keys list shows the key as memory-only:\n{listed}"
    );
    let on_disk = std::fs::read_dir(agent.data_dir().join("software"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(on_disk, 0, "no key file is written without a passphrase");
    drop(client);

    agent.restart();
    assert!(
        agent.client().list_keys().unwrap().is_empty(),
        "a restart loses memory-only keys"
    );
}

#[test]
fn ephemeral_flag_keeps_keys_in_memory_despite_a_passphrase() {
    let mut agent = TestAgent::start(
        AgentOptions::new()
            .passphrase_env("unused passphrase")
            .arg("--ephemeral"),
    );
    let key = agent.client().generate_key("e").unwrap();
    assert!(!key.persistent, "--ephemeral keys are not persistent");
    agent.restart();
    assert!(
        agent.client().list_keys().unwrap().is_empty(),
        "--ephemeral keys are gone after restart"
    );
}

#[test]
fn proof_is_bound_to_its_request() {
    // A proof is good for its own request only.
    let agent = TestAgent::start(AgentOptions::new());
    agent.client().generate_key("k").unwrap();
    let proof = proof_by_cli(&agent, "k", "GET", "https://rs.example/a", None);
    assert!(
        try_verify_proof(&proof, "GET", "https://rs.example/a", None, None).is_ok(),
        "proof verifies for its request"
    );
    assert!(
        matches!(
            try_verify_proof(&proof, "GET", "https://rs.example/a", Some(TOKEN), None),
            Err(dpop_jose::Error::AthMissing)
        ),
        "a proof without ath fails when the request presents a token"
    );
    assert!(
        try_verify_proof(&proof, "get", "https://rs.example/a", None, None).is_err(),
        "htm is case-sensitive"
    );
}
