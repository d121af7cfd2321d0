//! `cargo bench -p dpop-tests --bench proofs`: proofs per second and p50/p99 latency of
//! `sign_proof` through the real agent (real socket, release build) with 1 and 32 concurrent
//! clients, next to in-process proof creation with the same key, in one run.
//!
//! Targets (issue 2): agent p50 <= 1.3 x in-process p50 + 15 us; 32 clients >= 85 % of the
//! in-process throughput. Numbers are printed, never asserted.

use std::time::Instant;

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use dpop_jose::{Claims, Htu, Method, sign_proof};
use dpop_keys::software::SoftwareBackend;
use dpop_keys::{Backend, KeyLabel, SignerRef};
use dpop_tests::bench::{Run, build_kind, on_threads, operations, through_agent, verdict};
use dpop_tests::{AgentOptions, TestAgent};

const URL: &str = "https://api.example.com/v1/items?page=2";
const TOKEN: &str = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU";

/// What the agent does per request, in process: parse method and URL, claims with a fresh
/// jti and ath, sign with the same key.
fn in_process_proof(signer: &SignerRef) -> String {
    let method = Method::new("GET").unwrap();
    let htu = Htu::from_url(URL).unwrap();
    let claims = Claims::new(&method, &htu, 1_800_000_000)
        .with_access_token(TOKEN)
        .unwrap();
    sign_proof(&**signer, &claims).unwrap()
}

fn in_process(threads: usize, per_thread: usize, signer: &SignerRef) -> Run {
    on_threads(
        format!("in-process, {threads} thread(s)"),
        threads,
        per_thread,
        || {
            let signer = signer.clone();
            move || {
                std::hint::black_box(in_process_proof(&signer));
            }
        },
    )
}

/// One blocking client in one thread (what a CLI or a synchronous app sees); `key: None`
/// sends `hello`, which measures the transport alone.
fn through_agent_blocking(agent: &TestAgent, n: usize, key: Option<&str>) -> Run {
    let mut c = agent.client();
    // The client library no longer polls by default; 200 us is what it used to, so the
    // figures stay comparable with earlier runs.
    c.set_spin(std::time::Duration::from_micros(200));
    let mut samples = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        match key {
            Some(key) => {
                std::hint::black_box(
                    c.sign_proof(
                        key,
                        &dpop_client::ProofRequest::new("GET", URL).access_token(TOKEN),
                    )
                    .unwrap(),
                );
            }
            None => {
                std::hint::black_box(c.hello().unwrap());
            }
        }
        samples.push(t.elapsed());
    }
    Run {
        name: match key {
            Some(_) => "agent, 1 blocking client".to_owned(),
            None => "agent, 1 blocking client, hello (transport)".to_owned(),
        },
        wall: start.elapsed(),
        samples,
    }
}

fn main() {
    let n = operations(200, 40_000);

    // One P-256 key, given to the agent and to the in-process signer alike.
    let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
    let pem = pem_encode("PRIVATE KEY", pair.to_pkcs8v1().unwrap().as_ref());
    let local = SoftwareBackend::ephemeral()
        .import_pem(&KeyLabel::new("bench").unwrap(), pem.as_bytes(), None)
        .unwrap();
    let agent = TestAgent::start(AgentOptions::new());
    let imported = agent
        .client()
        .import_key(dpop_client::ImportKey::new("bench", &pem))
        .unwrap();
    assert_eq!(imported.jkt, local.meta().info().jkt, "same key in both");

    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    println!(
        "ES256 DPoP proofs (GET with ath), {cores} core(s), {}",
        build_kind()
    );
    let inproc1 = in_process(1, n, &local);
    let inproc_all = in_process(cores, n / cores, &local);
    let agent1 = through_agent(&agent, 1, n, "bench", URL, Some(TOKEN));
    let blocking1 = through_agent_blocking(&agent, n, Some("bench"));
    let hello = through_agent_blocking(&agent, n, None);
    let agent32 = through_agent(&agent, 32, n / 32, "bench", URL, Some(TOKEN));
    for run in [&inproc1, &inproc_all, &agent1, &blocking1, &hello, &agent32] {
        run.print();
    }
    let budget = 1.3 * inproc1.p50_us() + 15.0;
    println!(
        "agent p50 {:.1} us vs target {budget:.1} us (1.3 x {:.1} + 15): {}",
        agent1.p50_us(),
        inproc1.p50_us(),
        verdict(agent1.p50_us() <= budget)
    );
    for base in [&inproc1, &inproc_all] {
        let ratio = agent32.per_second() / base.per_second();
        println!(
            "32 clients reach {:.0} % of {} throughput (target 85 %): {}",
            ratio * 100.0,
            base.name,
            verdict(ratio >= 0.85)
        );
    }
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap());
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}
