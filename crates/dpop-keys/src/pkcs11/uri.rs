//! RFC 7512 PKCS#11 URIs: `pkcs11:token=My%20Token;id=%01;type=private?module-path=/x.so`.
//!
//! The path (before `?`, attributes separated by `;`) names the token and object; the query
//! (after `?`, separated by `&`) says how to reach it (module, PIN source). Values are
//! percent-decoded; `id` is binary, every other value must be UTF-8. A standard attribute may
//! appear once; unknown and vendor (`x-...`) attributes are kept but not interpreted, as the RFC
//! lets consumers do.

use std::fmt;

use crate::{BackendKind, Error};

/// The object class an URI's `type` attribute names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectType {
    /// `type=private`: a private key.
    Private,
    /// `type=public`: a public key.
    Public,
    /// `type=cert`: a certificate.
    Cert,
    /// `type=secret-key`: a secret key.
    SecretKey,
    /// `type=data`: a data object.
    Data,
}

impl ObjectType {
    fn parse(s: &str) -> Option<ObjectType> {
        Some(match s {
            "private" => ObjectType::Private,
            "public" => ObjectType::Public,
            "cert" => ObjectType::Cert,
            "secret-key" => ObjectType::SecretKey,
            "data" => ObjectType::Data,
            _ => return None,
        })
    }

    /// The attribute value.
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectType::Private => "private",
            ObjectType::Public => "public",
            ObjectType::Cert => "cert",
            ObjectType::SecretKey => "secret-key",
            ObjectType::Data => "data",
        }
    }
}

/// A parsed PKCS#11 URI. Absent attributes are `None`; `Some("")` is an attribute given with an
/// empty value (RFC 7512 allows that, e.g. `serial=`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Pkcs11Uri {
    /// `token`: the token label (`CK_TOKEN_INFO.label`).
    pub token: Option<String>,
    /// `manufacturer`: the token manufacturer.
    pub manufacturer: Option<String>,
    /// `serial`: the token serial number.
    pub serial: Option<String>,
    /// `model`: the token model.
    pub model: Option<String>,
    /// `library-manufacturer`.
    pub library_manufacturer: Option<String>,
    /// `library-description`.
    pub library_description: Option<String>,
    /// `library-version`: `major[.minor]`.
    pub library_version: Option<(u8, u8)>,
    /// `slot-description`.
    pub slot_description: Option<String>,
    /// `slot-manufacturer`.
    pub slot_manufacturer: Option<String>,
    /// `slot-id`: the slot number.
    pub slot_id: Option<u64>,
    /// `object`: the object label (`CKA_LABEL`).
    pub object: Option<String>,
    /// `type`: the object class.
    pub object_type: Option<ObjectType>,
    /// `id`: the object identifier (`CKA_ID`), binary.
    pub id: Option<Vec<u8>>,
    /// `pin-source` (query): where the PIN can be read, e.g. `file:/etc/token_pin`.
    pub pin_source: Option<String>,
    /// Whether the URI carried a `pin-value` (query). The value itself is not kept: a PIN
    /// inside a URI ends up in shell history and process lists, so callers refuse it.
    pub has_pin_value: bool,
    /// `module-name` (query): the module's name without prefix or suffix (`softhsm2`).
    pub module_name: Option<String>,
    /// `module-path` (query): the module's file.
    pub module_path: Option<String>,
    /// Attributes this parser does not interpret (vendor `x-...` and unknown ones), path
    /// first, in order.
    pub other: Vec<(String, String)>,
}

impl fmt::Debug for Pkcs11Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Display never includes a pin-value, so it is safe for Debug too.
        write!(f, "Pkcs11Uri({self})")
    }
}

fn bad(reason: impl Into<String>) -> Error {
    Error::InvalidUri {
        backend: BackendKind::Pkcs11,
        reason: reason.into(),
    }
}

/// Percent-decodes `value`; `attr` names the attribute for error messages.
fn decode(attr: &str, value: &str) -> Result<Vec<u8>, Error> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        bad(format!(
                            "attribute {attr:?}: '%' must be followed by two hex digits"
                        ))
                    })?;
                out.push(hex);
                i += 3;
            }
            b if b.is_ascii_control() || b == b' ' || b == b'#' => {
                return Err(bad(format!(
                    "attribute {attr:?}: character {:?} must be percent-encoded",
                    b as char
                )));
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(out)
}

fn decode_text(attr: &str, value: &str) -> Result<String, Error> {
    String::from_utf8(decode(attr, value)?).map_err(|_| {
        bad(format!(
            "attribute {attr:?} is not UTF-8 after percent-decoding"
        ))
    })
}

fn set<T>(slot: &mut Option<T>, attr: &str, value: T) -> Result<(), Error> {
    if slot.is_some() {
        return Err(bad(format!("attribute {attr:?} appears more than once")));
    }
    *slot = Some(value);
    Ok(())
}

fn parse_version(value: &str) -> Option<(u8, u8)> {
    let (major, minor) = value.split_once('.').unwrap_or((value, "0"));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(major) || !digits(minor) {
        return None;
    }
    Some((major.parse().ok()?, minor.parse().ok()?))
}

impl Pkcs11Uri {
    /// Parses a PKCS#11 URI. Errors name the attribute at fault.
    pub fn parse(uri: &str) -> Result<Pkcs11Uri, Error> {
        let rest = match uri.split_once(':') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("pkcs11") => rest,
            _ => {
                return Err(bad("does not start with \"pkcs11:\""));
            }
        };
        if rest.contains('#') {
            return Err(bad("PKCS#11 URIs have no fragment; encode '#' as %23"));
        }
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        let mut out = Pkcs11Uri::default();
        for attr in path.split(';').filter(|a| !a.is_empty()) {
            let (name, value) = attr.split_once('=').ok_or_else(|| {
                bad(format!(
                    "path attribute {attr:?} has no '=' (expected name=value)"
                ))
            })?;
            out.set_path(name, value)?;
        }
        if let Some(query) = query {
            for attr in query.split('&').filter(|a| !a.is_empty()) {
                let (name, value) = attr.split_once('=').ok_or_else(|| {
                    bad(format!(
                        "query attribute {attr:?} has no '=' (expected name=value)"
                    ))
                })?;
                out.set_query(name, value)?;
            }
        }
        Ok(out)
    }

    fn set_path(&mut self, name: &str, value: &str) -> Result<(), Error> {
        match name {
            "token" => set(&mut self.token, name, decode_text(name, value)?),
            "manufacturer" => set(&mut self.manufacturer, name, decode_text(name, value)?),
            "serial" => set(&mut self.serial, name, decode_text(name, value)?),
            "model" => set(&mut self.model, name, decode_text(name, value)?),
            "library-manufacturer" => set(
                &mut self.library_manufacturer,
                name,
                decode_text(name, value)?,
            ),
            "library-description" => set(
                &mut self.library_description,
                name,
                decode_text(name, value)?,
            ),
            "library-version" => {
                let text = decode_text(name, value)?;
                let version = parse_version(&text).ok_or_else(|| {
                    bad(format!(
                        "library-version {text:?} is not \"major\" or \"major.minor\" (0-255)"
                    ))
                })?;
                set(&mut self.library_version, name, version)
            }
            "slot-description" => set(&mut self.slot_description, name, decode_text(name, value)?),
            "slot-manufacturer" => {
                set(&mut self.slot_manufacturer, name, decode_text(name, value)?)
            }
            "slot-id" => {
                let text = decode_text(name, value)?;
                let id = text
                    .parse::<u64>()
                    .ok()
                    .filter(|_| text.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or_else(|| bad(format!("slot-id {text:?} is not a decimal number")))?;
                set(&mut self.slot_id, name, id)
            }
            "object" => set(&mut self.object, name, decode_text(name, value)?),
            "type" => {
                let text = decode_text(name, value)?;
                let t = ObjectType::parse(&text).ok_or_else(|| {
                    bad(format!(
                        "type {text:?} is not one of public, private, cert, secret-key, data"
                    ))
                })?;
                set(&mut self.object_type, name, t)
            }
            "id" => set(&mut self.id, name, decode(name, value)?),
            "pin-source" | "pin-value" | "module-name" | "module-path" => Err(bad(format!(
                "{name} belongs in the query part (after '?'), not in the path"
            ))),
            _ => self.set_other(name, value),
        }
    }

    fn set_query(&mut self, name: &str, value: &str) -> Result<(), Error> {
        match name {
            "pin-source" => set(&mut self.pin_source, name, decode_text(name, value)?),
            "pin-value" => {
                if self.has_pin_value {
                    return Err(bad("attribute \"pin-value\" appears more than once"));
                }
                self.has_pin_value = true;
                Ok(())
            }
            "module-name" => set(&mut self.module_name, name, decode_text(name, value)?),
            "module-path" => set(&mut self.module_path, name, decode_text(name, value)?),
            _ => self.set_other(name, value),
        }
    }

    fn set_other(&mut self, name: &str, value: &str) -> Result<(), Error> {
        let valid_name = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid_name {
            return Err(bad(format!("{name:?} is not a valid attribute name")));
        }
        self.other
            .push((name.to_owned(), decode_text(name, value)?));
        Ok(())
    }
}

/// Percent-encodes `bytes`, leaving RFC 3986 unreserved characters and `extra` as they are.
fn encode(bytes: &[u8], extra: &[u8], out: &mut String) {
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || extra.contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// Characters RFC 7512 allows unencoded in path values (`pk11-path-res-avail`, minus `&`).
const PATH_SAFE: &[u8] = b":[]@!$'()*+,=";
/// Characters RFC 7512 allows unencoded in query values (`pk11-query-res-avail`).
const QUERY_SAFE: &[u8] = b":[]@!$'()*+,=/?|";

impl fmt::Display for Pkcs11Uri {
    /// Writes the URI with every value percent-encoded as needed; `id` is always encoded byte
    /// by byte. A `pin-value` is never written.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::from("pkcs11:");
        let mut first = true;
        let mut path = |name: &str, value: &[u8], all: bool| {
            if !first {
                out.push(';');
            }
            first = false;
            out.push_str(name);
            out.push('=');
            if all {
                for b in value {
                    out.push_str(&format!("%{b:02X}"));
                }
            } else {
                encode(value, PATH_SAFE, &mut out);
            }
        };
        let text = [
            ("token", &self.token),
            ("manufacturer", &self.manufacturer),
            ("serial", &self.serial),
            ("model", &self.model),
            ("library-manufacturer", &self.library_manufacturer),
            ("library-description", &self.library_description),
        ];
        for (name, value) in text {
            if let Some(v) = value {
                path(name, v.as_bytes(), false);
            }
        }
        if let Some((major, minor)) = self.library_version {
            path(
                "library-version",
                format!("{major}.{minor}").as_bytes(),
                false,
            );
        }
        for (name, value) in [
            ("slot-description", &self.slot_description),
            ("slot-manufacturer", &self.slot_manufacturer),
        ] {
            if let Some(v) = value {
                path(name, v.as_bytes(), false);
            }
        }
        if let Some(id) = self.slot_id {
            path("slot-id", id.to_string().as_bytes(), false);
        }
        if let Some(v) = &self.object {
            path("object", v.as_bytes(), false);
        }
        if let Some(t) = self.object_type {
            path("type", t.as_str().as_bytes(), false);
        }
        if let Some(id) = &self.id {
            path("id", id, true);
        }
        let mut query = Vec::new();
        for (name, value) in [
            ("module-name", &self.module_name),
            ("module-path", &self.module_path),
            ("pin-source", &self.pin_source),
        ] {
            if let Some(v) = value {
                let mut q = format!("{name}=");
                encode(v.as_bytes(), QUERY_SAFE, &mut q);
                query.push(q);
            }
        }
        for (name, value) in &self.other {
            if !first {
                out.push(';');
            }
            first = false;
            out.push_str(name);
            out.push('=');
            encode(value.as_bytes(), PATH_SAFE, &mut out);
        }
        if !query.is_empty() {
            out.push('?');
            out.push_str(&query.join("&"));
        }
        f.write_str(&out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(uri: &str) -> Pkcs11Uri {
        Pkcs11Uri::parse(uri).unwrap_or_else(|e| panic!("{uri}: {e}"))
    }

    #[test]
    fn rfc7512_section_3_3_examples() {
        let u = parse("pkcs11:");
        assert_eq!(u, Pkcs11Uri::default());

        let u = parse("pkcs11:object=my-pubkey;type=public");
        assert_eq!(u.object.as_deref(), Some("my-pubkey"));
        assert_eq!(u.object_type, Some(ObjectType::Public));

        let u = parse("pkcs11:object=my-key;type=private?pin-source=file:/etc/token");
        assert_eq!(u.object.as_deref(), Some("my-key"));
        assert_eq!(u.object_type, Some(ObjectType::Private));
        assert_eq!(u.pin_source.as_deref(), Some("file:/etc/token"));

        let u = parse(
            "pkcs11:token=The%20Software%20PKCS%2311%20Softtoken;\
             manufacturer=Snake%20Oil,%20Inc.;model=1.0;object=my-certificate;\
             type=cert;id=%69%95%3E%5C%F4%BD%EC%91;serial=?pin-source=file:/etc/token_pin",
        );
        assert_eq!(u.token.as_deref(), Some("The Software PKCS#11 Softtoken"));
        assert_eq!(u.manufacturer.as_deref(), Some("Snake Oil, Inc."));
        assert_eq!(u.model.as_deref(), Some("1.0"));
        assert_eq!(u.object.as_deref(), Some("my-certificate"));
        assert_eq!(u.object_type, Some(ObjectType::Cert));
        assert_eq!(
            u.id.as_deref(),
            Some(&[0x69, 0x95, 0x3e, 0x5c, 0xf4, 0xbd, 0xec, 0x91][..])
        );
        assert_eq!(u.serial.as_deref(), Some(""));
        assert_eq!(u.pin_source.as_deref(), Some("file:/etc/token_pin"));

        let u = parse("pkcs11:object=my-sign-key;type=private?module-name=mypkcs11");
        assert_eq!(u.module_name.as_deref(), Some("mypkcs11"));

        let u = parse("pkcs11:object=my-sign-key;type=private?module-path=/mnt/libmypkcs11.so.1");
        assert_eq!(u.module_path.as_deref(), Some("/mnt/libmypkcs11.so.1"));

        let u = parse(
            "pkcs11:token=Software%20PKCS%2311%20softtoken;\
             manufacturer=Snake%20Oil,%20Inc.?pin-value=the-pin",
        );
        assert_eq!(u.token.as_deref(), Some("Software PKCS#11 softtoken"));
        assert!(u.has_pin_value);
        assert!(!format!("{u} {u:?}").contains("the-pin"));

        let u = parse("pkcs11:slot-description=Sun%20Metaslot");
        assert_eq!(u.slot_description.as_deref(), Some("Sun Metaslot"));

        let u = parse(
            "pkcs11:library-manufacturer=Snake%20Oil,%20Inc.;\
             library-description=Soft%20Token%20Library;library-version=1.23",
        );
        assert_eq!(u.library_manufacturer.as_deref(), Some("Snake Oil, Inc."));
        assert_eq!(u.library_description.as_deref(), Some("Soft Token Library"));
        assert_eq!(u.library_version, Some((1, 23)));

        let u = parse(
            "pkcs11:token=My%20token%25%20created%20by%20Joe;library-version=3;\
             id=%01%02%03%Ba%dd%Ef%fe%dd%bb;object=My%20key;type=private",
        );
        assert_eq!(u.token.as_deref(), Some("My token% created by Joe"));
        assert_eq!(u.library_version, Some((3, 0)));
        assert_eq!(
            u.id.as_deref(),
            Some(&[1, 2, 3, 0xba, 0xdd, 0xef, 0xfe, 0xdd, 0xbb][..])
        );
        assert_eq!(u.object.as_deref(), Some("My key"));

        let u = parse(
            "pkcs11:token=A%20name%20with%20a%20substring%20%25%3B;object=my-certificate;type=cert",
        );
        assert_eq!(u.token.as_deref(), Some("A name with a substring %;"));

        let u = parse(
            "pkcs11:token=Name%20with%20a%20small%20A%20with%20acute:%20%C3%A1;\
             object=my-certificate;type=cert",
        );
        assert_eq!(
            u.token.as_deref(),
            Some("Name with a small A with acute: á")
        );

        let u = parse(
            "pkcs11:token=my-token;object=my-certificate;type=cert;vendor-aaa=value-a\
             ?pin-source=file:/etc/token_pin&vendor-bbb=value-b",
        );
        assert_eq!(u.token.as_deref(), Some("my-token"));
        assert_eq!(
            u.other,
            vec![
                ("vendor-aaa".to_owned(), "value-a".to_owned()),
                ("vendor-bbb".to_owned(), "value-b".to_owned())
            ]
        );
    }

    #[test]
    fn errors_name_the_problem() {
        let cases = [
            ("file:/x", "pkcs11:"),
            ("pkcs11:token=a;token=b", "more than once"),
            ("pkcs11:token=a%2", "two hex digits"),
            ("pkcs11:token=a%zz", "two hex digits"),
            ("pkcs11:type=key", "type \"key\""),
            ("pkcs11:object", "no '='"),
            ("pkcs11:object=a?module-path", "no '='"),
            ("pkcs11:module-path=/x.so", "query part"),
            ("pkcs11:slot-id=1x", "slot-id"),
            ("pkcs11:library-version=1.x", "library-version"),
            ("pkcs11:token=%FF", "not UTF-8"),
            ("pkcs11:token=a b", "percent-encoded"),
            ("pkcs11:token=a#b", "fragment"),
            (
                "pkcs11:object=a?pin-source=x&pin-source=y",
                "more than once",
            ),
        ];
        for (uri, expected) in cases {
            let err = Pkcs11Uri::parse(uri).expect_err(uri).to_string();
            assert!(err.contains(expected), "{uri}: {err:?} lacks {expected:?}");
        }
    }

    #[test]
    fn display_round_trips() {
        for uri in [
            "pkcs11:token=YubiKey%20PIV%20%2312345678;id=%01;type=private",
            "pkcs11:token=a%3Bb;serial=42;object=k%2Fx;type=private;id=%00%FF\
             ?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/pin",
            "pkcs11:library-version=2.40;slot-id=7;x-vendor=v",
        ] {
            let parsed = parse(uri);
            let again = parse(&parsed.to_string());
            assert_eq!(parsed, again, "{uri} -> {parsed}");
        }
        assert_eq!(
            parse("pkcs11:token=YubiKey%20PIV%20%2312345678;id=%01;type=private").to_string(),
            "pkcs11:token=YubiKey%20PIV%20%2312345678;type=private;id=%01"
        );
        assert_eq!(parse("PKCS11:object=a").object.as_deref(), Some("a"));
    }
}
