//! Issue 12, finding 8: the text of an imported private key must not stay in the agent's
//! memory. After one `import_key` and 500 other requests, the agent's whole address space (read
//! through `/proc/<pid>/mem`, which needs root: the agent is non-dumpable) holds no line of the
//! PEM's base64 body, for a software key and for a key that went to a SoftHSM2 token.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};

use serde_json::{Value, json};

use dpop_tests::{
    AgentOptions, RawConnection, SoftHsmToken, TestAgent, is_root, new_temp_dir,
    openssl_pkcs8_ec_pem,
};

/// Lines of the PEM's base64 body long enough to be unique (the last, short line is left out:
/// a few characters could occur by chance).
fn body_lines(pem: &str) -> Vec<String> {
    pem.lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 40)
        .map(str::to_owned)
        .collect()
}

/// How often each needle occurs in the readable memory of process `pid`.
fn count_in_memory(pid: u32, needles: &[&[u8]]) -> Vec<usize> {
    assert!(
        is_root(),
        "this test reads the non-dumpable agent's memory through /proc/<pid>/mem and needs root"
    );
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).expect("reading the agent's maps");
    let mut mem = File::open(format!("/proc/{pid}/mem")).expect("opening the agent's memory");
    let mut counts = vec![0; needles.len()];
    let mut scanned = 0usize;
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !perms.starts_with('r') || line.ends_with("[vvar]") || line.ends_with("[vsyscall]") {
            continue;
        }
        let (start, end) = range.split_once('-').expect("maps range");
        let start = u64::from_str_radix(start, 16).expect("hex start");
        let end = u64::from_str_radix(end, 16).expect("hex end");
        let mut region = vec![0u8; (end - start) as usize];
        if mem.seek(SeekFrom::Start(start)).is_err() || mem.read_exact(&mut region).is_err() {
            // Device mappings and guard pages do not read; nothing of ours lives there.
            continue;
        }
        scanned += region.len();
        for (needle, count) in needles.iter().zip(counts.iter_mut()) {
            *count += region.windows(needle.len()).filter(|w| w == needle).count();
        }
    }
    assert!(scanned > 0, "read nothing of the agent's memory");
    counts
}

/// Imports a fresh PKCS#8 EC key into `backend`, sends 500 other requests (proofs with the key,
/// key lists, hellos, on this and on new connections), then scans the agent's memory.
fn imported_pem_is_gone(agent: &TestAgent, backend: &str) {
    let dir = new_temp_dir();
    let path = dir.path().join("key.pem");
    openssl_pkcs8_ec_pem(&path);
    let pem = fs::read_to_string(&path).expect("reading the PEM");
    let lines = body_lines(&pem);
    assert!(lines.len() >= 2, "unexpected PEM layout:\n{pem}");

    let mut conn = agent.raw();
    let import =
        json!({"id": 1, "op": "import_key", "label": "imported", "backend": backend, "pem": pem});
    let reply = conn.request(import.to_string().as_bytes());
    assert_eq!(reply["ok"], Value::Bool(true), "import failed: {reply}");
    let jkt = reply["key"]["jkt"].as_str().expect("jkt").to_owned();

    for i in 0..500u32 {
        let request = match i % 5 {
            0 => json!({"id": i, "op": "list_keys"}),
            1 => json!({"id": i, "op": "hello"}),
            _ => json!({"id": i, "op": "sign_proof", "key": "imported", "htm": "POST",
                        "htu": format!("https://rs.example/{i}"), "access_token": format!("t{i}")}),
        };
        let reply = if i % 50 == 0 {
            RawConnection::connect(&agent.socket()).request(request.to_string().as_bytes())
        } else {
            conn.request(request.to_string().as_bytes())
        };
        assert_eq!(
            reply["ok"],
            Value::Bool(true),
            "request {i} failed: {reply}"
        );
    }

    let pid = agent.pid().expect("the agent runs");
    let mut needles: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
    // The key's thumbprint is in the agent's memory for as long as the key is: proof that the
    // scan sees the agent's heap at all.
    needles.push(jkt.as_bytes());
    let counts = count_in_memory(pid, &needles);
    let (jkt_count, pem_counts) = counts.split_last().expect("needles");
    assert!(
        *jkt_count > 0,
        "the scan did not find the key's jkt: it sees nothing"
    );
    let found: Vec<_> = lines
        .iter()
        .zip(pem_counts)
        .filter(|(_, n)| **n > 0)
        .map(|(l, n)| format!("{n} x {l}"))
        .collect();
    assert!(
        found.is_empty(),
        "the agent still holds the imported PEM ({backend}) after 500 more requests: {found:?}"
    );
}

#[test]
fn imported_software_pem_does_not_stay_in_memory() {
    let agent = TestAgent::start(AgentOptions::new());
    imported_pem_is_gone(&agent, "software");
}

#[test]
fn imported_software_pem_does_not_stay_in_memory_with_a_passphrase() {
    let agent = TestAgent::start(AgentOptions::new().passphrase_env("correct horse battery"));
    imported_pem_is_gone(&agent, "software");
}

#[test]
fn imported_token_pem_does_not_stay_in_memory() {
    let token = SoftHsmToken::create("secret-memory", "pin-Qx83Zt7w", "so-Mf92Lk4v");
    let agent = TestAgent::start(AgentOptions::new().pkcs11(&token));
    imported_pem_is_gone(&agent, "pkcs11");
}

/// Locking seals the decrypted software keys: while locked, the private scalar of an imported
/// key is nowhere in the agent's memory (in the byte order of the PEM nor of aws-lc's limbs),
/// though it was before; unlocking brings the key back, signing as before.
#[test]
fn locking_seals_software_keys_in_memory() {
    let agent = TestAgent::start(AgentOptions::new().passphrase_env("correct horse battery"));
    let dir = new_temp_dir();
    let path = dir.path().join("key.pem");
    openssl_pkcs8_ec_pem(&path);
    let pem = fs::read_to_string(&path).expect("reading the PEM");
    let scalar = dpop_tests::openssl_key_field(&path, "priv");
    // Left-padded to 32 bytes, big-endian (PKCS#8) and reversed (little-endian limbs).
    let mut big = vec![0u8; 32 - scalar.len()];
    big.extend_from_slice(&scalar);
    let little: Vec<u8> = big.iter().rev().copied().collect();

    let mut client = agent.client();
    let key = client
        .import_key(dpop_client::ImportKey::new("sealed", &pem))
        .unwrap();
    let url = "https://rs.example/x";
    let proof = |client: &mut dpop_client::blocking::Client| {
        client.sign_proof("sealed", &dpop_client::ProofRequest::new("GET", url))
    };
    proof(&mut client).unwrap();
    let pid = agent.pid().expect("the agent runs");
    let before = count_in_memory(pid, &[&big, &little, key.jkt.as_bytes()]);
    assert!(
        before[0] + before[1] > 0,
        "the scan does not find the live key's scalar, so it could not tell a sealed one: {before:?}"
    );

    client.lock("lock passphrase").unwrap();
    let locked = count_in_memory(pid, &[&big, &little, key.jkt.as_bytes()]);
    assert!(
        locked[2] > 0,
        "the scan sees the agent's heap (the jkt is there)"
    );
    assert_eq!(
        (locked[0], locked[1]),
        (0, 0),
        "the private scalar is still in memory while locked"
    );
    assert_eq!(client.list_keys().unwrap().len(), 1, "still listed");

    client.unlock("lock passphrase").unwrap();
    let verified = dpop_tests::verify_proof(&proof(&mut client).unwrap(), "GET", url, None);
    assert_eq!(verified.jkt, key.jkt, "the same key signs after unlock");
    // And a key made after unlocking is saved under the store key as before.
    client.generate_key("after").unwrap();
}

/// Issue 22, item 7: locking seals a TPM key's auth value as it seals software keys. While
/// locked, the auth value (read at start) is nowhere in the agent's memory (the
/// backend's copy, every key's copy, the ESAPI context's), though it was before, and a TPM key
/// refuses to sign with `locked` without asking the TPM; after `unlock` the key signs again.
#[cfg(feature = "tpm")]
#[test]
fn locking_seals_the_tpm_auth_value() {
    tpm_auth_sealed_when_locked(false);
}

/// The same with the auth value from a variable: the agent's settings held a copy of it for
/// the agent's whole life, which no lock sealed.
#[cfg(feature = "tpm")]
#[test]
fn locking_seals_the_tpm_auth_value_read_from_a_variable() {
    tpm_auth_sealed_when_locked(true);
}

#[cfg(feature = "tpm")]
fn tpm_auth_sealed_when_locked(from_env: bool) {
    use dpop_tests::Swtpm;
    use dpop_tests::tpm::{assert_signs, generate};

    const AUTH: &str = "tpm-auth-Qm47Zx92Lw";
    let swtpm = Swtpm::start();
    let dir = new_temp_dir();
    let options = AgentOptions::new().tpm(&swtpm);
    let options = if from_env {
        options
            .env("DPOP_TEST_TPM_AUTH", AUTH)
            .arg("--tpm-auth-env")
            .arg("DPOP_TEST_TPM_AUTH")
    } else {
        let file = dir.path().join("tpm-auth");
        dpop_tests::write_private_file(&file, AUTH.as_bytes());
        options.arg("--tpm-auth-file").arg(&file)
    };
    let agent = TestAgent::start(options);
    let key = generate(&agent, "guarded", "ES256");
    assert_signs(&agent, &key);
    let pid = agent.pid().expect("the agent runs");
    let needles: [&[u8]; 2] = [AUTH.as_bytes(), key.jkt.as_bytes()];
    let before = count_in_memory(pid, &needles);
    assert!(
        before[0] > 0,
        "the scan does not find the auth value of a live key, so it could not tell a sealed one"
    );

    let mut client = agent.client();
    client.lock("lock passphrase").unwrap();
    let locked = count_in_memory(pid, &needles);
    assert!(
        locked[1] > 0,
        "the scan sees the agent's heap (the jkt is there)"
    );
    assert_eq!(
        locked[0], 0,
        "the TPM auth value is still in memory while locked"
    );
    let refused = client
        .sign_proof(
            "guarded",
            &dpop_client::ProofRequest::new("GET", "https://rs.example/"),
        )
        .unwrap_err();
    assert_eq!(refused.code(), Some(dpop_protocol::ErrorCode::Locked));

    client.unlock("lock passphrase").unwrap();
    assert_signs(&agent, &key);
}
