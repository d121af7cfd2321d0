//! The Node package `clients/node` (`dpop-agent-client`): its `node --test` suite, run on the
//! Node 22 of tests/interop/node22 against the real world of [`ClientWorld`] (agent with a
//! passphrase holding the key `api`, Redis, the example resource server requiring nonces, a
//! bound token), so CI runs it and its tests count. Also the strict authorization and
//! resource server of [`dpop_tests::oauth`] (a token endpoint that answers `use_dpop_nonce`
//! with a 400, a redirect to another origin). Everything reaches the suite in environment
//! variables (`DPOP_AUTH_SOCK`, `DPOP_TEST_*`).
//!
//! The types (src/index.d.ts) are checked by tsc, the package's one devDependency, which
//! scripts/test.sh installs with `npm ci` in clients/node.
//!
//! The suite passes only when node exits 0 and its TAP summary counts exactly
//! [`EXPECTED_TESTS`] passing tests and none failed, cancelled, skipped or todo, so a suite
//! that collects nothing (or loses a file) fails here.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use dpop_tests::clients::{CLIENT_KEY, ClientWorld};
use dpop_tests::oauth::{OAuthOptions, OAuthServer};
use dpop_tests::{node22, wait_timeout, workspace_root};

/// The tests of clients/node/test/*.test.js; change it with the suite.
const EXPECTED_TESTS: u64 = 30;
/// The suite takes 3 to 10 s here (tsc about 1.5 s of CPU); this is for a loaded CI machine.
const SUITE_TIMEOUT: Duration = Duration::from_secs(90);
/// The confidential client of [`OAuthOptions::default`].
const CLIENT_ID: &str = "confidential";
const CLIENT_SECRET: &str = "s3cret:with&odd=chars";

#[test]
fn node_client_suite_passes_against_the_agent_and_the_resource_server() {
    let node = node22();
    let world = ClientWorld::start();
    let oauth = OAuthServer::start(OAuthOptions::default());

    let dir = workspace_root().join("clients/node");
    let mut child = Command::new(&node)
        .args([
            "--test",
            "--test-reporter=tap",
            // One file at a time: the lock test locks the one agent every file uses.
            "--test-concurrency=1",
            // A test that hangs fails alone, long before the suite's timeout.
            "--test-timeout=20000",
            // Node expands the glob itself: a new test file is run, and counted below.
            "test/*.test.js",
        ])
        .current_dir(&dir)
        .env_remove("NODE_OPTIONS")
        .env_remove("NODE_TEST_CONTEXT")
        .envs(world.env())
        .env("DPOP_TEST_TOKEN_URL", oauth.token_url())
        .env("DPOP_TEST_OAUTH_RESOURCE", &oauth.resource)
        .env("DPOP_TEST_CLIENT_ID", CLIENT_ID)
        .env("DPOP_TEST_CLIENT_SECRET", CLIENT_SECRET)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {}: {e}", node.display()));
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped")));
    let status = wait_timeout(&mut child, SUITE_TIMEOUT);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let (stdout, stderr) = (
        stdout.join().expect("stdout reader"),
        stderr.join().expect("stderr reader"),
    );
    let report = || {
        format!(
            "node --test in {}:\n{stdout}\nstandard error:\n{stderr}\nagent log:\n{}\nresource server log:\n{}",
            dir.display(),
            world.agent.stderr_log(),
            world.server.log()
        )
    };
    let status =
        status.unwrap_or_else(|| panic!("the suite took over {SUITE_TIMEOUT:?}; {}", report()));
    let count = |name: &str| tap_count(&stdout, name);
    assert!(
        status.success(),
        "the Node suite failed ({status}); {}",
        report()
    );
    assert_eq!(
        count("pass"),
        Some(EXPECTED_TESTS),
        "passing tests; {}",
        report()
    );
    assert_eq!(count("tests"), Some(EXPECTED_TESTS), "tests; {}", report());
    for name in ["fail", "cancelled", "skipped", "todo"] {
        assert_eq!(count(name), Some(0), "{name}; {}", report());
    }
    assert!(
        !stdout.contains(&world.token) && !stderr.contains(&world.token),
        "the token was printed"
    );

    // What the servers saw agrees: the token endpoint challenged once and was answered.
    let counts = oauth.counts();
    assert!(counts.as_nonce_challenges >= 1, "{counts:?}");
    assert_eq!(counts.client_auth, ["client_secret_basic"], "{counts:?}");
    // The nonces dpopFetch reported are in the agent, for the resource server's origin.
    let keys = world.agent.client().list_keys().expect("list_keys");
    let api = keys
        .iter()
        .find(|k| k.label == CLIENT_KEY)
        .expect("the key is there");
    assert!(
        api.nonce_origins.iter().any(|o| o == world.server.base()),
        "{:?}",
        api.nonce_origins
    );
}

/// The number in the TAP summary line `# <name> <n>`.
fn tap_count(tap: &str, name: &str) -> Option<u64> {
    tap.lines()
        .filter_map(|line| {
            line.strip_prefix("# ")?
                .strip_prefix(name)?
                .strip_prefix(' ')
        })
        .next_back()?
        .trim()
        .parse()
        .ok()
}
