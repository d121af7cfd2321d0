//! The example resource server over real HTTP on loopback: proofs from the real agent, JWT
//! access tokens minted by the test, every refusal of issue 15 item 8 with its answer.

use dpop_tests::{DpopCaller, ResourceServer, ServerOptions, TokenIssuer};

#[tokio::test(flavor = "multi_thread")]
async fn a_bound_token_with_a_fresh_proof_is_served() {
    let issuer = TokenIssuer::new();
    let caller = DpopCaller::new();
    let server = ResourceServer::start(&issuer, ServerOptions::default());
    let token = issuer.token("alice", Some(&caller.jkt));
    let url = server.url("/v1/items");

    let reply = caller.get(&url, &token, None).await;
    assert_eq!(reply.status, 200, "{reply:?}\n{}", server.log());
    assert_eq!(reply.body["jkt"], caller.jkt.as_str());
    assert_eq!(reply.body["sub"], "alice");
    assert_eq!(reply.body["path"], "/v1/items");
    assert_eq!(reply.dpop_nonce, None, "no nonce secret, no nonces");
}
