//! JWT access tokens (RFC 9068 style) checked against a JWKS, signatures through dpop-jose
//! (aws-lc-rs), and their `cnf.jkt` handed to the DPoP layer.

use anyhow::{Context, bail};
use dpop_jose::{Algorithm, Jwk, b64url_decode};
use dpop_server::{BoundToken, TokenFuture, TokenValidator};
use serde_json::Value;

/// One verification key of the JWKS.
struct Key {
    kid: Option<String>,
    alg: Option<Algorithm>,
    jwk: Jwk,
}

/// Validates JWT access tokens: signature by a JWKS key, `exp`, `nbf`, and `iss` and `aud`
/// when configured.
pub struct JwtTokens {
    keys: Vec<Key>,
    issuer: Option<String>,
    audience: Option<String>,
}

impl JwtTokens {
    /// From a JWKS document (`{"keys":[...]}`); keys of kinds DPoP does not use, and
    /// symmetric ones, are skipped.
    pub fn from_jwks(
        jwks: &[u8],
        issuer: Option<String>,
        audience: Option<String>,
    ) -> anyhow::Result<JwtTokens> {
        let doc: Value = serde_json::from_slice(jwks).context("JWKS is not JSON")?;
        let entries = doc["keys"]
            .as_array()
            .context("JWKS has no \"keys\" array")?;
        let mut keys = Vec::new();
        for entry in entries {
            if entry.get("d").is_some() {
                bail!("JWKS holds a private key; publish public keys only");
            }
            let Ok(jwk) = serde_json::from_value::<Jwk>(entry.clone()) else {
                continue;
            };
            let alg = match entry.get("alg").and_then(Value::as_str) {
                Some(name) => Some(
                    name.parse()
                        .with_context(|| format!("JWKS key alg {name:?}"))?,
                ),
                None => None,
            };
            keys.push(Key {
                kid: entry.get("kid").and_then(Value::as_str).map(str::to_owned),
                alg,
                jwk,
            });
        }
        if keys.is_empty() {
            bail!("JWKS has no usable EC, RSA or Ed25519 public key");
        }
        Ok(JwtTokens {
            keys,
            issuer,
            audience,
        })
    }

    /// The claims of a valid token, or why it is refused (never the token itself).
    pub fn check(&self, token: &str, now: i64) -> Result<Value, String> {
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("not a JWT (three dot-separated parts)".into());
        };
        let decode = |part: &str, what: &str| -> Result<Value, String> {
            let bytes =
                b64url_decode(part).ok_or_else(|| format!("JWT {what} is not base64url"))?;
            serde_json::from_slice(&bytes).map_err(|_| format!("JWT {what} is not JSON"))
        };
        let header = decode(h, "header")?;
        let alg: Algorithm = header["alg"]
            .as_str()
            .ok_or("JWT has no alg")?
            .parse()
            .map_err(|_| "JWT alg is not an asymmetric algorithm this server accepts")?;
        let kid = header["kid"].as_str();
        let signature = b64url_decode(s).ok_or("JWT signature is not base64url")?;
        let message = &token.as_bytes()[..h.len() + 1 + c.len()];
        let signed = self
            .keys
            .iter()
            .filter(|k| kid.is_none() || k.kid.as_deref() == kid)
            .filter(|k| k.alg.is_none_or(|a| a == alg))
            .any(|k| k.jwk.verify_signature(alg, message, &signature).is_ok());
        if !signed {
            return Err("JWT signature does not verify with any JWKS key".into());
        }
        let claims = decode(c, "payload")?;
        let exp = claims["exp"].as_i64().ok_or("JWT has no exp")?;
        if exp <= now {
            return Err("JWT has expired".into());
        }
        if claims["nbf"].as_i64().is_some_and(|nbf| nbf > now) {
            return Err("JWT is not valid yet (nbf)".into());
        }
        if let Some(issuer) = &self.issuer
            && claims["iss"].as_str() != Some(issuer)
        {
            return Err("JWT iss is not the configured issuer".into());
        }
        if let Some(audience) = &self.audience {
            let ok = match &claims["aud"] {
                Value::String(a) => a == audience,
                Value::Array(list) => list.iter().any(|a| a.as_str() == Some(audience)),
                _ => false,
            };
            if !ok {
                return Err("JWT aud does not name this resource server".into());
            }
        }
        Ok(claims)
    }
}

impl TokenValidator for JwtTokens {
    fn validate<'a>(&'a self, access_token: &'a str) -> TokenFuture<'a> {
        let result = self
            .check(access_token, unix_now())
            .map(|claims| BoundToken {
                jkt: claims["cnf"]["jkt"].as_str().map(str::to_owned),
                claims,
            });
        Box::pin(std::future::ready(result))
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
