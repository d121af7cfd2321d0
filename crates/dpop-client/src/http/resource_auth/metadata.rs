//! Protected resource metadata (RFC 9728): where it is looked for, and the check that it
//! describes the resource asked about.

use serde::Deserialize;
use url::Url;

use super::super::{Error, MAX_JSON_BODY, printable, read_body};

/// The members of a protected resource metadata document this client uses.
#[derive(Clone, Debug, Deserialize)]
pub struct ProtectedResourceMetadata {
    /// The resource identifier; must be the resource's URL (RFC 9728 section 3.3).
    pub resource: String,
    /// Issuers of the authorization servers that issue tokens for it.
    #[serde(default)]
    pub authorization_servers: Vec<String>,
    /// Scopes the resource understands.
    pub scopes_supported: Option<Vec<String>>,
}

/// The canonical URI of a resource (MCP authorization, "Canonical Server URI"; RFC 8707
/// section 2): no fragment, lowercase scheme and host (the URL parser does that), and no
/// trailing `/` unless the path is nothing else. Refuses a URL that cannot be a resource.
pub(crate) fn canonical_resource(url: &Url) -> Result<String, Error> {
    if url.cannot_be_a_base() || url.host().is_none() {
        return Err(Error::BadUrl {
            url: url.to_string(),
            reason: "a resource is an absolute http(s) URL",
        });
    }
    let mut url = url.clone();
    url.set_fragment(None);
    let mut text = url.to_string();
    if url.query().is_none() && text.ends_with('/') {
        text.pop();
    }
    Ok(text)
}

/// Whether the resource identifier `named` (from protected resource metadata) stands for
/// `resource`: the same canonical URI, or the same origin with a path that is a prefix of
/// `resource`'s on a segment boundary (`https://h` or `https://h/api` for `https://h/api/mcp`).
/// Metadata at the root well-known URL names the origin (RFC 9728 section 3.3: the
/// identifier the well-known string was inserted into), and the MCP SDKs accept such a
/// prefix; metadata for another origin or a sibling path is refused.
pub(crate) fn covers(named: &str, resource: &Url) -> bool {
    let Ok(named_url) = Url::parse(named) else {
        return false;
    };
    let (Ok(named), Ok(full)) = (canonical_resource(&named_url), canonical_resource(resource))
    else {
        return false;
    };
    if named == full {
        return true;
    }
    if named_url.origin() != resource.origin()
        || named_url.query().is_some()
        || named_url.fragment().is_some()
    {
        return false;
    }
    let prefix = named_url.path().trim_end_matches('/');
    let path = resource.path();
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Refuses an authorization server URL that is not `https`, except `http` on a loopback
/// address (`127.0.0.0/8`, `::1`, `localhost`: tests and local servers): the MCP
/// authorization spec has every authorization server endpoint served over HTTPS.
pub(crate) fn check_secure(url: &Url) -> Result<(), Error> {
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    };
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err(Error::BadUrl {
            url: url.to_string(),
            reason: "an authorization server is reached over https (http only on loopback)",
        }),
    }
}

/// The well-known places of the metadata of `resource`, in the order the MCP spec tries them
/// when no challenge names one: the path-based URL (RFC 9728 section 3.1, the well-known
/// segment inserted before the path), then the root.
pub(crate) fn resource_metadata_urls(resource: &Url) -> Vec<Url> {
    let path = resource.path().trim_end_matches('/');
    let mut root = resource.clone();
    root.set_query(None);
    root.set_fragment(None);
    root.set_path("/.well-known/oauth-protected-resource");
    let mut urls = Vec::new();
    if !path.is_empty() {
        let mut with_path = root.clone();
        with_path.set_path(&format!("/.well-known/oauth-protected-resource{path}"));
        urls.push(with_path);
    }
    urls.push(root);
    urls
}

/// Fetches the protected resource metadata of `resource` (without DPoP: it is public): from
/// `resource_metadata` (the URL a challenge named) when given, else from the well-known URLs
/// (path-based first, then root), and checks that its `resource` is `resource`'s canonical
/// URI (RFC 9728 section 3.3: metadata for another resource is refused, not used).
pub async fn protected_resource_metadata(
    http: &reqwest::Client,
    resource: &Url,
    resource_metadata: Option<&Url>,
) -> Result<ProtectedResourceMetadata, Error> {
    let expected = canonical_resource(resource)?;
    let fail = |reason: String| Error::Discovery {
        issuer: expected.clone(),
        reason,
    };
    let urls = match resource_metadata {
        Some(url) => vec![url.clone()],
        None => resource_metadata_urls(resource),
    };
    let mut tried = Vec::new();
    for url in urls {
        let response = http.get(url.clone()).send().await?;
        if !response.status().is_success() {
            tried.push(format!("{url}: HTTP {}", response.status()));
            continue;
        }
        let body = read_body(response, "resource metadata", MAX_JSON_BODY).await?;
        let metadata: ProtectedResourceMetadata = serde_json::from_slice(&body)
            .map_err(|e| fail(format!("{url} is not protected resource metadata: {e}")))?;
        if !covers(&metadata.resource, resource) {
            return Err(fail(format!(
                "{url} describes the resource {:?}, not this one",
                printable(&metadata.resource)
            )));
        }
        if metadata.authorization_servers.is_empty() {
            return Err(fail(format!("{url} names no authorization server")));
        }
        return Ok(metadata);
    }
    Err(fail(format!(
        "no protected resource metadata ({})",
        tried.join("; ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resource_is_covered_by_itself_or_a_prefix_of_its_origin() {
        let mcp = Url::parse("https://h.example/api/mcp").unwrap();
        for named in [
            "https://h.example/api/mcp",
            "https://h.example/api/mcp/",
            "https://H.example/api",
            "https://h.example",
            "https://h.example/",
        ] {
            assert!(covers(named, &mcp), "{named}");
        }
        for named in [
            "https://h.example/ap",
            "https://h.example/api/mcp2",
            "https://h.example/other",
            "https://other.example/api/mcp",
            "http://h.example/api/mcp",
            "https://h.example:8443/api/mcp",
            "https://h.example/api?x=1",
            "not a url",
        ] {
            assert!(!covers(named, &mcp), "{named}");
        }
    }

    fn urls(resource: &str) -> Vec<String> {
        resource_metadata_urls(&Url::parse(resource).unwrap())
            .iter()
            .map(Url::to_string)
            .collect()
    }

    #[test]
    fn path_based_then_root() {
        assert_eq!(
            urls("https://example.com/public/mcp"),
            [
                "https://example.com/.well-known/oauth-protected-resource/public/mcp",
                "https://example.com/.well-known/oauth-protected-resource",
            ]
        );
        assert_eq!(
            urls("http://127.0.0.1:8080/mcp/?x=1#f"),
            [
                "http://127.0.0.1:8080/.well-known/oauth-protected-resource/mcp",
                "http://127.0.0.1:8080/.well-known/oauth-protected-resource",
            ]
        );
        assert_eq!(
            urls("https://example.com/"),
            ["https://example.com/.well-known/oauth-protected-resource"]
        );
    }

    #[test]
    fn authorization_servers_over_https_or_loopback_only() {
        let ok = |s: &str| check_secure(&Url::parse(s).unwrap()).is_ok();
        assert!(ok("https://as.example.com/t"));
        assert!(ok("http://127.0.0.1:8080"));
        assert!(ok("http://127.1.2.3"));
        assert!(ok("http://[::1]:9"));
        assert!(ok("http://LocalHost:3000/x"));
        assert!(!ok("http://as.example.com"));
        assert!(!ok("http://10.0.0.1"));
        assert!(!ok("ftp://127.0.0.1"));
    }

    #[test]
    fn canonical_uri_drops_fragment_and_trailing_slash() {
        let c = |s: &str| canonical_resource(&Url::parse(s).unwrap()).unwrap();
        assert_eq!(c("HTTPS://MCP.Example.com/"), "https://mcp.example.com");
        assert_eq!(
            c("https://mcp.example.com/mcp#x"),
            "https://mcp.example.com/mcp"
        );
        assert_eq!(
            c("https://mcp.example.com/mcp/"),
            "https://mcp.example.com/mcp"
        );
        assert_eq!(
            c("https://mcp.example.com:8443"),
            "https://mcp.example.com:8443"
        );
        assert!(canonical_resource(&Url::parse("mailto:a@b").unwrap()).is_err());
    }
}
