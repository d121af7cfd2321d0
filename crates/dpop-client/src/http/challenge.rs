//! Reading a server's refusal: the OAuth error JSON of a token endpoint (RFC 6749 section 5.2)
//! and the `WWW-Authenticate` challenges of a resource server (RFC 6750 section 3, RFC 9449
//! section 7.1), so that `use_dpop_nonce` is recognised and errors can be shown.

use std::fmt;

use serde::Deserialize;

/// An OAuth error: `error`, `error_description` and `error_uri`, from a JSON body or a
/// challenge. Its `Display` shows all three with control characters escaped (see
/// [`printable`]): they are the server's text, on its way to a terminal or a log.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct OAuthErrorBody {
    /// The error code (`invalid_token`, `use_dpop_nonce`, ...).
    pub error: String,
    /// The server's explanation, if any.
    #[serde(default)]
    pub error_description: Option<String>,
    /// A page about the error, if the server names one.
    #[serde(default)]
    pub error_uri: Option<String>,
}

impl OAuthErrorBody {
    /// The error of a JSON body, if it is one.
    pub fn from_json(body: &[u8]) -> Option<OAuthErrorBody> {
        serde_json::from_slice(body).ok()
    }
}

impl fmt::Display for OAuthErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", printable(&self.error))?;
        if let Some(d) = &self.error_description {
            write!(f, ": {}", printable(d))?;
        }
        if let Some(uri) = &self.error_uri {
            write!(f, " (see {})", printable(uri))?;
        }
        Ok(())
    }
}

/// Server text made safe for a terminal (one definition, shared with the agent).
pub use dpop_protocol::printable;

/// One challenge of a `WWW-Authenticate` header: its scheme and auth-params.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// `DPoP`, `Bearer`, ...
    pub scheme: String,
    /// `name=value` pairs, quoted strings unescaped.
    pub params: Vec<(String, String)>,
}

impl Challenge {
    /// The value of a parameter (names compare case-insensitively).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether this is a DPoP challenge.
    pub fn is_dpop(&self) -> bool {
        self.scheme.eq_ignore_ascii_case("DPoP")
    }

    /// Whether this is a Bearer challenge.
    pub fn is_bearer(&self) -> bool {
        self.scheme.eq_ignore_ascii_case("Bearer")
    }

    /// The URL of the protected resource metadata (RFC 9728 section 5.1), when named.
    pub fn resource_metadata(&self) -> Option<&str> {
        self.param("resource_metadata")
    }

    /// The scope the resource asks for (RFC 6750 section 3), when named.
    pub fn scope(&self) -> Option<&str> {
        self.param("scope")
    }

    /// The OAuth challenge among all the challenges of all `headers` (every
    /// `WWW-Authenticate` line): the first `DPoP` or `Bearer` one, one that names
    /// `resource_metadata` first. A resource server may send both schemes (RFC 9449 section
    /// 7.2) and either may carry the parameters.
    pub fn from_headers(headers: &reqwest::header::HeaderMap) -> Option<Challenge> {
        let all: Vec<Challenge> = headers
            .get_all(reqwest::header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(Challenge::parse_all)
            .filter(|c| c.is_dpop() || c.is_bearer())
            .collect();
        let pick = all
            .iter()
            .position(|c| c.resource_metadata().is_some())
            .unwrap_or(0);
        all.into_iter().nth(pick)
    }

    /// The challenge's `error`, `error_description` and `error_uri`, when it has an `error`.
    pub fn oauth_error(&self) -> Option<OAuthErrorBody> {
        Some(OAuthErrorBody {
            error: self.param("error")?.to_owned(),
            error_description: self.param("error_description").map(str::to_owned),
            error_uri: self.param("error_uri").map(str::to_owned),
        })
    }

    /// Parses every challenge of one header value (RFC 9110 section 11.6.1:
    /// `challenge = auth-scheme [ 1*SP ( token68 / #auth-param ) ]`, comma-separated).
    /// Anything after a syntax error is dropped.
    pub fn parse_all(header: &str) -> Vec<Challenge> {
        let mut out: Vec<Challenge> = Vec::new();
        let mut rest = header;
        loop {
            rest = rest.trim_start_matches([' ', '\t', ',']);
            if rest.is_empty() {
                return out;
            }
            let (word, after) = split_token(rest);
            if word.is_empty() {
                return out;
            }
            let after_ws = after.trim_start_matches([' ', '\t']);
            match (after_ws.strip_prefix('='), out.last_mut()) {
                // `name=value` belongs to the challenge before it.
                (Some(value_start), Some(current)) if !value_start.starts_with('=') => {
                    let value_start = value_start.trim_start_matches([' ', '\t']);
                    let Some((value, after_value)) = parse_value(value_start) else {
                        return out;
                    };
                    current.params.push((word.to_owned(), value));
                    rest = after_value;
                }
                // A scheme name starts a new challenge (a token68 after it is skipped).
                _ => {
                    out.push(Challenge {
                        scheme: word.to_owned(),
                        params: Vec::new(),
                    });
                    rest = after;
                }
            }
        }
    }
}

fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

fn split_token(s: &str) -> (&str, &str) {
    let end = s.find(|c: char| !is_tchar(c)).unwrap_or(s.len());
    s.split_at(end)
}

/// A token or a quoted-string, and what follows it.
fn parse_value(s: &str) -> Option<(String, &str)> {
    if let Some(quoted) = s.strip_prefix('"') {
        let mut value = String::new();
        let mut chars = quoted.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => return Some((value, &quoted[i + 1..])),
                '\\' => value.push(chars.next()?.1),
                c => value.push(c),
            }
        }
        None
    } else {
        let (token, rest) = split_token(s);
        (!token.is_empty()).then(|| (token.to_owned(), rest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dpop_and_bearer_challenges() {
        let all = Challenge::parse_all(
            r#"DPoP algs="ES256 PS256", error="use_dpop_nonce", error_description="Resource server requires nonce in DPoP proof", Bearer realm="x\"y""#,
        );
        assert_eq!(all.len(), 2);
        assert!(all[0].is_dpop());
        assert_eq!(all[0].param("ALGS"), Some("ES256 PS256"));
        assert_eq!(
            all[0].oauth_error(),
            Some(OAuthErrorBody {
                error: "use_dpop_nonce".into(),
                error_description: Some("Resource server requires nonce in DPoP proof".into()),
                error_uri: None,
            })
        );
        assert_eq!(all[1].scheme, "Bearer");
        assert_eq!(all[1].param("realm"), Some("x\"y"));
    }

    #[test]
    fn token_values_and_bare_schemes() {
        let all = Challenge::parse_all("Basic, DPoP error=invalid_token");
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].scheme, "Basic");
        assert_eq!(all[1].param("error"), Some("invalid_token"));
        assert_eq!(all[1].oauth_error().unwrap().error_description, None);
    }

    #[test]
    fn mcp_challenges_of_either_scheme_give_resource_metadata_and_scope() {
        let bearer = Challenge::parse_all(
            r#"Bearer resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource", scope="files:read files:write""#,
        );
        assert_eq!(
            bearer[0].resource_metadata(),
            Some("https://mcp.example.com/.well-known/oauth-protected-resource")
        );
        assert_eq!(bearer[0].scope(), Some("files:read files:write"));
        assert!(bearer[0].is_bearer());
        // Unquoted token values, and a DPoP challenge with an error.
        let dpop = Challenge::parse_all(
            "DPoP algs=\"ES256\", error=insufficient_scope, scope=admin, resource_metadata=\"http://127.0.0.1:9/prm\"",
        );
        assert_eq!(dpop[0].oauth_error().unwrap().error, "insufficient_scope");
        assert_eq!(dpop[0].scope(), Some("admin"));
        assert_eq!(dpop[0].resource_metadata(), Some("http://127.0.0.1:9/prm"));
    }

    #[test]
    fn from_headers_prefers_the_challenge_naming_resource_metadata() {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.append(
            reqwest::header::WWW_AUTHENTICATE,
            reqwest::header::HeaderValue::from_static("Basic realm=x, DPoP algs=\"ES256\""),
        );
        headers.append(
            reqwest::header::WWW_AUTHENTICATE,
            reqwest::header::HeaderValue::from_static(
                "Bearer realm=\"mcp\", resource_metadata=\"https://r/.well-known/oauth-protected-resource\", scope=\"a b\"",
            ),
        );
        let c = Challenge::from_headers(&headers).unwrap();
        assert!(c.is_bearer());
        assert_eq!(c.scope(), Some("a b"));
        // Without resource_metadata anywhere: the first OAuth challenge (not Basic).
        headers.remove(reqwest::header::WWW_AUTHENTICATE);
        headers.append(
            reqwest::header::WWW_AUTHENTICATE,
            reqwest::header::HeaderValue::from_static(
                "Basic realm=x, DPoP error=\"invalid_token\", Bearer",
            ),
        );
        let c = Challenge::from_headers(&headers).unwrap();
        assert!(c.is_dpop());
        assert_eq!(c.oauth_error().unwrap().error, "invalid_token");
        assert!(Challenge::from_headers(&reqwest::header::HeaderMap::new()).is_none());
    }

    #[test]
    fn a_broken_quote_ends_parsing_without_panicking() {
        let all = Challenge::parse_all(r#"DPoP error="use_dpop_nonce"#);
        assert_eq!(all.len(), 1);
        assert!(all[0].params.is_empty());
        assert!(Challenge::parse_all("").is_empty());
        assert!(Challenge::parse_all("=,=").is_empty());
    }

    #[test]
    fn error_display_escapes_control_characters() {
        let e = OAuthErrorBody {
            error: "invalid_token\u{9b}".into(),
            error_description: Some("bad\x1b[31m token\n".into()),
            error_uri: Some("https://as.example/e\r\n".into()),
        };
        assert_eq!(
            e.to_string(),
            r"invalid_token\u{9b}: bad\u{1b}[31m token\n (see https://as.example/e\r\n)"
        );
        assert_eq!(printable("ABCD-1234"), "ABCD-1234");
        assert_eq!(printable("é\u{1b}[2J\r\n\u{9b}x"), r"é\u{1b}[2J\r\n\u{9b}x");
    }
}
