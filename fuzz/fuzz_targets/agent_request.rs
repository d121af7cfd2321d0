//! The agent without I/O: each input line goes through `parse_request` and, when it parses,
//! `dispatch::handle` against a keyring that holds one software key (`k`, ES256) when each
//! input starts, as the connection loop would run it. Every reply is one JSON object on one
//! line, echoes the id, and never repeats the text of an imported PEM.
#![no_main]

use std::sync::{Arc, OnceLock};

use dpop_agent::dispatch::handle;
use dpop_agent::peer::Peer;
use dpop_agent::state::State;
use dpop_jose::Algorithm;
use dpop_keys::software::SoftwareBackend;
use dpop_keys::{BackendKind, KeyLabel, Keyring};
use dpop_protocol::{Op, encode_err, parse_request};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

/// The one key every input starts with.
const KEY: &str = "k";

fn state() -> &'static Arc<State> {
    static STATE: OnceLock<Arc<State>> = OnceLock::new();
    STATE.get_or_init(|| {
        Arc::new(State::new(
            Arc::new(Keyring::new(vec![Arc::new(SoftwareBackend::ephemeral())])),
            false,
        ))
    })
}

/// Brings the keyring back to one key `k`, whatever the previous input did to it: cheaper
/// than a new keyring per input, and inputs stay independent.
fn reset(keyring: &Keyring) {
    let mut have_key = false;
    for info in keyring.list() {
        if info.label.as_str() == KEY {
            have_key = true;
        } else {
            keyring.delete(info.label.as_str()).expect("delete");
        }
    }
    if !have_key {
        let label = KeyLabel::new(KEY).expect("valid label");
        keyring
            .generate(BackendKind::Software, &label, Algorithm::ES256)
            .expect("software key");
    }
}

/// The base64 runs of an imported PEM, which no reply may repeat (unless the same text is
/// also in another member of the request, which a reply may legitimately name).
fn secret_runs(line: &[u8]) -> Vec<String> {
    let Ok(Value::Object(mut request)) = serde_json::from_slice::<Value>(line) else {
        return Vec::new();
    };
    let Some(Value::String(pem)) = request.remove("pem") else {
        return Vec::new();
    };
    let others = Value::Object(request).to_string();
    pem.split(|c: char| !(c.is_ascii_alphanumeric() || c == '+' || c == '/'))
        .filter(|run| run.len() >= 16 && !others.contains(run))
        .map(str::to_owned)
        .collect()
}

fn check_reply(reply: &[u8], id: &Value, secrets: &[String]) {
    assert_eq!(reply.last(), Some(&b'\n'), "reply is not one line");
    let body = &reply[..reply.len() - 1];
    assert!(!body.contains(&b'\n'), "reply spans lines");
    let value: Value = serde_json::from_slice(body).expect("reply is JSON");
    assert!(value["ok"].is_boolean(), "reply without ok");
    // Compared as text: serde_json's default float parsing does not round-trip every float
    // (6e45 comes back as 5.999999999999999e45), and the id is echoed as it was parsed.
    let id_member = format!("\"id\":{id}");
    assert!(
        value.get("id").is_some()
            && body
                .windows(id_member.len())
                .any(|w| w == id_member.as_bytes()),
        "id {id} not echoed"
    );
    let text = String::from_utf8_lossy(body);
    for run in secrets {
        assert!(!text.contains(run.as_str()), "reply repeats PEM text {run}");
    }
}

fuzz_target!(|data: &[u8]| {
    let state = state();
    reset(&state.keyring);
    // At most a few requests per input, as a pipelining client would send them.
    for line in data.split(|&b| b == b'\n').take(8) {
        let secrets = secret_runs(line);
        match parse_request(line) {
            Ok(request) => {
                // RSA key generation takes ~100 ms; it adds nothing to parsing and dispatch.
                if let Op::GenerateKey(g) = &request.op
                    && matches!(g.alg, Some(Algorithm::RS256 | Algorithm::PS256))
                {
                    continue;
                }
                let id = request.id.clone();
                let reply = runtime().block_on(handle(state, &Peer::new(None), request));
                check_reply(&reply, &id, &secrets);
            }
            Err(bad) => {
                let id = bad.id.clone();
                check_reply(&encode_err(bad.id, bad.error), &id, &secrets);
            }
        }
    }
});
