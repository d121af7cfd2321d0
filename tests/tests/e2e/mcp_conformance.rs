//! The official MCP conformance suite (npm `@modelcontextprotocol/conformance`, pinned in
//! tests/interop/mcp/package.json) against `dpop mcp`: every scenario of `--suite auth` for
//! protocol version 2025-11-25, and the DPoP extension scenarios `auth/dpop` and
//! `auth/dpop-nonce`, with the key in software and on a SoftHSM2 token.
//!
//! For each scenario the suite starts its own authorization server and MCP server and runs
//! tests/interop/mcp/conformance-client.mjs with the server's URL; that client spawns
//! `dpop mcp URL --key k` over stdio, makes a session (initialize, tools/list, a tool call)
//! and plays the browser by following the authorization URL `dpop mcp` prints on stderr.
//! The suite judges what went over the wire (checks.json per scenario). Scenarios that
//! cannot pass are listed, each with its reason, in
//! tests/interop/mcp/conformance-expected-failures.yml, which the suite reads: an unexpected
//! failure and an expected failure that passes both fail the run.
//!
//! Runs on the Node 22 of tests/interop/node22 (the suite needs it). One run of the 14 auth
//! scenarios is a few seconds: the suite runs them in parallel.

use std::path::{Path, PathBuf};
use std::process::Command;

use dpop_tests::mcp::{mcp_interop_dir, require_mcp_packages};
use dpop_tests::{AgentOptions, TestAgent, binaries, new_temp_dir, node22, pkcs11};
use serde_json::Value;

/// The suite's entry point, under tests/interop/mcp.
const SUITE: &str = "node_modules/@modelcontextprotocol/conformance/dist/index.js";
/// The scenarios that cannot pass, with their reasons.
const EXPECTED_FAILURES: &str = "conformance-expected-failures.yml";
/// The protocol version whose auth scenarios are run.
const SPEC_VERSION: &str = "2025-11-25";

/// What the suite is asked to run.
enum Selection {
    /// `--suite auth --spec-version 2025-11-25`.
    AuthSuite,
    /// `--scenario NAME` (an extension scenario: no spec version applies).
    Scenario(&'static str),
}

impl Selection {
    /// The `dpop mcp` arguments: the key, `-v` (the flow in each scenario's stderr.txt), and
    /// `--allow-bearer` for the auth suite, whose servers know nothing of DPoP and issue
    /// Bearer tokens; never for the DPoP scenarios, which must get DPoP-bound tokens.
    fn dpop_mcp_args<'a>(&self, key: &'a str) -> Vec<&'a str> {
        let mut args = vec!["--key", key, "-v"];
        if let Selection::AuthSuite = self {
            args.push("--allow-bearer");
        }
        args
    }
}

/// Scenarios whose server never lets a client in, so that no session can complete: the
/// suite checks that the client gives up.
const NO_SESSION: &[&str] = &[
    // Every request is answered 403 insufficient_scope: the client must stop after a bounded
    // number of step-up authorizations.
    "auth/scope-retry-limit",
];

/// One scenario's result, read from its checks.json and the client's stdout.txt.
struct ScenarioResult {
    name: String,
    passed: usize,
    failed: Vec<String>,
    /// The client's last stdout line: `{"session": "complete"}`, or `failed` and why.
    session: Value,
}

impl ScenarioResult {
    /// Whether the client made its whole session (initialize, tools/list, a tool call) and
    /// `dpop mcp` exited 0.
    fn session_complete(&self) -> bool {
        self.session["session"] == "complete"
    }
}

/// Runs the suite on `selection` against `dpop mcp --key KEY` with `agent`'s socket and token
/// cache; panics, listing each scenario's result and the failed checks, unless the suite
/// exits 0.
fn run_suite(agent: &TestAgent, key: &str, selection: Selection) -> Vec<ScenarioResult> {
    require_mcp_packages();
    let node = node22();
    let dir = mcp_interop_dir();
    let out = new_temp_dir();
    let client = format!(
        "{} {}",
        node.display(),
        dir.join("conformance-client.mjs").display()
    );
    let mut command = Command::new(&node);
    command
        .current_dir(&dir)
        .arg(SUITE)
        .arg("client")
        .arg("--command")
        .arg(&client)
        .arg("--expected-failures")
        .arg(dir.join(EXPECTED_FAILURES))
        .arg("--output-dir")
        .arg(out.path())
        .env_remove("NODE_OPTIONS")
        .env("DPOP_CONFORMANCE_DPOP", &binaries().dpop)
        .env(
            "DPOP_CONFORMANCE_ARGS",
            serde_json::json!(selection.dpop_mcp_args(key)).to_string(),
        );
    // The agent's socket and the token cache, as every `dpop` command of the agent gets them.
    for (name, value) in agent.dpop_command().get_envs() {
        match value {
            Some(value) => command.env(name, value),
            None => command.env_remove(name),
        };
    }
    match selection {
        Selection::AuthSuite => command.args(["--suite", "auth", "--spec-version", SPEC_VERSION]),
        Selection::Scenario(name) => command.args(["--scenario", name]),
    };
    let started = std::time::Instant::now();
    let output = command.output().expect("running the MCP conformance suite");
    let results = read_results(out.path());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!(
        "conformance suite: {} scenario(s) in {:.1} s, exit {}",
        results.len(),
        started.elapsed().as_secs_f64(),
        output.status
    );
    assert!(
        output.status.success() && !results.is_empty(),
        "the MCP conformance suite failed ({}):\n{}\n--- suite output ---\n{stdout}\n{stderr}",
        output.status,
        table(&results),
    );
    // The suite judges the wire only; a bridge that authorizes by the book and then fails the
    // session would pass it.
    let expected = expected_failures(&dir.join(EXPECTED_FAILURES));
    let incomplete: Vec<&str> = results
        .iter()
        .filter(|r| {
            !r.session_complete()
                && !NO_SESSION.contains(&r.name.as_str())
                && !expected.contains(&r.name)
        })
        .map(|r| r.name.as_str())
        .collect();
    assert!(
        incomplete.is_empty(),
        "the client's session did not complete in {incomplete:?}:\n{}\n--- suite output ---\n{stdout}\n{stderr}",
        table(&results),
    );
    results
}

/// The scenarios of the expected-failures file (`  - <scenario>` or `  - <scenario>:<check>`
/// lines of its `client:` list).
fn expected_failures(file: &Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- "))
        .map(|entry| {
            let entry = entry.split('#').next().unwrap_or_default().trim();
            let entry = entry.trim_matches(|c| c == '\'' || c == '"');
            entry.split(':').next().unwrap_or_default().to_owned()
        })
        .collect()
}

/// Every scenario's checks.json under `out` (the suite writes `out/<scenario>-<time>/`).
fn read_results(out: &Path) -> Vec<ScenarioResult> {
    let mut results: Vec<ScenarioResult> = dpop_tests::files_under(out)
        .into_iter()
        .filter(|f| f.file_name().is_some_and(|n| n == "checks.json"))
        .map(|file| {
            let checks: Vec<Value> =
                serde_json::from_str(&std::fs::read_to_string(&file).expect("reading checks.json"))
                    .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let failed = checks
                .iter()
                .filter(|c| c["status"] == "FAILURE")
                .map(|c| {
                    format!(
                        "{}: {}",
                        c["id"].as_str().unwrap_or("?"),
                        c["description"].as_str().unwrap_or("")
                    )
                })
                .collect();
            let stdout =
                std::fs::read_to_string(file.with_file_name("stdout.txt")).unwrap_or_default();
            let session = stdout
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .next_back()
                .unwrap_or_else(|| serde_json::json!({"session": "no outcome line"}));
            ScenarioResult {
                name: scenario_name(out, &file),
                passed: checks.iter().filter(|c| c["status"] == "SUCCESS").count(),
                failed,
                session,
            }
        })
        .collect();
    results.sort_by(|a, b| a.name.cmp(&b.name));
    results
}

/// The shape of the time the suite appends to a scenario's result directory.
const TIME_SUFFIX: &str = "-2026-12-03T18-00-20-123Z";

/// `auth/dpop` from `out/auth/dpop-2026-...Z/checks.json`.
fn scenario_name(out: &Path, checks: &Path) -> String {
    let dir: PathBuf = checks
        .parent()
        .expect("a result directory")
        .strip_prefix(out)
        .expect("under the output directory")
        .to_owned();
    let name = dir.to_string_lossy();
    // The suite appends `-<ISO time with dashes>`, `-2026-12-03T18-00-20-123Z`: 25 bytes.
    let cut = name.len().saturating_sub(TIME_SUFFIX.len());
    if name.ends_with('Z') && name.is_char_boundary(cut) && name[cut..].starts_with('-') {
        name[..cut].to_owned()
    } else {
        name.into_owned()
    }
}

fn table(results: &[ScenarioResult]) -> String {
    let mut lines = Vec::new();
    for r in results {
        let mark = if r.failed.is_empty() { "ok  " } else { "FAIL" };
        lines.push(format!(
            "{mark} {}: {} passed, {} failed; client session: {}",
            r.name,
            r.passed,
            r.failed.len(),
            r.session
        ));
        for failure in &r.failed {
            lines.push(format!("       {failure}"));
        }
    }
    lines.join("\n")
}

fn software_agent() -> TestAgent {
    let agent = TestAgent::start(AgentOptions::new());
    agent.client().generate_key("k").unwrap();
    agent
}

/// The three runs for one agent: the auth suite, then the two DPoP scenarios.
fn all_scenarios(agent: &TestAgent) {
    let results = run_suite(agent, "k", Selection::AuthSuite);
    assert!(results.len() >= 14, "{}", table(&results));
    for scenario in ["auth/dpop", "auth/dpop-nonce"] {
        let results = run_suite(agent, "k", Selection::Scenario(scenario));
        assert_eq!(results.len(), 1, "{}", table(&results));
        assert!(results[0].failed.is_empty(), "{}", table(&results));
    }
}

#[test]
fn conformance_auth_suite_and_dpop_scenarios_software_key() {
    all_scenarios(&software_agent());
}

#[test]
fn conformance_auth_suite_and_dpop_scenarios_softhsm_key() {
    let token = pkcs11::token("mcp-conformance");
    let agent = pkcs11::start(&token);
    pkcs11::generate(&agent, &token, "k", "ES256");
    all_scenarios(&agent);
}
