//! The example resource server (`dpop-resource-server`) as a real process on loopback, the
//! JWT access tokens it accepts (minted here with a test key whose JWKS it reads), and a
//! DPoP caller whose proofs come from a real agent.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use dpop_jose::{Jwk, b64url_encode};
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::{
    AgentOptions, KillOnDrop, PROCESS_TIMEOUT, TestAgent, binaries, new_temp_dir, unix_now,
    wait_timeout, write_private_file,
};

/// The `iss` of [`TokenIssuer`] tokens.
pub const ISSUER: &str = "https://as.test.invalid";
/// The `aud` of [`TokenIssuer`] tokens.
pub const AUDIENCE: &str = "https://rs.test.invalid";

/// Mints ES256 JWT access tokens and publishes their JWKS as a file.
pub struct TokenIssuer {
    key: EcdsaKeyPair,
    dir: TempDir,
}

impl Default for TokenIssuer {
    fn default() -> Self {
        TokenIssuer::new()
    }
}

impl TokenIssuer {
    /// A fresh P-256 key, kid `test-key`, its JWKS written to [`Self::jwks_path`].
    pub fn new() -> TokenIssuer {
        let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("P-256 key");
        let issuer = TokenIssuer {
            key,
            dir: new_temp_dir(),
        };
        let mut jwk = serde_json::to_value(issuer.jwk()).expect("JWK serializes");
        jwk["kid"] = json!("test-key");
        jwk["alg"] = json!("ES256");
        jwk["use"] = json!("sig");
        let jwks = json!({ "keys": [jwk] });
        write_private_file(&issuer.jwks_path(), jwks.to_string().as_bytes());
        issuer
    }

    /// The public key.
    pub fn jwk(&self) -> Jwk {
        Jwk::from_ec_point(self.key.public_key().as_ref()).expect("P-256 point")
    }

    /// The JWKS file.
    pub fn jwks_path(&self) -> PathBuf {
        self.dir.path().join("jwks.json")
    }

    /// A token for `sub` bound to `jkt` (none: not DPoP-bound), valid for five minutes.
    pub fn token(&self, sub: &str, jkt: Option<&str>) -> String {
        let mut claims = json!({
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": sub,
            "iat": unix_now(),
            "exp": unix_now() + 300,
        });
        if let Some(jkt) = jkt {
            claims["cnf"] = json!({ "jkt": jkt });
        }
        self.sign(&claims)
    }

    /// Signs any claims as an `at+jwt` with this key.
    pub fn sign(&self, claims: &Value) -> String {
        let header = json!({"alg": "ES256", "typ": "at+jwt", "kid": "test-key"});
        let input = format!(
            "{}.{}",
            b64url_encode(header.to_string()),
            b64url_encode(claims.to_string())
        );
        let signature = self
            .key
            .sign(&SystemRandom::new(), input.as_bytes())
            .expect("signing a JWT");
        format!("{input}.{}", b64url_encode(signature.as_ref()))
    }
}

/// How to start a [`ResourceServer`].
#[derive(Clone, Debug, Default)]
pub struct ServerOptions {
    /// `--redis URL`.
    pub redis: Option<String>,
    /// The nonce secret, passed in `DPOP_NONCE_SECRET`.
    pub nonce_secret: Option<String>,
    /// `--public-url` (default: `http://127.0.0.1:<port>`).
    pub public_url: Option<String>,
    /// More arguments (`--require-nonce`, `--preset fapi2`, ...).
    pub args: Vec<String>,
    /// `--jwks URL` instead of the issuer's JWKS file.
    pub jwks_url: Option<String>,
}

/// A running `dpop-resource-server` on a free loopback port, reading `jwks`, with
/// `--issuer` [`ISSUER`] and `--audience` [`AUDIENCE`]; killed on drop.
pub struct ResourceServer {
    base: String,
    dir: TempDir,
    child: Option<(Child, KillOnDrop)>,
}

impl ResourceServer {
    /// Starts one and waits until it listens; panics with its log when it does not.
    pub fn start(issuer: &TokenIssuer, options: ServerOptions) -> ResourceServer {
        ResourceServer::try_start(issuer, options)
            .unwrap_or_else(|log| panic!("dpop-resource-server did not start; its log:\n{log}"))
    }

    /// Starts one and waits until it listens, or returns its log when it exits first or
    /// does not listen within [`PROCESS_TIMEOUT`].
    pub fn try_start(
        issuer: &TokenIssuer,
        options: ServerOptions,
    ) -> Result<ResourceServer, String> {
        let dir = new_temp_dir();
        let log = std::fs::File::create(dir.path().join("server.log")).expect("log file");
        let mut command = Command::new(&binaries().resource_server);
        command
            .arg("--jwks")
            .arg(match &options.jwks_url {
                Some(url) => url.into(),
                None => issuer.jwks_path(),
            })
            .args(["--issuer", ISSUER, "--audience", AUDIENCE])
            .args(&options.args)
            .env_remove("DPOP_NONCE_SECRET")
            .env_remove("DPOP_REDIS_URL")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        if let Some(redis) = &options.redis {
            command.args(["--redis", redis]);
        }
        if let Some(secret) = &options.nonce_secret {
            command.env("DPOP_NONCE_SECRET", secret);
        }
        // The public URL must be known before the port is: a free port is picked here.
        let port = crate::free_port();
        command.args(["--listen", &format!("127.0.0.1:{port}")]);
        let public = options
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://127.0.0.1:{port}"));
        command.args(["--public-url", &public]);
        let mut child = command.spawn().expect("spawning dpop-resource-server");
        let guard = KillOnDrop(child.id());
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let server = ResourceServer {
            base: format!("http://127.0.0.1:{port}"),
            dir,
            child: Some((child, guard)),
        };
        match rx.recv_timeout(PROCESS_TIMEOUT) {
            Ok(line) if line.starts_with("listening on ") => Ok(server),
            // Standard output closed (it exited) or nothing in time: stop it, then read
            // everything it logged.
            _ => {
                let mut server = server;
                server.stop();
                Err(server.log())
            }
        }
    }

    /// `http://127.0.0.1:<port>` (where to send requests).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Everything it logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl ResourceServer {
    /// Kills it (when still running) and waits until it is gone.
    pub fn stop(&mut self) {
        if let Some((mut child, _guard)) = self.child.take() {
            let _ = child.kill();
            let _ = wait_timeout(&mut child, PROCESS_TIMEOUT);
        }
    }
}

impl Drop for ResourceServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An HTTP answer, its body parsed as JSON (`null` when it is not).
#[derive(Debug)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// `WWW-Authenticate`.
    pub www_authenticate: Option<String>,
    /// `DPoP-Nonce`.
    pub dpop_nonce: Option<String>,
    /// The body.
    pub body: Value,
}

impl Reply {
    /// The body's `error` member.
    pub fn error(&self) -> Option<&str> {
        self.body["error"].as_str()
    }
}

/// A DPoP client: a real agent holding one ES256 key (`k`), and plain HTTP over loopback.
pub struct DpopCaller {
    /// The agent.
    pub agent: TestAgent,
    /// The key's thumbprint.
    pub jkt: String,
    http: reqwest::Client,
}

impl Default for DpopCaller {
    fn default() -> Self {
        DpopCaller::new()
    }
}

impl DpopCaller {
    /// Starts an agent and generates the key.
    pub fn new() -> DpopCaller {
        let agent = TestAgent::start(AgentOptions::new());
        let key = agent.client().generate_key("k").expect("generating a key");
        DpopCaller {
            agent,
            jkt: key.jkt,
            http: reqwest::Client::new(),
        }
    }

    /// A proof from the agent for `method url`, bound to `token`, with `nonce`.
    pub async fn proof(
        &self,
        method: &str,
        url: &str,
        token: Option<&str>,
        nonce: Option<&str>,
    ) -> String {
        let mut request = dpop_client::ProofRequest::new(method, url);
        if let Some(token) = token {
            request = request.access_token(token);
        }
        if let Some(nonce) = nonce {
            request = request.nonce(nonce);
        }
        self.agent
            .async_client()
            .await
            .sign_proof("k", &request)
            .await
            .unwrap_or_else(|e| panic!("the agent signs a proof for {method} {url}: {e}"))
    }

    /// Sends `method url` with these `Authorization` and `DPoP` header values.
    pub async fn send(
        &self,
        method: &str,
        url: &str,
        authorization: Option<&str>,
        dpop: &[&str],
    ) -> Reply {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("HTTP method");
        let mut request = self.http.request(method, url);
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        for proof in dpop {
            request = request.header("dpop", *proof);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("HTTP request to {url}: {e}"));
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (status, www_authenticate, dpop_nonce) = (
            response.status().as_u16(),
            header("www-authenticate"),
            header("dpop-nonce"),
        );
        let text = response.text().await.expect("reading the body");
        Reply {
            status,
            www_authenticate,
            dpop_nonce,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
        }
    }

    /// `GET url` with `Authorization: DPoP token` and a fresh proof (with `nonce`).
    pub async fn get(&self, url: &str, token: &str, nonce: Option<&str>) -> Reply {
        let proof = self.proof("GET", url, Some(token), nonce).await;
        self.send("GET", url, Some(&format!("DPoP {token}")), &[&proof])
            .await
    }
}
