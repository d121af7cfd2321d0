//! The wire protocol against the real agent: many concurrent clients, pipelining on one
//! connection, and bad input that must get the right error code without hurting the agent.

use std::collections::HashSet;
use std::io::Write;
use std::num::NonZeroUsize;

use serde_json::{Value, json};

use dpop_tests::{AgentOptions, TestAgent, error_code, unix_now};

const TASKS: usize = 16;
const PROOFS_PER_TASK: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_async_clients_get_valid_distinct_proofs() {
    let agent = TestAgent::start(AgentOptions::new());
    let key = agent
        .async_client()
        .await
        .generate_key("shared")
        .await
        .expect("generate");

    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..TASKS {
        let mut client = agent.async_client().await;
        tasks.spawn(async move {
            let mut proofs = Vec::with_capacity(PROOFS_PER_TASK);
            for i in 0..PROOFS_PER_TASK {
                let url = format!("https://rs.example/task/{task}/{i}");
                let token = format!("token-{task}-{i}");
                let proof = client
                    .sign_proof(
                        "shared",
                        &dpop_client::ProofRequest::new("POST", &url).access_token(&token),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("task {task} proof {i}: {e}"));
                proofs.push((url, token, proof));
            }
            proofs
        });
    }
    let mut all = Vec::new();
    while let Some(result) = tasks.join_next().await {
        all.extend(result.expect("client task panicked"));
    }
    assert_eq!(
        all.len(),
        TASKS * PROOFS_PER_TASK,
        "every request got a proof"
    );

    // One replay store for all: a repeated (jkt, jti) would be refused as a replay.
    let replay =
        dpop_jose::LruReplayStore::new(NonZeroUsize::new(TASKS * PROOFS_PER_TASK).unwrap());
    let mut jtis = HashSet::new();
    let now = unix_now();
    for (url, token, proof) in &all {
        let request = dpop_jose::ExpectedRequest {
            method: "POST",
            url,
            access_token: Some(token),
            jkt: Some(&key.jkt),
        };
        let verified = dpop_jose::verify(proof, &request, &Default::default(), &(), &replay, now)
            .unwrap_or_else(|e| panic!("proof for {url} does not verify: {e}"));
        assert!(
            jtis.insert(verified.claims.jti.clone()),
            "jti {} repeated",
            verified.claims.jti
        );
    }
    assert_eq!(jtis.len(), TASKS * PROOFS_PER_TASK, "all jti are distinct");
}

#[test]
fn pipelined_requests_get_replies_in_order_with_their_ids() {
    let agent = TestAgent::start(AgentOptions::new());
    agent.client().generate_key("pipe").unwrap();

    // A mix of ops, ids of several JSON types, and failing requests in between.
    let mut requests = Vec::new();
    for i in 0..200u32 {
        let (id, request) = match i % 5 {
            0 => (json!(i), json!({"op": "hello"})),
            1 => (
                json!(format!("s-{i}")),
                json!({"op": "sign_proof", "key": "pipe", "htm": "GET", "htu": format!("https://rs.example/{i}")}),
            ),
            2 => (
                json!(i),
                json!({"op": "sign_proof", "key": "missing", "htm": "GET", "htu": "https://rs.example/"}),
            ),
            3 => (json!({"n": i}), json!({"op": "list_keys"})),
            _ => (
                json!(i),
                json!({"op": "sign_proof", "key": "pipe", "htm": "PUT", "htu": format!("https://rs.example/{i}"), "access_token": format!("t{i}")}),
            ),
        };
        let mut request = request;
        request["id"] = id.clone();
        requests.push((i, id, request));
    }
    let mut bytes = Vec::new();
    for (_, _, request) in &requests {
        serde_json::to_writer(&mut bytes, request).unwrap();
        bytes.push(b'\n');
    }

    let mut conn = agent.raw();
    // Write everything in one write from another thread while this one reads, so that full
    // socket buffers cannot deadlock the test.
    let mut writer = conn.stream().try_clone().expect("cloning the socket");
    let sender = std::thread::spawn(move || writer.write_all(&bytes).expect("pipelined write"));
    for (i, id, request) in &requests {
        let reply = conn
            .read_reply()
            .unwrap_or_else(|| panic!("reply {i} missing: connection closed"));
        assert_eq!(
            &reply["id"], id,
            "reply {i} comes in request order with its id"
        );
        match i % 5 {
            0 => assert_eq!(reply["protocol"], 1, "reply {i} answers hello: {reply}"),
            2 => assert_eq!(
                error_code(&reply),
                "key_not_found",
                "reply {i} is the unknown-key error"
            ),
            3 => assert_eq!(
                reply["keys"][0]["label"], "pipe",
                "reply {i} answers list_keys: {reply}"
            ),
            _ => {
                let proof = reply["proof"]
                    .as_str()
                    .unwrap_or_else(|| panic!("reply {i} has a proof: {reply}"));
                let method = request["htm"].as_str().unwrap();
                let url = request["htu"].as_str().unwrap();
                let token = request.get("access_token").and_then(Value::as_str);
                dpop_tests::verify_proof(proof, method, url, token);
            }
        }
    }
    sender.join().expect("writer thread");
}

/// A request that must fail with `code`; afterwards the same connection must still answer.
fn expect_error(conn: &mut dpop_tests::RawConnection, line: &[u8], code: &str, id: Value) {
    let reply = conn.request(line);
    assert_eq!(
        error_code(&reply),
        code,
        "{} gets {code}: {reply}",
        String::from_utf8_lossy(&line[..line.len().min(120)])
    );
    assert_eq!(
        reply["id"], id,
        "error reply carries the request id (or null)"
    );
    assert!(
        reply["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "error reply explains itself: {reply}"
    );
    let hello = conn.request(br#"{"id":"after","op":"hello"}"#);
    assert_eq!(
        hello["ok"], true,
        "the connection keeps working after {code}: {hello}"
    );
    assert_eq!(hello["id"], "after", "hello after {code} echoes its id");
}

#[test]
fn bad_input_gets_the_right_error_code_and_the_agent_keeps_serving() {
    let agent = TestAgent::start(AgentOptions::new());
    agent.client().generate_key("k").unwrap();
    let mut conn = agent.raw();

    expect_error(&mut conn, b"{not json", "malformed_json", Value::Null);
    expect_error(&mut conn, b"[1,2,3]", "malformed_json", Value::Null);
    expect_error(&mut conn, b"\xff\xfe{}", "malformed_json", Value::Null);
    expect_error(&mut conn, br#"{"id":1}"#, "bad_request", json!(1));
    expect_error(&mut conn, br#"{"id":2,"op":42}"#, "bad_request", json!(2));
    expect_error(
        &mut conn,
        br#"{"id":3,"op":"launch_missiles"}"#,
        "unknown_op",
        json!(3),
    );
    expect_error(
        &mut conn,
        br#"{"id":4,"op":"sign_proof","key":"k"}"#,
        "bad_request",
        json!(4),
    );
    expect_error(
        &mut conn,
        br#"{"id":5,"op":"sign_proof","key":"nope","htm":"GET","htu":"https://rs.example/"}"#,
        "key_not_found",
        json!(5),
    );
    for (id, url) in [
        (6, "not a url"),
        (7, "ftp://rs.example/file"),
        (8, "https://user@rs.example/"),
        (9, "/relative/path"),
    ] {
        let line =
            json!({"id": id, "op": "sign_proof", "key": "k", "htm": "GET", "htu": url}).to_string();
        expect_error(&mut conn, line.as_bytes(), "invalid_url", json!(id));
    }
    for (id, method) in [(10, "get"), (11, ""), (12, "GE T"), (13, "Post")] {
        let line = json!({"id": id, "op": "sign_proof", "key": "k", "htm": method, "htu": "https://rs.example/"}).to_string();
        expect_error(&mut conn, line.as_bytes(), "invalid_method", json!(id));
    }
    let ath = dpop_jose::ath("tok").unwrap();
    let both = json!({"id": 14, "op": "sign_proof", "key": "k", "htm": "GET", "htu": "https://rs.example/", "access_token": "tok", "ath": ath}).to_string();
    expect_error(&mut conn, both.as_bytes(), "bad_request", json!(14));
    let bad_token = json!({"id": 15, "op": "sign_proof", "key": "k", "htm": "GET", "htu": "https://rs.example/", "access_token": "has space"}).to_string();
    expect_error(
        &mut conn,
        bad_token.as_bytes(),
        "invalid_access_token",
        json!(15),
    );
    let bad_ath = json!({"id": 16, "op": "sign_proof", "key": "k", "htm": "GET", "htu": "https://rs.example/", "ath": "short"}).to_string();
    expect_error(&mut conn, bad_ath.as_bytes(), "bad_request", json!(16));
    let bad_nonce = json!({"id": 17, "op": "sign_proof", "key": "k", "htm": "GET", "htu": "https://rs.example/", "nonce": "a\"b"}).to_string();
    expect_error(&mut conn, bad_nonce.as_bytes(), "invalid_nonce", json!(17));
    expect_error(
        &mut conn,
        br#"{"id":18,"op":"generate_key","label":"k"}"#,
        "key_exists",
        json!(18),
    );
    expect_error(
        &mut conn,
        br#"{"id":19,"op":"generate_key","label":"../escape"}"#,
        "invalid_label",
        json!(19),
    );
    expect_error(
        &mut conn,
        br#"{"id":20,"op":"generate_key","label":"x","backend":"quantum"}"#,
        "unknown_backend",
        json!(20),
    );
    expect_error(
        &mut conn,
        br#"{"id":21,"op":"delete_key","label":"nope"}"#,
        "key_not_found",
        json!(21),
    );

    // A valid ath (instead of an access token) is accepted and lands in the proof.
    let with_ath = json!({"id": 22, "op": "sign_proof", "key": "k", "htm": "GET", "htu": "https://rs.example/", "ath": ath}).to_string();
    let reply = conn.request(with_ath.as_bytes());
    let proof = reply["proof"]
        .as_str()
        .unwrap_or_else(|| panic!("a precomputed ath is accepted: {reply}"));
    dpop_tests::verify_proof(proof, "GET", "https://rs.example/", Some("tok"));

    // Over-long line: more than 64 KiB before the newline.
    let long = format!(
        r#"{{"id":23,"op":"hello","pad":"{}"}}"#,
        "a".repeat(70 * 1024)
    );
    expect_error(&mut conn, long.as_bytes(), "line_too_long", Value::Null);
    // A line of exactly 64 KiB, newline included, is within the limit (and hello ignores
    // members it does not know).
    let prefix = r#"{"id":24,"op":"hello","pad":""#;
    let pad = 64 * 1024 - 1 - prefix.len() - 2;
    let at_limit = format!("{prefix}{}\"}}", "a".repeat(pad));
    assert_eq!(
        at_limit.len() + 1,
        64 * 1024,
        "the test line is exactly 64 KiB with its newline"
    );
    let reply = conn.request(at_limit.as_bytes());
    assert_eq!(
        reply["ok"], true,
        "a 64 KiB line (newline included) is within the limit: {reply}"
    );
    assert_eq!(
        reply["id"], 24,
        "the line at the limit was read whole: {reply}"
    );

    // Blank lines are skipped, CRLF is accepted.
    let reply = conn.request(b"\n\r\n   \n{\"id\":25,\"op\":\"hello\"}\r\n");
    assert_eq!(
        reply["id"], 25,
        "blank lines are ignored and CRLF accepted: {reply}"
    );

    // A fresh connection is served too, and the key still works.
    let fresh = agent.raw_request(br#"{"id":"new","op":"hello"}"#);
    assert_eq!(
        fresh["ok"], true,
        "a new connection is served after all that: {fresh}"
    );
    agent
        .client()
        .sign_proof(
            "k",
            &dpop_client::ProofRequest::new("GET", "https://rs.example/"),
        )
        .expect("the key still signs");
}

#[test]
fn truncated_request_and_abrupt_disconnects_do_not_hurt_the_agent() {
    let agent = TestAgent::start(AgentOptions::new());
    {
        // Half a line, then the client goes away.
        let mut conn = agent.raw();
        conn.send(br#"{"id":1,"op":"hel"#);
    }
    {
        // An over-long line that never ends.
        let mut conn = agent.raw();
        conn.send(&vec![b'x'; 200 * 1024]);
    }
    {
        // A request whose reply is never read.
        let mut conn = agent.raw();
        conn.send(b"{\"id\":1,\"op\":\"hello\"}\n");
    }
    let reply = agent.raw_request(br#"{"id":2,"op":"hello"}"#);
    assert_eq!(reply["ok"], true, "the agent still answers: {reply}");
    // Half a line and then EOF on the write side: the agent must answer or close, not hang.
    let mut conn = agent.raw();
    conn.send(br#"{"id":3,"op":"hello"}"#);
    conn.stream().shutdown(std::net::Shutdown::Write).unwrap();
    match conn.read_reply() {
        None => {}
        Some(reply) => assert_eq!(
            reply["id"], 3,
            "a final line without newline is answered: {reply}"
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_key_changes_are_consistent_on_disk() {
    const CLIENTS: usize = 8;
    let mut agent = TestAgent::start(AgentOptions::new().passphrase_env("concurrent passphrase"));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..CLIENTS {
        let mut client = agent.async_client().await;
        tasks.spawn(async move {
            let same = client.generate_key("same").await;
            let own = client.generate_key(&format!("own-{i}")).await;
            (
                same,
                own.expect("a key with a label of its own is generated"),
            )
        });
    }
    let mut winners = Vec::new();
    let mut own_keys = Vec::new();
    while let Some(result) = tasks.join_next().await {
        let (same, own) = result.expect("client task panicked");
        match same {
            Ok(key) => winners.push(key),
            Err(e) => assert_eq!(
                e.code(),
                Some(dpop_protocol::ErrorCode::KeyExists),
                "losers of the race for one label get key_exists: {e}"
            ),
        }
        own_keys.push(own);
    }
    assert_eq!(
        winners.len(),
        1,
        "exactly one client creates the contested label"
    );
    let mut before = agent.async_client().await.list_keys().await.unwrap();
    assert_eq!(before.len(), CLIENTS + 1, "every generated key is listed");
    assert!(
        before.contains(&winners[0]),
        "the listed contested key is the winner's"
    );

    agent.restart();
    let mut after = agent.async_client().await.list_keys().await.unwrap();
    before.sort_by(|a, b| a.label.cmp(&b.label));
    after.sort_by(|a, b| a.label.cmp(&b.label));
    assert_eq!(
        after, before,
        "the keys on disk are exactly the keys the agent had"
    );
    let names: Vec<String> = std::fs::read_dir(agent.data_dir().join("software"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let key_files = names.iter().filter(|n| n.ends_with(".json")).count();
    assert_eq!(key_files, CLIENTS + 1, "one key file per key: {names:?}");
    assert_eq!(
        names.len(),
        CLIENTS + 2,
        "and the store file (store.scrypt), no leftovers: {names:?}"
    );
    assert!(names.iter().any(|n| n == "store.scrypt"), "{names:?}");
}
