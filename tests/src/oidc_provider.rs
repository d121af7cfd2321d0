//! node oidc-provider, an authorization server we did not write, with DPoP and nonces
//! required: tests/interop/oidc-provider/server.mjs, started on a free loopback port and
//! killed on drop. Needs `node` and `npm ci` in tests/interop/oidc-provider (scripts/test.sh
//! runs it); fails, never skips, when either is missing.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use serde_json::Value;

use crate::{PROCESS_TIMEOUT, require_tool, workspace_root};

/// The secret of client `dpop-client`.
pub const OIDC_CLIENT_SECRET: &str = "interop-client-secret";
/// The secret of client `resource-server` (introspection).
pub const OIDC_RS_SECRET: &str = "interop-rs-secret";
/// The variable [`dpop_with_client_secret`] puts [`OIDC_CLIENT_SECRET`] in (for
/// `--client-secret-env`).
pub const OIDC_SECRET_VAR: &str = "DPOP_TEST_OIDC_SECRET";

/// A running oidc-provider.
#[derive(Debug)]
pub struct OidcProvider {
    child: Child,
    /// Its issuer, `http://127.0.0.1:PORT`.
    pub issuer: String,
    /// A refresh token of client `dpop-client` for a grant of account `alice`.
    pub refresh_token: String,
}

impl OidcProvider {
    /// Starts it; panics when node or the npm package is missing or it does not come up.
    pub fn start() -> OidcProvider {
        require_tool("node", &["--version"], "nodejs");
        let dir = workspace_root().join("tests/interop/oidc-provider");
        assert!(
            dir.join("node_modules/oidc-provider/package.json")
                .is_file(),
            "oidc-provider is not installed: run npm ci in {}",
            dir.display()
        );
        let mut child = Command::new("node")
            .arg("server.mjs")
            .current_dir(&dir)
            .env("DPOP_OIDC_CLIENT_SECRET", OIDC_CLIENT_SECRET)
            .env("DPOP_OIDC_RS_SECRET", OIDC_RS_SECRET)
            .env_remove("NODE_OPTIONS")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting node");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            // Keep reading: node dies of EPIPE when it writes to a closed pipe.
            for line in reader.lines().map_while(Result::ok) {
                eprintln!("oidc-provider: {line}");
            }
        });
        let line = match rx.recv_timeout(PROCESS_TIMEOUT) {
            Ok(line) if !line.is_empty() => line,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("oidc-provider did not start (its errors are above): {other:?}");
            }
        };
        let ready: Value = serde_json::from_str(&line).expect("oidc-provider's start line is JSON");
        OidcProvider {
            child,
            issuer: ready["issuer"].as_str().expect("issuer").to_owned(),
            refresh_token: ready["refresh_token"]
                .as_str()
                .expect("refresh_token")
                .to_owned(),
        }
    }

    /// Its RFC 7662 introspection endpoint, with the resource server's credentials.
    pub fn introspection(&self) -> crate::oauth::Introspection {
        introspection_at(&self.issuer)
    }
}

/// The RFC 7662 introspection endpoint of an oidc-provider at `issuer` (this one, or the MCP
/// tests' authorization server, which registers the same resource-server client).
pub fn introspection_at(issuer: &str) -> crate::oauth::Introspection {
    crate::oauth::Introspection {
        url: format!("{issuer}/token/introspection"),
        client_id: "resource-server".into(),
        secret: OIDC_RS_SECRET.into(),
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the agent's `dpop` with `args` and oidc-provider's client secret in
/// [`OIDC_SECRET_VAR`]; fails the test unless it succeeds. Returns (stdout, stderr).
pub fn dpop_with_client_secret<S: AsRef<std::ffi::OsStr>>(
    agent: &crate::TestAgent,
    args: &[S],
) -> (String, String) {
    let out = agent
        .dpop_command()
        .env(OIDC_SECRET_VAR, OIDC_CLIENT_SECRET)
        .args(args)
        .output()
        .expect("running dpop");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "dpop {:?} failed ({}):\n{stdout}\n{stderr}",
        args.iter()
            .map(|a| a.as_ref().to_string_lossy())
            .collect::<Vec<_>>(),
        out.status
    );
    (stdout, stderr)
}
