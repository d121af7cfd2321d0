//! Authorization server metadata: RFC 8414 `/.well-known/oauth-authorization-server`, then
//! OpenID Connect Discovery `/.well-known/openid-configuration` ([`discover`]); the MCP
//! authorization spec's longer order and exact issuer check ([`discover_mcp`]).

use serde::Deserialize;
use url::Url;

use super::Error;

/// The metadata this crate uses (other members are ignored).
#[derive(Clone, Debug, Deserialize)]
pub struct ServerMetadata {
    /// The issuer identifier; must equal the one discovery started from.
    pub issuer: String,
    /// The token endpoint.
    pub token_endpoint: Option<Url>,
    /// The authorization endpoint (authorization-code grant).
    pub authorization_endpoint: Option<Url>,
    /// The device authorization endpoint (RFC 8628).
    pub device_authorization_endpoint: Option<Url>,
    /// The pushed authorization request endpoint (RFC 9126).
    pub pushed_authorization_request_endpoint: Option<Url>,
    /// Whether every authorization request must be pushed (RFC 9126).
    #[serde(default)]
    pub require_pushed_authorization_requests: bool,
    /// The JWS algorithms the server accepts in DPoP proofs (RFC 9449 section 5.1).
    pub dpop_signing_alg_values_supported: Option<Vec<String>>,
    /// Client authentication methods at the token endpoint.
    pub token_endpoint_auth_methods_supported: Option<Vec<String>>,
    /// PKCE methods (RFC 8414); an MCP client refuses a server without `S256` here.
    pub code_challenge_methods_supported: Option<Vec<String>>,
    /// The dynamic client registration endpoint (RFC 7591).
    pub registration_endpoint: Option<Url>,
    /// Scopes the server knows.
    pub scopes_supported: Option<Vec<String>>,
    /// Whether an HTTPS URL may be a `client_id` naming a Client ID Metadata Document.
    #[serde(default)]
    pub client_id_metadata_document_supported: bool,
    /// Whether the authorization response carries `iss` (RFC 9207).
    #[serde(default)]
    pub authorization_response_iss_parameter_supported: bool,
}

impl ServerMetadata {
    /// Refuses a key of algorithm `alg` when the server lists the algorithms it accepts and
    /// `alg` is not one of them. A server that lists none says nothing, and is not refused.
    pub fn check_alg(&self, key: &str, alg: &str) -> Result<(), Error> {
        match &self.dpop_signing_alg_values_supported {
            Some(algs) if !algs.iter().any(|a| a == alg) => Err(Error::AlgorithmNotSupported {
                key: key.to_owned(),
                alg: alg.to_owned(),
                supported: if algs.is_empty() {
                    "no algorithm".to_owned()
                } else {
                    // The server's strings, bound for a terminal or a log.
                    super::printable(&algs.join(", ")).into_owned()
                },
            }),
            _ => Ok(()),
        }
    }
}

/// The two places metadata may be, in the order they are tried: RFC 8414 inserts the
/// well-known segment between host and path, OpenID appends it to the issuer.
fn metadata_urls(issuer: &Url) -> Vec<Url> {
    let path = issuer.path().trim_end_matches('/');
    let mut rfc8414 = issuer.clone();
    rfc8414.set_path(&format!("/.well-known/oauth-authorization-server{path}"));
    let mut openid = issuer.clone();
    openid.set_path(&format!("{path}/.well-known/openid-configuration"));
    vec![rfc8414, openid]
}

/// The places the MCP authorization spec (2025-11-25) tries, in its order: for an issuer with
/// a path, RFC 8414 and OpenID with the well-known segment inserted, then OpenID appended;
/// for one without, RFC 8414 then OpenID.
pub(crate) fn mcp_metadata_urls(issuer: &Url) -> Vec<Url> {
    let path = issuer.path().trim_end_matches('/');
    let inserted = |well_known: &str| {
        let mut url = issuer.clone();
        url.set_path(&format!("/.well-known/{well_known}{path}"));
        url
    };
    let mut urls = vec![
        inserted("oauth-authorization-server"),
        inserted("openid-configuration"),
    ];
    if !path.is_empty() {
        let mut appended = issuer.clone();
        appended.set_path(&format!("{path}/.well-known/openid-configuration"));
        urls.push(appended);
    }
    urls
}

/// Fetches the metadata of `issuer` (without DPoP: metadata is public) and checks that it
/// names the same issuer (RFC 8414 section 3.3; a trailing `/` aside).
pub async fn discover(http: &reqwest::Client, issuer: &str) -> Result<ServerMetadata, Error> {
    fetch(http, issuer, metadata_urls, false).await
}

/// Fetches the metadata of `issuer` at the places the MCP authorization spec lists, in its
/// order, and checks that it names exactly this issuer (RFC 8414 section 3.3).
pub async fn discover_mcp(http: &reqwest::Client, issuer: &str) -> Result<ServerMetadata, Error> {
    fetch(http, issuer, mcp_metadata_urls, true).await
}

async fn fetch(
    http: &reqwest::Client,
    issuer: &str,
    urls: fn(&Url) -> Vec<Url>,
    exact: bool,
) -> Result<ServerMetadata, Error> {
    let fail = |reason: String| Error::Discovery {
        issuer: issuer.to_owned(),
        reason,
    };
    let issuer_url = Url::parse(issuer)?;
    if issuer_url.query().is_some() || issuer_url.fragment().is_some() {
        return Err(fail("an issuer has no query or fragment".into()));
    }
    let mut tried = Vec::new();
    for url in urls(&issuer_url) {
        let response = http.get(url.clone()).send().await?;
        if !response.status().is_success() {
            tried.push(format!("{url}: HTTP {}", response.status()));
            continue;
        }
        let body = super::read_body(response, "metadata", super::MAX_JSON_BODY).await?;
        let metadata: ServerMetadata = serde_json::from_slice(&body)
            .map_err(|e| fail(format!("{url} is not metadata JSON: {e}")))?;
        let same = if exact {
            metadata.issuer == issuer
        } else {
            metadata.issuer.trim_end_matches('/') == issuer.trim_end_matches('/')
        };
        if !same {
            return Err(fail(format!(
                "{url} names issuer {:?}, not this one",
                super::printable(&metadata.issuer)
            )));
        }
        return Ok(metadata);
    }
    Err(fail(format!("no metadata ({})", tried.join("; "))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_known_urls_follow_rfc8414_then_openid() {
        let urls = metadata_urls(&Url::parse("https://as.example.com/tenant/1/").unwrap());
        assert_eq!(
            urls[0].as_str(),
            "https://as.example.com/.well-known/oauth-authorization-server/tenant/1"
        );
        assert_eq!(
            urls[1].as_str(),
            "https://as.example.com/tenant/1/.well-known/openid-configuration"
        );
        let root = metadata_urls(&Url::parse("https://as.example.com").unwrap());
        assert_eq!(
            root[0].as_str(),
            "https://as.example.com/.well-known/oauth-authorization-server"
        );
    }

    #[test]
    fn mcp_order_inserts_then_appends_for_an_issuer_with_a_path() {
        let urls: Vec<String> =
            mcp_metadata_urls(&Url::parse("https://auth.example.com/tenant1").unwrap())
                .iter()
                .map(Url::to_string)
                .collect();
        assert_eq!(
            urls,
            [
                "https://auth.example.com/.well-known/oauth-authorization-server/tenant1",
                "https://auth.example.com/.well-known/openid-configuration/tenant1",
                "https://auth.example.com/tenant1/.well-known/openid-configuration",
            ]
        );
        let root: Vec<String> = mcp_metadata_urls(&Url::parse("https://auth.example.com").unwrap())
            .iter()
            .map(Url::to_string)
            .collect();
        assert_eq!(
            root,
            [
                "https://auth.example.com/.well-known/oauth-authorization-server",
                "https://auth.example.com/.well-known/openid-configuration",
            ]
        );
    }

    #[test]
    fn alg_check_names_what_the_server_accepts() {
        let metadata: ServerMetadata = serde_json::from_value(serde_json::json!({
            "issuer": "https://as.example.com",
            "dpop_signing_alg_values_supported": ["ES256", "PS256"],
        }))
        .unwrap();
        metadata.check_alg("k", "ES256").unwrap();
        let e = metadata.check_alg("k", "EdDSA").unwrap_err().to_string();
        assert!(e.contains("ES256, PS256") && e.contains("EdDSA"), "{e}");
        let hostile: ServerMetadata = serde_json::from_value(serde_json::json!({
            "issuer": "https://as.example.com",
            "dpop_signing_alg_values_supported": ["PS256\u{1b}[2J\n"],
        }))
        .unwrap();
        let e = hostile.check_alg("k", "ES256").unwrap_err().to_string();
        assert!(e.contains(r"PS256\u{1b}[2J\n only"), "{e}");
        let silent: ServerMetadata =
            serde_json::from_value(serde_json::json!({"issuer": "x"})).unwrap();
        silent.check_alg("k", "EdDSA").unwrap();
    }
}
