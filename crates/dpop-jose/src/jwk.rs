use serde::{Deserialize, Serialize};

use crate::{Algorithm, Error, b64url_encode};

/// A public JSON Web Key (RFC 7517) of a kind DPoP can use. Never holds private members.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kty")]
pub enum Jwk {
    /// Elliptic curve key (`crv` P-256 or P-384), coordinates base64url, fixed length.
    #[serde(rename = "EC")]
    Ec {
        /// Curve name.
        crv: String,
        /// X coordinate.
        x: String,
        /// Y coordinate.
        y: String,
    },
    /// RSA key: modulus and exponent, base64url big-endian without leading zeros.
    #[serde(rename = "RSA")]
    Rsa {
        /// Modulus.
        n: String,
        /// Public exponent.
        e: String,
    },
    /// Octet key pair (`crv` Ed25519).
    #[serde(rename = "OKP")]
    Okp {
        /// Curve name.
        crv: String,
        /// Public key.
        x: String,
    },
}

/// JWK members that only private keys have (RFC 7518 section 6).
#[cfg(feature = "crypto")]
pub(crate) const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

impl Jwk {
    /// An EC public key from its SEC1 uncompressed point (`04 || x || y`). The coordinate
    /// length fixes the curve; leading zero bytes of x and y are kept, as RFC 7518 requires.
    pub fn from_ec_point(point: &[u8]) -> Result<Jwk, Error> {
        let crv = match point.len() {
            65 => "P-256",
            97 => "P-384",
            n => {
                return Err(Error::InvalidJwk {
                    reason: format!("EC point of {n} bytes is neither P-256 nor P-384"),
                });
            }
        };
        if point[0] != 4 {
            return Err(Error::InvalidJwk {
                reason: "EC point is not in uncompressed form".into(),
            });
        }
        let half = (point.len() - 1) / 2;
        Ok(Jwk::Ec {
            crv: crv.into(),
            x: b64url_encode(&point[1..1 + half]),
            y: b64url_encode(&point[1 + half..]),
        })
    }

    /// An RSA public key from big-endian modulus and exponent (leading zeros are stripped).
    pub fn from_rsa(n: &[u8], e: &[u8]) -> Jwk {
        fn strip(b: &[u8]) -> &[u8] {
            let first = b
                .iter()
                .position(|&x| x != 0)
                .unwrap_or(b.len().saturating_sub(1));
            &b[first..]
        }
        Jwk::Rsa {
            n: b64url_encode(strip(n)),
            e: b64url_encode(strip(e)),
        }
    }

    /// An Ed25519 public key.
    pub fn from_ed25519(public: &[u8; 32]) -> Jwk {
        Jwk::Okp {
            crv: "Ed25519".into(),
            x: b64url_encode(public),
        }
    }

    /// The RFC 7638 thumbprint: base64url(SHA-256(canonical JSON of the required members)).
    #[cfg(feature = "crypto")]
    pub fn thumbprint(&self) -> String {
        // Members in lexicographic order, no white space; values are JSON-escaped although
        // well-formed keys only hold base64url and curve names.
        let s = |v: &str| serde_json::to_string(v).expect("string serializes");
        let canonical = match self {
            Jwk::Ec { crv, x, y } => {
                format!(
                    r#"{{"crv":{},"kty":"EC","x":{},"y":{}}}"#,
                    s(crv),
                    s(x),
                    s(y)
                )
            }
            Jwk::Rsa { n, e } => format!(r#"{{"e":{},"kty":"RSA","n":{}}}"#, s(e), s(n)),
            Jwk::Okp { crv, x } => format!(r#"{{"crv":{},"kty":"OKP","x":{}}}"#, s(crv), s(x)),
        };
        b64url_encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            canonical.as_bytes(),
        ))
    }

    /// Whether this key can make signatures of `alg`.
    pub fn fits(&self, alg: Algorithm) -> bool {
        match (self, alg) {
            (Jwk::Ec { crv, .. }, Algorithm::ES256) => crv == "P-256",
            (Jwk::Ec { crv, .. }, Algorithm::ES384) => crv == "P-384",
            (Jwk::Rsa { .. }, Algorithm::RS256 | Algorithm::PS256) => true,
            (Jwk::Okp { crv, .. }, Algorithm::EdDSA) => crv == "Ed25519",
            _ => false,
        }
    }

    /// The public key bytes aws-lc-rs verifies with: the SEC1 point for EC, the raw key for
    /// Ed25519, `(n, e)` for RSA. Checks every length.
    #[cfg(feature = "crypto")]
    pub(crate) fn verification_key(&self) -> Result<PublicKeyBytes, Error> {
        use crate::b64url_decode;
        let bad = |reason: &str| Error::InvalidJwk {
            reason: reason.to_owned(),
        };
        match self {
            Jwk::Ec { crv, x, y } => {
                let len = match crv.as_str() {
                    "P-256" => 32,
                    "P-384" => 48,
                    _ => return Err(bad("unsupported EC curve")),
                };
                let x = b64url_decode(x).ok_or_else(|| bad("x is not base64url"))?;
                let y = b64url_decode(y).ok_or_else(|| bad("y is not base64url"))?;
                if x.len() != len || y.len() != len {
                    return Err(bad("EC coordinate has the wrong length"));
                }
                let mut point = Vec::with_capacity(1 + 2 * len);
                point.push(4);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                Ok(PublicKeyBytes::Raw(point))
            }
            Jwk::Okp { crv, x } => {
                if crv != "Ed25519" {
                    return Err(bad("unsupported OKP curve"));
                }
                let x = b64url_decode(x).ok_or_else(|| bad("x is not base64url"))?;
                if x.len() != 32 {
                    return Err(bad("Ed25519 key must be 32 bytes"));
                }
                if is_small_order_ed25519(&x) {
                    // With such a key, `R = small-order point, S = 0` verifies for any
                    // message (aws-lc-rs accepts it): a "signature" anyone can make.
                    return Err(bad("Ed25519 key is a small-order point"));
                }
                Ok(PublicKeyBytes::Raw(x))
            }
            Jwk::Rsa { n, e } => {
                let n = b64url_decode(n).ok_or_else(|| bad("n is not base64url"))?;
                let e = b64url_decode(e).ok_or_else(|| bad("e is not base64url"))?;
                if n.first() == Some(&0) || e.first() == Some(&0) {
                    return Err(bad("RSA n and e must not have leading zeros"));
                }
                Ok(PublicKeyBytes::Rsa { n, e })
            }
        }
    }
}

/// The y coordinates (little-endian, sign bit of x cleared) of the eight points of the
/// Ed25519 torsion subgroup, canonical and not: 0 (order 4), 1 (order 1), the order-8 y and
/// its negation, p-1 (order 2), and the non-canonical p and p+1 (0 and 1 again). Every
/// encoding of a small-order point is one of these with either sign bit (the list libsodium's
/// `ge25519_has_small_order` uses; checked with RFC 8032 arithmetic: 8·P is the identity).
#[cfg(feature = "crypto")]
const SMALL_ORDER_ED25519_Y: [[u8; 32]; 7] = {
    let mut p_minus_1 = [0xff; 32];
    p_minus_1[0] = 0xec;
    p_minus_1[31] = 0x7f;
    let mut p = p_minus_1;
    p[0] = 0xed;
    let mut p_plus_1 = p_minus_1;
    p_plus_1[0] = 0xee;
    let mut one = [0; 32];
    one[0] = 1;
    [
        [0; 32],
        one,
        [
            0x26, 0xe8, 0x95, 0x8f, 0xc2, 0xb2, 0x27, 0xb0, 0x45, 0xc3, 0xf4, 0x89, 0xf2, 0xef,
            0x98, 0xf0, 0xd5, 0xdf, 0xac, 0x05, 0xd3, 0xc6, 0x33, 0x39, 0xb1, 0x38, 0x02, 0x88,
            0x6d, 0x53, 0xfc, 0x05,
        ],
        [
            0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10,
            0x67, 0x0f, 0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77,
            0x92, 0xac, 0x03, 0x7a,
        ],
        p_minus_1,
        p,
        p_plus_1,
    ]
};

/// Whether a 32-byte Ed25519 public key encodes a point of small order (1, 2, 4 or 8).
#[cfg(feature = "crypto")]
fn is_small_order_ed25519(key: &[u8]) -> bool {
    let Ok(mut y) = <[u8; 32]>::try_from(key) else {
        return false;
    };
    y[31] &= 0x7f;
    SMALL_ORDER_ED25519_Y.contains(&y)
}

#[cfg(feature = "crypto")]
pub(crate) enum PublicKeyBytes {
    Raw(Vec<u8>),
    Rsa { n: Vec<u8>, e: Vec<u8> },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::b64url_decode;

    #[cfg(feature = "crypto")]
    #[test]
    fn rfc7638_example_thumbprint() {
        // RFC 7638 section 3.1.
        let jwk: Jwk = serde_json::from_str(
            r#"{"kty":"RSA","n":"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw","e":"AQAB","alg":"RS256","kid":"2011-04-29"}"#,
        )
        .unwrap();
        assert_eq!(
            jwk.thumbprint(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[cfg(feature = "crypto")]
    #[test]
    fn rfc9449_example_ec_thumbprint() {
        // RFC 9449 section 6.1 / appendix: the example proof key.
        let jwk: Jwk = serde_json::from_str(
            r#"{"kty":"EC","x":"l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs","y":"9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA","crv":"P-256"}"#,
        )
        .unwrap();
        assert_eq!(
            jwk.thumbprint(),
            "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
        );
    }

    #[test]
    fn ec_point_keeps_leading_zeros() {
        let mut point = [7u8; 65];
        point[0] = 4;
        point[1] = 0; // x starts with a zero byte
        point[33] = 0; // and so does y
        let Jwk::Ec { crv, x, y } = Jwk::from_ec_point(&point).unwrap() else {
            panic!("not EC")
        };
        assert_eq!(crv, "P-256");
        assert_eq!(b64url_decode(&x).unwrap().len(), 32);
        assert_eq!(b64url_decode(&y).unwrap()[0], 0);
        assert!(Jwk::from_ec_point(&point[..64]).is_err());
    }

    #[test]
    fn rsa_strips_leading_zeros() {
        let Jwk::Rsa { n, e } = Jwk::from_rsa(&[0, 0, 0xc1, 2], &[0, 1, 0, 1]) else {
            panic!("not RSA")
        };
        assert_eq!(b64url_decode(&n).unwrap(), [0xc1, 2]);
        assert_eq!(e, "AQAB");
    }
}
