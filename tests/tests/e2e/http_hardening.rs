//! The client's HTTP side against a hostile or broken peer (issue 22, item 7): forged login
//! callbacks, endless bodies, a token cache directory others can write, control characters
//! from a device grant or in a server's OAuth errors, and lifetimes too large for the clock. The real `dpop` binary and
//! agent against the test servers of `dpop_tests::oauth`.

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use dpop_tests::oauth::{FloodServer, HOSTILE_DESCRIPTION, HOSTILE_USER_CODE};
use dpop_tests::{OAuthOptions, OAuthServer, wait_timeout};

use crate::http::{
    SECRET, SECRET_VAR, authorization_code, browse, run_interactive, run_interactive_with, setup,
    stderr,
};

/// GETs `url` as a stray local page would, and returns the status.
fn get_status(url: &str) -> u16 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime
        .block_on(reqwest::get(url))
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .status()
        .as_u16()
}

#[test]
fn a_callback_with_another_state_does_not_end_the_login() {
    let s = setup(OAuthOptions::default());
    let issuer = s.server.issuer.clone();
    let args = [
        "token",
        "--grant",
        "authorization_code",
        "--issuer",
        &issuer,
        "--client-id",
        "public",
        "--scope",
        "openid offline",
        "--no-browser",
        "--save",
        "web",
    ];
    let out = run_interactive(
        &s,
        &args,
        |l| l.starts_with("http://"),
        |url| {
            let authorize = url::Url::parse(url).unwrap();
            let redirect_uri = authorize
                .query_pairs()
                .find(|(n, _)| n == "redirect_uri")
                .map(|(_, v)| v.into_owned())
                .expect("the URL names the loopback redirect");
            // Another process (or a web page) races the browser: a code with a wrong state,
            // an error with none. Both are answered 400 and the login goes on.
            assert_eq!(
                get_status(&format!("{redirect_uri}?code=forged&state=wrong")),
                400
            );
            assert_eq!(
                get_status(&format!("{redirect_uri}?error=access_denied")),
                400
            );
            browse(url);
        },
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(s.server.counts().authorizations, 1);
    assert!(s.saved("web")["access_token"].is_string());
}

/// `dpop token` (client_credentials) at `token_url`, with at most 30 s to finish.
fn token_at(s: &crate::http::Setup, token_url: &str) -> (std::process::Output, Duration) {
    let started = Instant::now();
    let mut child = s
        .agent
        .dpop_command()
        .args([
            "token",
            "--key",
            "k",
            "--token-url",
            token_url,
            "--client-id",
            "public",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_timeout(&mut child, Duration::from_secs(30));
    let elapsed = started.elapsed();
    if status.is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    assert!(status.is_some(), "dpop token is still reading after 30 s");
    (out, elapsed)
}

#[test]
fn an_endless_error_or_token_body_is_cut_at_its_limit() {
    let s = setup(OAuthOptions::default());
    for (status, limit) in [(400, "64 KiB"), (200, "1 MiB")] {
        let flood = FloodServer::start(status);
        let (out, elapsed) = token_at(&s, &flood.url);
        assert!(!out.status.success(), "HTTP {status}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(limit),
            "HTTP {status}: the error names the {limit} limit: {}",
            stderr(&out)
        );
        // Read up to the limit, then hung up: what the server got out is the limit plus
        // what the sockets buffer, far from the whole body.
        assert!(
            flood.sent() < 16 << 20,
            "HTTP {status}: the client took {} bytes",
            flood.sent()
        );
        assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    }
}

#[test]
fn a_token_cache_directory_others_can_write_or_own_is_refused() {
    let s = setup(OAuthOptions::default());
    let dir = s.agent.dir().join("state/dpop/tokens");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let shown = dir.display().to_string();
    let refused = |out: &std::process::Output, what: &str| {
        assert!(!out.status.success(), "{what}: accepted");
        let err = stderr(out);
        assert!(err.contains(&shown) && err.contains(what), "{err}");
    };
    let out = s.client_credentials("api");
    refused(&out, "writable by other users");
    assert!(
        std::fs::read_dir(&dir).unwrap().next().is_none(),
        "nothing saved"
    );
    refused(&s.dpop(&["tokens", "list"]), "writable by other users");

    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        // Root runs the tests here: a directory that `nobody` owns.
        let path = std::ffi::CString::new(shown.as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::chown(path.as_ptr(), 65534, 65534) }, 0);
        refused(&s.client_credentials("api"), "owned by uid 65534");
        refused(&s.dpop(&["tokens", "list"]), "owned by uid 65534");
        // SAFETY: as above.
        assert_eq!(unsafe { libc::chown(path.as_ptr(), 0, 0) }, 0);
    }
    // The user's own private directory works.
    let out = s.client_credentials("api");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(s.dpop_ok(&["tokens", "list"]).contains("api"));
}

#[test]
fn control_characters_of_a_device_grant_do_not_reach_the_terminal() {
    let s = setup(OAuthOptions {
        hostile_device_strings: true,
        ..OAuthOptions::default()
    });
    let issuer = s.server.issuer.clone();
    let args = [
        "token",
        "--grant",
        "device_code",
        "--issuer",
        &issuer,
        "--client-id",
        "confidential",
        "--client-secret-env",
        SECRET_VAR,
    ];
    let mut command = s.agent.dpop_command();
    command.env(SECRET_VAR, SECRET);
    let server = &s.server;
    let out = run_interactive_with(
        command,
        &args,
        |l| l.contains("enter the code"),
        |_| assert!(server.approve(HOSTILE_USER_CODE)),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    for control in ['\u{1b}', '\u{7}', '\r', '\u{85}', '\u{9b}'] {
        assert!(
            !err.contains(control),
            "{control:?} reached stderr: {err:?}"
        );
    }
    // No line is forged; what the server sent is still visible, escaped.
    for forged in ["EFGH", "fake-line"] {
        assert!(
            !err.lines().any(|l| l.starts_with(forged)),
            "a forged line {forged:?}: {err}"
        );
    }
    assert!(err.contains(r"\u{1b}[31mABCD"), "{err}");
    assert!(err.contains(r"\r\nEFGH"), "{err}");
}

#[test]
fn a_huge_expires_in_neither_panics_nor_refreshes_on_every_request() {
    use dpop_client::http::{ClientAuth, DpopClient, OAuthClient, TokenParams, TokenSource};

    let huge = OAuthOptions {
        expires_in: Some(u64::MAX),
        ..OAuthOptions::default()
    };
    let (s, out) = authorization_code(huge.clone(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let saved = s.saved("web");
    let expires_at = saved["expires_at"].as_i64().expect("an expiry");
    let now = dpop_tests::unix_now();
    assert!(
        expires_at > now + 9 * 365 * 86400,
        "expires_at {expires_at} is not in years"
    );
    for _ in 0..2 {
        s.dpop_ok(&["request", &s.api("/api/me"), "--token", "web"]);
    }
    assert_eq!(
        s.server.counts().token_requests.get("refresh_token"),
        None,
        "a token valid for ever is not refreshed"
    );

    // The library's token source: no `Instant` overflow, and no renewal either.
    let server = OAuthServer::start(huge);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let agent = dpop_client::Client::connect(s.agent.socket())
            .await
            .unwrap();
        let http = DpopClient::new(agent, "k").unwrap();
        let source = TokenSource::client_credentials(
            OAuthClient::new(
                server.token_url().parse().unwrap(),
                "public",
                ClientAuth::None,
            ),
            TokenParams::default(),
        );
        let first = source.access_token(&http).await.unwrap();
        let second = source.access_token(&http).await.unwrap();
        assert_eq!(*first, *second);
    });
    let c = server.counts();
    assert_eq!(
        c.token_requests["client_credentials"] - c.as_nonce_challenges,
        1
    );
}

/// Fails when `text` holds a control character other than the line ends of the command's own
/// lines, or a line that a server forged.
fn assert_terminal_safe(text: &str) {
    if let Some(c) = text.chars().find(|c| c.is_control() && *c != '\n') {
        panic!("{c:?} reached the terminal: {text:?}");
    }
    assert!(
        !text.lines().any(|l| l.starts_with("dpop: all good")),
        "a forged line: {text}"
    );
}

#[test]
fn oauth_errors_from_a_server_are_shown_escaped_with_their_uri() {
    let s = setup(OAuthOptions {
        hostile_errors: true,
        ..OAuthOptions::default()
    });
    let escaped_description = r"denied\u{1b}[2J\u{1b}[32m\u{7}\r\ndpop: all good";
    assert!(HOSTILE_DESCRIPTION.contains('\u{1b}'));

    // A token endpoint's refusal (dpop token, through the oauth2 crate's error type).
    let token_url = s.server.token_url();
    let out = s.dpop(&[
        "token",
        "--key",
        "k",
        "--token-url",
        &token_url,
        "--client-id",
        "public",
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_terminal_safe(&err);
    assert!(err.contains(r"invalid_grant\u{1b}[5m"), "{err}");
    assert!(err.contains(escaped_description), "{err}");
    assert!(
        err.contains(r"https://as.example/e\u{1b}]8;;https://evil.example\u{7}rr\n"),
        "the error_uri is shown: {err}"
    );

    // A resource server's refusal in a JSON body (dpop request), with -v showing headers.
    let out = s.dpop(&["request", "-v", &s.api("/api/refused")]);
    assert_eq!(out.status.code(), Some(22), "{}", stderr(&out));
    let err = stderr(&out);
    assert_terminal_safe(&err);
    assert!(err.contains("HTTP 403 Forbidden: invalid_grant"), "{err}");
    assert!(err.contains(escaped_description), "{err}");
    assert!(err.contains("https://as.example/e"), "{err}");
    assert!(err.contains(r"x-hostile: a\u{9b}2Jb"), "{err}");

    // Algorithm names from a server's metadata, in the refusal of the key.
    let metadata = OAuthServer::start(OAuthOptions {
        algs: vec!["PS256\u{1b}[2J\r\ndpop: all good".into()],
        ..OAuthOptions::default()
    });
    let out = s.dpop(&[
        "token",
        "--key",
        "k",
        "--issuer",
        &metadata.issuer,
        "--client-id",
        "public",
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_terminal_safe(&err);
    assert!(
        err.contains(r"PS256\u{1b}[2J\r\ndpop: all good only"),
        "{err}"
    );
}
