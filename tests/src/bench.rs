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

/// Runs `per_thread` operations on each of `threads` threads at once and times each one.
/// `setup` runs on each thread before the clock starts and returns that thread's operation.
pub fn on_threads<S, F>(name: String, threads: usize, per_thread: usize, setup: S) -> Run
where
    S: Fn() -> F + Sync,
    F: FnMut(),
{
    let barrier = std::sync::Barrier::new(threads + 1);
    let (wall, samples) = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (barrier, setup) = (&barrier, &setup);
                scope.spawn(move || {
                    let mut op = setup();
                    let mut samples = Vec::with_capacity(per_thread);
                    barrier.wait();
                    for _ in 0..per_thread {
                        let t = Instant::now();
                        op();
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
            .flat_map(|h| h.join().expect("bench thread"))
            .collect();
        (start.elapsed(), samples)
    });
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
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("bench runtime");
    runtime.block_on(async {
        let mut connected = Vec::new();
        for _ in 0..clients {
            let mut c = agent.async_client().await;
            if clients == 1 {
                c.set_spin(Duration::from_micros(200));
            }
            // Warm the connection (and the agent's task) before timing.
            c.sign_proof(key, "GET", url, access_token, None)
                .await
                .expect("warm-up proof");
            connected.push(c);
        }
        let start = Instant::now();
        let tasks: Vec<_> = connected
            .into_iter()
            .map(|mut c| {
                let (key, url) = (key.to_owned(), url.to_owned());
                let token = access_token.map(str::to_owned);
                tokio::spawn(async move {
                    let mut samples = Vec::with_capacity(per_client);
                    for _ in 0..per_client {
                        let t = Instant::now();
                        let proof = c
                            .sign_proof(&key, "GET", &url, token.as_deref(), None)
                            .await;
                        samples.push(t.elapsed());
                        std::hint::black_box(proof.expect("proof"));
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
            name: format!("agent over the socket, {clients} client(s)"),
            wall: start.elapsed(),
            samples,
        }
    })
}

/// Prints whether a measured value met its target.
pub fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}
