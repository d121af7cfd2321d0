//! `cargo bench -p dpop-tests --bench proofs`: proofs per second and p50/p99 latency of
//! `sign_proof` through the real agent (real socket, release build) with 1 and 32 concurrent
//! clients, next to in-process proof creation with the same key, in one run.
//!
//! Targets (issue 2): agent p50 <= 1.3 x in-process p50 + 15 us; 32 clients >= 85 % of the
//! in-process throughput. Numbers are printed, never asserted.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use dpop_jose::{Claims, Htu, Method, sign_proof};
use dpop_keys::software::SoftwareBackend;
use dpop_keys::{Backend, KeyLabel, SignerRef};
use dpop_tests::{AgentOptions, TestAgent};

const URL: &str = "https://api.example.com/v1/items?page=2";
const TOKEN: &str = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU";

/// Latency samples of one scenario.
struct Run {
    name: String,
    wall: Duration,
    samples: Vec<Duration>,
}

impl Run {
    fn per_second(&self) -> f64 {
        self.samples.len() as f64 / self.wall.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> Duration {
        let mut s = self.samples.clone();
        s.sort_unstable();
        s[((s.len() - 1) as f64 * p).round() as usize]
    }

    fn print(&self) {
        println!(
            "{:<44} {:>10.0}/s  p50 {:>7.1} us  p99 {:>7.1} us  ({} proofs)",
            self.name,
            self.per_second(),
            self.percentile(0.50).as_secs_f64() * 1e6,
            self.percentile(0.99).as_secs_f64() * 1e6,
            self.samples.len()
        );
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

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
    let barrier = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let signer = signer.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut samples = Vec::with_capacity(per_thread);
                barrier.wait();
                for _ in 0..per_thread {
                    let t = Instant::now();
                    std::hint::black_box(in_process_proof(&signer));
                    samples.push(t.elapsed());
                }
                samples
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    let samples: Vec<Duration> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    Run {
        name: format!("in-process, {threads} thread(s)"),
        wall: start.elapsed(),
        samples,
    }
}

fn through_agent(agent: &TestAgent, clients: usize, per_client: usize, key: &str) -> Run {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut connected = Vec::new();
        for _ in 0..clients {
            let mut c = agent.async_client().await;
            if clients == 1 {
                c.set_spin(Duration::from_micros(200));
            }
            // Warm the connection (and the agent's task) before timing.
            c.sign_proof(key, "GET", URL, Some(TOKEN), None)
                .await
                .unwrap();
            connected.push(c);
        }
        let start = Instant::now();
        let tasks: Vec<_> = connected
            .into_iter()
            .map(|mut c| {
                let key = key.to_owned();
                tokio::spawn(async move {
                    let mut samples = Vec::with_capacity(per_client);
                    for _ in 0..per_client {
                        let t = Instant::now();
                        let proof = c.sign_proof(&key, "GET", URL, Some(TOKEN), None).await;
                        samples.push(t.elapsed());
                        std::hint::black_box(proof.unwrap());
                    }
                    samples
                })
            })
            .collect();
        let mut samples = Vec::new();
        for t in tasks {
            samples.extend(t.await.unwrap());
        }
        Run {
            name: format!("agent over the socket, {clients} client(s)"),
            wall: start.elapsed(),
            samples,
        }
    })
}

/// The same through the blocking client, one thread: what a CLI or a synchronous app sees.
fn through_agent_blocking(agent: &TestAgent, n: usize, key: Option<&str>) -> Run {
    let mut c = agent.client();
    let mut samples = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        match key {
            Some(key) => {
                std::hint::black_box(c.sign_proof(key, "GET", URL, Some(TOKEN), None).unwrap());
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
    // `cargo bench` passes --bench; `cargo test --benches` does not: then just smoke-run.
    let quick = !std::env::args().any(|a| a == "--bench");
    let n = if quick {
        200
    } else {
        env_usize("DPOP_BENCH_PROOFS", 40_000)
    };

    // One P-256 key, given to the agent and to the in-process signer alike.
    let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
    let der = pair.to_pkcs8v1().unwrap().as_ref().to_vec();
    let pem = pem_encode("PRIVATE KEY", &der);

    let local = SoftwareBackend::ephemeral()
        .import_pem(&KeyLabel::new("bench").unwrap(), pem.as_bytes(), None)
        .unwrap();
    let agent = TestAgent::start(AgentOptions::new());
    let imported = agent
        .client()
        .import_key("bench", None, &pem, None)
        .unwrap();
    assert_eq!(imported.jkt, local.meta().info().jkt, "same key in both");

    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    println!("ES256 DPoP proofs (GET with ath), {cores} core(s), release build");
    let inproc1 = in_process(1, n, &local);
    let inproc_all = in_process(cores, n / cores, &local);
    let agent1 = through_agent(&agent, 1, n, "bench");
    let agent32 = through_agent(&agent, 32, n / 32, "bench");
    let blocking1 = through_agent_blocking(&agent, n, Some("bench"));
    let hello = through_agent_blocking(&agent, n, None);
    for run in [&inproc1, &inproc_all, &agent1, &blocking1, &hello, &agent32] {
        run.print();
    }
    let p50 = |r: &Run| r.percentile(0.5).as_secs_f64() * 1e6;
    let budget = 1.3 * p50(&inproc1) + 15.0;
    println!(
        "agent p50 {:.1} us vs target {:.1} us (1.3 x {:.1} + 15): {}",
        p50(&agent1),
        budget,
        p50(&inproc1),
        if p50(&agent1) <= budget {
            "met"
        } else {
            "MISSED"
        }
    );
    for base in [&inproc1, &inproc_all] {
        let ratio = agent32.per_second() / base.per_second();
        println!(
            "32 clients reach {:.0} % of {} throughput (target 85 %): {}",
            ratio * 100.0,
            base.name,
            if ratio >= 0.85 { "met" } else { "MISSED" }
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
