//! Token keys as an attacker on the same machine sees them (issue 12), each test on a SoftHSM2
//! token of its own (see `dpop_tests::pkcs11`), looked at from other processes (`pkcs11-tool`,
//! openssl):
//!
//! - keys the agent generates or imports are sign-only: the private key neither decrypts
//!   (`pkcs11-tool --decrypt -m RSA-PKCS` of an openssl ciphertext fails), nor signs raw bytes
//!   (`RSA-X-509`), nor derives (ECDH), and the token reports only `sign` / `verify` usage;
//! - clients adopt token keys only when the agent allows it, never a key that wants the PIN for
//!   each signature, never a key the agent already serves, and learn nothing about how many
//!   keys a URI matched;
//! - import errors name the problem (an encrypted key, RSA under 2048 bits, several keys
//!   in one file), a missing module is named once, and an unknown token label lists the
//!   tokens there.

use std::ffi::OsStr;
use std::path::Path;

use dpop_protocol::{ErrorCode, KeyDescription};
use dpop_tests::pkcs11::*;
use dpop_tests::{
    AgentOptions, SoftHsmToken, TestAgent, new_temp_dir, openssl_ec_pem, openssl_rsa_pem, run_ok,
};

/// What `pkcs11-tool --list-objects` prints for the object of `class` (`privkey`, `pubkey`)
/// with the key's `CKA_ID`: its `Usage:` line and its `Allowed mechanisms:` line, if any.
fn usage(token: &SoftHsmToken, key: &KeyDescription, class: &str) -> (String, Option<String>) {
    let text = token.list_objects(PIN, Some(class));
    let id = key_id(key);
    // One block per object, each starting with an unindented line.
    let mut blocks: Vec<Vec<&str>> = Vec::new();
    for line in text.lines() {
        if !line.starts_with(' ') {
            blocks.push(Vec::new());
        }
        if let Some(block) = blocks.last_mut() {
            block.push(line.trim());
        }
    }
    let field = |block: &[&str], name: &str| {
        block
            .iter()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
    };
    let ours: Vec<_> = blocks
        .iter()
        .filter(|b| field(b, "ID:").is_some_and(|v| v.eq_ignore_ascii_case(&id)))
        .collect();
    let [block] = ours[..] else {
        panic!("{}: not one {class} object with its id: {text}", key.label);
    };
    (
        field(block, "Usage:").unwrap_or_default(),
        field(block, "Allowed mechanisms:"),
    )
}

/// Runs `pkcs11-tool --login` with `args` on the key: the output, and whether it succeeded.
fn with_key(token: &SoftHsmToken, key: &KeyDescription, args: &[&str]) -> (bool, Vec<u8>) {
    let out = token
        .pkcs11_tool()
        .args(["--login", "--pin", PIN, "--id", &key_id(key)])
        .args(args)
        .output()
        .expect("running pkcs11-tool");
    (out.status.success(), [out.stdout, out.stderr].concat())
}

/// The key cannot be used for anything but its signatures, whoever holds the PIN.
fn assert_sign_only(token: &SoftHsmToken, key: &KeyDescription, dir: &Path) {
    let name = &key.label;
    let (private_usage, allowed) = usage(token, key, "privkey");
    assert_eq!(
        private_usage, "sign",
        "{name}: the private key may only sign (no decrypt, unwrap, derive, signRecover)"
    );
    let mechanism = match key.alg.to_string().as_str() {
        "RS256" => "SHA256-RSA-PKCS",
        "PS256" => "SHA256-RSA-PKCS-PSS",
        _ => "ECDSA",
    };
    assert_eq!(
        allowed.as_deref(),
        Some(mechanism),
        "{name}: CKA_ALLOWED_MECHANISMS is the key's one signing mechanism"
    );
    assert_eq!(
        usage(token, key, "pubkey").0,
        "verify",
        "{name}: the public key may only verify (no encrypt, wrap, verifyRecover)"
    );
    let file = |what: &str| dir.join(format!("{name}.{what}"));
    if key.alg.to_string().starts_with("ES") {
        // ECDH with another party's public key: a shared secret from the agent's key.
        let peer = file("peer.pem");
        openssl_ec_pem(&peer);
        run_ok(std::process::Command::new("openssl").args([
            "ec",
            "-in",
            peer.to_str().unwrap(),
            "-pubout",
            "-outform",
            "DER",
            "-out",
            file("peer.der").to_str().unwrap(),
        ]));
        let shared = file("shared");
        let (ok, out) = with_key(
            token,
            key,
            &[
                "--derive",
                "-m",
                "ECDH1-DERIVE",
                "--input-file",
                file("peer.der").to_str().unwrap(),
                "--output-file",
                shared.to_str().unwrap(),
            ],
        );
        assert!(
            !ok && !shared.exists(),
            "{name}: the token derived an ECDH secret with the agent's key: {}",
            String::from_utf8_lossy(&out)
        );
        return;
    }
    // RSA: decrypt what anyone can encrypt to the public key.
    let public = file("pub.der");
    run_ok(token.pkcs11_tool().args([
        "--read-object",
        "--type",
        "pubkey",
        "--id",
        &key_id(key),
        "-o",
        public.to_str().unwrap(),
    ]));
    let plaintext = b"decryption-oracle-Zq81";
    std::fs::write(file("pt"), plaintext).unwrap();
    run_ok(std::process::Command::new("openssl").args([
        "pkeyutl",
        "-encrypt",
        "-pubin",
        "-keyform",
        "DER",
        "-inkey",
        public.to_str().unwrap(),
        "-in",
        file("pt").to_str().unwrap(),
        "-out",
        file("ct").to_str().unwrap(),
    ]));
    let (ok, out) = with_key(
        token,
        key,
        &[
            "--decrypt",
            "-m",
            "RSA-PKCS",
            "--input-file",
            file("ct").to_str().unwrap(),
        ],
    );
    assert!(
        !ok && !contains(&out, plaintext),
        "{name}: the token decrypted with the agent's key: {}",
        String::from_utf8_lossy(&out)
    );
    // Raw RSA (no padding, no hash) over bytes of the caller's choosing.
    std::fs::write(file("raw"), [0x41u8; 256]).unwrap();
    let signature = file("rawsig");
    let (ok, out) = with_key(
        token,
        key,
        &[
            "--sign",
            "-m",
            "RSA-X-509",
            "--input-file",
            file("raw").to_str().unwrap(),
            "-o",
            signature.to_str().unwrap(),
        ],
    );
    assert!(
        !ok && std::fs::metadata(&signature).map_or(true, |m| m.len() == 0),
        "{name}: the token made a raw RSA-X-509 signature with the agent's key: {}",
        String::from_utf8_lossy(&out)
    );
}

/// Generated (RS256, PS256, ES256) and imported (RSA, EC) keys are sign-only on the token, and
/// still sign proofs.
#[test]
fn token_keys_are_sign_only() {
    let token = token("signonly");
    let agent = start(&token);
    let dir = new_temp_dir();
    let mut keys = Vec::new();
    for (label, alg) in [
        ("gen-rs", "RS256"),
        ("gen-ps", "PS256"),
        ("gen-es", "ES256"),
    ] {
        keys.push(generate(&agent, &token, label, alg));
    }
    let rsa = dir.path().join("rsa.pem");
    let ec = dir.path().join("ec.pem");
    openssl_rsa_pem(&rsa);
    openssl_ec_pem(&ec);
    keys.push(import(&agent, &token, &rsa, "imp-rs", None, "RS256"));
    keys.push(import(&agent, &token, &ec, "imp-es", None, "ES256"));
    for key in &keys {
        assert_sign_only(&token, key, dir.path());
        assert_signs(&agent, key);
        assert_stays_on_token(&token, key, key.label.starts_with("gen"));
    }
}

/// Adoption over the socket is off unless the agent allows it; then a URI that matches no key
/// and one that matches several get the same answer, a key the agent serves cannot be adopted
/// under a second label, and a key that wants the PIN for each signature is refused.
#[test]
fn adopting_token_keys_is_opt_in_and_tells_nothing() {
    let token = token("adoptpolicy");
    // Made before any agent starts (SoftHSM2 hides other processes' later objects).
    pkcs11_tool_keypair(&token, "mine", "11", &[]);
    pkcs11_tool_keypair(&token, "twice", "12", &[]);
    pkcs11_tool_keypair(&token, "twice", "13", &[]);
    pkcs11_tool_keypair(&token, "pinned", "14", &["--always-auth"]);
    let uri = |path: &str| format!("pkcs11:token={};{path};type=private", token.label());

    // Off by default: refused before the token is even looked at.
    let mut agent = start(&token);
    let out = agent.dpop(&["keys", "adopt", &uri("object=mine"), "--label", "mine"]);
    assert!(
        !out.status.success(),
        "adopted without --pkcs11-allow-adopt"
    );
    assert!(
        stderr_of(&out).contains("--pkcs11-allow-adopt"),
        "the refusal says how to allow it: {}",
        stderr_of(&out)
    );
    let (got, message) = code(
        agent
            .client()
            .adopt_key(dpop_client::AdoptKey::new("mine", &uri("object=mine"))),
    );
    assert_eq!(got, ErrorCode::PermissionDenied, "{message}");
    assert_eq!(listed(&agent, "mine"), None);
    agent.stop();

    let agent = TestAgent::start(
        AgentOptions::new()
            .pkcs11(&token)
            .arg("--pkcs11-allow-adopt"),
    );
    let mut client = agent.client();
    // No key and two keys: one answer, which counts nothing.
    let (none_code, none) =
        code(client.adopt_key(dpop_client::AdoptKey::new("x", &uri("object=nothing"))));
    let (two_code, two) =
        code(client.adopt_key(dpop_client::AdoptKey::new("x", &uri("object=twice"))));
    assert_eq!(
        (none_code, two_code),
        (ErrorCode::KeyNotFound, ErrorCode::KeyNotFound)
    );
    assert_eq!(
        none.replace("object=nothing", "object=twice"),
        two,
        "zero and two matching keys are told apart"
    );
    for digit in ["0", "2"] {
        assert!(!two.contains(digit), "the message counts keys: {two}");
    }

    // The same object under a second label, by another URI: refused, naming the first.
    let mine = parse_key(&agent.dpop_ok(&[
        "keys",
        "adopt",
        &uri("object=mine"),
        "--label",
        "mine",
        "--json",
    ]));
    assert_token_key(&mine, &token, "mine", "ES256");
    let (got, message) =
        code(client.adopt_key(dpop_client::AdoptKey::new("mine-again", &uri("id=%11"))));
    assert_eq!(got, ErrorCode::KeyExists, "{message}");
    assert!(message.contains("\"mine\""), "{message}");
    // Nor a key the agent made.
    let made = generate(&agent, &token, "made", "ES256");
    let made_uri = made.location.clone().expect("a token key has a URI");
    let (got, message) =
        code(client.adopt_key(dpop_client::AdoptKey::new("made-again", &made_uri)));
    assert_eq!(got, ErrorCode::KeyExists, "{message}");
    assert!(message.contains("\"made\""), "{message}");
    assert_eq!(listed(&agent, "mine-again"), None);
    assert_eq!(listed(&agent, "made-again"), None);
    // So deleting one label leaves the other whole.
    agent.dpop_ok(&["keys", "delete", "mine", "--yes"]);
    assert_still_signs(&agent, &made);

    // A key that wants the PIN for every signature needs the agent's config file.
    let (got, message) =
        code(client.adopt_key(dpop_client::AdoptKey::new("pinned", &uri("id=%14"))));
    assert_eq!(got, ErrorCode::PermissionDenied, "{message}");
    assert!(message.contains("always_authenticate"), "{message}");
    assert_eq!(listed(&agent, "pinned"), None);
}

/// `dpop keys import` of files openssl makes that are not one plain PEM key: the message says
/// what is wrong and how to fix it, for the token and the software backend alike; the advice
/// for an encrypted key (decrypt it on a pipe) works.
#[test]
fn import_errors_name_the_problem() {
    let token = token("importerrors");
    let agent = start(&token);
    let dir = new_temp_dir();
    let path = |name: &str| dir.path().join(name);
    let openssl = |args: &[&str]| run_ok(std::process::Command::new("openssl").args(args));
    let p = |name: &str| path(name).to_str().unwrap().to_owned();
    openssl_ec_pem(&path("ec.pem"));
    openssl_rsa_pem(&path("rsa.pem"));
    openssl(&[
        "pkey",
        "-in",
        &p("ec.pem"),
        "-outform",
        "DER",
        "-out",
        &p("ec.der"),
    ]);
    openssl(&[
        "ec",
        "-in",
        &p("ec.pem"),
        "-aes128",
        "-passout",
        "pass:secret",
        "-out",
        &p("encrypted.pem"),
    ]);
    openssl(&["genrsa", "-out", &p("small.pem"), "1024"]);
    let two = [
        std::fs::read(path("ec.pem")).unwrap(),
        std::fs::read(path("rsa.pem")).unwrap(),
    ]
    .concat();
    std::fs::write(path("two.pem"), two).unwrap();
    // A DER file never reaches the agent (the wire carries PEM text): the CLI names it, and
    // dpop-keys' own tests cover its "looks like DER" message for other clients.
    for (file, named) in [
        ("ec.der", "expected PEM"),
        ("ec.der", "openssl pkey -inform DER"),
        ("encrypted.pem", "Proc-Type: 4,ENCRYPTED"),
        ("encrypted.pem", "| dpop keys import -"),
        ("small.pem", "1024 bits; at least 2048"),
        ("two.pem", "holds 2 private keys"),
    ] {
        for backend in ["pkcs11", "software"] {
            let out = agent.dpop(&[
                "keys",
                "import",
                &p(file),
                "--label",
                "bad",
                "--backend",
                backend,
            ]);
            assert!(!out.status.success(), "{file} imported into {backend}");
            assert!(
                stderr_of(&out).contains(named),
                "{file} ({backend}): the message does not say {named:?}: {}",
                stderr_of(&out)
            );
        }
    }
    assert_eq!(listed(&agent, "bad"), None);
    // The advice works: decrypted on a pipe, the key goes in.
    let decrypted = run_ok(std::process::Command::new("openssl").args([
        "pkey",
        "-in",
        &p("encrypted.pem"),
        "-passin",
        "pass:secret",
    ]));
    let mut import = agent.dpop_command();
    import
        .args([
            "keys",
            "import",
            "-",
            "--label",
            "piped",
            "--backend",
            "pkcs11",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = import.spawn().expect("running dpop");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &decrypted.stdout).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let piped = listed(&agent, "piped").expect("the decrypted key is imported");
    assert_eq!(piped.alg.to_string(), "ES256");
}

/// A module path that does not exist is named once; a token label the module does not show
/// gets the labels and serials of the tokens it does show.
#[test]
fn module_and_token_errors_say_what_exists() {
    let token = token("whichtoken");
    let options = |module: &OsStr, label: &str| {
        AgentOptions::new()
            .arg("--pkcs11-module")
            .arg(module)
            .arg("--pkcs11-token")
            .arg(label)
            .arg("--pkcs11-pin-env")
            .arg(dpop_tests::PKCS11_PIN_VAR)
            .env(dpop_tests::PKCS11_PIN_VAR, PIN)
            .env("SOFTHSM2_CONF", token.conf())
    };
    let missing = "/nonexistent/dir/libnosuch-pkcs11.so";
    let Err(failure) = TestAgent::try_start(options(OsStr::new(missing), token.label())) else {
        panic!("the agent started without its module");
    };
    assert_eq!(
        failure.stderr.matches(missing).count(),
        1,
        "the module path is not named exactly once: {}",
        failure.stderr
    );
    let serial = inspect(&token, &["token-info"])["serial"]
        .as_str()
        .expect("token-info has the serial")
        .to_owned();
    let Err(failure) = TestAgent::try_start(options(token.module().as_os_str(), "no-such-token"))
    else {
        panic!("the agent started without its token");
    };
    for shown in ["no-such-token", &format!("\"{}\"", token.label()), &serial] {
        assert!(
            failure.stderr.contains(shown),
            "the error does not show {shown:?}: {}",
            failure.stderr
        );
    }
}
