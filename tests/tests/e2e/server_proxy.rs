//! The example resource server behind a real nginx (issue 22 item 4): the trusted header
//! family is the one the proxy overwrites, the other family is ignored whatever a client puts
//! in it, and an allow list refuses a host the client chose through the proxy.

use dpop_tests::{DpopCaller, Nginx, Reply, ResourceServer, ServerOptions, TokenIssuer};

/// nginx's usual lines: `proxy_set_header` replaces a client's header of the same name, and
/// a client's `Forwarded` passes through untouched.
const NGINX_X_FORWARDED: &str = "proxy_set_header X-Forwarded-Proto $scheme;
    proxy_set_header X-Forwarded-Host $host;
    proxy_set_header X-Forwarded-Port $server_port;";

/// RFC 7239 instead: `Forwarded` overwritten, a client's `X-Forwarded-*` passed through.
const NGINX_FORWARDED: &str =
    r#"proxy_set_header Forwarded 'proto=$scheme;host="$host:$server_port"';"#;

/// What the server is configured with; behind the proxy the host comes from its headers.
const CONFIGURED: &str = "https://rs.test.invalid";

/// The example server trusting the proxy on 127.0.0.1 for `family`, then nginx in front.
fn behind_nginx(
    issuer: &TokenIssuer,
    family: &str,
    extra: &[&str],
    nginx: &str,
) -> (ResourceServer, Nginx) {
    let mut args = vec![
        "--trusted-proxy".to_owned(),
        "127.0.0.1".to_owned(),
        "--proxy-headers".to_owned(),
        family.to_owned(),
    ];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let server = ResourceServer::start(
        issuer,
        ServerOptions {
            public_url: Some(CONFIGURED.to_owned()),
            args,
            ..ServerOptions::default()
        },
    );
    let nginx = Nginx::start(server.base(), nginx);
    (server, nginx)
}

/// `GET` through nginx at `url` with a proof for `signed_for` and extra request headers.
async fn get_via(
    caller: &DpopCaller,
    token: &str,
    url: &str,
    signed_for: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let proof = caller.proof("GET", signed_for, Some(token), None).await;
    let mut request = reqwest::Client::new()
        .get(url)
        .header("authorization", format!("DPoP {token}"))
        .header("dpop", proof);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("HTTP request through nginx");
    let status = response.status().as_u16();
    let www_authenticate = response
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = response.text().await.expect("reading the body");
    Reply {
        status,
        www_authenticate,
        dpop_nonce: None,
        body: serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn behind_nginx_a_clients_forwarded_header_does_not_pick_the_host() {
    let issuer = TokenIssuer::new();
    let caller = DpopCaller::new();
    let (server, nginx) = behind_nginx(&issuer, "x-forwarded", &[], NGINX_X_FORWARDED);
    let token = issuer.token("alice", Some(&caller.jkt));
    let public = nginx.url("/items");

    // The URL the client used, rebuilt from what nginx set.
    let reply = get_via(&caller, &token, &public, &public, &[]).await;
    assert_eq!(
        reply.status,
        200,
        "{reply:?}\n{}\n{}",
        server.log(),
        nginx.log()
    );
    assert_eq!(reply.body["sub"], "alice");

    // A proof made for server B, with the client's own Forwarded naming B: nginx passes that
    // header through, and it must not count.
    let elsewhere = "https://b.test.invalid/items";
    let reply = get_via(
        &caller,
        &token,
        &public,
        elsewhere,
        &[("forwarded", "proto=https;host=b.test.invalid")],
    )
    .await;
    assert_eq!(reply.status, 401, "accepted a proof for B: {reply:?}");
    assert_eq!(reply.error(), Some("invalid_dpop_proof"), "{reply:?}");
    let description = reply.body["error_description"].as_str().unwrap_or_default();
    assert!(description.contains(&public), "{description}");

    // The client's own X-Forwarded-* are replaced by nginx's.
    let reply = get_via(
        &caller,
        &token,
        &public,
        elsewhere,
        &[
            ("x-forwarded-host", "b.test.invalid"),
            ("x-forwarded-proto", "https"),
        ],
    )
    .await;
    assert_eq!(reply.status, 401, "{reply:?}");
    assert_eq!(reply.error(), Some("invalid_dpop_proof"), "{reply:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn behind_nginx_setting_forwarded_a_clients_x_forwarded_headers_do_not_count() {
    let issuer = TokenIssuer::new();
    let caller = DpopCaller::new();
    let (server, nginx) = behind_nginx(&issuer, "forwarded", &[], NGINX_FORWARDED);
    let token = issuer.token("alice", Some(&caller.jkt));
    let public = nginx.url("/items");

    let reply = get_via(&caller, &token, &public, &public, &[]).await;
    assert_eq!(
        reply.status,
        200,
        "{reply:?}\n{}\n{}",
        server.log(),
        nginx.log()
    );

    let reply = get_via(
        &caller,
        &token,
        &public,
        "https://b.test.invalid/items",
        &[
            ("x-forwarded-host", "b.test.invalid"),
            ("x-forwarded-proto", "https"),
        ],
    )
    .await;
    assert_eq!(reply.status, 401, "accepted a proof for B: {reply:?}");
    assert_eq!(reply.error(), Some("invalid_dpop_proof"), "{reply:?}");
}

/// nginx's `$host` is the client's `Host`: without an allow list (or a fixed value in the
/// proxy's configuration) the client still names the host. With one, it is refused.
#[tokio::test(flavor = "multi_thread")]
async fn behind_nginx_an_allow_list_refuses_a_host_the_client_chose() {
    let issuer = TokenIssuer::new();
    let caller = DpopCaller::new();
    let (server, nginx) = behind_nginx(
        &issuer,
        "x-forwarded",
        &["--allowed-host", "127.0.0.1"],
        NGINX_X_FORWARDED,
    );
    let token = issuer.token("alice", Some(&caller.jkt));
    let public = nginx.url("/items");

    let reply = get_via(&caller, &token, &public, &public, &[]).await;
    assert_eq!(
        reply.status,
        200,
        "{reply:?}\n{}\n{}",
        server.log(),
        nginx.log()
    );

    let chosen = format!("http://b.test.invalid:{}/items", nginx.port());
    let reply = get_via(
        &caller,
        &token,
        &public,
        &chosen,
        &[("host", &format!("b.test.invalid:{}", nginx.port()))],
    )
    .await;
    assert_eq!(reply.status, 400, "{reply:?}");
    assert_eq!(reply.error(), Some("invalid_request"), "{reply:?}");
    let description = reply.body["error_description"].as_str().unwrap_or_default();
    assert!(
        description.contains("b.test.invalid") && description.contains("allowed"),
        "{description}"
    );
}

/// Trusting a proxy without saying which headers it sets is a start-up error, not a guess.
#[test]
fn a_trusted_proxy_without_a_header_family_is_refused_at_start() {
    let issuer = TokenIssuer::new();
    for (args, expected) in [
        (&["--trusted-proxy", "127.0.0.1"][..], "--proxy-headers"),
        (&["--proxy-headers", "forwarded"], "--trusted-proxy"),
        (
            &[
                "--trusted-proxy",
                "127.0.0.1",
                "--proxy-headers",
                "forwarded",
                "--allowed-host",
                "a@b",
            ],
            "invalid allowed host",
        ),
    ] {
        let options = ServerOptions {
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            ..ServerOptions::default()
        };
        match ResourceServer::try_start(&issuer, options) {
            Ok(server) => panic!("{args:?} started:\n{}", server.log()),
            Err(log) => assert!(log.contains(expected), "{args:?}: {log}"),
        }
    }
}
