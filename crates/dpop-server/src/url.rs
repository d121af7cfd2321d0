//! The request URL a proof's `htu` is compared with, rebuilt from configuration rather than
//! from whatever `Host` a client sent, and from a trusted proxy's headers of the one family
//! it was configured with.
//!
//! Over 600 lines only with its tests (about 400 of them: the header rules and a proptest);
//! the code is about 420.

use std::net::IpAddr;

use http::HeaderMap;
use http::uri::{Authority, Scheme, Uri};

use crate::ConfigError;

/// The forwarding headers a trusted proxy sets: one family, chosen explicitly. The other
/// family is ignored entirely, since a proxy that sets one usually passes a client's copy of
/// the other through untouched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyHeaders {
    /// `Forwarded` (RFC 7239): its `proto` and `host` parameters.
    Forwarded,
    /// `X-Forwarded-Proto`, `X-Forwarded-Host` and `X-Forwarded-Port`.
    XForwarded,
}

/// How the public URL of a request is rebuilt (section "Proxies and htu" of docs/server.md).
///
/// By default scheme, host, port and path prefix all come from the configured public base
/// URL, and the request's own path is appended: `https://api.example.com/v1` and a request for
/// `/items` give `https://api.example.com/v1/items`. Only when the TCP peer is one of the
/// [trusted proxies](Self::trust_proxies) do the headers of the chosen [`ProxyHeaders`] family
/// replace scheme, host and port. The proxy must overwrite those headers: a request that
/// carries several values of one (several header lines, or a comma-separated list, as a proxy
/// that appends to a client's header would send) is refused rather than guessed at. An
/// [allow list](Self::allowed_hosts) limits the hosts the headers may name.
#[derive(Clone, Debug)]
pub struct PublicUrl {
    scheme: Scheme,
    authority: Authority,
    /// The base path without its trailing slash (`""` for `/`).
    prefix: String,
    proxy_headers: Option<ProxyHeaders>,
    trusted_proxies: Vec<IpAddr>,
    allowed_hosts: Vec<AllowedHost>,
}

/// An entry of [`PublicUrl::allowed_hosts`]: a lower-cased host, and a port when one was given.
#[derive(Clone, Debug, PartialEq, Eq)]
struct AllowedHost {
    host: String,
    port: Option<u16>,
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
            proxy_headers: None,
            trusted_proxies: Vec::new(),
            allowed_hosts: Vec::new(),
        })
    }

    /// Trusts the `headers` family from these peers (the reverse proxies in front), which
    /// must set those headers on every request, overwriting a client's. Replaces the family
    /// of an earlier call; the peers add up.
    pub fn trust_proxies(
        mut self,
        headers: ProxyHeaders,
        proxies: impl IntoIterator<Item = IpAddr>,
    ) -> PublicUrl {
        self.proxy_headers = Some(headers);
        self.trusted_proxies.extend(proxies);
        self
    }

    /// Accepts only these hosts from a trusted proxy's headers: `host` (any port) or
    /// `host:port` (that port only; a URL without a port has its scheme's default), compared
    /// case-insensitively. Any other host is refused (`400 invalid_request`). The configured
    /// base URL's host counts as one more entry, with its port if it has one. Without a list
    /// every host a trusted proxy names is used.
    pub fn allowed_hosts<S: AsRef<str>>(
        mut self,
        hosts: impl IntoIterator<Item = S>,
    ) -> Result<PublicUrl, ConfigError> {
        for host in hosts {
            let host = host.as_ref();
            let bad = |reason: &'static str| ConfigError::AllowedHost {
                host: host.to_owned(),
                reason,
            };
            let authority: Authority = host.parse().map_err(|_| bad("not host[:port]"))?;
            if host.contains('@') {
                return Err(bad("user information is not allowed"));
            }
            self.allowed_hosts.push(AllowedHost {
                host: authority.host().to_ascii_lowercase(),
                port: authority.port_u16(),
            });
        }
        Ok(self)
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
        let family = self
            .proxy_headers
            .filter(|_| peer.is_some_and(|p| self.trusted_proxies.contains(&p)));
        let (scheme, authority) = match family {
            None => (self.scheme.as_str().to_owned(), self.authority.to_string()),
            Some(family) => self.forwarded_origin(family, headers)?,
        };
        Ok(format!("{scheme}://{authority}{}{path}", self.prefix))
    }

    /// Scheme and authority from a trusted proxy's headers of `family`, each part the
    /// configured one where the proxy says nothing.
    fn forwarded_origin(
        &self,
        family: ProxyHeaders,
        headers: &HeaderMap,
    ) -> Result<(String, String), ForwardedError> {
        let said = match family {
            ProxyHeaders::Forwarded => Said::forwarded(headers)?,
            ProxyHeaders::XForwarded => Said::x_forwarded(headers)?,
        };
        let scheme = said
            .proto
            .unwrap_or_else(|| self.scheme.as_str().to_owned());
        // The proxy's port completes its host, or replaces the configured one.
        let (host, port) = match &said.host {
            Some(authority) => match (authority.port_u16(), said.port) {
                (Some(a), Some(b)) if a != b => {
                    return Err(ForwardedError::Unusable {
                        header: "X-Forwarded-Port",
                        reason: "it disagrees with the port in X-Forwarded-Host",
                    });
                }
                (a, b) => (authority.host(), a.or(b)),
            },
            None => (
                self.authority.host(),
                said.port.or(self.authority.port_u16()),
            ),
        };
        let authority = match port {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        if said.host.is_some() || said.port.is_some() {
            self.check_allowed(family, &scheme, host, port, &authority)?;
        }
        Ok((scheme, authority))
    }

    fn check_allowed(
        &self,
        family: ProxyHeaders,
        scheme: &str,
        host: &str,
        port: Option<u16>,
        authority: &str,
    ) -> Result<(), ForwardedError> {
        if self.allowed_hosts.is_empty() {
            return Ok(());
        }
        let port = port.unwrap_or(if scheme == "https" { 443 } else { 80 });
        let host = host.to_ascii_lowercase();
        // The configured base URL counts as one more entry, as written.
        let configured = AllowedHost {
            host: self.authority.host().to_ascii_lowercase(),
            port: self.authority.port_u16(),
        };
        let allowed = |a: &AllowedHost| a.host == host && a.port.is_none_or(|p| p == port);
        let (configured, listed) = (allowed(&configured), self.allowed_hosts.iter().any(allowed));
        if configured || listed {
            return Ok(());
        }
        Err(ForwardedError::HostNotAllowed {
            header: match family {
                ProxyHeaders::Forwarded => "Forwarded",
                ProxyHeaders::XForwarded => "X-Forwarded-Host",
            },
            host: authority.to_owned(),
        })
    }
}

/// A trusted proxy's forwarding header that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ForwardedError {
    /// A value that is not what the header holds.
    #[error("unusable {header} header from a trusted proxy: {reason}")]
    Unusable {
        /// The header.
        header: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Several values of a header (lines or list elements): the proxy appended its value to a
    /// client's instead of overwriting it, and which one is the proxy's is not guessed.
    #[error(
        "several {header} values: the trusted proxy must overwrite the header, not append to a client's"
    )]
    Several {
        /// The header.
        header: &'static str,
    },
    /// A host outside [`PublicUrl::allowed_hosts`].
    #[error("the host {host} named by the trusted proxy's {header} header is not an allowed host")]
    HostNotAllowed {
        /// The header that named it.
        header: &'static str,
        /// The host (and port) it named.
        host: String,
    },
}

/// What the trusted proxy says about the original request.
#[derive(Debug, Default)]
struct Said {
    proto: Option<String>,
    host: Option<Authority>,
    port: Option<u16>,
}

impl Said {
    /// RFC 7239: exactly one element over every `Forwarded` line, each parameter at most once.
    fn forwarded(headers: &HeaderMap) -> Result<Said, ForwardedError> {
        const HEADER: &str = "Forwarded";
        let mut elements = Vec::new();
        for value in headers.get_all("forwarded") {
            let value = value.to_str().map_err(|_| unusable(HEADER, "not ASCII"))?;
            elements.extend(forwarded_elements(value).map_err(|reason| unusable(HEADER, reason))?);
        }
        let element = match elements.len() {
            0 if headers.contains_key("forwarded") => {
                return Err(unusable(HEADER, "an empty header"));
            }
            0 => return Ok(Said::default()),
            1 => elements.remove(0),
            _ => return Err(ForwardedError::Several { header: HEADER }),
        };
        let mut said = Said::default();
        let mut seen: Vec<String> = Vec::new();
        for (name, value) in element {
            if seen.contains(&name) {
                return Err(unusable(HEADER, "a parameter given twice"));
            }
            match name.as_str() {
                "proto" => said.proto = Some(proto(&value, HEADER)?),
                "host" => said.host = Some(host(&value, HEADER)?),
                _ => {}
            }
            seen.push(name);
        }
        Ok(said)
    }

    /// `X-Forwarded-Proto`, `-Host` and `-Port`, each at most one value.
    fn x_forwarded(headers: &HeaderMap) -> Result<Said, ForwardedError> {
        let port = single(headers, "x-forwarded-port", "X-Forwarded-Port")?
            .map(|v| {
                v.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0 && v.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or_else(|| unusable("X-Forwarded-Port", "not a port number"))
            })
            .transpose()?;
        Ok(Said {
            proto: single(headers, "x-forwarded-proto", "X-Forwarded-Proto")?
                .map(|v| proto(v, "X-Forwarded-Proto"))
                .transpose()?,
            host: single(headers, "x-forwarded-host", "X-Forwarded-Host")?
                .map(|v| host(v, "X-Forwarded-Host"))
                .transpose()?,
            port,
        })
    }
}

/// The one value of `name`, trimmed; several lines or a comma-separated list are refused.
fn single<'h>(
    headers: &'h HeaderMap,
    name: &'static str,
    header: &'static str,
) -> Result<Option<&'h str>, ForwardedError> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ForwardedError::Several { header });
    }
    let value = value.to_str().map_err(|_| unusable(header, "not ASCII"))?;
    if value.contains(',') {
        return Err(ForwardedError::Several { header });
    }
    let value = value.trim();
    if value.is_empty() {
        return Err(unusable(header, "an empty header"));
    }
    Ok(Some(value))
}

/// The non-empty elements of one `Forwarded` line, each its `(lower-cased name, value)`
/// pairs, quoted strings unquoted (RFC 7239 section 4, RFC 9110 section 5.6). An unquoted
/// value may hold `:` and `[]` (as `host=h:8080`), which some proxies send unquoted.
fn forwarded_elements(line: &str) -> Result<Vec<Vec<(String, String)>>, &'static str> {
    let mut elements = Vec::new();
    let mut element = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| *c == ' ' || *c == '\t').is_some() {}
        match chars.peek() {
            None => break,
            Some(',') => {
                chars.next();
                if !element.is_empty() {
                    elements.push(std::mem::take(&mut element));
                }
                continue;
            }
            Some(';') => {
                chars.next();
                continue;
            }
            Some(_) => {}
        }
        let mut name = String::new();
        while let Some(c) = chars.next_if(|c| is_tchar(*c)) {
            name.push(c.to_ascii_lowercase());
        }
        if name.is_empty() || chars.next() != Some('=') {
            return Err("a parameter that is not name=value");
        }
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            loop {
                match chars.next() {
                    None => return Err("an unterminated quoted string"),
                    Some('"') => break,
                    Some('\\') => value.push(chars.next().ok_or("an unterminated quoted string")?),
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| is_tchar(*c) || matches!(c, ':' | '[' | ']')) {
                value.push(c);
            }
            if value.is_empty() {
                return Err("a parameter without a value");
            }
        }
        element.push((name, value));
        while chars.next_if(|c| *c == ' ' || *c == '\t').is_some() {}
        if !matches!(chars.peek(), None | Some(',') | Some(';')) {
            return Err("text after a parameter's value");
        }
    }
    if !element.is_empty() {
        elements.push(element);
    }
    Ok(elements)
}

/// RFC 9110 `tchar`.
fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

fn proto(value: &str, header: &'static str) -> Result<String, ForwardedError> {
    match value.to_ascii_lowercase().as_str() {
        p @ ("http" | "https") => Ok(p.to_owned()),
        _ => Err(unusable(header, "proto is neither http nor https")),
    }
}

fn host(value: &str, header: &'static str) -> Result<Authority, ForwardedError> {
    let authority: Authority = value
        .parse()
        .map_err(|_| unusable(header, "host is not host[:port]"))?;
    if authority.as_str().contains('@') {
        return Err(unusable(header, "host has user information"));
    }
    if authority.host().is_empty() {
        return Err(unusable(header, "host is not host[:port]"));
    }
    Ok(authority)
}

fn unusable(header: &'static str, reason: &'static str) -> ForwardedError {
    ForwardedError::Unusable { header, reason }
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

    fn behind(family: ProxyHeaders) -> PublicUrl {
        PublicUrl::new("https://api.example.com")
            .unwrap()
            .trust_proxies(family, [PROXY])
    }

    #[track_caller]
    fn rebuilt(url: &PublicUrl, pairs: &[(&'static str, &str)]) -> String {
        url.request_url("/a", &headers(pairs), Some(PROXY))
            .unwrap_or_else(|e| panic!("{pairs:?}: {e}"))
    }

    #[track_caller]
    fn refused(url: &PublicUrl, pairs: &[(&'static str, &str)]) -> ForwardedError {
        match url.request_url("/a", &headers(pairs), Some(PROXY)) {
            Ok(u) => panic!("{pairs:?} gave {u}"),
            Err(e) => e,
        }
    }

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
    fn forwarding_headers_count_only_from_a_trusted_proxy() {
        let h = headers(&[
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", "public.example.com:8443"),
            ("forwarded", "proto=http;host=public.example.com"),
        ]);
        for family in [ProxyHeaders::Forwarded, ProxyHeaders::XForwarded] {
            let url = behind(family);
            assert_eq!(
                url.request_url("/a", &h, Some(CLIENT)).unwrap(),
                "https://api.example.com/a"
            );
            assert_eq!(
                url.request_url("/a", &h, None).unwrap(),
                "https://api.example.com/a"
            );
        }
        // Without a family nothing is trusted, whatever the peer.
        let plain = PublicUrl::new("https://api.example.com").unwrap();
        assert_eq!(
            plain.request_url("/a", &h, Some(PROXY)).unwrap(),
            "https://api.example.com/a"
        );
    }

    /// The finding of issue 22 item 4: behind a proxy that sets X-Forwarded-*, a client's own
    /// `Forwarded` used to win.
    #[test]
    fn only_the_chosen_family_counts_and_the_other_is_ignored_entirely() {
        let both = [
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", "rs.example.com"),
            ("forwarded", "proto=https;host=b.example.net"),
        ];
        assert_eq!(
            rebuilt(&behind(ProxyHeaders::XForwarded), &both),
            "http://rs.example.com/a"
        );
        assert_eq!(
            rebuilt(&behind(ProxyHeaders::Forwarded), &both),
            "https://b.example.net/a"
        );
        // Not even a broken header of the other family matters.
        let broken = [
            ("forwarded", "host=\"unterminated"),
            ("x-forwarded-host", "rs.example.com"),
        ];
        assert_eq!(
            rebuilt(&behind(ProxyHeaders::XForwarded), &broken),
            "https://rs.example.com/a"
        );
        // A family whose headers are absent leaves the configured URL.
        assert_eq!(
            rebuilt(
                &behind(ProxyHeaders::Forwarded),
                &[("x-forwarded-host", "b.example.net")]
            ),
            "https://api.example.com/a"
        );
    }

    #[test]
    fn several_values_of_the_chosen_header_are_refused_not_guessed_at() {
        let x = behind(ProxyHeaders::XForwarded);
        for pairs in [
            &[("x-forwarded-host", "b.example.net, rs.example.com")][..],
            &[
                ("x-forwarded-host", "b.example.net"),
                ("x-forwarded-host", "rs.example.com"),
            ],
            &[("x-forwarded-proto", "http,https")],
            &[("x-forwarded-port", "80"), ("x-forwarded-port", "443")],
        ] {
            assert!(
                matches!(refused(&x, pairs), ForwardedError::Several { .. }),
                "{pairs:?}"
            );
        }
        let f = behind(ProxyHeaders::Forwarded);
        for pairs in [
            &[("forwarded", "host=b.example.net, host=rs.example.com")][..],
            &[
                ("forwarded", "host=b.example.net"),
                ("forwarded", "for=10.0.0.2"),
            ],
        ] {
            let e = refused(&f, pairs);
            assert!(
                matches!(
                    e,
                    ForwardedError::Several {
                        header: "Forwarded"
                    }
                ),
                "{pairs:?}"
            );
            assert!(e.to_string().contains("must overwrite"), "{e}");
        }
        // Empty list elements are not values.
        assert_eq!(
            rebuilt(&f, &[("forwarded", " , proto=http;host=rs.example.com ,")]),
            "http://rs.example.com/a"
        );
    }

    #[test]
    fn forwarded_is_parsed_as_rfc_7239() {
        let f = behind(ProxyHeaders::Forwarded);
        // Quoted strings may hold `,` `;` and escapes; names are case-insensitive; `for`
        // and unknown parameters are ignored.
        assert_eq!(
            rebuilt(
                &f,
                &[(
                    "forwarded",
                    r#"for="[2001:db8::1]:4711";ext="a,b;c\"d";Proto=HTTPS;HOST="rs.example.com:8443""#
                )]
            ),
            "https://rs.example.com:8443/a"
        );
        // A host with a port, unquoted, as some proxies send it.
        assert_eq!(
            rebuilt(&f, &[("forwarded", "host=rs.example.com:8080;proto=http")]),
            "http://rs.example.com:8080/a"
        );
        assert_eq!(
            rebuilt(&f, &[("forwarded", "host=\"[::1]:8080\"")]),
            "https://[::1]:8080/a"
        );
        for value in [
            "host=a.example;host=b.example",
            "host",
            "host=",
            "=x",
            "host=\"a.example",
            "host=a.example junk",
            "host=\"user@a.example\"",
            "proto=ftp",
            "",
        ] {
            let e = refused(&f, &[("forwarded", value)]);
            assert!(
                matches!(
                    e,
                    ForwardedError::Unusable {
                        header: "Forwarded",
                        ..
                    }
                ),
                "{value:?}: {e}"
            );
        }
    }

    #[test]
    fn x_forwarded_port_completes_the_host_and_must_agree_with_it() {
        let x = behind(ProxyHeaders::XForwarded);
        // nginx's $host has no port; $server_port is separate.
        assert_eq!(
            rebuilt(
                &x,
                &[
                    ("x-forwarded-proto", "http"),
                    ("x-forwarded-host", "127.0.0.1"),
                    ("x-forwarded-port", "8080")
                ]
            ),
            "http://127.0.0.1:8080/a"
        );
        assert_eq!(
            rebuilt(
                &x,
                &[
                    ("x-forwarded-host", "rs.example.com:8443"),
                    ("x-forwarded-port", "8443")
                ]
            ),
            "https://rs.example.com:8443/a"
        );
        // The port alone applies to the configured host.
        assert_eq!(
            rebuilt(&x, &[("x-forwarded-port", "8443")]),
            "https://api.example.com:8443/a"
        );
        for pairs in [
            &[
                ("x-forwarded-host", "rs.example.com:8443"),
                ("x-forwarded-port", "443"),
            ][..],
            &[("x-forwarded-port", "0")],
            &[("x-forwarded-port", "65536")],
            &[("x-forwarded-port", "+80")],
            &[("x-forwarded-host", "")],
            &[("x-forwarded-host", "user@host")],
            &[("x-forwarded-proto", "gopher")],
        ] {
            assert!(
                matches!(refused(&x, pairs), ForwardedError::Unusable { .. }),
                "{pairs:?}"
            );
        }
    }

    #[test]
    fn an_allow_list_refuses_other_hosts_by_name_and_port() {
        let x = behind(ProxyHeaders::XForwarded)
            .allowed_hosts(["RS.example.com", "other.example.com:8443"])
            .unwrap();
        for (host, port, expected) in [
            ("rs.example.com", None, "https://rs.example.com/a"),
            (
                "Rs.Example.Com",
                Some("8080"),
                "https://Rs.Example.Com:8080/a",
            ),
            (
                "other.example.com",
                Some("8443"),
                "https://other.example.com:8443/a",
            ),
            // The configured host is one more entry (here without a port).
            (
                "api.example.com",
                Some("8443"),
                "https://api.example.com:8443/a",
            ),
        ] {
            let mut pairs = vec![("x-forwarded-host", host)];
            pairs.extend(port.map(|p| ("x-forwarded-port", p)));
            assert_eq!(rebuilt(&x, &pairs), expected);
        }
        for (host, port) in [
            ("b.example.net", None),
            ("other.example.com", None),
            ("other.example.com", Some("443")),
        ] {
            let mut pairs = vec![("x-forwarded-host", host)];
            pairs.extend(port.map(|p| ("x-forwarded-port", p)));
            let e = refused(&x, &pairs);
            assert!(
                matches!(e, ForwardedError::HostNotAllowed { .. }),
                "{pairs:?}: {e}"
            );
            assert!(e.to_string().contains(host), "{e}");
        }
        // A configured base URL with a port allows that port only.
        let x = PublicUrl::new("https://api.example.com:8443")
            .unwrap()
            .trust_proxies(ProxyHeaders::XForwarded, [PROXY])
            .allowed_hosts(["rs.example.com"])
            .unwrap();
        assert_eq!(
            rebuilt(&x, &[("x-forwarded-host", "API.example.com:8443")]),
            "https://API.example.com:8443/a"
        );
        assert!(matches!(
            refused(&x, &[("x-forwarded-host", "api.example.com:9000")]),
            ForwardedError::HostNotAllowed { .. }
        ));
        // The default port counts as the port of an entry with one.
        let x = behind(ProxyHeaders::XForwarded)
            .allowed_hosts(["rs.example.com:443"])
            .unwrap();
        assert_eq!(
            rebuilt(&x, &[("x-forwarded-host", "rs.example.com")]),
            "https://rs.example.com/a"
        );
        assert!(
            PublicUrl::new("https://a")
                .unwrap()
                .allowed_hosts(["u@h"])
                .is_err()
        );
        assert!(
            PublicUrl::new("https://a")
                .unwrap()
                .allowed_hosts(["h/p"])
                .is_err()
        );
        assert!(
            PublicUrl::new("https://a")
                .unwrap()
                .allowed_hosts([""])
                .is_err()
        );
    }

    #[test]
    fn unusable_base_urls_are_errors() {
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
        /// always gets the configured URL, and a trusted one a URL that parses, from its
        /// family's headers only.
        #[test]
        fn any_forwarding_headers_are_handled(
            forwarded in "\\PC{0,60}",
            proto in "\\PC{0,12}",
            host in "\\PC{0,40}",
            port in "\\PC{0,6}",
            path in "/[!-~]{0,30}",
        ) {
            for family in [ProxyHeaders::Forwarded, ProxyHeaders::XForwarded] {
                let url = PublicUrl::new("https://api.example.com/p")
                    .unwrap()
                    .trust_proxies(family, [PROXY]);
                let mut h = HeaderMap::new();
                for (name, value) in [("forwarded", &forwarded), ("x-forwarded-proto", &proto), ("x-forwarded-host", &host), ("x-forwarded-port", &port)] {
                    if let Ok(v) = http::HeaderValue::from_str(value) {
                        h.append(name, v);
                    }
                }
                let untrusted = url.request_url(&path, &h, Some(CLIENT)).unwrap();
                proptest::prop_assert!(untrusted.starts_with("https://api.example.com/p/"));
                let mut other = h.clone();
                match family {
                    ProxyHeaders::Forwarded => {
                        for name in ["x-forwarded-proto", "x-forwarded-host", "x-forwarded-port"] {
                            other.remove(name);
                        }
                    }
                    ProxyHeaders::XForwarded => {
                        other.remove("forwarded");
                    }
                }
                let rebuilt = url.request_url(&path, &h, Some(PROXY)).ok();
                let without_other = url.request_url(&path, &other, Some(PROXY)).ok();
                proptest::prop_assert_eq!(&rebuilt, &without_other);
                if let Some(rebuilt) = rebuilt {
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
}
