//! `cargo bench -p dpop-tests --bench startup`: how long the agent takes to start with saved
//! software keys (from spawning `dpop-agent -D` until its socket accepts), next to one scrypt
//! derivation alone; and `generate` through the agent next to the key generation alone.
//!
//! Targets (issue 16): start-up with 100 software keys within 50 ms plus one scrypt
//! derivation (measured against a start with one key, which is one scrypt and one key); `generate` within 2 ms plus the key generation itself. Numbers are printed,
//! never asserted.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use dpop_tests::bench::{Run, build_kind, on_threads, operations};
use dpop_tests::{AgentOptions, TestAgent, binaries, new_temp_dir, send_signal, wait_timeout};

const PASSPHRASE: &str = "bench passphrase";

/// Spawn to first accepted connection, in one start of the agent on `data`.
fn start_time(data: &Path, dir: &Path) -> Duration {
    let socket = dir.join("bench.sock");
    let started = Instant::now();
    let mut child = Command::new(&binaries().agent)
        .arg("-D")
        .arg("-a")
        .arg(&socket)
        .arg("--data-dir")
        .arg(data)
        .env("DPOP_AGENT_PASSPHRASE", PASSPHRASE)
        .env_remove("RUST_LOG")
        .env_remove("DPOP_AUTH_SOCK")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning dpop-agent");
    let took = loop {
        if UnixStream::connect(&socket).is_ok() {
            break started.elapsed();
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("dpop-agent exited during start-up: {status}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "dpop-agent did not listen within a minute"
        );
        std::thread::sleep(Duration::from_micros(100));
    };
    send_signal(child.id(), libc::SIGTERM);
    wait_timeout(&mut child, Duration::from_secs(10)).expect("dpop-agent stops on SIGTERM");
    took
}

fn median_start(data: &Path, dir: &Path, starts: usize) -> Duration {
    let mut times: Vec<Duration> = (0..starts).map(|_| start_time(data, dir)).collect();
    times.sort_unstable();
    times[times.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let keys = operations(5, 100);
    let starts = operations(1, 7);
    println!(
        "agent start-up and generate, {} ({keys} keys)",
        build_kind()
    );

    let scrypt_alone = {
        let params = scrypt::Params::new(15, 8, 1).expect("scrypt parameters");
        let mut out = [0u8; 32];
        let mut times: Vec<Duration> = (0..starts)
            .map(|_| {
                let t = Instant::now();
                scrypt::scrypt(
                    PASSPHRASE.as_bytes(),
                    b"sixteen byte salt",
                    &params,
                    &mut out,
                )
                .expect("scrypt");
                t.elapsed()
            })
            .collect();
        times.sort_unstable();
        times[times.len() / 2]
    };

    // An agent with no key yet: the first start makes the store file (one scrypt).
    let mut agent = TestAgent::start(AgentOptions::new().passphrase_env(PASSPHRASE));
    let dir = new_temp_dir();
    agent.stop();
    let empty = median_start(&agent.data_dir(), dir.path(), starts);

    agent.restart();
    let mut client = agent.client();
    let mut samples = Vec::with_capacity(keys);
    let wall = Instant::now();
    for i in 0..keys {
        let t = Instant::now();
        client.generate_key(&format!("k{i:03}")).expect("generate");
        samples.push(t.elapsed());
    }
    let generate = Run {
        name: "generate ES256 through the agent (sealed file)".into(),
        wall: wall.elapsed(),
        samples,
    };
    let rng = SystemRandom::new();
    let keygen = on_threads(
        "ES256 key generation alone (aws-lc-rs)".into(),
        1,
        keys,
        || {
            let rng = rng.clone();
            move || {
                std::hint::black_box(
                    EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                        .expect("keygen"),
                );
            }
        },
    );
    drop(client);
    agent.stop();
    let with_keys = median_start(&agent.data_dir(), dir.path(), starts);

    // One key left: the store file alone, so start-up is one scrypt and one key.
    let data = agent.data_dir();
    for i in 1..keys {
        std::fs::remove_file(data.join(format!("software/k{i:03}.json"))).expect("key file");
    }
    let one_key = median_start(&data, dir.path(), starts);

    generate.print();
    keygen.print();
    println!(
        "generate overhead (p50 agent - p50 keygen)        {:>7.2} ms   target <= 2 ms",
        (generate.p50_us() - keygen.p50_us()) / 1e3
    );
    println!(
        "scrypt N=2^15 r=8 p=1 alone (median)             {:>7.1} ms",
        ms(scrypt_alone)
    );
    println!(
        "start, no key (store file made: one scrypt)      {:>7.1} ms",
        ms(empty)
    );
    println!(
        "start, 1 key (one scrypt) (median)               {:>7.1} ms",
        ms(one_key)
    );
    println!(
        "start, {keys} keys (median)                       {:>7.1} ms",
        ms(with_keys)
    );
    println!(
        "start with {keys} keys - start with 1 key           {:>7.1} ms   target <= 50 ms",
        (ms(with_keys) - ms(one_key))
    );
}
