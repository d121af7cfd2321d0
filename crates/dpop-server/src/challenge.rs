//! `WWW-Authenticate: DPoP ...` challenges (RFC 9449 section 7.1, RFC 6750 section 3).

use dpop_jose::Algorithm;

/// A `WWW-Authenticate` challenge for the `DPoP` scheme.
///
/// ```
/// use dpop_jose::Algorithm;
/// use dpop_server::Challenge;
///
/// let header = Challenge::new(&[Algorithm::ES256, Algorithm::EdDSA])
///     .error("invalid_dpop_proof")
///     .description("DPoP proof \"htu\" does not match")
///     .to_header_value();
/// assert_eq!(
///     header,
///     r#"DPoP error="invalid_dpop_proof", error_description="DPoP proof 'htu' does not match", algs="ES256 EdDSA""#
/// );
/// ```
#[derive(Clone, Debug, Default)]
pub struct Challenge {
    realm: Option<String>,
    error: Option<&'static str>,
    description: Option<String>,
    algs: String,
}

impl Challenge {
    /// A challenge that lists the algorithms the server accepts (`algs`).
    pub fn new(algs: &[Algorithm]) -> Challenge {
        Challenge {
            algs: algs
                .iter()
                .map(|a| a.as_str())
                .collect::<Vec<_>>()
                .join(" "),
            ..Challenge::default()
        }
    }

    /// The protection space (`realm`).
    pub fn realm(mut self, realm: &str) -> Challenge {
        self.realm = Some(realm.to_owned());
        self
    }

    /// The OAuth error code (`invalid_token`, `invalid_dpop_proof`, `use_dpop_nonce`, ...).
    pub fn error(mut self, code: &'static str) -> Challenge {
        self.error = Some(code);
        self
    }

    /// A human-readable `error_description`.
    pub fn description(mut self, text: &str) -> Challenge {
        self.description = Some(text.to_owned());
        self
    }

    /// The header value.
    pub fn to_header_value(&self) -> String {
        let mut params = Vec::new();
        if let Some(realm) = &self.realm {
            params.push(format!("realm=\"{}\"", quoted_text(realm)));
        }
        if let Some(code) = self.error {
            params.push(format!("error=\"{}\"", quoted_text(code)));
        }
        if let Some(text) = &self.description {
            params.push(format!("error_description=\"{}\"", quoted_text(text)));
        }
        if !self.algs.is_empty() {
            params.push(format!("algs=\"{}\"", self.algs));
        }
        if params.is_empty() {
            "DPoP".to_owned()
        } else {
            format!("DPoP {}", params.join(", "))
        }
    }
}

/// RFC 6750 section 3 allows only `%x20-21 / %x23-5B / %x5D-7E` in these values: no quote,
/// no backslash, nothing outside printable ASCII. Those become `'`, `/` and `?`, so any
/// message (an error's `Display`) fits in a header without escaping rules clients disagree on.
fn quoted_text(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '"' => '\'',
            '\\' => '/',
            ' '..='~' => c,
            _ => '?',
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_challenge_lists_algorithms_only() {
        assert_eq!(
            Challenge::new(&[Algorithm::ES256]).to_header_value(),
            r#"DPoP algs="ES256""#
        );
        assert_eq!(Challenge::new(&[]).to_header_value(), "DPoP");
    }

    #[test]
    fn realm_comes_first_and_text_is_made_header_safe() {
        let value = Challenge::new(&[Algorithm::PS256])
            .realm("api")
            .error("invalid_token")
            .description("bad \\ \"token\" \u{e9}\n")
            .to_header_value();
        assert_eq!(
            value,
            r#"DPoP realm="api", error="invalid_token", error_description="bad / 'token' ??", algs="PS256""#
        );
        assert!(http::HeaderValue::from_str(&value).is_ok());
    }
}
