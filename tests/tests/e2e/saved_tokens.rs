//! A saved token refreshed by several `dpop` processes at once, and a refresh whose result
//! cannot be saved (issue 22, item 6), against an authorization server that rotates refresh
//! tokens and revokes the whole grant when a rotated one comes back.

use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use dpop_tests::{OAuthOptions, unix_now, wait_timeout};

use crate::http::{Setup, authorization_code, stderr};

/// A server as strict as the real ones about refresh tokens, and slow enough at refreshing
/// that parallel clients overlap. Its nonces last: eight processes at once against a nonce
/// replaced every 3 proofs would test the one nonce retry, not the refresh.
fn strict(delay_ms: u64) -> OAuthOptions {
    OAuthOptions {
        revoke_on_reuse: true,
        refresh_delay: Duration::from_millis(delay_ms),
        nonce_uses: 1000,
        ..OAuthOptions::default()
    }
}

/// Makes the saved token `name` expired, as it is some time later.
fn expire(s: &Setup, name: &str) {
    let path = s.agent.dir().join(format!("state/dpop/tokens/{name}.json"));
    let mut saved = s.saved(name);
    saved["expires_at"] = serde_json::json!(unix_now() - 60);
    std::fs::write(&path, serde_json::to_vec(&saved).unwrap()).unwrap();
}

fn spawn_request(s: &Setup, url: &str, name: &str) -> Child {
    s.agent
        .dpop_command()
        .args(["request", url, "--token", name])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(mut child: Child) -> Output {
    let status = wait_timeout(&mut child, Duration::from_secs(60));
    if status.is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    assert!(status.is_some(), "dpop request still runs after 60 s");
    out
}

#[test]
fn parallel_requests_after_expiry_refresh_once_and_keep_the_grant() {
    let (s, out) = authorization_code(strict(300), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    expire(&s, "web");
    let spent = s.saved("web")["refresh_token"].as_str().unwrap().to_owned();
    let before = s.server.counts();

    let url = s.api("/api/me");
    let children: Vec<Child> = (0..8).map(|_| spawn_request(&s, &url, "web")).collect();
    for out in children.into_iter().map(finish) {
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("\"path\":\"/api/me\""),
            "{}",
            stderr(&out)
        );
    }
    let after = s.server.counts();
    assert_eq!(after.reuse_revocations, 0, "the grant was revoked");
    assert_eq!(
        after.refreshes - before.refreshes,
        1,
        "one refresh, not one each"
    );
    let sent = |c: &dpop_tests::Counts| c.token_requests.get("refresh_token").copied();
    assert_eq!(
        sent(&after).unwrap_or(0)
            - sent(&before).unwrap_or(0)
            - (after.as_nonce_challenges - before.as_nonce_challenges),
        1,
        "one refresh request reached the server"
    );
    let saved = s.saved("web");
    let current = saved["refresh_token"].as_str().unwrap();
    assert_ne!(current, spent);
    assert!(s.server.knows_refresh_token(current));
    assert!(saved.get("refresh_started_at").is_none(), "{saved}");
    // The grant still works: the token saved is the server's current one.
    s.dpop_ok(&["request", &url, "--token", "web"]);
}

#[test]
fn a_refresh_whose_result_cannot_be_saved_says_so_and_marks_the_file() {
    let (s, out) = authorization_code(strict(1500), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    expire(&s, "web");
    let dir = s.agent.dir().join("state/dpop/tokens");
    let file = dir.join("web.json");

    let child = spawn_request(&s, &s.api("/api/me"), "web");
    // While the refresh is at the server, the directory becomes one the client refuses to
    // write (root ignores a read-only mode; it does not ignore this check).
    let started = Instant::now();
    while !s
        .server
        .counts()
        .token_requests
        .contains_key("refresh_token")
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no refresh came"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    dpop_tests::set_mode(&dir, 0o777);
    let out = finish(child);
    dpop_tests::set_mode(&dir, 0o700);

    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&file.display().to_string()) && err.contains("was not saved"),
        "{err}"
    );
    assert!(err.contains("spent"), "{err}");
    // The new token was not wasted on the way: the request was made with it.
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"path\":\"/api/me\""),
        "{err}"
    );
    // The file says that its refresh token went to the server and what came back is lost.
    let saved = s.saved("web");
    assert!(saved["refresh_started_at"].is_i64(), "{saved}");
    let listed = s.dpop_ok(&["tokens", "list", "--json"]);
    assert!(listed.contains("\"refresh_unsaved_since\""), "{listed}");

    // The next request tries that refresh token (the server may never have seen it), is
    // refused, and says why the token is gone.
    let out = s.dpop(&["request", &s.api("/api/me"), "--token", "web"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("did not save its result") && err.contains("dpop token"),
        "{err}"
    );
}
