//! The world the client-library tests (clients/python, clients/node) run in: a real agent
//! (software keys under a passphrase, so `lock`/`unlock` can be tried) holding one ES256 key,
//! Redis, the example resource server with Redis replay, HMAC nonces and `--require-nonce`,
//! and an access token bound to the key's thumbprint. The test programs get it all through
//! environment variables ([`ClientWorld::env`]).

use std::path::PathBuf;

use crate::{AgentOptions, RedisServer, ResourceServer, ServerOptions, TestAgent, TokenIssuer};

/// The label of the key the token is bound to.
pub const CLIENT_KEY: &str = "api";
/// The `sub` of the bound token.
pub const CLIENT_SUBJECT: &str = "client-tests";
/// The nonce secret of the resource server (test-only).
const NONCE_SECRET: &str = "the client tests' nonce secret, 32 bytes or longer";
/// The idle timeout of [`ClientWorld::idle_agent`] (ten minutes in production).
pub const IDLE_TIMEOUT_MS: &str = "300";
/// Long, so no nonce step starts while a test runs.
const NONCE_INTERVAL: &str = "3600";

/// A running agent, Redis and resource server, and a token bound to the agent's key.
pub struct ClientWorld {
    /// The agent.
    pub agent: TestAgent,
    /// A second agent that closes connections idle for [`IDLE_TIMEOUT_MS`], for the clients'
    /// reconnection.
    pub idle_agent: TestAgent,
    /// Redis behind the resource server's replay check.
    pub redis: RedisServer,
    /// Mints the tokens the server accepts.
    pub issuer: TokenIssuer,
    /// The example resource server (nonces required).
    pub server: ResourceServer,
    /// The thumbprint of [`CLIENT_KEY`].
    pub jkt: String,
    /// A token for [`CLIENT_SUBJECT`] bound to [`Self::jkt`] (five minutes).
    pub token: String,
}

impl ClientWorld {
    /// Starts everything; panics (with the logs) when a part does not start.
    pub fn start() -> ClientWorld {
        let agent = TestAgent::start(AgentOptions::new().passphrase_env("client tests' store"));
        let key = agent
            .client()
            .generate_key(CLIENT_KEY)
            .expect("generating the clients' key");
        let idle_agent = TestAgent::start(
            AgentOptions::new().env("DPOP_AGENT_TEST_IDLE_TIMEOUT_MS", IDLE_TIMEOUT_MS),
        );
        let redis = RedisServer::start();
        let issuer = TokenIssuer::new();
        let server = ResourceServer::start(
            &issuer,
            ServerOptions {
                redis: Some(redis.url()),
                nonce_secret: Some(NONCE_SECRET.to_owned()),
                args: vec![
                    "--require-nonce".into(),
                    "--nonce-interval".into(),
                    NONCE_INTERVAL.into(),
                ],
                ..ServerOptions::default()
            },
        );
        let token = issuer.token(CLIENT_SUBJECT, Some(&key.jkt));
        ClientWorld {
            agent,
            idle_agent,
            redis,
            issuer,
            server,
            jkt: key.jkt,
            token,
        }
    }

    /// The agent's socket.
    pub fn socket(&self) -> PathBuf {
        self.agent.socket()
    }

    /// What a client test program gets: `DPOP_AUTH_SOCK`, and `DPOP_TEST_KEY`,
    /// `DPOP_TEST_JKT`, `DPOP_TEST_TOKEN`, `DPOP_TEST_SUB`, `DPOP_TEST_RESOURCE` (the resource
    /// server's base URL, `http://127.0.0.1:<port>`), `DPOP_TEST_IDLE_SOCK` (the socket of
    /// [`Self::idle_agent`]) and `DPOP_TEST_IDLE_MS`.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("DPOP_AUTH_SOCK", self.socket().display().to_string()),
            ("DPOP_TEST_KEY", CLIENT_KEY.to_owned()),
            ("DPOP_TEST_JKT", self.jkt.clone()),
            ("DPOP_TEST_TOKEN", self.token.clone()),
            ("DPOP_TEST_SUB", CLIENT_SUBJECT.to_owned()),
            ("DPOP_TEST_RESOURCE", self.server.base().to_owned()),
            (
                "DPOP_TEST_IDLE_SOCK",
                self.idle_agent.socket().display().to_string(),
            ),
            ("DPOP_TEST_IDLE_MS", IDLE_TIMEOUT_MS.to_owned()),
        ]
    }
}
