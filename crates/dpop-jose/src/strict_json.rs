//! JSON parsing that refuses repeated member names, at any depth.
//!
//! serde_json keeps the last of two members with the same name; RFC 7515 section 5.2 lets a
//! JWS parser either reject such a header or use the last one, and RFC 8725 section 3.10
//! warns that two parsers choosing differently see two different tokens. A verifier that
//! refuses them cannot disagree with anyone about what a proof says.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Why bytes are not a JSON object with unique member names.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ObjectError {
    /// Not JSON, or JSON but not an object.
    NotObject,
    /// A JSON object in which some object repeats a member name.
    DuplicateMember,
}

/// Parses `bytes` as a JSON object whose objects (at every depth) have unique member names.
pub(crate) fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, ObjectError> {
    match serde_json::from_slice::<Strict>(bytes) {
        Ok(Strict(Value::Object(map))) => Ok(map),
        Ok(_) => Err(ObjectError::NotObject),
        // Syntax, EOF and I/O errors come from serde_json itself; the only data error this
        // deserializer raises is a repeated name.
        Err(e) if e.classify() == serde_json::error::Category::Data => {
            Err(ObjectError::DuplicateMember)
        }
        Err(_) => Err(ObjectError::NotObject),
    }
}

/// A [`Value`] read by a visitor that errors on a repeated member name.
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value without repeated member names")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // JSON has no NaN or infinity, so this is always a number; as in serde_json's Value.
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Strict::deserialize(d).map(|s| s.0)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        // Names are compared after unescaping: "typ" and "t\u0079p" are the same name.
        while let Some(name) = access.next_key::<String>()? {
            if map.contains_key(&name) {
                return Err(de::Error::custom("repeated member name"));
            }
            let Strict(value) = access.next_value()?;
            map.insert(name, value);
        }
        Ok(Value::Object(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_members_parse_like_serde_json() {
        let text = br#"{"a":1,"b":[true,null,{"c":"d"}],"e":-2.5,"f":18446744073709551615}"#;
        let strict = parse_object(text).unwrap();
        let plain: Map<String, Value> = serde_json::from_slice(text).unwrap();
        assert_eq!(strict, plain);
    }

    #[test]
    fn repeated_names_are_refused_at_any_depth() {
        for text in [
            r#"{"a":1,"a":1}"#,
            r#"{"typ":"x","t\u0079p":"y"}"#,
            r#"{"jwk":{"x":"1","x":"2"}}"#,
            r#"{"a":[{"b":1,"b":2}]}"#,
        ] {
            assert_eq!(
                parse_object(text.as_bytes()),
                Err(ObjectError::DuplicateMember),
                "{text}"
            );
        }
    }

    #[test]
    fn non_objects_are_refused() {
        for text in ["", "[]", "1", "\"a\"", "{", r#"{"a":}"#, "{}x"] {
            assert_eq!(
                parse_object(text.as_bytes()),
                Err(ObjectError::NotObject),
                "{text}"
            );
        }
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let deep = format!("{{\"a\":{deep}}}");
        assert_eq!(parse_object(deep.as_bytes()), Err(ObjectError::NotObject));
    }
}
