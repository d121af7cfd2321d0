//! Allowed origins: `https://api.example.com`, normalised as a request's `htu` origin is, and
//! `https://*.example.com` for any subdomain (at least one label, no port or user info
//! smuggled in).

use dpop_jose::Htu;
use dpop_protocol::{ErrorCode, WireError};

/// An allowed origin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum OriginPattern {
    /// `https://api.example.com` (normalised as `htu` origins are).
    Exact(String),
    /// `https://*.example.com`: `prefix` is `https://`, `suffix` `.example.com` plus any port.
    Subdomains { prefix: String, suffix: String },
}

impl OriginPattern {
    pub(super) fn parse(pattern: &str) -> Result<OriginPattern, WireError> {
        let invalid = |why: &str| {
            WireError::new(
                ErrorCode::InvalidPolicy,
                format!("allowed origin {pattern:?}: {why}"),
            )
        };
        // A wildcard stands for at least one label; a placeholder label lets the URL parser
        // normalise the rest (case, default port) exactly as it does for requests.
        const PLACEHOLDER: &str = "dpop-agent-wildcard";
        let (wildcard, url) = match pattern.split_once("://*.") {
            Some((scheme, rest)) => (true, format!("{scheme}://{PLACEHOLDER}.{rest}")),
            None => (false, pattern.to_owned()),
        };
        if url.contains('*') {
            return Err(invalid(
                "a wildcard is only allowed as the first label (https://*.example.com)",
            ));
        }
        let htu = Htu::from_url(&url).map_err(|e| invalid(&e.to_string()))?;
        if htu.as_str().len() != htu.origin().len() + 1 {
            return Err(invalid("an origin has no path (https://api.example.com)"));
        }
        let origin = htu.origin();
        if !wildcard {
            return Ok(OriginPattern::Exact(origin.to_owned()));
        }
        let (prefix, rest) = origin
            .split_once(PLACEHOLDER)
            .ok_or_else(|| invalid("cannot read the wildcard"))?;
        Ok(OriginPattern::Subdomains {
            prefix: prefix.to_owned(),
            suffix: rest.to_owned(),
        })
    }

    pub(super) fn matches(&self, origin: &str) -> bool {
        match self {
            OriginPattern::Exact(allowed) => allowed == origin,
            OriginPattern::Subdomains { prefix, suffix } => origin
                .strip_prefix(prefix.as_str())
                .and_then(|rest| rest.strip_suffix(suffix.as_str()))
                // At least one label, and no port or user info smuggled into it.
                .is_some_and(|sub| {
                    !sub.is_empty()
                        && sub
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                        && !sub.starts_with('.')
                        && !sub.ends_with('.')
                }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_patterns() {
        let exact = OriginPattern::parse("https://API.example.com:443").unwrap();
        assert!(exact.matches("https://api.example.com"));
        assert!(!exact.matches("https://api.example.com:8443"));
        assert!(!exact.matches("http://api.example.com"));

        let sub = OriginPattern::parse("https://*.Example.com").unwrap();
        for yes in ["https://a.example.com", "https://a.b.example.com"] {
            assert!(sub.matches(yes), "{yes}");
        }
        for no in [
            "https://example.com",
            "https://aexample.com",
            "http://a.example.com",
            "https://a.example.com:8443",
            "https://a.example.com.evil.org",
        ] {
            assert!(!sub.matches(no), "{no}");
        }
        let port = OriginPattern::parse("http://*.local.test:8080").unwrap();
        assert!(port.matches("http://x.local.test:8080"));
        assert!(!port.matches("http://x.local.test"));

        for bad in [
            "api.example.com",
            "https://api.example.com/path",
            "https://a.*.example.com",
            "https://*example.com",
            "ftp://x.example.com",
        ] {
            let err = OriginPattern::parse(bad).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidPolicy, "{bad}");
        }
    }
}
