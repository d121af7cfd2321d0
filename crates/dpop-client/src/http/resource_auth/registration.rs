//! Dynamic client registration (RFC 7591) for the MCP flow, remembered per authorization
//! server: a private file per issuer in the token cache's directory
//! (`mcp-client-<hash>.registration`, 0600, with the client secret, if the server issued one,
//! in `mcp-client-<hash>.secret` beside it), written under the cache's lock of that name so
//! that two processes do not both register.

use std::fs;
use std::io::{Read, Write};
#[cfg(unix)]
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::super::{
    ClientSecretSource, Error, MAX_JSON_BODY, OAuthErrorBody, TokenCache, body_limit, printable,
    read_body,
};

/// What a registration gave, as remembered.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Registration {
    /// The authorization server's issuer (checked on load: a hash collision re-registers).
    pub issuer: String,
    /// The registered client id.
    pub client_id: String,
    /// The redirect URI registered (its port is bound again when free).
    pub redirect_uri: String,
    /// `none`, `client_secret_basic` or `client_secret_post`.
    pub token_endpoint_auth_method: String,
}

/// The registration request (RFC 7591 section 2) of a native public client that wants
/// DPoP-bound tokens.
#[derive(Serialize)]
struct Request<'a> {
    client_name: &'a str,
    application_type: &'a str,
    redirect_uris: [&'a str; 1],
    grant_types: [&'a str; 2],
    response_types: [&'a str; 1],
    token_endpoint_auth_method: &'a str,
    dpop_bound_access_tokens: bool,
}

/// The members of the answer used here.
#[derive(Deserialize)]
struct Response {
    client_id: String,
    client_secret: Option<String>,
    token_endpoint_auth_method: Option<String>,
}

/// The cache name (lock, file stem) of the registration at `issuer`: a 64-bit FNV-1a hash,
/// enough to keep issuers apart in one user's cache (the file names its issuer, checked on
/// load).
pub(crate) fn cache_name(issuer: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in issuer.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("mcp-client-{hash:016x}")
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Cache {
        path: path.to_owned(),
        source,
    }
}

/// Reads a file of the cache without following a symbolic link; None when missing.
fn read_private(path: &Path) -> Result<Option<Zeroizing<Vec<u8>>>, Error> {
    let mut options = fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    options.custom_flags(libc::O_NOFOLLOW);
    let mut file = match options.open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path)(e)),
    };
    let mut bytes = Zeroizing::new(Vec::new());
    file.read_to_end(&mut bytes).map_err(io(path))?;
    Ok(Some(bytes))
}

/// Writes a 0600 file atomically (a new file renamed over the old one).
fn write_private(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let mut file = tempfile::NamedTempFile::new_in(dir).map_err(io(dir))?;
    #[cfg(unix)]
    file.as_file()
        .set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(io(dir))?;
    file.write_all(bytes).map_err(io(dir))?;
    file.as_file().sync_all().map_err(io(dir))?;
    file.persist(path).map_err(|e| io(path)(e.error))?;
    Ok(())
}

/// The registration at `issuer` remembered in `cache`, if any (the caller holds the lock of
/// [`cache_name`], which also checked the directory).
pub(crate) fn load(cache: &TokenCache, issuer: &str) -> Result<Option<Registration>, Error> {
    let path = cache
        .dir()
        .join(format!("{}.registration", cache_name(issuer)));
    let Some(bytes) = read_private(&path)? else {
        return Ok(None);
    };
    let registration: Registration =
        serde_json::from_slice(&bytes).map_err(|e| Error::CacheFormat {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    Ok((registration.issuer == issuer).then_some(registration))
}

/// Where the client secret of the registration at `issuer` is kept.
pub(crate) fn secret_source(cache: &TokenCache, issuer: &str) -> ClientSecretSource {
    ClientSecretSource::File(secret_path(cache, issuer))
}

fn secret_path(cache: &TokenCache, issuer: &str) -> PathBuf {
    cache.dir().join(format!("{}.secret", cache_name(issuer)))
}

/// Registers a client at `endpoint` with `redirect_uri`, and remembers it (the caller holds
/// the lock of [`cache_name`]). No `scope` is registered: the registration is kept per
/// server and serves every later scope (a step-up asks for more), and servers refuse
/// resource scopes there (oidc-provider accepts only its own OpenID scopes).
pub(crate) async fn register(
    http: &reqwest::Client,
    cache: &TokenCache,
    issuer: &str,
    endpoint: &url::Url,
    redirect_uri: &str,
) -> Result<Registration, Error> {
    let request = Request {
        client_name: "dpop mcp",
        application_type: "native",
        redirect_uris: [redirect_uri],
        grant_types: ["authorization_code", "refresh_token"],
        response_types: ["code"],
        token_endpoint_auth_method: "none",
        dpop_bound_access_tokens: true,
    };
    let response = http
        .post(endpoint.clone())
        .header(reqwest::header::ACCEPT, "application/json")
        .json(&request)
        .send()
        .await?;
    let status = response.status();
    let (what, limit) = body_limit(status);
    let body = read_body(response, what, limit.min(MAX_JSON_BODY)).await?;
    if !status.is_success() {
        return Err(match OAuthErrorBody::from_json(&body) {
            Some(e) => Error::OAuth(e),
            None => Error::BadResponse(format!(
                "the registration endpoint {endpoint} answered HTTP {status}"
            )),
        });
    }
    let answer: Response = serde_json::from_slice(&body)
        .map_err(|e| Error::BadResponse(format!("registration response: {e}")))?;
    let secret = answer.client_secret.map(Zeroizing::new);
    let method = match (&secret, answer.token_endpoint_auth_method.as_deref()) {
        (None, _) => "none",
        (Some(_), Some("client_secret_post")) => "client_secret_post",
        (Some(_), Some("client_secret_basic") | None) => "client_secret_basic",
        (Some(_), Some(other)) => {
            return Err(Error::BadResponse(format!(
                "the server registered a client with authentication {:?}, which this client \
                 does not do",
                printable(other)
            )));
        }
    };
    let registration = Registration {
        issuer: issuer.to_owned(),
        client_id: answer.client_id,
        redirect_uri: redirect_uri.to_owned(),
        token_endpoint_auth_method: method.to_owned(),
    };
    if let Some(secret) = &secret {
        write_private(cache.dir(), &secret_path(cache, issuer), secret.as_bytes())?;
    }
    let path = cache
        .dir()
        .join(format!("{}.registration", cache_name(issuer)));
    let json = serde_json::to_vec_pretty(&registration).expect("registration serializes");
    write_private(cache.dir(), &path, &json)?;
    Ok(registration)
}

/// Forgets the registration at `issuer` (the caller holds the lock of [`cache_name`]).
pub(crate) fn forget(cache: &TokenCache, issuer: &str) -> Result<(), Error> {
    let name = cache_name(issuer);
    for path in [
        cache.dir().join(format!("{name}.registration")),
        secret_path(cache, issuer),
    ] {
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path)(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_names_are_file_names_and_differ_per_issuer() {
        let a = cache_name("https://as.example.com");
        let b = cache_name("https://as.example.com/");
        assert_ne!(a, b);
        assert!(a.starts_with("mcp-client-") && a.len() == "mcp-client-".len() + 16);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    }
}
