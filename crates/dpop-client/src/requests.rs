//! What a caller asks the agent for, as builders: a proof ([`ProofRequest`]) and a new key
//! ([`NewKey`], [`ImportKey`], [`AdoptKey`]). They only borrow; `exchange.rs` turns each into
//! its wire message once, for both clients.

use dpop_jose::Algorithm;
use dpop_protocol::KeyPolicy;

/// What a proof is for: the HTTP request it goes with, and what binds it to a token.
///
/// ```
/// use dpop_client::ProofRequest;
///
/// let token = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU";
/// let request = ProofRequest::new("GET", "https://api.example.com/v1/items")
///     .access_token(token)
///     .nonce("eyJ7S_zG.eyJH0-Z.HX4w-7v");
/// // Debug output never shows the token.
/// assert!(!format!("{request:?}").contains(token));
/// ```
#[derive(Clone, Copy)]
pub struct ProofRequest<'a> {
    pub(crate) method: &'a str,
    pub(crate) url: &'a str,
    pub(crate) token: Option<TokenBinding<'a>>,
    pub(crate) nonce: Option<&'a str>,
}

/// A proof carries `ath` from the token itself or from a hash the caller made; never both.
#[derive(Clone, Copy)]
pub(crate) enum TokenBinding<'a> {
    AccessToken(&'a str),
    Ath(&'a str),
}

impl<'a> ProofRequest<'a> {
    /// A proof for a `method` request (upper-case: `GET`, `POST`) to `url`; the agent derives
    /// `htu` from the URL (query and fragment dropped).
    pub fn new(method: &'a str, url: &'a str) -> Self {
        ProofRequest {
            method,
            url,
            token: None,
            nonce: None,
        }
    }

    /// The access token sent with the request; the agent puts its hash in `ath`. Replaces an
    /// [`ath`](Self::ath).
    pub fn access_token(mut self, token: &'a str) -> Self {
        self.token = Some(TokenBinding::AccessToken(token));
        self
    }

    /// A precomputed `ath` (base64url of the token's SHA-256), for callers that keep the
    /// token to themselves. Replaces an [`access_token`](Self::access_token).
    pub fn ath(mut self, ath: &'a str) -> Self {
        self.token = Some(TokenBinding::Ath(ath));
        self
    }

    /// The server's `DPoP-Nonce`. Without one, the agent uses the nonce last reported for the
    /// URL's origin (`report_nonce`), if any.
    pub fn nonce(mut self, nonce: &'a str) -> Self {
        self.nonce = Some(nonce);
        self
    }
}

impl std::fmt::Debug for ProofRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let token = match self.token {
            Some(TokenBinding::AccessToken(_)) => Some("access_token: <redacted>".to_owned()),
            Some(TokenBinding::Ath(ath)) => Some(format!("ath: {ath}")),
            None => None,
        };
        f.debug_struct("ProofRequest")
            .field("method", &self.method)
            .field("url", &self.url)
            .field("token", &token)
            .field("nonce", &self.nonce)
            .finish()
    }
}

/// A key for the agent to generate (`generate_key`). A bare label converts into one: the
/// software backend, ES256, no policy.
///
/// ```no_run
/// use dpop_client::NewKey;
/// use dpop_jose::Algorithm;
/// use dpop_protocol::KeyPolicy;
///
/// # fn demo() -> Result<(), dpop_client::Error> {
/// let mut agent = dpop_client::blocking::Client::connect_env()?;
/// agent.generate_key("scratch")?;
/// let policy = KeyPolicy {
///     allow_origins: vec!["https://api.example.com".into()],
///     ..KeyPolicy::default()
/// };
/// let key = agent.generate_key(
///     NewKey::new("api")
///         .backend("pkcs11")
///         .alg(Algorithm::ES384)
///         .policy(&policy),
/// )?;
/// println!("{} {}", key.label, key.jkt);
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug)]
pub struct NewKey<'a> {
    pub(crate) label: &'a str,
    pub(crate) backend: Option<&'a str>,
    pub(crate) alg: Option<Algorithm>,
    pub(crate) policy: Option<&'a KeyPolicy>,
}

impl<'a> NewKey<'a> {
    /// A key labelled `label`, on the agent's default backend (software) with its default
    /// algorithm (ES256).
    pub fn new(label: &'a str) -> Self {
        NewKey {
            label,
            backend: None,
            alg: None,
            policy: None,
        }
    }

    /// The backend to make it in: `software`, `pkcs11` or `tpm`.
    pub fn backend(mut self, backend: &'a str) -> Self {
        self.backend = Some(backend);
        self
    }

    /// The algorithm (ES256 when left out).
    pub fn alg(mut self, alg: Algorithm) -> Self {
        self.alg = Some(alg);
        self
    }

    /// The policy the agent enforces from the first signature on, set in the same request.
    pub fn policy(mut self, policy: &'a KeyPolicy) -> Self {
        self.policy = Some(policy);
        self
    }
}

impl<'a> From<&'a str> for NewKey<'a> {
    fn from(label: &'a str) -> Self {
        NewKey::new(label)
    }
}

impl<'a> From<&'a String> for NewKey<'a> {
    fn from(label: &'a String) -> Self {
        NewKey::new(label)
    }
}

/// A PEM private key (PKCS#8, SEC1 or PKCS#1) for the agent to import (`import_key`). The
/// client wipes its copy of the key once it is sent; `Debug` never shows it.
///
/// ```no_run
/// use dpop_client::ImportKey;
/// use dpop_jose::Algorithm;
///
/// # fn demo(pem: &str) -> Result<(), dpop_client::Error> {
/// let mut agent = dpop_client::blocking::Client::connect_env()?;
/// let key = agent.import_key(ImportKey::new("imported", pem).alg(Algorithm::PS256))?;
/// println!("{} {}", key.label, key.jkt);
/// # Ok(()) }
/// ```
#[derive(Clone, Copy)]
pub struct ImportKey<'a> {
    pub(crate) label: &'a str,
    pub(crate) pem: &'a str,
    pub(crate) backend: Option<&'a str>,
    pub(crate) alg: Option<Algorithm>,
    pub(crate) policy: Option<&'a KeyPolicy>,
}

impl<'a> ImportKey<'a> {
    /// The key in `pem`, to be filed under `label` in the software backend.
    pub fn new(label: &'a str, pem: &'a str) -> Self {
        ImportKey {
            label,
            pem,
            backend: None,
            alg: None,
            policy: None,
        }
    }

    /// The backend to import it into: `software` or `pkcs11`.
    pub fn backend(mut self, backend: &'a str) -> Self {
        self.backend = Some(backend);
        self
    }

    /// For RSA keys: RS256 (the default) or PS256.
    pub fn alg(mut self, alg: Algorithm) -> Self {
        self.alg = Some(alg);
        self
    }

    /// The policy the agent enforces from the first signature on, set in the same request.
    pub fn policy(mut self, policy: &'a KeyPolicy) -> Self {
        self.policy = Some(policy);
        self
    }
}

impl std::fmt::Debug for ImportKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImportKey")
            .field("label", &self.label)
            .field("pem", &"<redacted>")
            .field("backend", &self.backend)
            .field("alg", &self.alg)
            .field("policy", &self.policy)
            .finish()
    }
}

/// An existing key for the agent to adopt (`adopt_key`): a PKCS#11 object by RFC 7512 URI,
/// or a persistent TPM key by handle. The agent picks the backend from the URI's scheme;
/// an adopted key is only forgotten when deleted.
///
/// ```no_run
/// use dpop_client::AdoptKey;
///
/// # fn demo() -> Result<(), dpop_client::Error> {
/// let mut agent = dpop_client::blocking::Client::connect_env()?;
/// let uri = "pkcs11:token=dpop;object=my-key;type=private";
/// let key = agent.adopt_key(AdoptKey::new("adopted", uri))?;
/// println!("{} {}", key.label, key.jkt);
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug)]
pub struct AdoptKey<'a> {
    pub(crate) label: &'a str,
    pub(crate) uri: &'a str,
    pub(crate) alg: Option<Algorithm>,
    pub(crate) policy: Option<&'a KeyPolicy>,
}

impl<'a> AdoptKey<'a> {
    /// The key at `uri` (`pkcs11:token=...;object=...;type=private`, or
    /// `tpm:handle=0x81000001`), to be filed under `label`.
    pub fn new(label: &'a str, uri: &'a str) -> Self {
        AdoptKey {
            label,
            uri,
            alg: None,
            policy: None,
        }
    }

    /// For RSA keys: RS256 (the default) or PS256.
    pub fn alg(mut self, alg: Algorithm) -> Self {
        self.alg = Some(alg);
        self
    }

    /// The policy the agent enforces from the first signature on, set in the same request.
    pub fn policy(mut self, policy: &'a KeyPolicy) -> Self {
        self.policy = Some(policy);
        self
    }
}
