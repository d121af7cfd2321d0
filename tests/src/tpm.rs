//! Helpers of the TPM end-to-end tests (the `tpm_*` modules of the `e2e` test binary, with this
//! package's feature `tpm`): each test runs its own swtpm (own state directory, own loopback
//! ports) and agent, makes keys through the real `dpop` CLI or the client crate, and checks
//! proofs with `dpop verify`, the Python jwcrypto verifier and dpop-jose. Needs swtpm (`apt-get
//! install swtpm swtpm-tools`), `python3` with jwcrypto and `openssl`; fails, never skips,
//! without them.

use dpop_protocol::KeyDescription;
use serde_json::Value;

use crate::{TestAgent, jwcrypto_verify, verify_proof};

/// The request of the PKCS#11 tests, and the same key description parser.
pub use crate::pkcs11::{HTU, URL, parse_key};

/// Generates a TPM key with `dpop keys generate`.
pub fn generate(agent: &TestAgent, label: &str, alg: &str) -> KeyDescription {
    let key = parse_key(&agent.dpop_ok(&[
        "keys",
        "generate",
        "--label",
        label,
        "--backend",
        "tpm",
        "--alg",
        alg,
        "--json",
    ]));
    assert_eq!(key.backend, "tpm", "{key:?}");
    assert_eq!(key.alg.to_string(), alg, "{key:?}");
    key
}

/// A proof from `key` through `dpop proof`, checked by `dpop verify`, jwcrypto and
/// dpop-jose, all three finding the key's thumbprint.
pub fn assert_signs(agent: &TestAgent, key: &KeyDescription) {
    let proof = agent.dpop_ok(&["proof", "--key", &key.label, "-X", "GET", "--url", URL]);
    let proof = proof.trim();
    let verified = agent.dpop_ok(&[
        "verify", "--proof", proof, "--method", "GET", "--url", URL, "--json",
    ]);
    let verified: Value = serde_json::from_str(verified.trim())
        .unwrap_or_else(|e| panic!("dpop verify --json printed no JSON ({e}): {verified}"));
    assert_eq!(verified["jkt"], key.jkt.as_str(), "dpop verify: {verified}");
    jwcrypto_verify(proof, &key.alg.to_string(), "GET", HTU, &key.jkt, None);
    assert_eq!(verify_proof(proof, "GET", URL, None).jkt, key.jkt);
}

/// A raw `sign_proof` reply (for error codes).
pub fn sign_reply(agent: &TestAgent, label: &str) -> Value {
    let line =
        serde_json::json!({"id": 1, "op": "sign_proof", "key": label, "htm": "GET", "htu": URL});
    agent.raw_request(line.to_string().as_bytes())
}

/// The agent's keys.
pub fn list(agent: &TestAgent) -> Vec<KeyDescription> {
    agent.client().list_keys().expect("list_keys")
}

/// What the tests read from the TPM themselves, through tss-esapi (no agent may be connected
/// to the swtpm meanwhile: it serves one client at a time).
pub mod direct {
    use std::path::Path;

    use serde_json::Value;
    use tss_esapi::{
        Context,
        attributes::ObjectAttributesBuilder,
        handles::KeyHandle,
        interface_types::{
            algorithm::{HashingAlgorithm, PublicAlgorithm},
            ecc::EccCurve,
            session_handles::AuthSession,
        },
        structures::{
            EccPoint, EccScheme, HashScheme, Private, Public, PublicBuilder,
            PublicEccParametersBuilder,
        },
        traits::UnMarshall,
    };

    pub(super) use crate::create_srk as srk;

    /// Attributes of an ordinary signing key, as another application would make one.
    pub(super) fn signing_attributes() -> tss_esapi::attributes::ObjectAttributes {
        ObjectAttributesBuilder::new()
            .with_fixed_tpm(true)
            .with_fixed_parent(true)
            .with_sensitive_data_origin(true)
            .with_user_with_auth(true)
            .with_sign_encrypt(true)
            .build()
            .unwrap()
    }

    /// Creates a key from `template` under `srk` and loads it: its handle and public area.
    pub(super) fn create_and_load(
        ctx: &mut Context,
        srk: KeyHandle,
        template: Public,
        what: &str,
    ) -> (KeyHandle, Public) {
        let created = ctx
            .execute_with_session(Some(AuthSession::Password), |c| {
                c.create(srk, template, None, None, None, None)
            })
            .unwrap_or_else(|e| panic!("creating {what}: {e}"));
        let public = created.out_public.clone();
        let key = ctx
            .execute_with_session(Some(AuthSession::Password), |c| {
                c.load(srk, created.out_private, created.out_public)
            })
            .unwrap_or_else(|e| panic!("loading {what}: {e}"));
        (key, public)
    }

    /// The record of a key in the agent's data directory.
    pub fn record(data_dir: &Path, label: &str) -> Value {
        let path = data_dir.join(format!("tpm/{label}.json"));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        serde_json::from_str(&text).expect("a JSON record")
    }

    /// Decodes one of a record's base64url blobs.
    pub fn blob(record: &Value, field: &str) -> Vec<u8> {
        dpop_jose::b64url_decode(
            record[field]
                .as_str()
                .unwrap_or_else(|| panic!("no {field}: {record}")),
        )
        .expect("base64url")
    }

    /// Loads a recorded key under the SRK and returns what the TPM says its public area is.
    pub fn load_and_read_public(ctx: &mut Context, data_dir: &Path, label: &str) -> Public {
        let record = record(data_dir, label);
        let public = Public::unmarshall(&blob(&record, "public")).expect("a public area");
        let private = Private::try_from(blob(&record, "private")).expect("a private blob");
        let srk = srk(ctx);
        let key = ctx
            .execute_with_session(Some(AuthSession::Password), |c| {
                c.load(srk, private, public)
            })
            .expect("loading the recorded key");
        let (public, _, _) = ctx.read_public(key).expect("reading the public area");
        // swtpm has three object slots: leave them free.
        ctx.flush_context(key.into()).expect("unloading the key");
        ctx.flush_context(srk.into()).expect("unloading the SRK");
        public
    }

    /// Makes an ECC P-256 signing key and makes it persistent at `handle` (the owner's
    /// EvictControl), as another application would have.
    pub fn persistent_p256_key(ctx: &mut Context, handle: u32) {
        use tss_esapi::handles::{ObjectHandle, PersistentTpmHandle};
        use tss_esapi::interface_types::{
            dynamic_handles::Persistent, resource_handles::Provision,
        };
        let srk = srk(ctx);
        let template = PublicBuilder::new()
            .with_public_algorithm(PublicAlgorithm::Ecc)
            .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
            .with_object_attributes(signing_attributes())
            .with_ecc_parameters(
                PublicEccParametersBuilder::new_unrestricted_signing_key(
                    EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)),
                    EccCurve::NistP256,
                )
                .build()
                .unwrap(),
            )
            .with_ecc_unique_identifier(EccPoint::default())
            .build()
            .unwrap();
        let (key, _) = create_and_load(ctx, srk, template, "the key to adopt");
        let persistent = Persistent::Persistent(PersistentTpmHandle::new(handle).unwrap());
        ctx.execute_with_session(Some(AuthSession::Password), |c| {
            c.evict_control(Provision::Owner, ObjectHandle::from(key), persistent)
        })
        .expect("making the key persistent");
    }

    /// Whether a persistent object exists at `handle`.
    pub fn persistent_exists(ctx: &mut Context, handle: u32) -> bool {
        use tss_esapi::handles::{PersistentTpmHandle, TpmHandle};
        let handle = TpmHandle::Persistent(PersistentTpmHandle::new(handle).unwrap());
        ctx.execute_without_session(|c| c.tr_from_tpm_public(handle))
            .is_ok()
    }

    /// TPM_PT_LOCKOUT_COUNTER and TPM_PT_MAX_AUTH_FAIL (GetCapability).
    pub fn lockout_counter_and_max(ctx: &mut Context) -> (u32, u32) {
        use tss_esapi::constants::PropertyTag;
        let get = |ctx: &mut Context, tag| {
            ctx.get_tpm_property(tag)
                .expect("TPM2_GetCapability")
                .unwrap_or_else(|| panic!("the TPM reports no {tag:?}"))
        };
        (
            get(ctx, PropertyTag::LockoutCounter),
            get(ctx, PropertyTag::MaxAuthFail),
        )
    }
}

/// An RSASSA-PSS (SHA-256) signature of `message` by a fresh RSA 2048 key in the TPM, made
/// here with tss-esapi: (modulus, signature).
pub fn tpm_pss_signature(ctx: &mut tss_esapi::Context, message: &[u8]) -> (Vec<u8>, Vec<u8>) {
    use tss_esapi::{
        constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK},
        interface_types::{
            algorithm::{HashingAlgorithm, PublicAlgorithm},
            key_bits::RsaKeyBits,
            session_handles::AuthSession,
        },
        structures::{
            Digest, HashScheme, HashcheckTicket, PublicBuilder, PublicKeyRsa,
            PublicRsaParametersBuilder, RsaExponent, RsaScheme, Signature, SignatureScheme,
        },
        tss2_esys::TPMT_TK_HASHCHECK,
    };
    let srk = direct::srk(ctx);
    let hash_scheme = HashScheme::new(HashingAlgorithm::Sha256);
    let template = PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Rsa)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(direct::signing_attributes())
        .with_rsa_parameters(
            PublicRsaParametersBuilder::new_unrestricted_signing_key(
                RsaScheme::RsaPss(hash_scheme),
                RsaKeyBits::Rsa2048,
                RsaExponent::default(),
            )
            .build()
            .unwrap(),
        )
        .with_rsa_unique_identifier(PublicKeyRsa::default())
        .build()
        .unwrap();
    let (key, public) = direct::create_and_load(ctx, srk, template, "a PSS key");
    let modulus = match &public {
        tss_esapi::structures::Public::Rsa { unique, .. } => unique.value().to_vec(),
        _ => unreachable!("an RSA template"),
    };
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, message);
    let ticket = HashcheckTicket::try_from(TPMT_TK_HASHCHECK {
        tag: TPM2_ST_HASHCHECK,
        hierarchy: TPM2_RH_NULL,
        digest: Default::default(),
    })
    .unwrap();
    let signature = ctx
        .execute_with_session(Some(AuthSession::Password), |c| {
            c.sign(
                key,
                Digest::try_from(digest.as_ref()).unwrap(),
                SignatureScheme::RsaPss { hash_scheme },
                ticket,
            )
        })
        .expect("signing with the PSS key");
    ctx.flush_context(key.into()).unwrap();
    ctx.flush_context(srk.into()).unwrap();
    let Signature::RsaPss(signature) = signature else {
        panic!("not a PSS signature: {signature:?}");
    };
    (modulus, signature.signature().value().to_vec())
}

/// Python's `cryptography` (jwcrypto's backend, independent of aws-lc-rs) on a PSS signature:
/// (valid with any salt length, valid with salt length = hash length).
pub fn python_pss_verdicts(modulus: &[u8], signature: &[u8], message: &[u8]) -> (bool, bool) {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let script = r#"
import sys
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
n, sig, msg = (bytes.fromhex(a) for a in sys.argv[1:4])
key = rsa.RSAPublicNumbers(65537, int.from_bytes(n, "big")).public_key()
def ok(salt):
    try:
        key.verify(sig, msg, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=salt), hashes.SHA256())
        return "yes"
    except Exception:
        return "no"
print(ok(padding.PSS.AUTO), ok(padding.PSS.DIGEST_LENGTH))
"#;
    let out = crate::run_ok(
        std::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .args([hex(modulus), hex(signature), hex(message)]),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let verdicts: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(verdicts.len(), 2, "{text}");
    (verdicts[0] == "yes", verdicts[1] == "yes")
}
