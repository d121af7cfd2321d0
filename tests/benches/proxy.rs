//! `cargo bench -p dpop-tests --bench proxy`: what `dpop proxy` adds per request, and how many
//! requests per second it holds. A trivial upstream on loopback (axum, answers `ok`) is called
//! (a) directly with reqwest, with the same headers the proxy sends (`Authorization: DPoP`,
//! a `DPoP` proof made beforehand), and (b) through a real `dpop proxy --listen
//! 127.0.0.1:PORT` (release build of the CLI when this bench is one) whose agent holds a
//! software key: sequentially on one keep-alive connection (the added p50), then from 32
//! concurrent keep-alive clients (requests per second). Targets (issue 24): at most 1 ms p50
//! added, at least 5,000 requests/s with 32 clients.
//!
//! Numbers are printed, never asserted. `cargo test --benches` runs it with a few requests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dpop_client::ProofRequest;
use dpop_tests::bench::{Run, build_kind, operations, verdict};
use dpop_tests::proxy::ProxyProcess;
use dpop_tests::{AgentOptions, TestAgent, TokenIssuer, new_temp_dir, write_private_file};

/// Concurrent clients of the throughput run.
const CLIENTS: usize = 32;

/// The trivial upstream, on a runtime of its own; its base URL.
fn upstream(runtime: &tokio::runtime::Runtime) -> String {
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("binding the upstream");
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().fallback(|| async { "ok" });
    runtime.spawn(async move { axum::serve(listener, app).await });
    base
}

/// One keep-alive client (its own connection) with these default headers.
fn client(headers: &reqwest::header::HeaderMap) -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .default_headers(headers.clone())
        .build()
        .unwrap()
}

async fn get(http: &reqwest::Client, url: &str) {
    let response = http.get(url).send().await.expect("GET");
    let status = response.status();
    let body = response.bytes().await.expect("body");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(&body[..], b"ok");
}

/// `n` sequential GETs on one connection, each timed.
async fn sequential(name: &str, url: &str, headers: &reqwest::header::HeaderMap, n: usize) -> Run {
    let http = client(headers);
    get(&http, url).await; // connection up, nonces learnt
    let mut samples = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        get(&http, url).await;
        samples.push(t.elapsed());
    }
    Run {
        name: name.to_owned(),
        wall: start.elapsed(),
        samples,
    }
}

/// `CLIENTS` clients at once, `per_client` GETs each.
async fn concurrent(name: &str, url: &str, per_client: usize) -> Run {
    let headers = reqwest::header::HeaderMap::new();
    let clients: Vec<reqwest::Client> = (0..CLIENTS).map(|_| client(&headers)).collect();
    for http in &clients {
        get(http, url).await;
    }
    let url: Arc<str> = url.into();
    let start = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|http| {
            let url = url.clone();
            tokio::spawn(async move {
                let mut samples = Vec::with_capacity(per_client);
                for _ in 0..per_client {
                    let t = Instant::now();
                    get(&http, &url).await;
                    samples.push(t.elapsed());
                }
                samples
            })
        })
        .collect();
    let mut samples = Vec::with_capacity(CLIENTS * per_client);
    for task in tasks {
        samples.extend(task.await.unwrap());
    }
    Run {
        name: name.to_owned(),
        wall: start.elapsed(),
        samples,
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    let n = operations(10, 3000);
    let per_client = operations(2, 400);
    println!(
        "dpop proxy against a trivial loopback upstream, {}",
        build_kind()
    );
    let upstream_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let base = upstream(&upstream_runtime);

    let agent = TestAgent::start(AgentOptions::new());
    let jkt = agent.client().generate_key("k").unwrap().jkt;
    let token = TokenIssuer::new().token("bench", Some(&jkt));
    let dir = new_temp_dir();
    let token_path = dir.path().join("token");
    write_private_file(&token_path, token.as_bytes());
    let proxy = ProxyProcess::start(
        &agent,
        &[
            "--upstream",
            &base,
            "--access-token-file",
            token_path.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // The direct calls carry what the proxy adds: the token and a proof (made once: the
    // trivial upstream checks nothing, and the proxy's signing is what is measured).
    let proof = agent
        .client()
        .sign_proof(
            "k",
            &ProofRequest::new("GET", &format!("{base}/x")).access_token(&token),
        )
        .unwrap();
    let mut same_headers = reqwest::header::HeaderMap::new();
    same_headers.insert("authorization", format!("DPoP {token}").parse().unwrap());
    same_headers.insert("dpop", proof.parse().unwrap());
    let proxied_url = proxy.url("/x");
    let direct_url = format!("{base}/x");

    let (direct, proxied) = runtime.block_on(async {
        let direct = sequential("direct (same headers)", &direct_url, &same_headers, n).await;
        let proxied = sequential(
            "through dpop proxy (TCP loopback)",
            &proxied_url,
            &reqwest::header::HeaderMap::new(),
            n,
        )
        .await;
        (direct, proxied)
    });
    println!("sequential, one keep-alive connection:");
    for run in [&direct, &proxied] {
        println!(
            "  {:<36} p50 {:>7.1} us  p90 {:>7.1} us  p99 {:>8.1} us  ({} requests)",
            run.name,
            us(run.percentile(0.5)),
            us(run.percentile(0.9)),
            us(run.percentile(0.99)),
            run.samples.len()
        );
    }
    let added = us(proxied.percentile(0.5)) - us(direct.percentile(0.5));
    println!(
        "  added by the proxy: p50 {added:+.1} us (target <= 1000 us: {})",
        verdict(added <= 1000.0)
    );

    let (direct, proxied) = runtime.block_on(async {
        (
            concurrent("direct", &direct_url, per_client).await,
            concurrent("through dpop proxy", &proxied_url, per_client).await,
        )
    });
    println!("{CLIENTS} concurrent keep-alive clients:");
    direct.print();
    proxied.print();
    println!(
        "  through the proxy: {:.0} requests/s (target >= 5000: {})",
        proxied.per_second(),
        verdict(proxied.per_second() >= 5000.0)
    );
    drop(proxy);
    upstream_runtime.shutdown_background();
}
