//! End-to-end test harness for dpop-agent: runs the real `dpop-agent` and `dpop` binaries of
//! this workspace against a real Unix socket, each agent in its own temporary directory, so
//! tests (and benchmarks) run in parallel without sharing state.
//!
//! - [`binaries()`] builds `dpop-agent` and `dpop` once per test process (`cargo build -p
//!   dpop-agent -p dpop-cli`, in the profile the calling test or bench was built in) and
//!   returns their paths. Cargo only gives `CARGO_BIN_EXE_*` for binaries of the package under
//!   test, hence the explicit build. Set `DPOP_TEST_BIN_DIR` (and `DPOP_TEST_WINDOWS_BIN_DIR`
//!   for [`windows_binaries`]) to use prebuilt binaries instead, as `scripts/test.sh` does.
//! - [`TestAgent`] starts `dpop-agent -D` with a socket and data directory in a fresh
//!   [`tempfile::TempDir`], waits until the socket accepts, captures the agent's standard error
//!   in a file ([`TestAgent::stderr_log`]), and stops it with SIGTERM when dropped.
//! - [`TestAgent::client`], [`TestAgent::async_client`], [`TestAgent::dpop`] and
//!   [`TestAgent::raw`] talk to it through the client crate, the real CLI, or raw protocol
//!   lines.
//! - [`SoftHsmToken`] makes a throw-away SoftHSM2 token with its own `SOFTHSM2_CONF`, and
//!   [`AgentOptions::pkcs11`] starts an agent on it; [`SoftHsm::for_this_process`] is the
//!   SoftHSM2 of a test binary that loads the module itself (dpop-keys' tests).
//! - [`Tpm2Token`] makes a throw-away tpm2-pkcs11 token (its own swtpm, tpm2-abrmd on a
//!   private D-Bus, token store; [`Tpm2Token::shared`]: one per test process, one test at a
//!   time); it and
//!   [`SoftHsmToken`] are both a [`Pkcs11Token`], which the PKCS#11 helpers and
//!   [`AgentOptions::pkcs11`] take.
//! - [`Swtpm`] runs a throw-away software TPM (`swtpm socket` on free loopback ports, its own
//!   state directory), and [`AgentOptions::tpm`] starts an agent on it. With this package's
//!   feature `tpm` (on in `--all-features` runs), the binaries are built with dpop-agent's
//!   `tpm` feature and `Swtpm::context` opens the TPM with tss-esapi.
//! - [`wait_until`] and [`poll_until`] are the suite's one poll loop with a deadline.
//! - [`WindowsAgent`] runs the Windows builds ([`windows_binaries`]) under Wine ([`wine()`]),
//!   on a real named pipe.
//! - [`RedisServer`] runs a real `redis-server` on a free loopback port (stoppable,
//!   restartable on the same port); [`ResourceServer`] runs the example resource server,
//!   [`TokenIssuer`] mints the JWT access tokens it accepts, and [`DpopCaller`] sends it
//!   requests with proofs from a real agent; [`Nginx`] runs a real nginx in front of it.
//! - [`McpServer`] runs a real MCP server (the official TypeScript SDK, Streamable HTTP) on
//!   the Node 22 of tests/interop/node22, and logs what it saw for the `dpop mcp` tests;
//!   [`ProtectedMcpServer`] puts dpop-server's verifier in front of one, and
//!   [`McpAuthorizationServer`] is node oidc-provider set up as its authorization server.
//! - [`mod@redis`] also runs a local Redis Cluster ([`redis::RedisCluster`]: three primaries,
//!   optionally a replica each) and a primary with a replica under Sentinel
//!   ([`redis::RedisSentinel`]); [`nginx::TestCa`] makes a private CA and a certificate for
//!   127.0.0.1 for nginx over https.
//! - [`proxy::ProxyProcess`] runs `dpop proxy`, [`proxy::EchoUpstream`] is an upstream that
//!   answers with what it received; [`clients::ClientWorld`] is the agent, Redis and resource
//!   server the Python and Node client suites (clients/) run against.
//! - [`bench::load`] drives a server process with keep-alive HTTP/1.1 clients and reads its
//!   CPU and memory from /proc (the `server_load` bench, with the Bearer baseline
//!   `dpop-test-bearer`).
//!
//! One module per concern, its fixtures re-exported here: [`mod@binaries`] (building the
//! binaries), [`agent`] (the agent process), [`connection`] (raw protocol lines), [`keys`]
//! (openssl-made keys), [`softhsm`] (PKCS#11 tokens), [`verify`] (checking proofs),
//! [`process`] (processes, files, tools, users), [`wait`] (polling), [`mod@bench`] (benchmarks),
//! [`mod@redis`] (redis-server), [`server`] (the example resource server and its clients),
//! [`oauth`] and [`oidc_provider`] (authorization servers), [`mcp`] (MCP servers),
//! [`swtpm`] (software TPMs),
//! [`mod@wine`] (the Windows builds). Used through their modules: the helpers of the PKCS#11 and
//! TPM tests, [`mod@pkcs11`] (token keys made, signing, looked at on the token),
//! [`pkcs11_shim`] (a sloppy token: SoftHSM2 behind a small C shim) and, with the feature
//! `tpm`, `tpm` (TPM keys, and the TPM read directly).
//!
//! The end-to-end tests are one binary, `tests/e2e/main.rs`, linked once, with one module per
//! area (`cargo test -p dpop-tests --test e2e pkcs11_keys::` runs one); what they share lives
//! here.
//!
//! Requirements of the suite: `openssl`, `python3` with `jwcrypto` (`pip install jwcrypto`) for
//! the interop tests, root for the tests that act as another user (`useradd`, `setpriv`), and
//! SoftHSM2 and OpenSC's `pkcs11-tool` for the PKCS#11 tests (`apt-get install softhsm2
//! opensc`), tpm2-pkcs11 for the second module (`apt-get install libtpm2-pkcs11-1
//! libtpm2-pkcs11-tools tpm2-abrmd libtss2-tcti-tabrmd0 dbus`), swtpm for the TPM tests
//! (`apt-get install swtpm swtpm-tools`, and `libtss2-dev` to build), and `redis-server` and
//! nginx for the server kit's tests (`apt-get install redis-server nginx`), and `npm ci` in
//! tests/interop/node22 and tests/interop/mcp for the MCP tests and the Node client, `npm ci`
//! in clients/node (tsc for its types), `python3 -m venv` and network for the Python
//! client's venv (pinned in clients/python/requirements-test.txt), and `curl` for the proxy
//! tests; tests fail with a message saying what is missing rather than skip.
//!
//! ```no_run
//! use dpop_tests::{AgentOptions, TestAgent};
//!
//! let agent = TestAgent::start(AgentOptions::new().passphrase_env("correct horse"));
//! let key = agent.client().generate_key("k").unwrap();
//! let proof = agent.dpop_ok(&["proof", "--key", "k", "-X", "GET", "--url", "https://rs.example/"]);
//! let verified = dpop_tests::verify_proof(proof.trim(), "GET", "https://rs.example/", None);
//! assert_eq!(verified.jkt, key.jkt);
//! ```

pub mod agent;
pub mod bench;
pub mod binaries;
pub mod clients;
pub mod connection;
pub mod keys;
pub mod mcp;
pub mod nginx;
pub mod oauth;
pub mod oidc_provider;
pub mod pkcs11;
pub mod pkcs11_shim;
pub mod process;
pub mod proxy;
pub mod redis;
pub mod server;
pub mod softhsm;
pub mod swtpm;
#[cfg(feature = "tpm")]
pub mod tpm;
pub mod tpm2_pkcs11;
pub mod verify;
pub mod wait;
pub mod wine;

pub use agent::{AgentOptions, PROCESS_TIMEOUT, Passphrase, StartFailure, TestAgent};
pub use binaries::{
    Binaries, WINDOWS_TARGET, WindowsBinaries, binaries, windows_binaries, workspace_root,
};
pub use connection::{READ_TIMEOUT, RawConnection, error_code};
pub use keys::{openssl_ec_pem, openssl_key_field, openssl_pkcs8_ec_pem, openssl_rsa_pem};
pub use mcp::{
    MCP_SCOPE, McpAuthorizationServer, McpServer, McpServerOptions, ProtectedMcpServer,
    initialize_request, mcp_messages, node22,
};
pub use nginx::Nginx;
pub use oauth::{Counts, Introspection, OAuthOptions, OAuthServer};
pub use oidc_provider::{OIDC_CLIENT_SECRET, OIDC_RS_SECRET, OidcProvider};
pub use pkcs11::Pkcs11Token;
pub use process::{
    KillOnDrop, OTHER_USER, command_as_other_user, files_under, is_root, mode, new_temp_dir,
    other_user, process_gone, require_tool, run_ok, send_signal, set_mode, wait_timeout,
    with_terminal, write_private_file,
};
pub use redis::{RedisServer, free_port};
pub use server::{DpopCaller, Reply, ResourceServer, ServerOptions, TokenIssuer};
pub use softhsm::{PKCS11_PIN_VAR, SoftHsm, SoftHsmToken, pkcs11_module};
pub use swtpm::Swtpm;
#[cfg(feature = "tpm")]
pub use swtpm::{create_srk, srk_template};
pub use tpm2_pkcs11::{SharedTpm2Token, TPM2_PKCS11_MODULE, Tpm2Token, Tpm2TokenRef};
pub use verify::{decode_jws, jwcrypto_verify, try_verify_proof, unix_now, verify_proof};
pub use wait::{POLL_INTERVAL, poll_until, wait_until};
pub use wine::{WINE_TIMEOUT, WindowsAgent, Wine, unique_pipe, windows_path, wine};

pub(crate) use process::require_command;

pub use dpop_client;
pub use dpop_jose;
pub use dpop_protocol;
#[cfg(feature = "tpm")]
pub use tss_esapi;
