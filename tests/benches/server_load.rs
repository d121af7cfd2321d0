//! `cargo bench -p dpop-tests --bench server_load`: the example resource server
//! (`dpop-resource-server`, axum + `DpopLayer`) under N = 1, 8, 32, 128 concurrent HTTP/1.1
//! keep-alive clients, next to a Bearer baseline (`dpop-test-bearer`: the same JWT check
//! in a plain axum handler), with replay state in memory, in Redis, in Redis with nonces
//! required, and in a 3-primary Redis Cluster. Every request is valid and carries a fresh proof (its own `jti`, `iat` within
//! the window, bound to the token), signed before the clock starts, so the generator only
//! moves bytes. Reports requests/s, p50, p99, the server's CPU per request (utime + stime
//! from `/proc/PID/stat`) and the generator's own, how long the server and Redis waited for
//! their CPUs (`/proc/PID/task/*/schedstat`: other work on a shared machine), the server's memory at 128 connections
//! and after them, and the memory replay store's bytes per remembered proof.
//!
//! Two cores (the first two this process may use, usually 0 and 1): the server runs pinned to
//! the first; the generator and the Redis servers to the second (the bench pins itself before
//! it starts each, and they inherit the pin); redis-benchmark runs on the server's CPU,
//! reaching Redis across cores as the server does (and once beside Redis, for comparison).
//! With one CPU nothing is pinned.
//!
//! Targets (issue 25), printed with their ratios, never asserted: DPoP with the memory store
//! costs at most 1.5 x the Bearer handler's CPU per request (ES256, at 32 clients); the Redis
//! store keeps at least 80% of the memory store's requests/s at 32 clients; at 1 client a
//! verification with Redis takes at most the memory store's p50 plus 1.5 x the round trip
//! `redis-benchmark -c 1` measures in the same run.
//!
//! `DPOP_BENCH_PROOFS` sets the requests per case and client count (default 4000);
//! `DPOP_BENCH_PERF=DIR` records each timed run of the server with `perf record -g` into
//! `DIR/<case>-<clients>.data`. `cargo test --benches` runs a few requests per case (a smoke
//! run of a debug build).

use std::process::Command;
use std::time::Duration;

use dpop_jose::{Algorithm, Claims, Htu, Method, sign_proof};
use dpop_keys::software::SoftwareBackend;
use dpop_keys::{Backend, KeyLabel, SignerRef};
use dpop_tests::bench::load::{
    Client, Generator, Memory, ServerProcess, allowed_cpus, cpu_time, get_request, pin_to_cpu,
    run_queue_wait,
};
use dpop_tests::bench::{Run, build_kind, operations, verdict};
use dpop_tests::redis::RedisCluster;
use dpop_tests::server::{AUDIENCE, ISSUER};
use dpop_tests::{RedisServer, TokenIssuer, binaries, free_port, unix_now};

/// The path every request asks for.
const PATH: &str = "/v1/items";
/// Client counts.
const CLIENTS: [usize; 4] = [1, 8, 32, 128];
/// The nonce secret of the nonce case (a bench value, not a secret).
const NONCE_SECRET: &str = "server-load-bench-nonce-secret-0123456789";
/// Where the server runs, and where the generator and Redis run: the first two CPUs this
/// process may use.
#[derive(Clone, Copy)]
struct Cpus {
    server: usize,
    generator: usize,
}

/// Where the resource server keeps replay state. A new store (Redis Cluster, Sentinel) is
/// one more variant here, its flags in [`Store::configure`], and one more line in `main`'s
/// list of cases.
enum Store {
    /// In the server's memory (`--replay-capacity`, sized for the whole run).
    Memory,
    /// `--redis URL`.
    Redis(String),
    /// `--redis URL` with nonces required (`DPOP_NONCE_SECRET`, `--require-nonce`).
    RedisNonces(String),
    /// `--redis-cluster SEED,...`: a Redis Cluster found from its nodes.
    RedisCluster(Vec<String>),
}

impl Store {
    /// Adds this store's flags and environment to the server's command.
    fn configure(&self, command: &mut Command) {
        match self {
            Store::Memory => {
                command.args(["--replay-capacity", "2000000"]);
            }
            Store::Redis(url) => {
                command.args(["--redis", url]);
            }
            Store::RedisNonces(url) => {
                command
                    .args(["--redis", url, "--require-nonce"])
                    .env("DPOP_NONCE_SECRET", NONCE_SECRET);
            }
            Store::RedisCluster(seeds) => {
                command.args(["--redis-cluster", &seeds.join(",")]);
            }
        }
    }

    fn nonces(&self) -> bool {
        matches!(self, Store::RedisNonces(_))
    }
}

/// What serves the requests.
enum Target {
    /// `dpop-test-bearer`: `Authorization: Bearer`, the JWT check alone.
    Bearer,
    /// `dpop-resource-server` with this replay store.
    Dpop(Store),
}

/// One case's figures at one client count.
struct Level {
    clients: usize,
    run: Run,
    /// The server's CPU time per request.
    server_cpu: Duration,
    /// The generator's (this process's) CPU time per request.
    generator_cpu: Duration,
    /// The share of one core the server used over the run (1.0: its core was saturated).
    server_busy: f64,
    /// How long, per request, the server waited for its CPU (runnable, another process on
    /// it), and the Redis servers for theirs.
    server_wait: Duration,
    redis_wait: Duration,
}

/// One case: its name and its figures per client count.
struct Case {
    name: String,
    levels: Vec<Level>,
}

impl Case {
    fn at(&self, clients: usize) -> &Level {
        self.levels
            .iter()
            .find(|l| l.clients == clients)
            .expect("every client count ran")
    }
}

/// The proof key, the token bound to it, and the issuer of both tokens and JWKS.
struct Caller {
    issuer: TokenIssuer,
    signer: SignerRef,
    token: String,
}

fn main() {
    let total = operations(16, 4000);
    let cpus = match allowed_cpus()[..] {
        [server, generator, ..] => Some(Cpus { server, generator }),
        _ => None,
    };
    // Built before anything is pinned (a release build the first time).
    let resource_server = binaries().resource_server.clone();
    println!(
        "The example resource server under load, {}; {} requests per case and client count",
        build_kind(),
        total
    );
    if let Some(cpus) = cpus {
        println!(
            "server pinned to CPU {}; load generator and Redis to CPU {}; redis-benchmark on the server's CPU (and beside Redis)",
            cpus.server, cpus.generator
        );
        pin_to_cpu(cpus.generator);
    } else {
        println!("one CPU: nothing pinned, server and generator share it");
    }
    let signer = SoftwareBackend::ephemeral()
        .generate(&KeyLabel::new("bench").unwrap(), Algorithm::ES256)
        .unwrap();
    let issuer = TokenIssuer::new();
    let token = issuer.token("bench", Some(&signer.meta().info().jkt));
    let caller = Caller {
        issuer,
        signer,
        token,
    };
    let redis = RedisServer::start();
    let cluster = RedisCluster::start(false);
    let generator = Generator::new();
    let perf_dir = std::env::var_os("DPOP_BENCH_PERF").map(std::path::PathBuf::from);

    let targets = [
        ("Bearer JWT (plain axum handler)", Target::Bearer),
        ("DPoP, memory replay store", Target::Dpop(Store::Memory)),
        (
            "DPoP, Redis replay store",
            Target::Dpop(Store::Redis(redis.url())),
        ),
        (
            "DPoP, Redis, nonces required",
            Target::Dpop(Store::RedisNonces(redis.url())),
        ),
        (
            "DPoP, Redis Cluster (3 primaries)",
            Target::Dpop(Store::RedisCluster(cluster.seeds())),
        ),
    ];
    println!(
        "{:<46} {:>10}  {:>11}  {:>12}  server CPU/req (busy)  generator CPU/req  waited for CPU/req: server, Redis",
        "case, clients", "req/s", "p50", "p99"
    );
    let mut cases = Vec::new();
    for (name, target) in &targets {
        let server = start_server(target, &caller, &resource_server, cpus);
        let before = Memory::of(server.pid());
        let mut levels = Vec::new();
        for clients in CLIENTS {
            let per_client = (total / clients).max(2);
            let tag = format!("{}-{clients}", short_name(target));
            let (level, open) = load(
                &generator,
                &server,
                target,
                &caller,
                clients,
                per_client,
                format!("{name}, {clients}"),
                perf_dir.as_deref().map(|d| d.join(format!("{tag}.data"))),
                &redis_pids(target, &redis, &cluster),
            );
            print_level(&level);
            if clients == 128 {
                let open_memory = Memory::of(server.pid());
                drop(open);
                // The server closes its side once it reads the clients' FIN.
                std::thread::sleep(Duration::from_millis(300));
                let closed = Memory::of(server.pid());
                println!(
                    "  server memory: at start {before}; at 128 connections {open_memory}; after they closed {closed}"
                );
            }
            levels.push(level);
        }
        if matches!(target, Target::Dpop(Store::Memory)) {
            let after = Memory::of(server.pid());
            let proofs: usize = levels.iter().map(|l| l.run.samples.len()).sum();
            println!(
                "  server RSS grew {:.1} MiB over the run, {proofs} proofs remembered ({:.0} bytes per proof, connection buffers included)",
                (after.rss as f64 - before.rss as f64) / (1024.0 * 1024.0),
                (after.rss as f64 - before.rss as f64) / proofs as f64
            );
        }
        let log = server.log();
        assert!(
            !log.contains("ERROR"),
            "the server logged errors during the run:\n{log}"
        );
        cases.push(Case {
            name: (*name).to_owned(),
            levels,
        });
    }

    // Before redis-benchmark adds keys of its own.
    redis_memory(&redis);
    let (set_rtt, set_nx_rtt) = redis_benchmark(&redis, total, cpus);
    // A million pairs whatever DPOP_BENCH_PROOFS says (it sets the requests).
    let measured = std::env::args().any(|a| a == "--bench");
    replay_store_memory(if measured { 1_000_000 } else { 10_000 });
    judge(&cases, set_rtt, set_nx_rtt);
}

/// The processes of the Redis servers `target` uses (from `INFO server`).
fn redis_pids(target: &Target, redis: &RedisServer, cluster: &RedisCluster) -> Vec<u32> {
    let pid = |node: &RedisServer| -> u32 {
        node.cli(&["info", "server"])
            .lines()
            .find_map(|l| l.strip_prefix("process_id:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("process_id in INFO server")
    };
    match target {
        Target::Bearer | Target::Dpop(Store::Memory) => Vec::new(),
        Target::Dpop(Store::Redis(_) | Store::RedisNonces(_)) => vec![pid(redis)],
        Target::Dpop(Store::RedisCluster(_)) => {
            (0..cluster.len()).map(|i| pid(cluster.node(i))).collect()
        }
    }
}

/// The case's name in file names.
fn short_name(target: &Target) -> &'static str {
    match target {
        Target::Bearer => "bearer",
        Target::Dpop(Store::Memory) => "memory",
        Target::Dpop(Store::Redis(_)) => "redis",
        Target::Dpop(Store::RedisNonces(_)) => "redis-nonces",
        Target::Dpop(Store::RedisCluster(_)) => "redis-cluster",
    }
}

/// Starts the server of `target` on the server's CPU (the bench pins itself there while
/// it starts it, so the server's runtime sizes itself for one core).
fn start_server(
    target: &Target,
    caller: &Caller,
    resource_server: &std::path::Path,
    cpus: Option<Cpus>,
) -> ServerProcess {
    let port = free_port();
    let mut command = match target {
        Target::Bearer => Command::new(env!("CARGO_BIN_EXE_dpop-test-bearer")),
        Target::Dpop(store) => {
            let mut command = Command::new(resource_server);
            command
                .args(["--public-url", &format!("http://127.0.0.1:{port}")])
                .env_remove("DPOP_NONCE_SECRET")
                .env_remove("DPOP_REDIS_URL")
                .env("RUST_LOG", "info");
            store.configure(&mut command);
            command
        }
    };
    command
        .arg("--jwks")
        .arg(caller.issuer.jwks_path())
        .args(["--issuer", ISSUER, "--audience", AUDIENCE])
        .args(["--listen", &format!("127.0.0.1:{port}")]);
    if let Some(cpus) = cpus {
        pin_to_cpu(cpus.server);
    }
    let server = ServerProcess::start(command);
    if let Some(cpus) = cpus {
        pin_to_cpu(cpus.generator);
    }
    server
}

/// One client count of one case: connect, one untimed request per client (the nonce
/// challenge when nonces are required), sign each client's proofs, then the timed run with
/// the CPU both processes used in it. The clients come back still connected.
#[allow(clippy::too_many_arguments)]
fn load(
    generator: &Generator,
    server: &ServerProcess,
    target: &Target,
    caller: &Caller,
    clients: usize,
    per_client: usize,
    name: String,
    perf: Option<std::path::PathBuf>,
    redis_pids: &[u32],
) -> (Level, Vec<Client>) {
    let host = server.addr().to_string();
    let url = format!("http://{host}{PATH}");
    let mut connected = generator.connect(server.addr(), clients);
    let mut batches = Vec::with_capacity(clients);
    for client in &mut connected {
        let batch = match target {
            Target::Bearer => {
                let auth = format!("Bearer {}", caller.token);
                let request = get_request(&host, PATH, &[("Authorization", &auth)]);
                let warm = generator.block_on(client.send(&request));
                assert_eq!(warm.status, 200, "warm-up: {warm:?}");
                vec![request; per_client]
            }
            Target::Dpop(store) => {
                let first = dpop_request(caller, &host, &url, None);
                let reply = generator.block_on(client.send(&first));
                // With nonces required, the first answer is the challenge and its nonce
                // goes into every proof of the batch (a nonce lives one to two rotation
                // intervals, 60 s by default: longer than a run).
                let nonce = if store.nonces() {
                    assert_eq!(reply.status, 401, "the nonce challenge: {reply:?}");
                    Some(
                        reply
                            .header("dpop-nonce")
                            .expect("the challenge carries DPoP-Nonce")
                            .to_owned(),
                    )
                } else {
                    assert_eq!(reply.status, 200, "warm-up: {reply:?}");
                    None
                };
                (0..per_client)
                    .map(|_| dpop_request(caller, &host, &url, nonce.as_deref()))
                    .collect()
            }
        };
        batches.push(batch);
    }
    let recorder = perf.map(|file| PerfRecord::start(server.pid(), &file));
    let redis_waits = || {
        redis_pids
            .iter()
            .map(|&pid| run_queue_wait(pid))
            .sum::<Duration>()
    };
    let (server_before, generator_before) = (cpu_time(server.pid()), cpu_time(std::process::id()));
    let (server_wait_before, redis_wait_before) = (run_queue_wait(server.pid()), redis_waits());
    let (run, clients_back) = generator.run(name, connected, batches);
    let (server_after, generator_after) = (cpu_time(server.pid()), cpu_time(std::process::id()));
    let (server_wait_after, redis_wait_after) = (run_queue_wait(server.pid()), redis_waits());
    drop(recorder);
    let requests = run.samples.len() as u32;
    let level = Level {
        clients,
        server_wait: (server_wait_after - server_wait_before) / requests,
        redis_wait: (redis_wait_after - redis_wait_before) / requests,
        server_busy: (server_after - server_before).as_secs_f64() / run.wall.as_secs_f64(),
        server_cpu: (server_after - server_before) / requests,
        generator_cpu: (generator_after - generator_before) / requests,
        run,
    };
    (level, clients_back)
}

/// One request with a fresh proof (with `nonce`) bound to the caller's token.
fn dpop_request(caller: &Caller, host: &str, url: &str, nonce: Option<&str>) -> Vec<u8> {
    let claims = Claims::new(
        &Method::new("GET").unwrap(),
        &Htu::from_url(url).unwrap(),
        unix_now(),
    )
    .with_access_token(&caller.token)
    .unwrap()
    .with_nonce(nonce)
    .unwrap();
    let proof = sign_proof(&*caller.signer, &claims).unwrap();
    let auth = format!("DPoP {}", caller.token);
    get_request(host, PATH, &[("Authorization", &auth), ("DPoP", &proof)])
}

fn print_level(level: &Level) {
    let run = &level.run;
    println!(
        "{:<46} {:>8.0}/s  p50 {:>7.1} us  p99 {:>8.1} us  {:>8.1} us ({:>3.0}%)  {:>8.1} us  {:>8.1} us, {:>6.1} us",
        run.name,
        run.per_second(),
        run.p50_us(),
        run.percentile(0.99).as_secs_f64() * 1e6,
        level.server_cpu.as_secs_f64() * 1e6,
        level.server_busy * 100.0,
        level.generator_cpu.as_secs_f64() * 1e6,
        level.server_wait.as_secs_f64() * 1e6,
        level.redis_wait.as_secs_f64() * 1e6,
    );
}

/// `perf record -g -p PID -o FILE` for as long as it lives.
struct PerfRecord(std::process::Child);

impl PerfRecord {
    fn start(pid: u32, file: &std::path::Path) -> PerfRecord {
        let child = Command::new("perf")
            .args(["record", "-g", "-q", "-p", &pid.to_string(), "-o"])
            .arg(file)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("running perf (DPOP_BENCH_PERF is set)");
        // perf attaches to the process's threads before the run starts.
        std::thread::sleep(Duration::from_millis(500));
        PerfRecord(child)
    }
}

impl Drop for PerfRecord {
    fn drop(&mut self) {
        // SIGINT makes perf write its file and exit.
        // SAFETY: kill has no memory preconditions; the pid is perf's, started here.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        let _ = self.0.wait();
    }
}

/// `redis-benchmark -c 1` against the bench's Redis: `SET` (`-t set`) and `SET key 1 NX EX
/// 65` with random keys, the replay check's own command, run from the server's CPU (as the
/// server reaches Redis: across cores, which costs a cross-CPU wake-up each way), then `SET`
/// from Redis's own CPU for comparison. Returns the p50 round trips from the server's CPU.
fn redis_benchmark(redis: &RedisServer, total: usize, cpus: Option<Cpus>) -> (Duration, Duration) {
    let n = total.max(1000).to_string();
    let port = redis.port().to_string();
    let run = |beside_server: bool, args: &[&str]| -> Duration {
        if let Some(cpus) = cpus {
            pin_to_cpu(if beside_server {
                cpus.server
            } else {
                cpus.generator
            });
        }
        let out = Command::new("redis-benchmark")
            .args(["-p", &port, "-c", "1", "-n", &n, "-q"])
            .args(args)
            .output()
            .expect("running redis-benchmark");
        if let Some(cpus) = cpus {
            pin_to_cpu(cpus.generator);
        }
        assert!(out.status.success(), "redis-benchmark failed: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        // The last progress update ends in \r; the summary follows it.
        let line = text.rsplit('\r').next().unwrap_or_default().trim();
        println!(
            "redis-benchmark -c 1 -n {n} {} ({}): {line}",
            args.join(" "),
            if beside_server {
                "on the server's CPU"
            } else {
                "beside Redis"
            }
        );
        let p50 = line
            .split("p50=")
            .nth(1)
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no p50 in redis-benchmark's output: {text}"));
        Duration::from_secs_f64(p50 / 1000.0)
    };
    let set = run(true, &["-t", "set"]);
    let set_nx = run(
        true,
        &[
            "-r",
            "100000000",
            "SET",
            "bench:__rand_int__",
            "1",
            "NX",
            "EX",
            "65",
        ],
    );
    run(false, &["-t", "set"]);
    (set, set_nx)
}

/// What Redis holds per remembered proof: `used_memory` over the keys of the bench's runs.
fn redis_memory(redis: &RedisServer) {
    let info = redis.cli(&["info", "memory"]);
    let used: f64 = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory in INFO memory");
    let startup: f64 = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory_startup:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory_startup in INFO memory");
    let keys: f64 = redis.cli(&["dbsize"]).trim().parse().expect("DBSIZE");
    println!(
        "Redis: {keys} replay records, used_memory {:.1} MiB above start: {:.0} bytes per record",
        (used - startup) / (1024.0 * 1024.0),
        (used - startup) / keys
    );
}

/// The memory replay store's bytes per remembered proof: from its data structure, and
/// measured as this process's RSS growth over `n` distinct pairs.
fn replay_store_memory(n: usize) {
    use dpop_jose::ReplayStore as _;
    // A hash map of 128-bit pair hash -> expiry (hashbrown: one control byte per bucket,
    // buckets a power of two at most 7/8 full) and a binary heap of (expiry, hash) (a Vec
    // that doubles as it grows).
    let entry = std::mem::size_of::<([u8; 16], i64)>();
    let heap_entry = std::mem::size_of::<std::cmp::Reverse<(i64, [u8; 16])>>();
    let buckets = (n * 8 / 7).next_power_of_two();
    let heap_capacity = n.next_power_of_two();
    let stated = (buckets * (entry + 1) + heap_capacity * heap_entry) as f64 / n as f64;
    let best = (entry + 1) as f64 * 8.0 / 7.0 + heap_entry as f64;
    let before = Memory::of_self();
    let store = dpop_jose::LruReplayStore::new(std::num::NonZeroUsize::new(n).expect("n > 0"));
    let now = unix_now();
    for i in 0..n {
        let new = store
            .insert_if_new("bench-jkt", &i.to_string(), now + 65, now)
            .expect("room for every pair");
        assert!(new);
    }
    let after = Memory::of_self();
    println!(
        "memory replay store, {n} proofs: stated {stated:.0} bytes per proof ({entry} + 1 per map bucket, {heap_entry} per heap slot; {best:.0} at best, about twice that right after both grow), measured {:.0} bytes per proof (RSS growth)",
        (after.rss as f64 - before.rss as f64) / n as f64
    );
    drop(store);
}

/// The issue's targets, each with its ratio and verdict.
fn judge(cases: &[Case], set_rtt: Duration, set_nx_rtt: Duration) {
    let case = |name: &str| {
        cases
            .iter()
            .find(|c| c.name.starts_with(name))
            .unwrap_or_else(|| panic!("case {name} ran"))
    };
    let (bearer, memory, redis) = (
        case("Bearer"),
        case("DPoP, memory"),
        case("DPoP, Redis replay"),
    );
    let cluster = case("DPoP, Redis Cluster");
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!("targets:");
    let cpu_ratio = us(memory.at(32).server_cpu) / us(bearer.at(32).server_cpu);
    println!(
        "  DPoP (memory store) CPU per request <= 1.5 x Bearer's, 32 clients: {:.1} us / {:.1} us = {cpu_ratio:.2} x: {}",
        us(memory.at(32).server_cpu),
        us(bearer.at(32).server_cpu),
        verdict(cpu_ratio <= 1.5)
    );
    for clients in CLIENTS {
        println!(
            "    at {clients} clients: {:.2} x",
            us(memory.at(clients).server_cpu) / us(bearer.at(clients).server_cpu)
        );
    }
    let rate = redis.at(32).run.per_second() / memory.at(32).run.per_second();
    println!(
        "  Redis store req/s >= 80% of the memory store's, 32 clients: {:.0} / {:.0} = {:.0}%: {}",
        redis.at(32).run.per_second(),
        memory.at(32).run.per_second(),
        rate * 100.0,
        verdict(rate >= 0.8)
    );
    let rate = cluster.at(32).run.per_second() / memory.at(32).run.per_second();
    println!(
        "  (the same for Redis Cluster, 32 clients: {:.0} / {:.0} = {:.0}%: {})",
        cluster.at(32).run.per_second(),
        memory.at(32).run.per_second(),
        rate * 100.0,
        verdict(rate >= 0.8)
    );
    let (redis_p50, memory_p50) = (redis.at(1).run.p50_us(), memory.at(1).run.p50_us());
    let allowed = memory_p50 + 1.5 * us(set_rtt);
    println!(
        "  1 client, Redis p50 <= memory p50 + 1.5 x redis-benchmark SET p50 (from the server's CPU): {redis_p50:.1} us vs {memory_p50:.1} + 1.5 x {:.1} = {allowed:.1} us ({:.2} x the allowance; Redis adds {:.1} us = {:.1} x SET, {:.1} x SET NX EX): {}",
        us(set_rtt),
        redis_p50 / allowed,
        redis_p50 - memory_p50,
        (redis_p50 - memory_p50) / us(set_rtt),
        (redis_p50 - memory_p50) / us(set_nx_rtt),
        verdict(redis_p50 <= allowed)
    );
}
