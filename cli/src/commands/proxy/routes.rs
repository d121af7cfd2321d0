//! What the proxy forwards where: a route's settings (declared once, filled from the flags or
//! from a `[[route]]` table of the `--config` file), checked into [`Route`]s, and the pure
//! parts of forwarding: longest-prefix matching, the upstream URL of a request, and the
//! mapping of a redirect's `Location` back under its route.

#![cfg_attr(not(unix), allow(dead_code))]

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use dpop_client::http::Url;
use serde::Deserialize;

/// One route's settings. The flags fill one (prefix `/`); each `[[route]]` table of the
/// config file fills one, with the same names (`upstream`, `token`, `access_token_file`,
/// `key`) plus `prefix`.
#[derive(Args, Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouteSettings {
    /// Path prefix this route serves (config file only; the flags' route serves `/`).
    #[arg(skip)]
    #[serde(default)]
    pub(crate) prefix: Option<String>,
    /// Where requests go: an https:// URL (http:// only for a loopback host); the request's
    /// path, less the route's prefix, is appended to its path.
    #[arg(long, value_name = "URL")]
    pub(crate) upstream: Option<String>,
    /// Saved token to send (`dpop token --save NAME`), refreshed before it expires.
    #[arg(long, value_name = "NAME", conflicts_with = "access_token_file")]
    pub(crate) token: Option<String>,
    /// File holding the access token to send, read once at start.
    #[arg(long, value_name = "FILE")]
    pub(crate) access_token_file: Option<PathBuf>,
    /// Key label (default: the saved token's key, or the agent's only key).
    #[arg(long, value_name = "LABEL")]
    pub(crate) key: Option<String>,
}

/// The `--config` file: routes only.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    route: Vec<RouteSettings>,
}

/// Where a route's access token comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TokenFrom {
    /// A saved token, by name.
    Saved(String),
    /// A file.
    File(PathBuf),
}

/// A checked route.
#[derive(Clone, Debug)]
pub(crate) struct Route {
    /// `/` or a prefix without a trailing slash (`/api`).
    pub(crate) prefix: String,
    /// The upstream base URL (no query or fragment).
    pub(crate) upstream: Url,
    /// Its access token.
    pub(crate) token: TokenFrom,
    /// Its key, when named.
    pub(crate) key: Option<String>,
}

/// The routes from the flags' settings, or from the config file (not both).
pub(crate) fn load(flags: &RouteSettings, config: Option<&Path>) -> Result<Vec<Route>> {
    let settings = match config {
        Some(path) => {
            if flags.upstream.is_some()
                || flags.token.is_some()
                || flags.access_token_file.is_some()
                || flags.key.is_some()
            {
                bail!(
                    "--config {} holds the routes: --upstream, --token, --access-token-file and \
                     --key go in its [[route]] tables, not on the command line",
                    path.display()
                );
            }
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let file: ConfigFile =
                toml::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
            if file.route.is_empty() {
                bail!("{} has no [[route]]", path.display());
            }
            file.route
        }
        None => {
            let mut route = flags.clone();
            route.prefix = None;
            vec![route]
        }
    };
    let routes = settings
        .into_iter()
        .map(Route::check)
        .collect::<Result<Vec<_>>>()?;
    for (i, route) in routes.iter().enumerate() {
        if routes[..i].iter().any(|r| r.prefix == route.prefix) {
            bail!("two routes have the prefix {}", route.prefix);
        }
    }
    Ok(routes)
}

impl Route {
    fn check(settings: RouteSettings) -> Result<Route> {
        let prefix = normalize_prefix(settings.prefix.as_deref().unwrap_or("/"))?;
        let Some(upstream) = settings.upstream else {
            bail!("route {prefix}: no upstream (--upstream URL, or upstream = \"...\")");
        };
        let upstream = check_upstream(&upstream).with_context(|| format!("route {prefix}"))?;
        let token = match (settings.token, settings.access_token_file) {
            (Some(name), None) => TokenFrom::Saved(name),
            (None, Some(file)) => TokenFrom::File(file),
            (Some(_), Some(_)) => {
                bail!("route {prefix}: a token or an access token file, not both")
            }
            (None, None) => bail!(
                "route {prefix}: no token (--token NAME or --access-token-file FILE; \
                 token = or access_token_file = in the config file)"
            ),
        };
        Ok(Route {
            prefix,
            upstream,
            token,
            key: settings.key,
        })
    }
}

/// `/` or `/a/b` (no trailing slash), refusing what is not an absolute path.
fn normalize_prefix(prefix: &str) -> Result<String> {
    if !prefix.starts_with('/') || prefix.contains(['?', '#']) {
        bail!("route prefix {prefix:?} must be a path starting with /");
    }
    let trimmed = prefix.trim_end_matches('/');
    Ok(if trimmed.is_empty() {
        "/".to_owned()
    } else {
        trimmed.to_owned()
    })
}

/// An https URL, or http to a loopback host (the token and proofs must not cross a network
/// in clear); no query, fragment or credentials.
pub(crate) fn check_upstream(upstream: &str) -> Result<Url> {
    let url = Url::parse(upstream).with_context(|| format!("invalid upstream URL {upstream:?}"))?;
    if url.query().is_some() || url.fragment().is_some() {
        bail!("upstream {upstream} must not have a query or fragment");
    }
    if !url.username().is_empty() || url.password().is_some() {
        bail!("upstream {upstream} must not carry credentials");
    }
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(&url) => {}
        "http" => bail!(
            "upstream {upstream}: http:// only to a loopback host (127.0.0.1, [::1], \
             localhost); use https:// elsewhere"
        ),
        other => bail!("upstream {upstream}: scheme {other} (want https)"),
    }
    Ok(url)
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// The item whose route serves `path` (longest prefix, on a segment boundary), and the rest
/// of the path.
pub(crate) fn find<'a, 'p, T>(
    items: &'a [T],
    route: impl Fn(&T) -> &Route,
    path: &'p str,
) -> Option<(&'a T, &'p str)> {
    items
        .iter()
        .filter_map(|item| strip(&route(item).prefix, path).map(|rest| (item, rest)))
        .max_by_key(|(item, _)| route(item).prefix.len())
}

/// The upstream URL of a request for `rest` (the path less the route's prefix) and `query`.
pub(crate) fn upstream_url(route: &Route, rest: &str, query: Option<&str>) -> Result<Url> {
    let base = route.upstream.as_str();
    // `Url` serializes an empty path as `/`: joining strips that slash, then adds `rest`.
    let base = base.strip_suffix('/').unwrap_or(base);
    let rest = if rest.is_empty() && route.upstream.path() == "/" {
        "/"
    } else {
        rest
    };
    let mut url = format!("{base}{rest}");
    if let Some(query) = query {
        url.push('?');
        url.push_str(query);
    }
    Url::parse(&url).with_context(|| format!("invalid upstream URL for {rest:?}"))
}

/// A redirect's `Location`, as the client must see it. A target inside the route's upstream
/// (same origin, under its path) becomes the route's own path (`/prefix/rest?query`), so
/// the client's next request comes back through the proxy and gets a token and proof;
/// anything else (another origin, or outside the route) is passed on unchanged, and the
/// client goes there on its own, without the proxy's credentials.
pub(crate) fn map_location(route: &Route, request_url: &Url, location: &str) -> Option<String> {
    let target = request_url.join(location).ok()?;
    if target.origin() != route.upstream.origin() {
        return None;
    }
    let base = route.upstream.path().trim_end_matches('/');
    let rest = strip(if base.is_empty() { "/" } else { base }, target.path())?;
    let mut mapped = match route.prefix.as_str() {
        "/" if rest.is_empty() => "/".to_owned(),
        "/" => rest.to_owned(),
        prefix => format!("{prefix}{rest}"),
    };
    if let Some(query) = target.query() {
        mapped.push('?');
        mapped.push_str(query);
    }
    if let Some(fragment) = target.fragment() {
        mapped.push('#');
        mapped.push_str(fragment);
    }
    Some(mapped)
}

/// `path` less `prefix`, when `prefix` covers it whole segments at a time.
fn strip<'p>(prefix: &str, path: &'p str) -> Option<&'p str> {
    if prefix == "/" {
        return Some(path);
    }
    let rest = path.strip_prefix(prefix)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(prefix: &str, upstream: &str) -> Route {
        Route {
            prefix: normalize_prefix(prefix).unwrap(),
            upstream: check_upstream(upstream).unwrap(),
            token: TokenFrom::Saved("t".into()),
            key: None,
        }
    }

    #[test]
    fn longest_prefix_on_segment_boundaries() {
        let routes = [
            route("/", "https://a.example"),
            route("/v1", "https://b.example"),
            route("/v1/admin/", "https://c.example/x"),
        ];
        let host = |path| {
            find(&routes, |r| r, path)
                .map(|(r, rest)| (r.upstream.host_str().unwrap().to_owned(), rest.to_owned()))
        };
        assert_eq!(
            host("/v1/items"),
            Some(("b.example".into(), "/items".into()))
        );
        assert_eq!(host("/v1"), Some(("b.example".into(), "".into())));
        assert_eq!(host("/v10"), Some(("a.example".into(), "/v10".into())));
        assert_eq!(
            host("/v1/admin/users"),
            Some(("c.example".into(), "/users".into()))
        );
        assert_eq!(
            find(&routes[1..], |r| r, "/other").map(|(r, _)| r.prefix.clone()),
            None
        );
    }

    #[test]
    fn upstream_urls_join_the_rest_and_keep_the_query() {
        let root = route("/", "https://api.example");
        assert_eq!(
            upstream_url(&root, "/a/b", Some("x=1&y")).unwrap().as_str(),
            "https://api.example/a/b?x=1&y"
        );
        let api = route("/api", "https://api.example/base/");
        assert_eq!(
            upstream_url(&api, "/items", None).unwrap().as_str(),
            "https://api.example/base/items"
        );
        assert_eq!(
            upstream_url(&api, "", None).unwrap().as_str(),
            "https://api.example/base"
        );
        let bare = route("/api", "https://api.example");
        assert_eq!(
            upstream_url(&bare, "", None).unwrap().as_str(),
            "https://api.example/"
        );
    }

    #[test]
    fn locations_inside_the_route_come_back_through_it() {
        let api = route("/api", "https://api.example/base");
        let url = Url::parse("https://api.example/base/items").unwrap();
        assert_eq!(
            map_location(&api, &url, "/base/other?q=1").as_deref(),
            Some("/api/other?q=1")
        );
        assert_eq!(
            map_location(&api, &url, "https://api.example/base/x").as_deref(),
            Some("/api/x")
        );
        assert_eq!(
            map_location(&api, &url, "next").as_deref(),
            Some("/api/next")
        );
        assert_eq!(map_location(&api, &url, "/elsewhere"), None);
        assert_eq!(
            map_location(&api, &url, "https://evil.example/base/x"),
            None
        );
        assert_eq!(map_location(&api, &url, "http://api.example/base/x"), None);
        let root = route("/", "https://api.example");
        assert_eq!(
            map_location(&root, &url, "/login").as_deref(),
            Some("/login")
        );
    }

    #[test]
    fn upstreams_are_https_or_loopback_http() {
        assert!(check_upstream("https://api.example").is_ok());
        assert!(check_upstream("http://127.0.0.1:8080/x").is_ok());
        assert!(check_upstream("http://[::1]:8080").is_ok());
        assert!(check_upstream("http://localhost:1").is_ok());
        assert!(check_upstream("http://api.example").is_err());
        assert!(check_upstream("http://10.0.0.1").is_err());
        assert!(check_upstream("https://api.example/?q").is_err());
        assert!(check_upstream("https://u:p@api.example").is_err());
        assert!(check_upstream("ftp://api.example").is_err());
    }

    #[test]
    fn config_file_routes_and_their_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.toml");
        std::fs::write(&path, "[[route]]\nprefix = \"/a\"\nupstream = \"https://a.example\"\ntoken = \"a\"\n\n[[route]]\nprefix = \"/b/\"\nupstream = \"https://b.example\"\naccess_token_file = \"/t\"\nkey = \"k\"\n").unwrap();
        let routes = load(&RouteSettings::default(), Some(&path)).unwrap();
        assert_eq!(routes[0].token, TokenFrom::Saved("a".into()));
        assert_eq!(routes[1].prefix, "/b");
        assert_eq!(routes[1].key.as_deref(), Some("k"));
        let flags = RouteSettings {
            upstream: Some("https://x.example".into()),
            ..Default::default()
        };
        assert!(load(&flags, Some(&path)).is_err(), "flags and file at once");
        std::fs::write(
            &path,
            "[[route]]\nupstream = \"https://a.example\"\ntoken = \"a\"\nlisten = \"x\"\n",
        )
        .unwrap();
        assert!(
            load(&RouteSettings::default(), Some(&path)).is_err(),
            "unknown field"
        );
        std::fs::write(&path, "[[route]]\nupstream = \"https://a.example\"\ntoken = \"a\"\n[[route]]\nprefix = \"/\"\nupstream = \"https://b.example\"\ntoken = \"b\"\n").unwrap();
        assert!(
            load(&RouteSettings::default(), Some(&path)).is_err(),
            "same prefix twice"
        );
        assert!(
            load(&RouteSettings::default(), None).is_err(),
            "no upstream"
        );
    }
}
