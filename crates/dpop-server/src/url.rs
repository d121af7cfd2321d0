//! The request URL a proof's `htu` is compared with, rebuilt from configuration rather than
//! from whatever `Host` a client sent.

use std::net::IpAddr;

use http::HeaderMap;
use http::uri::{Authority, Scheme, Uri};

use crate::ConfigError;

/// How the public URL of a request is rebuilt (section "Proxies" of docs/server.md).
///
/// By default scheme, host, port and path prefix all come from the configured public base
/// URL, and the request's own path is appended: `https://api.example.com/v1` and a request for
/// `/items` give `https://api.example.com/v1/items`. Only when the TCP peer is one of the
/// [trusted proxies](Self::trust_proxies) are `Forwarded` (`proto`, `host`) or, without it,
/// `X-Forwarded-Proto` / `X-Forwarded-Host` used instead, and then only the last element of
/// each, the one that proxy appended.
#[derive(Clone, Debug)]
pub struct PublicUrl {
    scheme: Scheme,
    authority: Authority,
    /// The base path without its trailing slash (`""` for `/`).
    prefix: String,
    trusted_proxies: Vec<IpAddr>,
}

impl PublicUrl {
    /// The public base URL, `https://host[:port][/prefix]`; a trailing slash is ignored.
    pub fn new(base: &str) -> Result<PublicUrl, ConfigError> {
        let bad = |reason: &'static str| ConfigError::PublicUrl {
            url: base.to_owned(),
            reason,
        };
        let uri: Uri = base.parse().map_err(|_| bad("not a URL"))?;
        let scheme = uri.scheme().cloned().ok_or_else(|| bad("no scheme"))?;
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            return Err(bad("scheme must be http or https"));
        }
        let authority = uri.authority().cloned().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("user information is not allowed"));
        }
        if uri.query().is_some() {
            return Err(bad("a query is not allowed"));
        }
        Ok(PublicUrl {
            scheme,
            authority,
            prefix: uri.path().trim_end_matches('/').to_owned(),
            trusted_proxies: Vec::new(),
        })
    }

    /// Trust `Forwarded` / `X-Forwarded-*` from these peers (the reverse proxies in front).
    pub fn trust_proxies(mut self, proxies: impl IntoIterator<Item = IpAddr>) -> PublicUrl {
        self.trusted_proxies.extend(proxies);
        self
    }

    /// The URL of a request for `path` (its query, if any, is dropped; `htu` has none)
    /// received from `peer` with `headers`.
    pub fn request_url(
        &self,
        path: &str,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
    ) -> Result<String, ForwardedError> {
        let path = path.split(['?', '#']).next().unwrap_or_default();
        let path = if path.starts_with('/') { path } else { "/" };
        let trusted = peer.is_some_and(|p| self.trusted_proxies.contains(&p));
        let (mut scheme, mut authority) = (self.scheme.as_str(), self.authority.as_str());
        let forwarded;
        if trusted {
            forwarded = Forwarded::from_headers(headers)?;
            if let Some(proto) = &forwarded.proto {
                scheme = proto;
            }
            if let Some(host) = &forwarded.host {
                authority = host;
            }
        }
        Ok(format!("{scheme}://{authority}{}{path}", self.prefix))
    }
}

/// A forwarding header from a trusted proxy that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("unusable {header} header from a trusted proxy: {reason}")]
pub struct ForwardedError {
    /// The header.
    pub header: &'static str,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// What the nearest (trusted) proxy says about the original request.
#[derive(Debug, Default)]
struct Forwarded {
    proto: Option<String>,
    host: Option<String>,
}

impl Forwarded {
    fn from_headers(headers: &HeaderMap) -> Result<Forwarded, ForwardedError> {
        if let Some(element) = last_element(headers, "forwarded")? {
            let mut forwarded = Forwarded::default();
            // RFC 7239: pairs `token=value` separated by `;`, values tokens or quoted strings.
            for pair in element.split(';') {
                let Some((name, value)) = pair.trim().split_once('=') else {
                    return Err(bad("forwarded", "a parameter without '='"));
                };
                let value = value.trim();
                let value = value
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(value);
                match name.trim().to_ascii_lowercase().as_str() {
                    "proto" => forwarded.proto = Some(proto(value, "forwarded")?),
                    "host" => forwarded.host = Some(host(value, "forwarded")?),
                    _ => {}
                }
            }
            return Ok(forwarded);
        }
        Ok(Forwarded {
            proto: last_element(headers, "x-forwarded-proto")?
                .map(|v| proto(v.trim(), "x-forwarded-proto"))
                .transpose()?,
            host: last_element(headers, "x-forwarded-host")?
                .map(|v| host(v.trim(), "x-forwarded-host"))
                .transpose()?,
        })
    }
}

/// The last comma-separated element over every line of `name`: the one the nearest proxy
/// added (quoted commas do not occur in the `proto` and `host` values used here).
fn last_element<'h>(
    headers: &'h HeaderMap,
    name: &'static str,
) -> Result<Option<&'h str>, ForwardedError> {
    let Some(value) = headers.get_all(name).iter().next_back() else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| bad(header_name(name), "not ASCII"))?;
    Ok(value
        .rsplit(',')
        .next()
        .map(str::trim)
        .filter(|v| !v.is_empty()))
}

fn proto(value: &str, header: &'static str) -> Result<String, ForwardedError> {
    match value.to_ascii_lowercase().as_str() {
        p @ ("http" | "https") => Ok(p.to_owned()),
        _ => Err(bad(header_name(header), "proto is neither http nor https")),
    }
}

fn host(value: &str, header: &'static str) -> Result<String, ForwardedError> {
    let authority: Authority = value
        .parse()
        .map_err(|_| bad(header_name(header), "host is not host[:port]"))?;
    if authority.as_str().contains('@') {
        return Err(bad(header_name(header), "host has user information"));
    }
    Ok(authority.as_str().to_owned())
}

fn header_name(name: &'static str) -> &'static str {
    match name {
        "forwarded" => "Forwarded",
        "x-forwarded-proto" => "X-Forwarded-Proto",
        _ => "X-Forwarded-Host",
    }
}

fn bad(header: &'static str, reason: &'static str) -> ForwardedError {
    ForwardedError {
        header: header_name(header),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    const PROXY: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));

    #[test]
    fn base_url_gives_scheme_host_and_prefix_and_a_trailing_slash_is_ignored() {
        for base in ["https://api.example.com/v1", "https://api.example.com/v1/"] {
            let url = PublicUrl::new(base).unwrap();
            assert_eq!(
                url.request_url("/items?page=2", &HeaderMap::new(), None)
                    .unwrap(),
                "https://api.example.com/v1/items"
            );
        }
        let root = PublicUrl::new("http://127.0.0.1:8080/").unwrap();
        assert_eq!(
            root.request_url("/", &HeaderMap::new(), None).unwrap(),
            "http://127.0.0.1:8080/"
        );
    }

    #[test]
    fn forwarding_headers_count_only_from_a_trusted_proxy_and_only_the_last_element() {
        let url = PublicUrl::new("https://api.example.com")
            .unwrap()
            .trust_proxies([PROXY]);
        let h = headers(&[
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", "evil.example, public.example.com:8443"),
        ]);
        assert_eq!(
            url.request_url("/a", &h, Some(CLIENT)).unwrap(),
            "https://api.example.com/a"
        );
        assert_eq!(
            url.request_url("/a", &h, Some(PROXY)).unwrap(),
            "http://public.example.com:8443/a"
        );
        let h = headers(&[
            ("forwarded", "host=evil.example;proto=http"),
            (
                "forwarded",
                "for=192.0.2.7;proto=https;host=\"rs.example.com\"",
            ),
            ("x-forwarded-host", "ignored.example"),
        ]);
        assert_eq!(
            url.request_url("/b", &h, Some(PROXY)).unwrap(),
            "https://rs.example.com/b"
        );
    }

    #[test]
    fn unusable_forwarding_headers_and_base_urls_are_errors() {
        let url = PublicUrl::new("https://api.example.com")
            .unwrap()
            .trust_proxies([PROXY]);
        let h = headers(&[("x-forwarded-proto", "gopher")]);
        assert!(url.request_url("/", &h, Some(PROXY)).is_err());
        let h = headers(&[("x-forwarded-host", "user@host")]);
        assert!(url.request_url("/", &h, Some(PROXY)).is_err());
        for base in [
            "api.example.com",
            "ftp://x",
            "https://x/?q=1",
            "https://u@x/",
        ] {
            assert!(PublicUrl::new(base).is_err(), "{base}");
        }
    }

    proptest::proptest! {
        /// Whatever a client or proxy sends, rebuilding never panics, an untrusted peer
        /// always gets the configured URL, and a trusted one a URL that parses.
        #[test]
        fn any_forwarding_headers_are_handled(
            forwarded in "\\PC{0,60}",
            proto in "\\PC{0,12}",
            host in "\\PC{0,40}",
            path in "/[!-~]{0,30}",
        ) {
            let url = PublicUrl::new("https://api.example.com/p").unwrap().trust_proxies([PROXY]);
            let mut h = HeaderMap::new();
            for (name, value) in [("forwarded", &forwarded), ("x-forwarded-proto", &proto), ("x-forwarded-host", &host)] {
                if let Ok(v) = http::HeaderValue::from_str(value) {
                    h.append(name, v);
                }
            }
            let untrusted = url.request_url(&path, &h, Some(CLIENT)).unwrap();
            proptest::prop_assert!(untrusted.starts_with("https://api.example.com/p/"));
            if let Ok(rebuilt) = url.request_url(&path, &h, Some(PROXY)) {
                let path = path.split(['?', '#']).next().unwrap();
                let rest = rebuilt
                    .strip_prefix("https://")
                    .or_else(|| rebuilt.strip_prefix("http://"));
                proptest::prop_assert!(rest.is_some(), "{}", rebuilt);
                let (authority, tail) = rest.unwrap().split_once('/').unwrap();
                proptest::prop_assert!(authority.parse::<Authority>().is_ok(), "{}", rebuilt);
                proptest::prop_assert_eq!(format!("/{tail}"), format!("/p{path}"));
            }
        }
    }
}
