//! The Redis replay store as fleets run Redis (issue 25 item 4): a real local Redis Cluster
//! (three primaries, with a replica each for the failover test) and a primary with a
//! replica behind a real Sentinel. Each check is one round trip to the primary that owns
//! the key; while no primary answers for a key its checks fail (closed); after a failover
//! they succeed on the new primary; no proof is ever accepted twice. Without `WAIT` a record
//! the old primary acknowledged can be lost in a failover: shown here, and closed by
//! `replica_acks`. The example resource server takes the cluster and Sentinel flags.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use dpop_server::{
    RedisConnectError, RedisOptions, RedisReplayStore, RedisTarget, ReplayError, ReplayStore,
    pair_key,
};
use dpop_tests::redis::{RedisCluster, RedisSentinel, SENTINEL_MASTER, key_slot};
use dpop_tests::{
    DpopCaller, PROCESS_TIMEOUT, RedisServer, ResourceServer, ServerOptions, TokenIssuer, unix_now,
};

/// The thumbprint every pair of these tests is recorded under.
const JKT: &str = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I";

/// Checks against a dead node fail within it. Four times the default: on a loaded CI
/// machine (the whole suite and `cargo doc` on two cores) a replica's acknowledgement took
/// longer than `WAIT`'s half of 500 ms, and a healthy check failed.
const TIMEOUT: Duration = Duration::from_secs(2);

fn options(replica_acks: u32) -> RedisOptions {
    RedisOptions {
        timeout: TIMEOUT,
        replica_acks,
        ..RedisOptions::default()
    }
}

fn cluster_target(cluster: &RedisCluster) -> RedisTarget {
    RedisTarget::Cluster {
        seeds: cluster.seeds(),
    }
}

fn sentinel_target(sentinel: &RedisSentinel) -> RedisTarget {
    RedisTarget::Sentinel {
        sentinels: vec![sentinel.url()],
        master_name: SENTINEL_MASTER.to_owned(),
        primary_auth: None,
    }
}

/// The Redis key of a pair of this module.
fn key_of(jti: &str) -> String {
    format!("dpop:jti:{}", pair_key(JKT, jti))
}

/// Records `jti` for a minute.
async fn check(store: &RedisReplayStore, jti: &str) -> Result<bool, ReplayError> {
    let now = unix_now();
    store.insert_if_new(JKT, jti, now + 60, now).await
}

/// Every check of a run, to show that no pair was ever accepted twice.
#[derive(Default)]
struct Ledger {
    accepted: HashMap<String, u32>,
    failed: Vec<String>,
    next: u64,
}

impl Ledger {
    /// A jti not used before, whose key is in a slot that `wanted` accepts.
    fn fresh(&mut self, wanted: impl Fn(u16) -> bool) -> String {
        loop {
            self.next += 1;
            let jti = format!("jti-{}", self.next);
            if wanted(key_slot(&key_of(&jti))) {
                return jti;
            }
        }
    }

    /// Checks `jti` and notes the outcome.
    async fn check(&mut self, store: &RedisReplayStore, jti: &str) -> Result<bool, ReplayError> {
        let outcome = check(store, jti).await;
        match &outcome {
            Ok(true) => *self.accepted.entry(jti.to_owned()).or_default() += 1,
            Ok(false) => {}
            Err(_) => self.failed.push(jti.to_owned()),
        }
        outcome
    }

    /// Sends one accepted and one failed pair again, as an attacker replaying captured
    /// proofs would.
    async fn replay_some(&mut self, store: &RedisReplayStore) {
        let accepted = self
            .accepted
            .keys()
            .nth(self.next as usize % self.accepted.len().max(1));
        if let Some(jti) = accepted.cloned() {
            let _ = self.check(store, &jti).await;
        }
        if let Some(jti) = self
            .failed
            .get(self.next as usize % self.failed.len().max(1))
        {
            let jti = jti.clone();
            let _ = self.check(store, &jti).await;
        }
    }

    /// Asserts that every accepted pair was accepted once and is a replay now.
    async fn assert_each_accepted_once(&self, store: &RedisReplayStore) {
        let twice: Vec<_> = self.accepted.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "accepted more than once: {twice:?}");
        for jti in self.accepted.keys() {
            assert!(
                !check(store, jti).await.expect("checks succeed at the end"),
                "{jti} was accepted and is no replay now"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_records_each_pair_once_on_the_primary_of_its_slot() {
    let cluster = RedisCluster::start(false);
    let store = RedisReplayStore::connect_to(&cluster_target(&cluster), options(0))
        .await
        .expect("connecting to the cluster");
    let jtis: Vec<String> = (0..300).map(|i| format!("pair-{i}")).collect();

    // Concurrent checks, pipelined on the connection to each primary.
    let mut tasks = tokio::task::JoinSet::new();
    for jti in jtis.clone() {
        let store = store.clone();
        tasks.spawn(async move { check(&store, &jti).await });
    }
    while let Some(outcome) = tasks.join_next().await {
        assert!(outcome.unwrap().expect("a check succeeds"), "a new pair");
    }
    for jti in &jtis {
        assert!(!check(&store, jti).await.unwrap(), "{jti} is a replay");
    }

    // Each key is on the primary of its slot, and every primary holds some.
    let primaries = cluster.primaries();
    assert_eq!(primaries.len(), 3, "{:?}", primaries);
    let mut per_node: HashMap<usize, usize> = HashMap::new();
    for jti in &jtis {
        let slot = key_slot(&key_of(jti));
        let (node, _) = primaries
            .iter()
            .find(|(_, ranges)| ranges.iter().any(|&(a, b)| (a..=b).contains(&slot)))
            .expect("every slot has a primary");
        *per_node.entry(*node).or_default() += 1;
    }
    for (node, count) in &per_node {
        let size: usize = cluster.node(*node).cli(&["DBSIZE"]).trim().parse().unwrap();
        assert_eq!(size, *count, "keys on node {node}");
        assert!(*count > 50, "{per_node:?}");
    }

    // A primary that may evict is refused, by name.
    let evicting = cluster.node(primaries[1].0);
    evicting.cli(&["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"]);
    let refused = RedisReplayStore::connect_to(&cluster_target(&cluster), options(0))
        .await
        .expect_err("a cluster with an evicting primary is refused");
    let text = refused.to_string();
    match refused {
        RedisConnectError::Evicting { node, policy } => {
            assert_eq!(node, format!("127.0.0.1:{}", evicting.port()), "{text}");
            assert_eq!(policy, "allkeys-lru");
        }
        other => panic!("refused for another reason: {other}"),
    }
    let accepted = RedisReplayStore::connect_to(
        &cluster_target(&cluster),
        RedisOptions {
            accept_eviction: true,
            ..options(0)
        },
    )
    .await
    .expect("accepted with accept_eviction");
    assert!(!check(&accepted, &jtis[0]).await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_cluster_primary_fails_its_slots_closed_and_no_proof_is_accepted_twice() {
    let mut cluster = RedisCluster::start(true);
    let store = RedisReplayStore::connect_to(&cluster_target(&cluster), options(1))
        .await
        .expect("connecting to the cluster");
    let (victim, ranges) = cluster.primaries()[0].clone();
    let in_victim = move |slot: u16| ranges.iter().any(|&(a, b)| (a..=b).contains(&slot));
    let mut ledger = Ledger::default();

    for _ in 0..30 {
        let jti = ledger.fresh(|_| true);
        assert!(ledger.check(&store, &jti).await.expect("healthy cluster"));
    }

    cluster.node_mut(victim).stop();
    let killed = Instant::now();
    let (mut victim_failed, mut others_served) = (0, 0);
    // Until a replica has taken over the victim's slots (and then until the restarted
    // victim replicates from it, for WAIT 1), its slots' checks fail.
    let mut restarted = false;
    loop {
        let jti = ledger.fresh(&in_victim);
        match ledger.check(&store, &jti).await {
            Ok(new) => {
                assert!(new, "a fresh pair");
                assert!(
                    restarted,
                    "a check on the victim's slots succeeded before its restart"
                );
                break;
            }
            Err(_) => victim_failed += 1,
        }
        let jti = ledger.fresh(|slot| !in_victim(slot));
        if matches!(ledger.check(&store, &jti).await, Ok(true)) {
            others_served += 1;
        }
        ledger.replay_some(&store).await;
        // Once a replica serves the victim's slots, the victim comes back (as its replica).
        let primaries = cluster.primaries();
        if !restarted && primaries.len() == 3 && primaries.iter().all(|(n, _)| *n != victim) {
            eprintln!("a replica took over after {:?}", killed.elapsed());
            cluster.node_mut(victim).restart();
            restarted = true;
        }
        assert!(
            killed.elapsed() < PROCESS_TIMEOUT * 2,
            "no recovery: {victim_failed} failed, {others_served} served"
        );
    }
    eprintln!(
        "the victim's slots served again after {:?}: {victim_failed} checks failed closed, {others_served} served by the others meanwhile",
        killed.elapsed()
    );
    cluster.wait_until_healthy();
    assert!(
        victim_failed > 0,
        "checks on the dead primary's slots failed"
    );
    assert!(others_served > 0, "the other primaries kept serving");
    for _ in 0..30 {
        let jti = ledger.fresh(|_| true);
        assert!(ledger.check(&store, &jti).await.expect("recovered cluster"));
    }
    ledger.assert_each_accepted_once(&store).await;
}

/// Without `WAIT`, a record the old primary acknowledged after a replica was promoted is
/// lost, and its proof is accepted again by the new primary: the window
/// `replica_acks` closes, by refusing that proof instead.
#[tokio::test(flavor = "multi_thread")]
async fn without_replica_acks_a_promotion_can_lose_a_record_and_with_them_it_fails_closed() {
    let primary = RedisServer::start();
    let replica = RedisServer::replica_of(&primary);
    let fast = RedisReplayStore::connect(&primary.url(), options(0))
        .await
        .unwrap();
    let safe = RedisReplayStore::connect(&primary.url(), options(1))
        .await
        .unwrap();
    assert!(
        check(&safe, "before")
            .await
            .expect("the replica acknowledges")
    );

    // The replica is promoted while the old primary still takes writes (what a failover
    // looks like to a client that has not noticed it yet).
    replica.cli(&["REPLICAOF", "NO", "ONE"]);
    let started = Instant::now();
    let refused = check(&safe, "refused")
        .await
        .expect_err("no replica acknowledges");
    assert!(started.elapsed() < TIMEOUT * 2, "{:?}", started.elapsed());
    assert!(
        refused.to_string().contains("acknowledged by 0 of the 1"),
        "{refused}"
    );
    assert!(check(&fast, "lost").await.expect("accepted without WAIT"));

    let promoted = RedisReplayStore::connect(&replica.url(), options(0))
        .await
        .unwrap();
    assert!(
        !check(&promoted, "before").await.unwrap(),
        "an acknowledged record survives"
    );
    assert!(
        check(&promoted, "lost").await.unwrap(),
        "the unacknowledged record was lost: its proof is accepted a second time"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sentinel_failover_moves_checks_to_the_new_primary_and_no_proof_is_accepted_twice() {
    let sentinel = RedisSentinel::start();
    let store = RedisReplayStore::connect_to(&sentinel_target(&sentinel), options(1))
        .await
        .expect("connecting through Sentinel");
    let mut ledger = Ledger::default();
    let first = sentinel.primary();
    for _ in 0..20 {
        let jti = ledger.fresh(|_| true);
        let outcome = ledger.check(&store, &jti).await;
        assert!(
            outcome.as_ref().is_ok_and(|new| *new),
            "before the failover: {outcome:?}\n{}\n{}\n{}",
            sentinel.servers[0].cli(&["INFO", "replication"]),
            sentinel.servers[1].cli(&["INFO", "replication"]),
            sentinel.log()
        );
    }
    let on_first: usize = sentinel.servers[first]
        .cli(&["DBSIZE"])
        .trim()
        .parse()
        .unwrap();
    assert_eq!(on_first, 20);

    let answer = sentinel.cli(&["SENTINEL", "FAILOVER", SENTINEL_MASTER]);
    assert!(answer.starts_with("OK"), "{answer}");
    let started = Instant::now();
    let mut failed = 0;
    let last = loop {
        let jti = ledger.fresh(|_| true);
        let outcome = ledger.check(&store, &jti).await;
        ledger.replay_some(&store).await;
        let now_primary = sentinel.primary();
        if outcome.is_err() {
            failed += 1;
        } else if now_primary != first
            && sentinel.servers[now_primary]
                .try_cli(&["EXISTS", &key_of(&jti)])
                .is_some_and(|n| n.trim() == "1")
        {
            break jti;
        }
        assert!(
            started.elapsed() < PROCESS_TIMEOUT * 2,
            "checks never reached the new primary ({failed} failed)\n{}",
            sentinel.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!(
        "failover: {failed} checks failed closed, new primary used after {:?}",
        started.elapsed()
    );
    // The old primary went on taking writes after the replica's promotion, until the
    // Sentinel turned it into a replica; WAIT refused all of them.
    assert!(failed > 0, "no check failed during the failover");
    assert!(
        !check(&store, &last)
            .await
            .expect("a check after the failover")
    );
    ledger.assert_each_accepted_once(&store).await;
}

/// `GET /items` with a fresh proof, then the same proof again.
async fn accepted_then_replayed(server: &ResourceServer, issuer: &TokenIssuer) {
    let caller = DpopCaller::new();
    let token = issuer.token("alice", Some(&caller.jkt));
    let url = server.url("/items");
    let proof = caller.proof("GET", &url, Some(&token), None).await;
    let auth = format!("DPoP {token}");
    let reply = caller.send("GET", &url, Some(&auth), &[&proof]).await;
    assert_eq!(reply.status, 200, "{reply:?}\n{}", server.log());
    let replayed = caller.send("GET", &url, Some(&auth), &[&proof]).await;
    assert_eq!(replayed.status, 401, "{replayed:?}");
    assert_eq!(replayed.error(), Some("invalid_dpop_proof"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_example_server_runs_on_a_cluster_and_behind_sentinel() {
    let issuer = TokenIssuer::new();
    let cluster = RedisCluster::start(false);
    let mut args = Vec::new();
    for seed in cluster.seeds().into_iter().take(2) {
        args.extend(["--redis-cluster".to_owned(), seed]);
    }
    let server = ResourceServer::start(
        &issuer,
        ServerOptions {
            args,
            ..ServerOptions::default()
        },
    );
    accepted_then_replayed(&server, &issuer).await;

    let sentinel = RedisSentinel::start();
    let args = [
        "--redis-sentinel",
        &sentinel.url(),
        "--redis-master",
        SENTINEL_MASTER,
        "--redis-replica-acks",
        "1",
    ];
    let server = ResourceServer::start(
        &issuer,
        ServerOptions {
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            ..ServerOptions::default()
        },
    );
    accepted_then_replayed(&server, &issuer).await;
}
