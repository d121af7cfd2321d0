//! The protocol examples in docs/examples (Python and Node.js, standard libraries only) against
//! the real agent: a proof that verifies, and an error reply handled and shown.

use std::process::Command;

use dpop_tests::{AgentOptions, TestAgent, require_tool, verify_proof, workspace_root};

const URL: &str = "https://api.example.com/v1/items";

fn run_example(
    agent: &TestAgent,
    interpreter: &str,
    file: &str,
    args: &[&str],
) -> std::process::Output {
    let package = if interpreter == "node" {
        "nodejs"
    } else {
        "python3"
    };
    require_tool(interpreter, &["--version"], package);
    Command::new(interpreter)
        .arg(workspace_root().join("docs/examples").join(file))
        .args(args)
        .env("DPOP_AUTH_SOCK", agent.socket())
        .output()
        .unwrap_or_else(|e| panic!("running {interpreter} {file}: {e}"))
}

#[test]
fn python_and_node_examples_get_proofs_and_show_errors() {
    let agent = TestAgent::start(AgentOptions::new());
    for (interpreter, file) in [
        ("python3", "dpop_agent_client.py"),
        ("node", "dpop_agent_client.mjs"),
    ] {
        let label = format!("from-{interpreter}");
        let out = run_example(&agent, interpreter, file, &[&label, "GET", URL]);
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let proof = String::from_utf8(out.stdout).unwrap();
        let verified = verify_proof(proof.trim(), "GET", URL, None);
        let key = agent
            .client()
            .list_keys()
            .unwrap()
            .into_iter()
            .find(|k| k.label == label)
            .unwrap_or_else(|| panic!("{file} generated its key"));
        assert_eq!(verified.jkt, key.jkt, "{file}: signed by the agent's key");

        // An error reply: a lower-case method is refused with its code, shown by the client.
        let out = run_example(&agent, interpreter, file, &[&label, "get", URL]);
        assert_eq!(out.status.code(), Some(1), "{file}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("dpop-agent refused: invalid_method"),
            "{file}: {stderr}"
        );
    }
}
