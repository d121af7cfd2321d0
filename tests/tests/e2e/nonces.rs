//! Server nonces kept in the agent (`report_nonce`): a nonce one client reports goes into
//! every later proof for that key and origin, from any client, and never to another origin.

use dpop_client::ProofRequest;
use dpop_tests::{AgentOptions, TestAgent, decode_jws, error_code, verify_proof};
use serde_json::{Value, json};

fn nonce_of(proof: &str) -> Option<String> {
    decode_jws(proof).1["nonce"].as_str().map(str::to_owned)
}

#[test]
fn a_reported_nonce_goes_into_later_proofs_for_its_origin_only() {
    let agent = TestAgent::start(AgentOptions::new());
    let mut reporter = agent.client();
    reporter.generate_key("a").unwrap();
    reporter.generate_key("b").unwrap();
    reporter
        .report_nonce("a", "https://AS.example.com:443/token?x=1", "n-1")
        .unwrap();

    // Another connection, as another process would open.
    let mut other = agent.client();
    let proof = |client: &mut dpop_client::blocking::Client, key: &str, url: &str| {
        client
            .sign_proof(key, &ProofRequest::new("POST", url))
            .unwrap()
    };
    let same_origin = proof(&mut other, "a", "https://as.example.com/par");
    assert_eq!(nonce_of(&same_origin).as_deref(), Some("n-1"));
    verify_proof(&same_origin, "POST", "https://as.example.com/par", None);
    for url in [
        "https://as.example.com:8443/token",
        "http://as.example.com/token",
        "https://rs.example.com/token",
        "https://sub.as.example.com/token",
    ] {
        assert_eq!(nonce_of(&proof(&mut other, "a", url)), None, "{url}");
    }
    assert_eq!(
        nonce_of(&proof(&mut other, "b", "https://as.example.com/token")),
        None,
        "another key's nonce"
    );

    // An explicit nonce wins over the stored one.
    let explicit = other
        .sign_proof(
            "a",
            &ProofRequest::new("GET", "https://as.example.com/x").nonce("mine"),
        )
        .unwrap();
    assert_eq!(nonce_of(&explicit).as_deref(), Some("mine"));

    // A newer nonce replaces the old one.
    other
        .report_nonce("a", "https://as.example.com", "n-2")
        .unwrap();
    let newer = proof(&mut reporter, "a", "https://as.example.com/token");
    assert_eq!(nonce_of(&newer).as_deref(), Some("n-2"));

    // list_keys shows the origins, never the nonces.
    reporter
        .report_nonce("a", "https://rs.example.com:8443/api", "r-1")
        .unwrap();
    let keys = reporter.list_keys().unwrap();
    let a = keys.iter().find(|k| k.label == "a").unwrap();
    assert_eq!(
        a.nonce_origins,
        ["https://as.example.com", "https://rs.example.com:8443"]
    );
    let b = keys.iter().find(|k| k.label == "b").unwrap();
    assert!(b.nonce_origins.is_empty());
    let listed = agent.raw_request(br#"{"id":1,"op":"list_keys"}"#);
    assert!(!listed.to_string().contains("n-2"), "{listed}");

    // A deleted key's nonces go with it: a new key under the label starts clean.
    reporter.delete_key("a").unwrap();
    reporter.generate_key("a").unwrap();
    assert_eq!(
        nonce_of(&proof(&mut reporter, "a", "https://as.example.com/token")),
        None
    );
}

#[test]
fn report_nonce_refuses_bad_input_with_its_code() {
    let agent = TestAgent::start(AgentOptions::new());
    agent.client().generate_key("k").unwrap();
    let mut raw = agent.raw();
    let mut ask = |request: Value| raw.request(request.to_string().as_bytes());
    let cases = [
        (
            json!({"id": 1, "op": "report_nonce", "key": "k", "origin": "https://as.example", "nonce": "has space"}),
            "invalid_nonce",
        ),
        (
            json!({"id": 2, "op": "report_nonce", "key": "k", "origin": "https://as.example", "nonce": ""}),
            "invalid_nonce",
        ),
        (
            json!({"id": 3, "op": "report_nonce", "key": "k", "origin": "https://as.example", "nonce": "n".repeat(1025)}),
            "invalid_nonce",
        ),
        (
            json!({"id": 4, "op": "report_nonce", "key": "k", "origin": "as.example", "nonce": "n"}),
            "invalid_url",
        ),
        (
            json!({"id": 5, "op": "report_nonce", "key": "nope", "origin": "https://as.example", "nonce": "n"}),
            "key_not_found",
        ),
        (
            json!({"id": 6, "op": "report_nonce", "key": "k", "origin": "https://as.example", "nonce": "n", "extra": 1}),
            "bad_request",
        ),
        (
            json!({"id": 7, "op": "report_nonce", "key": "k", "origin": "https://as.example"}),
            "bad_request",
        ),
        (
            json!({"id": 8, "op": "sign_proof", "key": "k", "htm": "GET", "htu": "https://as.example/", "nonce": "a\"b"}),
            "invalid_nonce",
        ),
    ];
    for (request, code) in cases {
        let reply = ask(request.clone());
        assert_eq!(reply["ok"], false, "{request}: {reply}");
        assert_eq!(error_code(&reply), code, "{request}: {reply}");
        assert_eq!(reply["id"], request["id"]);
    }
    // Nothing bad was stored: proofs carry no nonce.
    let ok = ask(
        json!({"id": 9, "op": "report_nonce", "key": "k", "origin": "https://as.example", "nonce": "good"}),
    );
    assert_eq!(ok, json!({"id": 9, "ok": true}));
    let proof = agent
        .client()
        .sign_proof("k", &ProofRequest::new("GET", "https://other.example/"))
        .unwrap();
    assert_eq!(nonce_of(&proof), None);
}

#[test]
fn stored_origins_per_key_are_bounded() {
    let agent = TestAgent::start(AgentOptions::new());
    let mut client = agent.client();
    client.generate_key("k").unwrap();
    for i in 0..100 {
        client
            .report_nonce("k", &format!("https://h{i}.example"), &format!("n{i}"))
            .unwrap();
    }
    let keys = client.list_keys().unwrap();
    assert_eq!(keys[0].nonce_origins.len(), 64);
    // The newest are kept; the oldest went.
    let newest = client
        .sign_proof("k", &ProofRequest::new("GET", "https://h99.example/"))
        .unwrap();
    assert_eq!(nonce_of(&newest).as_deref(), Some("n99"));
    let oldest = client
        .sign_proof("k", &ProofRequest::new("GET", "https://h0.example/"))
        .unwrap();
    assert_eq!(nonce_of(&oldest), None);
}
