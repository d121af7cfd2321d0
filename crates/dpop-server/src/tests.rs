//! The verifier end to end in process: proofs signed by dpop-keys' software backend.

use std::sync::Arc;
use std::time::Duration;

use dpop_jose::{Algorithm, Claims, Htu, Method, sign_proof};
use dpop_keys::software::SoftwareBackend;
use dpop_keys::{Backend, KeyLabel, SignerRef};

use crate::*;

const URL: &str = "https://rs.example.com/v1/items";
const TOKEN: &str = "an-access-token";
const NOW: i64 = 1_800_000_000;
const SECRET: [u8; 32] = [42; 32];

fn key(alg: Algorithm) -> SignerRef {
    SoftwareBackend::ephemeral()
        .generate(&KeyLabel::new("k").unwrap(), alg)
        .unwrap()
}

fn proof(signer: &SignerRef, method: &str, url: &str, iat: i64, nonce: Option<&str>) -> String {
    let claims = Claims::new(
        &Method::new(method).unwrap(),
        &Htu::from_url(url).unwrap(),
        iat,
    )
    .with_access_token(TOKEN)
    .unwrap()
    .with_nonce(nonce)
    .unwrap();
    sign_proof(&**signer, &claims).unwrap()
}

/// Accepts [`TOKEN`] only, bound to `jkt`.
struct Tokens {
    jkt: Option<String>,
}

impl TokenValidator for Tokens {
    fn validate<'a>(&'a self, token: &'a str) -> TokenFuture<'a> {
        let result = if token == TOKEN {
            Ok(BoundToken {
                jkt: self.jkt.clone(),
                claims: serde_json::json!({"sub": "alice"}),
            })
        } else {
            Err("unknown token".to_owned())
        };
        Box::pin(std::future::ready(result))
    }
}

fn builder(preset: Preset) -> VerifierBuilder {
    Verifier::builder(preset).public_url(PublicUrl::new("https://rs.example.com/v1/").unwrap())
}

fn nonces() -> HmacNonces {
    HmacNonces::new(&SECRET, Duration::from_secs(30)).unwrap()
}

async fn run(
    verifier: &Verifier,
    authorization: &[&str],
    dpop: &[&str],
    tokens: &Tokens,
    now: i64,
) -> Result<Verified, Rejection> {
    let request = HttpRequest {
        method: "GET",
        url: URL,
        authorization,
        dpop,
    };
    verifier.verify_at(&request, tokens, now).await
}

#[tokio::test]
async fn a_bound_token_with_its_proof_is_accepted_once() {
    let signer = key(Algorithm::ES256);
    let jkt = signer.meta().info().jkt.clone();
    let tokens = Tokens {
        jkt: Some(jkt.clone()),
    };
    let verifier = builder(Preset::Rfc9449).build().unwrap();
    let p = proof(&signer, "GET", URL, NOW, None);
    let auth = format!("DPoP {TOKEN}");
    let ok = run(&verifier, &[&auth], &[&p], &tokens, NOW).await.unwrap();
    assert_eq!(ok.jkt, jkt);
    assert_eq!(ok.token.unwrap().claims["sub"], "alice");
    assert_eq!(ok.next_nonce, None);

    let again = run(&verifier, &[&auth], &[&p], &tokens, NOW)
        .await
        .unwrap_err();
    assert!(matches!(
        again.error(),
        Error::Proof(dpop_jose::Error::Replayed)
    ));
    assert_eq!(again.status(), 401);
    assert_eq!(again.error_code(), Some("invalid_dpop_proof"));
}

#[tokio::test]
async fn each_refusal_has_its_code_status_and_challenge() {
    let signer = key(Algorithm::ES256);
    let other = key(Algorithm::ES256);
    let tokens = Tokens {
        jkt: Some(signer.meta().info().jkt.clone()),
    };
    let verifier = builder(Preset::Rfc9449).build().unwrap();
    let auth = format!("DPoP {TOKEN}");
    let good = || proof(&signer, "GET", URL, NOW, None);

    let no_auth = run(&verifier, &[], &[&good()], &tokens, NOW)
        .await
        .unwrap_err();
    assert_eq!(no_auth.status(), 401);
    assert_eq!(no_auth.error_code(), None);
    assert_eq!(
        no_auth.www_authenticate().unwrap(),
        r#"DPoP algs="ES256 ES384 EdDSA PS256 RS256""#
    );

    let bearer = format!("Bearer {TOKEN}");
    let downgrade = run(&verifier, &[&bearer], &[&good()], &tokens, NOW)
        .await
        .unwrap_err();
    assert!(matches!(downgrade.error(), Error::BearerDowngrade));
    assert_eq!(downgrade.error_code(), Some("invalid_token"));

    let (a, b) = (good(), good());
    let two = run(&verifier, &[&auth], &[&a, &b], &tokens, NOW)
        .await
        .unwrap_err();
    assert!(matches!(two.error(), Error::MultipleProofs));
    assert_eq!(two.error_code(), Some("invalid_dpop_proof"));

    let none = run(&verifier, &[&auth], &[], &tokens, NOW)
        .await
        .unwrap_err();
    assert!(matches!(none.error(), Error::MissingProof));

    let wrong_key = proof(&other, "GET", URL, NOW, None);
    let jkt = run(&verifier, &[&auth], &[&wrong_key], &tokens, NOW)
        .await
        .unwrap_err();
    assert!(matches!(
        jkt.error(),
        Error::Proof(dpop_jose::Error::JktMismatch { .. })
    ));
    assert_eq!(jkt.error_code(), Some("invalid_token"));

    let post = proof(&signer, "POST", URL, NOW, None);
    let method = run(&verifier, &[&auth], &[&post], &tokens, NOW)
        .await
        .unwrap_err();
    assert!(matches!(
        method.error(),
        Error::Proof(dpop_jose::Error::MethodMismatch { .. })
    ));
    let challenge = method.www_authenticate().unwrap();
    assert!(
        challenge.starts_with(
            r#"DPoP error="invalid_dpop_proof", error_description="DPoP proof htm 'POST'"#
        ),
        "{challenge}"
    );

    let unbound = Tokens { jkt: None };
    let not_bound = run(&verifier, &[&auth], &[&good()], &unbound, NOW)
        .await
        .unwrap_err();
    assert!(matches!(not_bound.error(), Error::InvalidToken(_)));

    let bad = run(&verifier, &["DPoP a b"], &[&good()], &tokens, NOW)
        .await
        .unwrap_err();
    assert_eq!(bad.status(), 400);
    assert_eq!(bad.error_code(), Some("invalid_request"));
    assert_eq!(bad.body()["error"], "invalid_request");
}

#[tokio::test]
async fn required_nonces_are_issued_rotated_and_shared_by_instances() {
    let signer = key(Algorithm::ES256);
    let tokens = Tokens {
        jkt: Some(signer.meta().info().jkt.clone()),
    };
    let a = builder(Preset::Fapi2).nonces(nonces()).build().unwrap();
    let b = builder(Preset::Fapi2).nonces(nonces()).build().unwrap();
    let auth = format!("DPoP {TOKEN}");

    let first = proof(&signer, "GET", URL, NOW, None);
    let refused = run(&a, &[&auth], &[&first], &tokens, NOW)
        .await
        .unwrap_err();
    assert_eq!(refused.error_code(), Some("use_dpop_nonce"));
    assert_eq!(refused.status(), 401);
    let nonce = refused.dpop_nonce().unwrap().to_owned();

    // Instance b accepts a's nonce, and says nothing new within the step.
    let p = proof(&signer, "GET", URL, NOW, Some(&nonce));
    let ok = run(&b, &[&auth], &[&p], &tokens, NOW).await.unwrap();
    assert_eq!(ok.next_nonce, None);

    // One step later it is still accepted, with a new nonce to move to.
    let later = NOW + 30;
    let p = proof(&signer, "GET", URL, later, Some(&nonce));
    let ok = run(&a, &[&auth], &[&p], &tokens, later).await.unwrap();
    assert_eq!(
        ok.next_nonce.as_deref(),
        Some(nonces().nonce_at(later).as_str())
    );

    // Two steps later it is refused, with the current one.
    let rotated = NOW + 60;
    let p = proof(&signer, "GET", URL, rotated, Some(&nonce));
    let refused = run(&b, &[&auth], &[&p], &tokens, rotated)
        .await
        .unwrap_err();
    assert_eq!(refused.error_code(), Some("use_dpop_nonce"));
    assert_eq!(
        refused.dpop_nonce(),
        Some(nonces().nonce_at(rotated).as_str())
    );
}

#[tokio::test]
async fn fapi2_refuses_other_algorithms_and_needs_nonces() {
    assert!(matches!(
        builder(Preset::Fapi2).build(),
        Err(ConfigError::NoncesRequired)
    ));
    assert!(matches!(
        Verifier::builder(Preset::Rfc9449).build(),
        Err(ConfigError::NoPublicUrl)
    ));
    let verifier = builder(Preset::Fapi2).nonces(nonces()).build().unwrap();
    let signer = key(Algorithm::ES384);
    let tokens = Tokens {
        jkt: Some(signer.meta().info().jkt.clone()),
    };
    let auth = format!("DPoP {TOKEN}");
    let nonce = nonces().nonce_at(NOW);
    let p = proof(&signer, "GET", URL, NOW, Some(&nonce));
    let refused = run(&verifier, &[&auth], &[&p], &tokens, NOW)
        .await
        .unwrap_err();
    assert!(matches!(
        refused.error(),
        Error::Proof(dpop_jose::Error::UnsupportedAlgorithm { .. })
    ));
    // iat 10 s ahead is fine under FAPI 2.0, 11 s is not.
    let signer = key(Algorithm::EdDSA);
    let tokens = Tokens {
        jkt: Some(signer.meta().info().jkt.clone()),
    };
    let ahead = proof(&signer, "GET", URL, NOW + 10, Some(&nonce));
    run(&verifier, &[&auth], &[&ahead], &tokens, NOW)
        .await
        .unwrap();
    let too_far = proof(&signer, "GET", URL, NOW + 11, Some(&nonce));
    let refused = run(&verifier, &[&auth], &[&too_far], &tokens, NOW)
        .await
        .unwrap_err();
    assert!(matches!(
        refused.error(),
        Error::Proof(dpop_jose::Error::IatOutOfWindow { .. })
    ));
}

#[tokio::test]
async fn a_token_endpoint_answers_400_json_and_ignores_authorization() {
    let verifier = builder(Preset::Rfc9449)
        .endpoint(Endpoint::Token)
        .nonces(nonces())
        .require_nonces(true)
        .build()
        .unwrap();
    let signer = key(Algorithm::ES256);
    let claims = Claims::new(
        &Method::new("POST").unwrap(),
        &Htu::from_url("https://rs.example.com/v1/token").unwrap(),
        NOW,
    );
    let p = sign_proof(&*signer, &claims).unwrap();
    let request = HttpRequest {
        method: "POST",
        url: "https://rs.example.com/v1/token",
        authorization: &["Basic Y2xpZW50OnNlY3JldA=="],
        dpop: &[&p],
    };
    let refused = verifier.verify_at(&request, &(), NOW).await.unwrap_err();
    assert_eq!(refused.status(), 400);
    assert_eq!(refused.www_authenticate(), None);
    let response = refused.to_response();
    let body: serde_json::Value = serde_json::from_str(response.body()).unwrap();
    assert_eq!(body["error"], "use_dpop_nonce");
    assert_eq!(
        response.headers()[DPOP_NONCE],
        nonces().nonce_at(NOW).as_str()
    );

    let claims = claims.with_nonce(Some(&nonces().nonce_at(NOW))).unwrap();
    let p = sign_proof(&*signer, &claims).unwrap();
    let request = HttpRequest {
        dpop: &[&p],
        ..request
    };
    let ok = verifier.verify_at(&request, &(), NOW).await.unwrap();
    assert!(ok.token.is_none());
    assert_eq!(ok.jkt, signer.meta().info().jkt.clone());
}

#[tokio::test]
async fn a_full_memory_store_asks_for_a_nonce_or_for_patience() {
    let store = Arc::new(MemoryReplayStore::new(
        std::num::NonZeroUsize::new(1).unwrap(),
    ));
    let signer = key(Algorithm::ES256);
    let tokens = Tokens {
        jkt: Some(signer.meta().info().jkt.clone()),
    };
    let auth = format!("DPoP {TOKEN}");
    let verifier = builder(Preset::Rfc9449)
        .replay_store(store)
        .build()
        .unwrap();
    let (a, b) = (
        proof(&signer, "GET", URL, NOW, None),
        proof(&signer, "GET", URL, NOW, None),
    );
    run(&verifier, &[&auth], &[&a], &tokens, NOW).await.unwrap();
    let full = run(&verifier, &[&auth], &[&b], &tokens, NOW)
        .await
        .unwrap_err();
    assert_eq!(full.status(), 503);
    assert_eq!(full.error_code(), Some("temporarily_unavailable"));
    assert_eq!(full.retry_after(), Some(65));
}
