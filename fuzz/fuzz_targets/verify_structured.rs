//! `dpop_jose::verify` with structure-aware inputs: header and claims built from `arbitrary`
//! fields (including extra and repeated members, `crit`, foreign or small-order keys), signed
//! with a real key so that the signature check and everything after it is reached, then
//! optionally one byte changed. Whatever verifies must really be valid.
#![no_main]

use std::num::NonZeroUsize;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use dpop_jose::{
    Error, ExpectedRequest, Jwk, LruReplayStore, VerifyOptions, b64url_encode, verify,
};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const NOW: i64 = 1_800_000_000;

struct Keys {
    es256: EcdsaKeyPair,
    ed25519: Ed25519KeyPair,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys {
        es256: EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).unwrap(),
        ed25519: Ed25519KeyPair::generate().unwrap(),
    })
}

/// Small-order Ed25519 encodings (identity, order 2, 4 and 8 points, non-canonical forms).
fn small_order(i: u8) -> [u8; 32] {
    let mut p = [0u8; 32];
    match i % 5 {
        0 => p[0] = 1,
        1 => p[0] = 0,
        2 => {
            p = [0xff; 32];
            p[0] = 0xec;
            p[31] = 0x7f;
        }
        3 => {
            p = [0xff; 32];
            p[0] = 0xee;
            p[31] = 0x7f;
        }
        _ => {
            p = [
                0x26, 0xe8, 0x95, 0x8f, 0xc2, 0xb2, 0x27, 0xb0, 0x45, 0xc3, 0xf4, 0x89, 0xf2, 0xef,
                0x98, 0xf0, 0xd5, 0xdf, 0xac, 0x05, 0xd3, 0xc6, 0x33, 0x39, 0xb1, 0x38, 0x02, 0x88,
                0x6d, 0x53, 0xfc, 0x05,
            ]
        }
    }
    if i & 0x80 != 0 {
        p[31] |= 0x80;
    }
    p
}

#[derive(Arbitrary, Debug)]
enum Json {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    fn to_value(&self) -> Value {
        match self {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(*b),
            Json::Int(i) => Value::from(*i),
            Json::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
            Json::Str(s) => Value::from(s.as_str()),
            Json::Arr(a) => Value::Array(a.iter().map(Json::to_value).collect()),
            Json::Obj(o) => {
                Value::Object(o.iter().map(|(k, v)| (k.clone(), v.to_value())).collect())
            }
        }
    }
}

/// A member that is the valid value, absent, or anything else.
#[derive(Arbitrary, Debug)]
enum Field<T> {
    Valid,
    Missing,
    Other(T),
}

#[derive(Arbitrary, Debug)]
enum KeyChoice {
    Es256,
    Ed25519,
}

#[derive(Arbitrary, Debug)]
enum JwkChoice {
    /// The signing key's own JWK.
    Own,
    /// The own JWK with members added (private ones, repeated ones).
    OwnPlus(Vec<(String, Json)>),
    /// A small-order Ed25519 point, with a forged signature `R || 0`.
    SmallOrder { key: u8, r: u8 },
    /// Any JSON.
    Any(Json),
}

#[derive(Arbitrary, Debug)]
struct Input {
    key: KeyChoice,
    typ: Field<String>,
    alg: Field<String>,
    jwk: JwkChoice,
    /// Written after the regular members: names may repeat them, or be `crit`.
    extra_header: Vec<(String, Json)>,
    jti: Field<Json>,
    htm: Field<Json>,
    htu: Field<Json>,
    iat: Field<i64>,
    ath: Option<Json>,
    nonce: Option<Json>,
    extra_claims: Vec<(String, Json)>,
    method: Option<String>,
    url: Option<String>,
    access_token: Option<String>,
    /// `None`: no binding; `Some(None)`: the real thumbprint; `Some(Some(x))`: `x`.
    jkt: Option<Option<String>>,
    mutation: Option<(u16, u8)>,
    /// Replace the proof's signature with these bytes.
    signature: Option<Vec<u8>>,
}

/// Writes an object member by member, so that names can repeat.
fn object(members: &[(String, Value)]) -> String {
    let body: Vec<String> = members
        .iter()
        .map(|(k, v)| format!("{}:{}", Value::from(k.as_str()), v))
        .collect();
    format!("{{{}}}", body.join(","))
}

fn push<T>(
    out: &mut Vec<(String, Value)>,
    name: &str,
    field: &Field<T>,
    valid: Value,
    f: impl Fn(&T) -> Value,
) {
    match field {
        Field::Valid => out.push((name.into(), valid)),
        Field::Missing => {}
        Field::Other(x) => out.push((name.into(), f(x))),
    }
}

const URL: &str = "https://server.example.com/token";

fuzz_target!(|input: Input| {
    let keys = keys();
    let (alg, own_jwk) = match input.key {
        KeyChoice::Es256 => (
            "ES256",
            Jwk::from_ec_point(keys.es256.public_key().as_ref()).unwrap(),
        ),
        KeyChoice::Ed25519 => (
            "EdDSA",
            Jwk::from_ed25519(keys.ed25519.public_key().as_ref().try_into().unwrap()),
        ),
    };
    let own = serde_json::to_value(&own_jwk).unwrap();
    let mut forged = None;
    let jwk = match &input.jwk {
        JwkChoice::Own => own.to_string(),
        JwkChoice::OwnPlus(extra) => {
            let mut members: Vec<(String, Value)> = own
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            members.extend(extra.iter().map(|(k, v)| (k.clone(), v.to_value())));
            object(&members)
        }
        JwkChoice::SmallOrder { key, r } => {
            let mut sig = small_order(*r).to_vec();
            sig.extend_from_slice(&[0; 32]);
            forged = Some(sig);
            serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(small_order(*key))})
                .to_string()
        }
        JwkChoice::Any(j) => j.to_value().to_string(),
    };
    let mut header = Vec::new();
    push(&mut header, "typ", &input.typ, "dpop+jwt".into(), |s| {
        Value::from(s.as_str())
    });
    let alg_value = if forged.is_some() { "EdDSA" } else { alg };
    push(&mut header, "alg", &input.alg, alg_value.into(), |s| {
        Value::from(s.as_str())
    });
    header.push((
        "jwk".into(),
        serde_json::from_str(&jwk).unwrap_or(Value::Null),
    ));
    header.extend(
        input
            .extra_header
            .iter()
            .map(|(k, v)| (k.clone(), v.to_value())),
    );
    // The jwk member is spliced in as text so that its own repeated members survive.
    let header_text = object(&header).replacen(
        &format!(
            "\"jwk\":{}",
            header[header.iter().position(|(k, _)| k == "jwk").unwrap()].1
        ),
        &format!("\"jwk\":{jwk}"),
        1,
    );

    let mut claims = Vec::new();
    push(
        &mut claims,
        "jti",
        &input.jti,
        "0123456789abcdef".into(),
        Json::to_value,
    );
    push(&mut claims, "htm", &input.htm, "GET".into(), Json::to_value);
    push(&mut claims, "htu", &input.htu, URL.into(), Json::to_value);
    push(&mut claims, "iat", &input.iat, NOW.into(), |&i| {
        Value::from(i)
    });
    if let Some(ath) = &input.ath {
        claims.push(("ath".into(), ath.to_value()));
    }
    if let Some(nonce) = &input.nonce {
        claims.push(("nonce".into(), nonce.to_value()));
    }
    claims.extend(
        input
            .extra_claims
            .iter()
            .map(|(k, v)| (k.clone(), v.to_value())),
    );
    let claims_text = object(&claims);

    let signing_input = format!(
        "{}.{}",
        b64url_encode(&header_text),
        b64url_encode(&claims_text)
    );
    let was_forged = forged.is_some();
    let signature = match (&input.signature, forged) {
        (Some(s), _) => s.clone(),
        (None, Some(f)) => f,
        (None, None) => match input.key {
            KeyChoice::Es256 => keys
                .es256
                .sign(&SystemRandom::new(), signing_input.as_bytes())
                .unwrap()
                .as_ref()
                .to_vec(),
            KeyChoice::Ed25519 => keys
                .ed25519
                .sign(signing_input.as_bytes())
                .as_ref()
                .to_vec(),
        },
    };
    let proof = format!("{signing_input}.{}", b64url_encode(&signature));
    let mut bytes = proof.clone().into_bytes();
    if let Some((at, byte)) = input.mutation
        && !bytes.is_empty()
    {
        let i = at as usize % bytes.len();
        bytes[i] = byte;
    }
    let proof_mutated = String::from_utf8_lossy(&bytes).into_owned();

    let method = input.method.as_deref().unwrap_or("GET");
    let url = input.url.as_deref().unwrap_or(URL);
    let real_jkt = own_jwk.thumbprint();
    let request = ExpectedRequest {
        method,
        url,
        access_token: input.access_token.as_deref(),
        jkt: input
            .jkt
            .as_ref()
            .map(|j| j.as_deref().unwrap_or(&real_jkt)),
    };
    let replay = LruReplayStore::new(NonZeroUsize::new(4).unwrap());
    let options = VerifyOptions::default();
    let Ok(verified) = verify(&proof_mutated, &request, &options, &(), &replay, NOW) else {
        return;
    };
    // Only our own keys sign, and only the untouched proof.
    assert!(!was_forged, "a small-order key verified: {proof_mutated}");
    assert!(input.signature.is_none(), "a chosen signature verified");
    assert_eq!(proof_mutated, proof, "a changed proof verified");
    assert_eq!(verified.jkt, real_jkt);
    assert_eq!(verified.jwk, own_jwk);
    assert_eq!(verified.claims.htm, method);
    let header: serde_json::Map<String, Value> =
        serde_json::from_str(&header_text).expect("a verified header is a JSON object");
    assert!(!header.contains_key("crit"), "crit accepted: {header_text}");
    // The same proof again is a replay.
    assert!(matches!(
        verify(&proof, &request, &options, &(), &replay, NOW),
        Err(Error::Replayed)
    ));
});
