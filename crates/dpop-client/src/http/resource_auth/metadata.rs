//! Protected resource metadata (RFC 9728): where it is looked for, and the check that it
//! describes the resource asked about.

use serde::Deserialize;
use url::Url;

use super::super::Error;

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

/// Fetches the protected resource metadata of `resource`: from `resource_metadata` (the URL a
/// challenge named) when given, else from the well-known URLs (path-based first, then root),
/// and checks that its `resource` is `resource`.
pub async fn protected_resource_metadata(
    http: &reqwest::Client,
    resource: &Url,
    resource_metadata: Option<&Url>,
) -> Result<ProtectedResourceMetadata, Error> {
    let _ = (http, resource, resource_metadata);
    Err(Error::Config("not implemented yet".into()))
}
