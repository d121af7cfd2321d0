use std::fmt;

use fluent_uri::Uri;

use crate::Error;

/// The `htu` claim: an absolute `http` or `https` URI without query and fragment, scheme and
/// host lower-cased, default port dropped, path kept byte for byte (an empty path becomes `/`,
/// which is what an HTTP client sends). Only [`Htu::from_url`] makes one, so it is always valid.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Htu(String);

/// The URL for an error message: without user information, query and fragment, which may
/// hold credentials (errors reach logs), and cut to a readable length. Works on text that is
/// not a valid URI too, since that is when it is needed.
fn redacted(url: &str) -> String {
    const MAX: usize = 200;
    let mut shown = match url.find(['?', '#']) {
        Some(at) => format!("{}?…", &url[..at]),
        None => url.to_owned(),
    };
    if let Some(start) = shown.find("://").map(|i| i + 3) {
        let end = shown[start..].find('/').map_or(shown.len(), |i| start + i);
        if let Some(at) = shown[start..end].rfind('@') {
            shown.replace_range(start..start + at, "…");
        }
    }
    if shown.len() > MAX {
        let mut cut = MAX;
        while !shown.is_char_boundary(cut) {
            cut -= 1;
        }
        shown.truncate(cut);
        shown.push('…');
    }
    shown
}

fn parse(url: &str) -> Result<Uri<&str>, Error> {
    let bad = |reason| Error::InvalidUrl {
        url: redacted(url),
        reason,
    };
    let uri = Uri::parse(url).map_err(|_| bad("not an absolute RFC 3986 URI"))?;
    let scheme = uri.scheme().as_str();
    if !scheme.eq_ignore_ascii_case("https") && !scheme.eq_ignore_ascii_case("http") {
        return Err(bad("scheme must be http or https"));
    }
    let auth = uri.authority().ok_or_else(|| bad("no host"))?;
    if auth.host().is_empty() {
        return Err(bad("no host"));
    }
    if auth.has_userinfo() {
        return Err(bad("user information (user@host) is not allowed"));
    }
    if auth.port_to_u16().is_err() {
        return Err(bad("port is not a number from 0 to 65535"));
    }
    Ok(uri)
}

impl Htu {
    /// Builds `htu` from the URL a request goes to.
    pub fn from_url(url: &str) -> Result<Htu, Error> {
        let uri = parse(url)?;
        let scheme = uri.scheme().as_str().to_ascii_lowercase();
        let auth = uri.authority().expect("checked in parse");
        let mut out = String::with_capacity(url.len());
        out.push_str(&scheme);
        out.push_str("://");
        out.push_str(&auth.host().to_ascii_lowercase());
        let default = if scheme == "https" { 443 } else { 80 };
        match auth.port_to_u16().expect("checked in parse") {
            Some(port) if port != default => {
                out.push(':');
                out.push_str(&port.to_string());
            }
            _ => {}
        }
        let path = uri.path().as_str();
        out.push_str(if path.is_empty() { "/" } else { path });
        Ok(Htu(out))
    }

    /// The claim value.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The origin (`scheme://host[:port]`), as used for nonces and key policies.
    pub fn origin(&self) -> &str {
        let after_scheme = self.0.find("://").expect("htu has a scheme") + 3;
        let path_start = self.0[after_scheme..]
            .find('/')
            .map_or(self.0.len(), |i| after_scheme + i);
        &self.0[..path_start]
    }
}

impl fmt::Display for Htu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The comparison form a verifier uses (RFC 9449 section 4.3 step 9): RFC 3986 syntax-based
/// normalization (case, percent-encoding, dot segments) and scheme-based normalization (default
/// port, empty path is `/`), with query and fragment removed. Trailing slashes are kept.
pub fn normalize_uri(url: &str) -> Result<String, Error> {
    let uri = parse(url)?;
    let normalized = uri.strip_fragment().normalize();
    let s = normalized.as_str();
    let end = normalized.query_or_path_end_index();
    let mut out = s[..end].to_owned();
    if normalized.path().as_str().is_empty() {
        out.push('/');
    }
    Ok(out)
}

trait QueryOrPathEnd {
    fn query_or_path_end_index(&self) -> usize;
}

impl QueryOrPathEnd for Uri<String> {
    fn query_or_path_end_index(&self) -> usize {
        let s = self.as_str();
        match self.query() {
            // The query starts right after the path; '?' cannot appear in a path.
            Some(q) => s.len() - q.as_str().len() - 1,
            None => s.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn htu_rules() {
        let cases = [
            (
                "https://server.example.com/token",
                "https://server.example.com/token",
            ),
            (
                "HTTPS://Server.EXAMPLE.com:443/Token?q=1#f",
                "https://server.example.com/Token",
            ),
            ("http://example.com:80", "http://example.com/"),
            (
                "http://example.com:8080/a/../b/",
                "http://example.com:8080/a/../b/",
            ),
            (
                "https://example.com/%7euser/x%2Fy",
                "https://example.com/%7euser/x%2Fy",
            ),
            ("https://[::1]:8443/", "https://[::1]:8443/"),
            ("https://example.com:80/", "https://example.com:80/"),
        ];
        for (input, want) in cases {
            assert_eq!(Htu::from_url(input).unwrap().as_str(), want, "{input}");
        }
    }

    #[test]
    fn htu_rejects() {
        for bad in [
            "",
            "not a url",
            "/relative/path",
            "ftp://example.com/",
            "https://user:pw@example.com/",
            "https:///path",
            "https://example.com:99999/",
            "https://exa mple.com/",
        ] {
            assert!(Htu::from_url(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn origin() {
        let htu = Htu::from_url("https://API.example.com:8443/v1/x").unwrap();
        assert_eq!(htu.origin(), "https://api.example.com:8443");
        assert_eq!(
            Htu::from_url("https://a.example").unwrap().origin(),
            "https://a.example"
        );
    }

    #[test]
    fn verifier_normalization() {
        let same = [
            ("https://example.com/a/./b/../c", "https://example.com/a/c"),
            (
                "HTTPS://EXAMPLE.com:443/%7euser",
                "https://example.com/~user",
            ),
            ("https://example.com", "https://example.com/"),
            ("https://example.com/x%2fy?q#f", "https://example.com/x%2Fy"),
        ];
        for (a, b) in same {
            assert_eq!(
                normalize_uri(a).unwrap(),
                normalize_uri(b).unwrap(),
                "{a} vs {b}"
            );
        }
        // No trailing-slash stripping: these are different resources.
        assert_ne!(
            normalize_uri("https://example.com/a/").unwrap(),
            normalize_uri("https://example.com/a").unwrap()
        );
    }
}

#[cfg(test)]
mod redaction_tests {
    use super::*;

    #[test]
    fn errors_show_no_credentials_from_the_url() {
        for (url, hidden) in [
            ("https://user:SECRET@api.example.com/x", "SECRET"),
            ("ftp://api.example.com/x?token=SECRET", "SECRET"),
            ("https://api.example.com:99999/x#SECRET", "SECRET"),
            ("not a url?SECRET", "SECRET"),
        ] {
            let err = Htu::from_url(url).unwrap_err().to_string();
            assert!(!err.contains(hidden), "{err}");
            assert!(
                err.contains("api.example.com") || url.starts_with("not"),
                "{err}"
            );
        }
        assert_eq!(
            redacted("https://u:p@h.example/a@b?q#f"),
            "https://…@h.example/a@b?…"
        );
        assert!(redacted(&format!("https://h/{}", "é".repeat(300))).len() <= 204);
    }
}
