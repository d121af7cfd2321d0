//! Several instances of the example resource server sharing one real `redis-server`:
//! replay state and nonces cross instances, a Redis outage fails closed (or open, when
//! configured) and heals when Redis returns, and a Redis that may evict replay records is
//! refused unless the risk is accepted (issue 22 item 5).

use std::time::Duration;

use dpop_tests::{
    DpopCaller, PROCESS_TIMEOUT, RedisServer, Reply, ResourceServer, ServerOptions, TokenIssuer,
};

const SECRET: &str = "the fleet's nonce secret, at least 32 bytes long";

/// The one public URL of the fleet, as behind a load balancer.
const PUBLIC: &str = "https://rs.test.invalid";

fn fleet_member(redis: &RedisServer, extra: &[&str]) -> ServerOptions {
    let mut args = vec!["--require-nonce".to_owned()];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    ServerOptions {
        redis: Some(redis.url()),
        nonce_secret: Some(SECRET.to_owned()),
        public_url: Some(PUBLIC.to_owned()),
        args,
        ..ServerOptions::default()
    }
}

/// A proof for `GET <PUBLIC>/items`.
async fn proof(caller: &DpopCaller, token: &str, nonce: Option<&str>) -> String {
    caller
        .proof("GET", &format!("{PUBLIC}/items"), Some(token), nonce)
        .await
}

/// Sends `proof` with `token` to `server`'s `/items`.
async fn send(caller: &DpopCaller, server: &ResourceServer, token: &str, proof: &str) -> Reply {
    let auth = format!("DPoP {token}");
    caller
        .send("GET", &server.url("/items"), Some(&auth), &[proof])
        .await
}

/// A fresh proof to `server`.
async fn get(caller: &DpopCaller, server: &ResourceServer, token: &str, nonce: &str) -> Reply {
    let proof = proof(caller, token, Some(nonce)).await;
    send(caller, server, token, &proof).await
}

/// A nonce from `server` (its answer to a proof without one).
async fn nonce_from(caller: &DpopCaller, server: &ResourceServer, token: &str) -> String {
    let reply = send(caller, server, token, &proof(caller, token, None).await).await;
    assert_eq!(reply.error(), Some("use_dpop_nonce"), "{reply:?}");
    reply.dpop_nonce.expect("DPoP-Nonce with use_dpop_nonce")
}

#[tokio::test(flavor = "multi_thread")]
async fn instances_share_replay_state_and_nonces_through_redis() {
    let redis = RedisServer::start();
    let issuer = TokenIssuer::new();
    let caller = DpopCaller::new();
    let a = ResourceServer::start(&issuer, fleet_member(&redis, &[]));
    let b = ResourceServer::start(&issuer, fleet_member(&redis, &[]));
    let token = issuer.token("alice", Some(&caller.jkt));

    // A nonce issued by a is accepted by b, and one issued by b by a.
    let nonce = nonce_from(&caller, &a, &token).await;
    let reply = get(&caller, &b, &token, &nonce).await;
    assert_eq!(reply.status, 200, "{reply:?}\n{}", b.log());
    let nonce = nonce_from(&caller, &b, &token).await;
    let reply = get(&caller, &a, &token, &nonce).await;
    assert_eq!(reply.status, 200, "{reply:?}\n{}", a.log());

    // A proof accepted by a is a replay at b, and the other way round.
    for (first, second) in [(&a, &b), (&b, &a)] {
        let proof = proof(&caller, &token, Some(&nonce)).await;
        let accepted = send(&caller, first, &token, &proof).await;
        assert_eq!(accepted.status, 200, "{accepted:?}");
        let replayed = send(&caller, second, &token, &proof).await;
        assert_eq!(replayed.status, 401, "{replayed:?}");
        assert_eq!(replayed.error(), Some("invalid_dpop_proof"));
        let text = replayed.body["error_description"].as_str().unwrap();
        assert!(text.contains("replay"), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_outage_fails_closed_or_open_as_configured_and_heals() {
    let mut redis = RedisServer::start();
    let issuer = TokenIssuer::new();
    let caller = DpopCaller::new();
    let closed = ResourceServer::start(&issuer, fleet_member(&redis, &[]));
    let open = ResourceServer::start(&issuer, fleet_member(&redis, &["--replay-fail-open"]));
    let token = issuer.token("alice", Some(&caller.jkt));
    let nonce = nonce_from(&caller, &closed, &token).await;

    let reply = get(&caller, &closed, &token, &nonce).await;
    assert_eq!(reply.status, 200, "{reply:?}");

    redis.stop();
    let reply = get(&caller, &closed, &token, &nonce).await;
    assert_eq!(reply.status, 503, "{reply:?}\n{}", closed.log());
    assert_eq!(reply.error(), Some("temporarily_unavailable"));
    let text = reply.body["error_description"].as_str().unwrap();
    assert!(text.contains("replay store unavailable"), "{text}");
    assert!(
        closed.log().contains("the replay store failed"),
        "{}",
        closed.log()
    );

    let reply = get(&caller, &open, &token, &nonce).await;
    assert_eq!(reply.status, 200, "fail-open serves: {reply:?}");
    assert!(open.log().contains("unrecorded"), "{}", open.log());

    // Back on the same port: the instance reconnects by itself.
    redis.restart();
    let deadline = std::time::Instant::now() + PROCESS_TIMEOUT;
    let mut last: Reply;
    loop {
        last = get(&caller, &closed, &token, &nonce).await;
        if last.status == 200 || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        last.status,
        200,
        "after Redis returned: {last:?}\n{}",
        closed.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_keeps_a_hash_of_each_pair_until_the_iat_window_ends() {
    let redis = RedisServer::start();
    let issuer = TokenIssuer::new();
    let caller = DpopCaller::new();
    let server = ResourceServer::start(&issuer, fleet_member(&redis, &[]));
    let token = issuer.token("alice", Some(&caller.jkt));
    let nonce = nonce_from(&caller, &server, &token).await;
    let proof = proof(&caller, &token, Some(&nonce)).await;
    assert_eq!(send(&caller, &server, &token, &proof).await.status, 200);

    let keys = redis.cli(&["--scan", "--pattern", "dpop:jti:*"]);
    let keys: Vec<&str> = keys.lines().collect();
    assert_eq!(keys.len(), 1, "one pair recorded: {keys:?}");
    // The key is the pair's hash: neither jti nor jkt appears in it.
    let (_, claims) = dpop_tests::decode_jws(&proof);
    let jti = claims["jti"].as_str().unwrap();
    assert!(
        !keys[0].contains(jti) && !keys[0].contains(&caller.jkt),
        "{}",
        keys[0]
    );
    // iat + 60 s + 5 s (RFC 9449 preset), counted from now: at most 65 s, and more than a
    // few seconds less only if the test machine stalled.
    let ttl: i64 = redis.cli(&["ttl", keys[0]]).trim().parse().unwrap();
    assert!((50..=65).contains(&ttl), "TTL {ttl}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_redis_at_start_is_an_error_not_a_panic() {
    let issuer = TokenIssuer::new();
    // Nothing listens there.
    let url = format!("redis://127.0.0.1:{}", dpop_tests::free_port());
    let log = match ResourceServer::try_start(
        &issuer,
        ServerOptions {
            redis: Some(url),
            ..ServerOptions::default()
        },
    ) {
        Ok(_) => panic!("the server started without its Redis"),
        Err(log) => log,
    };
    assert!(log.contains("connecting to Redis"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

/// A server on `redis` that refuses to start: its log.
fn refused_start(issuer: &TokenIssuer, redis: &RedisServer) -> String {
    match ResourceServer::try_start(issuer, fleet_member(redis, &[])) {
        Ok(server) => panic!(
            "the server started on a Redis that may evict replay records:\n{}",
            server.log()
        ),
        Err(log) => log,
    }
}

/// With the risk accepted the server runs, warns once, and still refuses a replay.
async fn accepted_start(issuer: &TokenIssuer, redis: &RedisServer, warning: &str) {
    let caller = DpopCaller::new();
    let server = ResourceServer::start(issuer, fleet_member(redis, &["--redis-accept-eviction"]));
    let token = issuer.token("alice", Some(&caller.jkt));
    let nonce = nonce_from(&caller, &server, &token).await;
    let proof = proof(&caller, &token, Some(&nonce)).await;
    let reply = send(&caller, &server, &token, &proof).await;
    assert_eq!(reply.status, 200, "{reply:?}\n{}", server.log());
    let replayed = send(&caller, &server, &token, &proof).await;
    assert_eq!(replayed.status, 401, "{replayed:?}");
    let log = server.log();
    assert_eq!(log.matches(warning).count(), 1, "one warning: {log}");
    assert!(
        log.contains("WARN") && log.contains("accept_eviction is set"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_evicting_redis_is_refused_unless_the_risk_is_accepted() {
    let redis = RedisServer::evicting();
    let issuer = TokenIssuer::new();
    let log = refused_start(&issuer, &redis);
    assert!(
        log.contains("maxmemory-policy is allkeys-lru") && log.contains("noeviction"),
        "names the policy found and the one needed: {log}"
    );
    assert!(
        log.contains("--redis-accept-eviction"),
        "names the setting: {log}"
    );
    assert!(!log.contains("panicked"), "{log}");

    accepted_start(&issuer, &redis, "maxmemory-policy is allkeys-lru").await;

    // The default policy passes without a warning.
    let plain = RedisServer::start();
    let server = ResourceServer::start(&issuer, fleet_member(&plain, &[]));
    assert!(
        !server.log().contains("maxmemory-policy"),
        "{}",
        server.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_without_config_is_refused_with_a_message_that_says_so() {
    let redis = RedisServer::without_config();
    let issuer = TokenIssuer::new();
    let log = refused_start(&issuer, &redis);
    assert!(
        log.contains("does not allow CONFIG GET") && log.contains("unknown command"),
        "says CONFIG is not allowed: {log}"
    );
    assert!(
        log.contains("--redis-accept-eviction"),
        "names the setting: {log}"
    );

    accepted_start(&issuer, &redis, "cannot check Redis's maxmemory-policy").await;
}

/// An ACL that denies CONFIG (`NOPERM`), as a managed Redis's application user has.
#[tokio::test(flavor = "multi_thread")]
async fn a_redis_user_without_config_permission_is_refused_with_a_message_that_says_so() {
    let redis = RedisServer::start();
    redis.cli(&[
        "ACL",
        "SETUSER",
        "app",
        "on",
        ">app-password",
        "~*",
        "+@all",
        "-config",
    ]);
    let url = format!("redis://app:app-password@127.0.0.1:{}", redis.port());
    let error = dpop_server::RedisReplayStore::connect(&url, dpop_server::RedisOptions::default())
        .await
        .expect_err("connect refuses a Redis whose policy it cannot read");
    let text = error.to_string();
    assert!(
        matches!(
            error,
            dpop_server::RedisConnectError::PolicyUnreadable { .. }
        ),
        "{text}"
    );
    assert!(
        text.contains("does not allow CONFIG GET") && text.contains("NOPERM"),
        "{text}"
    );
    assert!(!text.contains("app-password"), "{text}");
    dpop_server::RedisReplayStore::connect(
        &url,
        dpop_server::RedisOptions {
            accept_eviction: true,
            ..dpop_server::RedisOptions::default()
        },
    )
    .await
    .expect("accepted with the setting");
}

/// With `noeviction` a full Redis refuses new records (`OOM`): proofs are refused, never
/// accepted unrecorded.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_redis_that_does_not_evict_fails_closed() {
    // One byte: every write is over the limit.
    let redis = RedisServer::start_with(&["--maxmemory", "1"]);
    let issuer = TokenIssuer::new();
    let caller = DpopCaller::new();
    let server = ResourceServer::start(&issuer, fleet_member(&redis, &[]));
    let token = issuer.token("alice", Some(&caller.jkt));
    let nonce = nonce_from(&caller, &server, &token).await;
    let reply = get(&caller, &server, &token, &nonce).await;
    assert_eq!(reply.status, 503, "{reply:?}\n{}", server.log());
    assert_eq!(reply.error(), Some("temporarily_unavailable"));
    let text = reply.body["error_description"].as_str().unwrap();
    assert!(text.contains("OOM"), "{text}");
}
