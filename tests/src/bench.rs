//! Shared pieces of the benchmarks in `tests/benches/`: latency samples, percentiles, and
//! `sign_proof` through the agent from many concurrent async clients.

use std::time::{Duration, Instant};

use crate::TestAgent;

/// Latency samples of one scenario and its wall time.
pub struct Run {
    /// What was measured.
    pub name: String,
    /// Wall time of the whole run.
    pub wall: Duration,
    /// One sample per operation.
    pub samples: Vec<Duration>,
}

impl Run {
    /// Operations per second over the run's wall time.
    pub fn per_second(&self) -> f64 {
        self.samples.len() as f64 / self.wall.as_secs_f64()
    }

    /// The `p` quantile (0.5 for the median) of the samples.
    pub fn percentile(&self, p: f64) -> Duration {
        let mut s = self.samples.clone();
        s.sort_unstable();
        s[((s.len() - 1) as f64 * p).round() as usize]
    }

    /// The median in microseconds.
    pub fn p50_us(&self) -> f64 {
        self.percentile(0.5).as_secs_f64() * 1e6
    }

    /// Prints one table row.
    pub fn print(&self) {
        println!(
            "{:<46} {:>9.0}/s  p50 {:>7.1} us  p99 {:>8.1} us  ({} ops)",
            self.name,
            self.per_second(),
            self.p50_us(),
            self.percentile(0.99).as_secs_f64() * 1e6,
            self.samples.len()
        );
    }
}

/// `cargo bench` passes `--bench`; `cargo test --benches` does not, and then a bench only
/// smoke-runs with `quick` operations.
pub fn operations(quick: usize, default: usize) -> usize {
    if !std::env::args().any(|a| a == "--bench") {
        return quick;
    }
    std::env::var("DPOP_BENCH_PROOFS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// "release build", or a warning that the numbers mean nothing (`cargo test --benches`).
pub fn build_kind() -> &'static str {
    if cfg!(debug_assertions) {
        "DEBUG build, a smoke run: these numbers mean nothing"
    } else {
        "release build"
    }
}

/// Runs `per_thread` operations on each of `threads` threads at once and times each one.
/// `setup` runs on each thread before the clock starts and returns that thread's operation.
pub fn on_threads<S, F>(name: String, threads: usize, per_thread: usize, setup: S) -> Run
where
    S: Fn() -> F + Sync,
    F: FnMut(),
{
    let barrier = std::sync::Barrier::new(threads);
    // Each thread notes when it started and finished: the main thread may not even be
    // scheduled while the workers run, so its own clock would start late.
    let runs: Vec<(Instant, Instant, Vec<Duration>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (barrier, setup) = (&barrier, &setup);
                scope.spawn(move || {
                    let mut op = setup();
                    let mut samples = Vec::with_capacity(per_thread);
                    barrier.wait();
                    let start = Instant::now();
                    for _ in 0..per_thread {
                        let t = Instant::now();
                        op();
                        samples.push(t.elapsed());
                    }
                    (start, Instant::now(), samples)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("bench thread"))
            .collect()
    });
    let start = runs.iter().map(|r| r.0).min().expect("at least one thread");
    let end = runs.iter().map(|r| r.1).max().expect("at least one thread");
    let wall = end - start;
    let samples = runs.into_iter().flat_map(|r| r.2).collect();
    Run {
        name,
        wall,
        samples,
    }
}

/// `sign_proof` through the agent from `clients` async clients (one connection each) at once,
/// `per_client` proofs each, all on one tokio thread, as one application would drive them
/// (the agent and its clients share the machine's cores). A single client polls for replies
/// (as a latency-minded caller would); many clients do not, since they would only take CPU
/// from the agent.
pub fn through_agent(
    agent: &TestAgent,
    clients: usize,
    per_client: usize,
    key: &str,
    url: &str,
    access_token: Option<&str>,
) -> Run {
    let proof = ProofRequest {
        key: key.to_owned(),
        url: url.to_owned(),
        access_token: access_token.map(str::to_owned),
    };
    let name = format!("agent over the socket, {clients} client(s)");
    let spin = (clients == 1).then_some(Duration::from_micros(200));
    drive(agent, clients, per_client, Some(proof), name, spin)
}

/// As [`through_agent`], but a single client waits for replies without polling: for a
/// backend whose signatures take another process's CPU (a software TPM) and a slow signature,
/// where polling would take a core from the signer.
pub fn through_agent_waiting(
    agent: &TestAgent,
    clients: usize,
    per_client: usize,
    key: &str,
    url: &str,
) -> Run {
    let proof = ProofRequest {
        key: key.to_owned(),
        url: url.to_owned(),
        access_token: None,
    };
    let name = format!("agent over the socket, {clients} waiting client(s)");
    drive(agent, clients, per_client, Some(proof), name, None)
}

/// As [`through_agent`], with `hello` instead of `sign_proof`: the cost of the transport alone.
pub fn hellos_through_agent(agent: &TestAgent, clients: usize, per_client: usize) -> Run {
    let name = format!("agent hello (transport only), {clients} client(s)");
    let spin = (clients == 1).then_some(Duration::from_micros(200));
    drive(agent, clients, per_client, None, name, spin)
}

#[derive(Clone)]
struct ProofRequest {
    key: String,
    url: String,
    access_token: Option<String>,
}

/// `hello` when `proof` is `None`.
async fn one_request(
    c: &mut dpop_client::Client,
    proof: Option<&ProofRequest>,
) -> Result<(), dpop_client::Error> {
    match proof {
        Some(p) => {
            let request = dpop_client::ProofRequest::new("GET", &p.url);
            let request = match &p.access_token {
                Some(token) => request.access_token(token),
                None => request,
            };
            c.sign_proof(&p.key, &request)
                .await
                .map(|proof| drop(std::hint::black_box(proof)))
        }
        None => c
            .hello()
            .await
            .map(|hello| drop(std::hint::black_box(hello))),
    }
}

fn drive(
    agent: &TestAgent,
    clients: usize,
    per_client: usize,
    proof: Option<ProofRequest>,
    name: String,
    spin: Option<Duration>,
) -> Run {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("bench runtime");
    runtime.block_on(async {
        let mut connected = Vec::new();
        for _ in 0..clients {
            let mut c = agent.async_client().await;
            if let Some(spin) = spin {
                c.set_spin(spin);
            }
            // Warm the connection (and the agent's task) before timing.
            one_request(&mut c, proof.as_ref())
                .await
                .expect("warm-up request");
            connected.push(c);
        }
        let start = Instant::now();
        let tasks: Vec<_> = connected
            .into_iter()
            .map(|mut c| {
                let proof = proof.clone();
                tokio::spawn(async move {
                    let mut samples = Vec::with_capacity(per_client);
                    for _ in 0..per_client {
                        let t = Instant::now();
                        let result = one_request(&mut c, proof.as_ref()).await;
                        samples.push(t.elapsed());
                        result.expect("request");
                    }
                    samples
                })
            })
            .collect();
        let mut samples = Vec::new();
        for t in tasks {
            samples.extend(t.await.expect("client task"));
        }
        Run {
            name,
            wall: start.elapsed(),
            samples,
        }
    })
}

/// Whether a measured value met its target; a debug build's smoke run is not judged.
pub fn verdict(met: bool) -> &'static str {
    match (cfg!(debug_assertions), met) {
        (true, _) => "not judged (debug build)",
        (false, true) => "met",
        (false, false) => "MISSED",
    }
}

/// The HTTP/1.1 load generator and process measurements of the `server_load` bench.
pub mod load;
