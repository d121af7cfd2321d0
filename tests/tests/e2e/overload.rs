//! Issue 12, finding 6: overload on the real agent. A client that pipelines requests and never
//! reads its replies must not grow the agent's memory without bound; the connection over the
//! limit gets a `busy` reply instead of hanging; idle connections are closed.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use dpop_tests::{AgentOptions, RawConnection, TestAgent, error_code, wait_until};

/// The agent's connection limit (`MAX_CONNECTIONS` in agent/src/server.rs).
const MAX_CONNECTIONS: usize = 1024;

/// The test-only override of the agent's idle timeout (see docs/protocol.md).
const IDLE_TIMEOUT_VAR: &str = "DPOP_AGENT_TEST_IDLE_TIMEOUT_MS";

/// The agent's resident memory in KiB (`VmRSS` of /proc/<pid>/status).
fn rss_kib(agent: &TestAgent) -> u64 {
    let pid = agent.pid().expect("the agent runs");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("reading status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in {status}"))
}

/// Raises this process's open-file limit to its hard limit (the agent, started afterwards,
/// inherits it): the busy test holds more than a thousand sockets on each side. The limit is
/// the whole e2e binary's, which only gains room from it: it only ever goes up.
fn raise_file_limit(needed: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct given.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
    }
    assert!(
        limit.rlim_cur >= needed,
        "this test needs {needed} open files; the hard limit is {}",
        limit.rlim_cur
    );
}

#[test]
fn non_reading_pipelining_clients_keep_the_agent_memory_bounded() {
    let agent = TestAgent::start(AgentOptions::new());
    // 200 keys make every list_keys reply about 50 KB.
    let mut setup = agent.raw();
    let mut batch = Vec::new();
    for i in 0..200 {
        batch.extend_from_slice(
            json!({"id": i, "op": "generate_key", "label": format!("key-{i:03}")})
                .to_string()
                .as_bytes(),
        );
        batch.push(b'\n');
    }
    setup.send(&batch);
    for _ in 0..200 {
        let reply = setup.read_reply().expect("a reply");
        assert_eq!(reply["ok"], Value::Bool(true), "{reply}");
    }
    let listed = setup.request(br#"{"id":"warm","op":"list_keys"}"#);
    assert_eq!(listed["keys"].as_array().map(Vec::len), Some(200));
    let before = rss_kib(&agent);

    // Three clients pipeline list_keys as fast as the agent takes them and never read a reply;
    // each stops once the agent has taken nothing from it for two seconds.
    let line = b"{\"id\":1,\"op\":\"list_keys\"}\n".repeat(1000);
    let writers: Vec<_> = (0..3)
        .map(|_| {
            let stream = UnixStream::connect(agent.socket()).expect("connecting");
            let line = line.clone();
            std::thread::spawn(move || {
                stream
                    .set_write_timeout(Some(Duration::from_secs(2)))
                    .expect("write timeout");
                let mut sent = 0usize;
                let deadline = Instant::now() + Duration::from_secs(60);
                while Instant::now() < deadline {
                    match (&stream).write(&line) {
                        Ok(n) => sent += n,
                        Err(e)
                            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                        {
                            break;
                        }
                        Err(e) => panic!("writing requests: {e}"),
                    }
                }
                (stream, sent)
            })
        })
        .collect();
    let streams: Vec<_> = writers
        .into_iter()
        .map(|w| w.join().expect("writer thread"))
        .collect();
    let after = rss_kib(&agent);
    let sent: usize = streams.iter().map(|(_, n)| n).sum();
    let growth_mib = after.saturating_sub(before) / 1024;
    eprintln!("agent RSS {before} KiB -> {after} KiB after {sent} bytes of unread requests");
    assert!(
        growth_mib < 24,
        "the agent grew by {growth_mib} MiB ({before} KiB -> {after} KiB) for 3 clients that \
         sent {sent} bytes of requests and read no reply"
    );

    // The agent still serves others, and the stalled clients' replies are intact.
    assert_eq!(
        agent.raw().request(br#"{"id":2,"op":"hello"}"#)["ok"],
        Value::Bool(true)
    );
    let (mut stream, _) = streams.into_iter().next().expect("a stream");
    let mut first = vec![0u8; 64 * 1024];
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    stream
        .read_exact(&mut first)
        .expect("reading queued replies");
    assert!(first.starts_with(b"{\"id\":1,\"ok\":true,\"keys\":["));
}

#[test]
fn the_connection_over_the_limit_reads_busy() {
    raise_file_limit(2 * MAX_CONNECTIONS as u64 + 200);
    let agent = TestAgent::start(AgentOptions::new());
    let mut open: Vec<RawConnection> = (0..MAX_CONNECTIONS).map(|_| agent.raw()).collect();
    // The last one is served: all of them are accepted.
    let last = open.last_mut().expect("connections");
    assert_eq!(
        last.request(br#"{"id":1,"op":"hello"}"#)["ok"],
        Value::Bool(true)
    );

    let mut over = agent.raw();
    over.stream()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let reply = over.read_reply().expect("a busy reply before the close");
    assert_eq!(error_code(&reply), "busy", "{reply}");
    assert_eq!(reply["id"], Value::Null);
    assert_eq!(over.read_line(), None, "the agent closes after busy");

    // Once a connection closes, a new one is served again.
    drop(open.pop());
    wait_until(
        "a new connection is served",
        Duration::from_secs(10),
        || {
            let mut conn = agent.raw();
            conn.request(br#"{"id":2,"op":"hello"}"#)["ok"] == Value::Bool(true)
        },
    );
}

#[test]
fn idle_connections_are_closed() {
    let agent = TestAgent::start(AgentOptions::new().env(IDLE_TIMEOUT_VAR, "1000"));
    let mut idle = agent.raw();
    assert_eq!(
        idle.request(br#"{"id":1,"op":"hello"}"#)["ok"],
        Value::Bool(true)
    );
    let mut busy = agent.raw();

    // A connection that sends a request more often than the timeout stays open...
    let started = Instant::now();
    for i in 0..15 {
        std::thread::sleep(Duration::from_millis(200));
        let reply = busy.request(json!({"id": i, "op": "hello"}).to_string().as_bytes());
        assert_eq!(reply["ok"], Value::Bool(true));
    }
    assert!(started.elapsed() > Duration::from_secs(2));

    // ... and the idle one was closed without a reply.
    idle.stream()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    assert_eq!(idle.read_line(), None, "the idle connection is closed");

    // So is one that never sent anything.
    let mut silent = agent.raw();
    silent
        .stream()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let started = Instant::now();
    assert_eq!(silent.read_line(), None);
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[test]
fn clients_open_a_connection_the_agent_closed_again_before_the_next_request() {
    // The agent closes connections idle for 300 ms here (ten minutes in production), and a
    // restarted agent's old connections are gone: a long-lived application's client must
    // carry on, without sending any request twice.
    let mut agent = TestAgent::start(
        AgentOptions::new()
            .passphrase_env("reconnect store")
            .env(IDLE_TIMEOUT_VAR, "300"),
    );
    let mut blocking = dpop_client::blocking::Client::connect(agent.socket()).expect("connect");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut asynchronous = runtime.block_on(agent.async_client());
    blocking.generate_key("k").expect("generate");
    runtime.block_on(asynchronous.hello()).expect("hello");

    std::thread::sleep(Duration::from_millis(900));
    let keys = blocking
        .list_keys()
        .expect("the blocking client after an idle close");
    assert_eq!(keys.len(), 1);
    runtime
        .block_on(asynchronous.list_keys())
        .expect("the async client after an idle close");

    agent.restart();
    assert_eq!(
        blocking
            .list_keys()
            .expect("blocking, after a restart")
            .len(),
        1
    );
    runtime
        .block_on(asynchronous.hello())
        .expect("async, after a restart");
    // Each request reached the agent once: a second generate of the same label would fail.
    let again = blocking.generate_key("k2").expect("a new key");
    assert_eq!(again.label, "k2");
    assert_eq!(blocking.list_keys().unwrap().len(), 2);
}
