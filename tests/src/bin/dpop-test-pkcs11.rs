//! `dpop-test-pkcs11`: looks at a PKCS#11 token from a process of its own, for the end-to-end
//! tests (the `pkcs11_*` modules of `tests/e2e`, through `dpop_tests::pkcs11::inspect`).
//!
//! SoftHSM2 reads its token directory once, in `C_Initialize`, and a module can be initialised
//! once per process. Each test agent has a SoftHSM2 configuration of its own, and tokens come
//! and go while the tests run, so the test process cannot load the module once and look at
//! every token with it. This helper is started per question instead, with the agent's
//! `SOFTHSM2_CONF`, and answers with one JSON document on standard output.
//!
//! ```text
//! dpop-test-pkcs11 MODULE TOKEN_LABEL token-info          # serial and PIN flags, no login
//! dpop-test-pkcs11 MODULE TOKEN_LABEL objects             # every key object: class, id, label
//! dpop-test-pkcs11 MODULE TOKEN_LABEL private-key ID_HEX  # what the token says about a key,
//!                                                         # its allowed mechanisms too
//! dpop-test-pkcs11 MODULE TOKEN_LABEL sign ID_HEX         # a plain ECDSA C_Sign with the key
//! dpop-test-pkcs11 MODULE TOKEN_LABEL create-exposed-ec-key ID_HEX
//! ```
//!
//! `create-exposed-ec-key` stores a P-256 private key that is neither sensitive nor
//! unextractable (and no public key), so that the tests can show their check tells such a key
//! apart. `objects`, `private-key`, `sign` and `create-exposed-ec-key` log in as the user with the PIN in `DPOP_TEST_PKCS11_PIN`
//! (never on the command line). Errors go to standard error with exit status 1.

use std::collections::BTreeMap;
use std::process::ExitCode;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{
    Attribute, AttributeInfo, AttributeType, KeyType, ObjectClass, ObjectHandle,
};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use serde_json::{Value, json};

/// Where the helper reads the user PIN.
const PIN_VAR: &str = "DPOP_TEST_PKCS11_PIN";

/// The parts of a private key that must never leave the token, by key type (`CKK_...`).
fn secret_parts(key_type: &str) -> Vec<AttributeType> {
    match key_type {
        "CKK_RSA" => vec![
            AttributeType::PrivateExponent,
            AttributeType::Prime1,
            AttributeType::Prime2,
            AttributeType::Exponent1,
            AttributeType::Exponent2,
            AttributeType::Coefficient,
        ],
        _ => vec![AttributeType::Value],
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(value) => {
            println!("{value}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dpop-test-pkcs11: {e}");
            ExitCode::FAILURE
        }
    }
}

type Result<T> = std::result::Result<T, String>;

fn run(args: &[String]) -> Result<Value> {
    let [module, label, command, rest @ ..] = args else {
        return Err(
            "usage: dpop-test-pkcs11 MODULE TOKEN_LABEL token-info|objects|private-key ID_HEX"
                .into(),
        );
    };
    let ctx = Pkcs11::new(module).map_err(|e| format!("loading {module}: {e}"))?;
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .map_err(|e| format!("C_Initialize: {e}"))?;
    let slot = find_slot(&ctx, label)?;
    match (command.as_str(), rest) {
        ("token-info", []) => {
            let info = ctx
                .get_token_info(slot)
                .map_err(|e| format!("C_GetTokenInfo: {e}"))?;
            Ok(json!({
                "label": info.label().trim_end(),
                "serial": info.serial_number().trim_end(),
                "user_pin_count_low": info.user_pin_count_low(),
                "user_pin_final_try": info.user_pin_final_try(),
                "user_pin_locked": info.user_pin_locked(),
            }))
        }
        ("objects", []) => {
            let session = login(&ctx, slot)?;
            let mut objects = Vec::new();
            for class in [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY] {
                let found = session
                    .find_objects(&[Attribute::Class(class)])
                    .map_err(|e| format!("C_FindObjects: {e}"))?;
                for object in found {
                    let (id, label) = id_and_label(&session, object)?;
                    objects.push(json!({
                        "class": if class == ObjectClass::PRIVATE_KEY { "private" } else { "public" },
                        "id": hex(&id),
                        "label": label,
                    }));
                }
            }
            Ok(Value::Array(objects))
        }
        ("private-key", [id]) => {
            let id = unhex(id)?;
            let session = login(&ctx, slot)?;
            let find = |class| {
                session
                    .find_objects(&[Attribute::Class(class), Attribute::Id(id.clone())])
                    .map_err(|e| format!("C_FindObjects: {e}"))
            };
            let public = find(ObjectClass::PUBLIC_KEY)?.len();
            let mut private = Vec::new();
            for object in find(ObjectClass::PRIVATE_KEY)? {
                private.push(describe_private_key(&session, object)?);
            }
            Ok(json!({ "private_keys": private, "public_keys": public }))
        }
        ("sign", [id]) => {
            let id = unhex(id)?;
            let session = login(&ctx, slot)?;
            let keys = session
                .find_objects(&[
                    Attribute::Class(ObjectClass::PRIVATE_KEY),
                    Attribute::Id(id),
                ])
                .map_err(|e| format!("C_FindObjects: {e}"))?;
            let [key] = keys[..] else {
                return Err(format!("{} private keys with that id", keys.len()));
            };
            // C_SignInit then C_Sign, nothing in between: what a plain application does.
            Ok(match session.sign(&Mechanism::Ecdsa, key, &[0x5a; 32]) {
                Ok(signature) => json!({ "signature_len": signature.len() }),
                // Named as cryptoki spells it (`UserNotLoggedIn` for CKR_USER_NOT_LOGGED_IN).
                Err(cryptoki::error::Error::Pkcs11(rv, _)) => json!({ "error": format!("{rv:?}") }),
                Err(e) => return Err(format!("C_Sign: {e}")),
            })
        }
        ("create-exposed-ec-key", [id]) => {
            let id = unhex(id)?;
            let session = login_rw(&ctx, slot)?;
            session
                .create_object(&[
                    Attribute::Class(ObjectClass::PRIVATE_KEY),
                    Attribute::KeyType(KeyType::EC),
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(false),
                    Attribute::Extractable(true),
                    Attribute::Sign(true),
                    // DER OID prime256v1
                    Attribute::EcParams(vec![
                        0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
                    ]),
                    Attribute::Value(vec![0x11; 32]),
                    Attribute::Id(id),
                    Attribute::Label(b"exposed".to_vec()),
                ])
                .map_err(|e| format!("C_CreateObject: {e}"))?;
            Ok(json!({ "created": true }))
        }
        _ => Err(format!("unknown command {command:?} {rest:?}")),
    }
}

/// The slot of the token `label`. A slot whose token info cannot be read is named in the
/// error with the reason, rather than passed over: a token that answers `C_GetTokenInfo`
/// badly must not look like a missing one.
fn find_slot(ctx: &Pkcs11, label: &str) -> Result<Slot> {
    let slots = ctx
        .get_slots_with_token()
        .map_err(|e| format!("C_GetSlotList: {e}"))?;
    let mut unreadable = Vec::new();
    for slot in slots {
        match ctx.get_token_info(slot) {
            Ok(info) if info.label().trim_end() == label => return Ok(slot),
            Ok(_) => {}
            // Named as cryptoki spells the return value (`DeviceError`), or its parse error.
            Err(cryptoki::error::Error::Pkcs11(rv, _)) => {
                unreadable.push(format!("slot {}: C_GetTokenInfo: {rv:?}", slot.id()))
            }
            Err(e) => unreadable.push(format!("slot {}: C_GetTokenInfo: {e}", slot.id())),
        }
    }
    let mut message = format!("no token labelled {label:?}");
    if !unreadable.is_empty() {
        message.push_str(&format!(
            " among the slots that could be read; {}",
            unreadable.join("; ")
        ));
    }
    Err(message)
}

fn login(ctx: &Pkcs11, slot: Slot) -> Result<Session> {
    let session = ctx
        .open_ro_session(slot)
        .map_err(|e| format!("C_OpenSession: {e}"))?;
    user_login(session)
}

fn login_rw(ctx: &Pkcs11, slot: Slot) -> Result<Session> {
    let session = ctx
        .open_rw_session(slot)
        .map_err(|e| format!("C_OpenSession: {e}"))?;
    user_login(session)
}

fn user_login(session: Session) -> Result<Session> {
    let pin = std::env::var(PIN_VAR).map_err(|_| format!("{PIN_VAR} is not set"))?;
    session
        .login(UserType::User, Some(&AuthPin::from(pin)))
        .map_err(|e| format!("C_Login: {e}"))?;
    Ok(session)
}

fn id_and_label(session: &Session, object: ObjectHandle) -> Result<(Vec<u8>, String)> {
    let attributes = session
        .get_attributes(object, &[AttributeType::Id, AttributeType::Label])
        .map_err(|e| format!("C_GetAttributeValue: {e}"))?;
    let mut id = Vec::new();
    let mut label = String::new();
    for attribute in attributes {
        match attribute {
            Attribute::Id(value) => id = value,
            Attribute::Label(value) => label = String::from_utf8_lossy(&value).into_owned(),
            _ => {}
        }
    }
    Ok((id, label))
}

/// Key type, the token's answer for each secret part (`sensitive`, `unavailable`,
/// `available:<bytes>`, `type_invalid`), which secret parts a plain read returned anyway, the
/// protection flags, and `CKA_ALLOWED_MECHANISMS`.
fn describe_private_key(session: &Session, object: ObjectHandle) -> Result<Value> {
    let attrs = |types: &[AttributeType]| {
        session
            .get_attributes(object, types)
            .map_err(|e| format!("C_GetAttributeValue: {e}"))
    };
    let key_type = attrs(&[AttributeType::KeyType])?
        .into_iter()
        .find_map(|a| match a {
            Attribute::KeyType(t) => Some(t.to_string()),
            _ => None,
        })
        .ok_or("the private key has no CKA_KEY_TYPE")?;
    let parts = secret_parts(&key_type);
    let infos = session
        .get_attribute_info(object, &parts)
        .map_err(|e| format!("C_GetAttributeValue (sizes): {e}"))?;
    let mut secrets = BTreeMap::new();
    for (part, info) in parts.iter().zip(infos) {
        let answer = match info {
            AttributeInfo::Sensitive => "sensitive".to_owned(),
            AttributeInfo::Unavailable => "unavailable".to_owned(),
            AttributeInfo::TypeInvalid => "type_invalid".to_owned(),
            AttributeInfo::Available(n) => format!("available:{n}"),
        };
        secrets.insert(part.to_string(), answer);
    }
    // A plain read of the secret parts: a token that keeps its keys returns none of them.
    let read: Vec<String> = attrs(&parts)?
        .iter()
        .map(|a| a.attribute_type().to_string())
        .collect();
    let mut flags = BTreeMap::new();
    let (_, label) = id_and_label(session, object)?;
    for attribute in attrs(&[
        AttributeType::Token,
        AttributeType::Private,
        AttributeType::Sensitive,
        AttributeType::AlwaysSensitive,
        AttributeType::Extractable,
        AttributeType::NeverExtractable,
        AttributeType::Sign,
        AttributeType::AlwaysAuthenticate,
    ])? {
        let (name, value) = match attribute {
            Attribute::Token(v) => ("token", v),
            Attribute::Private(v) => ("private", v),
            Attribute::Sensitive(v) => ("sensitive", v),
            Attribute::AlwaysSensitive(v) => ("always_sensitive", v),
            Attribute::Extractable(v) => ("extractable", v),
            Attribute::NeverExtractable(v) => ("never_extractable", v),
            Attribute::Sign(v) => ("sign", v),
            Attribute::AlwaysAuthenticate(v) => ("always_authenticate", v),
            _ => continue,
        };
        flags.insert(name, value);
    }
    // CKA_ALLOWED_MECHANISMS as the specification names them (`CKM_ECDSA`); empty when unset.
    let allowed: Vec<String> = attrs(&[AttributeType::AllowedMechanisms])?
        .into_iter()
        .find_map(|a| match a {
            Attribute::AllowedMechanisms(m) => Some(m.iter().map(|m| m.to_string()).collect()),
            _ => None,
        })
        .unwrap_or_default();
    Ok(json!({
        "key_type": key_type,
        "label": label,
        "secrets": secrets,
        "read": read,
        "flags": flags,
        "allowed_mechanisms": allowed,
    }))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Result<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return Err(format!("odd-length hex {text:?}"));
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).map_err(|e| format!("{text:?}: {e}")))
        .collect()
}
