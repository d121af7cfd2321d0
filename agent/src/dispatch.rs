//! One function per op. The agent, never the client, sets `iat` and `jti`.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dpop_jose::{Claims, Htu, Method, finish_proof, sign_proof, signing_input};
use dpop_keys::{BackendKind, KeyLabel, KeySigner, Keyring, SignerRef};
use dpop_protocol::{
    AdoptKey, DeleteKey, EmptyReply, ErrorCode, GenerateKey, HelloReply, ImportKey, KeyDescription,
    KeyPolicy, KeyReply, ListKeysReply, Op, PROTOCOL_VERSION, ProofReply, ReportNonce, Request,
    SetPolicy, SignProof, StatusReply, WireError, encode_err, encode_ok,
};
use tracing::{debug, info};
use zeroize::Zeroizing;

use crate::locked::LockedBytes;
use crate::peer::Peer;
use crate::policy::{Manage, Policies, SignContext};
use crate::state::{State, key_description};
use crate::wire_error::keys_error;

/// Token signatures that usually take at most this long run on the async worker itself.
const INLINE_SIGN_LIMIT: Duration = Duration::from_micros(250);

/// Answers one request from `peer` with one reply line.
pub async fn handle(state: &Arc<State>, peer: &Peer, request: Request) -> Vec<u8> {
    let id = request.id;
    let result = match request.op {
        Op::Hello {} => Ok(encode_ok(&id, hello(state))),
        Op::ListKeys {} => Ok(encode_ok(
            &id,
            ListKeysReply {
                keys: state
                    .keyring
                    .list()
                    .iter()
                    .map(|info| KeyDescription {
                        nonce_origins: state.nonces.origins(info.label.as_str()),
                        ..state.describe(info)
                    })
                    .collect(),
            },
        )),
        Op::ReportNonce(req) => report_nonce(state, req).map(|done| encode_ok(&id, done)),
        Op::Status {} => Ok(encode_ok(&id, status(state))),
        Op::SetPolicy(req) => set_policy(state, peer, req)
            .await
            .map(|key| encode_ok(&id, key)),
        Op::Lock(req) => {
            let done = state
                .lock
                .lock(Zeroizing::new(req.passphrase), &state.keyring)
                .await;
            if done.is_ok() {
                info!("locked");
            }
            done.map(|()| encode_ok(&id, EmptyReply {}))
        }
        Op::Unlock(req) => {
            let done = state
                .lock
                .unlock(Zeroizing::new(req.passphrase), &state.keyring)
                .await;
            if done.is_ok() {
                info!("unlocked");
            }
            done.map(|()| encode_ok(&id, EmptyReply {}))
        }
        Op::SignProof(req) => sign(state, peer, req)
            .await
            .map(|proof| encode_ok(&id, proof)),
        Op::GenerateKey(req) => generate(state, req).await.map(|key| encode_ok(&id, key)),
        Op::ImportKey(req) => import(state, req).await.map(|key| encode_ok(&id, key)),
        Op::AdoptKey(req) => adopt(state, req).await.map(|key| encode_ok(&id, key)),
        Op::DeleteKey(req) => delete(state, peer, req)
            .await
            .map(|key| encode_ok(&id, key)),
    };
    result.unwrap_or_else(|error| {
        debug!(code = ?error.code, "request failed: {}", error.message);
        encode_err(id, error)
    })
}

fn hello(state: &State) -> HelloReply {
    HelloReply {
        protocol: PROTOCOL_VERSION,
        agent: concat!("dpop-agent/", env!("CARGO_PKG_VERSION")).to_owned(),
        backends: state
            .keyring
            .backend_kinds()
            .iter()
            .map(|b| b.to_string())
            .collect(),
        compiled_backends: BackendKind::compiled()
            .iter()
            .map(|b| b.to_string())
            .collect(),
        software_persistent: state.software_persistent,
    }
}

fn status(state: &State) -> StatusReply {
    let hello = hello(state);
    StatusReply {
        agent: hello.agent,
        protocol: hello.protocol,
        pid: std::process::id(),
        backends: hello.backends,
        locked: state.lock.is_locked(),
        keys: state.keyring.len(),
        software_persistent: state.software_persistent,
    }
}

fn jose_err(e: &dpop_jose::Error) -> WireError {
    WireError::from(e)
}

fn bad_request(message: impl Into<String>) -> WireError {
    WireError::new(ErrorCode::BadRequest, message)
}

/// `sign_proof`, with its audit line: every decision, allowed or refused and why, with the
/// key, the request's method and origin, and the client; never the token or the proof.
async fn sign(state: &State, peer: &Peer, req: SignProof) -> Result<ProofReply, WireError> {
    let htu = Htu::from_url(&req.htu);
    let key = state.keyring.get(&req.key);
    let result = match (&key, &htu) {
        (Ok(key), Ok(htu)) => sign_checked(state, key, &req, htu, peer).await,
        (Err(e), _) => Err(keys_error(e)),
        (_, Err(e)) => Err(jose_err(e)),
    };
    let origin = htu.as_ref().map_or("(invalid URL)", |h| h.origin());
    let jkt = key.as_ref().map_or("", |k| k.meta().info().jkt.as_str());
    let exe = peer
        .exe()
        .map_or(Cow::Borrowed("unknown"), |p| p.to_string_lossy());
    let pid = peer.pid.unwrap_or(0);
    match &result {
        Ok(_) => info!(
            target: "audit",
            key = %req.key, jkt = %jkt, htm = %req.htm, origin = %origin, pid, exe = %exe,
            "sign_proof allowed"
        ),
        Err(e) => info!(
            target: "audit",
            key = %req.key, jkt = %jkt, htm = %req.htm, origin = %origin, pid, exe = %exe,
            code = %e.code, reason = %e.message,
            "sign_proof refused"
        ),
    }
    result
}

async fn sign_checked(
    state: &State,
    key: &SignerRef,
    req: &SignProof,
    htu: &Htu,
    peer: &Peer,
) -> Result<ProofReply, WireError> {
    state.lock.check()?;
    let method = Method::new(&req.htm).map_err(|e| jose_err(&e))?;
    let now = unix_now()?;
    state
        .policies
        .check(&SignContext {
            label: &req.key,
            jkt: &key.meta().info().jkt,
            origin: htu.origin(),
            peer,
            now,
            lock: &state.lock,
        })
        .await?;
    // An explicit nonce wins; otherwise the one a server last sent for this origin. A nonce
    // never goes to another origin than the one that issued it.
    let stored;
    let nonce = match req.nonce.as_deref() {
        Some(nonce) => Some(nonce),
        None => {
            stored = state.nonces.get(&req.key, htu.origin());
            stored.as_deref()
        }
    };
    let claims = Claims::new(&method, htu, now);
    let claims = match (&req.access_token, &req.ath) {
        (Some(_), Some(_)) => return Err(bad_request("give access_token or ath, not both")),
        (Some(token), None) => claims.with_access_token(token),
        (None, Some(ath)) => claims.with_ath(ath.clone()),
        (None, None) => Ok(claims),
    }
    .and_then(|c| c.with_nonce(nonce))
    .map_err(|e| jose_err(&e))?;
    debug!(key = %req.key, htm = %claims.htm, htu = %claims.htu, "sign_proof");
    if !key.is_blocking() {
        // A software key: signed in place, in microseconds.
        return sign_proof(&**key, &claims)
            .map(|proof| ProofReply { proof })
            .map_err(|e| match &e {
                dpop_jose::Error::Signer(inner) => match inner.downcast_ref::<dpop_keys::Error>() {
                    Some(k) => keys_error(k),
                    None => jose_err(&e),
                },
                _ => jose_err(&e),
            });
    }
    // A token or a TPM: the signing input is made once, whichever way the signer takes it.
    let header = key.meta().header();
    let input = signing_input(header, &claims);
    let started = Instant::now();
    let signature = match key.sign_detached(input.as_bytes()) {
        // A signer with a thread of its own (a TPM) signs while this task awaits its answer:
        // no runtime thread blocks, none is handed over.
        Some(answer) => match answer.map_err(|e| keys_error(&e))?.await {
            Ok(signed) => signed,
            Err(_) => {
                return Err(WireError::new(
                    ErrorCode::BackendError,
                    "the signer stopped before answering",
                ));
            }
        },
        None => {
            let sign = || KeySigner::sign(&**key, input.as_bytes());
            if key
                .meta()
                .typical_sign_time()
                .is_some_and(|t| t <= INLINE_SIGN_LIMIT)
            {
                // A fast token (SoftHSM2, a network HSM nearby): as cheap as a software
                // signature, and handing it to another thread would cost more than it takes.
                sign()
            } else {
                // A slow or not yet measured token (a YubiKey takes milliseconds): let the
                // runtime move this worker's other tasks elsewhere while it waits.
                tokio::task::block_in_place(sign)
            }
        }
    };
    key.meta().observe_sign_time(started.elapsed());
    let signature = signature.map_err(|e| keys_error(&e))?;
    finish_proof(header, input, &signature)
        .map(|proof| ProofReply { proof })
        .map_err(|e| jose_err(&e))
}

fn parse_label(label: &str) -> Result<KeyLabel, WireError> {
    KeyLabel::new(label).map_err(|e| keys_error(&e))
}

fn parse_backend(backend: Option<&str>) -> Result<BackendKind, WireError> {
    backend
        .unwrap_or("software")
        .parse()
        .map_err(|e| keys_error(&e))
}

fn unix_now() -> Result<i64, WireError> {
    Ok(SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| WireError::new(ErrorCode::Internal, "system clock is before 1970"))?
        .as_secs() as i64)
}

/// The policy a new key gets: the one asked for (checked before the key is made), with the
/// agent's default lifetime (`-t`) when it names none.
fn new_key_policy(state: &State, asked: Option<KeyPolicy>) -> Result<KeyPolicy, WireError> {
    let mut policy = asked.unwrap_or_default();
    Policies::validate(&policy)?;
    if policy.expires_at.is_none()
        && let Some(lifetime) = state.default_lifetime
    {
        policy.expires_at = Some(unix_now()?.saturating_add_unsigned(lifetime));
    }
    Ok(policy)
}

/// Runs a keyring change on the blocking pool (backends touch disks and tokens), then sets
/// the new key's policy; a key whose policy cannot be saved is removed again, so no key is
/// ever served without the policy it was made with.
async fn blocking_change(
    state: &State,
    policy: KeyPolicy,
    change: impl FnOnce(&Keyring) -> Result<SignerRef, dpop_keys::Error> + Send + 'static,
) -> Result<KeyReply, WireError> {
    let keyring = state.keyring.clone();
    let key = tokio::task::spawn_blocking(move || change(&keyring))
        .await
        .map_err(|_| WireError::new(ErrorCode::Internal, "key task failed"))?
        .map_err(|e| keys_error(&e))?;
    let info = key.meta().info();
    if !policy.is_empty()
        && let Err(e) = state
            .policies
            .set(&info.label, &info.jkt, info.persistent, policy)
    {
        let keyring = state.keyring.clone();
        let label = info.label.to_string();
        let _ = tokio::task::spawn_blocking(move || keyring.delete(&label)).await;
        return Err(e);
    }
    info!(label = %info.label, backend = %info.backend, alg = %info.alg, jkt = %info.jkt, "key added");
    Ok(KeyReply {
        key: state.describe(info),
    })
}

/// `set_policy`: tightening is free for the key's allowed clients; anything else needs the
/// user's yes (see `policy/manage.rs`).
async fn set_policy(state: &State, peer: &Peer, req: SetPolicy) -> Result<KeyReply, WireError> {
    state.lock.check()?;
    let key = state.keyring.get(&req.key).map_err(|e| keys_error(&e))?;
    let info = key.meta().info();
    let new = Policies::prepare(req.policy, &info.jkt)?;
    // Held until the change is made: no other change or deletion of a key comes between
    // what the user was asked and what happens.
    let _managing = state.policies.managing().await;
    let old = state.policies.get_for(info.label.as_str(), &info.jkt);
    state
        .policies
        .authorize(
            info.label.as_str(),
            peer,
            &state.lock,
            &Manage::SetPolicy {
                old: &old,
                new: new.policy(),
            },
        )
        .await?;
    state.lock.check()?;
    state.policies.apply(&info.label, info.persistent, new)?;
    info!(label = %info.label, "policy set");
    Ok(KeyReply {
        key: state.describe(info),
    })
}

async fn generate(state: &State, req: GenerateKey) -> Result<KeyReply, WireError> {
    let _unlocked = state.lock.creating_key().await?;
    let label = parse_label(&req.label)?;
    let backend = parse_backend(req.backend.as_deref())?;
    let alg = req.alg.unwrap_or(dpop_jose::Algorithm::ES256);
    let policy = new_key_policy(state, req.policy)?;
    blocking_change(state, policy, move |k| k.generate(backend, &label, alg)).await
}

async fn import(state: &State, req: ImportKey) -> Result<KeyReply, WireError> {
    let _unlocked = state.lock.creating_key().await?;
    let label = parse_label(&req.label)?;
    let backend = parse_backend(req.backend.as_deref())?;
    // The PEM stays for the whole import (scrypt for a key file, a token round trip): on
    // locked, undumpable pages. The request's copy is wiped when it is freed (`wipe_alloc`).
    let pem = Zeroizing::new(req.pem.into_bytes());
    let pem = LockedBytes::copy_from(&pem)
        .map_err(|e| WireError::new(ErrorCode::Internal, format!("secret buffer: {e}")))?;
    let alg = req.alg;
    let policy = new_key_policy(state, req.policy)?;
    blocking_change(state, policy, move |k| {
        k.import_pem(backend, &label, &pem, alg)
    })
    .await
}

async fn adopt(state: &State, req: AdoptKey) -> Result<KeyReply, WireError> {
    let _unlocked = state.lock.creating_key().await?;
    let label = parse_label(&req.label)?;
    // Without a backend, the keyring takes it from the URI's scheme.
    let backend = match req.backend.as_deref() {
        Some(name) => Some(parse_backend(Some(name))?),
        None => None,
    };
    let alg = req.alg;
    let uri = req.uri;
    let policy = new_key_policy(state, req.policy)?;
    blocking_change(state, policy, move |k| k.adopt(backend, &uri, &label, alg)).await
}

fn report_nonce(state: &State, req: ReportNonce) -> Result<EmptyReply, WireError> {
    // Only for a key the agent holds: the store must not fill up with unknown labels.
    state.keyring.get(&req.key).map_err(|e| keys_error(&e))?;
    let origin = Htu::from_url(&req.origin).map_err(|e| jose_err(&e))?;
    dpop_jose::check_nonce(&req.nonce).map_err(|e| jose_err(&e))?;
    state.nonces.report(&req.key, origin.origin(), &req.nonce);
    debug!(key = %req.key, origin = %origin.origin(), "nonce reported");
    Ok(EmptyReply {})
}

/// `delete_key`: a key with a policy goes only with the user's yes (see `policy/manage.rs`).
async fn delete(state: &State, peer: &Peer, req: DeleteKey) -> Result<KeyReply, WireError> {
    state.lock.check()?;
    let _managing = state.policies.managing().await;
    // An unknown label is answered by the keyring below.
    if let Ok(key) = state.keyring.get(&req.label) {
        let info = key.meta().info();
        let old = state.policies.get_for(info.label.as_str(), &info.jkt);
        state
            .policies
            .authorize(
                info.label.as_str(),
                peer,
                &state.lock,
                &Manage::Delete { old: &old },
            )
            .await?;
        state.lock.check()?;
    }
    let keyring = state.keyring.clone();
    let label = req.label;
    let info = tokio::task::spawn_blocking(move || keyring.delete(&label))
        .await
        .map_err(|_| WireError::new(ErrorCode::Internal, "key task failed"))?
        .map_err(|e| keys_error(&e))?;
    state.nonces.forget_key(info.label.as_str());
    state.policies.forget(&info.label);
    info!(label = %info.label, backend = %info.backend, "key deleted");
    Ok(KeyReply {
        key: key_description(&info),
    })
}
