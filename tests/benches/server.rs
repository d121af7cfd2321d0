//! `cargo bench -p dpop-tests --bench server`: DPoP verification per core with dpop-server's
//! `Verifier` (token binding, ath, nonce rule, in-memory replay store) for ES256, EdDSA, RS256
//! and PS256, next to the floor: aws-lc-rs checking the same proof's signature alone. Then
//! the cost the Redis replay check adds on loopback (a real redis-server).
//!
//! Targets (issue 15): ES256 verify p50 <= 1.15 x the raw signature check; Redis adds
//! <= 60 us p50. Numbers are printed, never asserted. `cargo test --benches` runs it quickly.

use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use aws_lc_rs::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use dpop_jose::{Algorithm, Claims, Htu, Jwk, Method, b64url_decode, sign_proof};
use dpop_keys::software::SoftwareBackend;
use dpop_keys::{Backend, KeyLabel, SignerRef};
use dpop_server::{
    BoundToken, HttpRequest, MemoryReplayStore, Preset, PublicUrl, RedisOptions, RedisReplayStore,
    ReplayStore, TokenFuture, TokenValidator, Verifier,
};
use dpop_tests::bench::{Run, build_kind, operations, verdict};
use dpop_tests::{RedisServer, unix_now};

const URL: &str = "https://api.example.com/v1/items";
const TOKEN: &str = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU";

/// Accepts [`TOKEN`], bound to one key: the application's part, kept trivial here.
struct Bound(String);

impl TokenValidator for Bound {
    fn validate<'a>(&'a self, _: &'a str) -> TokenFuture<'a> {
        Box::pin(std::future::ready(Ok(BoundToken {
            jkt: Some(self.0.clone()),
            claims: serde_json::Value::Null,
        })))
    }
}

/// Polls a future that is ready at once (the in-memory store never waits).
fn ready<T>(future: impl Future<Output = T>) -> T {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(value) => value,
        Poll::Pending => panic!("the in-memory replay store does not wait"),
    }
}

/// `n` proofs of `signer`, each with its own jti, all with `iat` = `now`.
fn proofs(signer: &SignerRef, n: usize, now: i64) -> Vec<String> {
    let (method, htu) = (Method::new("GET").unwrap(), Htu::from_url(URL).unwrap());
    (0..n)
        .map(|_| {
            let claims = Claims::new(&method, &htu, now)
                .with_access_token(TOKEN)
                .unwrap();
            sign_proof(&**signer, &claims).unwrap()
        })
        .collect()
}

/// The signature check alone, as aws-lc-rs does it, of one proof.
fn raw_check(alg: Algorithm, jwk: &Jwk, proof: &str) {
    let (input, sig) = proof.rsplit_once('.').unwrap();
    let sig = b64url_decode(sig).unwrap();
    let b = |s: &str| b64url_decode(s).unwrap();
    let ok = match (jwk, alg) {
        (Jwk::Ec { x, y, .. }, Algorithm::ES256) => {
            let point = [&[4u8][..], &b(x), &b(y)].concat();
            UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                .verify(input.as_bytes(), &sig)
        }
        (Jwk::Okp { x, .. }, Algorithm::EdDSA) => {
            UnparsedPublicKey::new(&signature::ED25519, b(x)).verify(input.as_bytes(), &sig)
        }
        (Jwk::Rsa { n, e }, Algorithm::RS256) => RsaPublicKeyComponents { n: b(n), e: b(e) }
            .verify(
                &signature::RSA_PKCS1_2048_8192_SHA256,
                input.as_bytes(),
                &sig,
            ),
        (Jwk::Rsa { n, e }, Algorithm::PS256) => RsaPublicKeyComponents { n: b(n), e: b(e) }
            .verify(&signature::RSA_PSS_2048_8192_SHA256, input.as_bytes(), &sig),
        _ => unreachable!("key and algorithm match"),
    };
    ok.expect("the raw signature check passes");
}

fn timed(name: String, items: &[String], mut op: impl FnMut(&str)) -> Run {
    let mut samples = Vec::with_capacity(items.len());
    let start = Instant::now();
    for item in items {
        let t = Instant::now();
        op(item);
        samples.push(t.elapsed());
    }
    Run {
        name,
        wall: start.elapsed(),
        samples,
    }
}

fn verifier(store: Arc<dyn ReplayStore>) -> Verifier {
    Verifier::builder(Preset::Rfc9449)
        .public_url(PublicUrl::new("https://api.example.com").unwrap())
        .replay_store(store)
        .build()
        .unwrap()
}

fn request<'a>(auth: &'a [&'a str], dpop: &'a [&'a str]) -> HttpRequest<'a> {
    HttpRequest {
        method: "GET",
        url: URL,
        authorization: auth,
        dpop,
    }
}

fn main() {
    let n = operations(20, 10_000);
    let now = unix_now();
    let auth = format!("DPoP {TOKEN}");
    println!("DPoP verification, one thread (per core), {}", build_kind());
    let mut es256 = None;
    for alg in [
        Algorithm::ES256,
        Algorithm::EdDSA,
        Algorithm::RS256,
        Algorithm::PS256,
    ] {
        let signer = SoftwareBackend::ephemeral()
            .generate(&KeyLabel::new("bench").unwrap(), alg)
            .unwrap();
        let info = signer.meta().info();
        // RSA signing is slow; fewer proofs give as good a median.
        let count = if matches!(alg, Algorithm::RS256 | Algorithm::PS256) {
            n.div_ceil(4)
        } else {
            n
        };
        let proofs = proofs(&signer, count, now);
        let raw = timed(
            format!("{alg} raw aws-lc-rs signature check"),
            &proofs,
            |p| raw_check(alg, &info.jwk, p),
        );
        let store = Arc::new(MemoryReplayStore::new(
            NonZeroUsize::new(count * 2).unwrap(),
        ));
        let v = verifier(store);
        let tokens = Bound(info.jkt.clone());
        let full = timed(
            format!("{alg} Verifier (memory replay store)"),
            &proofs,
            |p| {
                ready(v.verify_at(&request(&[&auth], &[p]), &tokens, now)).expect("verifies");
            },
        );
        raw.print();
        full.print();
        let ratio = full.p50_us() / raw.p50_us();
        println!("{alg}: verify p50 = {ratio:.2} x raw signature check");
        if alg == Algorithm::ES256 {
            println!("ES256 target <= 1.15 x: {}", verdict(ratio <= 1.15));
            es256 = Some((signer.clone(), full));
        }
    }

    // Redis on loopback: the same ES256 verification with the replay check in Redis.
    let (signer, memory) = es256.expect("ES256 ran");
    let redis = RedisServer::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = runtime
        .block_on(RedisReplayStore::connect(
            &redis.url(),
            RedisOptions::default(),
        ))
        .expect("connecting to redis-server");
    let v = verifier(Arc::new(store.clone()));
    let jkt = signer.meta().info().jkt.clone();
    let tokens = Bound(jkt.clone());
    let proofs = proofs(&signer, n, now);
    let with_redis = timed("ES256 Verifier (Redis replay store)".into(), &proofs, |p| {
        runtime
            .block_on(v.verify_at(&request(&[&auth], &[p]), &tokens, now))
            .expect("verifies");
    });
    let jtis: Vec<String> = (0..n).map(|i| format!("bench-{now}-{i}")).collect();
    let set_nx = timed("Redis SET NX EX alone".into(), &jtis, |jti| {
        assert!(
            runtime
                .block_on(store.insert_if_new(&jkt, jti, now + 60, now))
                .unwrap()
        );
    });
    with_redis.print();
    set_nx.print();
    let added = with_redis.p50_us() - memory.p50_us();
    println!(
        "Redis adds {added:.1} us p50 to ES256 verify (target <= 60 us): {}",
        verdict(added <= 60.0)
    );
}
