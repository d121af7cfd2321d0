//! `cargo bench -p dpop-tests --bench pkcs11`: ES256 proofs through the agent with a SoftHSM2
//! key, next to direct cryptoki signatures of a digest with the same key in this process,
//! with 1 and 32 clients (the direct side uses one session per thread).
//!
//! Targets (issue 3): agent p50 <= direct p50 + 40 us; 32 clients >= 85 % of the direct
//! multi-session throughput. Numbers are printed, never asserted.

use std::process::Command;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use dpop_tests::bench::{Run, on_threads, operations, through_agent, verdict};
use dpop_tests::{AgentOptions, TestAgent, new_temp_dir, workspace_root};

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const URL: &str = "https://api.example.com/v1/items";
const PIN: &str = "1234";

fn direct(pkcs11: &Pkcs11, threads: usize, per_thread: usize, label: &str) -> Run {
    let slot = pkcs11.get_slots_with_token().unwrap()[0];
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b"header.claims");
    on_threads(
        format!("direct cryptoki C_Sign, {threads} session(s)"),
        threads,
        per_thread,
        || {
            let session = pkcs11.open_ro_session(slot).unwrap();
            let key = session
                .find_objects(&[
                    Attribute::Class(ObjectClass::PRIVATE_KEY),
                    Attribute::Label(label.as_bytes().to_vec()),
                ])
                .unwrap()[0];
            let digest = digest.as_ref().to_vec();
            move || {
                let sig = session.sign(&Mechanism::Ecdsa, key, &digest).unwrap();
                assert_eq!(sig.len(), 64);
            }
        },
    )
}

fn main() {
    let n = operations(100, 8_000);
    let module = std::env::var("DPOP_TEST_PKCS11_MODULE").unwrap_or_else(|_| MODULE.into());

    // A throw-away token, made before any process loads the module.
    let hsm = new_temp_dir();
    let made = Command::new(workspace_root().join("softhsm/make-token.sh"))
        .arg(hsm.path())
        .args(["bench", PIN, "12345678"])
        .output()
        .expect("running softhsm/make-token.sh");
    assert!(
        made.status.success(),
        "making the SoftHSM2 token failed (is softhsm2 installed?): {}",
        String::from_utf8_lossy(&made.stderr)
    );
    let conf = hsm.path().join("softhsm2.conf");
    // SAFETY: single-threaded here; the module reads it in C_Initialize below.
    unsafe { std::env::set_var("SOFTHSM2_CONF", &conf) };

    let agent = TestAgent::start(
        AgentOptions::new()
            .env("SOFTHSM2_CONF", &conf)
            .env("BENCH_PIN", PIN)
            .arg("--pkcs11-module")
            .arg(&module)
            .arg("--pkcs11-token")
            .arg("bench")
            .arg("--pkcs11-pin-env")
            .arg("BENCH_PIN"),
    );
    agent
        .client()
        .generate_key("hsm", Some("pkcs11"), None)
        .unwrap();

    // The key now exists on the token; open it here too, logged in like the agent.
    let pkcs11 = Pkcs11::new(&module).unwrap();
    pkcs11
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = pkcs11.get_slots_with_token().unwrap()[0];
    let login = pkcs11.open_ro_session(slot).unwrap();
    login
        .login(UserType::User, Some(&AuthPin::new(PIN.into())))
        .unwrap();

    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    println!("ES256 on SoftHSM2, {cores} core(s), release build");
    let direct1 = direct(&pkcs11, 1, n, "hsm");
    let direct32 = direct(&pkcs11, 32, n / 32, "hsm");
    let agent1 = through_agent(&agent, 1, n, "hsm", URL, None);
    let agent32 = through_agent(&agent, 32, n / 32, "hsm", URL, None);
    for run in [&direct1, &direct32, &agent1, &agent32] {
        run.print();
    }
    let p50 = |r: &Run| r.percentile(0.5).as_secs_f64() * 1e6;
    println!(
        "agent p50 {:.1} us vs target {:.1} us (direct p50 + 40): {}",
        p50(&agent1),
        p50(&direct1) + 40.0,
        if p50(&agent1) <= p50(&direct1) + 40.0 {
            "met"
        } else {
            "MISSED"
        }
    );
    let ratio = agent32.per_second() / direct32.per_second();
    println!(
        "32 clients reach {:.0} % of direct multi-session throughput (target 85 %): {}",
        ratio * 100.0,
        verdict(ratio >= 0.85)
    );
    drop(login);
}
